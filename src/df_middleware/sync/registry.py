"""Which handler processes an event, and the types handlers and the worker exchange.

The worker claims an event, asks the registry for its handler, runs it, and writes the
`HandlerResult` (sync_log rows, recorded effects, other events it resolves) in the same
transaction that marks the event done. Handlers never touch event rows or decide retries: they
return a result or raise `RetryableError` / `PermanentError` (df_middleware.errors) and the worker
decides the outcome. When a handler learns that another stored event is settled (Verity's late
receipt of a dead-lettered send), it says so in `HandlerResult.resolves` and the worker applies
it with the queue's own operation: the queue is the one door to event rows.

Domain modules (sync/contacts.py, sync/calls.py, …) add their handlers through a
`register_handlers(registry)` function listed in `DOMAIN_MODULES`; `default_registry()` builds
the production registry from them.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeAlias

from sqlalchemy import select

from df_middleware.config import Settings
from df_middleware.connectors.suite import Connectors
from df_middleware.db.models import GhlOauthToken, WebhookEvent
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow

EventKind = Literal["webhook", "texting", "broadcast"]
SyncStatus = Literal["success", "error", "skipped"]

#: Directions a sync_log row may have (R-Q-7).
DIRECTIONS = frozenset(
    {
        "ghl_to_aloware",
        "aloware_to_ghl",
        "texting_to_ghl",
        "ghl_to_texting",
        "texting_to_aloware",
        "verity_to_ghl",
        "internal",
    }
)

#: Skip reasons the registry itself produces (handlers add their own, e.g. 'no phone', 'echo').
UNSUPPORTED_EVENT = "unsupported event"
NO_HANDLER_YET = "no handler yet"
FOREIGN_LOCATION = "foreign location"

#: GHL Marketplace install events carry the installing location, which is by definition not yet
#: one of ours: they must reach the OAuth handler instead of being skipped as foreign (R-OA-2).
GHL_INSTALL_EVENTS = frozenset({"appinstall", "install", "appuninstall", "uninstall"})

#: Modules whose `register_handlers(registry)` fills the production registry. Each later issue
#: that adds a domain (contacts, calls, texting, optout, agents, broadcasts, oauth) appends here.
DOMAIN_MODULES: tuple[str, ...] = (
    "df_middleware.sync.oauth",
    "df_middleware.sync.contacts",
    "df_middleware.sync.contacts_aloware",
    "df_middleware.sync.calls",
    "df_middleware.sync.texting",
    "df_middleware.sync.dnc",
    "df_middleware.sync.ghl_dnd",
    "df_middleware.sync.operator_consent",
    "df_middleware.sync.opportunities",
    "df_middleware.sync.broadcasts",
)


@dataclass(frozen=True)
class ClaimedEvent:
    """An event row as the worker claimed it: what a handler needs, nothing it could mutate.

    `kind` names the table (webhook_events / texting_webhook_events / broadcast_webhook_events);
    `source` is 'ghl', 'aloware', 'operator' (an operator's action, queued by the service) or
    'service' (a follow-up the service queued itself, e.g. with a dead letter) for webhook rows,
    'texting' and 'broadcast' for the others.
    `attempts` already counts this attempt.
    """

    kind: EventKind
    id: uuid.UUID
    source: str
    event_type: str
    entity_type: str
    entity_id: str | None
    ordering_key: str
    payload: dict[str, Any]
    attempts: int
    received_at: datetime


@dataclass
class SyncLogEntry:
    """One sync_log row: one effect, one skip, or the final error of a processing run (R-Q-7).

    `started_at` should be taken when the work behind the row starts; the default (creation
    time) suits rows that describe a decision rather than a remote call.
    """

    direction: str
    entity_type: str
    entity_id: str
    source_id: str
    status: SyncStatus
    message: str | None = None
    target_id: str | None = None
    error_message: str | None = None
    started_at: datetime = field(default_factory=utcnow)
    finished_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class EffectRecord:
    """A non-idempotent remote write that succeeded, recorded in sync_effects (R-IDEM-2)."""

    effect_key: str
    target_system: str
    target_id: str | None = None


@dataclass(frozen=True)
class EventResolution:
    """Another stored event that this event's outcome settles, e.g. a dead-lettered SMS send that
    Verity's late receipt shows went out after all.

    The worker marks it `done` with a sync_log row "marked done by <actor>", as an operator's
    mark-done would (allowed from pending, error and quarantined; already done is left as it is),
    in the transaction that records this event's outcome: both are committed, or neither is, and
    the event is then retried.
    """

    event_id: uuid.UUID
    actor: str


@dataclass
class HandlerResult:
    """What a handler did: the audit rows to write, the effects to remember and the other events
    its outcome resolves."""

    entries: list[SyncLogEntry] = field(default_factory=list)
    effects: list[EffectRecord] = field(default_factory=list)
    resolves: list[EventResolution] = field(default_factory=list)

    @classmethod
    def skipped(cls, event: ClaimedEvent, reason: str, direction: str = "internal") -> HandlerResult:
        """Nothing to do for this event: it ends `done` with one `skipped` row naming the reason."""
        entity_id = event.entity_id or str(event.id)
        entry = SyncLogEntry(
            direction=direction,
            entity_type=event.entity_type,
            entity_id=entity_id,
            source_id=entity_id,
            status="skipped",
            message=reason,
        )
        return cls(entries=[entry])


@dataclass
class HandlerContext:
    """Everything a handler may use, built fresh for each event by the worker.

    `connectors` holds the process's clients of GHL, Aloware and Verity (None in tests that need
    none); a handler whose system is not configured finds its client None and skips, saying so.
    `direction` is mutable on purpose: a handler sets it as soon as it knows which way it syncs,
    so that if it fails for good the worker files the error row under that direction.
    """

    settings: Settings
    db: Database
    direction: str = "internal"
    connectors: Connectors | None = None


Handler: TypeAlias = Callable[[HandlerContext, ClaimedEvent], Awaitable[HandlerResult]]
#: When an event is dead-lettered because its retries ran out (not on a PermanentError, which the
#: handler raised knowingly): the events to queue *in the dead letter's own transaction* so that
#: the people who wait on it are told (e.g. an agent's GHL message set `failed`), since its handler
#: never finished. A pure function of the event and its last error, no I/O: the telling itself
#: is the follow-up event's handler, with the queue's retries, because the system to tell may be
#: down at that very moment (break14 finding 5: a best-effort call made then was lost for good).
DeadLetterFollowUp: TypeAlias = Callable[[ClaimedEvent, str], Sequence[WebhookEvent]]


async def _unsupported_event(_ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """Events ingest could not classify (entity type 'unknown'): stored for the record only."""
    return HandlerResult.skipped(event, UNSUPPORTED_EVENT)


async def _no_handler_yet(_ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """Recognised events whose sync flow does not exist (yet): done, visibly skipped."""
    return HandlerResult.skipped(event, NO_HANDLER_YET)


async def is_foreign_location(ctx: HandlerContext, location_id: str) -> bool:
    """True when a GHL location is neither GHL_LOCATION_ID nor installed through OAuth.

    A service with no location configured and no installation has nothing to compare with, so
    it treats nothing as foreign rather than skipping every event.
    """
    if location_id == ctx.settings.ghl_location_id:
        return False
    async with ctx.db.session() as session:
        installed = set(await session.scalars(select(GhlOauthToken.location_id)))
    if ctx.settings.ghl_location_id is None and not installed:
        return False
    return location_id not in installed


def _guard_foreign_location(handler: Handler) -> Handler:
    """Wrap a GHL handler so that events of other locations are skipped, not processed (§3.1).

    Ingest stores every event as pending (deciding there would cost a database round trip on the
    request path, see docs/architecture.md); this guard is where the decision is made, for first
    runs and replays alike, so no handler ever writes for somebody else's sub-account.
    """

    async def guarded(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
        location_id = event.payload.get("locationId")
        if isinstance(location_id, str) and location_id and await is_foreign_location(ctx, location_id):
            return HandlerResult.skipped(event, FOREIGN_LOCATION)
        return await handler(ctx, event)

    return guarded


class HandlerRegistry:
    """(source, event type) → handler. Event types match exactly, ignoring case (R-IN-5).

    Sources are those of `ClaimedEvent.source`: `register("ghl", "ContactCreate",
    "contact.created")`, `register("aloware", "Call Disposed")`,
    `register("texting", "message.received")`, `register("broadcast", "analytics_updated")`.
    """

    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str], tuple[str, Handler]] = {}
        self._dead_letter_follow_ups: dict[tuple[str, str], DeadLetterFollowUp] = {}

    def on_dead_letter(
        self, source: str, *event_types: str
    ) -> Callable[[DeadLetterFollowUp], DeadLetterFollowUp]:
        """Decorator: `follow_up(event, error)` gives the events queued with such an event's dead
        letter when its retries run out."""

        def decorator(follow_up: DeadLetterFollowUp) -> DeadLetterFollowUp:
            for event_type in event_types:
                self._dead_letter_follow_ups[(source.lower(), event_type.lower())] = follow_up
            return follow_up

        return decorator

    def dead_letter_follow_ups(self, event: ClaimedEvent, error: str) -> Sequence[WebhookEvent]:
        """The events to queue with `event`'s dead letter (retries ran out), none by default."""
        follow_up = self._dead_letter_follow_ups.get((event.source.lower(), event.event_type.lower()))
        return follow_up(event, error) if follow_up is not None else ()

    def register(self, source: str, *event_types: str) -> Callable[[Handler], Handler]:
        """Decorator: `@registry.register("ghl", "ContactCreate", "contact.created")`."""
        if not event_types:
            raise ValueError("register() needs at least one event type")

        def decorator(handler: Handler) -> Handler:
            name = f"{handler.__module__}.{handler.__qualname__}"
            for event_type in event_types:
                key = (source.lower(), event_type.lower())
                if key in self._handlers:
                    taken_by = self._handlers[key][0]
                    raise ValueError(
                        f"{source}/{event_type} already handled by {taken_by}; cannot add {name}"
                    )
                self._handlers[key] = (name, handler)
            return handler

        return decorator

    def resolve(self, event: ClaimedEvent) -> tuple[str, Handler]:
        """The handler for an event and its name (the metrics label), fallbacks included."""
        handler: Handler
        if event.entity_type == "unknown":
            name, handler = "unsupported_event", _unsupported_event
        else:
            name, handler = self._handlers.get(
                (event.source.lower(), event.event_type.lower()), ("no_handler_yet", _no_handler_yet)
            )
        if event.source == "ghl" and event.event_type.lower() not in GHL_INSTALL_EVENTS:
            handler = _guard_foreign_location(handler)
        return name, handler

    def __contains__(self, key: tuple[str, str]) -> bool:
        return (key[0].lower(), key[1].lower()) in self._handlers


def default_registry() -> HandlerRegistry:
    """The production registry: every domain module's handlers, plus the fallbacks."""
    registry = HandlerRegistry()
    for module_name in DOMAIN_MODULES:
        module = importlib.import_module(module_name)
        module.register_handlers(registry)
    return registry
