"""The web page at `/`: plain HTML, JS and CSS shipped inside the package, no build step.

The page itself needs no API key (it holds no data); it calls the API from the browser with
the key the user types in, and asks for one only when `/v1/models` answers 401.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

router = APIRouter(include_in_schema=False)

_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "pcm16-worklet.js": "text/javascript; charset=utf-8",
}

# Everything the page loads comes from this server ('self' covers its own ws: for /v1/realtime);
# recordings play from blob: URLs.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; media-src 'self' blob:; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _read(name: str) -> bytes:
    return resources.files("harken").joinpath("web", name).read_bytes()


def _file(name: str) -> Response:
    return Response(_read(name), media_type=_FILES[name], headers=_SECURITY_HEADERS)


@router.get("/")
async def index() -> Response:
    return _file("index.html")


@router.get("/web/{name}")
async def asset(name: str) -> Response:
    if name not in _FILES or name == "index.html":
        raise HTTPException(status_code=404)
    return _file(name)
