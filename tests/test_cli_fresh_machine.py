"""The installed `df-middleware` command on a fresh machine, and every operator mistake a line.

Each command runs as a real process in an empty temporary directory, with no setting but the ones
a test names, as an operator would type it. What an operator must get: a command that needs the
schema migrates first when AUTO_MIGRATE is true (as `serve` does) and otherwise says what to run;
a database that cannot be used, a bad setting or a malformed argument is one line on stderr and a
non-zero exit, never a traceback and never a password; and a command that fails that way leaves
nothing behind (no stray empty `df-middleware.db`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest

from df_middleware.db.migrate import head_revision
from df_middleware.simulators.ghl import create_app as create_ghl
from tests.servers import free_port, serve_app
from tests.test_service_process import (
    CLI,
    CONSOLE_SCRIPT,
    DEADLINE_S,
    _schema_revision,
    clean_env,
    unmigrated_database_url,
)

pytestmark = pytest.mark.slow

__all__ = ["unmigrated_database_url"]  # a fixture, used here by name

SOME_ID = str(uuid.UUID(int=42))
#: Every command that reads or writes the service's tables, with what it says on an empty database.
SCHEMA_COMMANDS: dict[str, tuple[list[str], int]] = {
    "events list": (["events", "list"], 0),
    "events list --json": (["events", "list", "--json"], 0),
    "events show": (["events", "show", SOME_ID], 1),
    "events replay": (["events", "replay", SOME_ID], 1),
    "events quarantine": (["events", "quarantine", SOME_ID, "--reason", "r"], 1),
    "events unquarantine": (["events", "unquarantine", SOME_ID], 1),
    "events mark-done": (["events", "mark-done", SOME_ID], 1),
    "events replay-matching": (["events", "replay-matching", "--json"], 0),
    "prune": (["prune", "--json"], 0),
    "oauth status": (["oauth", "status", "--json"], 0),
}
#: Commands that refuse a database that was never migrated instead of creating one: an operator's
#: consent action or report on a new, empty database would mislead (recorded where the service
#: never reads it; "no decision recorded" about a number the service has opted out).
EXISTING_DATABASE_COMMANDS: dict[str, list[str]] = {
    "optout check": ["optout", "check", "+19195550100", "--json"],
    "optout add": ["optout", "add", "+19195550100", "--reason", "complaint"],
    "optout remove": ["optout", "remove", "+19195550100", "--channel", "voice"],
    "mappings search": ["mappings", "search", "--json"],
}


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    assert CONSOLE_SCRIPT.exists(), f"{CONSOLE_SCRIPT} is not installed: pip install -e '.[dev]'"
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=False,
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exactly one line of its own on stderr (log lines aside), no traceback."""
    assert done.returncode != 0, done
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    own = [line for line in done.stderr.splitlines() if line.startswith("df-middleware: ")]
    assert len(own) == 1, done.stderr
    return own[0]


