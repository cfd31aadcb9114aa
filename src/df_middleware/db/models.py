"""All tables of DF-Middleware.

The fifteen tables of the seed keep their names, columns and indexes; the additions of SPEC §2
(R-DM-1 … R-DM-5) are marked where they appear. Ids are UUIDs, timestamps are UTC, payloads JSON
(`jsonb` on PostgreSQL).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Index,
    Integer,
    MetaData,
    Text,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from df_middleware.db.types import JSONPayload, UTCDateTime, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Queue states of an event row (R-DM-1). `error` is the dead-letter state.
EVENT_STATUSES = ("pending", "processing", "done", "error", "quarantined")
ACTIVE_STATUSES = ("pending", "processing")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(Uuid, primary_key=True, default=uuid.uuid4)


def _created() -> Mapped[datetime]:
    return mapped_column(UTCDateTime, nullable=False, default=utcnow)


def _updated() -> Mapped[datetime]:
    return mapped_column(UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow)


def _queue_table_args(table: str) -> tuple[Any, ...]:
    """Constraints and indexes every event table shares (R-DM-1, R-Q-1, R-Q-4)."""
    active = text("status IN ('pending', 'processing')")
    return (
        CheckConstraint(
            "status IN ('pending', 'processing', 'done', 'error', 'quarantined')", name="status_valid"
        ),
        Index(f"{table}_dedupe_key_unique", "dedupe_key", unique=True),
        Index(f"{table}_status_idx", "status"),
        Index(f"{table}_received_at_idx", "received_at"),
        # Serves the claim query: due pending rows and expired leases, oldest first.
        Index(f"{table}_claim_idx", "status", "next_attempt_at", "received_at"),
        # Serves the claim's walk over active rows in received order, so it stops after LIMIT rows
        # instead of checking and sorting the whole backlog (15 ms → 0.2 ms at 10k pending).
        Index(
            f"{table}_active_received_idx",
            "received_at",
            "id",
            postgresql_where=active,
            sqlite_where=active,
        ),
        # Serves the per-ordering-key check: is an earlier event of this key still active?
        Index(
            f"{table}_ordering_active_idx",
            "ordering_key",
            "received_at",
            postgresql_where=active,
            sqlite_where=active,
        ),
        # Serve the dashboard's and admin API's event list filtered by status or by event type
        # (compared without case), newest first, and the overview's count of queued statuses.
        Index(f"{table}_status_received_idx", "status", "received_at", "id"),
        Index(f"{table}_event_type_idx", text("lower(event_type)"), "received_at", "id"),
    )


class QueueColumns:
    """Columns that make an event table a queue (R-DM-1)."""

    id: Mapped[uuid.UUID] = _uuid_pk()
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    event_type: Mapped[str] = mapped_column(Text, nullable=False)
    payload_json: Mapped[dict[str, Any]] = mapped_column(JSONPayload, nullable=False)
    dedupe_key: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False, default="pending")
    error_message: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    locked_by: Mapped[str | None] = mapped_column(Text)
    ordering_key: Mapped[str] = mapped_column(Text, nullable=False)
    signature_verified: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    request_id: Mapped[str | None] = mapped_column(Text)


class WebhookEvent(QueueColumns, Base):
    """GHL (including the conversation provider) and Aloware webhooks."""

    __tablename__ = "webhook_events"
    source: Mapped[str] = mapped_column(Text, nullable=False)  # 'ghl' | 'aloware'
    entity_type: Mapped[str] = mapped_column(Text, nullable=False)
    entity_id: Mapped[str] = mapped_column(Text, nullable=False)
    __table_args__ = (
        *_queue_table_args("webhook_events"),
        Index("webhook_events_source_status_idx", "source", "status"),
        Index("webhook_events_entity_idx", "entity_type", "entity_id"),
        # Serves the overview's queue depth by status and source (queued statuses only).
        Index("webhook_events_status_source_idx", "status", "source"),
        # The events list filtered by entity id alone, newest first (migration 0010).
        Index("webhook_events_entity_id_received_idx", "entity_id", "received_at", "id"),
    )

    @classmethod
    def queued_internally(
        cls,
        *,
        source: str,
        event_type: str,
        entity_type: str,
        entity_id: str,
        ordering_key: str,
        dedupe_prefix: str,
        payload: dict[str, Any],
    ) -> WebhookEvent:
        """An event the service queues itself (an operator's decision, a dead letter's follow-up),
        due now. Nobody outside can make one: it is written by a process with database access, so
        it counts as verified. Each is unique (`dedupe_prefix` + a fresh uuid): the same decision
        or follow-up made twice is told twice."""
        now = utcnow()
        return cls(
            id=uuid.uuid4(),
            source=source,
            event_type=event_type,
            entity_type=entity_type,
            entity_id=entity_id,
            received_at=now,
            next_attempt_at=now,
            status="pending",
            attempts=0,
            ordering_key=ordering_key,
            signature_verified=True,
            dedupe_key=f"{dedupe_prefix}:{uuid.uuid4()}",
            payload_json=payload,
        )


class TextingWebhookEvent(QueueColumns, Base):
    """Verity texting webhooks. Phone columns hold E.164 numbers (null when not valid)."""

    __tablename__ = "texting_webhook_events"
    entity_type: Mapped[str] = mapped_column(Text, nullable=False, default="message")
    entity_id: Mapped[str | None] = mapped_column(Text)
    conversation_id: Mapped[str | None] = mapped_column(Text)
    from_number: Mapped[str | None] = mapped_column(Text)
    to_number: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (
        *_queue_table_args("texting_webhook_events"),
        Index("texting_webhook_events_entity_id_idx", "entity_id"),
        Index("texting_webhook_events_conversation_id_idx", "conversation_id"),
        Index("texting_webhook_events_from_number_idx", "from_number"),
    )


class BroadcastWebhookEvent(QueueColumns, Base):
    """Verity broadcast analytics webhooks."""

    __tablename__ = "broadcast_webhook_events"
    broadcast_id: Mapped[str] = mapped_column(Text, nullable=False)
    __table_args__ = (
        *_queue_table_args("broadcast_webhook_events"),
        Index("broadcast_webhook_events_broadcast_id_idx", "broadcast_id"),
    )


#: The three event tables by the `kind` name the admin API and CLI use.
EVENT_MODELS: dict[str, type[WebhookEvent] | type[TextingWebhookEvent] | type[BroadcastWebhookEvent]] = {
    "webhook": WebhookEvent,
    "texting": TextingWebhookEvent,
    "broadcast": BroadcastWebhookEvent,
}


class SyncLog(Base):
    """Audit trail: one row per effect (or skip, or final error) of every processing run (R-Q-7)."""

    __tablename__ = "sync_log"
    id: Mapped[uuid.UUID] = _uuid_pk()
    direction: Mapped[str] = mapped_column(Text, nullable=False)
    entity_type: Mapped[str] = mapped_column(Text, nullable=False)
    entity_id: Mapped[str] = mapped_column(Text, nullable=False)
    source_id: Mapped[str] = mapped_column(Text, nullable=False)
    target_id: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, nullable=False)  # 'success' | 'error' | 'skipped'
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error_message: Mapped[str | None] = mapped_column(Text)
    correlation_id: Mapped[str | None] = mapped_column(Text)
    message: Mapped[str | None] = mapped_column(Text)  # addition: the human-readable outcome / skip reason
    __table_args__ = (
        CheckConstraint("status IN ('success', 'error', 'skipped')", name="status_valid"),
        Index("sync_log_entity_idx", "entity_type", "entity_id"),
        Index("sync_log_direction_idx", "direction"),
        Index("sync_log_started_at_idx", "started_at"),
        Index("sync_log_correlation_idx", "correlation_id"),
        # The sync log filtered by entity id alone, newest first (migration 0010).
        Index("sync_log_entity_id_started_idx", "entity_id", "started_at", "id"),
    )


class SyncState(Base):
    """Reconcile cursors per (direction, entity type)."""

    __tablename__ = "sync_state"
    id: Mapped[uuid.UUID] = _uuid_pk()
    direction: Mapped[str] = mapped_column(Text, nullable=False)
    entity_type: Mapped[str] = mapped_column(Text, nullable=False)
    cursor_updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    cursor_id: Mapped[str | None] = mapped_column(Text)
    last_run_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    __table_args__ = (Index("sync_state_direction_entity_unique", "direction", "entity_type", unique=True),)


_LIVE = text("deleted_at IS NULL")


class ContactMapping(Base):
    """GHL contact ↔ Aloware contact, with the match keys (E.164 phone, lower-cased email)."""

    __tablename__ = "contact_mappings"
    id: Mapped[uuid.UUID] = _uuid_pk()
    aloware_contact_id: Mapped[str | None] = mapped_column(Text)  # null for texting-only contacts
    ghl_contact_id: Mapped[str] = mapped_column(Text, nullable=False)
    phone_number: Mapped[str | None] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text)
    last_synced_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    sync_direction: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    last_synced_fingerprint: Mapped[str | None] = mapped_column(Text)  # R-DM-5
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # R-DM-5
    #: Event time of the newest GHL / Aloware contact change already applied: an older event (a
    #: replay, a late retry) about this person is stale and must not write old data back (R-IDEM-1).
    ghl_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    aloware_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When that newest change reached us: two changes with the same (one-second) event time are
    #: ordered by receipt, as the queue processes them (R-Q-4).
    ghl_event_received_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    aloware_event_received_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The same watermark for Aloware's `Contact Disposed` (R-CALL-3): an older disposition
    #: delivered late must not replace a newer one.
    disposition_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disposition_received_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The GHL contact's profile as last seen (an API answer or a native contact webhook) and
    #: GHL's time of it: lets an Aloware change of a mapped contact be decided without a GET
    #: (R-PERF-3). Null when unknown or when a GHL change we could not read replaced it.
    ghl_profile: Mapped[dict[str, Any] | None] = mapped_column(JSONPayload)
    ghl_profile_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    __table_args__ = (
        # One live row per GHL and per Aloware contact; deleted rows are history (R-C-4).
        Index(
            "contact_mappings_aloware_contact_id_unique",
            "aloware_contact_id",
            unique=True,
            postgresql_where=_LIVE,
            sqlite_where=_LIVE,
        ),
        Index(
            "contact_mappings_ghl_contact_id_unique",
            "ghl_contact_id",
            unique=True,
            postgresql_where=_LIVE,
            sqlite_where=_LIVE,
        ),
        Index("contact_mappings_ghl_contact_id_idx", "ghl_contact_id"),
        Index("contact_mappings_aloware_contact_id_idx", "aloware_contact_id"),
        Index("contact_mappings_phone_idx", "phone_number"),
        Index("contact_mappings_email_idx", "email"),
        # Serves the mappings list, most recently updated first.
        Index("contact_mappings_updated_at_idx", "updated_at", "id"),
    )


class GhlConversation(Base):
    """A GHL contact's conversation id, cached: saves a search per call log entry or text."""

    __tablename__ = "ghl_conversations"
    ghl_contact_id: Mapped[str] = mapped_column(Text, primary_key=True)
    conversation_id: Mapped[str] = mapped_column(Text, nullable=False)
    location_id: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = _updated()
    #: Serves retention: ids not written for longer than RETENTION_DAYS are candidates for pruning.
    __table_args__ = (Index("ghl_conversations_updated_at_idx", "updated_at"),)


