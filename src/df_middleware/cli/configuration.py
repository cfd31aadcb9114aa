"""The configuration as a command meets it: the settings read once per command (a mistake is one
line naming the setting, exit 2), and `config docs` / `config env-example`, generated from the
settings model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from df_middleware.cli.output import fail
from df_middleware.config import Settings, configuration_markdown, env_example, get_settings

config_app = typer.Typer(help="Configuration reference.", no_args_is_help=True)


def load_settings() -> Settings:
    from pydantic import ValidationError
    from sqlalchemy.exc import ArgumentError

    from df_middleware.db.session import async_url

    try:
        settings = get_settings()
    except ValidationError as exc:
        # One line naming each setting and what is wrong with it; never the value given, which
        # may be a secret (a DATABASE_URL with a password in it, say).
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']).upper() or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        fail(f"configuration error: {problems}", code=2)
    try:
        async_url(settings.database_url)  # the settings check the scheme; the rest is read here
    except (ValueError, ArgumentError):
        example = "sqlite:///path/to/file.db or postgresql://user:password@host:5432/dbname"
        fail(f"configuration error: DATABASE_URL is not a URL such as {example}", code=2)
    return settings


def _emit(text: str, output: Path | None) -> None:
    """Write generated text to `output`, or to stdout."""
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text)


@config_app.command("docs")
def config_docs(
    output: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
) -> None:
    """Print docs/configuration.md, generated from the settings model."""
    _emit(configuration_markdown(), output)


@config_app.command("env-example")
def config_env_example(
    output: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
) -> None:
    """Print .env.example, generated from the settings model."""
    _emit(env_example(), output)
