"""The viewer in a real browser (Debian's chromium) against a real `headscope serve`: what it
shades is the API's numbers, its permalinks, export, API-key prompt and keyboard reach.

Each test leaves a screenshot of the views it drew in the `screenshots` folder (not committed).
"""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr

from tests.helpers import ServerThread

TEXT = 'Tom looked at the sky. He said, "The sun is hot today." Then he ran to the lake.'
PAIR = "Tom looked at the sky. He said that the sun was hot today. Then he ran to the lake."
TOLERANCE = 1e-4
VIEWS = ("tokens", "activity", "attention", "probe", "corpus", "compare", "ablation")


def settle(page) -> None:
    """Wait until every action the viewer started has loaded and drawn (body[data-pending])."""
    # A selector, not a script: the viewer's CSP forbids evaluating strings in the page.
    page.wait_for_selector("body[data-pending='0']", state="attached")


def open_viewer(new_page, base_url: str, fragment: str = ""):
    return open_url(new_page, f"{base_url}/{fragment}")


def open_url(new_page, url: str):
    page = new_page()
    page.goto(url)
    settle(page)
    return page


def values(page, selector: str) -> np.ndarray:
    return np.array(
        page.eval_on_selector_all(selector, "els => els.map(e => Number(e.dataset.value))")
    )


def post(base_url: str, path: str, body: dict) -> dict:
    response = httpx.post(f"{base_url}{path}", json=body, timeout=60)
    response.raise_for_status()
    return response.json()


def show(page, view: str) -> None:
    page.click(f"#tab-{view}")
    settle(page)


def analyze(page, text: str) -> None:
    page.fill("#text", text)
    page.click("#analyze")
    settle(page)


