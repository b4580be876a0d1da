"""The API reference at `/docs`: Swagger UI served from the package, so it works offline and
under a Content-Security-Policy that allows only 'self'.

FastAPI's own `/docs` loads Swagger UI from a CDN (a blank page offline, and a third party on
every visit) and starts it with an inline script, which a strict CSP refuses. Here the Swagger
UI files come from the `fastapi-offline` package (it ships Swagger UI 5's dist files, needed
for OpenAPI 3.1), and `web/docs/api-docs.js` starts it with the schema's URL taken from a data
attribute. ReDoc is not served: its bundle injects inline styles and starts workers from `blob:`
URLs, which the CSP would have to allow; one API browser is enough.

`WASTATS_DOCS=off` serves neither `/docs` nor `/openapi.json` (see `wastats.app`).
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from wastats.api.dashboard import CONTENT_SECURITY_POLICY, WEB_DIR, HardenedStatic, page

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"

# Swagger UI's stylesheet draws its icons as data: SVG images; nothing else differs from the
# dashboard's policy.
DOCS_CONTENT_SECURITY_POLICY = CONTENT_SECURITY_POLICY.replace(
    "img-src 'self';", "img-src 'self' data:;"
)


def install_api_docs(app: FastAPI) -> None:
    """Serve Swagger UI at `/docs` for `app.openapi_url` (which must be set)."""
    # Our start-up script first, then the package's Swagger UI files, under one path.
    assets = HardenedStatic(directory=WEB_DIR / "docs", packages=[("fastapi_offline", "static")])
    app.mount(ASSETS_PATH, assets, name="api-docs-assets")
    app.add_route(DOCS_PATH, api_docs, methods=["GET"], name="api-docs", include_in_schema=False)


async def api_docs(request: Request) -> Response:
    root = str(request.scope.get("root_path", ""))
    response = page(
        request,
        "api_docs.html",
        assets=root + ASSETS_PATH,
        openapi_url=root + str(request.app.openapi_url),
    )
    response.headers["Content-Security-Policy"] = DOCS_CONTENT_SECURITY_POLICY
    return response
