"""An operator's consent actions and the report that explains a number (R-OPT-2, R-OPT-5).

The command line (`df-middleware optout …`) and, later, the admin API call these: a `manual`
decision is recorded like any other (registry + history, with the actor), may lift any opt-out
(R-OPT-5), and is timed now. `consent_report` is what a dispute needs: the state in force on each
channel and the history that explains it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from df_middleware.consent.decisions import OPTED_IN, OPTED_OUT, Channel, ConsentChange, Status
from df_middleware.consent.store import ConsentOutcome, ConsentStore
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.errors import InvalidPhoneNumber
from df_middleware.phones import normalize_phone

#: The longest reason an operator may give (it is stored and shown, not a document).
MAX_REASON_CHARS = 500


def e164_or_refuse(raw: str, region: str) -> str:
    """The number in E.164 (every formatting of a number is one consent key, R-ID-1), or
    InvalidPhoneNumber naming what was given."""
    phone = normalize_phone(raw, region)
    if phone is None:
        raise InvalidPhoneNumber(f"not a valid phone number: {raw!r}")
    return phone


async def decide_manually(
    db: Database,
    phone: str,
    status: Status,
    *,
    channel: Channel = "sms",
    reason: str,
    actor: str,
    also: Callable[[ConsentChange], Sequence[object]] | None = None,
) -> ConsentOutcome:
    """Record an operator's decision about an E.164 number, timed now (`also`: rows written in
    the same transaction when it takes effect, see `ConsentStore.apply`)."""
    now = utcnow()
    change = ConsentChange(
        channel=channel,
        phone=phone,
        status=status,
        source="manual",
        event_at=now,
        received_at=now,
        reason=reason.strip()[:MAX_REASON_CHARS] or "manual",
        actor=actor,
    )
    return await ConsentStore(db).apply(change, also=also)


async def opt_out(
    db: Database, phone: str, *, reason: str, actor: str, channel: Channel = "sms"
) -> ConsentOutcome:
    return await decide_manually(db, phone, OPTED_OUT, channel=channel, reason=reason, actor=actor)


async def opt_in(
    db: Database, phone: str, *, reason: str, actor: str, channel: Channel = "sms"
) -> ConsentOutcome:
    return await decide_manually(db, phone, OPTED_IN, channel=channel, reason=reason, actor=actor)


async def consent_report(db: Database, phone: str, *, history_limit: int = 50) -> dict[str, Any]:
    """The number's state in force on each channel and its history, newest first."""
    store = ConsentStore(db)
    report: dict[str, Any] = {"phone_number": phone}
    for channel in ("sms", "voice"):
        state = await store.state(channel, phone)
        report[channel] = (
            None
            if state is None
            else {
                "status": state.status,
                "source": state.source,
                "reason": state.reason,
                "last_event_at": state.last_event_at.isoformat(),
            }
        )
    report["sms_allowed"] = report["sms"] is None or report["sms"]["status"] != OPTED_OUT
    report["history"] = [entry.as_dict() for entry in await store.history(phone, limit=history_limit)]
    return report
