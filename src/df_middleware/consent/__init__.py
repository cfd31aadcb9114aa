"""Consent: SMS opt-out and opt-in, HELP requests and voice do-not-call (SPEC 6.4, R-OPT-1..R-OPT-6)."""
