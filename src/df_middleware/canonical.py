"""Canonical JSON and its digest: the stable fingerprint of a payload (dedupe keys, R-IN-4)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: equal JSON values give equal bytes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def canonical_sha256(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


#: The largest integer a float holds exactly (2**53). JSON numbers are read as floats beyond 64 bits,
#: so an id number beyond this may stand for another id: ingest refuses it, handlers ignore it.
MAX_EXACT_FLOAT_ID = 2**53
