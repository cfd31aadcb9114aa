"""What GHL's documents allow and the middleware must live with (issue 10).

- `POST /conversations/messages/inbound` defaults an absent `direction` to `outbound` (the
  document says so): an inbound text must send `direction: "inbound"` (R-TXT-1).
- `GET /conversations/{id}/messages` pages by `limit` (default 20) with `nextPage` /
  `lastMessageId`: the look-up for a message whose answer was lost reads past the first page, so
  a busy conversation cannot make a retry add it twice (R-TXT-1, R-IDEM-2).
- `POST /contacts/{id}/tags` answers `tags` without promising they are all the contact's tags:
  `GhlClient.tags_after_adding` reads the contact for the full list (R-CALL-3).

Connector tests serve a fresh GHL simulator over real HTTP (validating requests with GHL's own
OpenAPI documents when `../shared/contracts` is present); flow tests run the whole `sync_world`
on both database engines.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

import df_middleware.sync.calls
import df_middleware.sync.texting
from df_middleware.connectors.ghl import FIND_MESSAGE_MAX_PAGES, GhlClient, StaticToken
from df_middleware.connectors.ghl_models import ConversationMessage
from df_middleware.connectors.http import ClientSettings, ServiceClient
from df_middleware.connectors.ratelimit import SlidingWindowLimiter
from df_middleware.db.models import MessageMapping, TextingWebhookEvent
from df_middleware.db.types import utcnow
from df_middleware.simulators.ghl import GhlSimulator, create_app
from tests.conftest import CONTRACTS
from tests.servers import serve_app
from tests.sync_world import NO_NATURAL_RETRY, SyncWorld

LOC = "loc_sim"
PIT = "pit-sim"
PERSON = "+19195551234"
BUSINESS_LINE = "+19195550000"
#: GHL's documented message page (the `limit` default; `nextPage` speaks of 20 messages).
GHL_PAGE = 20
OURS_AT = datetime(2026, 11, 24, 16, 50, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass
class Ghl:
    url: str
    sim: GhlSimulator
    app: Any

    def requests(self, method: str, prefix: str) -> list[Any]:
        return list(self.app.state.request_log.matching(method, prefix))


@pytest.fixture
def ghl_sim() -> Iterator[Ghl]:
    openapi_dir = CONTRACTS / "ghl" / "openapi"
    sim = GhlSimulator(seed=11)
    app = create_app(sim, openapi_dir=openapi_dir if openapi_dir.is_dir() else None)
    with serve_app(app) as url:
        yield Ghl(url, sim, app)


@pytest.fixture
async def ghl(ghl_sim: Ghl) -> AsyncIterator[GhlClient]:
    http = ServiceClient(
        "ghl",
        ghl_sim.url,
        settings=ClientSettings(timeout_seconds=10.0, retry_wait_base_seconds=0.01),
        limiter=SlidingWindowLimiter(100, 10.0),
    )
    client = GhlClient(http, StaticToken(LOC, PIT), LOC)
    yield client
    await client.aclose()


def conversation_of(sim: GhlSimulator, phone: str = PERSON) -> tuple[str, str]:
    """A contact and its conversation, made in the simulator as GHL's users would."""
    contact = sim.create_contact(LOC, {"phone": phone, "firstName": "Ann"}).contact
    conversation = sim.create_conversation(LOC, {"locationId": LOC, "contactId": contact["id"]})
    return contact["id"], conversation["id"]


def add_texts(
    sim: GhlSimulator,
    contact_id: str,
    conversation_id: str,
    count: int,
    *,
    first_at: datetime,
    step: timedelta,
) -> None:
    """`count` SMS in the conversation, the first at `first_at`, one every `step`."""
    for n in range(count):
        sim.add_inbound_message(
            LOC,
            {
                "type": "SMS",
                "conversationId": conversation_id,
                "contactId": contact_id,
                "conversationProviderId": "prov-other",
                "message": f"other text {n}",
                "altId": f"other-{n}",
                "date": iso(first_at + n * step),
                "direction": "inbound",
            },
        )


def message_listings(ghl_sim: Ghl, conversation_id: str) -> list[dict[str, str]]:
    return [r.query for r in ghl_sim.requests("GET", f"/conversations/{conversation_id}/messages")]


# --- 1. the direction of an inbound text ------------------------------------------------------------


async def test_inbound_endpoint_without_direction_records_outbound(ghl: GhlClient, ghl_sim: Ghl) -> None:
    """R-TXT-1: GHL's document defaults `direction` to `outbound` on the *inbound* endpoint, and
    the simulator applies that default: a text added without a direction is recorded outbound,
    so only an explicit `direction: "inbound"` makes it the person's text."""
    contact_id, conversation_id = conversation_of(ghl_sim.sim)
    unsaid = await ghl.add_message(
        ConversationMessage(
            conversationId=conversation_id,
            contactId=contact_id,
            conversationProviderId="prov-sms",
            message="no direction given",
            altId="tlx_unsaid",
        )
    )
    said = await ghl.add_message(
        ConversationMessage(
            conversationId=conversation_id,
            contactId=contact_id,
            conversationProviderId="prov-sms",
            message="direction given",
            altId="tlx_said",
            direction="inbound",
        )
    )
    messages = {m["id"]: m for m in ghl_sim.sim.snapshot()["messages"]}
    assert messages[unsaid.message_id]["direction"] == "outbound"
    assert messages[said.message_id]["direction"] == "inbound"


