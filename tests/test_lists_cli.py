"""`df-middleware lists status|rebuild` as an operator runs them (SPEC §6.5, §8.3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli_fresh_machine import one_line_error, run

pytestmark = pytest.mark.slow


def test_status_of_a_service_without_agents_and_a_rebuild_without_aloware(tmp_path: Path) -> None:
    """R-AG-3: `lists status --json` on a migrated database with no agents is an empty report;
    `lists rebuild` without Aloware configured, or with no agent in the directory, refuses in one
    line (exit 2) and changes nothing."""
    assert run(["migrate"], tmp_path).returncode == 0
    status = run(["lists", "status", "--json"], tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == {"lists": [], "blocked_lists": []}

    no_aloware = run(["lists", "rebuild"], tmp_path)
    assert no_aloware.returncode == 2
    assert "ALOWARE_API_TOKEN" in one_line_error(no_aloware)

    no_agents = run(
        ["lists", "rebuild"], tmp_path, ALOWARE_API_TOKEN="t", ALOWARE_BASE_URL="http://127.0.0.1:9/api/v1"
    )
    assert no_agents.returncode == 2
    assert "agents seed" in one_line_error(no_agents)


def test_status_lists_every_agent_list(tmp_path: Path) -> None:
    """R-AG-3, R-AG-5: after `agents seed`, `lists status` shows each active agent's lists
    (AGENT_LIST_KEYS), none found in Aloware yet, no members."""
    (tmp_path / "agents.yaml").write_text("- agent_key: alice\n- agent_key: bob\n  is_active: false\n")
    assert run(["migrate"], tmp_path).returncode == 0
    seeded = run(["agents", "seed", "--file", "agents.yaml"], tmp_path)
    assert seeded.returncode == 0, seeded.stderr
    status = run(["lists", "status", "--json"], tmp_path, AGENT_LIST_KEYS="NEW_LEADS,HOT")
    assert status.returncode == 0, status.stderr
    lines = json.loads(status.stdout)["lists"]
    assert [(line["list_name"], line["aloware_list_id"], line["members"]) for line in lines] == [
        ("DF_ALICE_HOT", None, 0),
        ("DF_ALICE_NEW_LEADS", None, 0),
    ]


def test_agents_whose_list_names_would_meet_are_refused(tmp_path: Path) -> None:
    """R-AG-3, R-AG-5: with AGENT_LIST_KEYS=VERY_HOT,HOT, agent A's VERY_HOT and agent A_VERY's HOT
    would both be DF_A_VERY_HOT; the file is refused in one line naming both, nothing applied."""
    (tmp_path / "agents.yaml").write_text("- agent_key: a\n- agent_key: a_very\n")
    assert run(["migrate"], tmp_path).returncode == 0
    refused = run(["agents", "seed", "--file", "agents.yaml"], tmp_path, AGENT_LIST_KEYS="VERY_HOT,HOT")
    assert refused.returncode == 2
    assert "DF_A_VERY_HOT" in one_line_error(refused)
    listed = run(["agents", "list", "--json"], tmp_path)
    assert json.loads(listed.stdout) == []
