"""GHL Marketplace OAuth tokens: encrypted at rest, refreshed ahead of expiry, once, under a lock.

Three pieces, in the order a reader needs them:

- `TokenCipher` (R-SEC-5): Fernet encryption of the token columns. The key is TOKEN_ENCRYPTION_KEY,
  or, when unset, a key generated once into `DATA_DIR/token-encryption.key` (mode 0600) and
  reused afterwards. A comma-separated list of keys is accepted for rotation: the first encrypts,
  all decrypt. The OAuth `state` signing key is derived from it, so there is one secret to keep.
- `GhlTokenStore` (R-OA-1, R-OA-3): the code exchange of the OAuth callback, the per-location
  token row, and refresh. GHL refresh tokens are **single use**: two processes that both refresh
  the same location with the same refresh token leave one of them holding a dead token, and the
  installation broken. So every refresh happens inside a database lock on the location's row
  (PostgreSQL `SELECT … FOR UPDATE`; on SQLite the write transaction `Database.session()` begins
  with `BEGIN IMMEDIATE`), re-reads the row inside the lock, and skips the call when another
  holder already refreshed it. A per-location asyncio lock in front of it keeps one process's
  coroutines from queueing on the database. Tokens are not cached in memory: reading the row is
  cheap next to a GHL call, and a cache would go stale across processes (another process's
  refresh, an uninstall, a re-install).
- `GhlCredentials`: what the GHL connector asks for a bearer token — the location's OAuth token
  when one is installed, else the Private Integration Token of GHL_LOCATION_ID.

Nothing here logs, prints or puts into an exception message a token, a refresh token, a client
secret or a key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Select, delete, select
from sqlalchemy.exc import IntegrityError
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from df_middleware.config import Settings

# One class for "no credentials for this location", whichever module finds out: the GHL
# connector's health check catches it. Re-exported from here.
from df_middleware.connectors.ghl import MissingGhlCredentials as MissingGhlCredentials
from df_middleware.connectors.http import (
    ClientSettings,
    RemoteError,
    RemoteRejected,
    RemoteUnauthorized,
    RemoteUnavailable,
    ServiceClient,
    remote_error_text,
)
from df_middleware.connectors.status import ConnectionReport
from df_middleware.db.models import GhlOauthToken
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.errors import PermanentError, RetryableError
from df_middleware.observability import OAUTH_REFRESHES, get_logger, mask_text

log = get_logger(__name__)

KEY_FILE_NAME = "token-encryption.key"
TOKEN_PATH = "/oauth/token"  # noqa: S105 - a URL path, not a secret
TOKEN_ENDPOINT = "POST /oauth/token"  # noqa: S105 - a metrics label
#: A token is refreshed on use when it expires within this margin (R-OA-3).
REFRESH_MARGIN = timedelta(minutes=5)
#: The scheduler refreshes every token that expires within this window (R-OA-3).
SCHEDULED_REFRESH_WINDOW = timedelta(minutes=30)
#: After a failed refresh, a still-valid token keeps being used, and the refresh on use is not
#: tried again sooner than this (a failing GHL must not cost one extra call per API call).
FAILED_REFRESH_BACKOFF = timedelta(seconds=60)
#: A token with less life than this left is not handed out when its refresh failed.
MIN_USABLE_LIFETIME = timedelta(seconds=30)
#: At most one refresh per location per this interval is triggered by 401s: GHL also answers 401
#: for a token that lacks a scope, and refreshing cannot fix that, so a stream of such calls must
#: not become a stream of refreshes.
UNAUTHORIZED_REFRESH_INTERVAL_SECONDS = 60.0
#: Attempts to store a refreshed token after the first commit failed (GHL has already rotated it).
_STORE_GRANT_ATTEMPTS = 5
#: Longest failure reason kept on the token row (it is shown on the dashboard).
_MAX_ERROR_CHARS = 500
INSTALL_HINT = "GET /leadconnector/oauth/start (or `df-middleware oauth start-url`)"

TokenState = Literal["live", "expiring", "expired", "refresh_failed"]


# --- errors ----------------------------------------------------------------------------------------


class TokenKeyError(Exception):
    """The token encryption key is missing, malformed or unreadable: a startup configuration error."""


class NotInstalled(MissingGhlCredentials):
    """No OAuth token row for the location (never installed, or uninstalled)."""

    def __init__(self, location_id: str) -> None:
        super().__init__(
            f"GHL location {location_id} has no OAuth installation: install the app with {INSTALL_HINT}"
        )
        self.location_id = location_id


class TokenDecryptError(PermanentError):
    """A stored token cannot be decrypted: TOKEN_ENCRYPTION_KEY is not the key it was stored with."""


class TokenResponseInvalid(PermanentError):
    """GHL's token response lacks what we need (tokens, expiry, a location)."""