def test_views_shade_the_apis_numbers(new_page, viewer_server, screenshots):
    page = open_viewer(new_page, viewer_server)
    analyze(page, TEXT)
    page.click("#cell-L2H0")
    settle(page)
    assert "selected" in page.get_attribute("#cell-L2H0", "class")

    # Text: the model's tokens with NLTK's tags, as POST /v1/tag gives them.
    tagged = post(viewer_server, "/v1/tag", {"text": TEXT})["tokens"]
    shown = page.eval_on_selector_all(
        "#tokens-pos .tok", "els => els.map(e => [e.textContent, e.dataset.tag])"
    )
    assert shown == [[token["text"], token["tag"]] for token in tagged]
    quote = next(token for token in tagged if token["tag"] == "``")
    page.hover(f"#tokens-pos-t{quote['index']}")
    hover = page.inner_text("#hover")
    assert "tag ``" in hover and f"chars {quote['start']}–{quote['end']}" in hover
    assert f"id {quote['id']}" in hover
    page.screenshot(path=screenshots / "1-text.png", full_page=True)

    # Grid: each head's mean activity.
    every_head = np.array(post(viewer_server, "/v1/activity", {"text": TEXT})["activity"])
    np.testing.assert_allclose(
        values(page, "#grid .cell"), every_head.mean(axis=2).ravel(), atol=TOLERANCE
    )

    # Activity: L2H0's activity per token, bold from the threshold, quotations marked.
    show(page, "activity")
    expected = np.array(
        post(viewer_server, "/v1/activity", {"text": TEXT, "layers": [2], "heads": [0]})[
            "activity"
        ][0][0]
    )
    np.testing.assert_allclose(values(page, "#tokens-activity .tok"), expected, atol=TOLERANCE)
    bold = page.eval_on_selector_all(
        "#tokens-activity .tok", "els => els.map(e => e.classList.contains('strong'))"
    )
    assert bold == list(expected >= 0.5 * expected.max())
    quoted = page.eval_on_selector_all(
        "#tokens-activity .tok", "els => els.map(e => e.classList.contains('quoted'))"
    )
    (span,) = post(viewer_server, "/v1/corpus/quotes", {"texts": [TEXT]})["spans"]
    opening, closing = span["opening_token"], span["closing_token"]
    assert quoted == [opening < t["index"] < closing for t in tagged]
    assert sum(quoted) >= 5
    page.screenshot(path=screenshots / "2-activity.png", full_page=True)

    # Attention: one query's row, its top keys, and the whole pattern on demand.
    show(page, "attention")
    query = closing - 1
    page.click(f"#tokens-attention-t{query}")
    settle(page)
    row = post(
        viewer_server,
        "/v1/attention",
        {"text": TEXT, "layer": 2, "head": 0, "query": query},
    )["pattern"][0]
    np.testing.assert_allclose(values(page, "#tokens-attention .tok"), row, atol=TOLERANCE)
    top = values(page, "#top-keys li")
    np.testing.assert_allclose(top, sorted(row, reverse=True)[: len(top)], atol=TOLERANCE)
    assert page.get_attribute("#top-keys li", "data-index") == str(int(np.argmax(row)))
    page.click("#heatmap-button")
    settle(page)
    size = len(tagged)
    assert page.eval_on_selector("#heatmap", "c => c.width") >= size
    page.screenshot(path=screenshots / "3-attention.png", full_page=True)

    # Probe: the head's prediction per token beside NLTK's tag.
    show(page, "probe")
    predicted = post(
        viewer_server,
        "/v1/probes/predict",
        {"text": TEXT, "vector": "key", "layer": 2, "head": 0, "top_k": 3},
    )
    rows = page.eval_on_selector_all(
        "#probe-rows tr",
        "rows => rows.map(r => [r.children[2].textContent, r.children[3].textContent, "
        "r.classList.contains('mismatch')])",
    )
    assert rows == [
        [token["tag"], prediction["tag"], token["tag"] != prediction["tag"]]
        for token, prediction in zip(predicted["tokens"], predicted["predictions"], strict=True)
    ]
    np.testing.assert_allclose(
        values(page, "#probe-rows td[data-value]"),
        [prediction["probability"] for prediction in predicted["predictions"]],
        atol=TOLERANCE,
    )
    page.screenshot(path=screenshots / "4-probe.png", full_page=True)

    # Corpus: attention from NN by key tag, and layer 2's activity on NN, over 20 sequences.
    show(page, "corpus")
    by_tag = post(
        viewer_server,
        "/v1/corpus/attention-by-tag",
        {"layer": 2, "head": 0, "from_tag": "NN", "n_sequences": 20},
    )
    np.testing.assert_allclose(
        values(page, "#chart-attention rect.bar[data-value]"),
        [row["attention"] for row in by_tag["rows"][:15]],
        atol=TOLERANCE,
    )
    activity = post(viewer_server, "/v1/corpus/activity-by-tag", {"tag": "NN", "n_sequences": 20})
    np.testing.assert_allclose(
        values(page, "#chart-activity rect.bar[data-value]"),
        activity["mean_at_position"][2],
        atol=TOLERANCE,
    )
    caption = page.inner_text("#corpus-caption")
    assert f"{by_tag['source']['sequences']} sequences, {by_tag['source']['tokens']} tokens" in (
        caption
    )
    page.screenshot(path=screenshots / "5-corpus.png", full_page=True)

    # Compare: the heads whose mean activity differs most between the two texts.
    show(page, "compare")
    page.fill("#compare-text", PAIR)
    page.click("#compare-run")
    settle(page)
    other = np.array(post(viewer_server, "/v1/activity", {"text": PAIR})["activity"])
    difference = (every_head.mean(axis=2) - other.mean(axis=2)).ravel()
    largest = difference[np.argsort(-np.abs(difference), kind="stable")][:10]
    np.testing.assert_allclose(values(page, "#compare-heads li"), largest, atol=TOLERANCE)
    page.select_option("#measure", "compare")
    settle(page)
    np.testing.assert_allclose(values(page, "#grid .cell"), difference, atol=TOLERANCE)
    page.screenshot(path=screenshots / "6-compare.png", full_page=True)

    # Grid by probe score: the run's F1 grid for a tag.
    page.select_option("#measure", "probe")
    page.select_option("#probe-tag", "NN")
    settle(page)
    scores = httpx.get(
        f"{viewer_server}/v1/probes/scores", params={"vector": "key", "tag": "NN", "metric": "f1"}
    ).json()["scores"]
    np.testing.assert_allclose(
        values(page, "#grid .cell"), np.array(scores).ravel(), atol=TOLERANCE
    )
    page.screenshot(path=screenshots / "7-grid-probe-f1.png", full_page=True)


