"""``GET /``: the demo page, static files shipped inside the package (``service/web/``).

No build step: plain HTML, CSS and a script that calls ``/v1/models`` and ``/v1/classify``
from the browser. The files are read once, at the first request, from the installed package.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from ..errors import NotFound

router = APIRouter(tags=["demo"], include_in_schema=False)

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page loads nothing from elsewhere; images are shown from blob: URLs of the chosen file.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@lru_cache(maxsize=len(ASSETS))
def asset(name: str) -> bytes:
    return resources.files("service.web").joinpath(name).read_bytes()


def _serve(name: str) -> Response:
    return Response(
        asset(name),
        media_type=ASSETS[name],
        headers={
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        },
    )


@router.get("/")
async def index() -> Response:
    """The demo page: choose or drop an image, see its top-5 classes."""
    return _serve("index.html")


@router.get("/favicon.ico")
async def favicon() -> Response:
    """No icon: 204 rather than a 404 in every browser console."""
    return Response(status_code=204)


@router.get("/web/{name}")
async def web_asset(name: str) -> Response:
    """The page's script and stylesheet."""
    if name not in ASSETS:
        raise NotFound(f"no such file: /web/{name}")
    return _serve(name)
