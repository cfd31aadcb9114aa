"""`df-middleware demo`: the scripted day, end to end, from the command line (SPEC §8.3, R-RUN-5).

`demo --exit` plays the day and ends (what CI runs); `demo` then stays up for a newcomer to look
around in, until Ctrl-C or SIGTERM: those tests run it as a real process, wait for the lines it
prints (readiness by output, with a deadline), talk to what it printed over HTTP, and stop it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_service_process import CLI, DEADLINE_S, RunningCommand, clean_env

pytestmark = pytest.mark.slow


def test_demo_plays_the_day_and_reaches_the_expected_end_state(tmp_path: Path) -> None:
    """The day a newcomer watches with `df-middleware demo` is the day the suite proves: one
    command, no configuration, nothing outside 127.0.0.1, and the expected state in every system."""
    keep = {"PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    done = subprocess.run(
        [sys.executable, "-m", "df_middleware.cli", "demo", "--json", "--exit"],
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
    """R-RUN-5, R-AG-3, R-BC-2: without --json, `df-middleware demo --exit` ends with the agents'
    lists and their members, and the broadcast record, after the summary of every system."""
    keep = {"PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k in keep} | {"COLUMNS": "160"}
    done = subprocess.run(
        [sys.executable, "-m", "df_middleware.cli", "demo", "--exit"],
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
    assert "stay up" not in out  # --exit: nothing is left running


# --- the demo that stays up ----------------------------------------------------------------------


@pytest.fixture
def demo_runner() -> Iterator[Callable[..., RunningCommand]]:
    """Start `df-middleware demo …` (stdout and stderr merged, read line by line); any process a
    test leaves running is killed at the end."""
    started: list[RunningCommand] = []

    def start(args: list[str], cwd: Path, env: dict[str, str]) -> RunningCommand:
        proc = subprocess.Popen(
            [*CLI, "demo", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        command = RunningCommand(proc)
        started.append(command)
        return command

    yield start
    for command in started:
        if command.proc.poll() is None:
            command.proc.kill()
            command.finish(10)


def printed_url(command: RunningCommand, label: str) -> str:
    """The URL on the line `<label>: http://…` the demo printed (waiting for it, with a deadline)."""
    line = command.wait_for(f"{label}:", DEADLINE_S * 2)  # the day is played first
    found = re.search(r"http://127\.0\.0\.1:\d+[^\s]*", line)
    assert found, line
    return found.group(0)


def port_of(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


def port_is_closed(port: int) -> bool:
    """Nothing accepts connections on 127.0.0.1:`port` any more."""
    with socket.socket() as probe:
        probe.settimeout(5)
        try:
            probe.connect(("127.0.0.1", port))
        except OSError:
            return True
    return False


def wait_until(condition: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"not reached in {deadline_s}s: {what}"
        time.sleep(0.1)


def test_demo_stays_up_for_a_visitor_until_ctrl_c(
    tmp_path: Path, demo_runner: Callable[..., RunningCommand]
) -> None:
    """R-RUN-5: after the summary, `df-middleware demo` keeps the service and the simulators up and
    prints the dashboard URL and the admin secret it generated: the service answers there (health,
    the dashboard's login and its events page, the admin-only route taking that secret and refusing
    others), the simulators
    post their own signed webhooks to it (a text sent through the Verity simulator becomes a GHL
    contact), and Ctrl-C stops everything: exit 0, no traceback, the port closed."""
    command = demo_runner([], tmp_path, clean_env(COLUMNS="160"))
    dashboard = printed_url(command, "Dashboard")
    assert dashboard.endswith("/admin")
    service = dashboard.removesuffix("/admin")
    secret = command.wait_for("Admin secret:").split(":", 1)[1].strip()
    assert len(secret) >= 24
    assert "End state matches the expected one" in command.output  # the day came first

    assert httpx.get(f"{service}/healthz", timeout=10).json() == {"status": "ok"}
    # The dashboard (SPEC §8.2) takes the printed secret, and shows the day's events.
    assert httpx.get(f"{service}/admin/login", timeout=10).status_code == 200
    refused = httpx.post(f"{service}/admin/login", data={"secret": "nope"}, timeout=10)
    assert refused.status_code == 401
    with httpx.Client(base_url=service, timeout=10) as browser:
        login = browser.post("/admin/login", data={"secret": secret})
        assert login.status_code == 303, login.text
        events = browser.get("/admin/events")
        assert events.status_code == 200
        assert "ContactCreate" in events.text
    # The service runs with the printed secret as DF_ADMIN_SECRET (SPEC §8.1): the admin-only
    # OAuth start lets it past authentication (OAuth itself is not configured in the demo).
    start = "/leadconnector/oauth/start"
    assert httpx.get(f"{service}{start}", timeout=10).status_code == 401
    wrong = httpx.get(f"{service}{start}", headers={"authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    right = httpx.get(f"{service}{start}", headers={"authorization": f"Bearer {secret}"}, timeout=10)
    assert right.status_code != 401, right.text

    # A visitor's text, as the printed curl sends it: the Verity simulator signs and posts it, the
    # service's worker processes it, and GHL holds a contact for the new number.
    verity, ghl = printed_url(command, "Verity simulator"), printed_url(command, "GHL simulator")
    texter = "+19195557010"
    sent = httpx.post(f"{verity}/_sim/inbound", json={"from": texter, "body": "Is the offer still on?"})
    assert sent.status_code == 200, sent.text
    assert sent.json()["status_code"] == 200, sent.text  # the service accepted the signed webhook

    def ghl_knows_the_texter() -> bool:
        contacts = httpx.get(f"{ghl}/_sim/state", timeout=10).json()["contacts"]
        return any(contact.get("phone") == texter for contact in contacts)

    wait_until(ghl_knows_the_texter, "the visitor's text reaches GHL")

    command.signal(signal.SIGINT)
    code = command.finish()
    output = command.output
    assert code == 0, output
    assert "Traceback" not in output, output
    assert output.rstrip().endswith("Stopped."), output
    for url in (service, verity, ghl):
        assert port_is_closed(port_of(url)), url


def test_demo_takes_a_free_port_when_8000_is_taken(
    tmp_path: Path, demo_runner: Callable[..., RunningCommand]
) -> None:
    """R-RUN-5: with port 8000 taken, the demo serves on another port and says so; an admin
    secret set in the environment is the one the service takes, and is not printed; SIGTERM stops
    it like Ctrl-C (exit 0, no traceback)."""
    with contextlib.ExitStack() as stack:
        holder = stack.enter_context(socket.socket())
        try:
            holder.bind(("127.0.0.1", 8000))
            holder.listen()
        except OSError:
            pass  # something already holds 8000: taken all the same
        secret = "visitor-secret-0123456789abcdef"
        command = demo_runner([], tmp_path, clean_env(COLUMNS="160", DF_ADMIN_SECRET=secret))
        dashboard = printed_url(command, "Dashboard")
        assert port_of(dashboard) != 8000
        assert "port 8000 was taken" in command.output
        assert secret not in command.output
        assert "DF_ADMIN_SECRET of your environment" in command.wait_for("Admin secret:")
        service = dashboard.removesuffix("/admin")
        assert httpx.get(f"{service}/healthz", timeout=10).status_code == 200
        right = httpx.get(
            f"{service}/leadconnector/oauth/start", headers={"x-df-admin-secret": secret}, timeout=10
        )
        assert right.status_code != 401, right.text

        command.signal(signal.SIGTERM)
        code = command.finish()
        assert code == 0, command.output
        assert "Traceback" not in command.output, command.output
        assert port_is_closed(port_of(dashboard))


def test_ctrl_c_while_the_day_plays_stops_cleanly(
    tmp_path: Path, demo_runner: Callable[..., RunningCommand]
) -> None:
    """R-RUN-5: Ctrl-C is honoured from the start, not only once the demo stays up: during the day
    it stops the day where it is and everything with it, exit 0, no traceback, nothing left up."""
    command = demo_runner([], tmp_path, clean_env(COLUMNS="160"))
    command.wait_for("•")  # the first step has been played
    command.signal(signal.SIGINT)
    code = command.finish()
    output = command.output
    assert code == 0, output
    assert "Traceback" not in output, output
    assert "Stopped before the end of the day" in output
    assert "Dashboard:" not in output
