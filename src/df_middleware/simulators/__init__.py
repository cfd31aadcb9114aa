"""Faithful HTTP fakes of GHL, Aloware and Verity, with in-memory state and fault injection (SPEC §9)."""