def test_local_layer_marks_the_window_edge(new_page, viewer_server, screenshots):
    # Odd layers are local: a query past the window's reach sees only the last 256 positions.
    text = " ".join(["The cat sat on the mat."] * 50)
    page = open_viewer(new_page, viewer_server, "#view=attention&l=1&h=3")
    analyze(page, text)
    tokens = page.eval_on_selector_all("#tokens-attention .tok", "els => els.length")
    window = httpx.get(f"{viewer_server}/v1/model").json()["window_size"]
    query = tokens - 1
    assert query >= window
    page.click(f"#tokens-attention-t{query}")
    settle(page)
    first_visible = query - window + 1
    edge = page.eval_on_selector_all(
        "#tokens-attention .tok.window-edge", "els => els.map(e => Number(e.dataset.index))"
    )
    assert edge == [first_visible]
    shaded = values(page, "#tokens-attention .tok")
    assert np.all(shaded[:first_visible] == 0)
    assert shaded[first_visible:].sum() == pytest.approx(1, abs=1e-3)
    page.locator(f"#tokens-attention-t{first_visible}").scroll_into_view_if_needed()
    page.screenshot(path=screenshots / "8-local-window.png")


def test_an_api_error_is_shown_not_swallowed(new_page, viewer_server):
    page = open_viewer(new_page, viewer_server)
    limit = httpx.get(f"{viewer_server}/v1/model").json()["max_tokens"]
    analyze(page, " cat" * (limit + 10))
    status = page.inner_text("#status")
    assert status.startswith("413 ") and str(limit) in status
    assert "error" in page.get_attribute("#status", "class")


def test_draw_a_story_puts_the_next_seeds_sequence_in_the_text_box(new_page, viewer_server):
    def story(seed: int) -> str:
        response = httpx.get(f"{viewer_server}/v1/corpus/sequence", params={"seed": seed})
        response.raise_for_status()
        return response.json()["text"]

    page = open_viewer(new_page, viewer_server)
    page.click("#draw-story")
    settle(page)
    assert page.input_value("#text") == story(0)
    assert "seed=0" in page.url
    # The drawn story was analysed: one token strip cell per token the API gives.
    tokens = post(viewer_server, "/v1/tag", {"text": story(0)})["tokens"]
    assert page.locator("#tokens-pos .tok").count() == len(tokens)

    # The seed is in the permalink: a restored page draws the seed after it.
    restored = open_url(new_page, page.url)
    restored.click("#draw-story")
    settle(restored)
    assert restored.input_value("#text") == story(1) != story(0)
    assert "seed=1" in restored.url


