"""Which consent change takes effect: pure functions of (the change, the state in force).

A *change* is what an event or an operator says about one number on one channel: opted out or
opted in, from which source, why, and when it happened (the event's own time). The *state* is the
registry row in force (`optout_registry` for SMS, `dnc_registry` for voice). `decide` says whether
the change takes effect, and why not when it does not:

- **Time orders decisions (R-OPT-2).** A change older than the decision in force never overwrites
  it: a replayed or late STOP cannot undo a newer START, nor a late START a newer STOP. At the very
  same time, an opt-out wins over an opt-in (when in doubt, do not text), and the same decision
  arriving again (a redelivery, a replay) changes nothing. "Older" is by the events' own times
  between events of one source (one clock), and by when we received the change and recorded the
  decision in force between sources (`by_receipt`: their clocks are not comparable). An event's
  own time is believed up to five minutes after its receipt, never further (`decision_time`).
- **Who may lift an opt-out (R-OPT-5).** An opt-out always takes effect. An opt-in lifts an opt-out
  only when it comes from the person or an operator who may lift it: a `manual` action lifts any;
  on SMS the person's own opt-in keyword (`texting`) lifts any; otherwise only the source that
  opted the number out may lift it (GHL's DND turned off lifts a GHL-sourced opt-out and nothing
  else; an Aloware change never lifts a texting STOP).
- Channels are independent (R-OPT-6): voice DNC never changes SMS consent, and the reverse.

No I/O here: `store.py` reads the state, calls `decide` and writes the outcome in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from df_middleware.timestamps import believed_time

Channel = Literal["sms", "voice"]
Status = Literal["opted_out", "opted_in"]
Source = Literal["texting", "ghl", "aloware", "manual"]

OPTED_OUT: Status = "opted_out"
OPTED_IN: Status = "opted_in"
CHANNELS: tuple[Channel, ...] = ("sms", "voice")
SOURCES: tuple[Source, ...] = ("texting", "ghl", "aloware", "manual")


@dataclass(frozen=True)
class ConsentChange:
    """What one event (or operator) says about a number's consent on one channel."""

    channel: Channel
    phone: str  # E.164
    status: Status
    source: Source
    event_at: datetime
    reason: str | None = None  # STOP, START, DND, DNC, manual reason…
    keyword: str | None = None  # the keyword as the spec spells it, for texting keywords
    message_id: str | None = None
    actor: str | None = None  # who, for manual actions
    #: When the event reached us (our clock); None: order by `event_at` only.
    received_at: datetime | None = None


@dataclass(frozen=True)
class ConsentState:
    """The decision in force for a number on a channel (a registry row)."""

    status: Status
    source: Source
    reason: str | None
    last_event_at: datetime
    #: When the decision was recorded (our clock); None: order by `last_event_at` only.
    recorded_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    """Whether a change takes effect; `why` says why not (for sync_log and the CLI)."""

    applies: bool
    why: str = ""

    @property
    def changes_status(self) -> bool:
        return self.applies and self.why == ""


def decision_time(stated: datetime | None, received_at: datetime) -> datetime:
    """When a change happened, for ordering decisions (R-OPT-2): the event's own time, believed up
    to `MAX_CLOCK_AHEAD` after its receipt (a partner's clock a minute fast must not reorder its
    own STOP and START by arrival); a time further ahead (a broken clock, a zone-less time read as
    UTC, a forged `updated_at` in 9999) is the receipt's, or it would make every later STOP, DNC or
    operator action "stale" for as long as it stays in the future."""
    return believed_time(stated, received_at)


def may_lift(channel: Channel, opted_out_by: Source, lifted_by: Source) -> bool:
    """Whether an opt-in from `lifted_by` may reverse an opt-out from `opted_out_by` (R-OPT-5)."""
    if lifted_by == "manual" or lifted_by == opted_out_by:
        return True
    return channel == "sms" and lifted_by == "texting"


def by_receipt(change: ConsentChange, current: ConsentState) -> bool:
    """Whether `change` and `current` are ordered by when we received and recorded them rather
    than by their own times: they come from different sources, whose clocks are not ours and not
    each other's (Verity's clock two minutes slow must not make a person's STOP "older" than an
    operator's lift recorded a minute before it arrived). One source's own times order its own
    events (reordered or redelivered texts), as R-OPT-2 says."""
    return (
        change.source != current.source and change.received_at is not None and current.recorded_at is not None
    )


def decide(change: ConsentChange, current: ConsentState | None) -> Decision:
    """Whether `change` takes effect over `current` (see the module docstring)."""
    if current is None:
        return Decision(True)
    receipt = by_receipt(change, current)
    if receipt:
        older = (
            change.received_at is not None
            and current.recorded_at is not None
            and (change.received_at < current.recorded_at)
        )
    else:
        older = change.event_at < current.last_event_at
    if older:
        return Decision(False, f"stale: a newer decision ({current.status}, {current.source}) is in force")
    same_time = not receipt and change.event_at == current.last_event_at
    if same_time and change.status == current.status and change.source == current.source:
        return Decision(False, f"already {current.status} by {current.source} at that time")
    if same_time and change.status == OPTED_IN and current.status == OPTED_OUT:
        return Decision(False, "an opt-out of the same time is in force: when in doubt, do not contact")
    lifting = change.status == OPTED_IN and current.status == OPTED_OUT
    if lifting and not may_lift(change.channel, current.source, change.source):
        return Decision(
            False,
            f"a {current.source} opt-out can only be lifted by "
            + ("the person's own opt-in keyword, " if change.channel == "sms" else "")
            + f"{current.source} or a manual action, not by {change.source}",
        )
    return Decision(True)
