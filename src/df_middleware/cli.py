"""`df-middleware`: the command line. Commands are thin: parse, call a service, print.

Listing commands take `--json` for machine-readable output (the same object the admin API returns).

An operator's mistake (a bad setting, a database that cannot be reached or has no schema, a
malformed id) is one line on stderr and a non-zero exit, never a traceback; a command that fails
that way creates nothing (no stray SQLite file). Commands that need the schema migrate it first
when AUTO_MIGRATE is true, as `serve` does, and otherwise say to run `df-middleware migrate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from df_middleware.config import Settings, configuration_markdown, env_example, get_settings

if TYPE_CHECKING:
    from df_middleware.connectors.status import ConnectionReport
    from df_middleware.connectors.suite import Connectors
    from df_middleware.db.migrate import SchemaState
    from df_middleware.db.session import Database
    from df_middleware.queue.worker import Worker

T = TypeVar("T")

app = typer.Typer(
    help="DF-Middleware: keeps GoHighLevel, Aloware and Verity in step.",
    no_args_is_help=True,
    add_completion=False,
)
events_app = typer.Typer(help="Inspect and act on stored webhook events.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration reference.", no_args_is_help=True)
app.add_typer(events_app, name="events")
app.add_typer(config_app, name="config")
oauth_app = typer.Typer(help="GHL Marketplace OAuth installs (R-OA-1).", no_args_is_help=True)
app.add_typer(oauth_app, name="oauth")
simulate_app = typer.Typer(
    help="Run a simulator of an external system (SPEC §9): in-memory state, faults, `/_sim` control routes.",
    no_args_is_help=True,
)
app.add_typer(simulate_app, name="simulate")

console = Console()


def _fail(message: str, code: int = 1) -> NoReturn:
    """End the command with one line on stderr (plain: rich would wrap it at 80 columns)."""
    sys.stderr.write(f"df-middleware: {message}\n")
    raise typer.Exit(code)


def _settings() -> Settings:
    from pydantic import ValidationError
    from sqlalchemy.exc import ArgumentError

    from df_middleware.db.session import async_url

    try:
        settings = get_settings()
    except ValidationError as exc:
        # One line naming each setting and what is wrong with it; never the value given, which
        # may be a secret (a DATABASE_URL with a password in it, say).
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']).upper() or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        _fail(f"configuration error: {problems}", code=2)
    try:
        async_url(settings.database_url)  # the settings check the scheme; the rest is read here
    except (ValueError, ArgumentError):
        example = "sqlite:///path/to/file.db or postgresql://user:password@host:5432/dbname"
        _fail(f"configuration error: DATABASE_URL is not a URL such as {example}", code=2)
    return settings


def _configure_logging(settings: Settings) -> None:
    import logging

    from df_middleware.observability import configure_logging

    configure_logging(settings.log_level, settings.log_format, reveal_pii=settings.log_reveal_pii)
    # Alembic announces each plugin it loads, at INFO, when it is first imported: on every command
    # that touches the database, after logging is configured. Its migration lines are kept.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _log() -> Any:
    from df_middleware.observability import get_logger

    return get_logger("df_middleware.cli")


# --- a stop request, from a process's first moment (R-Q-6) ----------------------------------------


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
                _log().info("shutdown.requested", signal=name)
                stopping.set()

        def wake_loop() -> None:
            loop.call_soon_threadsafe(on_loop)

        with self.forwarded_to(wake_loop):
            yield stopping


# --- the database, as commands need it -------------------------------------------------------------


def _database(settings: Settings) -> Database:
    from df_middleware.db.session import Database

    return Database(
        settings.database_url,
        pool_size=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout_seconds,
    )


async def _prepare_schema(db: Database, settings: Settings) -> SchemaState:
    """Bring the schema to head when AUTO_MIGRATE allows it, else insist that it is there.

    Raises `DatabaseUnavailable` or `SchemaNotCurrent`, whose messages are one line for an operator.
    """
    from df_middleware.db.migrate import read_schema_state, upgrade_to_head
    from df_middleware.db.session import database_label

    state = await read_schema_state(db)
    if state.is_current:
        return state
    if not state.is_known or not settings.auto_migrate:
        raise state.not_current()
    log = _log()
    log.info("database.migrating", database=database_label(db.database_url), schema=state.describe())
    await upgrade_to_head(db.database_url)
    log.info("database.migrated", revision=state.head)
    return state


def _run_with_database(main: Coroutine[Any, Any, T], database_url: str) -> T:
    """Run `main`; a database that cannot be used, or has no current schema, is one line."""
    from df_middleware.db.migrate import SchemaNotCurrent
    from df_middleware.db.session import DatabaseUnavailable, explain_unavailable

    try:
        return asyncio.run(main)
    except (DatabaseUnavailable, SchemaNotCurrent) as exc:
        _fail(str(exc))
    except Exception as exc:
        explained = explain_unavailable(database_url, exc)
        if explained is None:
            raise
        _fail(str(explained))


def _run(factory: Callable[[Any], Awaitable[T]]) -> T:
    """Open the database (migrating it first when AUTO_MIGRATE allows), run one coroutine with
    it, close the database."""
    settings = _settings()
    _configure_logging(settings)

    async def main() -> T:
        db = _database(settings)
        try:
            await _prepare_schema(db, settings)
            return await factory(db)
        finally:
            await db.dispose()

    return _run_with_database(main(), settings.database_url)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


# --- processes -----------------------------------------------------------------------------------


@app.command()
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
    settings = _settings()
    bind_host, bind_port = host or settings.host, port or settings.port
    # The address actually served is the one the service advertises (OAuth redirect URI) when
    # PUBLIC_BASE_URL does not say otherwise.
    settings = settings.model_copy(update={"host": bind_host, "port": bind_port})
    run_worker = False if no_worker else settings.serve_with_worker
    _configure_logging(settings)
    from df_middleware.db.session import database_label

    log = _log()
    log.info(
        "service.starting",
        host=bind_host,
        port=bind_port,
        processes=workers,
        worker=run_worker,
        database=database_label(settings.database_url),
    )
    _run_with_database(_serve_start_up(stop, settings), settings.database_url)
    if stop.requested:
        log.info("service.stopped", during="start-up")
        return
    _serve_http(stop, settings, run_worker=run_worker, workers=workers)


async def _serve_start_up(stop: StopRequest, settings: Settings) -> None:
    """Migrate before the HTTP server starts, so that a database that cannot be reached is one
    line (uvicorn would print the lifespan's traceback) and N server processes do not race to
    migrate. With AUTO_MIGRATE=false the server starts regardless and /readyz says what is wrong."""
    from df_middleware.db.migrate import SchemaNotCurrent
    from df_middleware.db.session import DatabaseUnavailable

    async with stop.as_event():
        db = _database(settings)
        try:
            if settings.auto_migrate:
                await _prepare_schema(db, settings)
                return
            try:
                await _prepare_schema(db, settings)
            except (DatabaseUnavailable, SchemaNotCurrent) as exc:
                _log().warning("database.not_ready", reason=str(exc))
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


@app.command()
def worker(
    once: Annotated[bool, typer.Option("--once", help="Process what is due now, then exit.")] = False,
) -> None:
    """Run the worker and the scheduler (no HTTP server). SIGTERM or Ctrl-C stops it gracefully,
    also during start-up (exit 0)."""
    stop = StopRequest.install()
    settings = _settings()
    _configure_logging(settings)
    from df_middleware.db.session import database_label

    _log().info("worker.starting", database=database_label(settings.database_url), once=once)
    _run_with_database(_work(stop, settings, once=once), settings.database_url)


async def _work(stop: StopRequest, settings: Settings, *, once: bool) -> None:
    from df_middleware.connectors.suite import Connectors
    from df_middleware.queue.scheduler import Scheduler
    from df_middleware.queue.worker import Worker

    log = _log()
    async with stop.as_event() as stopping:
        db = _database(settings)
        try:
            await _prepare_schema(db, settings)
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
                scheduler = Scheduler(settings, db)
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


@app.command()
def migrate() -> None:
    """Apply pending database migrations (all in one transaction: an interrupted run applies none)."""
    from df_middleware.db.migrate import head_revision

    settings = _settings()
    _configure_logging(settings)
    _run_with_database(_migrate(settings), settings.database_url)
    console.print(f"database at migration {head_revision()}")


async def _migrate(settings: Settings) -> None:
    from df_middleware.db.migrate import read_schema_state, upgrade_to_head

    db = _database(settings)
    try:
        state = await read_schema_state(db)
    finally:
        await db.dispose()
    if not state.is_known:
        raise state.not_current()
    await upgrade_to_head(settings.database_url)


@app.command()
def prune(
    retention_days: Annotated[int | None, typer.Option(min=1, help="Default RETENTION_DAYS.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Delete `done` events and sync_log rows older than the retention (R-DM-7)."""
    from df_middleware.queue.operations import prune as prune_rows

    settings = _settings()
    days = retention_days or settings.retention_days
    counts = _run(lambda db: prune_rows(db, days, settings.prune_batch_size))
    if as_json:
        _print_json(counts)
        return
    for table, deleted in counts.items():
        console.print(f"{table}: {deleted} deleted")


# --- events --------------------------------------------------------------------------------------


# Arguments are checked before the database is opened: a typo creates nothing and costs one line.


def _parse_time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        _fail(f"{option}: not an ISO-8601 time: {value}", code=2)
    if parsed.tzinfo is None:
        _fail(f"{option}: give a time zone, e.g. 2026-11-25T10:00:00Z", code=2)
    return parsed


def _event_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        _fail(f"not an event id (a UUID such as {uuid.UUID(int=0)}): {value}", code=2)


@events_app.command("list")
def events_list(
    kind: Annotated[str | None, typer.Option(help="webhook | texting | broadcast")] = None,
    source: Annotated[str | None, typer.Option(help="ghl | aloware | texting | broadcast")] = None,
    status: Annotated[
        str | None, typer.Option(help="pending | processing | done | error | quarantined")
    ] = None,
    event_type: Annotated[str | None, typer.Option("--event-type")] = None,
    entity_id: Annotated[str | None, typer.Option("--entity-id")] = None,
    since: Annotated[str | None, typer.Option(help="ISO-8601 with time zone")] = None,
    until: Annotated[str | None, typer.Option(help="ISO-8601 with time zone")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of a previous page")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the admin API's JSON object.")] = False,
) -> None:
    """List stored events, newest first."""
    from df_middleware.queue.operations import list_events

    if kind is not None and kind not in {"webhook", "texting", "broadcast"}:
        _fail("--kind must be webhook, texting or broadcast", code=2)
    since_time, until_time = _parse_time(since, "--since"), _parse_time(until, "--until")
    page = _run(
        lambda db: list_events(
            db,
            kind=kind,
            source=source,
            status=status,
            event_type=event_type,
            entity_id=entity_id,
            since=since_time,
            until=until_time,
            cursor=cursor,
            limit=limit,
        )
    )
    if as_json:
        _print_json({"items": page.items, "next_cursor": page.next_cursor})
        return
    table = Table("received", "kind", "source", "event", "entity", "status", "tries", "id")
    for item in page.items:
        table.add_row(
            str(item["received_at"])[:19],
            item["kind"],
            item["source"],
            item["event_type"],
            f"{item['entity_type']}:{item['entity_id'] or ''}",
            item["status"],
            str(item["attempts"]),
            item["id"],
        )
    console.print(table)
    if page.next_cursor:
        console.print(f"more: --cursor {page.next_cursor}")