def test_corpus_confidence_intervals_are_drawn_when_the_api_gives_them(
    new_page, viewer_server, screenshots
):
    # The corpus endpoints have no `ci` fields yet: add them to the real answers on their way
    # to the page, as [low, high] per row and per [layer][head].
    def with_intervals(route):
        answer = route.fetch()
        body = answer.json()
        if "rows" in body:
            for row in body["rows"]:
                row["ci"] = {"attention": [0.9 * row["attention"], 1.1 * row["attention"]]}
        else:
            means = body["mean_at_position"]
            body["ci"] = {"mean_at_position": [[[0.8 * m, 1.2 * m] for m in row] for row in means]}
        route.fulfill(response=answer, json=body)

    page = new_page()
    page.route("**/v1/corpus/*-by-tag", with_intervals)
    page.goto(f"{viewer_server}/#view=corpus&ctag=DT&n=4")
    settle(page)
    bars = page.locator("#chart-attention rect.bar[data-value]").count()
    # A whisker and its two ends per bar.
    assert page.locator("#chart-attention line.ci").count() == 3 * bars > 0
    assert page.locator("#chart-activity line.ci").count() == 3 * 16
    whisker = page.locator("#chart-activity .highlight line.ci").first
    value = float(page.get_attribute("#chart-activity .highlight rect.bar", "data-value"))
    low, high = (float(whisker.get_attribute(end)) for end in ("x1", "x2"))
    assert high > low and value > 0
    page.screenshot(path=screenshots / "5b-corpus-intervals.png", full_page=True)


def test_permalink_restores_the_same_state(new_page, viewer_server):
    page = open_viewer(new_page, viewer_server)
    analyze(page, TEXT)
    page.click("#cell-L5H5")
    settle(page)
    show(page, "attention")
    page.click("#tokens-attention-t7")
    settle(page)
    page.select_option("#measure", "activity-token")
    settle(page)
    link = page.url
    assert "l=5" in link and "h=5" in link and "t=7" in link

    def snapshot(viewer):
        return {
            "text": viewer.input_value("#text"),
            "head": viewer.get_attribute("#grid", "aria-activedescendant"),
            "token": viewer.get_attribute("#tokens-attention", "data-selected"),
            "tab": viewer.get_attribute("#tab-attention", "aria-selected"),
            "measure": viewer.input_value("#measure"),
            "grid": values(viewer, "#grid .cell").tolist(),
            "row": values(viewer, "#tokens-attention .tok").tolist(),
        }

    restored = open_url(new_page, link)
    assert snapshot(restored) == snapshot(page)
    assert snapshot(restored)["head"] == "cell-L5H5"


def test_export_gives_png_svg_and_json(new_page, viewer_server, screenshots):
    page = open_viewer(new_page, viewer_server, "#view=attention&t=4")
    page.click("#heatmap-button")
    settle(page)
    with page.expect_download() as png:
        page.click("#export-png")
    saved = screenshots / "12-exported-attention.png"
    png.value.save_as(saved)
    data = saved.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.verify()
    assert image.width > 400 and image.height > 200
    # Not a blank page: the shaded tokens and the heatmap are in it.
    colours = Image.open(io.BytesIO(data)).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50

    with page.expect_download() as svg:
        page.click("#export-svg")
    markup = (svg.value.path()).read_text()
    assert markup.startswith("<svg") and "foreignObject" in markup

    with page.expect_download() as exported:
        page.click("#export-json")
    content = json.loads(exported.value.path().read_text())
    assert content["view"] == "attention" and content["data"]["query"] == 4
    row = post(
        viewer_server,
        "/v1/attention",
        {"text": content["state"]["text"], "layer": 2, "head": 0, "query": 4},
    )["pattern"][0]
    np.testing.assert_allclose(content["data"]["weights"], row, atol=TOLERANCE)


def test_api_key_is_asked_once_and_kept_out_of_the_url(
    new_page, settings, probes_runtime, screenshots
):
    from headscope.app import create_app

    key = "viewer-test-key"
    keyed = settings.model_copy(update={"api_key": SecretStr(key)})
    with ServerThread(create_app(keyed, runtime=probes_runtime)) as server:
        base_url = server.base_url
        assert httpx.get(f"{base_url}/").status_code == 200
        assert httpx.get(f"{base_url}/v1/model").status_code == 401

        page = new_page()
        page.goto(f"{base_url}/")
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key-input", "wrong-key")
        page.click("#key-ok")
        page.wait_for_selector("#key-reason:has-text('refused')")
        page.wait_for_selector("#key-dialog[open]")
        page.screenshot(path=screenshots / "9-api-key.png")
        page.fill("#key-input", key)
        page.click("#key-ok")
        settle(page)
        assert page.eval_on_selector_all("#tokens-pos .tok", "els => els.length") > 0
        assert page.evaluate("sessionStorage.getItem('headscope.apiKey')") == key
        assert key not in page.url
        # The key is kept for the session: a reload asks no more.
        page.reload()
        settle(page)
        assert not page.is_visible("#key-dialog")
        assert page.eval_on_selector_all("#grid .cell", "els => els.length") == 128


