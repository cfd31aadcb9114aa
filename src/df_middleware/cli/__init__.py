"""`df-middleware`: the command line. Commands are thin: parse, call a service, print.

Listing commands take `--json` for machine-readable output (the same object the admin API returns).

An operator's mistake (a bad setting, a database that cannot be reached or has no schema, a
malformed id) is one line on stderr and a non-zero exit, never a traceback; a command that fails
that way creates nothing (no stray SQLite file). Commands that need the schema migrate it first
when AUTO_MIGRATE is true, as `serve` does, and otherwise say to run `df-middleware migrate`.

One module per flow: `processes` (serve, worker, migrate, and the stop request they honour),
`retention` (prune), `connections` (check), `demo`, and the sub-commands `events`, `config`
(`configuration`, which also reads the settings for every command), `oauth`, `optout`, `agents`,
`reconcile` and `simulate`.
`database` opens the database for a command; `output` is what a command prints. Each module
imports only Typer, rich and the settings at import time, and the rest inside its commands, so that
`df-middleware --help` stays fast and touches nothing.
"""

from __future__ import annotations

import typer

from df_middleware.cli import connections, demo, processes, retention
from df_middleware.cli.agents import agents_app
from df_middleware.cli.configuration import config_app
from df_middleware.cli.events import events_app
from df_middleware.cli.lists import lists_app
from df_middleware.cli.mappings import mappings_app
from df_middleware.cli.oauth import oauth_app
from df_middleware.cli.optout import optout_app
from df_middleware.cli.reconcile import reconcile_app
from df_middleware.cli.simulate import simulate_app

app = typer.Typer(
    help="DF-Middleware: keeps GoHighLevel, Aloware and Verity in step.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(events_app, name="events")
app.add_typer(config_app, name="config")
app.add_typer(oauth_app, name="oauth")
app.add_typer(optout_app, name="optout")
app.add_typer(lists_app, name="lists")
app.add_typer(agents_app, name="agents")
app.add_typer(reconcile_app, name="reconcile")
app.add_typer(mappings_app, name="mappings")
app.add_typer(simulate_app, name="simulate")
# The top-level commands, in the order `--help` lists them (before the groups above).
app.command()(processes.serve)
app.command()(processes.worker)
app.command()(processes.migrate)
app.command()(retention.prune)
app.command()(connections.check)
app.command()(demo.demo)


def main() -> None:
    app()