@events_app.command("show")
def events_show(
    event_id: Annotated[str, typer.Argument(help="Event id")],
    reveal: Annotated[bool, typer.Option("--reveal", help="Show the payload unmasked.")] = False,
) -> None:
    """Show one event with its payload (PII masked unless --reveal), sync_log rows and quarantine."""
    from df_middleware.observability import mask_event_detail
    from df_middleware.queue.operations import get_event

    wanted = _event_id(event_id)
    found = _run(lambda db: get_event(db, wanted))
    if found is None:
        _fail(f"no event {event_id}")
    if not reveal:
        found = mask_event_detail(found)
    _print_json(found)


def _event_action(action: Callable[[Any], Awaitable[Any]], done: str) -> None:
    from df_middleware.queue.operations import EventNotFound

    try:
        _run(action)
    except EventNotFound as exc:
        _fail(str(exc))
    except ValueError as exc:
        _fail(f"refused: {exc}")
    console.print(done)


@events_app.command("replay")
def events_replay(event_id: Annotated[str, typer.Argument(help="Event id")]) -> None:
    """Put an event back in the queue to be processed again."""
    from df_middleware.queue.operations import replay_event

    wanted = _event_id(event_id)
    _event_action(lambda db: replay_event(db, wanted), f"{event_id} queued for replay")