FOCUSABLE = """() => [...document.querySelectorAll(
    'a[href], button, select, textarea, input, [tabindex="0"]')]
  .filter(e => e.checkVisibility() && !e.closest('dialog:not([open])'))
  .map(e => e.id || e.getAttribute('href'))"""
ACTIVE = "() => document.activeElement.id || document.activeElement.getAttribute('href')"


def test_keyboard_alone_reaches_every_control(new_page, viewer_server):
    page = open_viewer(new_page, viewer_server)
    for view in VIEWS:
        # Reach the view's tab by Tab alone, open it with Enter.
        for _ in range(80):
            page.keyboard.press("Tab")
            if page.evaluate(ACTIVE) == f"tab-{view}":
                break
        page.keyboard.press("Enter")
        settle(page)
        assert page.get_attribute(f"#tab-{view}", "aria-selected") == "true"
        reached = set()
        for _ in range(len(page.evaluate(FOCUSABLE)) + 5):
            page.keyboard.press("Tab")
            reached.add(page.evaluate(ACTIVE))
        assert set(page.evaluate(FOCUSABLE)) <= reached, view

    # Arrow keys move the selected head and the selected token.
    page.focus("#grid")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowRight")
    settle(page)
    assert page.get_attribute("#grid", "aria-activedescendant") == "cell-L3H1"
    show(page, "attention")
    page.focus("#tokens-attention")
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")
    settle(page)
    assert page.get_attribute("#tokens-attention", "data-selected") == "1"
    assert page.get_attribute("#top-keys li", "data-index") is not None


def test_docs_and_redoc_render_offline(new_page, viewer_server, screenshots):
    page = new_page()
    page.goto(f"{viewer_server}/docs")
    page.wait_for_selector(".opblock-tag", timeout=30_000)
    assert page.locator(".opblock").count() >= 10
    page.screenshot(path=screenshots / "10-docs.png")
    page.goto(f"{viewer_server}/redoc")
    page.wait_for_selector(".api-content h1", timeout=30_000)
    page.screenshot(path=screenshots / "11-redoc.png")


def test_ablation_view_shows_the_apis_loss_changes(new_page, viewer_server, screenshots):
    page = open_viewer(new_page, viewer_server)
    show(page, "ablation")
    ablated = post(
        viewer_server,
        "/v1/ablate",
        {"text": TEXT, "heads": [{"layer": 2, "head": 0}], "mode": "zero", "top_k": 1},
    )
    np.testing.assert_allclose(
        values(page, "#ablation-rows td[data-value]"),
        [p["loss_change"] for p in ablated["predictions"]],
        atol=TOLERANCE,
    )
    np.testing.assert_allclose(
        values(page, "#ablation-tags td[data-value]"),
        [row["mean_loss_change"] for row in ablated["by_next_tag"]],
        atol=TOLERANCE,
    )
    assert page.text_content("#ablation-title") == "L2H0 ablated (zero z)"
    # The grid coloured by a head score: the API's grid, cell for cell.
    page.select_option("#measure", "induction")
    settle(page)
    scores = httpx.get(f"{viewer_server}/v1/heads/scores", params={"kind": "induction"}).json()
    np.testing.assert_allclose(
        values(page, "#grid .cell"), np.array(scores["scores"]).ravel(), atol=TOLERANCE
    )
    page.screenshot(path=screenshots / "7-ablation.png", full_page=True)