class MessageMapping(Base):
    """One message across the texting system, GHL and Aloware."""

    __tablename__ = "message_mappings"
    id: Mapped[uuid.UUID] = _uuid_pk()
    texting_message_id: Mapped[str | None] = mapped_column(Text)
    ghl_message_id: Mapped[str | None] = mapped_column(Text)
    aloware_message_id: Mapped[str | None] = mapped_column(Text)
    conversation_id: Mapped[str | None] = mapped_column(Text)
    ghl_contact_id: Mapped[str | None] = mapped_column(Text)
    aloware_contact_id: Mapped[str | None] = mapped_column(Text)
    from_number: Mapped[str | None] = mapped_column(Text)
    to_number: Mapped[str | None] = mapped_column(Text)
    direction: Mapped[str | None] = mapped_column(Text)  # 'inbound' | 'outbound'
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    status: Mapped[str | None] = mapped_column(Text)  # R-DM-5
    status_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # R-DM-5
    #: Why an agent's text was refused (`opted_out`…): told to GHL again when a retry finds the
    #: refusal recorded but GHL not told (migration 0011).
    error_code: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (
        Index("message_mappings_texting_message_id_unique", "texting_message_id", unique=True),
        Index("message_mappings_ghl_message_id_unique", "ghl_message_id", unique=True),
        Index("message_mappings_aloware_message_id_unique", "aloware_message_id", unique=True),
        Index("message_mappings_conversation_id_idx", "conversation_id"),
        Index("message_mappings_ghl_contact_id_idx", "ghl_contact_id"),
        Index("message_mappings_aloware_contact_id_idx", "aloware_contact_id"),
        Index("message_mappings_from_number_idx", "from_number"),
        Index("message_mappings_to_number_idx", "to_number"),
    )


