"""Corpus endpoints through the real app, checked against per-text numbers from the core API."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from tests.analysis.conftest import MAX_SEQUENCES, MAX_TOKENS

# Different lengths, so the batched run pads and the padding must not matter.
TEXTS = [
    "Tom walked to the park. He saw a big dog and laughed.",
    "The little cat jumped on the bed.",
    "Once upon a time, there was a girl named Lily. She loved to play outside with her "
    "friends. One day, she found a shiny red ball near the old tree and picked it up.",
]
QUOTED = 'Tom said, "I like the red ball." Then Mia said, "Me too!" They played.'
ATOL = 1e-5


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "detail"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def tags_of(api, text: str) -> list[str]:
    return [token["tag"] for token in api.post("/v1/tag", json={"text": text}).json()["tokens"]]


def visible_keys(api, layer: int, query: int) -> list[int]:
    info = api.get("/v1/model").json()
    local = info["attention_layers"][layer] == "local"
    return [k for k in range(query + 1) if not local or query - k < info["window_size"]]


def direct_attention_by_tag(api, texts, layer, head):
    """(mass, uniform, counts) keyed [query tag][key tag], from /v1/tag and /v1/attention."""
    mass = defaultdict(lambda: defaultdict(float))
    uniform = defaultdict(lambda: defaultdict(float))
    counts: dict[str, int] = defaultdict(int)
    for text in texts:
        tags = tags_of(api, text)
        body = api.post("/v1/attention", json={"text": text, "layer": layer, "head": head}).json()
        pattern = body["pattern"]
        for q, query_tag in enumerate(tags):
            counts[query_tag] += 1
            keys = visible_keys(api, layer, q)
            for k in keys:
                mass[query_tag][tags[k]] += pattern[q][k]
                uniform[query_tag][tags[k]] += 1 / len(keys)
    return mass, uniform, counts


def test_attention_by_tag_from_tag_sums_to_one_and_matches_core_api(corpus_api):
    layer, head, tag = 3, 5, "NN"
    response = corpus_api.post(
        "/v1/corpus/attention-by-tag",
        json={"texts": TEXTS, "layer": layer, "head": head, "from_tag": tag},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["direction"] == "from" and body["tag"] == tag
    rows = {row["tag"]: row for row in body["rows"]}
    assert sum(row["attention"] for row in body["rows"]) == pytest.approx(1, abs=ATOL)
    assert sum(row["frequency"] for row in body["rows"]) == pytest.approx(1, abs=ATOL)
    attention = [row["attention"] for row in body["rows"]]
    assert attention == sorted(attention, reverse=True)

    mass, uniform, counts = direct_attention_by_tag(corpus_api, TEXTS, layer, head)
    assert body["tag_tokens"] == counts[tag] > 0
    assert set(rows) == set(uniform[tag])
    for key_tag, row in rows.items():
        assert row["query_tokens"] == counts[tag]
        assert row["attention"] == pytest.approx(mass[tag][key_tag] / counts[tag], abs=ATOL)
        assert row["frequency"] == pytest.approx(uniform[tag][key_tag] / counts[tag], abs=ATOL)
    source = body["source"]
    assert source["kind"] == "texts" and source["sequences"] == len(TEXTS)
    assert source["tokens"] == sum(len(tags_of(corpus_api, text)) for text in TEXTS)


def test_attention_by_tag_to_tag_matches_core_api(corpus_api):
    layer, head, tag = 0, 2, "DT"
    body = corpus_api.post(
        "/v1/corpus/attention-by-tag",
        json={"texts": TEXTS, "layer": layer, "head": head, "to_tag": tag},
    ).json()
    assert body["direction"] == "to"
    mass, uniform, counts = direct_attention_by_tag(corpus_api, TEXTS, layer, head)
    assert {row["tag"] for row in body["rows"]} == set(counts)
    for row in body["rows"]:
        query_tag = row["tag"]
        assert row["query_tokens"] == counts[query_tag]
        expected = mass[query_tag].get(tag, 0.0) / counts[query_tag]
        assert row["attention"] == pytest.approx(expected, abs=ATOL)
        assert row["frequency"] == pytest.approx(
            uniform[query_tag].get(tag, 0.0) / counts[query_tag], abs=ATOL
        )
    assert body["tag_tokens"] == counts[tag]


def positions_of(tags: list[str], tag: str, position: str) -> list[int]:
    """Written out token by token, as the activity-by-tag description defines it."""
    chosen = []
    for t in range(len(tags)):
        tagged = tags[t] == tag
        next_tagged = t + 1 < len(tags) and tags[t + 1] == tag
        previous_tagged = t > 0 and tags[t - 1] == tag
        wanted = {
            "on": tagged,
            "before": not tagged and next_tagged,
            "after": not tagged and previous_tagged,
        }[position]
        if wanted:
            chosen.append(t)
    return chosen


@pytest.mark.parametrize(("tag", "position"), [("NN", "on"), ("VBD", "before"), ("DT", "after")])
def test_activity_by_tag_equals_direct_average_of_activity(corpus_api, tag, position):
    body = corpus_api.post(
        "/v1/corpus/activity-by-tag", json={"texts": TEXTS, "tag": tag, "position": position}
    ).json()
    at_sum, all_sum, at_count, all_count, tag_count = 0.0, 0.0, 0, 0, 0
    for text in TEXTS:
        tags = tags_of(corpus_api, text)
        activity = np.array(corpus_api.post("/v1/activity", json={"text": text}).json()["activity"])
        chosen = positions_of(tags, tag, position)
        at_sum = at_sum + activity[:, :, chosen].sum(axis=-1)  # [layer, head]
        all_sum = all_sum + activity.sum(axis=-1)
        at_count += len(chosen)
        all_count += len(tags)
        tag_count += tags.count(tag)
    assert body["positions"] == at_count > 0
    assert body["tokens"] == all_count and body["tag_tokens"] == tag_count
    np.testing.assert_allclose(body["mean_at_position"], at_sum / at_count, atol=ATOL)
    np.testing.assert_allclose(body["mean_overall"], all_sum / all_count, atol=ATOL)
    np.testing.assert_allclose(body["lift"], (at_sum / at_count) / (all_sum / all_count), rtol=1e-4)


def test_activity_by_tag_without_such_tokens_has_null_grids(corpus_api):
    body = corpus_api.post(
        "/v1/corpus/activity-by-tag", json={"texts": TEXTS[:1], "tag": "WP$", "position": "on"}
    ).json()
    assert body["positions"] == 0 and body["mean_at_position"] is None and body["lift"] is None
    assert np.array(body["mean_overall"]).shape == (8, 16)


def test_quotes_finds_known_spans_and_matches_core_api(corpus_api):
    unclosed = 'Mom called, "Come home now'
    body = corpus_api.post("/v1/corpus/quotes", json={"texts": [QUOTED, unclosed]}).json()

    tokens = corpus_api.post("/v1/tag", json={"text": QUOTED}).json()["tokens"]

    def token_at(text_tokens, char: int) -> int:
        return next(t["index"] for t in text_tokens if t["start"] <= char < t["end"])

    marks = [i for i, char in enumerate(QUOTED) if char == '"']
    assert len(marks) == 4
    expected = [
        {
            "sequence": 0,
            "opening_token": token_at(tokens, opening),
            "closing_token": token_at(tokens, closing),
            "start": opening,
            "end": closing + 1,
            "inside_tokens": token_at(tokens, closing) - token_at(tokens, opening) - 1,
        }
        for opening, closing in (marks[:2], marks[2:])
    ]
    unclosed_tokens = corpus_api.post("/v1/tag", json={"text": unclosed}).json()["tokens"]
    opening = unclosed.index('"')
    expected.append(
        {
            "sequence": 1,
            "opening_token": token_at(unclosed_tokens, opening),
            "closing_token": None,
            "start": opening,
            "end": len(unclosed),
            "inside_tokens": len(unclosed_tokens) - token_at(unclosed_tokens, opening) - 1,
        }
    )
    assert body["spans"] == expected
    # The closing marks share their tokens with the punctuation before them ('."', '!"').
    assert [tokens[span["closing_token"]]["text"] for span in expected[:2]] == ['."', '!"']

    # Independent numbers: every head's activity and pattern from /v1/analyze.
    heads = [{"layer": layer, "head": head} for layer in range(8) for head in range(16)]
    inside_sum = outside_sum = to_opening = 0.0
    inside_count = outside_count = 0
    for index, text in enumerate([QUOTED, unclosed]):
        analysis = corpus_api.post("/v1/analyze", json={"text": text, "patterns": heads}).json()
        activity = np.array(analysis["activity"])  # [layer, head, token]
        patterns = np.array([p["pattern"] for p in analysis["patterns"]]).reshape(
            8, 16, activity.shape[-1], activity.shape[-1]
        )
        spans = [span for span in expected if span["sequence"] == index]
        mark_tokens = {s["opening_token"] for s in spans} | {
            s["closing_token"] for s in spans if s["closing_token"] is not None
        }
        inside = {}
        for span in spans:
            stop = span["closing_token"] or activity.shape[-1]
            for t in range(span["opening_token"] + 1, stop):
                inside[t] = span["opening_token"]
        for t in range(activity.shape[-1]):
            if t in inside:
                inside_sum = inside_sum + activity[:, :, t]
                to_opening = to_opening + patterns[:, :, t, inside[t]]
                inside_count += 1
            elif t not in mark_tokens:
                outside_sum = outside_sum + activity[:, :, t]
                outside_count += 1
    assert body["inside_tokens"] == inside_count and body["outside_tokens"] == outside_count
    np.testing.assert_allclose(body["mean_inside"], inside_sum / inside_count, atol=ATOL)
    np.testing.assert_allclose(body["mean_outside"], outside_sum / outside_count, atol=ATOL)
    np.testing.assert_allclose(body["attention_to_opening"], to_opening / inside_count, atol=ATOL)


def test_corpus_draw_is_seeded_cached_and_equals_the_same_texts(corpus_api):
    request = {"layer": 1, "head": 4, "from_tag": "PRP", "n_sequences": 6, "seed": 11}
    first = corpus_api.post("/v1/corpus/attention-by-tag", json=request)
    second = corpus_api.post("/v1/corpus/attention-by-tag", json=request)
    assert first.status_code == 200, first.text
    assert first.headers["x-headscope-cache"] == "miss"
    assert second.headers["x-headscope-cache"] == "hit"
    assert second.json() == first.json()
    source = first.json()["source"]
    assert source["kind"] == "corpus" and source["seed"] == 11 and len(source["indices"]) == 6
    assert source["corpus"].endswith("tinystories-valid-sample.txt")
    assert len(source["corpus_sha256"]) == 64

    other_seed = corpus_api.post(
        "/v1/corpus/attention-by-tag", json={**request, "seed": 12}
    ).json()["source"]
    assert other_seed["indices"] != source["indices"]

    # The drawn sequences, sent as texts, give the same numbers.
    from headscope.analysis.corpus_text import read_corpus
    from tests.helpers import CORPUS

    sequences = read_corpus(CORPUS).sequences
    texts = [sequences[index] for index in source["indices"]]
    as_texts = corpus_api.post(
        "/v1/corpus/attention-by-tag",
        json={"layer": 1, "head": 4, "from_tag": "PRP", "texts": texts},
    ).json()
    assert as_texts["rows"] == first.json()["rows"]
    assert as_texts["source"]["tokens"] == source["tokens"]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        # No texts: the default draw of 100 sequences is over this app's cap.
        ("attention-by-tag", {"layer": 0, "head": 0, "from_tag": "NN"}, 422, "invalid_request"),
        ("attention-by-tag", {"layer": 0, "head": 0, "texts": ["a"]}, 422, "invalid_request"),
        (
            "attention-by-tag",
            {"layer": 0, "head": 0, "from_tag": "NN", "to_tag": "DT", "texts": ["a"]},
            422,
            "invalid_request",
        ),
        ("attention-by-tag", {"layer": 8, "head": 0, "from_tag": "NN"}, 422, "unknown_head"),
        ("attention-by-tag", {"layer": 0, "head": 16, "from_tag": "NN"}, 422, "unknown_head"),
        ("attention-by-tag", {"layer": 0, "head": 0, "from_tag": "VDB"}, 422, "invalid_request"),
        ("activity-by-tag", {"tag": "NN", "position": "inside"}, 422, "invalid_request"),
        ("activity-by-tag", {"tag": "NN", "texts": []}, 422, "invalid_request"),
        ("activity-by-tag", {"tag": "NN", "texts": ["a"], "n_sequences": 2}, 422, None),
        ("activity-by-tag", {"tag": "NN", "n_sequences": 0}, 422, "invalid_request"),
        ("activity-by-tag", {"tag": "NN", "texts": ["ok", "  "]}, 400, "empty_text"),
        ("quotes", {"texts": ["a"], "bogus": 1}, 422, "invalid_request"),
        ("quotes", {"n_sequences": MAX_SEQUENCES + 1}, 422, "invalid_request"),
        ("quotes", {"texts": ["A cat."] * (MAX_SEQUENCES + 1)}, 413, "input_too_long"),
        ("quotes", {"texts": ["word " * 600]}, 413, "input_too_long"),
    ],
)
def test_bad_input_and_caps_give_4xx_envelopes(corpus_api, path, body, status, code):
    assert_error(corpus_api.post(f"/v1/corpus/{path}", json=body), status, code)


def test_total_token_cap_gives_413_naming_the_limit(corpus_api):
    text = "The dog ran and the cat sat. " * 25  # 200 tokens
    texts = [text] * (MAX_TOKENS // 200 + 1)
    assert len(texts) <= MAX_SEQUENCES
    error = assert_error(
        corpus_api.post("/v1/corpus/quotes", json={"texts": texts}), 413, "input_too_long"
    )
    assert error["detail"]["corpus_max_tokens"] == MAX_TOKENS
    assert error["detail"]["tokens"] > MAX_TOKENS


def test_text_over_max_tokens_names_its_index(corpus_api):
    error = assert_error(
        corpus_api.post("/v1/corpus/quotes", json={"texts": ["Fine.", "word " * 600]}), 413
    )
    assert error["detail"]["text_index"] == 1 and error["message"].startswith("texts[1]")


def test_no_corpus_is_503_but_texts_still_work(api):
    # The session app has no corpus setting and the hub is offline in tests.
    error = assert_error(
        api.post("/v1/corpus/activity-by-tag", json={"tag": "NN", "n_sequences": 2}),
        503,
        "corpus_unavailable",
    )
    assert "corpus" in error["message"].lower() and "texts" in error["message"]
    # The caps are checked first: no need for a corpus to refuse an oversized draw.
    assert_error(api.post("/v1/corpus/quotes", json={"n_sequences": 10**6}), 422, "invalid_request")
    response = api.post("/v1/corpus/activity-by-tag", json={"tag": "NN", "texts": TEXTS[:1]})
    assert response.status_code == 200, response.text


def test_corpus_sequence_is_the_seeded_draw_of_one(corpus_api, api):
    from headscope.analysis.corpus_text import read_corpus
    from tests.helpers import CORPUS

    corpus = read_corpus(CORPUS)
    first = corpus_api.get("/v1/corpus/sequence", params={"seed": 5})
    assert first.status_code == 200, first.text
    body = first.json()
    assert corpus_api.get("/v1/corpus/sequence", params={"seed": 5}).json() == body
    assert body["seed"] == 5 and body["corpus"] == CORPUS.name and "/" not in body["corpus"]
    assert body["corpus_sha256"] == corpus.sha256
    # A sample sequence is within max_tokens, so it comes back whole.
    assert not body["truncated"] and body["text"] == corpus.sequences[body["index"]]
    # The same draw a corpus analysis of one sequence with this seed makes.
    analysed = corpus_api.post(
        "/v1/corpus/activity-by-tag", json={"tag": "NN", "n_sequences": 1, "seed": 5}
    ).json()["source"]
    assert analysed["indices"] == [body["index"]]
    other = corpus_api.get("/v1/corpus/sequence", params={"seed": 6}).json()
    assert other["index"] != body["index"]

    assert_error(corpus_api.get("/v1/corpus/sequence", params={"seed": "x"}), 422)
    assert_error(corpus_api.get("/v1/corpus/sequence", params={"seed": -1}), 422)
    error = assert_error(api.get("/v1/corpus/sequence"), 503, "corpus_unavailable")
    assert "corpus" in error["message"].lower()
