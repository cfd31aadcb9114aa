"""`/api/admin/optouts…` (SPEC §8.1, R-OPT-2, R-OPT-5): the do-not-text list (and, with
`channel=voice`, do-not-call), an operator's manual opt-out and opt-in, and the report that
explains one number.

A manual decision goes through `queue.operator_events.decide_and_tell`, the same call as
`df-middleware optout add|remove`: recorded with its actor in the registry and the history, and —
when it takes effect — queued in the same transaction to be told to GHL (DND) and the dialer.
The phone may be given in any format; it is normalised (R-ID-1), and what is not a phone is 422.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from df_middleware.admin.api.common import (
    API_ACTOR,
    AdminRoute,
    CursorQuery,
    LimitQuery,
    Printable,
    RevealQuery,
    db_of,
    phone_or_422,
    service_errors,
    settings_of,
)
from df_middleware.admin.records import list_optouts
from df_middleware.consent.decisions import OPTED_IN, OPTED_OUT
from df_middleware.consent.manual import MAX_REASON_CHARS, consent_report
from df_middleware.queue.operator_events import decide_and_tell

Channel = Literal["sms", "voice"]
PhonePath = Annotated[str, Path(max_length=64, description="The number, in any common format")]


class OptOutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    phone: str = Field(min_length=1, max_length=64, description="The number, in any common format")
    reason: Annotated[str, Printable] = Field(
        min_length=1, max_length=MAX_REASON_CHARS, description="Why (kept in the history)"
    )
    channel: Channel = "sms"


def _decision(outcome: Any, phone: str, channel: str) -> dict[str, Any]:
    state = outcome.state
    return {
        "phone": phone,
        "channel": channel,
        "applied": outcome.decision.applies,
        "why_not": None if outcome.decision.applies else outcome.decision.why,
        "status": None if state is None else state.status,
        "source": None if state is None else state.source,
        "reason": None if state is None else state.reason,
        "last_event_at": None if state is None else state.last_event_at.isoformat(),
    }


def consent_router() -> APIRouter:
    router = APIRouter(route_class=AdminRoute)

    @router.get("/optouts", summary="The opt-out registry, most recent decision first")
    async def optouts(
        request: Request,
        status: Literal["opted_out", "opted_in"] | None = None,
        phone: Annotated[str | None, Query(max_length=64)] = None,
        channel: Channel = "sms",
        cursor: CursorQuery = None,
        limit: LimitQuery = 50,
        reveal: RevealQuery = False,
    ) -> dict[str, Any]:
        """SMS consent (`optout_registry`), or do-not-call with `channel=voice`. Numbers are
        masked unless `?reveal=true`."""
        number = phone_or_422(settings_of(request), phone) if phone else None
        with service_errors():
            page = await list_optouts(
                db_of(request),
                status=status,
                phone=number,
                channel=channel,
                cursor=cursor,
                limit=limit,
                reveal=reveal,
            )
        return page.as_dict()

    @router.post("/optouts", summary="Opt a number out (manual)")
    async def add(request: Request, body: OptOutIn) -> dict[str, Any]:
        """Nothing is texted to the number from now on (sms), or it is on the do-not-call registry
        (voice); GHL's DND and the dialer lists follow through the worker."""
        number = phone_or_422(settings_of(request), body.phone)
        outcome = await decide_and_tell(
            db_of(request), number, OPTED_OUT, channel=body.channel, reason=body.reason, actor=API_ACTOR
        )
        return _decision(outcome, number, body.channel)

    @router.delete("/optouts/{phone}", summary="Lift a number's opt-out (manual opt-in)")
    async def remove(
        request: Request,
        phone: PhonePath,
        reason: Annotated[str, Query(min_length=1, max_length=MAX_REASON_CHARS), Printable] = "manual opt-in",
        channel: Channel = "sms",
    ) -> dict[str, Any]:
        """Only after the person consented again (R-OPT-5): the number may be texted (sms) or
        dialled (voice) again; GHL's DND follows through the worker."""
        number = phone_or_422(settings_of(request), phone)
        outcome = await decide_and_tell(
            db_of(request), number, OPTED_IN, channel=channel, reason=reason, actor=API_ACTOR
        )
        return _decision(outcome, number, channel)

    @router.get("/optouts/{phone}", summary="One number: status, who decided, history")
    async def check(request: Request, phone: PhonePath) -> dict[str, Any]:
        """The SMS decision in force (`status` `none` when there never was one), the voice one,
        and every decision about the number, newest first."""
        number = phone_or_422(settings_of(request), phone)
        with service_errors():
            report = await consent_report(db_of(request), number)
        sms = report["sms"] or {}
        return {
            "phone": number,
            "status": sms.get("status", "none"),
            "source": sms.get("source"),
            "reason": sms.get("reason"),
            "last_event_at": sms.get("last_event_at"),
            "sms_allowed": report["sms_allowed"],
            "voice": report["voice"],
            "history": report["history"],
        }

    return router