def entries(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def sqlite_revision(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        [(revision,)] = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    return str(revision)


# --- a fresh machine: commands that need the schema ------------------------------------------------


@pytest.mark.parametrize("name", list(SCHEMA_COMMANDS))
def test_a_command_on_a_fresh_machine_migrates_first(name: str, tmp_path: Path) -> None:
    """R-RUN-3, R-DM-6: with AUTO_MIGRATE true (the default) a command that needs the schema
    applies the migrations first, as `serve` does, then does its work on the empty database."""
    args, expected = SCHEMA_COMMANDS[name]
    done = run(args, tmp_path)
    assert done.returncode == expected, done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert sqlite_revision(tmp_path / "df-middleware.db") == head_revision()
    if "--json" in args:
        json.loads(done.stdout)  # logs go to stderr: stdout stays machine-readable
    if expected:
        assert SOME_ID in one_line_error(done)  # "no event …", as on a migrated database


@pytest.mark.parametrize("name", list(SCHEMA_COMMANDS))
def test_without_auto_migrate_a_command_says_what_to_run_and_creates_nothing(
    name: str, tmp_path: Path
) -> None:
    """R-DM-6: with AUTO_MIGRATE=false and no database, one line names `df-middleware migrate`,
    the exit is non-zero, and no empty database file is left behind."""
    args, _ = SCHEMA_COMMANDS[name]
    done = run(args, tmp_path, AUTO_MIGRATE="false")
    assert "df-middleware migrate" in one_line_error(done)
    assert entries(tmp_path) == []


@pytest.mark.parametrize("auto_migrate", ["true", "false"])
@pytest.mark.parametrize("name", list(EXISTING_DATABASE_COMMANDS))
def test_a_consent_command_never_creates_a_database(name: str, auto_migrate: str, tmp_path: Path) -> None:
    """R-OPT-2, R-DM-6: `optout add|remove|check` in a directory with no database (the wrong
    directory, a missing DATABASE_URL) refuse in one line naming the database and what to do,
    whatever AUTO_MIGRATE says, and create nothing: an opt-out recorded in a throwaway database
    would be a compliance record the service never reads."""
    done = run(EXISTING_DATABASE_COMMANDS[name], tmp_path, AUTO_MIGRATE=auto_migrate)
    line = one_line_error(done)
    assert "not the service's database, nothing recorded or created" in line
    assert "df-middleware migrate" in line
    assert entries(tmp_path) == []


@pytest.mark.parametrize("state", ["empty", "behind"])
def test_without_auto_migrate_a_database_without_its_schema_is_named(
    state: str, unmigrated_database_url: str, tmp_path: Path
) -> None:
    """R-DM-6: an existing database with no schema, or one migration behind, is not migrated by a
    command when AUTO_MIGRATE=false: one line says where it stands and what to run; it is left
    as it was."""
    from df_middleware.db.migrate import _scripts, upgrade_sync

    url = unmigrated_database_url
    before: str | None = None
    if url.startswith("sqlite"):
        sqlite3.connect(url.removeprefix("sqlite:///")).close()  # an empty SQLite file
    if state == "behind":
        head = _scripts().get_revision(head_revision())
        assert head is not None
        before = str(head.down_revision)
        upgrade_sync(url, before)
    done = run(["events", "list"], tmp_path, DATABASE_URL=url, AUTO_MIGRATE="false")
    line = one_line_error(done)
    assert "df-middleware migrate" in line
    assert ("no schema yet" if before is None else f"at migration {before}") in line
    assert _schema_revision(url) == before


def test_check_on_a_fresh_machine_reports_the_database_without_creating_it(tmp_path: Path) -> None:
    """R-RUN-3: `check`, the README's first step, reports a database not created yet as a finding
    (what creates it), lists the systems, exits 0 and creates nothing; with GHL's Private
    Integration Token configured it checks GHL without any database, and says that the OAuth
    installs could not be read."""
    from cryptography.fernet import Fernet

    with ExitStack() as stack:
        ghl_url = stack.enter_context(serve_app(create_ghl()))
        done = run(
            ["check", "--json"],
            tmp_path,
            GHL_BASE_URL=ghl_url,
            GHL_LOCATION_ID="loc_sim",
            GHL_API_KEY="pit-sim",
            GHL_CLIENT_ID="client-1",
            GHL_CLIENT_SECRET="client-secret",
            TOKEN_ENCRYPTION_KEY=Fernet.generate_key().decode(),  # else a key file is generated
        )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    reports = {report["system"]: report for report in json.loads(done.stdout)}
    database = reports["database"]
    assert (database["configured"], database["reachable"]) == (True, True)
    assert "df-middleware migrate" in database["reason"]
    assert reports["ghl"]["ok"] is True, reports["ghl"]
    assert reports["ghl_oauth"]["configured"] is True
    assert "database is not ready" in reports["ghl_oauth"]["reason"]
    assert reports["aloware"]["configured"] is False
    assert entries(tmp_path) == []


def test_check_reports_a_database_without_schema_truthfully(
    unmigrated_database_url: str, tmp_path: Path
) -> None:
    """R-DM-6: `check` on a reachable database without its schema says so (and what to run),
    does not migrate it, and exits 0: the database answers; it is not ready yet."""
    url = unmigrated_database_url
    if url.startswith("sqlite"):
        sqlite3.connect(url.removeprefix("sqlite:///")).close()  # an empty SQLite file
    done = run(["check", "--json"], tmp_path, DATABASE_URL=url)
    assert done.returncode == 0, done.stderr
    [database] = [report for report in json.loads(done.stdout) if report["system"] == "database"]
    assert (database["reachable"], database["authenticated"]) == (True, True)
    assert database["reason"] == "no schema yet: run `df-middleware migrate`"
    assert _schema_revision(url) is None


# --- a database that cannot be used ----------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["serve"], ["worker"], ["migrate"], ["events", "list"], ["prune"], ["oauth", "status"]],
    ids=" ".join,
)
def test_an_unreachable_database_is_one_line_naming_host_and_port(args: list[str], tmp_path: Path) -> None:
    """R-RUN-3: a PostgreSQL that does not answer is one line naming its host and port and what to
    check, never a traceback and never the password; the exit is non-zero."""
    port = free_port()
    url = f"postgresql://postgres:hunter2-secret@127.0.0.1:{port}/df"
    if args == ["serve"]:
        args = ["serve", "--port", str(free_port())]
    done = run(args, tmp_path, DATABASE_URL=url)
    line = one_line_error(done)
    assert f"127.0.0.1:{port}" in line
    assert "DATABASE_URL" in line
    assert "hunter2-secret" not in done.stdout + done.stderr
    assert "Application startup failed" not in done.stderr
    assert entries(tmp_path) == []


def test_check_reports_an_unreachable_database_and_fails(tmp_path: Path) -> None:
    """R-RUN-3: `check` reports an unreachable database as not reachable, naming host and port, and
    still reports every other system; exit 1."""
    port = free_port()
    url = f"postgresql://postgres:hunter2-secret@127.0.0.1:{port}/df"
    done = run(["check", "--json"], tmp_path, DATABASE_URL=url)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "hunter2-secret" not in done.stdout + done.stderr
    reports = {report["system"]: report for report in json.loads(done.stdout)}
    assert reports["database"]["reachable"] is False
    assert f"127.0.0.1:{port}" in reports["database"]["reason"]
    assert {"ghl", "ghl_oauth", "aloware", "verity", "verity-db"} <= set(reports)


@pytest.mark.parametrize("problem", ["missing directory", "file as directory", "a directory"])
@pytest.mark.parametrize(
    "args", [["serve"], ["worker"], ["migrate"], ["events", "list"], ["check", "--json"]], ids=" ".join
)
def test_an_unusable_sqlite_path_is_one_line(problem: str, args: list[str], tmp_path: Path) -> None:
    """R-RUN-3: a SQLite path in a directory that does not exist (it is not created: a mistyped
    path must not start a second, empty database), under a file, or naming a directory, is one
    line saying so; nothing is created."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    if problem == "missing directory":
        url = f"sqlite:///{tmp_path / 'no-such-dir' / 'df.db'}"
    elif problem == "file as directory":
        (tmp_path / "a-file").write_text("not a directory")
        url = f"sqlite:///{tmp_path / 'a-file' / 'df.db'}"
    else:
        url = f"sqlite:///{tmp_path}"
    if args == ["serve"]:
        args = ["serve", "--port", str(free_port())]
    before = entries(tmp_path)
    done = run(args, workdir, DATABASE_URL=url)
    if args[0] == "check":
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        [database] = [r for r in json.loads(done.stdout) if r["system"] == "database"]
        assert database["reachable"] is False
        assert database["reason"]
    else:
        one_line_error(done)
    assert entries(tmp_path) == before
    assert entries(workdir) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any directory")
def test_a_sqlite_directory_that_is_not_writable_is_one_line(tmp_path: Path) -> None:
    """R-RUN-3: a SQLite database in a directory we may not write to is one line (not as root,
    who may write anywhere)."""
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        done = run(["migrate"], tmp_path, DATABASE_URL=f"sqlite:///{locked / 'df.db'}")
        assert "not writable" in one_line_error(done)
    finally:
        locked.chmod(0o700)


def test_a_malformed_database_url_is_a_configuration_error_without_the_password(tmp_path: Path) -> None:
    """R-RUN-3: a DATABASE_URL that is not a URL, or has a scheme we do not support, is one
    configuration error line (exit 2) that never repeats the value (it may hold a password)."""
    for url in ("postgresql://u:hunter2-secret@db:not-a-port/df", "mysql://u:hunter2-secret@db/df"):
        done = run(["events", "list"], tmp_path, DATABASE_URL=url)
        assert done.returncode == 2
        assert "configuration error" in one_line_error(done)
        assert "DATABASE_URL" in done.stderr
        assert "hunter2-secret" not in done.stderr
    assert entries(tmp_path) == []


# --- arguments and help ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["events", "show", "not-a-uuid"],
        ["events", "replay", "42"],
        ["events", "quarantine", "x", "--reason", "r"],
        ["events", "unquarantine", "x"],
        ["events", "list", "--since", "yesterday"],
        ["events", "list", "--since", "2026-11-25T10:00:00"],
        ["events", "list", "--kind", "fax"],
    ],
    ids=" ".join,
)
def test_a_malformed_argument_is_one_line_and_touches_no_database(args: list[str], tmp_path: Path) -> None:
    """SPEC §8.3: a malformed event id, time or kind is one line (exit 2), checked before the
    database is opened, so nothing is created."""
    done = run(args, tmp_path)
    assert done.returncode == 2
    one_line_error(done)
    assert entries(tmp_path) == []


HELP_COMMANDS = [
    [],
    ["serve"],
    ["worker"],
    ["migrate"],
    ["prune"],
    ["check"],
    ["demo"],
    ["events"],
    ["events", "list"],
    ["events", "show"],
    ["events", "replay"],
    ["events", "quarantine"],
    ["events", "unquarantine"],
    ["oauth"],
    ["oauth", "start-url"],
    ["oauth", "status"],
    ["config"],
    ["config", "docs"],
    ["config", "env-example"],
    ["simulate"],
    ["simulate", "ghl"],
    ["simulate", "aloware"],
    ["simulate", "verity"],
]


def test_help_works_in_an_empty_directory_and_creates_nothing(tmp_path: Path) -> None:
    """R-RUN-1: `--help` on the command and every subcommand answers (exit 0) without a database,
    a setting or a file being created."""
    for args in HELP_COMMANDS:
        done = run([*args, "--help"], tmp_path)
        assert done.returncode == 0, (args, done.stderr)
        assert "Usage" in done.stdout, args
    assert entries(tmp_path) == []