@events_app.command("quarantine")
def events_quarantine(
    event_id: Annotated[str, typer.Argument(help="Event id")],
    reason: Annotated[str, typer.Option(help="Why it must not be processed")] = "quarantined from the CLI",
    actor: Annotated[str, typer.Option(help="Who is quarantining it")] = "cli",
) -> None:
    """Take an event out of processing until it is unquarantined."""
    from df_middleware.queue.operations import quarantine_event

    wanted = _event_id(event_id)
    _event_action(lambda db: quarantine_event(db, wanted, reason, actor), f"{event_id} quarantined")


@events_app.command("unquarantine")
def events_unquarantine(
    event_id: Annotated[str, typer.Argument(help="Event id")],
    actor: Annotated[str, typer.Option(help="Who is releasing it")] = "cli",
) -> None:
    """Return a quarantined event to the queue."""
    from df_middleware.queue.operations import unquarantine_event

    wanted = _event_id(event_id)
    _event_action(lambda db: unquarantine_event(db, wanted, actor), f"{event_id} back in the queue")


# --- GHL Marketplace OAuth -----------------------------------------------------------------------


@oauth_app.command("start-url")
def oauth_start_url() -> None:
    """Print a signed install URL (valid 15 min), the twin of GET /leadconnector/oauth/start.

    Run it with the server's TOKEN_ENCRYPTION_KEY (or its DATA_DIR): the callback only accepts a
    state signed with that key.
    """
    from df_middleware.admin.oauth import authorize_url
    from df_middleware.connectors.tokens import TokenKeyError, load_token_cipher, missing_oauth_settings

    settings = _settings()
    missing = missing_oauth_settings(settings)
    if missing:
        _fail(f"GHL OAuth is not configured: set {', '.join(missing)}", code=2)
    try:
        cipher = load_token_cipher(settings, create=True)
    except TokenKeyError as exc:
        _fail(f"token key error: {exc}", code=2)
    assert cipher is not None
    sys.stdout.write(authorize_url(settings, cipher) + "\n")


