"""Webhook authentication, on the raw body bytes, before anything is parsed (R-IN-1, R-SEC-2).

Fail closed: a source whose secret or key is not configured is refused with a message naming
the missing setting. Signatures are checked with `cryptography`; shared secrets are compared
with `hmac.compare_digest` (constant time).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from pydantic import SecretStr

from df_middleware.config import Settings
from df_middleware.timestamps import parse_iso8601

#: GHL's published webhook key (the default of GHL_WEBHOOK_PUBLIC_KEY).
GHL_PUBLISHED_KEY = Path(__file__).with_name("ghl_webhook_rsa_public_key.pem")


class AuthFailure(Exception):
    """Authentication failed (answered 401). The message names what was wrong, never a secret."""


def load_public_key(value: str) -> Any:
    """A public key from PEM text or from a path to a PEM file."""
    text = value.strip()
    if not text.startswith("-----BEGIN"):
        text = Path(text).expanduser().read_text()
    return serialization.load_pem_public_key(text.encode())


def _b64decode(value: str) -> bytes:
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AuthFailure("signature is not valid base64") from exc


def _configured(secret: SecretStr | None) -> bool:
    """An empty secret is no secret (Settings already reads one as unset; this holds anyway)."""
    return secret is not None and bool(secret.get_secret_value().strip())


def _secret_equals(provided: str, expected: SecretStr) -> bool:
    if not _configured(expected):
        return False
    return hmac.compare_digest(provided.encode(), expected.get_secret_value().encode())


class GhlVerifier:
    """GHL's three ways in: Ed25519 `x-ghl-signature` (preferred), RSA `x-wh-signature`
    (fallback, GHL's published key by default), or, for unsigned workflow webhooks,
    `X-DF-Webhook-Secret` equal to GHL_WORKFLOW_WEBHOOK_SECRET."""

    def __init__(self, settings: Settings) -> None:
        self._ed25519: ed25519.Ed25519PublicKey | None = None
        if settings.ghl_webhook_ed25519_public_key:
            key = load_public_key(settings.ghl_webhook_ed25519_public_key)
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise ValueError("GHL_WEBHOOK_ED25519_PUBLIC_KEY is not an Ed25519 public key")
            self._ed25519 = key
        rsa_key = load_public_key(settings.ghl_webhook_public_key or str(GHL_PUBLISHED_KEY))
        if not isinstance(rsa_key, rsa.RSAPublicKey):
            raise ValueError("GHL_WEBHOOK_PUBLIC_KEY is not an RSA public key")
        self._rsa: rsa.RSAPublicKey = rsa_key
        self._workflow_secret = settings.ghl_workflow_webhook_secret

    def verify(self, headers: Mapping[str, str], body: bytes) -> bool:
        """Raise AuthFailure unless the request is authentic; return True when it was signed."""
        ed_signature = headers.get("x-ghl-signature")
        if ed_signature and self._ed25519 is not None:
            try:
                self._ed25519.verify(_b64decode(ed_signature), body)
            except InvalidSignature as exc:
                raise AuthFailure("x-ghl-signature does not match the body") from exc
            return True
        rsa_signature = headers.get("x-wh-signature")
        if rsa_signature:
            try:
                self._rsa.verify(_b64decode(rsa_signature), body, padding.PKCS1v15(), hashes.SHA256())
            except InvalidSignature as exc:
                raise AuthFailure("x-wh-signature does not match the body") from exc
            return True
        if ed_signature:
            raise AuthFailure(
                "x-ghl-signature present but GHL_WEBHOOK_ED25519_PUBLIC_KEY is not set, and no x-wh-signature"
            )
        provided = headers.get("x-df-webhook-secret")
        if self._workflow_secret is None:
            raise AuthFailure(
                "request is not signed and GHL_WORKFLOW_WEBHOOK_SECRET is not set: "
                "unsigned requests are refused"
            )
        if not provided or not _secret_equals(provided, self._workflow_secret):
            raise AuthFailure("missing or wrong X-DF-Webhook-Secret")
        return False


def check_replay_window(payload: Mapping[str, Any], tolerance_seconds: int, now: datetime) -> None:
    """Refuse a GHL webhook whose own `timestamp` is outside the window (0 disables)."""
    if tolerance_seconds <= 0 or "timestamp" not in payload:
        return
    sent_at = parse_event_time(payload["timestamp"])
    if sent_at is None:
        raise AuthFailure("timestamp is not ISO-8601 or epoch milliseconds")
    skew = abs((now - sent_at).total_seconds())
    if skew > tolerance_seconds:
        raise AuthFailure(f"timestamp is {int(skew)} s from now, outside the {tolerance_seconds} s window")


def parse_event_time(value: Any) -> datetime | None:
    """ISO-8601 (naive means UTC) or epoch milliseconds (seconds when the number is small)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        # ASCII digits only: str.isdigit() also accepts '²' and '①', which int() refuses.
        if text.isascii() and text.isdigit():
            value = int(text) if len(text) <= 20 else None
        else:
            return parse_iso8601(text)
    if isinstance(value, int | float):
        seconds = value / 1000 if abs(value) > 1e11 else value
        try:
            return parse_iso8601(datetime.fromtimestamp(seconds, UTC).isoformat())
        except (OverflowError, OSError, ValueError):
            return None
    return None


def verify_aloware(settings: Settings, headers: Mapping[str, str]) -> bool:
    """HTTP Basic or Bearer, whichever is configured (both may be). Returns False: not a signature."""
    basic_user, basic_pass = settings.aloware_webhook_basic_user, settings.aloware_webhook_basic_pass
    bearer = settings.aloware_webhook_bearer_token
    basic_configured = bool(basic_user) and basic_pass is not None
    if not basic_configured and bearer is None:
        raise AuthFailure(
            "Aloware webhook auth is not configured: set ALOWARE_WEBHOOK_BASIC_USER and "
            "ALOWARE_WEBHOOK_BASIC_PASS, or ALOWARE_WEBHOOK_BEARER_TOKEN"
        )
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and bearer is not None:
        if _secret_equals(credentials.strip(), bearer):
            return False
        raise AuthFailure("wrong bearer token")
    if scheme == "basic" and basic_configured and basic_user and basic_pass is not None:
        try:
            user, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
        except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
            raise AuthFailure("malformed Basic credentials") from exc
        user_ok = hmac.compare_digest(user.encode(), basic_user.encode())
        pass_ok = _secret_equals(password, basic_pass)
        if user_ok and pass_ok:
            return False
        raise AuthFailure("wrong Basic credentials")
    raise AuthFailure("missing Authorization (Basic or Bearer, as configured)")


def verify_hmac_hex(
    body: bytes, signature: str | None, secret: SecretStr | None, *, header: str, setting: str
) -> bool:
    """Hex HMAC-SHA256 of the raw body (a `sha256=` prefix is tolerated)."""
    if secret is None or not _configured(secret):
        raise AuthFailure(f"webhook secret is not configured: set {setting}")
    if not signature:
        raise AuthFailure(f"missing {header}")
    provided = signature.strip().lower().removeprefix("sha256=")
    expected = hmac.new(secret.get_secret_value().encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(provided.encode(), expected.encode()):
        raise AuthFailure(f"{header} does not match the body")
    return True


def verify_texting(settings: Settings, headers: Mapping[str, str], body: bytes) -> bool:
    """`X-Texting-Signature` HMAC; the plain `X-Texting-Secret` only when explicitly allowed."""
    signature = headers.get("x-texting-signature")
    plain = headers.get("x-texting-secret")
    secret = settings.verity_webhook_secret
    if not signature and plain and settings.texting_allow_plain_secret:
        if secret is None:
            raise AuthFailure("webhook secret is not configured: set VERITY_WEBHOOK_SECRET")
        if _secret_equals(plain.strip(), secret):
            return False
        raise AuthFailure("wrong X-Texting-Secret")
    return verify_hmac_hex(
        body, signature, secret, header="X-Texting-Signature", setting="VERITY_WEBHOOK_SECRET"
    )


def verify_broadcast(settings: Settings, headers: Mapping[str, str], body: bytes) -> bool:
    return verify_hmac_hex(
        body,
        headers.get("x-broadcast-signature"),
        settings.broadcast_secret,
        header="X-Broadcast-Signature",
        setting="BROADCAST_WEBHOOK_SECRET or VERITY_WEBHOOK_SECRET",
    )
