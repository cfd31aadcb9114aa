"""`demo`: the scripted day against the built-in simulators, through the real ingest, worker and
handlers. After the summary of every system, the agents' dialer lists (with their members) and
the broadcast's GHL record, each a small table: what the day's agent and broadcast steps made."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from df_middleware.cli.output import console, print_json

if TYPE_CHECKING:
    from df_middleware.demo import WorldSnapshot
    from df_middleware.sync.list_operations import ListLine


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
            console.print(f"  • {step.label} ({webhooks} webhook(s) delivered and processed)", soft_wrap=True)

    if not as_json:
        console.print("Playing the scripted day against the simulators (nothing leaves 127.0.0.1)…")
    outcome = asyncio.run(run_demo(database_url, on_step=progress))
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
    else:
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
    raise typer.Exit(0 if outcome.matches_expected else 1)
