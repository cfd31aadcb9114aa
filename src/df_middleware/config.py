"""Settings: the only module that reads the environment (and `.env`).

Every value has a description; `docs/configuration.md` and `.env.example` are generated from this
model (`df-middleware config docs` / `config env-example`), and a test keeps them in step.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SQLITE_URL = "sqlite:///./df-middleware.db"


class Settings(BaseSettings):
    """Runtime configuration of DF-Middleware. Names are the environment variable names."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
    )

    # --- runtime -------------------------------------------------------------------------------
    database_url: str = Field(
        DEFAULT_SQLITE_URL,
        description="`sqlite:///path` or `postgresql://user@host:port/db`. "
        "SQLite (WAL mode) needs no server; PostgreSQL is the production engine.",
    )
    host: str = Field("127.0.0.1", description="HTTP bind address (`serve --host` overrides).")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port (`serve --port` overrides).")
    public_base_url: str | None = Field(
        None,
        description="URL the outside world reaches us at (OAuth redirect, dashboard links). "
        "Default `http://HOST:PORT`.",
    )
    db_pool_size: int = Field(
        25,
        ge=1,
        description="Database connections one process keeps open. A request that finds them all busy "
        "waits up to DB_POOL_TIMEOUT_SECONDS, then gets 503 (no connection churn under load).",
    )
    db_pool_timeout_seconds: float = Field(
        5.0, gt=0, description="How long a request waits for a free database connection before 503."
    )
    auto_migrate: bool = Field(True, description="`serve` and `worker` apply pending migrations on start.")
    serve_with_worker: bool = Field(
        True,
        description="`serve` also runs the worker and scheduler in-process (`serve --no-worker` sets false).",
    )

    df_admin_secret: SecretStr | None = Field(
        None,
        description="Secret of the admin API, the dashboard and `/leadconnector/oauth/start` "
        "(`Authorization: Bearer` or `X-DF-ADMIN-SECRET`). Unset: those answer 401.",
    )

    # --- GHL webhooks ----------------------------------------------------------------------------
    ghl_location_id: str | None = Field(
        None,
        description="The GHL sub-account we sync. Events of other locations (not installed through "
        "OAuth) are stored as `done` with reason `foreign location`.",
    )
    ghl_webhook_public_key: str | None = Field(
        None,
        description="PEM text, or a path to a PEM file, of the RSA key for `x-wh-signature`. "
        "Default: the key GHL publishes.",
    )
    ghl_webhook_ed25519_public_key: str | None = Field(
        None, description="PEM text, or a path to a PEM file, of the Ed25519 key for `x-ghl-signature`."
    )
    ghl_workflow_webhook_secret: SecretStr | None = Field(
        None,
        description="Shared secret that unsigned GHL workflow webhooks carry in `X-DF-Webhook-Secret`. "
        "Unset: unsigned requests are refused.",
    )
    ghl_webhook_tolerance_seconds: int = Field(
        300, ge=0, description="Replay window for the webhook `timestamp` (0 disables the check)."
    )

    # --- Aloware webhooks ------------------------------------------------------------------------
    aloware_webhook_basic_user: str | None = Field(None, description="HTTP Basic user Aloware sends.")
    aloware_webhook_basic_pass: SecretStr | None = Field(
        None, description="HTTP Basic password Aloware sends."
    )
    aloware_webhook_bearer_token: SecretStr | None = Field(None, description="Bearer token Aloware sends.")
    aloware_webhook_allowed_events: str | None = Field(
        None,
        description="Comma list of Aloware event names to store; others answer 200 `ignored`. Unset: all.",
    )

    # --- Verity webhooks -------------------------------------------------------------------------
    verity_webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 secret of texting (and, by default, broadcast) webhooks."
    )
    broadcast_webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 secret of broadcast webhooks; overrides VERITY_WEBHOOK_SECRET."
    )
    texting_allow_plain_secret: bool = Field(
        False,
        description="Accept `X-Texting-Secret: <secret>` instead of an HMAC signature (legacy senders).",
    )

    # --- GHL API and Marketplace OAuth -------------------------------------------------------------
    ghl_base_url: str = Field(
        "https://services.leadconnectorhq.com",
        description="GHL API v2 base URL (a simulator's URL in tests).",
    )
    ghl_api_key: SecretStr | None = Field(
        None,
        description="Private Integration Token for GHL_LOCATION_ID. Locations installed through OAuth "
        "use their own token instead.",
    )
    ghl_client_id: str | None = Field(None, description="Marketplace app client id (OAuth).")
    ghl_client_secret: SecretStr | None = Field(None, description="Marketplace app client secret (OAuth).")
    ghl_oauth_redirect_uri: str | None = Field(
        None,
        description="OAuth redirect URI registered with the app. "
        "Default `PUBLIC_BASE_URL/leadconnector/oauth`.",
    )
    ghl_oauth_authorize_url: str = Field(
        "https://marketplace.gohighlevel.com/oauth/chooselocation",
        description="GHL's choose-location page that `/leadconnector/oauth/start` redirects to.",
    )
    ghl_oauth_scopes: str = Field(
        "contacts.readonly contacts.write conversations.readonly conversations.write "
        "conversations/message.readonly conversations/message.write locations.readonly "
        "locations/customFields.readonly users.readonly objects/record.readonly objects/record.write",
        description="Space-separated scopes requested at install.",
    )
    ghl_conversation_provider_id: str | None = Field(
        None, description="GHL custom SMS conversation provider id (texting ⇄ GHL)."
    )
    ghl_call_provider_id: str | None = Field(
        None, description="GHL custom call provider id; set to log calls in GHL conversations."
    )
    ghl_rate_limit_max: int = Field(
        100, ge=1, description="GHL burst budget per location per interval (GHL publishes 100 / 10 s)."
    )
    ghl_rate_limit_interval_seconds: float = Field(
        10.0, gt=0, description="Length of GHL's burst window in seconds."
    )
    ghl_rate_limit_processes: int = Field(
        1,
        ge=1,
        description="Processes that call GHL for the same location (worker processes, plus `serve` "
        "when it runs the worker). Each takes an equal share of the budget; see docs/operations.md.",
    )
    token_encryption_key: SecretStr | None = Field(
        None,
        description="Fernet key encrypting OAuth tokens at rest; a comma list rotates keys (the first "
        "encrypts, all decrypt). Unset: generated into DATA_DIR on first start once OAuth is configured "
        "(with a warning). Several hosts must share one key.",
    )
    data_dir: str = Field(
        "./df-middleware-data", description="Directory for generated secrets (the token key file)."
    )

    # --- Aloware and Verity APIs -----------------------------------------------------------------
    aloware_base_url: str = Field("https://app.aloware.com/api/v1", description="Aloware API base URL.")
    aloware_api_token: SecretStr | None = Field(None, description="Aloware account `api_token`.")
    verity_base_url: str | None = Field(None, description="Verity base URL (send-message API).")
    verity_api_key: SecretStr | None = Field(None, description="Bearer key of Verity's send-message API.")
    verity_database_url: SecretStr | None = Field(
        None, description="Read-only `postgresql://` URL of Verity's database (broadcast analytics)."
    )

    # --- outbound HTTP ---------------------------------------------------------------------------
    http_timeout_seconds: float = Field(
        15.0, gt=0, description="Total timeout of one call to GHL, Aloware or Verity."
    )
    http_connect_timeout_seconds: float = Field(5.0, gt=0, description="Connect timeout of outbound calls.")
    http_max_retries: int = Field(
        2,
        ge=0,
        description="In-call retries (with jitter) of idempotent calls after a network error, 5xx or 429; "
        "beyond that the event's own retry schedule takes over.",
    )

    # --- sync behaviour ----------------------------------------------------------------------------
    contact_source_of_truth: Literal["ghl", "aloware", "merge"] = Field(
        "ghl",
        description="Who owns a contact's profile (R-C-2): `ghl` (Aloware only fills empty GHL fields), "
        "`aloware` (Aloware's profile is written to GHL), `merge` (per field, the newer change wins).",
    )
    display_timezone: str = Field(
        "America/New_York",
        description="IANA time zone of times written into GHL notes (call time, R-CALL-1).",
    )
    ghl_disposition_field_key: str | None = Field(
        None,
        description="GHL custom field (key) that receives Aloware's contact disposition (R-CALL-3). "
        "Unset: dispositions are kept as tags only.",
    )
    texting_sync_to_aloware: bool = Field(
        False, description="Mirror texting messages to the mapped Aloware contact (R-TXT-4)."
    )
    optout_removes_from_dialer: bool = Field(
        False,
        description="An SMS opt-out also takes the person's Aloware contact off every power-dialer "
        "list (R-OPT-3). Voice do-not-call always does.",
    )
    # --- agents, call lists and sequences (SPEC 6.5) --------------------------------------------
    agents_file: str | None = Field(
        None,
        description="YAML or JSON list of agents (keys = `agent_directory` columns, `agent_key` required), "
        "applied by `serve` and `worker` at start and by `agents seed` (R-AG-5).",
    )
    agent_list_keys: str = Field(
        "CALL_NOW,NEW_LEADS,FOLLOW_UP,HOT",
        description="Comma list of each agent's power-dialer list keys; lists are named "
        "`DF_<AGENT>_<LIST>` in Aloware (R-AG-2).",
    )
    default_agent_key: str = Field(
        "UNASSIGNED", min_length=1, max_length=64, description="Agent of a contact no rule matches (R-AG-1)."
    )
    tag_match_mode: Literal["exact", "case_insensitive", "regex"] = Field(
        "case_insensitive",
        description="How a GHL tag is compared with a list key: `exact`, `case_insensitive`, or `regex` "
        "(the list key is a pattern the whole tag must match) (R-AG-2).",
    )
    ghl_assigned_agent_field_key: str = Field(
        "assignedAgent",
        description="GHL custom field naming a contact's agent, matched against each definition's "
        "`fieldKey` (without `contact.`) or `name`, ignoring case and punctuation (R-AG-1).",
    )
    aloware_create_lists: bool = Field(
        False,
        description="Create a missing `DF_<AGENT>_<LIST>` list in Aloware; otherwise the membership is "
        "recorded as `blocked: list missing` (R-AG-3).",
    )
    enable_aloware_sequences: bool = Field(
        False, description="Enrol Aloware contacts in sequences by their `aloware_list_status` (R-AG-6)."
    )
    aloware_status_to_sequence: str | None = Field(
        None,
        description="Aloware list status → sequence id, as `status=id,status=id` or a JSON object "
        "(R-AG-6). A status not listed enrols in nothing.",
    )
    ghl_broadcast_object_key: str = Field(
        "custom_objects.broadcasts",
        min_length=1,
        max_length=256,
        description="GHL custom object that holds one record per broadcast (R-BC-2).",
    )
    help_reply_text: str | None = Field(
        None,
        max_length=1600,
        description="Text sent through Verity to a person who texts HELP or INFO, at most once per 24 h "
        "per number and never to an opted-out number (R-OPT-3). Unset: no reply.",
    )

    # --- ingest limits ---------------------------------------------------------------------------
    max_webhook_bytes: int = Field(
        1_048_576, ge=1024, description="Largest accepted webhook body (413 above)."
    )
    max_json_depth: int = Field(32, ge=2, description="Deepest JSON nesting accepted in a webhook body.")
    max_json_values: int = Field(
        50_000,
        ge=100,
        description="Most JSON values (objects, arrays and list items, counted by `{`, `[` and `,`) "
        "accepted in a webhook body (413 above): parsed JSON can take 60 times its size in memory.",
    )
    ingest_rate_limit_per_second: int = Field(
        1000,
        ge=0,
        description="Authenticated webhooks accepted per source per second by one server process "
        "(429 with Retry-After above it). 0 disables the limit.",
    )
    default_phone_region: str = Field(
        "US", min_length=2, max_length=2, description="Region for phone numbers without a country code."
    )
    ingest_max_bytes_in_flight: int = Field(
        16 * 1_048_576,
        ge=1024,
        description="Webhook body bytes one server process reads and holds at once (raised to "
        "MAX_WEBHOOK_BYTES if lower), counted as they arrive. A request whose next piece would exceed "
        "it waits up to INGEST_BUDGET_WAIT_SECONDS, unread, then gets 503 with Retry-After: memory "
        "stays bounded however many large bodies arrive together.",
    )
    ingest_budget_wait_seconds: float = Field(
        5.0, ge=0, description="How long a webhook waits for room under INGEST_MAX_BYTES_IN_FLIGHT."
    )

    # --- HTTP server -----------------------------------------------------------------------------
    max_request_header_bytes: int = Field(
        16384,
        ge=1024,
        description="Largest request line plus headers accepted (431 and the connection closed above).",
    )
    http_header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Time a client has to send its request line and headers (408, or the connection "
        "closed when it sent nothing).",
    )
    http_body_timeout_seconds: float = Field(
        30.0, gt=0, description="Time a client has to send a request's whole body (408 after it)."
    )
    http_keep_alive_seconds: float = Field(
        5.0, ge=1, description="An idle keep-alive connection is closed after this many seconds."
    )

    # --- queue -----------------------------------------------------------------------------------
    max_attempts: int = Field(10, ge=1, description="Attempts before an event is dead-lettered (`error`).")
    retry_base_seconds: float = Field(10.0, gt=0, description="First retry delay; doubles per attempt.")
    retry_max_seconds: float = Field(
        3600.0, gt=0, description="Cap of the retry delay (full jitter below it)."
    )
    lease_seconds: int = Field(
        300, ge=5, description="How long a claimed event stays leased before another worker may take it."
    )
    poll_seconds: float = Field(1.0, gt=0, description="Idle poll interval (LISTEN/NOTIFY wakes sooner).")
    worker_batch: int = Field(50, ge=1, description="Most events claimed per claim query.")
    worker_concurrency: int = Field(8, ge=1, description="Events processed at once by one worker process.")
    shutdown_grace_seconds: float = Field(
        20.0, ge=0, description="On SIGTERM, time in-flight events get to finish before being released."
    )
    retention_days: int = Field(
        30,
        ge=1,
        description="`done` events older than this are pruned; so are sync_log rows and effects "
        "older than this whose event is gone, and unused ledger rows (docs/operations.md, Retention).",
    )
    prune_batch_size: int = Field(1000, ge=1, description="Rows deleted per prune statement.")
    echo_ttl_seconds: int = Field(900, ge=1, description="Lifetime of echo fingerprints of our own writes.")
    reconcile_interval: str = Field(
        "6h",
        description="How often the scheduler runs each reconcile job (contacts, lists, optouts), the "
        "first run one interval after start: a number with `s`, `m`, `h` or `d` (`6h`, `90m`), or "
        "seconds. `0` turns the scheduled runs off (`df-middleware reconcile` still works).",
    )

    # --- observability ---------------------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="`json`, `console`, or `auto` (console on a terminal, JSON otherwise)."
    )
    log_reveal_pii: bool = Field(
        False, description="Log phones, emails and message bodies unmasked (debugging only)."
    )
    metrics_token: SecretStr | None = Field(
        None, description="When set, `/metrics` needs `Authorization: Bearer <token>`."
    )
    alert_webhook_url: SecretStr | None = Field(
        None,
        description="Slack-compatible incoming-webhook URL the alert checks post to (it carries a "
        "secret: never logged); unset, no alert checks run (docs/operations.md, Alerts).",
    )
    alert_queue_age_seconds: int = Field(
        600, ge=1, description="Alert when the oldest pending event has waited longer than this."
    )
    alert_cooldown_seconds: int = Field(
        900, ge=0, description="An alert that persists is repeated at most this often."
    )

    @model_validator(mode="wrap")
    @classmethod
    def _empty_means_unset(cls, data: Any, handler: ModelWrapValidatorHandler[Settings]) -> Settings:
        """An optional setting given as an empty (or blank) string is unset, never an empty secret:
        `VERITY_WEBHOOK_SECRET=` must not make an HMAC with the empty key valid (R-IN-1: fail
        closed). The names are kept for `df-middleware check` to report."""
        blank: list[str] = []
        if isinstance(data, Mapping):
            data = dict(data)
            for key, value in list(data.items()):
                field = cls.model_fields.get(str(key).lower())
                if (
                    field is not None
                    and field.default is None
                    and isinstance(value, str)
                    and not value.strip()
                ):
                    data[key] = None
                    blank.append(str(key).upper())
        settings = handler(data)
        settings._blank_settings = tuple(sorted(blank))
        return settings

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        scheme = value.split(":", 1)[0].split("+", 1)[0]
        if scheme not in {"sqlite", "postgresql", "postgres"}:
            raise ValueError("DATABASE_URL must start with sqlite:// or postgresql://")
        if scheme == "sqlite":
            path = value.split("://", 1)[1] if "://" in value else ""
            if path.lstrip("/") in {"", ":memory:"} or "mode=memory" in path:
                # Each connection (migrations, server, worker) would see its own empty database.
                raise ValueError("an in-memory SQLite database cannot be shared: give a file, sqlite:///path")
        return value

    @field_validator("aloware_status_to_sequence")
    @classmethod
    def _sequence_map(cls, value: str | None) -> str | None:
        raw = (value or "").strip()
        if raw.startswith("{"):
            try:
                loaded = json.loads(raw)
            except ValueError as exc:
                raise ValueError(f"not a JSON object: {exc}") from None
            if not isinstance(loaded, dict):
                raise ValueError("must be a JSON object of status → sequence id")
        elif raw:
            for item in raw.split(","):
                if item.strip() and "=" not in item:
                    raise ValueError(f"{item.strip()!r} is not status=sequence_id")
        return value

    @field_validator("reconcile_interval")
    @classmethod
    def _reconcile_interval(cls, value: str) -> str:
        interval_seconds(value)
        return value.strip()

    @field_validator("agent_list_keys")
    @classmethod
    def _list_keys(cls, value: str) -> str:
        keys = [k.strip() for k in value.split(",") if k.strip()]
        if not keys:
            raise ValueError("needs at least one list key")
        for key in keys:
            if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", key):
                raise ValueError(f"{key!r}: list keys are letters, digits and _ (at most 64)")
        return value

    @field_validator("default_phone_region")
    @classmethod
    def _upper_region(cls, value: str) -> str:
        return value.upper()

    _blank_settings: tuple[str, ...] = PrivateAttr(default=())

    # --- derived -------------------------------------------------------------------------------
    @property
    def blank_settings(self) -> tuple[str, ...]:
        """Optional settings that were given empty, and are therefore unset."""
        return self._blank_settings

    @property
    def base_url(self) -> str:
        return self.public_base_url or f"http://{self.host}:{self.port}"

    @property
    def allowed_aloware_events(self) -> frozenset[str] | None:
        """Lower-cased allow list, or None when every event is allowed."""
        if not self.aloware_webhook_allowed_events:
            return None
        names = {n.strip().lower() for n in self.aloware_webhook_allowed_events.split(",") if n.strip()}
        return frozenset(names) or None

    @property
    def oauth_redirect_uri(self) -> str:
        return self.ghl_oauth_redirect_uri or f"{self.base_url.rstrip('/')}/leadconnector/oauth"

    @property
    def list_keys(self) -> tuple[str, ...]:
        """AGENT_LIST_KEYS as a tuple of upper-cased keys, in order, without blanks or repeats."""
        keys: list[str] = []
        for raw in self.agent_list_keys.split(","):
            key = raw.strip().upper()
            if key and key not in keys:
                keys.append(key)
        return tuple(keys)

    @property
    def status_to_sequence(self) -> dict[str, str]:
        """ALOWARE_STATUS_TO_SEQUENCE as {lower-cased status: sequence id}."""
        raw = (self.aloware_status_to_sequence or "").strip()
        if not raw:
            return {}
        if raw.startswith("{"):
            loaded = json.loads(raw)
            pairs = [(str(k), str(v)) for k, v in loaded.items()]
        else:
            pairs = []
            for item in raw.split(","):
                if item.strip():
                    status, _, sequence = item.partition("=")
                    pairs.append((status, sequence))
        return {s.strip().lower(): q.strip() for s, q in pairs if s.strip() and q.strip()}

    @property
    def reconcile_interval_seconds(self) -> float:
        """RECONCILE_INTERVAL in seconds (0: scheduled reconcile runs are off)."""
        return interval_seconds(self.reconcile_interval)

    @property
    def broadcast_secret(self) -> SecretStr | None:
        return self.broadcast_webhook_secret or self.verity_webhook_secret


