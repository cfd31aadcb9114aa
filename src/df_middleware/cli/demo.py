"""`demo`: the scripted day against the built-in simulators, through the real ingest, worker and
handlers. After the summary of every system, the agents' dialer lists (with their members) and
the broadcast's GHL record, each a small table: what the day's agent and broadcast steps made.

Then the service and the simulators stay up (R-RUN-5) so that a newcomer can open the dashboard
with the admin secret printed, and send more traffic through the simulators, until Ctrl-C or
SIGTERM, which stop everything gracefully and exit 0; `--exit` ends after the summary (tests, CI).
The lines a visitor copies (URLs, the secret, curl commands) are written plainly, never wrapped."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, TextIO, TypeVar

import typer
from rich.table import Table

from df_middleware.cli.output import console, print_json

if TYPE_CHECKING:
    from df_middleware.cli.processes import StopRequest
    from df_middleware.demo import WorldSnapshot
    from df_middleware.demo_run import DemoOutcome, DemoWorld
    from df_middleware.sync.list_operations import ListLine

T = TypeVar("T")

#: Numbers of the people a visitor invents (next to the day's +1919555700x).
VISITOR_TEXTER = "+19195557010"
VISITOR_LEAD = "+19195557011"


def lists_table(lines: Sequence[ListLine], snapshot: WorldSnapshot) -> Table:
    """The agents' lists that exist in Aloware or have memberships: who is on each (phone and
    name as the dialer has them) and how many are blocked (list missing)."""
    names = {
        contact.phone: " ".join(v for k, v in contact.fields if k in ("first_name", "last_name"))
        for contact in snapshot.aloware_contacts
    }
    members = {found.name: found.members for found in snapshot.aloware_lists}
    table = Table("agent", "Aloware list", "members", "blocked", title="Agents' dialer lists")
    for line in lines:
        if line.aloware_list_id is None and not line.members and not line.blocked:
            continue
        on_it = members.get(line.list_name, ())
        table.add_row(
            line.agent_key,
            line.list_name if line.aloware_list_id is not None else f"{line.list_name} (not in Aloware)",
            "\n".join(f"{phone} {names.get(phone, '')}".rstrip() for phone in on_it) or "-",
            str(line.blocked),
        )
    return table


def records_table(snapshot: WorldSnapshot) -> Table:
    """The broadcast records in GHL, one column per record, its properties as rows."""
    records = [dict(record.properties) for record in snapshot.ghl_records]
    table = Table(
        "property", *(str(r.get("broadcast_id", "?")) for r in records), title="Broadcast record in GHL"
    )

    def order(name: str) -> tuple[int, str]:  # what it is, then its counts, then its rates
        return (
            0 if not isinstance(records[0][name], int | float) else 2 if name.endswith("_rate") else 1,
            name,
        )

    for name in sorted(records[0], key=order) if records else ():
        table.add_row(name, *(str(r.get(name, "-")) for r in records))
    return table


def report(outcome: DemoOutcome, *, as_json: bool) -> None:
    """Where every system ends the day: JSON, or the tables."""
    import dataclasses

    if as_json:
        print_json(
            {
                "matches_expected": outcome.matches_expected,
                "events": outcome.events,
                "database_url": outcome.database_url,
                "end_state": dataclasses.asdict(outcome.snapshot),
                "lists": [dataclasses.asdict(line) for line in outcome.lists],
            }
        )
        sys.stdout.flush()
        return
    snapshot = outcome.snapshot
    table = Table("system", "what it holds at the end of the day")
    for contact in snapshot.ghl_contacts:
        table.add_row(
            "GHL",
            f"contact {contact.phone}: {len(contact.notes)} notes, {len(contact.messages)} messages "
            f"({sum(m.status == 'failed' for m in contact.messages)} failed), "
            f"tags: {', '.join(contact.tags) or '-'}, "
            f"DND: {', '.join(f'{c} {s}' for c, s in contact.dnd) or '-'}",
        )
    for aloware in snapshot.aloware_contacts:
        table.add_row("Aloware", f"contact {aloware.phone}: {dict(aloware.fields)}")
    table.add_row("Verity", f"{len(snapshot.verity_sends)} SMS sent")
    table.add_row("events", ", ".join(f"{k} {v}" for k, v in sorted(outcome.events.items())))
    console.print(table)
    console.print(lists_table(outcome.lists, snapshot))
    console.print(records_table(snapshot))
    verdict = "[green]matches[/green]" if outcome.matches_expected else "[red]does NOT match[/red]"
    console.print(f"End state {verdict} the expected one. Database: {outcome.database_url}")


def visitor_guide(world: DemoWorld) -> str:
    """What stays up and how to reach it: the dashboard URL and admin secret first (a test waits
    for the `Dashboard:` line), then the simulators and two webhooks a visitor can cause."""
    json_header = "-H 'content-type: application/json'"
    taken = f" (port {world.port_taken} was taken)" if world.port_taken else ""
    secret = world.admin_secret if world.admin_secret_generated else "the DF_ADMIN_SECRET of your environment"
    return "\n".join(
        (
            "",
            f"The service and the simulators stay up until Ctrl-C{taken}:",
            f"  Dashboard:          {world.dashboard_url}",
            f"  Admin secret:       {secret}",
            f"  Service:            {world.service_url}  (/healthz, /docs, /api/admin/… with "
            "Authorization: Bearer <admin secret>)",
            f"  GHL simulator:      {world.ghl_url}  (what it holds: /_sim/state)",
            f"  Aloware simulator:  {world.aloware_url}  (/_sim/state)",
            f"  Verity simulator:   {world.verity_url}  (/_sim/state)",
            f"  Database:           {world.database_url}",
            "",
            "The simulators now post their own signed webhooks to the service, as the real systems do",
            "(see `df-middleware simulate --help` for their other /_sim routes). Try:",
            "  # a person texts the business line (Verity signs message.received; texting STOP opts out):",
            f"  curl -s -X POST {world.verity_url}/_sim/inbound {json_header} "
            f"""-d '{{"from": "{VISITOR_TEXTER}", "body": "Hi, is the spring offer still on?"}}'""",
            "  # a GHL user saves a new lead (GHL signs ContactCreate; the lead reaches Aloware's lists):",
            f"  curl -s -X POST {world.ghl_url}/_sim/ui/contacts {json_header} "
            f"""-d '{{"firstName": "Jordan", "lastName": "Lee", "phone": "{VISITOR_LEAD}"}}'""",
            f"Then open the dashboard's events, or ask GHL: curl -s {world.ghl_url}/_sim/state",
            "",
        )
    )


async def until_stopped(work: Awaitable[T], stopping: asyncio.Event) -> T | None:
    """`work`'s result, or None when a stop is requested first (the work is then cancelled: the
    worker releases what it had claimed, and the world shuts down as after the day)."""
    import contextlib

    task = asyncio.ensure_future(work)
    waiter = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def session(
    stop: StopRequest,
    *,
    database_url: str | None,
    stay: bool,
    port: int,
    as_json: bool,
    on_step: Callable[[Any, int], None],
) -> int:
    """Start the world, play the day, report it; then stay up when asked, until a stop request.
    The exit code: 0 when the day ended as expected (or was stopped before its end), else 1."""
    from df_middleware.demo_run import demo_world

    say: TextIO = sys.stderr if as_json else sys.stdout
    admin_secret = (os.environ.get("DF_ADMIN_SECRET") or "").strip() or None
    async with (
        stop.as_event() as stopping,
        demo_world(database_url, port=port if stay else None, admin_secret=admin_secret) as world,
    ):
        outcome = await until_stopped(world.play_day(on_step), stopping)
        if outcome is None:
            say.write("Stopped before the end of the day; everything is shut down.\n")
            return 0
        report(outcome, as_json=as_json)
        code = 0 if outcome.matches_expected else 1
        if not stay or stopping.is_set():
            return code
        say.write(visitor_guide(world) + "\n")
        say.flush()
        await world.keep_running(stopping)
        say.write("Stopping the service and the simulators…\n")
    say.write("Stopped.\n")
    say.flush()
    return code


def demo(
    database_url: Annotated[
        str | None, typer.Option(help="Database to use (default: a throwaway SQLite file).")
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the end state as JSON (what stays up is then said on stderr)."),
    ] = False,
    exit_after: Annotated[
        bool, typer.Option("--exit", help="End after the summary instead of staying up (tests, CI).")
    ] = False,
    port: Annotated[
        int,
        typer.Option(min=1, max=65535, help="Port of the service while it stays up (taken: a free one)."),
    ] = 8000,
) -> None:
    """Play the scripted day — a lead's day across GHL, Aloware and Verity — against the built-in
    simulators, through the real ingest, worker and handlers, and show where every system ends.

    Then the service (dashboard at /admin, with a generated admin secret unless DF_ADMIN_SECRET is
    set) and the simulators stay up, on 127.0.0.1, until Ctrl-C or SIGTERM (exit 0); --exit ends
    after the summary. Exits 1 when the end state is not the expected one.
    """
    from df_middleware.cli.processes import StopRequest
    from df_middleware.observability import configure_logging

    stop = StopRequest.install()  # from here on Ctrl-C is a request, honoured without a traceback
    configure_logging("warning", "console")

    def progress(step: Any, webhooks: int) -> None:
        if not as_json:
            console.print(f"  • {step.label} ({webhooks} webhook(s) delivered and processed)", soft_wrap=True)

    if not as_json:
        console.print("Playing the scripted day against the simulators (nothing leaves 127.0.0.1)…")
    code = asyncio.run(
        session(
            stop,
            database_url=database_url,
            stay=not exit_after,
            port=port,
            as_json=as_json,
            on_step=progress,
        )
    )
    raise typer.Exit(code)