async def test_inbound_text_reaches_ghl_as_inbound(sync_world: SyncWorld) -> None:
    """R-TXT-1: a Verity `message.received` goes through ingest and the worker and is stored in
    GHL as an inbound message, because the request says `direction: "inbound"` itself."""
    sync_world.use_modules(df_middleware.sync.texting)
    await sync_world.deliver_texting(received("tlx_IN_dir"))
    assert await sync_world.process() == 1

    [message] = sync_world.ghl.sim.snapshot()["messages"]
    assert (message["altId"], message["direction"], message["status"]) == (
        "tlx_IN_dir",
        "inbound",
        "delivered",
    )
    [post] = sync_world.ghl.requests("POST", "/conversations/messages/inbound")
    assert post.json()["direction"] == "inbound"


# --- 3. finding a message past the first page ------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True], ids=["documented-page", "live-nested-page"])
async def test_find_message_reads_on_to_the_third_page(ghl: GhlClient, ghl_sim: Ghl, nested: bool) -> None:
    """R-IDEM-2: ours is the 46th message, newest first, of a conversation GHL lists 20 at a
    time: the look-up follows `nextPage` / `lastMessageId` to page 3 and finds it (by altId, and
    by text and date when GHL shows no altId). GHL's live API nests the page under `messages`
    (highlevel-api-docs#54); both shapes are read."""
    ghl_sim.sim.message_page_max = GHL_PAGE
    ghl_sim.sim.nest_message_pages = nested
    contact_id, conversation_id = conversation_of(ghl_sim.sim)
    ours = ghl_sim.sim.add_inbound_message(
        LOC,
        {
            "type": "SMS",
            "conversationId": conversation_id,
            "contactId": contact_id,
            "conversationProviderId": "prov-sms",
            "message": "Yes, Tuesday works",
            "date": iso(OURS_AT),
            "direction": "inbound",
        },
    )
    add_texts(ghl_sim.sim, contact_id, conversation_id, 45, first_at=OURS_AT, step=timedelta(seconds=1))
    ours.alt_id = "tlx_ours"  # GHL shows our altId: found by it

    found = await ghl.find_message(
        conversation_id,
        alt_id="tlx_ours",
        body="Yes, Tuesday works",
        date=iso(OURS_AT),
        message_type="TYPE_SMS",
    )
    assert found == ours.id
    listings = message_listings(ghl_sim, conversation_id)
    assert len(listings) == 3
    assert "lastMessageId" not in listings[0]
    assert all(q["lastMessageId"] for q in listings[1:])

    ours.alt_id = None  # GHL shows no altId: found by the same text at the same date
    found = await ghl.find_message(
        conversation_id,
        alt_id="tlx_ours",
        body="Yes, Tuesday works",
        date=iso(OURS_AT),
        message_type="TYPE_SMS",
    )
    assert found == ours.id


async def test_find_message_stops_where_messages_are_older_than_ours(ghl: GhlClient, ghl_sim: Ghl) -> None:
    """R-IDEM-2: newest first, a page whose messages are older than our `date` (less the clock
    allowance) ends the look-up: ours cannot be further down, so no more pages are read."""
    ghl_sim.sim.message_page_max = GHL_PAGE
    contact_id, conversation_id = conversation_of(ghl_sim.sim)
    add_texts(
        ghl_sim.sim,
        contact_id,
        conversation_id,
        3 * GHL_PAGE,
        first_at=OURS_AT - timedelta(days=2),
        step=timedelta(minutes=1),
    )
    found = await ghl.find_message(conversation_id, alt_id="tlx_missing", body="hello", date=iso(OURS_AT))
    assert found is None
    assert len(message_listings(ghl_sim, conversation_id)) == 1


async def test_find_message_reads_a_bounded_number_of_pages(ghl: GhlClient, ghl_sim: Ghl) -> None:
    """R-IDEM-2: a conversation with more pages newer than ours than the bound is read to
    FIND_MESSAGE_MAX_PAGES pages, not to its end (each page spends the location's budget)."""
    ghl_sim.sim.message_page_max = GHL_PAGE
    contact_id, conversation_id = conversation_of(ghl_sim.sim)
    count = (FIND_MESSAGE_MAX_PAGES + 2) * GHL_PAGE
    add_texts(ghl_sim.sim, contact_id, conversation_id, count, first_at=OURS_AT, step=timedelta(seconds=1))
    found = await ghl.find_message(conversation_id, alt_id="tlx_missing", body="hello", date=iso(OURS_AT))
    assert found is None
    assert len(message_listings(ghl_sim, conversation_id)) == FIND_MESSAGE_MAX_PAGES


