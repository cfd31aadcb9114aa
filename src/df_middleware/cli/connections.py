"""`check`: configured / reachable / authenticated, for the database and each external system,
changing nothing (a database without its schema is reported, not migrated or created)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from df_middleware.cli.configuration import load_settings
from df_middleware.cli.database import open_database, run_with_database
from df_middleware.cli.output import console, print_json, start_logging
from df_middleware.config import Settings

if TYPE_CHECKING:
    from df_middleware.connectors.status import ConnectionReport


def check(
    as_json: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
) -> None:
    """Configured / reachable / authenticated, for the database and each external system.

    Exits 1 when a configured system is unreachable or refuses our credentials, 0 otherwise
    (unconfigured systems are listed with the settings that would enable them). It changes
    nothing: a database without its schema (or a SQLite file not created yet) is reported, not
    migrated or created.
    """
    settings = load_settings()
    start_logging(settings)
    reports = run_with_database(_check(settings), settings.database_url)
    if as_json:
        print_json([r.as_dict() for r in reports])
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
        sys.stderr.write(f"df-middleware: {name} is set but empty: treated as unset\n")
    # Failing means a check said no; "not checked" (e.g. OAuth configured, nothing installed yet)
    # is reported with its reason but does not fail the command.
    failing = [r for r in reports if r.configured and False in (r.reachable, r.authenticated)]
    raise typer.Exit(1 if failing else 0)


async def _check(settings: Settings) -> list[ConnectionReport]:
    from df_middleware.connectors.checkup import check_connections

    db = open_database(settings)
    try:
        return await check_connections(settings, db)
    finally:
        await db.dispose()