class _ConsentColumns:
    id: Mapped[uuid.UUID] = _uuid_pk()
    phone_number: Mapped[str] = mapped_column(Text, nullable=False)  # E.164
    status: Mapped[str] = mapped_column(Text, nullable=False)  # 'opted_out' | 'opted_in'
    source: Mapped[str] = mapped_column(Text, nullable=False)  # 'texting' | 'ghl' | 'aloware' | 'manual'
    reason: Mapped[str | None] = mapped_column(Text)
    last_event_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class OptoutRegistry(_ConsentColumns, Base):
    """Current SMS consent per number: the authoritative do-not-text list."""

    __tablename__ = "optout_registry"
    __table_args__ = (
        Index("optout_registry_phone_number_unique", "phone_number", unique=True),
        Index("optout_registry_status_idx", "status"),
        Index("optout_registry_last_event_idx", "last_event_at", "id"),  # the list's order (admin, dashboard)
    )


class DncRegistry(_ConsentColumns, Base):
    """Current voice do-not-call state per number (R-DM-2), kept apart from SMS consent."""

    __tablename__ = "dnc_registry"
    __table_args__ = (
        Index("dnc_registry_phone_number_unique", "phone_number", unique=True),
        Index("dnc_registry_status_idx", "status"),
        Index("dnc_registry_last_event_idx", "last_event_at", "id"),  # the list's order (admin, dashboard)
    )


