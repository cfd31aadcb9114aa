"""A GHL contact's agent and power-dialer lists in Aloware (SPEC §6.5: R-AG-1…R-AG-4).

Every GHL event that can change where a contact belongs — a contact created or updated, its tags,
its opportunity's stage or status, native or workflow — ends in `sync_contact_lists`, which:

1. reads what the contact is: the event's own contact when it carries one (tags included), else
   the contact as GHL has it now (`GET /contacts/{id}`: opportunity events carry no tags);
2. resolves its agent (`agent_routing.resolve_agent`; the agent custom field's definition is found
   by name through `GET /locations/{id}/customFields`, `AgentField`);
3. computes the desired lists from the agent, the tags, the pipeline placement remembered in
   `contact_agent_state` and the consent registries (`consent.store.dialer_block`);
4. applies the difference against `contact_list_memberships` (`agent_routing.plan_lists`): no
   Aloware call at all when nothing changes; remove-all then re-add when the contact leaves a list
   (Aloware has no remove-from-one-list call); adds only when it joins.

**Under a lock (R-AG-4).** The contact's `contact_agent_state` row is the lock: on PostgreSQL it is
held (`SELECT … FOR UPDATE`) from reading the memberships to writing the new ones and the agent,
so two events of one contact — a queued event and `lists rebuild`, or a workflow event keyed by
phone next to a native one keyed by contact — apply one after the other and the second sees what
the first did. SQLite has one writer at a time and a write lock that would stop ingest while
Aloware answers, so there the calls run outside the transaction and the write checks that the
state it planned from is still the one stored (else the event is retried and plans again).

**Lists (R-AG-3)** are `DF_<AGENT>_<LIST>`, found by name in Aloware and cached in
`call_list_registry` (`CallListRegistryStore`). A list Aloware does not have is created when
ALOWARE_CREATE_LISTS is set; otherwise the membership is recorded `blocked` ("list missing") and
shows in `lists status`; `lists rebuild` looks again. A created list is recorded at once and is
always looked for by name first, so a crash after creating never creates it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from df_middleware.agents.directory import active_agents
from df_middleware.config import Settings
from df_middleware.connectors.aloware import AlowareClient
from df_middleware.consent.store import dialer_block
from df_middleware.db.models import (
    ContactAgentState,
    ContactListMembership,
)
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.errors import RetryableError
from df_middleware.phones import normalize_phone
from df_middleware.sync.agent_field import AgentField
from df_middleware.sync.agent_routing import (
    BLOCKED,
    LIST_MISSING,
    MEMBER,
    ListPlan,
    Membership,
    contact_signals,
    desired_lists,
    list_name,
    name_key,
    plan_lists,
    resolve_agent,
    stage_placement,
)
from df_middleware.sync.identity import ContactMappings, is_covered
from df_middleware.sync.list_registry import CallListRegistryStore
from df_middleware.sync.registry import HandlerContext, SyncLogEntry

GHL_TO_ALOWARE = "ghl_to_aloware"


@dataclass(frozen=True)
class StageChange:
    """What an opportunity event says of the contact's deal: its stage name (when the event names
    it) and status, and when (the event's time, for ordering)."""

    stage_name: str | None
    status: str | None
    at: datetime | None


@dataclass(frozen=True)
class SignalsTime:
    """When a contact event's owner and tags were true: its time (never after its receipt) and
    its receipt, which orders two events of the same time (R-Q-4)."""

    at: datetime
    received_at: datetime | None


@dataclass
class _Snapshot:
    """The contact's list state as read before planning: the check SQLite's write makes."""

    agent_key: str | None
    stage_list_key: str | None
    stage_at: datetime | None
    updated_at: datetime | None
    memberships: dict[Membership, str] = field(default_factory=dict)
    signals_at: datetime | None = None
    signals_received_at: datetime | None = None

    def older_signals(self, signals: SignalsTime | None) -> bool:
        """Whether an event's owner and tags are older than those the lists were last placed by:
        a late resend of an old event (GHL resends under a new `webhookId`) must not move the
        contact back off a list it joined since (found by the soak, issue 14)."""
        return signals is not None and is_covered(
            signals.at, signals.received_at, self.signals_at, self.signals_received_at
        )


@dataclass
class ListOutcome:
    """What one application did, for the sync_log row and for the tests."""

    agent_key: str
    previous_agent: str | None
    plan: ListPlan
    joined: list[Membership] = field(default_factory=list)
    blocked: list[Membership] = field(default_factory=list)
    aloware_calls: int = 0
    note: str | None = None
    #: False when nothing could be applied (no Aloware contact yet): then the event's owner and
    #: tags are not the ones the lists follow, and must not make a later placement look stale.
    applied: bool = True


async def _state_row(
    session: AsyncSession, contact_id: str, default_agent: str, *, lock: bool
) -> ContactAgentState:
    query = select(ContactAgentState).where(ContactAgentState.contact_id == contact_id)
    if lock:
        query = query.with_for_update()
    row = await session.scalar(query)
    if row is not None:
        return row
    try:
        async with session.begin_nested():
            session.add(ContactAgentState(contact_id=contact_id, agent_key=default_agent))
    except IntegrityError:
        pass  # another transaction created it: read (and lock) theirs
    row = await session.scalar(query)
    assert row is not None
    return row


async def _memberships(session: AsyncSession, contact_id: str) -> dict[Membership, str]:
    rows = await session.scalars(
        select(ContactListMembership).where(ContactListMembership.contact_id == contact_id)
    )
    return {(r.agent_key, r.list_key): r.status for r in rows}


def _snapshot(state: ContactAgentState, memberships: dict[Membership, str]) -> _Snapshot:
    return _Snapshot(
        agent_key=state.agent_key,
        stage_list_key=state.stage_list_key,
        stage_at=state.stage_at,
        updated_at=state.updated_at,
        memberships=memberships,
        signals_at=state.signals_at,
        signals_received_at=state.signals_received_at,
    )


#: SQLite: one process's appliers of one contact, one at a time (contact id → lock, users).
_LOCAL_LOCKS: dict[str, tuple[asyncio.Lock, int]] = {}


@contextlib.asynccontextmanager
async def _contact_lock(contact_id: str) -> AsyncIterator[None]:
    """A per-contact asyncio lock, dropped when its last user leaves (the map stays as small as
    the number of contacts being applied right now)."""
    lock, users = _LOCAL_LOCKS.get(contact_id, (asyncio.Lock(), 0))
    _LOCAL_LOCKS[contact_id] = (lock, users + 1)
    try:
        async with lock:
            yield
    finally:
        lock, users = _LOCAL_LOCKS[contact_id]
        if users <= 1:
            del _LOCAL_LOCKS[contact_id]
        else:
            _LOCAL_LOCKS[contact_id] = (lock, users - 1)


class ContactLists:
    """Applies one contact's desired lists (R-AG-2…R-AG-4); see the module docstring."""

    def __init__(
        self, settings: Settings, db: Database, aloware: AlowareClient, *, agent_keys: Sequence[str] = ()
    ) -> None:
        self.settings = settings
        self.db = db
        self.aloware = aloware
        self.registry = CallListRegistryStore(
            db,
            aloware,
            create=settings.aloware_create_lists,
            list_keys=settings.list_keys,
            agent_keys=(*agent_keys, settings.default_agent_key.upper()),
        )

    async def apply(
        self,
        contact_id: str,
        *,
        agent_key: str,
        tags: Sequence[str],
        phone: str | None,
        aloware_contact_id: str | None,
        stage: StageChange | None = None,
        retry_blocked: bool = False,
        signals: SignalsTime | None = None,
    ) -> ListOutcome:
        """Apply the contact's desired lists; `retry_blocked` (rebuild) plans blocked memberships
        as joins again. `signals`: when the event's owner and tags were true; an event older than
        those applied last changes nothing (`_Snapshot.older_signals`)."""
        blocked_because = await dialer_block(
            self.db, phone, sms_opt_out_counts=self.settings.optout_removes_from_dialer
        )
        if self.db.is_postgres:
            # The state row exists, committed, before it is locked: a consent flow forgetting the
            # memberships meanwhile then waits behind this lock instead of finding no row.
            async with self.db.session() as session:
                await _state_row(session, contact_id, agent_key, lock=False)
            async with self.db.session() as session:
                state = await _state_row(session, contact_id, agent_key, lock=True)
                snapshot = _snapshot(state, await _memberships(session, contact_id))
                if snapshot.older_signals(signals):
                    return _stale_signals(snapshot, agent_key)
                outcome, placement = await self._work(
                    snapshot,
                    agent_key,
                    tags,
                    blocked_because,
                    aloware_contact_id,
                    stage,
                    phone,
                    retry_blocked,
                )
                await self._write(session, contact_id, state, outcome, placement, stage, signals)
                return outcome
        async with _contact_lock(contact_id):
            async with self.db.session() as session:
                state = await _state_row(session, contact_id, agent_key, lock=False)
                snapshot = _snapshot(state, await _memberships(session, contact_id))
            if snapshot.older_signals(signals):
                return _stale_signals(snapshot, agent_key)
            outcome, placement = await self._work(
                snapshot, agent_key, tags, blocked_because, aloware_contact_id, stage, phone, retry_blocked
            )
            async with self.db.session() as session:
                state = await _state_row(session, contact_id, agent_key, lock=False)
                now = _snapshot(state, await _memberships(session, contact_id))
                moved = (now.agent_key, now.stage_list_key, now.memberships) != (
                    snapshot.agent_key,
                    snapshot.stage_list_key,
                    snapshot.memberships,
                )
                if not moved:
                    await self._write(session, contact_id, state, outcome, placement, stage, signals)
            if moved:
                if outcome.aloware_calls and aloware_contact_id is not None:
                    # Another process applied this contact's lists meanwhile (SQLite has no row lock
                    # across processes): what this attempt added is known to nobody, so the contact
                    # leaves every list and the retry applies its lists from nothing.
                    await self.aloware.remove_from_all_lists(aloware_contact_id)
                    await forget_memberships(self.db, contact_id)
                raise RetryableError(
                    f"contact {contact_id}: lists changed while being applied; planning again"
                )
            return outcome

    async def _work(
        self,
        snapshot: _Snapshot,
        agent_key: str,
        tags: Sequence[str],
        blocked_because: str | None,
        aloware_contact_id: str | None,
        stage: StageChange | None,
        phone: str | None,
        retry_blocked: bool,
    ) -> tuple[ListOutcome, str | None]:
        placement = snapshot.stage_list_key
        if stage is not None and not _older(stage.at, snapshot.stage_at):
            placement = stage_placement(stage.stage_name, stage.status, placement)
        desired = desired_lists(
            list_keys=self.settings.list_keys,
            tags=tags,
            mode=self.settings.tag_match_mode,
            placement=placement,
            blocked_because=blocked_because,
        )
        current = snapshot.memberships
        if retry_blocked:
            # `lists rebuild`: a blocked membership is planned as a join again (its list may exist
            # now); one no longer wanted is dropped.
            current = {m: s for m, s in current.items() if s != BLOCKED}
        plan = plan_lists(current, agent_key, desired)
        if retry_blocked:
            wanted = {(agent_key, key) for key in desired}
            stale = {m for m, s in snapshot.memberships.items() if s == BLOCKED and m not in wanted}
            plan = ListPlan(
                desired=plan.desired, remove_all=plan.remove_all, add=plan.add, drop=plan.drop | stale
            )
        outcome = ListOutcome(agent_key=agent_key, previous_agent=snapshot.agent_key, plan=plan)
        if blocked_because is not None:
            outcome.note = f"on no list: {blocked_because}"
        if plan.calls_nothing:
            return outcome, placement
        if aloware_contact_id is None:
            # Nothing to put on a list yet (no phone, or the contact sync has not created the
            # Aloware contact): the memberships stay as they are and the next event applies them.
            outcome.plan = ListPlan(desired=plan.desired)
            outcome.note = "lists not applied: the contact is not in Aloware yet"
            outcome.applied = False
            return outcome, placement
        if plan.remove_all:
            await self.aloware.remove_from_all_lists(aloware_contact_id)
            outcome.aloware_calls += 1
        for membership in sorted(plan.add):
            list_id = await self.registry.list_id(*membership)
            if list_id is None:
                outcome.blocked.append(membership)
                continue
            await self.aloware.add_to_list(list_id, [aloware_contact_id])
            outcome.aloware_calls += 1
            outcome.joined.append(membership)
        if outcome.joined and blocked_because is None:
            await self._unless_blocked_since(outcome, snapshot, aloware_contact_id, phone)
        return outcome, placement

    async def _unless_blocked_since(
        self, outcome: ListOutcome, snapshot: _Snapshot, aloware_contact_id: str, phone: str | None
    ) -> None:
        """A STOP or a DNC recorded while the adds were in flight: its own removal may have run
        before them, so the person is taken off every list again here and no membership is kept.
        The consent flows record the decision before they remove, so either this check sees it or
        their removal comes after these adds."""
        late = await dialer_block(self.db, phone, sms_opt_out_counts=self.settings.optout_removes_from_dialer)
        if late is None:
            return
        await self.aloware.remove_from_all_lists(aloware_contact_id)
        outcome.aloware_calls += 1
        outcome.plan = ListPlan(desired=frozenset(), remove_all=True, drop=frozenset(snapshot.memberships))
        outcome.joined, outcome.blocked = [], []
        outcome.note = f"on no list: {late} (decided while the lists were being applied)"

    async def _write(
        self,
        session: AsyncSession,
        contact_id: str,
        state: ContactAgentState,
        outcome: ListOutcome,
        placement: str | None,
        stage: StageChange | None,
        signals: SignalsTime | None = None,
    ) -> None:
        plan = outcome.plan
        gone = set(plan.drop)
        if plan.remove_all:
            gone |= set(plan.desired) - set(outcome.joined) - set(outcome.blocked)
        for agent, key in gone:
            await session.execute(
                delete(ContactListMembership).where(
                    ContactListMembership.contact_id == contact_id,
                    ContactListMembership.agent_key == agent,
                    ContactListMembership.list_key == key,
                )
            )
        rows = {
            (r.agent_key, r.list_key): r
            for r in await session.scalars(
                select(ContactListMembership).where(ContactListMembership.contact_id == contact_id)
            )
        }
        now = utcnow()
        for membership, status in [(m, MEMBER) for m in outcome.joined] + [
            (m, BLOCKED) for m in outcome.blocked
        ]:
            row = rows.get(membership)
            if row is None:
                row = ContactListMembership(
                    contact_id=contact_id, agent_key=membership[0], list_key=membership[1]
                )
                session.add(row)
            row.status = status
            row.reason = LIST_MISSING if status == BLOCKED else None
            row.updated_at = now
        state.agent_key = outcome.agent_key
        if stage is not None and not _older(stage.at, state.stage_at):
            state.stage_list_key = placement
            state.stage_name = stage.stage_name or state.stage_name
            state.stage_at = stage.at or state.stage_at
        if signals is not None and outcome.applied:
            # Only signals the lists were placed by order later placements: an event that found
            # no Aloware contact yet placed nothing, and the placement that follows the contact's
            # creation (from GHL as it is then, so no older) must not be taken for stale (the
            # break14c A1 race, seen again once placements were dated by GHL's dateUpdated).
            state.signals_at, state.signals_received_at = signals.at, signals.received_at
        state.updated_at = now


async def forget_memberships(db: Database, contact_id: str) -> None:
    """Every membership of the contact ended: a flow took its Aloware contact off every list
    (consent, a deleted GHL contact). The next event that may put it back plans from nothing."""
    async with db.session() as session:
        # Behind an application of the contact's lists in flight (PostgreSQL: its row lock), so
        # the memberships it is about to record are the ones deleted.
        await session.scalar(
            select(ContactAgentState.id).where(ContactAgentState.contact_id == contact_id).with_for_update()
        )
        await session.execute(
            delete(ContactListMembership).where(ContactListMembership.contact_id == contact_id)
        )


def _stale_signals(snapshot: _Snapshot, agent_key: str) -> ListOutcome:
    """The outcome of an event older than the signals applied: no call, no change."""
    applied = snapshot.signals_at.isoformat() if snapshot.signals_at else "?"
    return ListOutcome(
        agent_key=snapshot.agent_key or agent_key,
        previous_agent=snapshot.agent_key,
        plan=ListPlan(desired=frozenset()),
        note=f"stale: the lists follow a newer event of the contact ({applied}); nothing changed",
    )


def _older(at: datetime | None, than: datetime | None) -> bool:
    return at is not None and than is not None and at < than


def _describe(outcome: ListOutcome) -> str:
    parts: list[str] = []
    if outcome.previous_agent and outcome.previous_agent != outcome.agent_key:
        parts.append(f"reassigned from {outcome.previous_agent} to {outcome.agent_key}")
    if outcome.plan.remove_all:
        parts.append("removed from all lists")
    if outcome.joined:
        parts.append("joined " + ", ".join(list_name(*m) for m in outcome.joined))
    if outcome.blocked:
        parts.append("blocked (list missing): " + ", ".join(list_name(*m) for m in outcome.blocked))
    if outcome.note:
        parts.append(outcome.note)
    return "; ".join(parts) or "lists unchanged"


def _phone(payload: Mapping[str, Any], region: str) -> str | None:
    nested = payload.get("contact")
    for value in (payload.get("phone"), nested.get("phone") if isinstance(nested, Mapping) else None):
        if isinstance(value, str) and value.strip():
            phone = normalize_phone(value, region)
            if phone:
                return phone
    return None


async def sync_contact_lists(
    ctx: HandlerContext,
    contact_id: str,
    *,
    contact: Mapping[str, Any] | None = None,
    whole: bool = True,
    stage: StageChange | None = None,
    retry_blocked: bool = False,
    signals_time: SignalsTime | None = None,
) -> SyncLogEntry | None:
    """R-AG-1…R-AG-4 for one GHL contact: resolve its agent, compute its lists and apply the
    difference. `contact` is the event's own contact (native and workflow contact events; `whole`
    False for workflow ones, which carry only what their workflow sends); what it does not say is
    read from GHL (opportunity events: everything). `signals_time`: when `contact` was true (its
    event's time); an event older than the one the lists follow changes nothing.

    None (no row, no call) when the agent directory has no active agent: a deployment that does
    not route leads to agents keeps its dialer lists by hand, and they are left alone."""
    started = utcnow()
    connectors = ctx.connectors
    aloware = connectors.aloware if connectors is not None else None
    ghl = connectors.ghl if connectors is not None else None

    def row(status: str, message: str, target: str | None = None) -> SyncLogEntry:
        return SyncLogEntry(
            direction=GHL_TO_ALOWARE,
            entity_type="contact",
            entity_id=contact_id,
            source_id=contact_id,
            status=status,  # type: ignore[arg-type]
            message=message,
            target_id=target,
            started_at=started,
        )

    agents = await active_agents(ctx.db)
    if not agents:
        return None  # no agent routing in this deployment: the dialer lists are not ours to keep
    if aloware is None:
        return row("skipped", "lists: Aloware not configured")
    mapping = await ContactMappings(ctx.db).by_ghl_id(contact_id)
    if mapping is not None and mapping.deleted_at is not None:
        return row("skipped", f"lists: GHL contact {contact_id} was deleted")
    signals = contact_signals(contact, whole=whole) if contact is not None else None
    source: Mapping[str, Any] = contact or {}
    if signals is None or signals.tags is None or not signals.owner_known:
        # What the event does not say (an opportunity's contact; a workflow's owner or tags; a
        # malformed field) is read from GHL, never taken as "unassigned" or "no tags".
        if ghl is None:
            return row("skipped", "lists: GHL not configured (the contact's owner and tags are needed)")
        fetched = await ghl.get_contact(contact_id)
        if fetched is None:
            return row("skipped", f"lists: GHL contact {contact_id} not found")
        in_ghl = fetched.model_dump(by_alias=True, exclude_none=True)
        source = {**in_ghl, **source}
        current = contact_signals(in_ghl)
        signals = signals.over(current) if signals is not None else current
    field_key = ctx.settings.ghl_assigned_agent_field_key
    if ghl is not None:
        field_value = await AgentField.value(ghl, field_key, signals)
    else:
        field_value = signals.named_fields.get(name_key(field_key))
    agent_key = resolve_agent(
        assigned_to=signals.assigned_to,
        field_value=field_value,
        tags=signals.tags or (),
        agents=agents,
        default_key=ctx.settings.default_agent_key.upper(),
    )
    region = ctx.settings.default_phone_region
    phone = (mapping.phone if mapping is not None else None) or _phone(source, region)
    aloware_id = mapping.aloware_contact_id if mapping is not None else None
    lists = ContactLists(ctx.settings, ctx.db, aloware, agent_keys=[a.agent_key for a in agents])
    outcome = await lists.apply(
        contact_id,
        agent_key=agent_key,
        tags=signals.tags or (),
        phone=phone,
        aloware_contact_id=aloware_id,
        stage=stage,
        retry_blocked=retry_blocked,
        signals=signals_time,
    )
    message = f"agent {agent_key}: {_describe(outcome)}"
    status = "success" if outcome.aloware_calls else "skipped"
    return row(status, message, aloware_id)


async def back_on_the_dialer(
    ctx: HandlerContext,
    phone: str,
    *,
    because: str,
    direction: str,
    ghl_contact_id: str | None = None,
) -> SyncLogEntry | None:
    """A consent that kept the person off the dialer was lifted (START, DND or DNC off): its lists
    are recomputed from GHL's contact (R-AG-2), so it returns to the lists its agent, tags and
    stage say — unless the other channel still blocks it. None when no agent routing is
    configured or the number is no mapped GHL contact (its next contact event places it)."""
    if ghl_contact_id is None:
        mapping = await ContactMappings(ctx.db).by_phone(phone)
        live = mapping is not None and mapping.deleted_at is None
        ghl_contact_id = mapping.ghl_contact_id if live and mapping is not None else None
    if ghl_contact_id is None:
        return None
    entry = await sync_contact_lists(ctx, ghl_contact_id)
    if entry is not None:
        entry.direction = direction
        entry.message = f"{because}: {entry.message}"
    return entry
