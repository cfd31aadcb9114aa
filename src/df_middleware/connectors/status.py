"""What `df-middleware check` (and later `GET /api/admin/connections`) says about one system."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ConnectionReport:
    """Configured / reachable / authenticated for one external system, with the reason when not.

    `reachable` and `authenticated` are None when they were not (or could not be) checked — an
    unconfigured system is not called at all.
    """

    system: str
    configured: bool
    reachable: bool | None = None
    authenticated: bool | None = None
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.configured and bool(self.reachable) and bool(self.authenticated)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    @classmethod
    def not_configured(cls, system: str, missing: str) -> ConnectionReport:
        return cls(system=system, configured=False, reason=f"not configured: set {missing}")
