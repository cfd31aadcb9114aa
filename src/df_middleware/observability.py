"""Logging (structlog, PII masked by default) and the Prometheus metrics of SPEC §8.4.

Every metric the service exposes is declared here, so `/metrics` has one catalogue and modules
import the metric they update instead of declaring their own.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram

# --- PII masking ---------------------------------------------------------------------------------

#: Keys whose values are secrets: never logged, whatever their shape.
SECRET_KEYS = frozenset(
    {
        "api_token",
        "api_key",
        "authorization",
        "token",
        "access_token",
        "refresh_token",
        "secret",
        "password",
        "client_secret",
        "x-df-webhook-secret",
        "x-texting-secret",
        "cookie",
    }
)
#: Keys whose values are message text: logged as their length only.
BODY_KEYS = frozenset({"body", "message", "text", "html", "message_body", "sms"})
#: Keys whose values are phone numbers or emails.
CONTACT_KEYS = frozenset(
    {"phone", "phone_number", "from", "to", "from_number", "to_number", "email", "emailto", "emailfrom"}
)

# The masking patterns run on text an outsider controls (a header, a payload field), so each
# must take time linear in its input: a match may only start where a token starts (the
# look-behinds) and runs are consumed possessively (`*+`), never re-scanned from every offset.
_EMAIL_RE = re.compile(
    r"(?<![A-Za-z0-9._%+-])([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*+@([A-Za-z0-9.-]+\.[A-Za-z]{2,})"
)
#: A run of phone characters starting at a token boundary; `_mask_phone_run` decides whether it
#: is a phone number (seven digits or more, not glued to a word that follows).
_PHONE_RUN_RE = re.compile(r"(?<![\w/-])\+?\d[\d\s().-]*+(?P<next>\w?)")
_NOT_A_PHONE_RE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}(?!\d)|\d{4}-\d{2}-\d{2}(?!\d)")
_TOKEN_PARAM_RE = re.compile(r"((?:api_token|token|access_token|key)=)[^&\s]+", re.IGNORECASE)
#: Longest string value a log line carries; the rest is cut (its length is kept). A log line is
#: not a place for a megabyte of someone's input, and this bounds what masking has to read.
MAX_LOGGED_CHARS = 1024
#: The same bound for a traceback, which is longer by nature.
MAX_LOGGED_TRACEBACK_CHARS = 16384


def mask_phone(value: str) -> str:
    """`+19195551234` → `+1919***1234`: enough to tell numbers apart in a log, not to dial."""
    digits = re.sub(r"\D", "", value)
    if len(digits) < 7:
        return "***"
    prefix = "+" if value.strip().startswith("+") else ""
    return f"{prefix}{digits[:4]}***{digits[-4:]}"


def mask_email(value: str) -> str:
    return _EMAIL_RE.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", value)


def _mask_phone_run(match: re.Match[str]) -> str:
    run, following = match.group(0), match.group("next")
    if following and run[-len(following) - 1] in "0123456789-":
        # Digits that run straight into a word are an identifier, not a phone number.
        return run
    last_digit = max(run.rfind(d) for d in "0123456789")
    number, rest = run[: last_digit + 1], run[last_digit + 1 :]
    digits = sum(ch.isdigit() for ch in number)
    # A phone has ten digits or more (eight with its country code), and is not an IPv4 address
    # or a date: those are what a log line holds most often besides phones.
    if digits < (8 if number.startswith("+") else 10) or _NOT_A_PHONE_RE.match(number):
        return run
    return mask_phone(number) + rest


def mask_text(value: str) -> str:
    """Mask emails, phone-like runs and token query parameters inside free text (linear time)."""
    value = _TOKEN_PARAM_RE.sub(r"\1***", value)
    value = mask_email(value)
    return _PHONE_RUN_RE.sub(_mask_phone_run, value)


def truncate_for_log(value: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """`value` cut to `limit` characters, saying how long it was."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}…[{len(value)} chars]"


def mask_value(key: str, value: Any) -> Any:
    """Mask one value according to its key (recursively for containers)."""
    lowered = key.lower()
    if lowered in SECRET_KEYS:
        return "***" if value not in (None, "") else value
    if isinstance(value, Mapping):
        return {k: mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_value(key, v) for v in value]
    if not isinstance(value, str):
        return value
    if lowered in BODY_KEYS:
        return f"[{len(value)} chars]"
    if lowered in CONTACT_KEYS:
        return mask_email(value) if "@" in value else mask_phone(value)
    return mask_text(value)


def mask_payload(payload: Any) -> Any:
    """A copy of a webhook payload with PII and secrets masked (logs, admin views)."""
    if isinstance(payload, Mapping):
        return {k: mask_value(str(k), v) for k, v in payload.items()}
    return payload


#: Columns of an event row that may carry a phone number besides the payload.
_EVENT_PHONE_COLUMNS = ("ordering_key", "from_number", "to_number", "dedupe_key")


def mask_event_detail(detail: Mapping[str, Any]) -> dict[str, Any]:
    """An event as shown to an operator (CLI, admin API): payload and phone-bearing columns masked,
    and so are its sync_log rows and effects (a texting event's entity id, its log messages and
    its effect keys carry the number: "+1919… opted out of SMS")."""
    masked = dict(detail)
    if "payload" in masked:
        masked["payload"] = mask_payload(masked["payload"])
    for column in (*_EVENT_PHONE_COLUMNS, "entity_id", "error_message", "conversation_id"):
        if isinstance(masked.get(column), str):
            masked[column] = mask_text(masked[column])
    for rows in ("sync_log", "effects", "quarantine"):
        if isinstance(masked.get(rows), list | dict):
            masked[rows] = _mask_rows(masked[rows])
    return masked


