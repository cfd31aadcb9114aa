"""`agents …`: the agent directory (R-AG-5). `agents seed` applies `AGENTS_FILE` (or `--file`) as
`serve` and `worker` do at start; `agents list` shows the directory.

A bad file is one line naming the file and the line, exit 2, and the directory is not touched.
GHL or Aloware being unreachable is not a failure: the file is applied, the report says which ids
could not be filled. `agents_from_settings` and `apply_at_start` are the start-up half, used by
`cli/processes.py`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from df_middleware.cli.configuration import load_settings
from df_middleware.cli.database import run_on_database
from df_middleware.cli.output import command_log, console, fail, print_json
from df_middleware.config import Settings

if TYPE_CHECKING:
    from df_middleware.agents.directory import AgentSpec, ApplyReport
    from df_middleware.db.session import Database

agents_app = typer.Typer(help="The agent directory: seed it from AGENTS_FILE, list it.", no_args_is_help=True)


def _shown(text: str | None) -> str:
    """Stored text as it is, control characters (terminal escapes) shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in (text or ""))


def _line(text: str) -> None:
    console.print(_shown(text), soft_wrap=True, markup=False, highlight=False)


def read_agents(path: str | Path) -> list[AgentSpec]:
    """The file's agents, or the command ends with the file's problem as one line (exit 2)."""
    from df_middleware.agents.agents_file import list_name_clash
    from df_middleware.agents.directory import AgentsFileError, load_agents_file

    try:
        agents = load_agents_file(path)
    except AgentsFileError as exc:
        fail(str(exc), code=2)
    settings = load_settings()
    keys = [agent.agent_key for agent in agents] + [settings.default_agent_key]
    clash = list_name_clash(keys, settings.list_keys)
    if clash is not None:
        fail(f"agents file {path}: {clash}", code=2)
    return agents


def agents_from_settings(settings: Settings) -> list[AgentSpec] | None:
    """AGENTS_FILE's agents (None when it is not set), read before start-up touches anything: a bad
    file stops `serve` or `worker`, since a directory silently not applied would route leads wrong."""
    return None if settings.agents_file is None else read_agents(settings.agents_file)


async def apply_at_start(db: Database, settings: Settings, agents: list[AgentSpec]) -> ApplyReport:
    """Apply AGENTS_FILE at start and log what it did; ids GHL or Aloware could not give are a
    warning, never a failed start."""
    from df_middleware.agents.directory import apply_agents_file

    report = await apply_agents_file(db, settings, agents)
    log = command_log()
    log.info(
        "agents.applied",
        file=settings.agents_file,
        created=len(report.created),
        updated=len(report.updated),
        unchanged=len(report.unchanged),
        deactivated=report.deactivated,
        ids_filled=len(report.ids_filled),
    )
    for system, why in sorted(report.unavailable.items()):
        log.warning("agents.ids_not_filled", system=system, reason=why)
    for miss in report.unmatched:
        log.warning("agents.email_unmatched", agent=miss.agent_key, system=miss.system, reason=miss.why)
    return report


@agents_app.command("seed")
def agents_seed(
    file: Annotated[Path | None, typer.Option("--file", help="The agents file (default AGENTS_FILE)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Apply the agents file: upsert by agent_key, agents not in it inactive (never deleted), missing
    GHL and Aloware user ids filled by exact email match (R-AG-5)."""
    from df_middleware.agents.directory import apply_agents_file

    settings = load_settings()
    path = file if file is not None else settings.agents_file
    if path is None:
        fail("no agents file: set AGENTS_FILE or pass --file PATH", code=2)
    agents = read_agents(path)
    report = run_on_database(lambda db: apply_agents_file(db, settings, agents), existing_only=True)
    if as_json:
        print_json(report.as_dict())
        return
    _line(report.summary())
    for label, keys in (
        ("created", report.created),
        ("updated", report.updated),
        ("deactivated", report.deactivated),
    ):
        if keys:
            _line(f"  {label}: {', '.join(keys)}")
    for filled in report.ids_filled:
        _line(f"  {filled.agent_key}: {filled.system} user {filled.user_id} (matched by email)")
    for miss in report.unmatched:
        _line(f"  {miss.agent_key}: no {miss.system} id for {miss.email} ({miss.why})")
    for system, why in sorted(report.unavailable.items()):
        _line(f"  {system}: users not asked ({why}); its missing ids stay empty")


@agents_app.command("list")
def agents_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False) -> None:
    """The agent directory, inactive agents included, ordered by agent_key."""
    from df_middleware.agents.directory import all_agents

    agents = run_on_database(all_agents, existing_only=True)
    if as_json:
        print_json([asdict(agent) for agent in agents])
        return
    table = Table("agent", "name", "active", "GHL owner", "email", "field value", "tag", "Aloware user")
    for agent in agents:
        table.add_row(
            *(
                Text(_shown(value))
                for value in (
                    agent.agent_key,
                    agent.display_name,
                    "yes" if agent.is_active else "no",
                    agent.ghl_owner_id,
                    agent.ghl_owner_email,
                    agent.ghl_assigned_agent_field_value,
                    agent.required_tag,
                    agent.aloware_user_id,
                )
            )
        )
    console.print(table)
