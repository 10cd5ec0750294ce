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
    code = main(
        [
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
    )
    assert code == 0
    assert capsys.readouterr().out.strip() == str(output)
    assert png_size(output.read_bytes()) == (720, 360)


def test_cli_refuses_bad_options_before_loading_anything(tmp_path, capsys):
    from headscope.cli import main

    code = main(
        ["figures", "activity", "--text", "A cat.", "--layer", "0", "--head", "0", "--width", "5"]
    )
    assert code == 2
    assert "width" in capsys.readouterr().err
