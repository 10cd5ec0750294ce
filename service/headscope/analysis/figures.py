"""The paper's case-study figures as PNG bytes.

Token figures (Fig. 2c/d, 3b/c, 4b/c): the text with each token shaded by one head's activity, or
by one query's attention row. Bar charts (Appendix C/D): attention by tag, activity by POS
context, activity inside vs. outside quotations, from the corpus analyses.

matplotlib's object API on the Agg canvas, never pyplot: no global figure state, so figures can
be drawn in the analysis threads at the same time. Every PNG is exactly `width` x `height` pixels
(figure size in inches x DPI, saved without a tight bounding box).

matplotlib is imported where a figure is drawn, not with this module: the server imports this
module before it is ready, and importing matplotlib takes about a second.
"""

from __future__ import annotations

import io
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from headscope.analysis.corpus import CorpusAnalysis
from headscope.analysis.service import Runtime
from headscope.errors import InvalidRequest
from headscope.schemas import (
    ActivityByTagFigureQuery,
    ActivityByTagRequest,
    ActivityByTagResponse,
    ActivityFigureQuery,
    AttentionByTagFigureQuery,
    AttentionByTagRequest,
    AttentionByTagResponse,
    AttentionFigureQuery,
    QuotesFigureQuery,
    QuotesRequest,
    QuotesResponse,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

# A glyph the font lacks (an emoji, say) is drawn as a box; that is no reason to warn per request.
warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)

DPI = 100
DEFAULT_CHART_HEIGHT = 500
# Token-figure layout, in pixels.
FONT_SIZE = 13  # points; at 100 DPI about 18 px tall
MARGIN = 24
HEADER = 64  # title and subtitle
LINE_HEIGHT = 30
BOX_BELOW_BASELINE = 7
BOX_HEIGHT = 24
LEGEND = 44  # colour scale under the text
LEGEND_WIDTH = 200
MAX_AUTO_HEIGHT = 4000  # a fitted figure stops growing here; the rest of the text is cut
NEWLINE_MARK = "↵"
ACTIVITY_COLORS = "Oranges"
ATTENTION_COLORS = "Blues"
DIM_TEXT = "#9a9a9a"
AT_COLOR = "#d95f02"
BASELINE_COLOR = "#b0b0b0"


@dataclass(frozen=True)
class Cell:
    """One token of a token figure."""

    text: str
    shade: float  # 0..1, position on the colour map
    bold: bool = False
    dim: bool = False  # drawn grey and unshaded (e.g. a key the query cannot see)
    outline: bool = False  # boxed (e.g. the query token)


@dataclass(frozen=True)
class _Placed:
    line: int
    x: float
    width: float
    body: str
    cell: Cell


def new_figure(width: int, height: int) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _font(bold: bool = False, size: float = FONT_SIZE) -> FontProperties:
    from matplotlib.font_manager import FontProperties

    return FontProperties(size=size, weight="bold" if bold else "normal")


def _printable(text: str) -> str:
    """Tabs as spaces; other control characters (no glyph in any font) as U+FFFD."""
    text = text.replace("\r", "").replace("\t", "    ")
    return "".join(
        char if char == "\n" or unicodedata.category(char) != "Cc" else "\ufffd" for char in text
    )


