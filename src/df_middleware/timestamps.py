"""ISO-8601 times as the systems we sync send them, read one way everywhere.

GHL (`timestamp`, `dateUpdated`), Aloware (`updated_at`, `created_at`) and Verity write ISO-8601
with `Z`, with an offset, or without a zone (which they mean as UTC). Comparisons across systems
(staleness, merge by time, replay windows) need one reading of all three.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

#: Times this close to the ends of Python's calendar are no sender's real time, and converting
#: them to another zone or adding a window to them would overflow: they are read as no time.
_EARLIEST = datetime.min.replace(tzinfo=UTC) + timedelta(days=2)
_LATEST = datetime.max.replace(tzinfo=UTC) - timedelta(days=2)


def parse_iso8601(value: object) -> datetime | None:
    """ISO-8601 text as an aware UTC datetime (naive means UTC); None when it is not one, or is
    within two days of year 1 or year 9999 (where zone arithmetic overflows)."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return moment if _EARLIEST <= moment <= _LATEST else None


#: How far ahead of our clock a partner's own event time is still believed. Clocks of different
#: systems drift by seconds, sometimes a minute: a person's events are ordered by the time their
#: system gave them, so a resend or a late delivery of an older event never wins over a newer one
#: (break14 findings 3-3d: clamping every time later than its receipt to the receipt reordered a
#: GHL or Verity whose clock ran a minute fast by arrival). A time further ahead is a broken clock
#: or a forged value and counts as the receipt's: otherwise it would make every later decision
#: look stale for as long as it stays in the future.
MAX_CLOCK_AHEAD = timedelta(minutes=5)


def believed_time(stated: datetime | None, received_at: datetime) -> datetime:
    """When an event happened, for ordering it: its own time, unless missing or more than
    MAX_CLOCK_AHEAD after we received it (then its receipt's)."""
    if stated is None or stated > received_at + MAX_CLOCK_AHEAD:
        return received_at
    return stated
