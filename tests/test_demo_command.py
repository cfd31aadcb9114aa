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
    assert report["events"] == {
        "broadcast_webhook_events:done": 2,
        "texting_webhook_events:done": 9,
        "webhook_events:done": 14,
    }
    dana, sam, riley = report["end_state"]["ghl_contacts"]
    assert len(dana["notes"]) == 4
    assert [m["error"] for m in sam["messages"] if m["status"] == "failed"] == ["opted_out"]  # R-OPT-4
    assert sam["dnd"] == [["SMS", "inactive"]]  # STOP, then START (R-OPT-5)
    assert len(report["end_state"]["verity_sends"]) == 2
    # Riley: assigned to Alice, reassigned to Bob, tagged hot → Bob's two lists only, Alice's
    # emptied (R-AG-1…R-AG-3); Dana, with no owner, on the default agent's list.
    assert riley["tags"] == ["hot", "new lead"]
    lists = {found["name"]: found["members"] for found in report["end_state"]["aloware_lists"]}
    assert lists == {
        "DF_ALICE_NEW_LEADS": [],
        "DF_BOB_HOT": [riley["phone"]],
        "DF_BOB_NEW_LEADS": [riley["phone"]],
        "DF_UNASSIGNED_NEW_LEADS": [dana["phone"]],
    }
    members = {line["list_name"]: (line["members"], line["blocked"]) for line in report["lists"]}
    assert members["DF_BOB_HOT"] == members["DF_BOB_NEW_LEADS"] == (1, 0)
    assert members["DF_ALICE_NEW_LEADS"] == (0, 0)
    # The broadcast: one GHL record with the completion's numbers, every rate in [0, 1] (R-BC-1…3).
    [record] = report["end_state"]["ghl_records"]
    assert record["object_key"] == "custom_objects.broadcasts"
    properties = dict(record["properties"])
    assert (properties["sent"], properties["delivered"], properties["pending"]) == (396, 380, 0)
    rates = [value for name, value in properties.items() if name.endswith("_rate")]
    assert len(rates) == 5
    assert all(0 <= rate <= 1 for rate in rates)


def test_demo_prints_the_lists_and_the_broadcast_record(tmp_path: Path) -> None:
    """R-RUN-5, R-AG-3, R-BC-2: without --json, `df-middleware demo` ends with the agents' lists and
    their members, and the broadcast record, after the summary of every system."""
    keep = {"PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k in keep} | {"COLUMNS": "160"}
    done = subprocess.run(
        [sys.executable, "-m", "df_middleware.cli", "demo"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    summary, lists, record = (
        out.index("what it holds at the end"),
        out.index("Agents' dialer lists"),
        out.index("Broadcast record in GHL"),
    )
    assert summary < lists < record
    rows = out[lists:record].splitlines()
    bob_hot = next(line for line in rows if "DF_BOB_HOT" in line)
    assert "+19195557003 Riley Chen" in bob_hot
    alice = next(line for line in rows if "DF_ALICE_NEW_LEADS" in line)
    assert "Riley" not in alice
    assert "bc_DAYSPRING" in out[record:]
    assert "0.9596" in out[record:]  # delivery rate: 380 delivered of 396 sent
    assert "End state matches the expected one" in out