class OptoutEvent(Base):
    """Append-only history of every opt-out / opt-in decision (R-DM-2)."""

    __tablename__ = "optout_events"
    id: Mapped[uuid.UUID] = _uuid_pk()
    phone_number: Mapped[str] = mapped_column(Text, nullable=False)
    channel: Mapped[str] = mapped_column(Text, nullable=False)  # 'sms' | 'voice'
    status: Mapped[str] = mapped_column(Text, nullable=False)
    source: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    keyword: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(Text)
    event_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    actor: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    __table_args__ = (
        Index("optout_events_phone_idx", "phone_number", "event_at"),
        Index("optout_events_created_at_idx", "created_at"),
    )


class AgentDirectory(Base):
    """Agents and how a GHL contact is matched to them."""

    __tablename__ = "agent_directory"
    id: Mapped[uuid.UUID] = _uuid_pk()
    agent_key: Mapped[str] = mapped_column(Text, nullable=False)
    display_name: Mapped[str] = mapped_column(Text, nullable=False)
    ghl_owner_id: Mapped[str | None] = mapped_column(Text)
    ghl_owner_email: Mapped[str | None] = mapped_column(Text)
    ghl_assigned_agent_field_value: Mapped[str | None] = mapped_column(Text)
    required_tag: Mapped[str | None] = mapped_column(Text)
    aloware_user_id: Mapped[str | None] = mapped_column(Text)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    __table_args__ = (
        Index("agent_directory_agent_key_unique", "agent_key", unique=True),
        Index("agent_directory_is_active_idx", "is_active"),
    )


