"""The FastAPI application: :func:`create_app` builds it; the model is loaded once, at start-up.

Run it with ``deephealth serve`` or any ASGI server, e.g.
``uvicorn --factory deephealth.web.app:create_app``. Configuration comes from ``DEEPHEALTH_*``
environment variables (:mod:`deephealth.web.settings`). FastAPI: https://fastapi.tiangolo.com/.

Behind a reverse proxy that publishes the app under a sub-path and strips it (nginx
``location /deephealth/ { proxy_pass http://127.0.0.1:8000/; }``), set the ASGI ``root_path`` to
that prefix: ``deephealth serve --root-path /deephealth`` (uvicorn's ``root_path``) or
``DEEPHEALTH_ROOT_PATH`` (applied by :class:`RootPathMiddleware` when the server sets none). The
upload page uses relative URLs; ``/docs``, ``/redoc`` (fastapi-offline builds their asset and
``openapi.json`` URLs from the request's ``root_path``) and OpenAPI ``servers`` use the prefix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio.to_thread
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from deephealth import __version__, labels
from deephealth.readers.formats import ACCEPTED_FORMATS_TEXT
from deephealth.web.audit import router as audit_router
from deephealth.web.routes import STATIC_DIR, router
from deephealth.web.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from deephealth.inference import Predictor

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("deephealth.web.access")

DESCRIPTION = f"""
Pediatric chest X-ray decision support: **0 no pneumonia, 1 bacterial pneumonia, 2 viral pneumonia**,
with calibrated probabilities and a class activation heatmap.

{labels.INTENDED_USE}

Errors are JSON `{{"detail": "..."}}`: 413 upload over the limit, 415 a format other than
{ACCEPTED_FORMATS_TEXT} (the detail names it, e.g. HEIC/HEIF or AVIF), 422 an unreadable or
unsuitable image (truncated, no contrast, CT...).
"""


class RootPathMiddleware:
    """ASGI middleware: serve the app under a URL prefix that a reverse proxy strips, whatever the server.

    What ``uvicorn --root-path`` does, for servers started without one: an HTTP or WebSocket
    request whose scope has no ``root_path`` gets ``root_path = prefix`` and its ``path`` (and
    ``raw_path``) prefixed, as the ASGI spec wants; Starlette's routing strips it again, and
    FastAPI's OpenAPI ``servers`` and the docs pages build their URLs from it. A ``root_path``
    already set by the server is kept.

    Args:
        app: the ASGI application to wrap.
        root_path: the prefix, as :func:`deephealth.web.settings.normalize_root_path` returns it
            (``/deephealth``, no trailing slash); ``""`` makes the middleware a no-op.
    """

    def __init__(self, app: ASGIApp, root_path: str) -> None:
        self.app = app
        self.root_path = root_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, with the prefix added to a scope that has no ``root_path``."""
        if self.root_path and scope["type"] in ("http", "websocket") and not scope.get("root_path"):
            scope = dict(scope)
            scope["root_path"] = self.root_path
            scope["path"] = self.root_path + scope["path"]
            if scope.get("raw_path") is not None:
                scope["raw_path"] = self.root_path.encode("ascii") + scope["raw_path"]
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None, predictor: Predictor | None = None) -> FastAPI:
    """Build the web application.

    Args:
        settings: service settings; ``None`` reads them from ``DEEPHEALTH_*`` environment variables.
        predictor: an already loaded :class:`deephealth.inference.Predictor` to serve (tests);
            ``None`` loads one from ``settings.model_dir`` when the app starts (lifespan).

    Returns:
        The FastAPI app. Routes: ``GET /`` (upload page), ``POST /api/v1/predictions``,
        ``GET /api/v1/model``, ``GET /api/v1/audit`` (admin key only), ``GET /healthz``,
        ``GET /docs`` (Swagger UI), ``GET /redoc`` (ReDoc), ``/static/*``. The two API pages load
        their JavaScript and CSS from this server (``/static-offline-docs/*``, bundled by the
        ``fastapi-offline`` package), never from a CDN: hospital servers are often offline.
        With ``settings.root_path`` (or a server ``root_path``) set, every route is still
        answered at these paths, and the API pages and OpenAPI ``servers`` point under the prefix.

    Raises:
        deephealth.artifact.ModelArtifactError: at start-up, if the model folder is missing or
            corrupted (the server then does not start).
    """
    settings = settings or Settings()
    logging.getLogger("deephealth").setLevel(settings.log_level.upper())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.predictor is None:
            from deephealth.inference import Predictor

            model_dir = settings.resolved_model_dir()
            start = time.perf_counter()
            app.state.predictor = Predictor(model_dir)
            art = app.state.predictor.artifact
            logger.info(
                "loaded model %s %s from %s in %.0f ms",
                art.name,
                art.version,
                model_dir,
                (time.perf_counter() - start) * 1000.0,
            )
        if settings.audit and app.state.audit is None:
            from deephealth.audit import open_audit_log

            app.state.audit = await anyio.to_thread.run_sync(open_audit_log, settings.database_url)
        try:
            yield
        finally:
            if app.state.audit is not None:
                await anyio.to_thread.run_sync(app.state.audit.close)
                app.state.audit = None

    # FastAPIOffline: a FastAPI whose /docs and /redoc pages use the Swagger UI and ReDoc assets
    # shipped inside the fastapi-offline wheel (served under /static-offline-docs), no CDN.
    app = FastAPIOffline(
        title="Deep Health",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.predictor = predictor
    app.state.model_card = None
    app.state.limiter = None  # anyio.CapacityLimiter(settings.max_concurrency), made in the event loop
    app.state.audit = None  # deephealth.audit.AuditLog, opened at start-up when settings.audit
    app.include_router(router)
    app.include_router(audit_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.middleware("http")
    async def log_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # Logs method, path, status, latency and upload size; never the body or query values.
        start = time.perf_counter()
        response = await call_next(request)
        access_logger.info(
            "%s %s %d %.1f ms upload_bytes=%s",
            request.method,
            request.url.path,
            response.status_code,
            (time.perf_counter() - start) * 1000.0,
            getattr(request.state, "upload_bytes", "-"),
        )
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
        return JSONResponse(status_code=422, content={"detail": "; ".join(parts) or "invalid request"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"detail": str(exc.detail)}, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: log the traceback (it holds no image content) and answer JSON.
        logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": "internal error"})

    if settings.root_path:
        # Outermost of our middlewares, so the access log shows the path as the client asked for it.
        app.add_middleware(RootPathMiddleware, root_path=settings.root_path)
    return app

