"""Typed client of Verity's send-message API (the texting system; carrier Telnyx).

One call: `POST {VERITY_BASE_URL}/api/integrations/df-middleware/send-message` with
`Authorization: Bearer <VERITY_API_KEY>` and `{"to", "body", "from"?, "conversationId"?,
"correlationId"?}`, answered `200 {"messageId", "status": "queued"}`. Verity then posts
`message.sent` and `message.delivered`/`message.failed` webhooks carrying that `messageId`.

Sending an SMS is **not idempotent**: a request that timed out may still have been sent, and a
repeat would text the person twice. So `ServiceClient` makes exactly one attempt and a failure
surfaces as it is (`RemoteUnavailable` for a 5xx, 429 or timeout); the sync layer records each
send as an effect keyed by the GHL message id (R-TXT-5, R-IDEM-2) and decides about retrying.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import httpx
from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from df_middleware.config import Settings
from df_middleware.connectors.http import (
    ClientSettings,
    RemoteNotFound,
    RemoteRejected,
    RemoteUnauthorized,
    RemoteUnavailable,
    ServiceClient,
)
from df_middleware.connectors.status import ConnectionReport
from df_middleware.errors import InvalidPhoneNumber, UnexpectedResponse
from df_middleware.observability import mask_text
from df_middleware.phones import normalize_phone

SYSTEM: Final = "verity"
SEND_MESSAGE_PATH: Final = "/api/integrations/df-middleware/send-message"
SEND_MESSAGE_ENDPOINT: Final = f"POST {SEND_MESSAGE_PATH}"

__all__ = ["InvalidPhoneNumber", "SentMessage", "UnexpectedResponse", "VerityClient", "check_verity"]


def _message_id(value: Any) -> Any:
    """Verity's ids are strings; a number is accepted and kept as its string form."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


class SentMessage(BaseModel):
    """Verity's answer to a send: its message id (the key of the later receipts) and status."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    message_id: Annotated[str, BeforeValidator(_message_id)] = Field(
        validation_alias=AliasChoices("messageId", "message_id", "id")
    )
    status: str = "queued"


class VerityClient:
    """Verity's send-message API for the texting handlers (R-TXT-5, R-OPT-3 HELP replies)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        client_settings: ClientSettings | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        phone_region: str = "US",
    ) -> None:
        if not api_key:
            raise ValueError("VerityClient needs an api_key")
        self.phone_region = phone_region
        self.http = ServiceClient(
            SYSTEM,
            base_url,
            settings=client_settings,
            default_headers={"Authorization": f"Bearer {api_key}"},
            transport=transport,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> VerityClient | None:
        """The configured client, or None unless both VERITY_BASE_URL and VERITY_API_KEY are set."""
        key = settings.verity_api_key.get_secret_value() if settings.verity_api_key else ""
        if not settings.verity_base_url or not key:
            return None
        return cls(
            settings.verity_base_url,
            key,
            ClientSettings.from_settings(settings),
            transport=transport,
            phone_region=settings.default_phone_region,
        )

    def __repr__(self) -> str:
        return f"VerityClient(base_url={self.http.base_url!r})"

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> VerityClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    def _phone(self, raw: str, what: str) -> str:
        phone = normalize_phone(raw, self.phone_region)
        if phone is None:
            raise InvalidPhoneNumber(f"verity: `{what}` is not a valid phone number: {mask_text(str(raw))}")
        return phone

    async def send_message(
        self,
        to: str,
        body: str,
        *,
        from_number: str | None = None,
        conversation_id: str | None = None,
        correlation_id: str | None = None,
    ) -> SentMessage:
        """Send one SMS; returns Verity's message id. Exactly one attempt (see the module docstring).

        `to` and `from_number` are normalised to E.164 first; an invalid number raises
        `InvalidPhoneNumber` without any request. `correlation_id` is the GHL message id for
        sends that come from GHL, so Verity's receipts can be tied back even before the mapping
        is written.
        """
        payload: dict[str, Any] = {"to": self._phone(to, "to"), "body": body}
        if from_number is not None:
            payload["from"] = self._phone(from_number, "from")
        if conversation_id is not None:
            payload["conversationId"] = conversation_id
        if correlation_id is not None:
            payload["correlationId"] = correlation_id
        data = await self.http.request(
            "POST", SEND_MESSAGE_PATH, endpoint=SEND_MESSAGE_ENDPOINT, json=payload, idempotent=False
        )
        try:
            return SentMessage.model_validate(data)
        except ValidationError as exc:
            # The message may well have been sent: this is a contract breach to look at, not a
            # failure to retry (a retry could text the person twice).
            raise UnexpectedResponse(f"verity {SEND_MESSAGE_ENDPOINT}: answer without a messageId") from exc

    async def check(self) -> ConnectionReport:
        """Configured / reachable / authenticated, without sending anything. Never raises.

        Verity has no read-only endpoint we know of, so the check posts an *empty* JSON object to
        send-message. An empty body cannot be sent (no `to`, no `body`), so nothing reaches
        anyone. An API authenticates a request before it validates the body, hence: 401/403 means
        the key was refused; a 400/422 validation answer means the key was accepted and only the
        (deliberately) empty body was refused; 404 means VERITY_BASE_URL does not point at the
        API; a network error or timeout means unreachable.
        """
        report = ConnectionReport(system=SYSTEM, configured=True, detail={"base_url": self.http.base_url})
        try:
            await self.http.request(
                "POST", SEND_MESSAGE_PATH, endpoint=SEND_MESSAGE_ENDPOINT, json={}, idempotent=False
            )
        except RemoteUnauthorized:
            return _refused(report, 401)
        except RemoteNotFound:
            report.reachable = True
            report.reason = f"{SEND_MESSAGE_PATH} not found (404): check VERITY_BASE_URL"
            return report
        except RemoteRejected as exc:
            if exc.status_code == 403:
                return _refused(report, 403)
            report.reachable = report.authenticated = True
            report.detail["probe_status"] = exc.status_code
            return report
        except RemoteUnavailable as exc:
            report.reachable = exc.status_code is not None
            report.reason = f"{'unavailable' if report.reachable else 'unreachable'}: {exc}"
            return report
        except Exception as exc:  # a health check reports, it never raises
            report.reason = f"check failed: {type(exc).__name__}: {mask_text(str(exc))[:200]}"
            return report
        # A 2xx to an empty body is a contract breach, but it does prove the key was accepted.
        report.reachable = report.authenticated = True
        report.reason = "Verity accepted an empty send-message body (expected 400/422)"
        return report


def _refused(report: ConnectionReport, status: int) -> ConnectionReport:
    report.reachable, report.authenticated = True, False
    report.reason = f"API key refused (HTTP {status}): check VERITY_API_KEY"
    return report


async def check_verity(settings: Settings) -> ConnectionReport:
    """The Verity API report for `df-middleware check` / the admin connections view."""
    client = VerityClient.from_settings(settings)
    if client is None:
        missing = [
            name
            for name, value in (
                ("VERITY_BASE_URL", settings.verity_base_url),
                ("VERITY_API_KEY", settings.verity_api_key),
            )
            if not value
        ]
        return ConnectionReport.not_configured(SYSTEM, " and ".join(missing) or "VERITY_API_KEY")
    try:
        return await client.check()
    finally:
        await client.aclose()
