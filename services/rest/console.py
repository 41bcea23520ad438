"""The web console: the single-page app built from console/ (`make install` builds it into
console/dist), served at `/` beside the API.

- `/assets/…`: Vite's content-hashed files, cached for a year as immutable.
- Any other GET path outside the API (`/`, `/chat/thread_…`, `/usage`, …): index.html, never
  cached, so a new build is picked up on the next load. The console answers only requests
  that no API route matched (it sits in the 404 handler), and never under `/v1`, `/docs`,
  `/openapi.json` or `/healthz`: an unknown `/v1/…` path is still OpenAI's 404.
- Every console response carries a strict Content-Security-Policy: scripts and styles only
  from this origin (no inline script), connections only to this origin, no framing.
- Without a build, `/` answers 503 with a message saying to run `make install`; the API works.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response


# Paths the console never answers for (API, API docs, health).
RESERVED = ("v1", "docs", "openapi.json", "healthz")

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob: data:",
    "connect-src 'self'",
    "font-src 'self'",
    "manifest-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}
NOT_BUILT = ("The Parley console is not built. Run `make install` (it runs `npm ci` and the build in console/), "
             "or set PARLEY_REST_CONSOLE_DIR to a built console. The API is served under /v1.\n")

mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/css", ".css")
mimetypes.add_type("image/svg+xml", ".svg")


def default_directory() -> Path:
    """console/dist of the source tree this package runs from."""
    return Path(__file__).resolve().parents[2] / "console" / "dist"


class Console:
    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self.assets = self.directory / "assets"

    @property
    def built(self) -> bool:
        return (self.directory / "index.html").is_file()

    def index(self) -> Response:
        if not self.built:
            return PlainTextResponse(NOT_BUILT, status_code=503, headers={"cache-control": "no-store",
                                                                          **SECURITY_HEADERS})
        return FileResponse(self.directory / "index.html", media_type="text/html; charset=utf-8",
                            headers={"cache-control": "no-cache", **SECURITY_HEADERS})

    def asset(self, name: str) -> Response:
        path = (self.assets / name).resolve()
        if not name or not path.is_relative_to(self.assets) or not path.is_file():
            return PlainTextResponse("No such console asset.\n", status_code=404, headers=SECURITY_HEADERS)
        return FileResponse(path, headers={"cache-control": "public, max-age=31536000, immutable",
                                           **SECURITY_HEADERS})

    def file(self, name: str) -> Response | None:
        """A file at the build's top level (favicon and the like), if there is one."""
        if "/" in name or not name:
            return None
        path = self.directory / name
        if not path.is_file() or name == "index.html":
            return None
        return FileResponse(path, headers={"cache-control": "public, max-age=3600", **SECURITY_HEADERS})


    def respond(self, request: Request) -> Response | None:
        """The console's answer to a request no API route matched, or None (then it is the
        API's 404). Only GET and HEAD, and never under the API's own paths."""
        if request.method not in ("GET", "HEAD"):
            return None
        path = request.url.path.lstrip("/")
        first = path.split("/", 1)[0]
        if first in RESERVED:
            return None
        if first == "assets":
            return self.asset(path.split("/", 1)[1] if "/" in path else "")
        return self.file(path) or self.index()
