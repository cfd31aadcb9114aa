"""Phone and email normalisation (R-ID-1), shared by ingest and the sync handlers.

Phones are parsed by `phonenumbers` with DEFAULT_PHONE_REGION for numbers without a country
code; only valid numbers become E.164 keys. Invalid input stays in the stored payload as sent
but is never used as a key (the functions return None).
"""

from __future__ import annotations

import phonenumbers

#: Longest input we try to parse; phonenumbers itself refuses longer, this just fails fast.
_MAX_PHONE_CHARS = 64


def normalize_phone(raw: object, region: str = "US") -> str | None:
    """E.164 form of a valid phone number, else None."""
    if isinstance(raw, int):
        raw = str(raw)
    if not isinstance(raw, str):
        return None
    raw = raw.strip()
    if not raw or len(raw) > _MAX_PHONE_CHARS:
        return None
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(raw: object) -> str | None:
    """Trimmed, lower-cased email, or None when it is not plausibly an address."""
    if not isinstance(raw, str):
        return None
    value = raw.strip().lower()
    if "@" not in value or len(value) > 320 or " " in value:
        return None
    return value
