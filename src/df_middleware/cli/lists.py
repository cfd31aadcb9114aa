"""`lists …`: the agents' power-dialer lists (SPEC §6.5, §8.3).

`lists status` shows each agent's lists with their members and blocked contacts (a list Aloware
does not have); `lists rebuild` recomputes every contact's desired lists from GHL and applies the
differences, retrying blocked memberships — with a progress bar on a terminal, progress log lines
otherwise — and exits 1 when some contact could not be rebuilt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from df_middleware.cli.configuration import load_settings
from df_middleware.cli.database import run_on_database
from df_middleware.cli.output import command_log, console, fail, print_json

if TYPE_CHECKING:
    from df_middleware.db.session import Database
    from df_middleware.sync.list_operations import RebuildReport

lists_app = typer.Typer(help="The agents' power-dialer lists: status and rebuild.", no_args_is_help=True)

#: Without a terminal, a progress line every this many contacts (and at the end).
LOG_EVERY = 100


@lists_app.command("status")
def lists_status_command(as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False) -> None:
    """Members and blocked contacts of every agent's list (R-AG-3)."""
    from df_middleware.sync.list_operations import lists_status

    settings = load_settings()
    status = run_on_database(lambda db: lists_status(settings, db), existing_only=True)
    if as_json:
        print_json(status.as_dict())
        return
    table = Table("list", "Aloware id", "members", "blocked")
    for line in status.lines:
        table.add_row(
            Text(line.list_name),
            Text(line.aloware_list_id or "—"),
            str(line.members),
            Text(str(line.blocked), style="bold red" if line.blocked else ""),
        )
    console.print(table)
    if status.blocked_lists:
        console.print(
            Text(
                "blocked (missing in Aloware; create them or set ALOWARE_CREATE_LISTS=true, then "
                f"`lists rebuild`): {', '.join(status.blocked_lists)}"
            )
        )


@lists_app.command("rebuild")
def lists_rebuild_command(
    agent: Annotated[str | None, typer.Option("--agent", help="Only contacts of this agent_key")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Recompute every contact's desired lists from GHL and apply the differences (R-AG-3)."""
    settings = load_settings()
    if settings.aloware_api_token is None:
        fail("Aloware is not configured (ALOWARE_API_TOKEN): there are no lists to rebuild", code=2)
    report = run_on_database(lambda db: _rebuild(db, agent, show_bar=console.is_terminal and not as_json))
    if as_json:
        print_json(report.as_dict())
    else:
        console.print(
            Text(
                f"{report.contacts} contacts: {report.changed} changed, {report.unchanged} unchanged, "
                f"{len(report.failed)} failed"
            )
        )
        for contact_id, error in report.failed[:50]:
            console.print(Text(f"  {contact_id}: {error}"))
    if report.failed:
        raise typer.Exit(1)


async def _rebuild(db: Database, agent: str | None, *, show_bar: bool) -> RebuildReport:
    from df_middleware.agents.directory import active_agents
    from df_middleware.connectors.suite import Connectors
    from df_middleware.sync.list_operations import rebuild_lists

    settings = load_settings()
    if not await active_agents(db):
        fail("no active agents in the directory: run `agents seed` (AGENTS_FILE) first", code=2)
    connectors = Connectors.from_settings(settings, db)
    log = command_log()
    try:
        if show_bar:
            with Progress(
                TextColumn("rebuilding lists"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
            ) as bar:
                task = bar.add_task("rebuild", total=None)
                return await rebuild_lists(
                    settings,
                    db,
                    connectors,
                    agent_key=agent,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )

        def progress(done: int, total: int) -> None:
            if done % LOG_EVERY == 0 or done == total:
                log.info("lists.rebuild_progress", done=done, total=total)

        return await rebuild_lists(settings, db, connectors, agent_key=agent, progress=progress)
    finally:
        await connectors.aclose()