_INTERVAL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def interval_seconds(value: str) -> float:
    """A duration as the spec writes it (`6h`, `90m`, `30s`, `1d`, or plain seconds) in seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value.lower())
    if match is None:
        raise ValueError(f"{value!r} is not a duration: a number with s, m, h or d (e.g. 6h, 90m)")
    return float(match.group(1)) * _INTERVAL_UNITS[match.group(2)]


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests build `Settings(...)` directly instead."""
    return Settings()


def settings_reference() -> list[tuple[str, str, str]]:
    """(ENV_NAME, default, description) for every setting, in declaration order."""
    rows: list[tuple[str, str, str]] = []
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "unset" if default is None or isinstance(default, SecretStr) else str(default)
        rows.append((name.upper(), shown, field.description or ""))
    return rows


def configuration_markdown() -> str:
    """The text of docs/configuration.md."""
    lines = [
        "# Configuration",
        "",
        "Generated from `src/df_middleware/config.py` by `df-middleware config docs`; do not edit by hand.",
        "",
        "Every setting is an environment variable (a `.env` file in the working directory is read too).",
        "All are optional: a feature whose settings are missing is disabled with a clear message.",
        "",
        "| name | default | meaning |",
        "|---|---|---|",
    ]
    for env, default, description in settings_reference():
        lines.append(f"| `{env}` | `{default}` | {description} |")
    return "\n".join(lines) + "\n"


def env_example() -> str:
    """The text of .env.example: every setting, commented out, with its default."""
    lines = ["# DF-Middleware settings. Generated by `df-middleware config env-example`.", ""]
    for env, default, description in settings_reference():
        lines.append(f"# {description}")
        lines.append(f"# {env}={'' if default == 'unset' else default}")
        lines.append("")
    return "\n".join(lines)
