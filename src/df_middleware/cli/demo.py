"""`demo`: the scripted day against the built-in simulators, through the real ingest, worker and
handlers."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from rich.table import Table

from df_middleware.cli.output import console, print_json


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
        verdict = "[green]matches[/green]" if outcome.matches_expected else "[red]does NOT match[/red]"
        console.print(f"End state {verdict} the expected one. Database: {outcome.database_url}")
    raise typer.Exit(0 if outcome.matches_expected else 1)
