"""What a command says: its result on stdout (a rich table, or JSON with `--json`), a mistake as one
line on stderr with a non-zero exit, and its log once the settings have configured logging."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    from df_middleware.config import Settings

console = Console()


def fail(message: str, code: int = 1) -> NoReturn:
    """End the command with one line on stderr (plain: rich would wrap it at 80 columns)."""
    sys.stderr.write(f"df-middleware: {message}\n")
    raise typer.Exit(code)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def start_logging(settings: Settings) -> None:
    import logging

    from df_middleware.observability import configure_logging

    configure_logging(settings.log_level, settings.log_format, reveal_pii=settings.log_reveal_pii)
    # Alembic announces each plugin it loads, at INFO, when it is first imported: on every command
    # that touches the database, after logging is configured. Its migration lines are kept.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def command_log() -> Any:
    """The commands' logger, still named `df_middleware.cli`: log filters and dashboards keep matching."""
    from df_middleware.observability import get_logger

    return get_logger("df_middleware.cli")
