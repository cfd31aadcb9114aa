"""`/admin/optouts` (SPEC §8.2, R-OPT-2, R-OPT-5): the consent registry newest first, a number's
history, and the operator's manual opt-out and opt-in.

A manual decision goes through `queue/operator_events.decide_and_tell`, exactly as
`df-middleware optout add|remove` does: recorded (source `manual`, with the actor) and queued to
be told to GHL and the dialer in one transaction. From then on every send path's consent check
refuses an opted-out number.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from df_middleware.admin.dashboard.events import DASHBOARD_ACTOR, text_filter
from df_middleware.admin.dashboard.records import phone_filter
from df_middleware.admin.dashboard.render import page, redirect_with_flash
from df_middleware.admin.dashboard.session import AdminSession, checked_form, require_session
from df_middleware.admin.records import CONSENT_STATUSES, list_optouts
from df_middleware.consent.decisions import Channel, Status
from df_middleware.consent.manual import MAX_REASON_CHARS, consent_report
from df_middleware.observability import mask_phone, mask_text
from df_middleware.queue.operator_events import decide_and_tell

CHANNELS = ("sms", "voice")


def _reason_masked(row: dict[str, Any]) -> dict[str, Any]:
    """A row with its free-text reason masked: it can name someone's number or email (R-SEC-4,
    break13b finding 7)."""
    reason = row.get("reason")
    return {**row, "reason": mask_text(reason)} if isinstance(reason, str) else row


def optouts_router() -> APIRouter:
    router = APIRouter()

    async def render(
        request: Request, session: AdminSession, *, status_code: int = 200, form_error: str | None = None
    ) -> Response:
        query = request.query_params
        channel = query.get("channel") or "sms"
        status = (query.get("status") or "").strip()
        raw_phone = (query.get("phone") or "").strip()
        items: list[dict[str, Any]] = []
        next_cursor = None
        report = None
        error = None
        try:
            if channel not in CHANNELS:
                raise ValueError("channel must be sms or voice")
            phone = phone_filter(request.app.state.settings, raw_phone)
            result = await list_optouts(
                request.app.state.db,
                status=status or None,
                phone=phone,
                channel=channel,
                cursor=text_filter(query.get("cursor"), "cursor"),
            )
            items, next_cursor = [_reason_masked(item) for item in result.items], result.next_cursor
            if phone is not None:
                report = await consent_report(request.app.state.db, phone)
                report["phone_number"] = mask_phone(phone)
                report["history"] = [_reason_masked(entry) for entry in report["history"]]
                for channel in CHANNELS:
                    if report.get(channel):
                        report[channel] = _reason_masked(report[channel])
        except ValueError as exc:
            error = str(exc)
        return page(
            request,
            "optouts.html",
            session=session,
            status_code=422 if error else status_code,
            error=error,
            form_error=form_error,
            channel=channel,
            channels=CHANNELS,
            status=status,
            statuses=CONSENT_STATUSES,
            phone=raw_phone,
            items=items,
            next_cursor=next_cursor,
            paged=bool(query.get("cursor")),
            report=report,
            max_reason=MAX_REASON_CHARS,
        )

    @router.get("/admin/optouts", include_in_schema=False)
    async def optouts_page(request: Request, session: AdminSession = Depends(require_session)) -> Response:
        return await render(request, session)

    @router.post("/admin/optouts/{decision}", include_in_schema=False)
    async def decide(
        request: Request, decision: str, session: AdminSession = Depends(require_session)
    ) -> Response:
        fields = await checked_form(request, session)
        if decision not in ("opt-out", "opt-in"):
            return page(
                request, "not_found.html", session=session, status_code=404, what=f"decision {decision[:40]}"
            )
        channel = fields.get("channel") or "sms"
        reason = (fields.get("reason") or "").strip()
        try:
            if channel not in CHANNELS:
                raise ValueError("channel must be sms or voice")
            if not reason:
                raise ValueError("give a reason: it is kept in the number's history")
            if len(reason) > MAX_REASON_CHARS:
                raise ValueError(f"the reason is longer than {MAX_REASON_CHARS} characters")
            phone = phone_filter(request.app.state.settings, fields.get("phone"))
            if phone is None:
                raise ValueError("give the phone number")
        except ValueError as exc:
            return await render(request, session, status_code=422, form_error=str(exc))
        status: Status = "opted_out" if decision == "opt-out" else "opted_in"
        which: Channel = "voice" if channel == "voice" else "sms"
        outcome = await decide_and_tell(
            request.app.state.db, phone, status, channel=which, reason=reason, actor=DASHBOARD_ACTOR
        )
        shown = mask_phone(phone)
        if not outcome.decision.applies:
            said, level = f"{shown}: unchanged ({outcome.decision.why}).", "ok"
        elif status == "opted_out":
            what = "SMS" if channel == "sms" else "calls (do-not-call)"
            said = f"{shown}: opted out of {what}; GHL and the dialer follow."
            level = "ok"
        else:
            said = f"{shown}: opt-out lifted for {'SMS' if channel == 'sms' else 'calls'}; GHL follows."
            level = "ok"
        return redirect_with_flash(request, f"/admin/optouts?channel={channel}", said, level)

    return router
