"""The simulators' clocks can disagree with ours (`simulators.common.set_clock_skew`), as real
partners' do: the soak (bench/soak.py `--clock-skew`) dates every partner event by that partner's
clock, so the service's ordering by event time (R-C-3) is exercised with clocks that disagree."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from df_middleware.simulators import common
from df_middleware.simulators.aloware import AlowareSimulator
from df_middleware.simulators.ghl import DEFAULT_LOCATION_ID, GhlSimulator, contact_webhook
from df_middleware.simulators.verity import texting_timestamp
from df_middleware.timestamps import parse_iso8601


@pytest.fixture
def skewed() -> Iterator[None]:
    common.set_clock_skew("ghl", 90)
    common.set_clock_skew("aloware", -120)
    common.set_clock_skew("verity", 30)
    try:
        yield
    finally:
        for system in ("ghl", "aloware", "verity"):
            common.set_clock_skew(system, 0)


def _seconds_off(stamp: object) -> float:
    when = parse_iso8601(stamp)
    assert when is not None, stamp
    return (when - datetime.now(UTC)).total_seconds()


@pytest.mark.usefixtures("skewed")
def test_each_simulator_dates_its_events_by_its_own_clock() -> None:
    """R-C-3: GHL's webhook timestamps, Aloware's `updated_at` and Verity's message times come from
    each system's own (skewed) clock; a margin of 10 s absorbs the test's own running time."""
    ghl = GhlSimulator()
    write = ghl.create_contact(DEFAULT_LOCATION_ID, {"phone": "+19195550100", "firstName": "Ann"})
    assert abs(_seconds_off(contact_webhook("ContactCreate", write.contact)["timestamp"]) - 90) < 10
    # The contact's own dates come from the same clock as its webhooks (break14d finding 2's fix
    # dates a list placement by `dateUpdated` and compares it with webhook times).
    assert abs(_seconds_off(write.contact["dateUpdated"]) - 90) < 10
    assert abs(_seconds_off(write.contact["dateAdded"]) - 90) < 10

    aloware = AlowareSimulator()
    contact = aloware.add_contact("+19195550101", first_name="Bo")
    assert abs(_seconds_off(aloware.webhook_contact(contact["id"])["updated_at"]) + 120) < 10

    assert abs(_seconds_off(texting_timestamp()) - 30) < 10


def test_no_skew_unless_set() -> None:
    """Without `set_clock_skew` every simulator's clock is ours."""
    assert abs(common.system_now("ghl") - datetime.now(UTC)) < timedelta(seconds=5)
