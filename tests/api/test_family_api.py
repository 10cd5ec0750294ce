"""A TinyStories model of another geometry behind the real app: TinyStories-33M's (4 layers x
16 heads, hidden 768, head size 48) with random weights. Every grid the API returns has the
model's shape, and heads outside it are refused."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.helpers import CORPUS, FAMILY, make_family_model_dir

TEXT = 'Tom said, "I like the red ball." Then he ran home.'


@pytest.fixture(scope="module")
def api_33m(tmp_path_factory):
    from fastapi.testclient import TestClient

    from headscope.analysis.service import load_runtime
    from headscope.app import create_app
    from headscope.settings import Settings

    layers, hidden = FAMILY["33M"]
    directory = make_family_model_dir(tmp_path_factory.mktemp("family-33m"), layers, hidden)
    settings = Settings(
        model=str(directory),
        store=tmp_path_factory.mktemp("empty-store"),
        corpus=str(CORPUS),
        tagger_process=False,
        corpus_max_sequences=20,
    )
    runtime = load_runtime(settings)
    try:
        with TestClient(create_app(settings, runtime=runtime)) as client:
            yield client
    finally:
        runtime.close()


def test_the_model_reports_its_own_geometry(api_33m):
    info = api_33m.get("/v1/model").json()
    assert (info["n_layers"], info["n_heads"], info["d_head"], info["d_model"]) == (4, 16, 48, 768)
    assert info["attention_layers"] == ["global", "local", "global", "local"]


def test_grids_have_the_models_shape(api_33m):
    analyzed = api_33m.post(
        "/v1/analyze", json={"text": TEXT, "patterns": [{"layer": 3, "head": 15}]}
    )
    assert analyzed.status_code == 200, analyzed.text
    body = analyzed.json()
    tokens = len(body["tokens"])
    assert len(body["activity"]) == 4 and {len(row) for row in body["activity"]} == {16}
    assert {len(cell) for row in body["activity"] for cell in row} == {tokens}
    scores = api_33m.get("/v1/heads/scores", params={"kind": "previous_token", "length": 10})
    assert scores.status_code == 200, scores.text
    assert [len(row) for row in scores.json()["scores"]] == [16] * 4
    by_tag = api_33m.post(
        "/v1/corpus/activity-by-tag", json={"tag": "NN", "texts": [TEXT], "position": "on"}
    ).json()
    assert [len(row) for row in by_tag["lift"]] == [16] * 4
    grid = api_33m.post(
        "/v1/corpus/ablation", json={"all_heads": True, "tag": "NN", "texts": [TEXT]}
    ).json()
    assert [len(row) for row in grid["grid"]] == [16] * 4
    figure = api_33m.get("/v1/figures/activity-by-tag.png", params={"tag": "NN", "n_sequences": 3})
    assert figure.status_code == 200, figure.text
    assert Image.open(io.BytesIO(figure.content)).size[0] > 0


def test_ablation_runs_and_refuses_heads_outside_the_geometry(api_33m):
    ok = api_33m.post("/v1/ablate", json={"text": TEXT, "heads": [{"layer": 3, "head": 15}]})
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["predictions"]) == len(ok.json()["tokens"]) - 1
    refused = api_33m.post("/v1/ablate", json={"text": TEXT, "heads": [{"layer": 4, "head": 0}]})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "unknown_head"
