"""The long-running commands and the one that prepares for them: `serve` (HTTP server, with the
worker unless told otherwise), `worker` and `migrate`, and the stop request (SIGTERM, SIGINT)
they honour from their first moment (R-Q-6)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from df_middleware.cli.agents import agents_from_settings, apply_at_start
from df_middleware.cli.configuration import load_settings
from df_middleware.cli.database import open_database, prepare_schema, run_with_database
from df_middleware.cli.output import command_log, console, start_logging
from df_middleware.config import Settings
from df_middleware.memory import pin_mmap_threshold

if TYPE_CHECKING:
    from df_middleware.agents.directory import AgentSpec
    from df_middleware.queue.worker import Worker


class StopRequest:
    """SIGTERM or SIGINT, caught from the moment a long-running command (`serve`, `worker`) starts.

    Start-up is a sequence of steps (reach the database, migrate it, build the clients) that are
    not cut in the middle: a signal only records the request, the current step finishes, and the
    command exits 0 instead of starting the next one. Once running, the same request stops the
    worker loop or the HTTP server gracefully. A second Ctrl-C while the first is being honoured
    ends the process at once (a migration is one transaction, so even that is safe); a repeated
    SIGTERM is not escalated (a supervisor that wants it dead sends SIGKILL).

    Before the command installs this, the process is still Python starting up and importing: a
    signal then ends it by the default action, before it has done anything.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._listeners: list[Callable[[], None]] = []

    @classmethod
    def install(cls) -> StopRequest:
        stop = cls()
        if threading.current_thread() is threading.main_thread():  # only it may handle signals
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, stop._on_signal)
        return stop

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.signum = signum
        for listener in list(self._listeners):
            listener()

    @contextlib.contextmanager
    def forwarded_to(self, listener: Callable[[], None]) -> Iterator[None]:
        """Call `listener` on a stop request while the block runs (at once if one is pending).

        Listeners run inside the signal handler: they may only set flags or wake an event loop.
        """
        self._listeners.append(listener)
        try:
            if self.requested:
                listener()
            yield
        finally:
            self._listeners.remove(listener)

    @contextlib.asynccontextmanager
    async def as_event(self) -> AsyncIterator[asyncio.Event]:
        """An event of the running loop, set (and logged) when a stop is requested."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_loop() -> None:
            if not stopping.is_set():
                name = signal.Signals(self.signum).name if self.signum else "stop"
                command_log().info("shutdown.requested", signal=name)
                stopping.set()

        def wake_loop() -> None:
            loop.call_soon_threadsafe(on_loop)

        with self.forwarded_to(wake_loop):
            yield stopping


# --- the commands ----------------------------------------------------------------------------------


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default PORT).")] = None,
    no_worker: Annotated[
        bool,
        typer.Option("--no-worker", help="HTTP server only (default: SERVE_WITH_WORKER decides)."),
    ] = False,
    workers: Annotated[int, typer.Option(min=1, help="HTTP server processes.")] = 1,
) -> None:
    """Run the HTTP server and, unless --no-worker or SERVE_WITH_WORKER=false, the worker and
    scheduler in the same process. SIGTERM or Ctrl-C stops it gracefully, also during start-up."""
    stop = StopRequest.install()
    settings = load_settings()
    bind_host, bind_port = host or settings.host, port or settings.port
    # The address actually served is the one the service advertises (OAuth redirect URI) when
    # PUBLIC_BASE_URL does not say otherwise.
    settings = settings.model_copy(update={"host": bind_host, "port": bind_port})
    run_worker = False if no_worker else settings.serve_with_worker
    start_logging(settings)
    from df_middleware.db.session import database_label

    log = command_log()
    log.info(
        "service.starting",
        host=bind_host,
        port=bind_port,
        processes=workers,
        worker=run_worker,
        database=database_label(settings.database_url),
    )
    agents = agents_from_settings(settings)  # a bad AGENTS_FILE stops start-up here (R-AG-5)
    run_with_database(_serve_start_up(stop, settings, agents), settings.database_url)
    if stop.requested:
        log.info("service.stopped", during="start-up")
        return
    _serve_http(stop, settings, run_worker=run_worker, workers=workers)


async def _serve_start_up(stop: StopRequest, settings: Settings, agents: list[AgentSpec] | None) -> None:
    """Migrate before the HTTP server starts, so that a database that cannot be reached is one
    line (uvicorn would print the lifespan's traceback) and N server processes do not race to
    migrate. With AUTO_MIGRATE=false the server starts regardless and /readyz says what is wrong.
    Then AGENTS_FILE is applied, once, however many server processes and workers follow."""
    from df_middleware.db.migrate import SchemaNotCurrent
    from df_middleware.db.session import DatabaseUnavailable

    async with stop.as_event() as stopping:
        db = open_database(settings)
        try:
            if settings.auto_migrate:
                await prepare_schema(db, settings)
            else:
                try:
                    await prepare_schema(db, settings)
                except (DatabaseUnavailable, SchemaNotCurrent) as exc:
                    command_log().warning("database.not_ready", reason=str(exc))
                    if agents is not None:
                        command_log().warning("agents.not_applied", reason="database not ready")
                    return
            if agents is not None and not stopping.is_set():
                await apply_at_start(db, settings, agents)
        finally:
            await db.dispose()


def _serve_http(stop: StopRequest, settings: Settings, *, run_worker: bool, workers: int) -> None:
    import uvicorn

    from df_middleware.http_server import server_config

    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        # Each server process builds its app from the environment: pass the choices through it.
        os.environ["HOST"], os.environ["PORT"] = settings.host, str(settings.port)
        if not run_worker:
            os.environ["SERVE_WITH_WORKER"] = "false"
        config = server_config(
            "df_middleware.app:create_app_from_env",
            settings,
            host=settings.host,
            port=settings.port,
            workers=workers,
            factory=True,
        )
        supervisor = Multiprocess(config, sockets=[config.bind_socket()])  # it handles signals now
        if not stop.requested:
            supervisor.run()
        return
    from df_middleware.app import create_app

    application = create_app(settings, run_worker=run_worker)
    server = uvicorn.Server(server_config(application, settings, host=settings.host, port=settings.port))

    def stop_server() -> None:
        server.should_exit = True

    # uvicorn takes the signals over while it serves and hands them back (re-raised) afterwards:
    # a stop requested before it took over, or re-raised after, ends in exit 0 all the same.
    with stop.forwarded_to(stop_server):
        server.run()
    if not server.started:
        raise typer.Exit(3)  # uvicorn's "startup failed"; it has logged why


def worker(
    once: Annotated[bool, typer.Option("--once", help="Process what is due now, then exit.")] = False,
) -> None:
    """Run the worker and the scheduler (no HTTP server). SIGTERM or Ctrl-C stops it gracefully,
    also during start-up (exit 0)."""
    stop = StopRequest.install()
    settings = load_settings()
    start_logging(settings)
    from df_middleware.db.session import database_label

    pinned = pin_mmap_threshold()  # a long-lived worker's RSS must not creep (memory.py)
    command_log().info(
        "worker.starting",
        database=database_label(settings.database_url),
        once=once,
        mmap_threshold_pinned=pinned,
    )
    agents = agents_from_settings(settings)  # a bad AGENTS_FILE stops start-up here (R-AG-5)
    run_with_database(_work(stop, settings, once=once, agents=agents), settings.database_url)


async def _work(stop: StopRequest, settings: Settings, *, once: bool, agents: list[AgentSpec] | None) -> None:
    from df_middleware.connectors.suite import Connectors
    from df_middleware.queue.scheduler import Scheduler
    from df_middleware.queue.worker import Worker

    log = command_log()
    async with stop.as_event() as stopping:
        db = open_database(settings)
        try:
            await prepare_schema(db, settings)
            if agents is not None and not stopping.is_set():
                await apply_at_start(db, settings, agents)
            if stopping.is_set():
                log.info("worker.stopped", during="start-up")
                return
            connectors = Connectors.from_settings(settings, db)
            try:
                the_worker = Worker(settings, db, connectors=connectors)
                if once:
                    processed = await _one_batch(the_worker, stopping, settings.shutdown_grace_seconds)
                    if processed is None:
                        console.print("stopped: the batch's unfinished events are pending again")
                    else:
                        console.print(f"processed {processed} events")
                    return
                scheduler = Scheduler(settings, db, connectors=connectors)
                await asyncio.gather(the_worker.run(stopping), scheduler.run(stopping))
            finally:
                await connectors.aclose()
        finally:
            await db.dispose()


async def _one_batch(the_worker: Worker, stopping: asyncio.Event, grace_seconds: float) -> int | None:
    """`worker --once`: one batch; on a stop request its events get the grace period to finish,
    then the rest are released back to pending (R-Q-6), as the looping worker does."""
    batch = asyncio.create_task(the_worker.run_once())
    stop_wait = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({batch, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if not batch.done():
            await asyncio.wait({batch}, timeout=grace_seconds)
        if not batch.done():
            batch.cancel()  # run_once releases what it had not finished
        with contextlib.suppress(asyncio.CancelledError):
            await batch
    finally:
        stop_wait.cancel()
    return None if batch.cancelled() else batch.result()


def migrate() -> None:
    """Apply pending database migrations (all in one transaction: an interrupted run applies none)."""
    from df_middleware.db.migrate import head_revision

    settings = load_settings()
    start_logging(settings)
    run_with_database(_migrate(settings), settings.database_url)
    console.print(f"database at migration {head_revision()}")


async def _migrate(settings: Settings) -> None:
    from df_middleware.db.migrate import read_schema_state, upgrade_to_head

    db = open_database(settings)
    try:
        state = await read_schema_state(db)
    finally:
        await db.dispose()
    if not state.is_known:
        raise state.not_current()
    await upgrade_to_head(settings.database_url)