@oauth_app.command("status")
def oauth_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """List installed GHL locations with token expiry and the last refresh error (never tokens)."""
    from df_middleware.connectors.tokens import token_statuses

    statuses = _run(token_statuses)
    if as_json:
        _print_json([status.as_dict() for status in statuses])
        return
    if not statuses:
        console.print("no GHL location installed through OAuth")
        return
    table = Table("location", "state", "expires", "last refresh error")
    for status in statuses:
        failed = ""
        if status.refresh_error:
            failed = f"{str(status.refresh_failed_at)[:19]} {status.refresh_error}"
        table.add_row(status.location_id, status.state, str(status.expires_at)[:19], failed)
    console.print(table)


# --- configuration -------------------------------------------------------------------------------


def _emit(text: str, output: Path | None) -> None:
    """Write generated text to `output`, or to stdout."""
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text)


@config_app.command("docs")
def config_docs(
    output: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
) -> None:
    """Print docs/configuration.md, generated from the settings model."""
    _emit(configuration_markdown(), output)


@config_app.command("env-example")
def config_env_example(
    output: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
) -> None:
    """Print .env.example, generated from the settings model."""
    _emit(env_example(), output)


# --- connections and simulators --------------------------------------------------------------------


@app.command()
def check(
    as_json: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
) -> None:
    """Configured / reachable / authenticated, for the database and each external system.

    Exits 1 when a configured system is unreachable or refuses our credentials, 0 otherwise
    (unconfigured systems are listed with the settings that would enable them). It changes
    nothing: a database without its schema (or a SQLite file not created yet) is reported, not
    migrated or created.
    """
    settings = _settings()
    _configure_logging(settings)
    reports = _run_with_database(_check(settings), settings.database_url)
    if as_json:
        _print_json([r.as_dict() for r in reports])
    else:
        table = Table("system", "configured", "reachable", "authenticated", "reason")
        shown = {True: "yes", False: "[red]no[/red]", None: "-"}
        for report in reports:
            table.add_row(
                report.system,
                shown[report.configured],
                shown[report.reachable],
                shown[report.authenticated],
                report.reason or "",
            )
        console.print(table)
    for name in settings.blank_settings:
        # Said on stderr in both modes, so that --json output stays one document.
        sys.stderr.write(
            f"df-middleware: {name} is set but empty: treated as unset (what it guards refuses everything)\n"
        )
    # Failing means a check said no; "not checked" (e.g. OAuth configured, nothing installed yet)
    # is reported with its reason but does not fail the command.
    failing = [r for r in reports if r.configured and False in (r.reachable, r.authenticated)]
    raise typer.Exit(1 if failing else 0)


