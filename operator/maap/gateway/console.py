"""The web console (console/ in the repository), served by the gateway at /console.

Its built files ship inside the package (console_static/, built by `make console` and
committed), so a `pip install` or an image serves it without Node. The page itself holds
no data: it asks for an API key and calls the gateway's JSON API with it, so the console
has exactly the gateway's tenancy. Nothing it loads comes from anywhere but here.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "console_static"
PREFIX = "/console"
# The page loads only what this gateway serves: no CDN, no inline script, no framing.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Cache-Control": "no-cache"}  # fmt: skip


def mount_console(app: FastAPI) -> None:
    index = STATIC_DIR / "index.html"
    if not index.is_file():
        raise RuntimeError(
            f"the console's built files are missing from {STATIC_DIR}: run `make console`"
        )

    @app.get(PREFIX, include_in_schema=False)
    async def console_root() -> RedirectResponse:
        # The page's relative asset links need the trailing slash.
        return RedirectResponse(PREFIX + "/")

    @app.get(PREFIX + "/", include_in_schema=False)
    async def console_page() -> FileResponse:
        return FileResponse(index, headers=HEADERS)

    app.mount(PREFIX + "/assets", StaticFiles(directory=STATIC_DIR / "assets"), name="console")
