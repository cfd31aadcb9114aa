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
    from df_middleware.connectors.suite import Connectors
    from df_middleware.db.session import Database


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
    from df_middleware.connectors.suite import Connectors

    db = open_database(settings)
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