class RefreshFailure(Exception):
    """Marker of every way a refresh can fail (both the retryable and the permanent kinds)."""


class TokenRefreshUnavailable(RetryableError, RefreshFailure):
    """The refresh did not go through but may later (network error, timeout, 5xx, 429, 401)."""


class TokenRefreshRejected(PermanentError, RefreshFailure):
    """GHL refused the refresh; sending it again cannot succeed."""


class InstallationBroken(TokenRefreshRejected):
    """GHL answered `invalid_grant`: the refresh token is dead, only a re-install helps."""


class OAuthNotConfigured(PermanentError, RefreshFailure):
    """GHL_CLIENT_ID / GHL_CLIENT_SECRET are missing, so no code exchange or refresh is possible."""


# --- configuration helpers -------------------------------------------------------------------------


def missing_oauth_settings(settings: Settings) -> list[str]:
    """Names of the settings Marketplace OAuth still needs (empty when it is configured)."""
    missing = []
    if not settings.ghl_client_id:
        missing.append("GHL_CLIENT_ID")
    if settings.ghl_client_secret is None or not settings.ghl_client_secret.get_secret_value():
        missing.append("GHL_CLIENT_SECRET")
    return missing


def oauth_configured(settings: Settings) -> bool:
    return not missing_oauth_settings(settings)


# --- the cipher (R-SEC-5) ----------------------------------------------------------------------------


class TokenCipher:
    """Fernet encryption of tokens at rest. Its repr names where the key came from, never the key."""

    def __init__(self, keys: str, *, source: str = "TOKEN_ENCRYPTION_KEY") -> None:
        parts = [part.strip() for part in keys.split(",") if part.strip()]
        if not parts:
            raise TokenKeyError(f"{source} is empty")
        fernets: list[Fernet] = []
        for part in parts:
            try:
                fernets.append(Fernet(part.encode()))
            except (ValueError, binascii.Error, TypeError):
                raise TokenKeyError(
                    f"{source} is not a valid Fernet key (32 url-safe base64-encoded bytes; a comma "
                    'list for rotation). Generate one with: python -c "from cryptography.fernet '
                    'import Fernet; print(Fernet.generate_key().decode())"'
                ) from None
        self.source = source
        self._fernet = MultiFernet(fernets)
        self._primary = base64.urlsafe_b64decode(parts[0].encode())

    def __repr__(self) -> str:
        return f"TokenCipher(source={self.source!r})"

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise TokenDecryptError(
                f"a stored OAuth token cannot be decrypted with the key from {self.source}: it was "
                "encrypted with another key (restore that key, or re-install the app)"
            ) from None

    def derive_key(self, purpose: str) -> bytes:
        """A key for another purpose (the OAuth state signature), independent of the Fernet key
        itself: knowing a derived key reveals nothing about the one that encrypts tokens."""
        return hmac.new(self._primary, f"df-middleware:{purpose}".encode(), hashlib.sha256).digest()


def token_key_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / KEY_FILE_NAME


