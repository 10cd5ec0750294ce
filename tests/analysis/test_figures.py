"""Figures: GET /v1/figures/*.png and `headscope figures`, as real PNG files of the asked size."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from tests.analysis.test_corpus_api import QUOTED, TEXTS, assert_error
from tests.helpers import STANDIN_DIR

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG header, after checking the file decodes."""
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    Image.open(io.BytesIO(data)).verify()
    return width, height


def get_png(api, path: str, params) -> bytes:
    response = api.get(f"/v1/figures/{path}", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return response.content


def test_activity_figure_has_the_asked_size_and_shades_the_strongest_token(corpus_api):
    params = {"text": QUOTED, "layer": 3, "head": 10, "width": 640, "height": 300}
    data = get_png(corpus_api, "activity.png", params)
    assert png_size(data) == (640, 300)
    # The strongest token's box is drawn in the top colour of the scale (Oranges at 0.85).
    from matplotlib import colormaps

    top = np.array(colormaps["Oranges"](0.85)[:3]) * 255
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=float)
    text_area = pixels[64:-44]  # between the header and the colour scale
    assert (np.abs(text_area - top).max(axis=-1) < 3).sum() > 50


def test_token_figures_grow_to_fit_the_text_by_default(corpus_api):
    short = png_size(get_png(corpus_api, "activity.png", {"text": TEXTS[1], "layer": 0, "head": 0}))
    long = png_size(
        get_png(corpus_api, "attention.png", {"text": " ".join(TEXTS * 3), "layer": 0, "head": 0})
    )
    assert short[0] == long[0] == 1000
    assert 150 <= short[1] < long[1]
    cut = get_png(
        corpus_api,
        "attention.png",
        {"text": " ".join(TEXTS * 3), "layer": 0, "head": 0, "query": 3, "height": 160},
    )
    assert png_size(cut) == (1000, 160)


def test_token_figures_draw_any_characters(corpus_api):
    text = 'Costs $5 and $6, a 50% "deal"\tof\\ \x00\x1b 😀 ~^_{x}\n\nThe end.'
    for path in ("activity.png", "attention.png"):
        params = {"text": text, "layer": 2, "head": 1, "width": 500, "height": 200}
        assert png_size(get_png(corpus_api, path, params)) == (500, 200)


@pytest.mark.parametrize(
    ("path", "params", "size"),
    [
        (
            "attention-by-tag.png",
            {"texts": TEXTS, "layer": 1, "head": 4, "from_tag": "NN", "width": 900, "height": 450},
            (900, 450),
        ),
        ("attention-by-tag.png", {"texts": TEXTS, "layer": 1, "head": 4, "to_tag": "DT"}, None),
        (
            "activity-by-tag.png",
            {"texts": TEXTS, "tag": "NN", "position": "after", "layer": 2, "width": 700},
            (700, 500),
        ),
        ("activity-by-tag.png", {"texts": TEXTS, "tag": "WP$"}, None),  # no such tokens
        ("quotes.png", {"texts": [QUOTED], "top": 8, "height": 600}, (1000, 600)),
        ("quotes.png", {"texts": TEXTS}, None),  # no quotations
    ],
)
def test_chart_figures_have_the_asked_size(corpus_api, path, params, size):
    assert png_size(get_png(corpus_api, path, params)) == (size or (1000, 500))


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("activity.png", {"text": "A cat.", "layer": 9, "head": 0}, 422),
        ("activity.png", {"text": "A cat.", "layer": 0, "head": 0, "width": 10}, 422),
        ("activity.png", {"text": "A cat.", "layer": 0, "head": 0, "colour": "red"}, 422),
        ("activity.png", {"text": "   ", "layer": 0, "head": 0}, 400),
        ("attention.png", {"text": "A cat.", "layer": 0, "head": 0, "query": 99}, 422),
        ("activity-by-tag.png", {"texts": ["A cat."], "tag": "NN", "layer": 8}, 422),
        ("quotes.png", {"n_sequences": 1000}, 422),
    ],
)
def test_figure_errors_are_json_envelopes(corpus_api, path, params, status):
    assert_error(corpus_api.get(f"/v1/figures/{path}", params=params), status)


def test_cli_writes_a_figure_file(tmp_path, capsys):
    from headscope.cli import main

    texts_file = tmp_path / "stories.txt"
    texts_file.write_text("\n\n".join(TEXTS), encoding="utf-8")
    output = tmp_path / "out.png"
    arguments = [
        "figures",
        "attention-by-tag",
        "--model",
        str(STANDIN_DIR),
        "--texts-file",
        str(texts_file),
        "--layer",
        "1",
        "--head",
        "4",
        "--from-tag",
        "NN",
        "--width",
        "720",
        "--height",
        "360",
        "-o",
        str(output),
    ]
    assert main(arguments) == 0
    assert capsys.readouterr().out.strip() == f"wrote {output}"
    assert png_size(output.read_bytes()) == (720, 360)

    # An existing file is kept (refused before the model loads) unless --force.
    output.write_bytes(b"keep me")
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert "exists" in error and "--force" in error and output.read_bytes() == b"keep me"
    assert main([*arguments, "--force"]) == 0
    assert png_size(output.read_bytes()) == (720, 360)


def test_token_figures_wrap_at_word_boundaries():
    """A word BPE splits into several tokens moves to the next line whole."""
    from headscope.analysis.figures import Cell, _layout

    words = ["Once", " upon", " a", " time", " there", " was", " a", " girl", " named"]
    pieces = [Cell(text, 0.5) for text in words]
    pieces += [Cell(" Lil", 0.5), Cell("ly", 0.5), Cell("bet", 0.5), Cell("h", 0.5)]
    pieces += [Cell(".", 0.5), Cell(" She", 0.5)]
    for width in range(300, 700, 7):
        placed, _ = _layout(pieces, width)
        lines = [item.line for item in placed]
        # " Lil" "ly" "bet" "h" "." form one word: never split across lines.
        assert len(set(lines[9:14])) == 1, (width, lines)


def test_bar_charts_draw_the_intervals(corpus_api, runtime):
    from headscope.analysis.corpus import CorpusAnalysis
    from headscope.analysis.figures import activity_by_tag_png
    from headscope.schemas import ActivityByTagRequest

    analysis = CorpusAnalysis(runtime, runtime.settings)
    result = analysis.activity_by_tag(ActivityByTagRequest(texts=TEXTS * 3, tag="NN"))
    assert result.ci is not None
    size = {"layer": 2, "top": 16, "width": 600, "height": 300, "model": "m"}
    with_bars = activity_by_tag_png(result, **size)
    without = activity_by_tag_png(result.model_copy(update={"ci": None}), **size)
    assert png_size(with_bars) == png_size(without) == (600, 300)
    with_pixels = np.asarray(Image.open(io.BytesIO(with_bars)).convert("L"), dtype=float)
    plain_pixels = np.asarray(Image.open(io.BytesIO(without)).convert("L"), dtype=float)
    # The error bars are dark strokes the plain chart lacks.
    assert (with_pixels < 60).sum() > (plain_pixels < 60).sum()


def test_cli_refuses_bad_options_before_loading_anything(tmp_path, capsys):
    from headscope.cli import main

    code = main(
        ["figures", "activity", "--text", "A cat.", "--layer", "0", "--head", "0", "--width", "5"]
    )
    assert code == 2
    assert "width" in capsys.readouterr().err
