"""The web demo page at `/`: one static HTML file (inline CSS and JS, no third-party assets)
that calls the public /v1 API from the browser, so it shows exactly what a client gets.

It is served without the API key (it holds no data; its API calls send the key the user types)
and with a strict Content-Security-Policy: scripts and styles only by the hash of the inline
blocks, images only from this origin and from blob:/data: URLs, requests only to this origin.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

PATH = "/"


def _hashes(html: str, tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)


@lru_cache(maxsize=1)
def page() -> tuple[str, dict[str, str]]:
    """The HTML and its security headers (computed once)."""
    html = resources.files("saic.server").joinpath("static/index.html").read_text(encoding="utf-8")
    csp = (
        "default-src 'none'; "
        f"script-src {_hashes(html, 'script')}; style-src {_hashes(html, 'style')}; "
        "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    headers = {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-cache",
    }
    return html, headers


def mount_demo(app: FastAPI) -> None:
    """GET / -> the demo page (left out of the OpenAPI document: it is not part of the API)."""

    @app.get(PATH, include_in_schema=False, response_class=HTMLResponse)
    async def demo() -> HTMLResponse:
        html, headers = page()
        return HTMLResponse(html, headers=headers)