def _read_key_file(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise TokenKeyError(f"cannot read the token key file {path}: {exc.strerror}") from None
    if not text:
        raise TokenKeyError(f"the token key file {path} is empty; delete it or set TOKEN_ENCRYPTION_KEY")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("token_key_file_permissions", path=str(path), mode=oct(mode), expected="0o600")
    return text


def _create_key_file(path: Path) -> str:
    """Write a new key atomically with mode 0600; if another process got there first, use its key.

    The key is written to a private temporary file and hard-linked into place, so no process
    ever reads a half-written key, and two processes starting together agree on one key.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise TokenKeyError(
            f"cannot create DATA_DIR {path.parent} for the token key: {exc.strerror}; "
            "set DATA_DIR or TOKEN_ENCRYPTION_KEY"
        ) from None
    key = Fernet.generate_key()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return _read_key_file(path)
    except OSError as exc:
        raise TokenKeyError(f"cannot write the token key file {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    log.warning(
        "token_encryption_key_generated",
        path=str(path),
        hint="TOKEN_ENCRYPTION_KEY is unset, so a key was generated for OAuth tokens. Back it up, and "
        "give every process that shares the database the same key (set TOKEN_ENCRYPTION_KEY).",
    )
    return key.decode()


def load_token_cipher(settings: Settings, *, create: bool | None = None) -> TokenCipher | None:
    """The token cipher: TOKEN_ENCRYPTION_KEY, else the key file in DATA_DIR, else a new key file.

    `create=None` generates a key only when Marketplace OAuth is configured: without a client id
    no token can ever be stored, and a bare `serve` should not litter DATA_DIR. Returns None when
    there is no key and none was created. Raises `TokenKeyError` for a bad key (a startup error).
    """
    configured = settings.token_encryption_key
    if configured is not None and configured.get_secret_value().strip():
        return TokenCipher(configured.get_secret_value(), source="TOKEN_ENCRYPTION_KEY")
    path = token_key_path(settings)
    if path.exists():
        return TokenCipher(_read_key_file(path), source=str(path))
    if create is None:
        create = oauth_configured(settings)
    if not create:
        return None
    return TokenCipher(_create_key_file(path), source=str(path))


def token_http_client(settings: Settings) -> ServiceClient:
    """A GHL client for the token endpoint (no rate limiter: it is not a location's API budget)."""
    return ServiceClient("ghl", settings.ghl_base_url, settings=ClientSettings.from_settings(settings))


# --- token responses -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TokenGrant:
    """The parts of a GHL token response we store (repr hides the tokens)."""

    access_token: str
    refresh_token: str
    expires_in: float
    location_id: str | None
    token_type: str
    scope: str | None
    user_type: str | None
    company_id: str | None

    def __repr__(self) -> str:
        return f"_TokenGrant(location_id={self.location_id!r}, expires_in={self.expires_in!r})"


def _optional_str(response: Mapping[str, Any], key: str) -> str | None:
    value = response.get(key)
    return value if isinstance(value, str) and value else None


def _parse_grant(response: Any) -> _TokenGrant:
    if not isinstance(response, Mapping):
        raise TokenResponseInvalid("GHL's token response is not a JSON object")
    access, refresh = response.get("access_token"), response.get("refresh_token")
    if not isinstance(access, str) or not access:
        raise TokenResponseInvalid("GHL's token response has no access_token")
    if not isinstance(refresh, str) or not refresh:
        raise TokenResponseInvalid("GHL's token response has no refresh_token")
    expires_in = response.get("expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        raise TokenResponseInvalid("GHL's token response has no positive expires_in")
    return _TokenGrant(
        access_token=access,
        refresh_token=refresh,
        expires_in=float(expires_in),
        location_id=_optional_str(response, "locationId"),
        token_type=_optional_str(response, "token_type") or "Bearer",
        scope=_optional_str(response, "scope"),
        user_type=_optional_str(response, "userType"),
        company_id=_optional_str(response, "companyId"),
    )


def _scrub(text: str, *secret_values: str | None) -> str:
    """Remove our own secrets from a remote's error text (a remote may echo what we sent)."""
    for value in secret_values:
        if value:
            text = text.replace(value, "***")
    return mask_text(text)[:_MAX_ERROR_CHARS]


# --- status -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenStatus:
    """One installed location as an operator sees it: expiry and refresh health, no secrets."""

    location_id: str
    company_id: str | None
    user_type: str | None
    scope: str | None
    expires_at: datetime
    updated_at: datetime
    refresh_failed_at: datetime | None
    refresh_error: str | None
    state: TokenState

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        for key in ("expires_at", "updated_at", "refresh_failed_at"):
            if values[key] is not None:
                values[key] = values[key].isoformat()
        return values


def _state_of(row: GhlOauthToken, now: datetime) -> TokenState:
    if row.refresh_failed_at is not None:
        return "refresh_failed"
    if row.expires_at <= now:
        return "expired"
    if row.expires_at - now <= REFRESH_MARGIN:
        return "expiring"
    return "live"


async def token_statuses(db: Database) -> list[TokenStatus]:
    """Every installed location's token health, by location id (reads no secret column)."""
    now = utcnow()
    async with db.session() as session:
        rows = (await session.scalars(select(GhlOauthToken).order_by(GhlOauthToken.location_id))).all()
        return [
            TokenStatus(
                location_id=row.location_id,
                company_id=row.company_id,
                user_type=row.user_type,
                scope=row.scope,
                expires_at=row.expires_at,
                updated_at=row.updated_at,
                refresh_failed_at=row.refresh_failed_at,
                refresh_error=row.refresh_error,
                state=_state_of(row, now),
            )
            for row in rows
        ]


async def installed_location(db: Database, location_id: str) -> bool:
    """True when a token row exists for the location."""
    async with db.session() as session:
        found = await session.scalar(select(GhlOauthToken.id).where(GhlOauthToken.location_id == location_id))
    return found is not None


UninstallOutcome = Literal["uninstalled", "not_installed", "reinstalled_since"]


async def uninstall_token(db: Database, location_id: str, uninstalled_at: datetime) -> UninstallOutcome:
    """Delete a location's token for an uninstall that happened at `uninstalled_at` — unless the
    location was installed again after that moment (a late or replayed AppUninstall must not
    remove the newer installation)."""
    async with db.session() as session:
        row = await session.scalar(
            select(GhlOauthToken).where(GhlOauthToken.location_id == location_id).with_for_update()
        )
        if row is None:
            return "not_installed"
        if row.installed_at is not None and row.installed_at > uninstalled_at:
            return "reinstalled_since"
        await session.delete(row)
        return "uninstalled"


async def delete_token(db: Database, location_id: str) -> bool:
    """Delete a location's token row (uninstall). True when there was one.

    On PostgreSQL the DELETE waits for a refresh holding the row lock, so a refresh in flight
    finishes first and the uninstall then wins; a refresh that starts afterwards finds no row.
    """
    async with db.session() as session:
        result = await session.execute(
            delete(GhlOauthToken).where(GhlOauthToken.location_id == location_id).returning(GhlOauthToken.id)
        )
        return result.first() is not None


@dataclass
class RefreshSummary:
    """What one scheduled refresh-ahead pass did (logged by the scheduler)."""

    due: int = 0
    refreshed: int = 0
    failed: int = 0


# --- the store ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RowSnapshot:
    """What the lock-free fast path read: ciphertexts and times, copied out of the session."""

    access_token: str
    expires_at: datetime
    refresh_failed_at: datetime | None


RefreshNeed = Callable[[GhlOauthToken], bool]


class GhlTokenStore:
    """Per-location GHL OAuth tokens: code exchange, storage (encrypted) and refresh (R-OA-1, R-OA-3).

    Share one instance per process: its asyncio locks are what keeps one process's coroutines
    from queueing on the database lock. Correctness across processes rests on the database lock
    alone (see the module docstring).

    `cipher` is None where no token key exists (`load_token_cipher` found none and OAuth is not
    configured): then no token can have been stored by this deployment, and reading one raises
    `TokenDecryptError` naming TOKEN_ENCRYPTION_KEY.
    """

    def __init__(
        self, settings: Settings, db: Database, http: ServiceClient, cipher: TokenCipher | None
    ) -> None:
        self.settings = settings
        self.db = db
        self.http = http
        self.cipher = cipher
        self._locks: dict[str, asyncio.Lock] = {}
        self._refreshes: set[asyncio.Task[str]] = set()
        self._last_unauthorized_refresh: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"GhlTokenStore(database={self.db.dialect!r}, cipher={self.cipher!r})"

    # --- install -------------------------------------------------------------------------------

    async def exchange_code(self, code: str) -> str:
        """The OAuth callback's code exchange (R-OA-1): store the location's token, return its id.

        Not retried in-call: an authorization code is single use, and a retry after a lost answer
        would be refused anyway. Raises `OAuthNotConfigured`, `TokenResponseInvalid`, or the HTTP
        client's `RemoteUnavailable` / `RemoteRejected` (with our secrets scrubbed from the text).
        """
        client_id, client_secret = self._client_credentials()
        issued_at = utcnow()
        form = {
            "client_id": client_id,
            "client_secret": client_secret,
            "grant_type": "authorization_code",
            "code": code,
            "user_type": "Location",
            "redirect_uri": self.settings.oauth_redirect_uri,
        }
        try:
            response = await self.http.request(
                "POST", TOKEN_PATH, endpoint=TOKEN_ENDPOINT, data=form, idempotent=False
            )
        except RemoteError as exc:
            exc.args = (_scrub(str(exc), code, client_secret),)
            raise
        return await self.save_from_token_response(response, issued_at=issued_at)

    async def save_from_token_response(
        self, response: Mapping[str, Any], *, issued_at: datetime | None = None
    ) -> str:
        """Upsert the location's token row from a GHL token response; return the location id.

        Only location tokens are stored: a company (agency) token has no `locationId` and is
        refused with `TokenResponseInvalid`. `expires_at` counts from `issued_at` (default now),
        which callers take before the request so that the stored expiry is never late.
        """
        grant = _parse_grant(response)
        if grant.location_id is None:
            raise TokenResponseInvalid(
                "GHL's token response has no locationId (a company-level token?); install the app "
                f"on a sub-account with {INSTALL_HINT}"
            )
        issued_at = issued_at or utcnow()
        for attempt in range(2):
            try:
                async with self.db.session() as session:
                    row = await session.scalar(self._locked_row(grant.location_id))
                    if row is None:
                        row = GhlOauthToken(location_id=grant.location_id)
                        session.add(row)
                    self._apply_grant(row, grant, issued_at)
                    row.installed_at = issued_at
                break
            except IntegrityError:
                # Two installs of one new location raced to insert; the second now updates.
                if attempt:
                    raise
        log.info("oauth.token_stored", location_id=grant.location_id, user_type=grant.user_type)
        return grant.location_id

    def _apply_grant(self, row: GhlOauthToken, grant: _TokenGrant, issued_at: datetime) -> None:
        cipher = self._cipher()
        row.access_token = cipher.encrypt(grant.access_token)
        row.refresh_token = cipher.encrypt(grant.refresh_token)
        row.token_type = grant.token_type
        row.scope = grant.scope or row.scope
        row.expires_at = issued_at + timedelta(seconds=grant.expires_in)
        row.user_type = grant.user_type or row.user_type or "Location"
        row.company_id = grant.company_id or row.company_id
        row.refresh_failed_at = None
        row.refresh_error = None
        row.updated_at = utcnow()

    # --- use -----------------------------------------------------------------------------------------

    async def access_token(self, location_id: str) -> str:
        """A valid access token for the location, refreshed first when it expires within 5 min.

        When that refresh fails but the current token still has life left, the current token is
        returned (the failure is recorded on the row and shown to operators): refreshing early is
        a precaution, and a GHL hiccup must not stop syncing while the token still works.
        Raises `NotInstalled` when the location has no token.
        """
        snapshot = await self._snapshot(location_id)
        now = utcnow()
        if snapshot.expires_at - now > REFRESH_MARGIN:
            return self._decrypt(snapshot.access_token)
        still_usable = snapshot.expires_at - now > MIN_USABLE_LIFETIME
        failed_recently = (
            snapshot.refresh_failed_at is not None
            and now - snapshot.refresh_failed_at < FAILED_REFRESH_BACKOFF
        )
        if still_usable and failed_recently:
            return self._decrypt(snapshot.access_token)
        try:
            return await self._refresh_locked(location_id, _expires_within(REFRESH_MARGIN), "expiring")
        except (RefreshFailure, TokenResponseInvalid):
            if snapshot.expires_at - utcnow() > MIN_USABLE_LIFETIME:
                log.warning("oauth.refresh_ahead_failed_using_current_token", location_id=location_id)
                return self._decrypt(snapshot.access_token)
            raise

    async def after_unauthorized(self, location_id: str, rejected_token: str) -> str | None:
        """GHL answered 401 to `rejected_token`: refresh once and return the new token (R-OA-3).

        When the stored token already differs from the rejected one, another coroutine or process
        refreshed (or the app was re-installed) meanwhile: that token is returned with no call.
        None when the location has no token row (nothing to refresh). Refresh failures raise.
        """
        now = asyncio.get_running_loop().time()
        last = self._last_unauthorized_refresh.get(location_id)

        def still_rejected(row: GhlOauthToken) -> bool:
            if self._decrypt(row.access_token) != rejected_token:
                return False  # refreshed meanwhile: use the new one
            if last is not None and now - last < UNAUTHORIZED_REFRESH_INTERVAL_SECONDS:
                return False  # a fresh token was refused too: not an expiry (a scope?), do not spin
            self._last_unauthorized_refresh[location_id] = now
            return True

        try:
            return await self._refresh_locked(location_id, still_rejected, "unauthorized")
        except NotInstalled:
            return None

    async def refresh(self, location_id: str, *, force: bool = False) -> str:
        """Refresh the location's token now when it is expiring (or always, with `force`).

        Even forced, a refresh that another holder completed after this one was asked for (while
        it waited for the lock) counts as done: its token is returned and no second call is made.
        """
        if not force:
            return await self._refresh_locked(location_id, _expires_within(REFRESH_MARGIN), "expiring")
        asked_at = utcnow()

        def not_refreshed_since_asked(row: GhlOauthToken) -> bool:
            # A clock behind ours elsewhere can only cost an extra refresh, never a dead token:
            # whoever refreshes spends the refresh token it read inside the lock.
            return row.refresh_failed_at is not None or row.updated_at < asked_at

        return await self._refresh_locked(location_id, not_refreshed_since_asked, "forced")

    async def refresh_expiring(self, within: timedelta = SCHEDULED_REFRESH_WINDOW) -> RefreshSummary:
        """Refresh every token expiring within `within` (the scheduler's refresh-ahead, R-OA-3).

        Failures are recorded on their rows (and counted) by the refresh itself; one location's
        failure does not stop the others.
        """
        async with self.db.session() as session:
            due = list(
                await session.scalars(
                    select(GhlOauthToken.location_id)
                    .where(GhlOauthToken.expires_at <= utcnow() + within)
                    .order_by(GhlOauthToken.expires_at)
                )
            )
        summary = RefreshSummary(due=len(due))
        for location_id in due:
            try:
                await self._refresh_locked(location_id, _expires_within(within), "scheduled")
                summary.refreshed += 1
            except NotInstalled:
                summary.due -= 1  # uninstalled meanwhile
            except (RefreshFailure, TokenDecryptError, TokenResponseInvalid):
                summary.failed += 1
        return summary

    async def delete(self, location_id: str) -> bool:
        """Forget a location's tokens (uninstall). True when there were some."""
        return await delete_token(self.db, location_id)

    async def statuses(self) -> list[TokenStatus]:
        return await token_statuses(self.db)

    async def check(self) -> list[ConnectionReport]:
        """One report per installed location, from the database (no GHL call): whether its token
        is live, expiring, expired or failed to refresh. `reachable` means "GHL answered our last
        token call", which is true for every stored token unless its refresh failed."""
        statuses = await self.statuses()
        if not statuses:
            missing = missing_oauth_settings(self.settings)
            if missing:
                return [ConnectionReport.not_configured("ghl_oauth", " and ".join(missing))]
            return [
                ConnectionReport(
                    system="ghl_oauth", configured=True, reason=f"no location installed: {INSTALL_HINT}"
                )
            ]
        now = utcnow()
        reports = []
        for status in statuses:
            minutes_left = int((status.expires_at - now).total_seconds() // 60)
            reason: str | None = None
            authenticated = status.state in {"live", "expiring"}
            if status.state == "refresh_failed":
                reason = f"refresh failed: {status.refresh_error}"
            elif status.state == "expired":
                reason = "token expired; it is refreshed on next use or by the scheduler"
            elif status.state == "expiring":
                reason = f"token expires in {max(minutes_left, 0)} min; refresh pending"
            reports.append(
                ConnectionReport(
                    system=f"ghl_oauth:{status.location_id}",
                    configured=True,
                    reachable=status.state != "refresh_failed",
                    authenticated=authenticated,
                    reason=reason,
                    detail={"expires_at": status.expires_at.isoformat(), "state": status.state},
                )
            )
        return reports

    # --- the refresh itself -------------------------------------------------------------------

    def _locked_row(self, location_id: str) -> Select[GhlOauthToken]:
        # FOR UPDATE is rendered on PostgreSQL only; SQLite already holds the database write
        # lock, taken by the session's BEGIN IMMEDIATE before this first statement runs.
        return select(GhlOauthToken).where(GhlOauthToken.location_id == location_id).with_for_update()

    def _lock_for(self, location_id: str) -> asyncio.Lock:
        lock = self._locks.get(location_id)
        if lock is None:
            lock = self._locks[location_id] = asyncio.Lock()
        return lock

    async def _refresh_locked(self, location_id: str, needs_refresh: RefreshNeed, why: str) -> str:
        """Refresh under the in-process lock and the database row lock, unless `needs_refresh`,
        evaluated on the row re-read inside the lock, says another holder already did it.

        The refresh runs as its own task, shielded from the caller's cancellation: once GHL has
        rotated the single-use refresh token, the new pair must reach the database even if the
        handler that asked is cancelled (worker shutdown) — otherwise the installation is broken.
        `wait_for_refreshes()` lets a shutdown wait for it.
        """
        task = asyncio.ensure_future(self._refresh_task(location_id, needs_refresh, why))
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)
        return await asyncio.shield(task)

    async def wait_for_refreshes(self, max_wait_seconds: float = 30.0) -> None:
        """Let refreshes in flight store their tokens (called before the process closes)."""
        if self._refreshes:
            await asyncio.wait(set(self._refreshes), timeout=max_wait_seconds)

    async def _refresh_task(self, location_id: str, needs_refresh: RefreshNeed, why: str) -> str:
        """The row lock is held across the HTTP call on purpose: it is what stops a second process
        from spending the same single-use refresh token. The failure is written in that same
        transaction, and the error raised once it is committed. When GHL answered but the commit
        of the new tokens fails, they are stored again in fresh transactions (`_store_grant`).
        """
        async with self._lock_for(location_id):
            failure: Exception | None = None
            token: str | None = None
            spent: list[tuple[_TokenGrant, datetime]] = []
            try:
                async with self.db.session() as session:
                    row = await session.scalar(self._locked_row(location_id))
                    if row is None:
                        raise NotInstalled(location_id)
                    if not needs_refresh(row):
                        OAUTH_REFRESHES.labels(outcome="skipped").inc()
                        return self._decrypt(row.access_token)
                    try:
                        token = await self._call_refresh(row, spent)
                    except (RefreshFailure, TokenResponseInvalid, TokenDecryptError) as exc:
                        failure = exc
                        row.refresh_failed_at = utcnow()
                        row.refresh_error = str(exc)[:_MAX_ERROR_CHARS]
            except Exception:
                if not spent:
                    raise
                token = await self._store_grant(location_id, *spent[0])
        if failure is not None or token is None:
            OAUTH_REFRESHES.labels(outcome="error").inc()
            log.warning(
                "oauth.refresh_failed",
                location_id=location_id,
                trigger=why,
                error=type(failure).__name__,
                reason=str(failure),
            )
            raise failure or TokenResponseInvalid("refresh produced no token")
        OAUTH_REFRESHES.labels(outcome="success").inc()
        log.info("oauth.token_refreshed", location_id=location_id, trigger=why)
        return token

    async def _store_grant(self, location_id: str, grant: _TokenGrant, issued_at: datetime) -> str:
        """Store tokens GHL issued after the transaction that asked for them failed to commit.

        GHL has already invalidated the old refresh token, so this retries with backoff; if the
        database stays unavailable the new access token is still returned (it works for a day) and
        the loss is logged as an error: without the new refresh token the location will need a
        re-install when that access token expires.
        """
        retrying = AsyncRetrying(
            stop=stop_after_attempt(_STORE_GRANT_ATTEMPTS),
            wait=wait_exponential(multiplier=0.5, max=5.0),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    async with self.db.session() as session:
                        row = await session.scalar(self._locked_row(location_id))
                        if row is None:
                            raise NotInstalled(location_id)
                        self._apply_grant(row, grant, issued_at)
        except NotInstalled:
            log.info("oauth.refreshed_token_dropped_after_uninstall", location_id=location_id)
        except Exception as exc:
            log.error(
                "oauth.refreshed_token_not_stored",
                location_id=location_id,
                error=type(exc).__name__,
                consequence="the location must be re-installed once the current access token expires",
            )
        return grant.access_token

    async def _call_refresh(
        self, row: GhlOauthToken, spent: list[tuple[_TokenGrant, datetime]] | None = None
    ) -> str:
        """Spend the row's refresh token; on success write the new tokens into the row (and
        remember them in `spent`, so they survive a failed commit)."""
        location_id = row.location_id
        if row.refresh_token is None:
            raise InstallationBroken(
                f"GHL location {location_id} has no refresh token stored: re-install the app with "
                f"{INSTALL_HINT}"
            )
        missing = missing_oauth_settings(self.settings)
        if missing:
            raise OAuthNotConfigured(
                f"cannot refresh the OAuth token of GHL location {location_id}: set {', '.join(missing)}"
            )
        client_id, client_secret = self._client_credentials()
        refresh_token = self._decrypt(row.refresh_token)
        form = {
            "client_id": client_id,
            "client_secret": client_secret,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "user_type": row.user_type or "Location",
        }
        issued_at = utcnow()
        try:
            response = await self.http.request(
                "POST", TOKEN_PATH, endpoint=TOKEN_ENDPOINT, data=form, idempotent=False
            )
        except RemoteError as exc:
            raise _refresh_error(location_id, exc, refresh_token, client_secret) from None
        grant = _parse_grant(response)
        if grant.location_id is not None and grant.location_id != location_id:
            raise TokenResponseInvalid(
                f"GHL answered the refresh of location {location_id} with a token of another location"
            )
        if spent is not None:
            spent.append((grant, issued_at))
        self._apply_grant(row, grant, issued_at)
        return grant.access_token

    async def _snapshot(self, location_id: str) -> _RowSnapshot:
        async with self.db.session() as session:
            found = (
                await session.execute(
                    select(
                        GhlOauthToken.access_token,
                        GhlOauthToken.expires_at,
                        GhlOauthToken.refresh_failed_at,
                    ).where(GhlOauthToken.location_id == location_id)
                )
            ).first()
        if found is None:
            raise NotInstalled(location_id)
        return _RowSnapshot(found.access_token, found.expires_at, found.refresh_failed_at)

    def _decrypt(self, ciphertext: str) -> str:
        return self._cipher().decrypt(ciphertext)

    def _cipher(self) -> TokenCipher:
        if self.cipher is None:
            raise TokenDecryptError(
                "OAuth tokens are stored but there is no token key: set TOKEN_ENCRYPTION_KEY (or restore "
                f"{token_key_path(self.settings)})"
            )
        return self.cipher

    def _client_credentials(self) -> tuple[str, str]:
        missing = missing_oauth_settings(self.settings)
        if missing or self.settings.ghl_client_id is None or self.settings.ghl_client_secret is None:
            raise OAuthNotConfigured(f"GHL Marketplace OAuth is not configured: set {', '.join(missing)}")
        return self.settings.ghl_client_id, self.settings.ghl_client_secret.get_secret_value()


def _expires_within(window: timedelta) -> RefreshNeed:
    return lambda row: row.expires_at - utcnow() <= window


def _refresh_error(location_id: str, exc: RemoteError, *secret_values: str) -> Exception:
    """Translate the HTTP client's error into a refresh failure the worker can classify."""
    reason = _scrub(remote_error_text(exc.body, str(exc)), *secret_values)
    where = f"OAuth token refresh of GHL location {location_id}"
    if isinstance(exc, RemoteUnavailable):
        return TokenRefreshUnavailable(f"{where} failed, will retry: {reason}", retry_after=exc.retry_after)
    if isinstance(exc, RemoteUnauthorized):
        return TokenRefreshUnavailable(
            f"{where}: GHL refused the app's credentials (check GHL_CLIENT_ID / GHL_CLIENT_SECRET): {reason}",
            retry_after=60.0,
        )
    error_code = exc.body.get("error") if isinstance(exc.body, Mapping) else None
    if isinstance(exc, RemoteRejected) and (error_code == "invalid_grant" or "invalid_grant" in reason):
        return InstallationBroken(
            f"{where} refused (invalid_grant): the refresh token is no longer valid, so the "
            f"installation is broken; re-install the app with {INSTALL_HINT}"
        )
    status = exc.status_code if exc.status_code is not None else "?"
    return TokenRefreshRejected(f"{where} refused (HTTP {status}): {reason}")


# --- what the GHL connector calls ----------------------------------------------------------------------


class GhlCredentials:
    """The bearer token for a GHL location: its OAuth token when installed, else the PIT.

    The Private Integration Token (GHL_API_KEY) belongs to GHL_LOCATION_ID only; any other
    location needs an OAuth installation. `store` is None when OAuth is not in use at all.
    """

    def __init__(self, settings: Settings, store: GhlTokenStore | None) -> None:
        self.settings = settings
        self.store = store

    def __repr__(self) -> str:
        return f"GhlCredentials(oauth={self.store is not None}, pit={self._has_pit()})"

    def _has_pit(self) -> bool:
        key = self.settings.ghl_api_key
        return key is not None and bool(key.get_secret_value())

    def _pit_for(self, location_id: str) -> str | None:
        key = self.settings.ghl_api_key
        if key is None or location_id != self.settings.ghl_location_id:
            return None
        return key.get_secret_value() or None

    async def access_token(self, location_id: str) -> str:
        """The token to send for `location_id`. Raises `MissingGhlCredentials` when there is none."""
        if self.store is not None:
            with contextlib.suppress(NotInstalled):
                return await self.store.access_token(location_id)
        pit = self._pit_for(location_id)
        if pit is not None:
            return pit
        raise MissingGhlCredentials(self._missing_message(location_id))

    async def after_unauthorized(self, location_id: str, rejected_token: str) -> str | None:
        """A fresh token to retry once with after a 401, or None (a PIT has nothing to refresh)."""
        if self.store is not None:
            token = await self.store.after_unauthorized(location_id, rejected_token)
            if token is not None:
                return token
        pit = self._pit_for(location_id)
        # An OAuth token that vanished (uninstalled) falls back to the PIT, once.
        return pit if pit is not None and pit != rejected_token else None

    def _missing_message(self, location_id: str) -> str:
        if location_id == self.settings.ghl_location_id:
            return (
                f"no GHL credentials for location {location_id}: set GHL_API_KEY (Private Integration "
                f"Token) or install the Marketplace app on it with {INSTALL_HINT}"
            )
        oauth = (
            f"install the Marketplace app on it with {INSTALL_HINT}"
            if oauth_configured(self.settings)
            else "set GHL_CLIENT_ID and GHL_CLIENT_SECRET, then install the Marketplace app on it with "
            + INSTALL_HINT
        )
        return (
            f"no GHL credentials for location {location_id}: GHL_API_KEY is only used for "
            f"GHL_LOCATION_ID ({self.settings.ghl_location_id or 'unset'}); {oauth}"
        )


# --- scheduler entry point ---------------------------------------------------------------------------


async def refresh_expiring_tokens(settings: Settings, db: Database) -> dict[str, int]:
    """The scheduler's refresh-ahead job: refresh tokens expiring within 30 min (R-OA-3)."""
    cipher = load_token_cipher(settings)
    if cipher is None or not oauth_configured(settings):
        return {"due": 0, "refreshed": 0, "failed": 0}
    http = token_http_client(settings)
    try:
        summary = await GhlTokenStore(settings, db, http, cipher).refresh_expiring()
    finally:
        await http.aclose()
    return asdict(summary)