def _layout(cells: Sequence[Cell], width: int) -> tuple[list[_Placed], int]:
    """Word-wrap the tokens into lines of the figure's width; (placements, number of lines)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    renderer = FigureCanvasAgg(Figure(dpi=DPI)).get_renderer()

    def measure(text: str, bold: bool) -> float:
        return renderer.get_text_width_height_descent(text, _font(bold), ismath=False)[0]

    # A lone space measures as nothing; its advance is what it adds between two letters.
    space = measure("a a", False) - measure("aa", False)
    right = width - MARGIN
    pieces = []  # (cell, body, leading spaces, body width, line breaks after)
    for cell in cells:
        text = _printable(cell.text)
        shown = text.replace("\n", NEWLINE_MARK)
        body = shown.lstrip(" ")
        leading = len(shown) - len(body)
        body = body.rstrip(" ")
        pieces.append(
            (cell, body, leading, measure(body, cell.bold) if body else space, text.count("\n"))
        )
    # BPE splits words into several tokens ("L", "ily"); a line breaks only where a word starts
    # (a token with leading space, or after a line break), unless one word is wider than a line.
    word_width = [0.0] * len(pieces)
    for index in range(len(pieces) - 1, -1, -1):
        _, _, _, body_width, breaks = pieces[index]
        follows = index + 1 < len(pieces) and pieces[index + 1][2] == 0 and not breaks
        word_width[index] = body_width + (word_width[index + 1] if follows else 0.0)
    placed: list[_Placed] = []
    x, line = float(MARGIN), 0
    starts_word = True
    for index, (cell, body, leading, body_width, breaks) in enumerate(pieces):
        starts_word = starts_word or leading > 0
        gap = leading * space if x > MARGIN else 0.0
        whole_word = word_width[index] if starts_word else body_width
        fits_a_line = whole_word <= right - MARGIN
        too_wide = x + gap + (whole_word if fits_a_line else body_width) > right
        if too_wide and x > MARGIN and (starts_word or not fits_a_line):
            line, x, gap = line + 1, float(MARGIN), 0.0
        placed.append(_Placed(line, x + gap, body_width, body, cell))
        x += gap + body_width
        starts_word = False
        if breaks:
            line, x = line + breaks, float(MARGIN)
            starts_word = True
    lines = (placed[-1].line + 1) if placed else 1
    return placed, lines


def token_text_png(
    cells: Sequence[Cell],
    *,
    title: str,
    subtitle: str,
    colors: str,
    scale: tuple[str, str],
    width: int,
    height: int | None = None,
) -> bytes:
    """The text, token by token, each on a box shaded by `cell.shade` on the colour map."""
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle
    from matplotlib.transforms import IdentityTransform

    placed, lines = _layout(cells, width)
    needed = HEADER + lines * LINE_HEIGHT + MARGIN // 2 + LEGEND
    if height is None:
        height = min(needed, MAX_AUTO_HEIGHT)
    fitting_lines = max((height - HEADER - MARGIN // 2 - LEGEND) // LINE_HEIGHT, 0)
    shown = [item for item in placed if item.line < fitting_lines]
    if len(shown) < len(placed):
        subtitle += f" · cut: {len(placed) - len(shown)} tokens past the figure's height"

    colormap = colormaps[colors]
    figure = new_figure(width, height)
    pixels = IdentityTransform()  # draw in pixels, origin at the bottom left
    figure.text(
        MARGIN,
        height - 30,
        title,
        fontproperties=_font(True, 15),
        transform=pixels,
        parse_math=False,
    )
    figure.text(
        MARGIN,
        height - 52,
        subtitle,
        fontproperties=_font(False, 10),
        color="#555555",
        transform=pixels,
        parse_math=False,
    )
    for item in shown:
        baseline = height - HEADER - (item.line + 1) * LINE_HEIGHT + BOX_BELOW_BASELINE + 4
        cell = item.cell
        if not cell.dim:
            figure.add_artist(
                Rectangle(
                    (item.x - 1, baseline - BOX_BELOW_BASELINE),
                    item.width + 2,
                    BOX_HEIGHT,
                    transform=pixels,
                    facecolor=colormap(0.85 * min(max(cell.shade, 0.0), 1.0)),
                    edgecolor="black" if cell.outline else "none",
                    linewidth=1.5,
                )
            )
        if item.body:
            figure.text(
                item.x,
                baseline,
                item.body,
                fontproperties=_font(cell.bold),
                transform=pixels,
                color=DIM_TEXT if cell.dim else "black",
                parse_math=False,
            )

    # Colour scale: low to high along a strip under the text.
    steps = 40
    bottom = 14
    for step in range(steps):
        figure.add_artist(
            Rectangle(
                (MARGIN + 30 + step * LEGEND_WIDTH / steps, bottom),
                LEGEND_WIDTH / steps + 0.5,
                12,
                transform=pixels,
                facecolor=colormap(0.85 * step / (steps - 1)),
                edgecolor="none",
            )
        )
    figure.text(MARGIN, bottom + 1, scale[0], fontproperties=_font(False, 9), transform=pixels)
    figure.text(
        MARGIN + 36 + LEGEND_WIDTH,
        bottom + 1,
        scale[1],
        fontproperties=_font(False, 9),
        transform=pixels,
        parse_math=False,
    )
    return png_bytes(figure)


def draw_probe_grid(axis, grid: np.ndarray, *, metric: str, title: str, annotate: bool):
    """A [layer, head] heatmap of a probe metric on `axis` (the paper's Appendix A/B panels);
    returns the image for a colour bar."""
    if metric == "selectivity":
        limit = max(float(np.nanmax(np.abs(grid))), 1e-6)
        image = axis.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    else:
        image = axis.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    n_layers, n_heads = grid.shape
    axis.set_xticks(range(n_heads))
    axis.set_yticks(range(n_layers))
    axis.set_xlabel("head")
    axis.set_ylabel("layer")
    axis.set_title(title, fontsize=9)
    if annotate:
        for layer in range(n_layers):
            for head in range(n_heads):
                value = grid[layer, head]
                light = metric != "selectivity" and value < 0.6
                axis.text(
                    head,
                    layer,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if light else "black",
                )
    return image


def probe_heatmap_png(run, vector: str, tag: str, metric: str, model: str) -> bytes:
    """One annotated heatmap: `metric` of `tag` from `vector` probes, per layer and head."""
    grid, support = run.scores(vector, tag, metric)
    figure = new_figure(900, 480)
    axis = figure.subplots()
    image = draw_probe_grid(
        axis,
        grid,
        metric=metric,
        title=f"{metric} of {tag} from {vector} vectors"
        + ("" if support is None else f" (support {support})")
        + f"\nrun {run.run_id} — {model}",
        annotate=True,
    )
    figure.colorbar(image, ax=axis, label=metric)
    figure.tight_layout()
    return png_bytes(figure)


def probe_tags_png(run, vector: str, metric: str, model: str, columns: int = 6) -> bytes:
    """A grid of small heatmaps, one per tag (plus accuracy and macro): Appendix A/B."""
    tags = ["accuracy", "macro", *run.tags]
    rows = -(-len(tags) // columns)
    width, height = columns * 260, rows * 190 + 90
    figure = new_figure(width, height)
    # Fixed margins in pixels rather than a layout engine: solving the layout of forty panels
    # costs more than drawing them.
    axes = figure.subplots(
        rows,
        columns,
        squeeze=False,
        gridspec_kw={
            "left": 50 / width,
            "right": 1 - 110 / width,
            "bottom": 45 / height,
            "top": 1 - 80 / height,
            "wspace": 0.25,
            "hspace": 0.45,
        },
    )
    image: Any = None
    for axis, tag in zip(axes.flat, tags, strict=False):
        grid, support = run.scores(vector, tag, metric)
        label = tag if support is None else f"{tag} (n={support})"
        image = draw_probe_grid(axis, grid, metric=metric, title=label, annotate=False)
        axis.set_xticks(range(0, grid.shape[1], 5))
        axis.set_yticks(range(0, grid.shape[0], 2))
        axis.tick_params(labelsize=6)
        axis.set_xlabel("")
        axis.set_ylabel("")
    for axis in list(axes.flat)[len(tags) :]:
        axis.axis("off")
    figure.supxlabel("head")
    figure.supylabel("layer")
    colorbar_axes = figure.add_axes((1 - 80 / width, 0.25, 15 / width, 0.5))
    figure.colorbar(image, cax=colorbar_axes, label=metric)
    figure.suptitle(
        f"{metric} of {vector}-vector probes per tag, layer × head — run {run.run_id} ({model})"
    )
    return png_bytes(figure)


def _error_bars(values: Sequence[float] | np.ndarray, low, high) -> np.ndarray | None:
    """matplotlib's yerr ([2, bar]: below, above) from interval bounds; None without bounds."""
    if low is None or high is None:
        return None
    bars = np.asarray(values, dtype=np.float64)
    low = np.asarray([np.nan if v is None else v for v in low], dtype=np.float64)
    high = np.asarray([np.nan if v is None else v for v in high], dtype=np.float64)
    below = np.clip(np.nan_to_num(bars - low), 0, None)
    above = np.clip(np.nan_to_num(high - bars), 0, None)
    return np.stack([below, above])


def _flat_bounds(interval, chosen: Sequence[int]) -> tuple[list, list] | tuple[None, None]:
    if interval is None:
        return None, None
    low = [value for row in interval.low for value in row]
    high = [value for row in interval.high for value in row]
    return [low[i] for i in chosen], [high[i] for i in chosen]


def _support_note(axes, warning: str | None) -> None:
    if warning:
        axes.text(
            0.99,
            0.98,
            "small support: " + warning.split(": ", 1)[-1].split(";")[0],
            ha="right",
            va="top",
            transform=axes.transAxes,
            color="#b42318",
            fontsize=8,
            parse_math=False,
        )


def _head_label(flat_index: int, n_heads: int) -> str:
    return f"L{flat_index // n_heads}H{flat_index % n_heads}"


def _chosen_heads(
    score: np.ndarray, layer: int | None, top: int
) -> list[int]:  # flat indices into [layer, head]
    n_heads = score.shape[1]
    if layer is not None:
        return [layer * n_heads + head for head in range(n_heads)]
    filled = np.where(np.isnan(score), -np.inf, score).ravel()
    return [int(i) for i in np.argsort(-filled, kind="stable")[:top]]


def _chart_note(axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="#555555")


def _ratio_bars(
    axes,
    positions: np.ndarray,
    values: np.ndarray,
    errors: np.ndarray | None,
    ratios: np.ndarray,
    *,
    width: float,
    label: str,
) -> None:
    """The measured bars (with their intervals), each labelled ×ratio (to its baseline) above
    its bar or interval."""
    axes.bar(positions, values, width, color=AT_COLOR, label=label, yerr=errors, capsize=2)
    tops = values if errors is None else values + errors[1]
    for x, top, ratio in zip(positions, tops, ratios, strict=True):
        axes.text(float(x), top, f"×{ratio:.2f}", ha="center", va="bottom", fontsize=8)


def attention_by_tag_png(
    result: AttentionByTagResponse, *, top: int, width: int, height: int, model: str
) -> bytes:
    figure = new_figure(width, height)
    axes = figure.subplots()
    rows = result.rows[:top]
    head = f"L{result.layer}H{result.head}"
    if result.direction == "from":
        title = f"{head}: where {result.tag} tokens attend ({result.tag_tokens} tokens)"
        xlabel = "key tag"
    else:
        title = f"{head}: attention onto {result.tag} tokens, by query tag"
        xlabel = "query tag"
    positions = np.arange(len(rows))
    bar = 0.4
    bounds = result.ci.attention if result.ci is not None else {}
    attention = [r.attention for r in rows]
    axes.bar(
        positions - bar / 2,
        attention,
        bar,
        color=AT_COLOR,
        label="attention (95% CI)" if bounds else "attention",
        yerr=_error_bars(
            attention,
            [bounds[r.tag].low if r.tag in bounds else None for r in rows],
            [bounds[r.tag].high if r.tag in bounds else None for r in rows],
        )
        if bounds
        else None,
        capsize=2,
    )
    axes.bar(
        positions + bar / 2,
        [r.frequency for r in rows],
        bar,
        color=BASELINE_COLOR,
        label="uniform over visible positions",
    )
    axes.set_xticks(positions, [r.tag for r in rows], rotation=45 if len(rows) > 12 else 0)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("mean attention mass")
    axes.set_title(title, fontsize=12)
    if rows:
        axes.legend(frameon=False)
    else:
        _chart_note(axes, f"no token is tagged {result.tag}")
    _support_note(axes, result.warning)
    _footer(figure, model, result.source.sequences, result.source.tokens)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return png_bytes(figure)


def activity_by_tag_png(
    result: ActivityByTagResponse,
    *,
    layer: int | None,
    top: int,
    width: int,
    height: int,
    model: str,
) -> bytes:
    figure = new_figure(width, height)
    axes = figure.subplots()
    overall = np.asarray(result.mean_overall)  # [layer, head]
    n_heads = overall.shape[1]
    title = f"Activity {result.position} {result.tag} vs. overall"
    if result.lift is None:
        chosen = _chosen_heads(overall, layer, top)
        _chart_note(axes, f"no token is {result.position} {result.tag}")
        at = None
    else:
        lift = np.asarray(result.lift)
        chosen = _chosen_heads(lift, layer, top)
        at = np.asarray(result.mean_at_position).ravel()[chosen]
        title += f" ({result.positions} tokens)" + ("" if layer is not None else ", top by lift")
    positions = np.arange(len(chosen))
    bar = 0.4
    if at is not None:
        low, high = _flat_bounds(result.ci.mean_at_position if result.ci else None, chosen)
        _ratio_bars(
            axes,
            positions - bar / 2,
            at,
            _error_bars(at, low, high),
            np.asarray(result.lift).ravel()[chosen],
            width=bar,
            label=f"{result.position} {result.tag}" + (" (95% CI)" if low is not None else ""),
        )
    axes.bar(
        positions + bar / 2, overall.ravel()[chosen], bar, color=BASELINE_COLOR, label="all tokens"
    )
    axes.set_xticks(
        positions, [_head_label(i, n_heads) for i in chosen], rotation=45 if len(chosen) > 12 else 0
    )
    axes.set_ylabel("mean activity")
    axes.margins(y=0.12)  # room for the lift labels
    axes.set_title(title, fontsize=12)
    axes.legend(frameon=False)
    _support_note(axes, result.warning)
    _footer(figure, model, result.source.sequences, result.source.tokens)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return png_bytes(figure)


def quotes_png(
    result: QuotesResponse, *, layer: int | None, top: int, width: int, height: int, model: str
) -> bytes:
    figure = new_figure(width, height)
    activity_axes, attention_axes = figure.subplots(2, 1, sharex=True)
    if result.ratio is None or result.attention_to_opening is None:
        _chart_note(activity_axes, "no tokens inside quotations")
        _footer(figure, model, result.source.sequences, result.source.tokens)
        return png_bytes(figure)
    ratio = np.asarray(result.ratio)
    n_heads = ratio.shape[1]
    chosen = _chosen_heads(ratio, layer, top)
    positions = np.arange(len(chosen))
    bar = 0.4
    inside = np.asarray(result.mean_inside).ravel()[chosen]
    outside = np.asarray(result.mean_outside).ravel()[chosen]
    ci = result.ci
    low, high = _flat_bounds(ci.mean_inside if ci else None, chosen)
    _ratio_bars(
        activity_axes,
        positions - bar / 2,
        inside,
        _error_bars(inside, low, high),
        ratio.ravel()[chosen],
        width=bar,
        label="inside quotes" + (" (95% CI)" if ci else ""),
    )
    low, high = _flat_bounds(ci.mean_outside if ci else None, chosen)
    activity_axes.bar(
        positions + bar / 2,
        outside,
        bar,
        color=BASELINE_COLOR,
        label="outside",
        yerr=_error_bars(outside, low, high),
        capsize=2,
    )
    activity_axes.set_ylabel("mean activity")
    activity_axes.margins(y=0.15)  # room for the ratio labels
    activity_axes.legend(frameon=False)
    which = f"layer {layer}" if layer is not None else "top heads by inside/outside ratio"
    spans = len(result.spans)
    activity_axes.set_title(
        f"Quotations: {spans} span{'' if spans == 1 else 's'}, {result.inside_tokens} tokens "
        f"inside ({which})",
        fontsize=12,
    )
    _support_note(activity_axes, result.warning)
    opening = np.asarray(result.attention_to_opening).ravel()[chosen]
    low, high = _flat_bounds(ci.attention_to_opening if ci else None, chosen)
    attention_axes.bar(
        positions, opening, 0.6, color="#1f78b4", yerr=_error_bars(opening, low, high), capsize=2
    )
    attention_axes.set_ylabel("attention to\nopening quote")
    attention_axes.set_xticks(
        positions, [_head_label(i, n_heads) for i in chosen], rotation=45 if len(chosen) > 12 else 0
    )
    _footer(figure, model, result.source.sequences, result.source.tokens)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return png_bytes(figure)


def _footer(figure: Figure, model: str, sequences: int, tokens: int) -> None:
    figure.text(
        0.01,
        0.01,
        f"{model} · {sequences} sequences, {tokens} tokens",
        fontsize=8,
        color="#777777",
        parse_math=False,
    )


def model_label(model_id: str, limit: int = 60) -> str:
    return model_id if len(model_id) <= limit else "…" + model_id[-(limit - 1) :]


class Figures:
    """The figures of the API and the CLI, for one runtime and its corpus analysis."""

    def __init__(self, runtime: Runtime, analysis: CorpusAnalysis) -> None:
        self.runtime = runtime
        self.analysis = analysis
        self.model = model_label(runtime.files.model_id)

    def activity(self, query: ActivityFigureQuery) -> bytes:
        self.runtime.check_head(query.layer, query.head)
        encoded = self.runtime.encode(query.text)
        output = self.runtime.forward(encoded, last_layer=query.layer)
        activity = output.activity[query.layer, query.head].tolist()  # [token]
        peak = max(activity)
        cells = [
            Cell(
                text=query.text[start:end],
                shade=value / peak if peak > 0 else 0.0,
                bold=peak > 0 and value >= query.bold_fraction * peak,
            )
            for (start, end), value in zip(encoded.offsets, activity, strict=True)
        ]
        strongest = int(np.argmax(activity))
        return token_text_png(
            cells,
            title=f"L{query.layer}H{query.head} activity per token",
            subtitle=f"{self.model} · max {peak:.3g} at token {strongest} · bold: at least "
            f"{query.bold_fraction:.0%} of the max",
            colors=ACTIVITY_COLORS,
            scale=("0", f"{peak:.3g}"),
            width=query.width,
            height=query.height,
        )

    def attention(self, query: AttentionFigureQuery) -> bytes:
        self.runtime.check_head(query.layer, query.head)
        encoded = self.runtime.encode(query.text)
        n = len(encoded)
        row_index = n - 1 if query.query is None else query.query
        if not 0 <= row_index < n:
            raise InvalidRequest(
                f"query {row_index} is outside the text's {n} tokens",
                detail={"query": row_index, "tokens": n},
            )
        head = (query.layer, query.head)
        output = self.runtime.forward(encoded, last_layer=query.layer, patterns=[head])
        row = output.patterns[head][row_index].tolist()  # [key]
        visible = self.runtime.runner.visible(query.layer, n)[row_index].tolist()  # [key]
        peak = max(row)
        cells = [
            Cell(
                text=query.text[start:end],
                shade=weight / peak if peak > 0 else 0.0,
                dim=not seen,
                outline=index == row_index,
            )
            for index, ((start, end), weight, seen) in enumerate(
                zip(encoded.offsets, row, visible, strict=True)
            )
        ]
        start, end = encoded.offsets[row_index]
        return token_text_png(
            cells,
            title=f"L{query.layer}H{query.head} attention from token {row_index} "
            f"{query.text[start:end]!r}",
            subtitle=f"{self.model} · boxed: the query · darkest: {peak:.3g} · grey: keys it "
            "cannot see",
            colors=ATTENTION_COLORS,
            scale=("0", f"{peak:.3g}"),
            width=query.width,
            height=query.height,
        )

    def attention_by_tag(self, query: AttentionByTagFigureQuery) -> bytes:
        return self._corpus_chart(
            query, AttentionByTagRequest, self.analysis.attention_by_tag, attention_by_tag_png
        )

    def activity_by_tag(self, query: ActivityByTagFigureQuery) -> bytes:
        layer = self._checked_layer(query.layer)
        return self._corpus_chart(
            query,
            ActivityByTagRequest,
            self.analysis.activity_by_tag,
            activity_by_tag_png,
            layer=layer,
        )

    def quotes(self, query: QuotesFigureQuery) -> bytes:
        layer = self._checked_layer(query.layer)
        return self._corpus_chart(
            query, QuotesRequest, self.analysis.quotes, quotes_png, layer=layer
        )

    def _checked_layer(self, layer: int | None) -> int | None:
        """The one layer a chart is limited to (None: all), checked before any work."""
        if layer is not None:
            self.runtime.check_layer(layer)
        return layer

    def _corpus_chart(
        self,
        query: AttentionByTagFigureQuery | ActivityByTagFigureQuery | QuotesFigureQuery,
        request_type: type[BaseModel],
        analyse: Callable[[Any], Any],
        draw: Callable[..., bytes],
        **chart_options: Any,
    ) -> bytes:
        """The corpus analysis `query` asks for (its fields that `request_type` has), drawn by
        `draw` at the query's size."""
        result = analyse(request_type(**_fields_of(query, request_type)))
        return draw(
            result,
            top=query.top,
            width=query.width,
            height=query.height or DEFAULT_CHART_HEIGHT,
            model=self.model,
            **chart_options,
        )


def _fields_of(query, request_type) -> dict:
    return {name: getattr(query, name) for name in request_type.model_fields}
