"""The FastAPI application: webhooks, health, readiness and metrics.

`create_app(settings)` builds it; its lifespan opens the database, applies migrations (unless
AUTO_MIGRATE=false) and, unless `serve --no-worker`, runs the worker and scheduler in the same
process. `create_app_from_env` is the factory uvicorn imports when `serve --workers N` > 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from df_middleware import __version__
from df_middleware.admin.api import admin_api_router
from df_middleware.admin.api.jobs import AdminJobs
from df_middleware.admin.dashboard import dashboard_router
from df_middleware.admin.docs import install_api_docs
from df_middleware.admin.oauth import oauth_router
from df_middleware.config import Settings, get_settings
from df_middleware.connectors.suite import Connectors
from df_middleware.connectors.tokens import load_token_cipher
from df_middleware.db.migrate import current_revision, head_revision, upgrade
from df_middleware.db.session import Database, is_unavailable
from df_middleware.ingest.routes import DB_RETRY_AFTER_SECONDS, Ingest, webhook_router
from df_middleware.memory import pin_mmap_threshold
from df_middleware.observability import configure_logging, get_logger
from df_middleware.queue.operations import queue_stats
from df_middleware.queue.scheduler import Scheduler
from df_middleware.queue.worker import Worker
from df_middleware.request_guard import RequestGuard, request_id_of

log = get_logger(__name__)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    db: Database = app.state.db
    if settings.auto_migrate:
        await upgrade(settings.database_url)
    background: list[asyncio.Task[None]] = []
    stop = asyncio.Event()
    worker: Worker | None = None
    # One set of clients per process: the worker's handlers and the admin API's operator jobs
    # (a reconcile, a repair, the connections check) share its rate budget.
    connectors = Connectors.from_settings(settings, db)
    app.state.connectors = connectors
    if app.state.run_worker:
        worker = Worker(settings, db, connectors=connectors)
        scheduler = Scheduler(settings, db, connectors=connectors)
        background = [
            asyncio.create_task(worker.run(stop), name="worker"),
            asyncio.create_task(scheduler.run(stop), name="scheduler"),
        ]
    # The worker's heap (memory.py): pinned here, in the process that runs it, whichever way the
    # app was started (`serve`, or each process of `serve --workers N`: break14e finding 8).
    pinned = pin_mmap_threshold() if app.state.run_worker else False
    log.info(
        "service.started",
        worker=app.state.run_worker,
        database=db.dialect,
        version=__version__,
        mmap_threshold_pinned=pinned,
    )
    try:
        yield
    finally:
        stop.set()
        await app.state.admin_jobs.stop()
        if worker is not None:
            await worker.stop()
        if background:
            await asyncio.gather(*background, return_exceptions=True)
        app.state.connectors = None
        await connectors.aclose()
        await db.dispose()
        log.info("service.stopped")


def create_app(settings: Settings | None = None, *, run_worker: bool | None = None) -> FastAPI:
    """Build the application. `run_worker=None` follows SERVE_WITH_WORKER."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format, reveal_pii=settings.log_reveal_pii)
    if settings.blank_settings:
        log.warning("settings.empty_treated_as_unset", settings=list(settings.blank_settings))
    app = FastAPI(
        title="DF-Middleware",
        version=__version__,
        description="Keeps GoHighLevel, Aloware and Verity in step.",
        lifespan=_lifespan,
        # FastAPI's pages load their scripts from a CDN: /docs is served from the package instead
        # (admin/docs.py), and ReDoc not at all.
        docs_url=None,
        redoc_url=None,
    )
    db = Database(
        settings.database_url,
        pool_size=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout_seconds,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.run_worker = settings.serve_with_worker if run_worker is None else run_worker
    app.state.ingest = Ingest(settings, db)
    app.include_router(webhook_router(app.state.ingest))
    # --- GHL Marketplace OAuth (R-OA-1, R-SEC-5) ---
    # The token cipher is loaded (or its key generated) now, so that a bad TOKEN_ENCRYPTION_KEY
    # stops the service at start rather than at its first install or refresh.
    app.state.token_cipher = load_token_cipher(settings)
    app.include_router(oauth_router())
    # --- the operator's surface (SPEC §8.1) ---
    app.state.admin_jobs = AdminJobs()
    app.state.connectors = None  # opened by the lifespan
    app.include_router(admin_api_router())
    app.include_router(dashboard_router())  # /admin, the operator's dashboard (SPEC §8.2)
    install_api_docs(app)  # /docs offline, and the document's security schemes (SPEC §8.1)
    _add_operational_routes(app)
    _add_error_handlers(app)
    app.add_middleware(RequestGuard, body_timeout_seconds=settings.http_body_timeout_seconds)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` (several HTTP processes)."""
    return create_app()


def _add_operational_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["operations"], summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Database reachable and migrations current")
    async def readyz(request: Request) -> JSONResponse:
        db: Database = request.app.state.db
        head = head_revision()
        try:
            async with db.engine.connect() as conn:
                current = await current_revision(conn)
        except Exception as exc:
            return JSONResponse(
                {"status": "unavailable", "database": f"unreachable: {type(exc).__name__}"}, status_code=503
            )
        if current != head:
            return JSONResponse(
                {"status": "unavailable", "database": "ok", "migrations": f"at {current}, head is {head}"},
                status_code=503,
            )
        return JSONResponse({"status": "ready", "database": db.dialect, "migration": current})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics(request: Request) -> Response:
        settings: Settings = request.app.state.settings
        if settings.metrics_token is not None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            expected = settings.metrics_token.get_secret_value().encode()
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
                return JSONResponse({"error": "metrics need Authorization: Bearer <METRICS_TOKEN>"}, 401)
        with contextlib.suppress(Exception):  # queue gauges are best effort: metrics must render
            await queue_stats(request.app.state.db)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error body is `{"error": ...}`; nothing leaks a stack trace or a secret."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems: list[Any] = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()]
        return JSONResponse({"error": "invalid request", "details": problems}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette sends this response from outside the middleware stack, so the request id is
        # added here (RequestGuard put it in the scope; the log line carries it too).
        request_id = request_id_of(request.scope)
        headers = {"X-Request-ID": request_id} if request_id else {}
        if is_unavailable(exc):
            # Any route that needs the database (the OAuth callback, later the admin API) says so
            # truthfully: the caller may retry, nothing is wrong with its request.
            log.warning("http.database_unavailable", path=request.url.path, error=type(exc).__name__)
            headers["Retry-After"] = str(DB_RETRY_AFTER_SECONDS)
            return JSONResponse(
                {"error": "database unavailable, retry later"}, status_code=503, headers=headers
            )
        log.exception(
            "http.unhandled_error", path=request.url.path, error=type(exc).__name__, request_id=request_id
        )
        return JSONResponse({"error": "internal error"}, status_code=500, headers=headers)