async def _check(settings: Settings) -> list[ConnectionReport]:
    from df_middleware.connectors.suite import Connectors

    db = _database(settings)
    try:
        database, ready = await _check_database(db)
        connectors = Connectors.from_settings(settings, db)
        try:
            if ready:
                return [database, *await connectors.check()]
            return [database, *await _check_systems_without_database(connectors, database)]
        finally:
            await connectors.aclose()
    finally:
        await db.dispose()


async def _check_database(db: Database) -> tuple[ConnectionReport, bool]:
    """The database's report, and whether its schema is current (so that the OAuth installs in it
    can be read)."""
    from df_middleware.connectors.status import ConnectionReport
    from df_middleware.db.migrate import MIGRATE_COMMAND, read_schema_state
    from df_middleware.db.session import DatabaseUnavailable, database_label

    report = ConnectionReport(
        system="database",
        configured=True,
        detail={"dialect": db.dialect, "at": database_label(db.database_url)},
    )
    try:
        state = await read_schema_state(db)
    except DatabaseUnavailable as exc:
        report.reachable = exc.reached
        report.authenticated = False if exc.reached else None
        report.reason = str(exc)
        return report, False
    report.detail.update(migration=state.current, head=state.head)
    if not state.exists:
        # Nothing to connect to yet, and connecting would create the file: say what will.
        report.reachable = True
        report.reason = f"no database file yet: `{MIGRATE_COMMAND}` (or `serve`, `worker`) creates it"
        return report, False
    report.reachable = report.authenticated = True
    if not state.is_current:
        hint = "" if not state.is_known else f": run `{MIGRATE_COMMAND}`"
        report.reason = f"{state.describe()}{hint}"
    return report, state.is_current


async def _check_systems_without_database(
    connectors: Connectors, database: ConnectionReport
) -> list[ConnectionReport]:
    """`Connectors.check` for a database whose schema is not there: OAuth installs cannot be
    read, so GHL is checked with the Private Integration Token alone and the installs are
    reported as not checked, with the database's reason."""
    import dataclasses

    from df_middleware.connectors.status import ConnectionReport
    from df_middleware.connectors.tokens import GhlCredentials, missing_oauth_settings

    settings = connectors.settings
    why = f"not checked: the database is not ready ({database.reason})"
    pit_only = dataclasses.replace(connectors, credentials=GhlCredentials(settings, None), _ghl_clients={})
    reports: list[ConnectionReport] = []
    ghl = pit_only.ghl
    if ghl is None:
        reports.append(ConnectionReport.not_configured("ghl", "GHL_LOCATION_ID and GHL_API_KEY (or OAuth)"))
    else:
        reports.append(await ghl.check())
    missing = missing_oauth_settings(settings)
    if missing:
        reports.append(ConnectionReport.not_configured("ghl_oauth", " and ".join(missing)))
    else:
        reports.append(ConnectionReport(system="ghl_oauth", configured=True, reason=why))
    for name, client, needs in (
        ("aloware", connectors.aloware, "ALOWARE_API_TOKEN"),
        ("verity", connectors.verity, "VERITY_BASE_URL and VERITY_API_KEY"),
        ("verity-db", connectors.analytics, "VERITY_DATABASE_URL"),
    ):
        reports.append(
            ConnectionReport.not_configured(name, needs) if client is None else await client.check()
        )
    return reports


@app.command()
def demo(
    database_url: Annotated[
        str | None, typer.Option(help="Database to use (default: a throwaway SQLite file).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the end state as JSON.")] = False,
) -> None:
    """Play the scripted day — a lead's day across GHL, Aloware and Verity — against the built-in
    simulators, through the real ingest, worker and handlers, and show where every system ends.

    Exits 1 when the end state is not the expected one.
    """
    import dataclasses

    from df_middleware.demo_run import run_demo
    from df_middleware.observability import configure_logging

    configure_logging("warning", "console")

    def progress(step: Any, webhooks: int) -> None:
        if not as_json:
            console.print(f"  • {type(step).__name__}: {webhooks} webhook(s) delivered and processed")

    if not as_json:
        console.print("Playing the scripted day against the simulators (nothing leaves 127.0.0.1)…")
    outcome = asyncio.run(run_demo(database_url, on_step=progress))
    if as_json:
        _print_json(
            {
                "matches_expected": outcome.matches_expected,
                "events": outcome.events,
                "database_url": outcome.database_url,
                "end_state": dataclasses.asdict(outcome.snapshot),
            }
        )
    else:
        snapshot = outcome.snapshot
        table = Table("system", "what it holds at the end of the day")
        for contact in snapshot.ghl_contacts:
            table.add_row(
                "GHL",
                f"contact {contact.phone}: {len(contact.notes)} notes, {len(contact.messages)} messages, "
                f"tags: {', '.join(contact.tags)}",
            )
        for aloware in snapshot.aloware_contacts:
            table.add_row("Aloware", f"contact {aloware.phone}: {dict(aloware.fields)}")
        table.add_row("Verity", f"{len(snapshot.verity_sends)} SMS sent")
        table.add_row("events", ", ".join(f"{k} {v}" for k, v in sorted(outcome.events.items())))
        console.print(table)
        verdict = "[green]matches[/green]" if outcome.matches_expected else "[red]does NOT match[/red]"
        console.print(f"End state {verdict} the expected one. Database: {outcome.database_url}")
    raise typer.Exit(0 if outcome.matches_expected else 1)


