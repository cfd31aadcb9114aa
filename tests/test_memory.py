"""The worker pins glibc's mmap threshold so a long-lived worker's heap does not keep the holes
left by asyncio's 256 KiB read buffers (`df_middleware.memory`). Its effect is a figure, not an
assertion: bench/soak.py's never-killed worker's RSS over 30 minutes (docs/benchmarks.md "Soak")."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from df_middleware.memory import OPERATOR_SETTING, pin_mmap_threshold


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_worker_pins_the_threshold_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    """§12 (no RSS growth trend): on glibc `mallopt(M_MMAP_THRESHOLD)` is accepted."""
    monkeypatch.delenv(OPERATOR_SETTING, raising=False)
    assert pin_mmap_threshold() is True


def test_the_operators_own_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator's MALLOC_MMAP_THRESHOLD_ (applied by glibc at start) is left as it is."""
    monkeypatch.setenv(OPERATOR_SETTING, "65536")
    assert pin_mmap_threshold() is False


def test_the_worker_command_says_whether_it_pinned(tmp_path: object) -> None:
    """The worker's start-up log line says whether the threshold is pinned (operators comparing
    RSS across hosts need to know)."""
    done = subprocess.run(
        [sys.executable, "-m", "df_middleware.cli", "worker", "--once"],
        env={"DATABASE_URL": f"sqlite:///{tmp_path}/w.db", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    expected = "true" if platform.libc_ver()[0] == "glibc" else "false"
    assert f'"mmap_threshold_pinned": {expected}' in done.stderr + done.stdout
