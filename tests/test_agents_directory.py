"""The agent directory from AGENTS_FILE (R-AG-5): read (YAML or JSON, every problem named by its
line), ids filled by exact email from the GHL and Aloware simulators over real HTTP, applied in one
transaction on both engines; `agents seed` / `agents list`; `serve` and `worker` applying it at start.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from df_middleware import cli
from df_middleware.agents.agents_file import MAX_AGENTS
from df_middleware.agents.directory import (
    Agent,
    AgentsFileError,
    AgentSpec,
    active_agents,
    all_agents,
    apply_agents,
    load_agents_file,
    parse_agents,
)
from df_middleware.config import get_settings
from df_middleware.db.session import Database
from df_middleware.observability import configure_logging
from tests.sync_world import ALOWARE_TOKEN, LOCATION, SyncWorld
from tests.test_cli_fresh_machine import entries, one_line_error, run
from tests.test_service_process import (
    CLI,
    DEADLINE_S,
    RunningCommand,
    _free_port,
    _stop_gracefully,
    _wait_http,
    clean_env,
    process_runner,
)

__all__ = ["process_runner"]  # a fixture, used here by name

FLOOR_YAML = """\
# the sales floor
- agent_key: alice
  display_name: Alice Doe
  ghl_owner_email: Alice@Example.com
  ghl_assigned_agent_field_value: Alice
  required_tag: team-alice
- agent_key: Bob_2
  ghl_owner_id: ghl-user-bob
  aloware_user_id: 42
- agent_key: carol
  is_active: false