class CallListRegistry(Base):
    """Aloware power-dialer list per (agent, list key)."""

    __tablename__ = "call_list_registry"
    id: Mapped[uuid.UUID] = _uuid_pk()
    agent_key: Mapped[str] = mapped_column(Text, nullable=False)
    list_key: Mapped[str] = mapped_column(Text, nullable=False)
    aloware_list_id: Mapped[str | None] = mapped_column(Text)
    aloware_list_name: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    __table_args__ = (
        Index("call_list_registry_agent_list_unique", "agent_key", "list_key", unique=True),
        Index("call_list_registry_aloware_list_name_unique", "aloware_list_name", unique=True),
        Index("call_list_registry_agent_key_idx", "agent_key"),
        Index("call_list_registry_list_key_idx", "list_key"),
    )


class ContactListMembership(Base):
    """A contact's membership of an agent's list, as we last applied it."""

    __tablename__ = "contact_list_memberships"
    id: Mapped[uuid.UUID] = _uuid_pk()
    contact_id: Mapped[str] = mapped_column(Text, nullable=False)  # GHL contact id
    agent_key: Mapped[str] = mapped_column(Text, nullable=False)
    list_key: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    __table_args__ = (
        Index(
            "contact_list_memberships_contact_agent_list_unique",
            "contact_id",
            "agent_key",
            "list_key",
            unique=True,
        ),
        Index("contact_list_memberships_contact_id_idx", "contact_id"),
        Index("contact_list_memberships_agent_list_idx", "agent_key", "list_key"),
        Index("contact_list_memberships_status_idx", "status"),
    )


class ContactAgentState(Base):
    """Last known agent of a GHL contact (reassignment detection) and Aloware list status."""

    __tablename__ = "contact_agent_state"
    id: Mapped[uuid.UUID] = _uuid_pk()
    contact_id: Mapped[str] = mapped_column(Text, nullable=False)
    agent_key: Mapped[str] = mapped_column(Text, nullable=False)
    last_aloware_list_status: Mapped[str | None] = mapped_column(Text)
    #: Where the pipeline last placed the contact (R-AG-2): a list key, `CLOSED` (won/lost/closed/
    #: dead: on no list), or None (no stage yet: NEW_LEADS). Stage events carry no tags, contact
    #: events carry no stage: each remembers its part of the desired set here.
    stage_list_key: Mapped[str | None] = mapped_column(Text)
    stage_name: Mapped[str | None] = mapped_column(Text)
    stage_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Time (and receipt) of the newest GHL contact event whose owner and tags placed the contact:
    #: an older event arriving later (a resend) changes no list (migration 0011).
    signals_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    signals_received_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The Aloware sequence the contact was last enrolled in by us (R-AG-6), None when none.
    aloware_sequence_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    __table_args__ = (
        Index("contact_agent_state_contact_id_unique", "contact_id", unique=True),
        Index("contact_agent_state_agent_key_idx", "agent_key"),
    )


class BroadcastRecord(Base):
    """One GHL custom-object record per Verity broadcast (R-BC-2): its id, once known, saves the
    search; the properties last written let an unchanged recomputation write nothing."""

    __tablename__ = "broadcast_records"
    broadcast_id: Mapped[str] = mapped_column(Text, primary_key=True)
    location_id: Mapped[str | None] = mapped_column(Text)
    ghl_record_id: Mapped[str | None] = mapped_column(Text)
    properties: Mapped[dict[str, Any] | None] = mapped_column(JSONPayload)
    source_event_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    event_received_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    written_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = _updated()


