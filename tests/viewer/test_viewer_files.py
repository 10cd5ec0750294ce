"""The layer that serves the viewer and the offline docs (no browser): what is public, what
each page loads, and that every other request reaches the API unchanged."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from headscope.viewer.files import DOCS_CSP, STATIC

KEY = "viewer-files-key"


@pytest.fixture(scope="module")
def keyed(settings, runtime):
    from headscope.app import create_app

    app = create_app(settings.model_copy(update={"api_key": SecretStr(KEY)}), runtime=runtime)
    with TestClient(app) as client:
        yield client


def test_viewer_page_and_modules_are_served(api):
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-cache"
    # Every script and stylesheet the page names is served, and none is off-site.
    for path in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        if path.startswith("/"):
            assert api.get(path).status_code == 200, path
        else:
            assert not path.startswith(("http:", "https:", "//")), path
    for module in (STATIC / "js").glob("*.js"):
        answer = api.get(f"/viewer/js/{module.name}")
        assert answer.status_code == 200
        assert "javascript" in answer.headers["content-type"]
        # Modules import each other by relative path only: nothing from a CDN.
        imports = re.findall(r'from "([^"]+)"', answer.text)
        assert all(name.startswith("./") for name in imports), imports


def test_docs_load_their_assets_from_the_service(api):
    for path, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        page = api.get(path)
        assert page.status_code == 200
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert f"/docs-assets/{asset}" in sources
        assert page.headers["content-security-policy"] == DOCS_CSP
        assert not [source for source in sources if "//" in source], sources
        assert api.get(f"/docs-assets/{asset}").status_code == 200
    assert "validatorUrl" in api.get("/docs").text


def test_docs_behind_a_root_path_load_their_assets_under_it(api):
    behind_proxy = TestClient(api.app, root_path="/headscope")
    for path, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        page = behind_proxy.get(path)
        assert page.status_code == 200
        assert f"/headscope/docs-assets/{asset}" in page.text
        assert page.headers["content-security-policy"] == DOCS_CSP


def test_a_missing_viewer_file_is_a_404_envelope(api):
    answer = api.get("/viewer/js/missing.js")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"


def test_with_a_key_the_viewer_is_public_and_the_api_is_not(keyed):
    for path in ("/", "/viewer/js/main.js", "/viewer/viewer.css", "/docs", "/redoc"):
        assert keyed.get(path).status_code == 200, path
    assert keyed.get("/docs-assets/swagger-ui.css").status_code == 200
    assert keyed.get("/v1/model").status_code == 401
    # Only GET and HEAD of the viewer's own paths pass without the key.
    assert keyed.post("/", json={}).status_code == 401
    assert keyed.get("/viewerx").status_code == 401
    assert keyed.get("/v1/model", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
