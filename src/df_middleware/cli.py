"""`df-middleware`: the command line. Commands are thin: parse, call a service, print.

Listing commands take `--json` for machine-readable output (the same object the admin API returns).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from df_middleware.config import Settings, configuration_markdown, env_example, get_settings

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
err_console = Console(stderr=True)


def _settings() -> Settings:
    try:
        return get_settings()
    except Exception as exc:  # pydantic ValidationError: show it plainly, not as a traceback
        err_console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _run(factory: Callable[[Any], Awaitable[T]]) -> T:
    """Open the database, run one coroutine with it, close the database."""
    from df_middleware.db.session import Database
    from df_middleware.observability import configure_logging

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format, reveal_pii=settings.log_reveal_pii)

    async def main() -> T:
        db = Database(
            settings.database_url,
            pool_size=settings.db_pool_size,
            pool_timeout=settings.db_pool_timeout_seconds,
        )
        try:
            return await factory(db)
        finally:
            await db.dispose()

    return asyncio.run(main())


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


# --- processes -----------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default PORT).")] = None,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="HTTP server only; no worker/scheduler.")
    ] = False,
    workers: Annotated[int, typer.Option(min=1, help="HTTP server processes.")] = 1,
) -> None:
    """Run the HTTP server, and (unless --no-worker) the worker and scheduler, in one process."""
    import uvicorn

    settings = _settings()
    bind_host, bind_port = host or settings.host, port or settings.port
    if workers > 1:
        # Each server process builds its app from the environment: pass the choice through it.
        os.environ["SERVE_WITH_WORKER"] = "false" if no_worker else "true"
        uvicorn.run(
            "df_middleware.app:create_app_from_env",
            factory=True,
            host=bind_host,
            port=bind_port,
            workers=workers,
            log_config=None,
            access_log=False,
        )
        return
    from df_middleware.app import create_app

    application = create_app(settings, run_worker=not no_worker)
    uvicorn.run(application, host=bind_host, port=bind_port, log_config=None, access_log=False)


@app.command()
def worker(
    once: Annotated[bool, typer.Option("--once", help="Process what is due now, then exit.")] = False,
) -> None:
    """Run the worker and the scheduler (no HTTP server). SIGTERM stops it gracefully."""
    from df_middleware.connectors.suite import Connectors
    from df_middleware.db.migrate import upgrade
    from df_middleware.queue.scheduler import Scheduler
    from df_middleware.queue.worker import Worker

    settings = _settings()

    async def main(db: Any) -> None:
        if settings.auto_migrate:
            await upgrade(settings.database_url)
        connectors = Connectors.from_settings(settings, db)
        the_worker = Worker(settings, db, connectors=connectors)
        try:
            if once:
                processed = await the_worker.run_once()
                console.print(f"processed {processed} events")
                return
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            scheduler = Scheduler(settings, db)
            await asyncio.gather(the_worker.run(stop), scheduler.run(stop))
        finally:
            await connectors.aclose()

    _run(main)


@app.command()
def migrate() -> None:
    """Apply pending database migrations."""
    from df_middleware.db.migrate import head_revision, upgrade_sync

    settings = _settings()
    upgrade_sync(settings.database_url)
    console.print(f"database at migration {head_revision()}")


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


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO-8601 time: {value}") from exc
    if parsed.tzinfo is None:
        raise typer.BadParameter("give a time zone, e.g. 2026-11-25T10:00:00Z")
    return parsed


def _event_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise typer.BadParameter(f"not an event id: {value}") from exc


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
        raise typer.BadParameter("kind must be webhook, texting or broadcast")
    page = _run(
        lambda db: list_events(
            db,
            kind=kind,
            source=source,
            status=status,
            event_type=event_type,
            entity_id=entity_id,
            since=_parse_time(since),
            until=_parse_time(until),
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

    found = _run(lambda db: get_event(db, _event_id(event_id)))
    if found is None:
        err_console.print(f"no event {event_id}")
        raise typer.Exit(1)
    if not reveal:
        found = mask_event_detail(found)
    _print_json(found)


def _event_action(action: Callable[[Any], Awaitable[Any]], done: str) -> None:
    from df_middleware.queue.operations import EventNotFound

    try:
        _run(action)
    except EventNotFound as exc:
        err_console.print(str(exc))
        raise typer.Exit(1) from exc
    except ValueError as exc:
        err_console.print(f"refused: {exc}")
        raise typer.Exit(1) from exc
    console.print(done)


@events_app.command("replay")
def events_replay(event_id: Annotated[str, typer.Argument(help="Event id")]) -> None:
    """Put an event back in the queue to be processed again."""
    from df_middleware.queue.operations import replay_event

    _event_action(lambda db: replay_event(db, _event_id(event_id)), f"{event_id} queued for replay")


@events_app.command("quarantine")
def events_quarantine(
    event_id: Annotated[str, typer.Argument(help="Event id")],
    reason: Annotated[str, typer.Option(help="Why it must not be processed")] = "quarantined from the CLI",
    actor: Annotated[str, typer.Option(help="Who is quarantining it")] = "cli",
) -> None:
    """Take an event out of processing until it is unquarantined."""
    from df_middleware.queue.operations import quarantine_event

    _event_action(
        lambda db: quarantine_event(db, _event_id(event_id), reason, actor), f"{event_id} quarantined"
    )


@events_app.command("unquarantine")
def events_unquarantine(
    event_id: Annotated[str, typer.Argument(help="Event id")],
    actor: Annotated[str, typer.Option(help="Who is releasing it")] = "cli",
) -> None:
    """Return a quarantined event to the queue."""
    from df_middleware.queue.operations import unquarantine_event

    _event_action(
        lambda db: unquarantine_event(db, _event_id(event_id), actor), f"{event_id} back in the queue"
    )


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
        err_console.print(f"GHL OAuth is not configured: set {', '.join(missing)}")
        raise typer.Exit(2)
    try:
        cipher = load_token_cipher(settings, create=True)
    except TokenKeyError as exc:
        err_console.print(f"[red]token key error:[/red] {exc}")
        raise typer.Exit(2) from exc
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
    (unconfigured systems are listed with the settings that would enable them).
    """
    from df_middleware.connectors.status import ConnectionReport
    from df_middleware.connectors.suite import Connectors
    from df_middleware.db.migrate import current_revision, head_revision

    settings = _settings()

    async def main(db: Any) -> list[ConnectionReport]:
        database = ConnectionReport(system="database", configured=True, detail={"dialect": db.dialect})
        try:
            async with db.engine.connect() as conn:
                current = await current_revision(conn)
            database.reachable = database.authenticated = True
            if current != head_revision():
                database.reason = f"migrations at {current}, head is {head_revision()}: run `migrate`"
                database.authenticated = True
                database.detail["migration"] = current
        except Exception as exc:  # the report carries the failure; check never crashes
            database.reachable, database.reason = False, f"{type(exc).__name__}: {str(exc)[:200]}"
        connectors = Connectors.from_settings(settings, db)
        try:
            return [database, *await connectors.check()]
        finally:
            await connectors.aclose()

    reports = _run(main)
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
    # Failing means a check said no; "not checked" (e.g. OAuth configured, nothing installed yet)
    # is reported with its reason but does not fail the command.
    failing = [r for r in reports if r.configured and False in (r.reachable, r.authenticated)]
    raise typer.Exit(1 if failing else 0)


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