class GhlOauthToken(Base):
    """Marketplace OAuth tokens per location. Token columns hold Fernet ciphertext (R-SEC-5)."""

    __tablename__ = "ghl_oauth_tokens"
    id: Mapped[uuid.UUID] = _uuid_pk()
    location_id: Mapped[str] = mapped_column(Text, nullable=False)
    access_token: Mapped[str] = mapped_column(Text, nullable=False)
    refresh_token: Mapped[str | None] = mapped_column(Text)
    token_type: Mapped[str] = mapped_column(Text, nullable=False, default="Bearer")
    scope: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    user_type: Mapped[str | None] = mapped_column(Text)  # R-DM-5
    company_id: Mapped[str | None] = mapped_column(Text)  # R-DM-5
    refresh_failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # R-DM-5
    refresh_error: Mapped[str | None] = mapped_column(Text)  # why the last refresh failed, for the dashboard
    #: When the OAuth callback last stored this location's install: an uninstall that happened
    #: before it (a late or replayed AppUninstall) must not delete the newer installation.
    installed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    __table_args__ = (
        Index("ghl_oauth_tokens_location_id_unique", "location_id", unique=True),
        Index("ghl_oauth_tokens_expires_at_idx", "expires_at"),
    )


class OAuthStateUse(Base):
    """Nonces of OAuth install states already used at the callback: a state is good once."""

    __tablename__ = "oauth_state_uses"
    nonce: Mapped[str] = mapped_column(Text, primary_key=True)
    used_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    __table_args__ = (Index("oauth_state_uses_used_at_idx", "used_at"),)


class ReconcileRun(Base):
    """One run of a batch reconcile job."""

    __tablename__ = "reconcile_runs"
    id: Mapped[uuid.UUID] = _uuid_pk()
    job_name: Mapped[str] = mapped_column(Text, nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(Text, nullable=False)  # 'running' | 'success' | 'error'
    totals: Mapped[dict[str, Any] | None] = mapped_column(JSONPayload)
    error_message: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (
        Index("reconcile_runs_job_name_idx", "job_name"),
        Index("reconcile_runs_started_at_idx", "started_at"),
    )


class QuarantineEvent(Base):
    """Why and by whom an event was quarantined; one row per event (R-Q-5)."""

    __tablename__ = "quarantine_events"
    id: Mapped[uuid.UUID] = _uuid_pk()
    event_id: Mapped[str] = mapped_column(Text, nullable=False)
    event_source: Mapped[str] = mapped_column(Text, nullable=False)  # event kind: webhook|texting|broadcast
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    quarantined_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    quarantined_by: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (
        Index("quarantine_events_event_id_idx", "event_id"),
        Index("quarantine_events_event_source_idx", "event_source"),
        Index("quarantine_events_event_unique", "event_source", "event_id", unique=True),
    )


class SyncEffect(Base):
    """A non-idempotent write already made in another system (R-DM-3, R-IDEM-2)."""

    __tablename__ = "sync_effects"
    id: Mapped[uuid.UUID] = _uuid_pk()
    effect_key: Mapped[str] = mapped_column(Text, nullable=False)
    event_id: Mapped[str | None] = mapped_column(Text)
    target_system: Mapped[str] = mapped_column(Text, nullable=False)
    target_id: Mapped[str | None] = mapped_column(Text)
    #: `started`: an intent, committed before the write left (its outcome unknown until `done`).
    state: Mapped[str] = mapped_column(Text, nullable=False, default="done", server_default="done")
    created_at: Mapped[datetime] = _created()
    __table_args__ = (
        Index("sync_effects_effect_key_unique", "effect_key", unique=True),
        Index("sync_effects_event_id_idx", "event_id"),
        # Serves retention: the prune walks old effects in creation order.
        Index("sync_effects_created_at_idx", "created_at"),
    )


class EchoGuard(Base):
    """Fingerprints of our own recent writes, to recognise the webhook they cause (R-DM-4, R-LOOP-1)."""

    __tablename__ = "echo_guard"
    id: Mapped[uuid.UUID] = _uuid_pk()
    system: Mapped[str] = mapped_column(Text, nullable=False)
    entity_id: Mapped[str] = mapped_column(Text, nullable=False)
    fingerprint: Mapped[str] = mapped_column(Text, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    #: The event that recognised this write's echo (kept until expiry, so a run of that event again
    #: after a crash still sees its echo: migration 0012, break14 finding 6); None while unseen.
    consumed_by: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    __table_args__ = (
        Index("echo_guard_lookup_idx", "system", "entity_id", "fingerprint"),
        Index("echo_guard_expires_at_idx", "expires_at"),
    )
