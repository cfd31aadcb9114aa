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
