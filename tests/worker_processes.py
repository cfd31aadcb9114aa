"""Worker processes for tests that kill or stop one: the real `df-middleware worker` command.

`worker_env` builds the environment an operator's would hold (exactly the test's settings, plus
PYTHONPATH so the child imports the same code as the test); the `start_worker` fixture starts
`python -m df_middleware.cli worker` with it, its output in `<tmp_path>/<name>.log`, and kills
whatever is still running at the end of the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from df_middleware.config import Settings

CLI = [sys.executable, "-m", "df_middleware.cli", "worker"]

StartWorker = Callable[[dict[str, str], str], subprocess.Popen[bytes]]


def worker_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """A clean environment holding exactly the test's settings (as an operator's would), plus
    PYTHONPATH, so the worker imports the same code as the test."""
    keep = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, bool):
            value = "true" if value else "false"
        env[name.upper()] = str(value)
    env.update(overrides)
    return env


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"{name}.log").open("wb")
        proc = subprocess.Popen(CLI, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