async def test_retry_after_a_lost_answer_finds_ours_past_the_first_page(sync_world: SyncWorld) -> None:
    """R-TXT-1, R-IDEM-2: GHL adds the inbound text but its answer is lost (504); before the retry
    45 more texts arrive in the conversation, which GHL lists 20 at a time. The retry finds ours
    on page 3 by its altId and records it: GHL holds it once, and the event is done."""
    sync_world.settings = sync_world.settings.model_copy(update=NO_NATURAL_RETRY)  # the test runs the retry
    sync_world.use_modules(df_middleware.sync.texting)
    sim = sync_world.ghl.sim
    sim.message_page_max = GHL_PAGE
    original = sim.add_inbound_message
    busy: list[bool] = []

    def add_then_get_busy_and_lose_the_answer(location_id: str, body: dict[str, Any]) -> Any:
        message = original(location_id, body)
        if not busy:
            busy.append(True)
            add_texts(
                sim,
                body["contactId"],
                body["conversationId"],
                45,
                first_at=OURS_AT,
                step=timedelta(seconds=1),
            )
            sync_world.ghl.faults(lost_response_rate=1.0)  # this answer (and any after) is lost
        return message

    sim.add_inbound_message = add_then_get_busy_and_lose_the_answer  # type: ignore[method-assign]
    answer = await sync_world.deliver_texting(received("tlx_IN_busy"))
    await sync_world.process()
    assert await texting_statuses(sync_world) == ["pending"]  # a 504: retried later

    sync_world.ghl.faults()
    async with sync_world.db.session() as session:
        await session.execute(
            update(TextingWebhookEvent)
            .where(TextingWebhookEvent.id == uuid.UUID(answer.json()["id"]))
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
    assert await sync_world.process() == 1

    messages = sim.snapshot()["messages"]
    assert len(messages) == 46
    [ours] = [m for m in messages if m["altId"] == "tlx_IN_busy"]
    assert await texting_statuses(sync_world) == ["done"]
    async with sync_world.db.session() as session:
        mapping = await session.scalar(select(MessageMapping))
    assert mapping is not None
    assert mapping.ghl_message_id == ours["id"]
    assert len(message_listings(sync_world.ghl, ours["conversationId"])) == 3


async def texting_statuses(world: SyncWorld) -> list[str]:
    async with world.db.session() as session:
        return list(await session.scalars(select(TextingWebhookEvent.status)))


def received(message_id: str) -> dict[str, Any]:
    """`contracts/verity/webhooks/texting.message.received.json`, with our own ids."""
    return {
        "eventType": "message.received",
        "messageId": message_id,
        "conversationId": "chat_7781",
        "direction": "inbound",
        "from": PERSON,
        "to": BUSINESS_LINE,
        "body": "Yes, Tuesday works for me",
        "timestamp": iso(OURS_AT),
        "status": "received",
    }


# --- 2. tags: the answer of a tag change is not the contact's tag list ----------------------------


async def test_tags_after_adding_lists_every_tag_when_ghl_answers_only_the_sent_ones(
    ghl: GhlClient, ghl_sim: Ghl
) -> None:
    """R-CALL-3: GHL's document promises only a `tags` array in the answer to
    `POST /contacts/{id}/tags`. Answering with just the tags sent (as the simulator is set to
    here), `add_tags` cannot show an old `Disposition:` tag; `tags_after_adding` reads the
    contact and lists every tag it has."""
    ghl_sim.sim.tag_answer = "sent"
    contact = ghl_sim.sim.create_contact(
        LOC, {"phone": PERSON, "tags": ["vip", "Disposition: Appointment Set"]}
    ).contact

    assert await ghl.add_tags(contact["id"], ["Disposition: Callback"]) == ["disposition: callback"]
    every = await ghl.tags_after_adding(contact["id"], ["Disposition: Not Interested"])
    assert {t.lower() for t in every} == {
        "vip",
        "disposition: appointment set",
        "disposition: callback",
        "disposition: not interested",
    }


async def test_contact_disposed_removes_the_old_disposition_when_ghl_answers_only_the_sent_tags(
    sync_world: SyncWorld,
) -> None:
    """R-CALL-3: with GHL answering a tag add with only the tags sent (as its document allows),
    two dispositions in a row still leave one `Disposition:` tag, the latest."""
    sync_world.use_modules(df_middleware.sync.calls)
    sync_world.ghl.sim.tag_answer = "sent"
    for disposition in ("Appointment Set", "Not Interested"):
        await sync_world.deliver_aloware("Contact Disposed", aloware_contact(disposition_status=disposition))
        await sync_world.process()

    [contact] = [c for c in sync_world.ghl.sim.snapshot()["contacts"] if not c["deleted"]]
    dispositions = [t.lower() for t in contact["tags"] if t.lower().startswith("disposition:")]
    assert dispositions == ["disposition: not interested"]


def aloware_contact(**changes: Any) -> dict[str, Any]:
    return {
        "id": 48213,
        "first_name": "Sarah",
        "last_name": "Johnson",
        "phone_number": PERSON,
        "email": "sarah.johnson@example.com",
        **changes,
    }
