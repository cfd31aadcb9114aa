"""`events …`: list, show, replay, quarantine and unquarantine stored webhook events, as the admin
API does."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from df_middleware.cli.database import run_on_database
from df_middleware.cli.output import console, fail, print_json

events_app = typer.Typer(help="Inspect and act on stored webhook events.", no_args_is_help=True)
#: The `--source` values: the partners', and events the service queues itself (an operator's action,
#: a follow-up queued with a dead letter).
SOURCE_HELP = "ghl | aloware | operator | service | texting | broadcast"

# Arguments are checked before the database is opened: a typo creates nothing and costs one line.


def _parse_time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        fail(f"{option}: not an ISO-8601 time: {value}", code=2)
    if parsed.tzinfo is None:
        fail(f"{option}: give a time zone, e.g. 2026-11-25T10:00:00Z", code=2)
    try:  # 0001-01-01T00:00+14:00 parses, but is before the first moment UTC can hold
        parsed.astimezone(UTC)
    except OverflowError:
        fail(f"{option}: out of range: {value}", code=2)
    return parsed


def _event_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        fail(f"not an event id (a UUID such as {uuid.UUID(int=0)}): {value}", code=2)


@events_app.command("list")
def events_list(
    kind: Annotated[str | None, typer.Option(help="webhook | texting | broadcast")] = None,
    source: Annotated[str | None, typer.Option(help=SOURCE_HELP)] = None,
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
    from df_middleware.queue.operations import decode_cursor, list_events

    if kind is not None and kind not in {"webhook", "texting", "broadcast"}:
        fail("--kind must be webhook, texting or broadcast", code=2)
    since_time, until_time = _parse_time(since, "--since"), _parse_time(until, "--until")
    if cursor is not None:
        try:
            decode_cursor(cursor)
        except ValueError:
            fail(f"--cursor: not a next_cursor this command printed: {cursor}", code=2)
    try:
        page = run_on_database(
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
    except ValueError as exc:  # a filter the service refuses (an unknown --status)
        fail(f"refused: {exc}", code=2)
    if as_json:
        print_json({"items": page.items, "next_cursor": page.next_cursor})
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
    found = run_on_database(lambda db: get_event(db, wanted))
    if found is None:
        fail(f"no event {event_id}")
    if not reveal:
        found = mask_event_detail(found)
    print_json(found)


def _event_action(action: Callable[[Any], Awaitable[Any]], done: str) -> None:
    from df_middleware.queue.operations import EventNotFound

    try:
        run_on_database(action)
    except EventNotFound as exc:
        fail(str(exc))
    except ValueError as exc:
        fail(f"refused: {exc}")
    console.print(done)


@events_app.command("replay")
def events_replay(
    event_id: Annotated[str, typer.Argument(help="Event id")],
    resend_unconfirmed: Annotated[
        bool,
        typer.Option(
            "--resend-unconfirmed",
            help="You checked the remote system and the event's unconfirmed writes (e.g. an SMS "
            "Verity never confirmed) were NOT made: make them again. Without it they never are.",
        ),
    ] = False,
) -> None:
    """Put an event back in the queue to be processed again (writes already made are not repeated)."""
    from df_middleware.queue.operations import EventNotFound, replay_event

    wanted = _event_id(event_id)
    try:
        summary = run_on_database(
            lambda db: replay_event(db, wanted, actor="cli", resend_unconfirmed=resend_unconfirmed)
        )
    except EventNotFound as exc:
        fail(str(exc))
    except ValueError as exc:
        fail(f"refused: {exc}")
    forgotten = summary.get("unconfirmed_writes_forgotten", 0)
    if forgotten:
        console.print(
            f"{event_id} queued for replay; {forgotten} unconfirmed write(s) will be made again",
            soft_wrap=True,
        )
    elif resend_unconfirmed:
        console.print(
            f"{event_id} queued for replay; it had no unconfirmed writes, so nothing is resent",
            soft_wrap=True,
        )
    else:
        console.print(f"{event_id} queued for replay")


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


@events_app.command("mark-done")
def events_mark_done(
    event_id: Annotated[str, typer.Argument(help="Event id")],
    actor: Annotated[str, typer.Option(help="Who is resolving it")] = "cli",
) -> None:
    """Resolve an event without processing it (`done`, with a sync_log row naming who)."""
    from df_middleware.queue.operations import mark_done

    wanted = _event_id(event_id)
    _event_action(lambda db: mark_done(db, wanted, actor), f"{event_id} marked done")


@events_app.command("replay-matching")
def events_replay_matching(
    kind: Annotated[str | None, typer.Option(help="webhook | texting | broadcast")] = None,
    source: Annotated[str | None, typer.Option(help=SOURCE_HELP)] = None,
    status: Annotated[str, typer.Option(help="error (default: the dead letters) | pending | done")] = "error",
    event_type: Annotated[str | None, typer.Option("--event-type")] = None,
    entity_id: Annotated[str | None, typer.Option("--entity-id")] = None,
    since: Annotated[str | None, typer.Option(help="ISO-8601 with time zone")] = None,
    until: Annotated[str | None, typer.Option(help="ISO-8601 with time zone")] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"count": N}')] = False,
) -> None:
    """Replay every event matching the filters (`POST /api/admin/events/replay`); by default the
    dead letters. Writes already made are not repeated."""
    from df_middleware.queue.operations import bulk_replay

    if kind is not None and kind not in {"webhook", "texting", "broadcast"}:
        fail("--kind must be webhook, texting or broadcast", code=2)
    since_time, until_time = _parse_time(since, "--since"), _parse_time(until, "--until")
    try:
        count = run_on_database(
            lambda db: bulk_replay(
                db,
                kind=kind,
                source=source,
                status=status,
                event_type=event_type,
                entity_id=entity_id,
                since=since_time,
                until=until_time,
                actor="cli",
            )
        )
    except ValueError as exc:
        fail(f"refused: {exc}", code=2)
    if as_json:
        print_json({"count": count})
    else:
        console.print(f"{count} event(s) queued for replay")
