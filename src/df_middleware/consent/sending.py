"""The one way the middleware texts anybody (R-OPT-4): consent is asked at send time.

Every outbound SMS — an agent's message from GHL, a HELP reply, anything later — goes through
`send_sms`, which refuses a number whose SMS status is `opted_out` (`OptedOut`, raised before any
request leaves, so the effect ledger knows nothing was sent) and otherwise sends through Verity.
Checking here, not when the event was queued, is what makes a STOP processed a moment earlier win.
"""

from __future__ import annotations

from df_middleware.connectors.verity import SentMessage, VerityClient
from df_middleware.consent.store import sms_allowed
from df_middleware.db.session import Database
from df_middleware.errors import OptedOut


async def send_sms(
    db: Database, verity: VerityClient, phone: str, body: str, *, correlation_id: str | None = None
) -> SentMessage:
    """Send `body` to the E.164 `phone` through Verity, unless the person opted out."""
    if not await sms_allowed(db, phone):
        raise OptedOut(f"{phone} has opted out of SMS: not sent")
    return await verity.send_message(phone, body, correlation_id=correlation_id)
