"""`df-middleware optout add|remove|check`: an operator's SMS consent actions, audited (R-OPT-2,
R-OPT-4, R-OPT-5, R-ID-1). The installed command, as a process, on a fresh SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli_fresh_machine import entries, one_line_error, run

pytestmark = pytest.mark.slow


@pytest.fixture
def service_dir(tmp_path: Path) -> Path:
    """A directory whose database the service made (`df-middleware migrate`): the consent
    commands refuse to create one (tests/test_cli_fresh_machine.py)."""
    done = run(["migrate"], tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path


def test_an_operator_opts_a_number_out_checks_it_and_lifts_it(service_dir: Path) -> None:
    """R-OPT-2, R-OPT-5, R-ID-1: `optout add` in one formatting and `optout check` in another name
    one number; the decision is `manual`, with the reason and the actor in its history; `optout
    remove` lifts it (a manual action may lift any opt-out), and both stay in the history."""
    added = run(
        ["optout", "add", "(919) 555-0100", "--reason", "asked by phone", "--actor", "ops:ann"], service_dir
    )
    assert added.returncode == 0, added.stderr
    assert "+19195550100: opted out of SMS" in added.stdout

    checked = run(["optout", "check", "919.555.0100", "--json"], service_dir)
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert report["phone_number"] == "+19195550100"
    assert report["sms_allowed"] is False
    assert (report["sms"]["status"], report["sms"]["source"], report["sms"]["reason"]) == (
        "opted_out",
        "manual",
        "asked by phone",
    )
    assert report["voice"] is None
    assert [(h["status"], h["actor"]) for h in report["history"]] == [("opted_out", "ops:ann")]

    removed = run(["optout", "remove", "+1 919 555 0100", "--reason", "consented in writing"], service_dir)
    assert removed.returncode == 0, removed.stderr
    report = json.loads(run(["optout", "check", "19195550100", "--json"], service_dir).stdout)
    assert report["sms_allowed"] is True
    assert [h["status"] for h in report["history"]] == ["opted_in", "opted_out"]
    assert report["history"][0]["actor"].startswith("cli")

    human = run(["optout", "check", "9195550100"], service_dir)
    assert "SMS allowed" in human.stdout
    assert "consented in writing" in human.stdout


def test_an_invalid_number_is_one_line_and_touches_nothing(tmp_path: Path) -> None:
    """R-ID-1: a number that is not valid is refused before the database is opened."""
    done = run(["optout", "add", "555-01", "--reason", "x"], tmp_path)
    assert done.returncode == 2
    assert "not a valid phone number" in one_line_error(done)
    assert entries(tmp_path) == []


def test_an_operator_decision_is_queued_to_be_told(service_dir: Path) -> None:
    """R-OPT-3, R-OPT-6: `optout add` records the decision and, in the same transaction, queues
    one `operator` / `consent.decided` event keyed by the number (the worker tells GHL's DND and
    the dialer); `--channel voice` is the do-not-call registry, SMS untouched; a channel other
    than sms/voice is one line, exit 2, nothing recorded or queued."""
    bad = run(["optout", "add", "9195550101", "--reason", "x", "--channel", "email"], service_dir)
    assert bad.returncode == 2
    assert "--channel must be sms or voice" in one_line_error(bad)

    added = run(
        ["optout", "add", "9195550101", "--reason", "asked not to be called", "--channel", "voice"],
        service_dir,
    )
    assert added.returncode == 0, added.stderr
    assert "+19195550101: on the do-not-call registry" in added.stdout
    report = json.loads(run(["optout", "check", "9195550101", "--json"], service_dir).stdout)
    assert report["sms"] is None
    assert report["sms_allowed"] is True
    assert (report["voice"]["status"], report["voice"]["source"]) == ("opted_out", "manual")

    listed = run(["events", "list", "--source", "operator", "--json"], service_dir)
    assert listed.returncode == 0, listed.stderr
    [event] = json.loads(listed.stdout)["items"]
    assert (event["event_type"], event["status"], event["entity_id"]) == (
        "consent.decided",
        "pending",
        "+19195550101",
    )


def test_stored_text_is_shown_as_stored(service_dir: Path) -> None:
    """R-OPT-2: the history shows the reason and the actor exactly as recorded: Rich markup in
    them is text (not styling, not a crash), and a terminal escape is shown escaped."""
    added = run(
        [
            "optout",
            "add",
            "9195550177",
            "--reason",
            "[/bold] closing tag \x1b[31m",
            "--actor",
            "[red]bob[/red]",
        ],
        service_dir,
    )
    assert added.returncode == 0, added.stderr
    checked = run(["optout", "check", "9195550177"], service_dir)
    assert checked.returncode == 0, checked.stderr
    assert "[/bold] closing tag" in checked.stdout
    assert "by [red]bob[/red]" in checked.stdout
    assert "\x1b" not in checked.stdout