def _serve_simulator(application: Any, host: str, port: int) -> None:
    import uvicorn

    console.print(f"simulator on http://{host}:{port} (state: /_sim/state, faults: PUT /_sim/faults)")
    uvicorn.run(application, host=host, port=port, log_level="warning")


SimHost = Annotated[str, typer.Option(help="Bind address.")]


@simulate_app.command("ghl")
def simulate_ghl(
    port: Annotated[int, typer.Option(help="Port.")] = 9100,
    host: SimHost = "127.0.0.1",
    openapi_dir: Annotated[
        Path | None, typer.Option(help="GHL's OpenAPI documents: validate every request with them.")
    ] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Where contact webhooks are sent.")] = None,
    provider_delivery_url: Annotated[
        str | None, typer.Option(help="Conversation provider Delivery URL (ProviderOutboundMessage).")
    ] = None,
    rate_limit_max: Annotated[int, typer.Option(help="Requests per window per location.")] = 100,
    rate_limit_interval: Annotated[float, typer.Option(help="Window length in seconds.")] = 10.0,
) -> None:
    """GHL API v2: contacts, notes, tags, conversations, users, custom fields and objects, OAuth.

    A location `loc_sim` with Private Integration Token `pit-sim` exists from the start.
    """
    from df_middleware.simulators.ghl import create_app as create_ghl

    application = create_ghl(
        openapi_dir=openapi_dir,
        webhook_url=webhook_url,
        provider_delivery_url=provider_delivery_url,
        rate_limit_max=rate_limit_max,
        rate_limit_interval_seconds=rate_limit_interval,
    )
    _serve_simulator(application, host, port)


@simulate_app.command("aloware")
def simulate_aloware(
    port: Annotated[int, typer.Option(help="Port.")] = 9101,
    host: SimHost = "127.0.0.1",
    api_token: Annotated[
        str, typer.Option(help="The api_token the simulator accepts.")
    ] = "aloware-sim-token",  # noqa: S107 - the simulator's well-known test credential
    webhook_url: Annotated[str | None, typer.Option(help="Where Aloware webhooks are sent.")] = None,
    webhook_bearer_token: Annotated[str | None, typer.Option(help="Bearer token of its webhooks.")] = None,
) -> None:
    """Aloware API v1 (base `/api/v1`): Lead API, lookup by phone, power-dialer lists, sequences."""
    from df_middleware.simulators.aloware import create_app as create_aloware

    application = create_aloware(
        api_token=api_token, webhook_url=webhook_url, webhook_bearer_token=webhook_bearer_token
    )
    _serve_simulator(application, host, port)


@simulate_app.command("verity")
def simulate_verity(
    port: Annotated[int, typer.Option(help="Port.")] = 9102,
    host: SimHost = "127.0.0.1",
    api_key: Annotated[str, typer.Option(help="The Bearer key the simulator accepts.")] = "verity-sim-key",
    webhook_url: Annotated[str | None, typer.Option(help="Where texting webhooks are sent.")] = None,
    webhook_secret: Annotated[str | None, typer.Option(help="HMAC secret of texting webhooks.")] = None,
    broadcast_webhook_url: Annotated[str | None, typer.Option(help="Where broadcast webhooks go.")] = None,
    broadcast_webhook_secret: Annotated[str | None, typer.Option(help="HMAC secret of those.")] = None,
) -> None:
    """Verity send-message API; posts signed receipts (sent, then delivered or failed) back."""
    from df_middleware.simulators.verity import create_app as create_verity

    application = create_verity(
        api_key=api_key,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        broadcast_webhook_url=broadcast_webhook_url,
        broadcast_webhook_secret=broadcast_webhook_secret,
    )
    _serve_simulator(application, host, port)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
