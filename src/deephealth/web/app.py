"""The FastAPI application: :func:`create_app` builds it; the model is loaded once, at start-up.

Run it with ``deephealth serve`` or any ASGI server, e.g.
``uvicorn --factory deephealth.web.app:create_app``. Configuration comes from ``DEEPHEALTH_*``
environment variables (:mod:`deephealth.web.settings`). FastAPI: https://fastapi.tiangolo.com/.
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

    return app

