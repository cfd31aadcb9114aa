"""Clients of the external systems: the only code that speaks HTTP (or SQL) to the outside.

`http.py` gives every call timeouts, retries, rate limiting, error classification and metrics;
`ghl.py`, `aloware.py` and `verity.py` are typed clients of each API; `tokens.py` stores and
refreshes GHL OAuth tokens; `verity_db.py` reads Verity's broadcast tables. Handlers receive these
clients through `HandlerContext`, so tests can hand them simulators.
"""
