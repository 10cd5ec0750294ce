"""The web viewer at `/`, and the API docs at /docs and /redoc, all served from package files.

Nothing is loaded from a CDN: the viewer is plain HTML, CSS and JavaScript modules in
`static/`, and Swagger UI and ReDoc come from the `fastapi-offline` package's static files.

`install_viewer(app)` adds one outermost ASGI layer that answers GET and HEAD for the viewer's
own paths and hands every other request on untouched. Outermost, so the pages load without the
API key (as the docs do); the viewer then asks for the key and sends it with each API call.
Call it after `install_middleware`, which is what makes the layer outermost.
"""

from headscope.viewer.files import VIEWER_PATHS, ViewerFiles, install_viewer

__all__ = ["VIEWER_PATHS", "ViewerFiles", "install_viewer"]
