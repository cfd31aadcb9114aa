"""`oauth …`: GHL Marketplace OAuth installs (R-OA-1): a signed install URL, and the installed
locations with their token state."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from df_middleware.cli.configuration import load_settings
from df_middleware.cli.database import run_on_database
from df_middleware.cli.output import console, fail, print_json

oauth_app = typer.Typer(help="GHL Marketplace OAuth installs (R-OA-1).", no_args_is_help=True)


@oauth_app.command("start-url")
def oauth_start_url() -> None:
    """Print a signed install URL (valid 15 min), the twin of GET /leadconnector/oauth/start.

    Run it with the server's TOKEN_ENCRYPTION_KEY (or its DATA_DIR): the callback only accepts a
    state signed with that key.
    """
    from df_middleware.admin.oauth import authorize_url
    from df_middleware.connectors.tokens import TokenKeyError, load_token_cipher, missing_oauth_settings

    settings = load_settings()
    missing = missing_oauth_settings(settings)
    if missing:
        fail(f"GHL OAuth is not configured: set {', '.join(missing)}", code=2)
    try:
        cipher = load_token_cipher(settings, create=True)
    except TokenKeyError as exc:
        fail(f"token key error: {exc}", code=2)
    assert cipher is not None
    sys.stdout.write(authorize_url(settings, cipher) + "\n")


@oauth_app.command("status")
def oauth_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """List installed GHL locations with token expiry and the last refresh error (never tokens)."""
    from df_middleware.connectors.tokens import token_statuses

    statuses = run_on_database(token_statuses)
    if as_json:
        print_json([status.as_dict() for status in statuses])
        return
    if not statuses:
        console.print("no GHL location installed through OAuth")
        return
    table = Table("location", "state", "expires", "last refresh error")
    for status in statuses:
        failed = ""
        if status.refresh_error:
            failed = f"{str(status.refresh_failed_at)[:19]} {status.refresh_error}"
        table.add_row(status.location_id, status.state, str(status.expires_at)[:19], failed)
    console.print(table)
