"""`df-middleware demo`: the scripted day, end to end, from the command line (SPEC §8.3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_plays_the_day_and_reaches_the_expected_end_state(tmp_path: Path) -> None:
    """The day a newcomer watches with `df-middleware demo` is the day the suite proves: one
    command, no configuration, nothing outside 127.0.0.1, and the expected state in every system."""
    keep = {"PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    done = subprocess.run(
        [sys.executable, "-m", "df_middleware.cli", "demo", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["matches_expected"] is True
    assert report["events"] == {"texting_webhook_events:done": 9, "webhook_events:done": 11}
    dana, sam = report["end_state"]["ghl_contacts"]
    assert len(dana["notes"]) == 4
    assert [m["error"] for m in sam["messages"] if m["status"] == "failed"] == ["opted_out"]  # R-OPT-4
    assert sam["dnd"] == [["SMS", "inactive"]]  # STOP, then START (R-OPT-5)
    assert len(report["end_state"]["verity_sends"]) == 2