#: The columns of an event's sync_log rows, effects and quarantine that may quote a number.
_EVENT_ROW_TEXT = ("entity_id", "source_id", "target_id", "message", "error_message", "effect_key", "reason")


def _mask_rows(value: Any) -> Any:
    """The text columns of sync_log rows, effects or a quarantine record through `mask_text`."""
    if isinstance(value, list):
        return [_mask_rows(v) for v in value]
    if isinstance(value, dict):
        return {
            k: mask_text(v) if isinstance(v, str) and k in _EVENT_ROW_TEXT else v for k, v in value.items()
        }
    return value


def _bound_processor(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """Cut long strings (top-level values and one level into containers) before anything reads
    them: whatever a sender puts in a header or field, a log line stays small."""
    for key, value in list(event_dict.items()):
        limit = MAX_LOGGED_TRACEBACK_CHARS if key == "exception" else MAX_LOGGED_CHARS
        if isinstance(value, str):
            event_dict[key] = truncate_for_log(value, limit)
        elif isinstance(value, bytes):
            event_dict[key] = truncate_for_log(value.decode("utf-8", "replace"), limit)
        elif isinstance(value, Mapping):
            event_dict[key] = {
                k: truncate_for_log(v) if isinstance(v, str) else v for k, v in list(value.items())[:50]
            }
        elif isinstance(value, list | tuple):
            event_dict[key] = [truncate_for_log(v) if isinstance(v, str) else v for v in value[:50]]
    return event_dict


def _mask_processor(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> Mapping[str, Any]:
    for key, value in list(event_dict.items()):
        if key in {"event", "level", "timestamp", "logger"}:
            if key == "event" and isinstance(value, str):
                event_dict[key] = mask_text(value)
            continue
        event_dict[key] = mask_value(key, value)
    return event_dict


def configure_logging(level: str = "info", fmt: str = "auto", *, reveal_pii: bool = False) -> None:
    """Configure structlog and the standard library logging it feeds into."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _bound_processor,
    ]
    if not reveal_pii:
        processors.append(_mask_processor)
    processors.append(
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


# --- metrics -------------------------------------------------------------------------------------

WEBHOOKS_RECEIVED = Counter("df_webhooks_received_total", "Webhook requests received.", ["source"])
WEBHOOKS_ACCEPTED = Counter("df_webhooks_accepted_total", "Webhooks stored as new events.", ["source"])
WEBHOOKS_DUPLICATE = Counter("df_webhooks_duplicate_total", "Webhooks that were duplicates.", ["source"])
WEBHOOKS_IGNORED = Counter("df_webhooks_ignored_total", "Webhooks answered 'ignored' by filter.", ["source"])
WEBHOOKS_REJECTED = Counter(
    "df_webhooks_rejected_total", "Webhooks refused, by HTTP status.", ["source", "status"]
)
INGEST_LATENCY = Histogram(
    "df_ingest_latency_seconds",
    "Time from request to stored-and-answered.",
    ["source"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
QUEUE_DEPTH = Gauge("df_queue_depth", "Events per table and status.", ["table", "status"])
QUEUE_OLDEST_PENDING_AGE = Gauge(
    "df_queue_oldest_pending_age_seconds", "Age of the oldest pending event.", ["table"]
)
EVENTS_PROCESSED = Counter(
    "df_events_processed_total", "Processing outcomes by handler.", ["handler", "outcome"]
)
PROCESSING_DURATION = Histogram(
    "df_event_processing_seconds",
    "Handler run time.",
    ["handler"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
CLAIM_LATENCY = Histogram(
    "df_event_start_latency_seconds",
    "Time from an event being stored to its handler starting (first attempt).",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# External APIs (connectors). `endpoint` is the route template (e.g. `GET /contacts/{id}`), never a
# concrete path, so ids and phone numbers never become label values.
EXTERNAL_CALLS = Counter(
    "df_external_api_calls_total",
    "Calls to external APIs, by system, endpoint and outcome class (2xx, 4xx, 5xx, 429, network).",
    ["system", "endpoint", "outcome"],
)
EXTERNAL_LATENCY = Histogram(
    "df_external_api_latency_seconds",
    "Duration of one external API call (one HTTP exchange, retries counted separately).",
    ["system", "endpoint"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
EXTERNAL_ERRORS = Counter(
    "df_external_api_errors_total",
    "External calls that failed (network error, timeout or non-2xx), by system and endpoint.",
    ["system", "endpoint"],
)
EXTERNAL_RATE_LIMITED = Counter(
    "df_external_api_429_total", "429 answers from external APIs.", ["system", "endpoint"]
)
RATE_LIMITER_WAIT = Histogram(
    "df_rate_limiter_wait_seconds",
    "Time a call waited for the GHL rate limiter before being sent.",
    ["system"],
    buckets=(0.0, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
OAUTH_REFRESHES = Counter("df_oauth_refreshes_total", "GHL OAuth token refreshes, by outcome.", ["outcome"])
