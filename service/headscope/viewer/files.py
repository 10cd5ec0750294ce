"""The ASGI layer that serves the viewer's files and the offline API docs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from headscope.api.guards import app_path
from headscope.api.responses import error_body

STATIC = Path(__file__).parent / "static"
# Swagger UI's and ReDoc's bundles (MIT and Apache-2.0), shipped inside the fastapi-offline wheel.
DOCS_ASSETS = Path(str(files("fastapi_offline") / "static"))

VIEWER_PATHS = ("/", "/docs", "/redoc")
VIEWER_PREFIXES = ("/viewer/", "/docs-assets/")

# The viewer talks to its own origin only; a stray external URL in it fails in the browser too.
VIEWER_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
# Swagger UI runs an inline script; ReDoc draws its maker's logo from the web, which this refuses
# before any request leaves the browser (the page hides a logo that fails to load).
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; worker-src 'self' blob:; font-src 'self' data:"
)
# The files change with the package: let the browser revalidate (ETag) instead of guessing.
NO_CACHE = (b"cache-control", b"no-cache")


def is_viewer_path(path: str) -> bool:
    return path in VIEWER_PATHS or path.startswith(VIEWER_PREFIXES)


async def index(request: Request) -> Response:
    return FileResponse(
        STATIC / "index.html",
        media_type="text/html",
        headers={"Content-Security-Policy": VIEWER_CSP},
    )


def docs_pages(openapi_url: str, title: str) -> list[Route]:
    def swagger(root: str) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}/docs-assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs-assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs-assets/favicon.png",
            # No badge from the public validator service.
            swagger_ui_parameters={"validatorUrl": None},
        )

    def redoc(root: str) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{root}/docs-assets/redoc.standalone.js",
            redoc_favicon_url=f"{root}/docs-assets/favicon.png",
            with_google_fonts=False,
        )

    return [Route("/docs", _docs_page(swagger)), Route("/redoc", _docs_page(redoc))]


def _docs_page(render: Callable[[str], HTMLResponse]) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint for a docs page that `render` draws for the app's root path, under DOCS_CSP."""

    async def endpoint(request: Request) -> Response:
        page = render(request.scope.get("root_path", ""))
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    return endpoint


async def not_found(request: Request, error: HTTPException) -> Response:
    # The API's one error envelope, for a missing viewer file too.
    code = "not_found" if error.status_code == 404 else "http_error"
    return Response(
        error_body(code, f"{error.detail}: {request.url.path}"),
        status_code=error.status_code,
        media_type="application/json",
    )


class ViewerFiles:
    """Answer GET/HEAD for the viewer's paths from package files; pass everything else on."""

    def __init__(self, app: ASGIApp, openapi_url: str | None, title: str) -> None:
        self.app = app
        routes: list[Route | Mount] = [Route("/", index)]
        if openapi_url:
            routes += docs_pages(openapi_url, title)
        routes += [
            Mount("/viewer", StaticFiles(directory=STATIC)),
            Mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS)),
        ]
        self.files = Starlette(
            routes=routes,
            exception_handlers={HTTPException: not_found},  # type: ignore[dict-item]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in ("GET", "HEAD")
            or not is_viewer_path(app_path(scope))
        ):
            await self.app(scope, receive, send)
            return

        async def send_uncached(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), NO_CACHE]
            await send(message)

        await self.files(scope, receive, send_uncached)


def install_viewer(app: FastAPI) -> None:
    """Serve the viewer at `/` and offline docs at /docs and /redoc (build the app with
    docs_url=None, redoc_url=None). Call after the request guards are installed: the layer added
    last runs first, so the viewer's files are public while the API keeps its key."""
    app.add_middleware(ViewerFiles, openapi_url=app.openapi_url, title=app.title)
