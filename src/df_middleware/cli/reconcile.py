"""`reconcile contacts|lists|optouts [--full] [--json]` (SPEC §7, §8.3): run one reconcile job in
the foreground, to its end.

The job is `sync.reconcile.run_reconcile`, the function the scheduler and the admin API call. On
a terminal it draws a rich progress bar; otherwise (a cron job, a pipe, `--json`) it logs progress
lines (R-REC-4). It prints the run's totals (`--json`: the `reconcile_runs` row) and exits 0 when
the run's status is `success`, 1 otherwise; 2 when the job cannot start (a system it needs is not
configured, or another run of it is live).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from df_middleware.cli.configuration import load_settings
from df_middleware.cli.database import run_on_database
from df_middleware.cli.output import command_log, console, fail, print_json

if TYPE_CHECKING:
    from df_middleware.db.session import Database

reconcile_app = typer.Typer(
    help="Batch reconcile jobs: repair drift between GHL and Aloware (contacts, lists, opt-outs).",
    no_args_is_help=True,
)

#: Without a terminal, a progress line every this many items (and for every note).
LOG_EVERY = 500

FullOption = Annotated[
    bool, typer.Option("--full", help="contacts: ignore the cursor and scan every contact")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the reconcile_runs row as JSON")]


class BarProgress:
    """R-REC-4 on a terminal: a rich bar, the job's notes as its description."""

    def __init__(self, bar: Progress, job: str) -> None:
        self.bar = bar
        self.job = job
        self.task: TaskID = bar.add_task(job, total=None)

    def start(self, total: int | None) -> None:
        self.bar.update(self.task, total=total)

    def advance(self, n: int) -> None:
        self.bar.advance(self.task, n)

    def note(self, text: str) -> None:
        self.bar.update(self.task, description=f"{self.job}: {text}")


class LogProgress:
    """R-REC-4 without a terminal: progress as log lines."""

    def __init__(self, job: str) -> None:
        self.job = job
        self.log = command_log()
        self.done = 0
        self.total: int | None = None
        self.logged = 0

    def start(self, total: int | None) -> None:
        self.total = total
        self.log.info("reconcile.progress", job=self.job, done=0, total=total)

    def advance(self, n: int) -> None:
        self.done += n
        if self.done - self.logged >= LOG_EVERY or (self.total is not None and self.done >= self.total):
            self.logged = self.done
            self.log.info("reconcile.progress", job=self.job, done=self.done, total=self.total)

    def note(self, text: str) -> None:
        self.log.info("reconcile.progress", job=self.job, done=self.done, total=self.total, note=text)


def _run(job: str, full: bool, as_json: bool) -> None:
    settings = load_settings()
    missing = []
    if settings.ghl_location_id is None:
        missing.append("GHL_LOCATION_ID (with GHL_API_KEY or OAuth)")
    if job != "optouts" and settings.aloware_api_token is None:
        missing.append("ALOWARE_API_TOKEN")
    if missing:  # an operator's mistake: one line, nothing created or recorded
        fail(f"reconcile {job} needs {' and '.join(missing)}", code=2)
    row = run_on_database(
        lambda db: _reconcile(db, job, full=full, show_bar=console.is_terminal and not as_json)
    )
    if as_json:
        print_json(row)
    else:
        totals = row.get("totals") or {}
        shown = ", ".join(f"{name} {value}" for name, value in totals.items())
        console.print(Text(f"reconcile {job}: {row['status']} ({shown})"))
        if row.get("error_message"):
            console.print(Text(f"  {row['error_message']}"))
    if row["status"] != "success":
        raise typer.Exit(1)


async def _reconcile(db: Database, job: str, *, full: bool, show_bar: bool) -> dict[str, Any]:
    from df_middleware.connectors.suite import Connectors
    from df_middleware.sync.reconcile import ReconcileBusy, run_reconcile

    settings = load_settings()
    connectors = Connectors.from_settings(settings, db)
    try:
        if show_bar:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            ) as bar:
                return await run_reconcile(
                    settings, db, connectors, job, full=full, progress=BarProgress(bar, job)
                )
        return await run_reconcile(settings, db, connectors, job, full=full, progress=LogProgress(job))
    except ReconcileBusy as exc:
        fail(str(exc), code=2)
    finally:
        await connectors.aclose()


@reconcile_app.command("contacts")
def reconcile_contacts_command(full: FullOption = False, as_json: JsonOption = False) -> None:
    """GHL contacts changed since the last run (all with --full) compared with what was synced;
    drifted ones repaired in Aloware, missing ones created (R-REC-1)."""
    _run("contacts", full, as_json)


@reconcile_app.command("lists")
def reconcile_lists_command(full: FullOption = False, as_json: JsonOption = False) -> None:
    """Every contact's desired dialer lists recomputed and applied as differences (R-REC-3)."""
    _run("lists", full, as_json)


@reconcile_app.command("optouts")
def reconcile_optouts_command(full: FullOption = False, as_json: JsonOption = False) -> None:
    """GHL SMS DND re-asserted for every opted-out number (R-REC-3)."""
    _run("optouts", full, as_json)
