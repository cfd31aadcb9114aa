"""Configured / reachable / authenticated, for the database and each external system, changing
nothing: `df-middleware check` and `GET /api/admin/connections` (SPEC §8.1) both call
`check_connections`. A database without its schema is reported, not migrated or created; no
check sends a message or writes anything remote.
"""

from __future__ import annotations

import dataclasses

from df_middleware.config import Settings
from df_middleware.connectors.status import ConnectionReport
from df_middleware.connectors.suite import Connectors
from df_middleware.connectors.tokens import GhlCredentials, missing_oauth_settings
from df_middleware.db.migrate import MIGRATE_COMMAND, read_schema_state
from df_middleware.db.session import Database, DatabaseUnavailable, database_label


async def check_connections(
    settings: Settings, db: Database, connectors: Connectors | None = None
) -> list[ConnectionReport]:
    """The database's report, then one per external system (and per OAuth installation).
    `connectors`: the process's own (the admin API); None opens a set for the check and closes it."""
    database, ready = await _check_database(db)
    own = connectors is None
    suite = Connectors.from_settings(settings, db) if connectors is None else connectors
    try:
        if ready:
            return [database, *await suite.check()]
        return [database, *await _check_systems_without_database(suite, database)]
    finally:
        if own:
            await suite.aclose()


async def _check_database(db: Database) -> tuple[ConnectionReport, bool]:
    """The database's report, and whether its schema is current (so that the OAuth installs in it
    can be read)."""
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
