"""`prune`: the retention of stored events and sync_log rows (R-DM-7)."""

from __future__ import annotations

from typing import Annotated

import typer

from df_middleware.cli.configuration import load_settings
from df_middleware.cli.database import run_on_database
from df_middleware.cli.output import console, print_json


def prune(
    retention_days: Annotated[int | None, typer.Option(min=1, help="Default RETENTION_DAYS.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Delete `done` events and sync_log rows older than the retention (R-DM-7)."""
    from df_middleware.queue.operations import prune as prune_rows

    settings = load_settings()
    days = retention_days or settings.retention_days
    counts = run_on_database(lambda db: prune_rows(db, days, settings.prune_batch_size))
    if as_json:
        print_json(counts)
        return
    for table, deleted in counts.items():
        console.print(f"{table}: {deleted} deleted")
