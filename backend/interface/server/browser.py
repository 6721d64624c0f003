"""The browser live view: `GET /` and the static files under `/static`.

Everything the page needs ships inside the package (`backend/interface/server/static/`): no CDN,
no fonts, no build step. `static/pgcast.js` is the JavaScript client the page itself uses
and that other pages can import (`docs/javascript.md`).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")

# The page only talks to its own origin (EventSource, fetch and WebSocket alike) and
# renders event data as text, never as markup.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'none'"
)


async def index(_request: Request) -> Response:
    """GET /: the live view page."""
    return FileResponse(
        STATIC_DIR / "index.html",
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        },
    )


def static_mount() -> Mount:
    """`/static/...`: the page's script, style sheet and the JavaScript client."""
    return Mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