"""

FLOOR_JSON = """\
[
  {"agent_key": "alice", "display_name": "Alice Doe", "ghl_owner_email": "Alice@Example.com",
   "ghl_assigned_agent_field_value": "Alice", "required_tag": "team-alice"},
  {"agent_key": "Bob_2", "ghl_owner_id": "ghl-user-bob", "aloware_user_id": 42},
  {"agent_key": "carol", "is_active": false}
]
"""

FLOOR = [
    Agent("ALICE", "Alice Doe", None, "Alice@Example.com", "Alice", "team-alice", None, True),
    Agent("BOB_2", "Bob_2", "ghl-user-bob", None, None, None, "42", True),
    Agent("CAROL", "carol", None, None, None, None, None, False),
]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- reading the file --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "text"), [("agents.yaml", FLOOR_YAML), ("agents.json", FLOOR_JSON)])
async def test_a_yaml_or_json_file_is_the_directory(
    db: Database, tmp_path: Path, name: str, text: str
) -> None:
    """R-AG-5: the file (YAML or JSON: a list of objects whose keys are agent_directory's columns)
    becomes the directory: keys upper-cased, display_name defaulting to the key as written, an
    Aloware id given as a number stored as text, is_active as the file says."""
    specs = load_agents_file(write(tmp_path, name, text))
    report = await apply_agents(db, specs, ghl=None, aloware=None)
    assert await all_agents(db) == FLOOR
    assert report.created == ["ALICE", "BOB_2", "CAROL"]
    # Alice's ids would come from her email; with neither system configured the report says so.
    assert report.unavailable == {"ghl": "not configured", "aloware": "not configured"}
    assert [a.agent_key for a in await active_agents(db)] == ["ALICE", "BOB_2"]


def test_any_other_name_is_read_as_json_then_yaml(tmp_path: Path) -> None:
    """R-AG-5: a file named neither .yaml/.yml nor .json is tried as JSON, then as YAML."""
    assert load_agents_file(write(tmp_path, "agents.conf", FLOOR_JSON)) == load_agents_file(
        write(tmp_path, "floor.txt", FLOOR_YAML)
    )
    assert [s.agent_key for s in load_agents_file(write(tmp_path, "a.yml", FLOOR_YAML))] == [
        "ALICE",
        "BOB_2",
        "CAROL",
    ]


BAD_FILES = {
    # name: (file name, text, line named, words in the message)
    "yaml syntax": ("a.yaml", "- agent_key: a\n- agent_key: b\n  display_name: 'Bo\n", 3, "not valid YAML"),
    "yaml indentation": (
        "a.yaml",
        "- agent_key: a\n   required_tag: x\n  display_name: y\n",
        2,
        "not valid YAML",
    ),
    "json syntax": ("a.json", '[\n  {"agent_key": "a"},\n  {"agent_key": "b",}\n]\n', 3, "not valid JSON"),
    "yaml key twice": (
        "a.yaml",
        "- agent_key: alice\n- agent_key: bob\n- agent_key: ALICE\n",
        3,
        "agent_key ALICE is named twice (first on line 1",
    ),
    "json key twice": (
        "a.json",
        '[\n  {"agent_key": "alice"},\n\n  {"display_name": "x",\n   "agent_key": " Alice "}\n]',
        5,
        "agent_key ALICE is named twice (first on line 2",
    ),
    "a column twice in one agent": (
        "a.yaml",
        "- agent_key: a\n  required_tag: x\n  required_tag: y\n",
        3,
        "required_tag is given twice",
    ),
    "json column twice in one agent": (
        "a.json",
        '[{"agent_key": "a",\n  "required_tag": "x",\n  "required_tag": "y"}]',
        3,
        "required_tag is given twice",
    ),
    "unknown key": ("a.yaml", "- agent_key: a\n\n  team: north\n", 3, "unknown key 'team'"),
    "json unknown key": ("a.json", '[{"agent_key": "a",\n "Agent_Key": "b"}]', 2, "unknown key 'Agent_Key'"),
    "missing agent_key": ("a.yaml", "- agent_key: a\n- display_name: Nobody\n", 2, "has no agent_key"),
    "agent_key not a key": ("a.yaml", "- agent_key: sales-east\n", 1, "letters, digits and _"),
    "wrong type": (
        "a.yaml",
        "- agent_key: a\n  is_active: maybe\n",
        2,
        "is_active: input should be a valid boolean",
    ),
    "yes is not a tag": ("a.yaml", "- agent_key: a\n  required_tag: yes\n", 2, "required_tag"),
    "a list where one value goes": ("a.yaml", "- agent_key: a\n  required_tag: [x, y]\n", 2, "got a list"),
    "not an email": ("a.json", '[\n{"agent_key": "a", "ghl_owner_email": "alice"}]', 2, "not an email"),
    "not a list": ("a.yaml", "agent_key: a\n", 1, "expected a list of agents"),
    "an item not an object": ("a.json", '[{"agent_key": "a"},\n "b"]', 2, "agent 2: expected an object"),
    "empty": ("a.yaml", "# nobody yet\n", 1, "the file is empty"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
async def test_a_bad_file_is_refused_by_its_line_and_changes_nothing(
    db: Database, tmp_path: Path, case: str
) -> None:
    """R-AG-5: a file that does not parse, names one agent (or one key of an agent) twice, has an
    unknown key, lacks agent_key or has a value of the wrong type is refused with a message naming
    the file and the line, and the directory is left as it was."""
    await apply_agents(db, load_agents_file(write(tmp_path, "good.yaml", FLOOR_YAML)), ghl=None, aloware=None)
    name, text, line, words = BAD_FILES[case]
    path = write(tmp_path, name, text)
    with pytest.raises(AgentsFileError) as refused:
        load_agents_file(path)
    assert refused.value.line == line, str(refused.value)
    assert str(refused.value).startswith(f"agents file {path}, line {line}: "), str(refused.value)
    assert words in str(refused.value)
    assert await all_agents(db) == FLOOR


def test_the_file_is_bounded(tmp_path: Path) -> None:
    """R-AG-5, R-SEC-3: a file past 1 MiB or with more than MAX_AGENTS agents is refused; bytes
    that are not UTF-8 are named by their line."""
    big = write(tmp_path, "big.yaml", "# " + "x" * (1024 * 1024) + "\n")
    with pytest.raises(AgentsFileError, match="larger than"):
        load_agents_file(big)
    many = "".join(f"- agent_key: a{i}\n" for i in range(MAX_AGENTS + 1))
    with pytest.raises(AgentsFileError) as refused:
        parse_agents(many, "many.yaml", "yaml")
    assert refused.value.line == MAX_AGENTS + 1
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"- agent_key: a\n- agent_key: \xff\n")
    with pytest.raises(AgentsFileError) as refused:
        load_agents_file(binary)
    assert refused.value.line == 2
    with pytest.raises(AgentsFileError, match="cannot be read"):
        load_agents_file(tmp_path / "missing.yaml")


def test_an_unquoted_id_is_kept_as_written() -> None:
    """R-AG-5: YAML 1.1 would read an unquoted 0123 as octal 83; an id is what the file says."""
    [spec] = parse_agents("- agent_key: a\n  aloware_user_id: 0123\n", "a.yaml", "yaml")
    assert spec.aloware_user_id == "0123"


# --- applying it -------------------------------------------------------------------------------


async def test_an_agent_no_longer_in_the_file_becomes_inactive(db: Database) -> None:
    """R-AG-5: upsert by agent_key; an agent missing from the file is made inactive, never deleted;
    an unchanged agent is not rewritten; naming it again brings it back."""
    first = parse_agents(FLOOR_YAML, "floor.yaml", "yaml")
    await apply_agents(db, first, ghl=None, aloware=None)
    second = parse_agents(
        "- agent_key: alice\n  display_name: Alice D.\n- agent_key: carol\n", "b.yaml", "yaml"
    )
    report = await apply_agents(db, second, ghl=None, aloware=None)
    assert (report.created, report.updated, report.unchanged, report.deactivated) == (
        [],
        ["ALICE", "CAROL"],
        [],
        ["BOB_2"],
    )
    agents = {a.agent_key: a for a in await all_agents(db)}
    assert set(agents) == {"ALICE", "BOB_2", "CAROL"}
    assert agents["BOB_2"] == Agent("BOB_2", "Bob_2", "ghl-user-bob", None, None, None, "42", False)
    assert agents["ALICE"].display_name == "Alice D."
    assert agents["ALICE"].required_tag is None  # the file is the truth: dropped from it, dropped
    assert agents["CAROL"].is_active is True
    again = await apply_agents(db, second, ghl=None, aloware=None)
    assert (again.updated, again.unchanged, again.deactivated) == ([], ["ALICE", "CAROL"], [])
    back = await apply_agents(db, first, ghl=None, aloware=None)
    assert "BOB_2" in back.updated
    assert [a.agent_key for a in await active_agents(db)] == ["ALICE", "BOB_2"]


async def test_active_agents_are_in_agent_key_order_on_both_engines(db: Database) -> None:
    """R-AG-1 (ties broken by agent_key order): the order is by code point whatever the database's
    collation (PostgreSQL's may ignore `_`)."""
    specs = parse_agents(
        "[" + ", ".join(f'{{"agent_key": "{k}"}}' for k in ("A_B", "AB", "A", "A_A")) + "]", "x"
    )
    await apply_agents(db, specs, ghl=None, aloware=None)
    assert [a.agent_key for a in await active_agents(db)] == ["A", "AB", "A_A", "A_B"]


async def test_two_processes_applying_at_once_both_succeed(db: Database) -> None:
    """R-AG-5: `serve` and `worker` started together apply the same file at once; one inserts,
    the other finds its rows (a unique-key conflict is retried) and the directory is the file."""
    specs = parse_agents(FLOOR_YAML, "floor.yaml", "yaml")
    reports = await asyncio.gather(*(apply_agents(db, specs, ghl=None, aloware=None) for _ in range(3)))
    assert sorted(len(r.created) for r in reports) == [0, 0, 3]
    assert await all_agents(db) == FLOOR


# --- ids by email, over real HTTP ------------------------------------------------------------------


PAIR_YAML = """\
- agent_key: alice
  ghl_owner_email: "  ALICE@example.com "
- agent_key: dave
  ghl_owner_email: dave@example.com
  ghl_owner_id: ghl-dave-explicit
- agent_key: erin
  ghl_owner_email: erin@example.com
- agent_key: frank
"""


async def test_missing_ids_are_filled_by_exact_email(sync_world: SyncWorld) -> None:
    """R-AG-5: a missing ghl_owner_id comes from the GHL user (GET /users/) whose email is the
    agent's ghl_owner_email, a missing aloware_user_id from the Aloware user (GET /webhook/users)
    with that email (trimmed, case-insensitive, otherwise exact); an id the file gives is kept;
    an email nobody has, or two users share, fills nothing and is reported."""
    ghl, aloware = sync_world.ghl.sim, sync_world.aloware.sim
    alice_ghl = ghl.add_user(LOCATION, "Alice Doe", "alice@example.com")["id"]
    ghl.add_user(LOCATION, "Alice Lookalike", "alice@example.com.evil")
    ghl.add_user(LOCATION, "Dave", "dave@example.com")
    alice_aloware = aloware.add_user("Alice Doe", "Alice@Example.com")["id"]
    dave_aloware = aloware.add_user("Dave", "dave@example.com")["id"]
    aloware.add_user("Erin One", "erin@example.com")
    aloware.add_user("Erin Two", "ERIN@example.com")
    connectors = sync_world.connectors

    report = await apply_agents(
        sync_world.db,
        parse_agents(PAIR_YAML, "pair.yaml", "yaml"),
        ghl=connectors.ghl,
        aloware=connectors.aloware,
    )

    agents = {a.agent_key: a for a in await all_agents(sync_world.db)}
    assert (agents["ALICE"].ghl_owner_id, agents["ALICE"].aloware_user_id) == (alice_ghl, str(alice_aloware))
    assert (agents["DAVE"].ghl_owner_id, agents["DAVE"].aloware_user_id) == (
        "ghl-dave-explicit",
        str(dave_aloware),
    )
    assert (agents["ERIN"].ghl_owner_id, agents["ERIN"].aloware_user_id) == (None, None)
    assert (agents["FRANK"].ghl_owner_id, agents["FRANK"].aloware_user_id) == (None, None)
    assert {(f.agent_key, f.system) for f in report.ids_filled} == {
        ("ALICE", "ghl"),
        ("ALICE", "aloware"),
        ("DAVE", "aloware"),
    }
    assert {(u.agent_key, u.system, u.why) for u in report.unmatched} == {
        ("ERIN", "ghl", "no user has this email"),
        ("ERIN", "aloware", "2 users have this email"),
    }
    assert report.unavailable == {}
    assert len(sync_world.ghl.requests("GET", "/users")) == 1
    assert len(sync_world.aloware.requests("GET", "/api/v1/webhook/users")) == 1


async def test_an_unreachable_system_is_reported_and_the_file_applied(sync_world: SyncWorld) -> None:
    """R-AG-5: GHL failing (503) while the file is applied is reported, not raised; the file is
    applied, Aloware's ids are still filled, and an id filled before from the same email is kept
    (an outage at start-up must not unroute an agent), while a changed email drops it."""
    sync_world.ghl.sim.add_user(LOCATION, "Alice", "alice@example.com")
    sync_world.aloware.sim.add_user("Erin", "erin@example.com")
    connectors = sync_world.connectors
    specs = parse_agents(PAIR_YAML, "pair.yaml", "yaml")
    await apply_agents(sync_world.db, specs, ghl=connectors.ghl, aloware=connectors.aloware)
    [before] = [a for a in await all_agents(sync_world.db) if a.agent_key == "ALICE"]
    assert before.ghl_owner_id is not None

    sync_world.ghl.faults(error_rate=1.0, error_status=503)
    moved = PAIR_YAML.replace('"  ALICE@example.com "', "alice@example.com") + "- agent_key: gina\n"
    report = await apply_agents(
        sync_world.db, parse_agents(moved, "b.yaml", "yaml"), ghl=connectors.ghl, aloware=connectors.aloware
    )
    assert set(report.unavailable) == {"ghl"}
    assert report.created == ["GINA"]
    agents = {a.agent_key: a for a in await all_agents(sync_world.db)}
    assert agents["ALICE"].ghl_owner_id == before.ghl_owner_id
    assert agents["ERIN"].aloware_user_id is not None

    changed = moved.replace("alice@example.com", "alice.new@example.com")
    await apply_agents(
        sync_world.db, parse_agents(changed, "c.yaml", "yaml"), ghl=connectors.ghl, aloware=connectors.aloware
    )
    [after] = [a for a in await all_agents(sync_world.db) if a.agent_key == "ALICE"]
    assert after.ghl_owner_id is None


# --- the command line ------------------------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[..., None]]:
    """Set the environment `df-middleware` reads in-process (CliRunner), from a directory without
    a .env; settings and logging are put back afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AGENTS_FILE", raising=False)

    def setenv(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield setenv
    get_settings.cache_clear()
    configure_logging("info", "json")


async def test_agents_seed_and_list(
    sync_world: SyncWorld, tmp_path: Path, cli_env: Callable[..., None]
) -> None:
    """R-AG-5: `agents seed` applies AGENTS_FILE (or --file) with ids filled from GHL and Aloware
    over HTTP and prints its report; `agents list --json` shows the directory; a bad file is one
    line naming the line (exit 2) and changes nothing; no file at all is exit 2."""
    settings = sync_world.settings
    sync_world.ghl.sim.add_user(LOCATION, "Alice", "alice@example.com")
    cli_env(
        DATABASE_URL=settings.database_url,
        GHL_BASE_URL=settings.ghl_base_url,
        GHL_API_KEY="pit-sim",
        GHL_LOCATION_ID=LOCATION,
        ALOWARE_BASE_URL=settings.aloware_base_url,
        ALOWARE_API_TOKEN=ALOWARE_TOKEN,
        AGENTS_FILE=str(write(tmp_path, "agents.yaml", PAIR_YAML)),
        LOG_FORMAT="json",
    )
    runner = CliRunner()
    seeded = await asyncio.to_thread(runner.invoke, cli.app, ["agents", "seed", "--json"])
    assert seeded.exit_code == 0, seeded.output
    report = json.loads(seeded.stdout)
    assert report["created"] == ["ALICE", "DAVE", "ERIN", "FRANK"]
    assert [(f["agent_key"], f["system"]) for f in report["ids_filled"]] == [("ALICE", "ghl")]

    listed = await asyncio.to_thread(runner.invoke, cli.app, ["agents", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [r["agent_key"] for r in rows] == ["ALICE", "DAVE", "ERIN", "FRANK"]
    assert rows[0]["ghl_owner_id"] is not None
    assert rows[1]["ghl_owner_id"] == "ghl-dave-explicit"

    bad = write(tmp_path, "bad.json", '[\n {"agent_key": "zed"},\n {"agent_key": "ZED"}\n]')
    refused = await asyncio.to_thread(runner.invoke, cli.app, ["agents", "seed", "--file", str(bad)])
    assert refused.exit_code == 2
    assert f"agents file {bad}, line 3: agent_key ZED is named twice" in refused.output
    again = await asyncio.to_thread(runner.invoke, cli.app, ["agents", "list", "--json"])
    assert json.loads(again.stdout) == rows

    shown = await asyncio.to_thread(runner.invoke, cli.app, ["agents", "list"])
    assert shown.exit_code == 0
    assert "ALICE" in shown.stdout

    cli_env(AGENTS_FILE="")
    missing = await asyncio.to_thread(runner.invoke, cli.app, ["agents", "seed"])
    assert missing.exit_code == 2
    assert "set AGENTS_FILE or pass --file" in missing.output


# --- serve and worker apply the file at start ------------------------------------------------------


@pytest.mark.slow
def test_serve_applies_the_agents_file_at_start(
    tmp_path: Path, process_runner: Callable[..., RunningCommand]
) -> None:
    """R-AG-5: with AGENTS_FILE set, `serve` applies it after migrating and before serving (the
    directory is there when /readyz answers); GHL not configured is a warning, not a failed start."""
    port = _free_port()
    env = clean_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'svc.db'}",
        AGENTS_FILE=str(write(tmp_path, "agents.yaml", FLOOR_YAML)),
        LOG_FORMAT="json",
    )
    command = process_runner(["serve", "--port", str(port)], tmp_path, env)
    command.wait_for('"agents.applied"')
    assert _wait_http(f"http://127.0.0.1:{port}/readyz").status_code == 200
    [applied] = command.log_events("agents.applied")
    assert (applied["created"], applied["deactivated"]) == (3, [])
    assert {e["system"] for e in command.log_events("agents.ids_not_filled")} == {"ghl", "aloware"}
    listed = subprocess.run(
        [*CLI, "agents", "list", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert listed.returncode == 0, listed.stderr
    assert [r["agent_key"] for r in json.loads(listed.stdout)] == ["ALICE", "BOB_2", "CAROL"]
    _stop_gracefully(command)


@pytest.mark.slow
@pytest.mark.parametrize("command_name", ["serve", "worker"])
def test_a_bad_agents_file_stops_start_up(
    tmp_path: Path, process_runner: Callable[..., RunningCommand], command_name: str
) -> None:
    """R-AG-5: a bad AGENTS_FILE stops `serve` and `worker` before they touch anything, with the
    file and the line named (a directory silently not applied would route leads wrong)."""
    bad = write(tmp_path, "agents.yaml", "- agent_key: a\n- agent_key: b\n  colour: red\n")
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'svc.db'}", AGENTS_FILE=str(bad), LOG_FORMAT="json")
    args = ["serve", "--port", str(_free_port())] if command_name == "serve" else ["worker"]
    command = process_runner(args, tmp_path, env)
    assert command.finish() == 2, command.output
    assert f"df-middleware: agents file {bad}, line 3: unknown key 'colour'" in command.output
    assert "Traceback" not in command.output
    assert not (tmp_path / "svc.db").exists()


@pytest.mark.slow
def test_worker_applies_the_agents_file_at_start(tmp_path: Path) -> None:
    """R-AG-5: `worker` applies AGENTS_FILE after migrating, before working (here `--once`)."""
    env = clean_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'w.db'}",
        AGENTS_FILE=str(write(tmp_path, "agents.json", FLOOR_JSON)),
        LOG_FORMAT="json",
    )
    done = subprocess.run(
        [*CLI, "worker", "--once"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=DEADLINE_S
    )
    assert done.returncode == 0, done.stderr
    assert '"agents.applied"' in done.stdout + done.stderr
    listed = subprocess.run(
        [*CLI, "agents", "list", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert [(r["agent_key"], r["is_active"]) for r in json.loads(listed.stdout)] == [
        ("ALICE", True),
        ("BOB_2", True),
        ("CAROL", False),
    ]


def test_specs_are_frozen_and_exact() -> None:
    """R-AG-5: AgentSpec refuses keys that are not columns (the file's unknown keys) and cannot be
    changed after validation."""
    with pytest.raises(ValueError, match="team"):
        AgentSpec.model_validate({"agent_key": "a", "team": "x"})
    spec = AgentSpec.model_validate({"agent_key": " a "})
    assert (spec.agent_key, spec.display_name, spec.is_active) == ("A", "a", True)
    with pytest.raises(ValueError, match="frozen"):
        spec.agent_key = "B"  # type: ignore[misc]


@pytest.mark.slow
@pytest.mark.parametrize("args", [["agents", "seed", "--file", "agents.yaml"], ["agents", "list", "--json"]])
def test_the_agent_commands_never_create_a_database(tmp_path: Path, args: list[str]) -> None:
    """R-AG-5: `agents seed` and `agents list` in a directory where the service never made its
    database refuse (one line) instead of seeding or listing a new, empty one the service never reads."""
    write(tmp_path, "agents.yaml", FLOOR_YAML)
    done = run(args, tmp_path)
    assert "df-middleware migrate" in one_line_error(done)
    assert entries(tmp_path) == ["agents.yaml"]
