"""GHL Marketplace install and uninstall webhooks (R-OA-2).

A location's token can only come from the OAuth callback (`GET /leadconnector/oauth`): the
`AppInstall` webhook carries no token. So the install webhook records what it found — the
location is installed (the callback ran first) or not yet (the callback has not run, or the
install did not start from our signed start URL) — and `AppUninstall` deletes the location's
token row, after which its events are foreign again and nothing is synced for it.

Install events reach these handlers even for locations that are not (yet) ours: the registry
exempts them from the foreign-location guard (`GHL_INSTALL_EVENTS`).
"""

from __future__ import annotations

from datetime import datetime

from df_middleware.connectors.tokens import INSTALL_HINT, installed_location, uninstall_token
from df_middleware.sync.registry import (
    ClaimedEvent,
    HandlerContext,
    HandlerRegistry,
    HandlerResult,
    SyncLogEntry,
)
from df_middleware.timestamps import parse_iso8601

INSTALL_EVENTS = ("AppInstall", "INSTALL")
UNINSTALL_EVENTS = ("AppUninstall", "UNINSTALL")
NOT_INSTALLED = "not installed"


def _location_id(event: ClaimedEvent) -> str | None:
    value = event.payload.get("locationId")
    return value if isinstance(value, str) and value else None


def _success(event: ClaimedEvent, location_id: str, message: str) -> HandlerResult:
    entry = SyncLogEntry(
        direction="internal",
        entity_type=event.entity_type,
        entity_id=location_id,
        source_id=location_id,
        status="success",
        message=message,
        target_id=location_id,
    )
    return HandlerResult(entries=[entry])


async def handle_app_install(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """GHL `AppInstall` / `INSTALL`: confirm the location's OAuth token exists. No remote call.

    Effects: none; one sync_log row — success "installed" when the callback already stored the
    token, else skipped with the reason (a company-level install has no location to store for).
    """
    ctx.direction = "internal"
    location_id = _location_id(event)
    if location_id is None:
        return HandlerResult.skipped(
            event,
            "company-level install (no locationId): tokens are stored per location, when the app is "
            "installed on a sub-account through the OAuth callback",
        )
    if await installed_location(ctx.db, location_id):
        return _success(event, location_id, "installed")
    return HandlerResult.skipped(
        event,
        f"no OAuth token for location {location_id} yet: a location token comes only from the OAuth "
        f"callback; install with {INSTALL_HINT}",
    )


async def handle_app_uninstall(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """GHL `AppUninstall` / `UNINSTALL`: delete the location's token row. Idempotent.

    Effects: the ghl_oauth_tokens row of the location is deleted; one sync_log row — success
    "uninstalled", or skipped "not installed" when there was no row (a redelivery, a replay), or
    skipped when the location was installed again after this uninstall happened.
    """
    ctx.direction = "internal"
    location_id = _location_id(event)
    if location_id is None:
        return HandlerResult.skipped(
            event,
            "company-level uninstall (no locationId): location tokens are removed by each location's "
            "own uninstall event",
        )
    outcome = await uninstall_token(ctx.db, location_id, _event_time(event))
    if outcome == "uninstalled":
        return _success(event, location_id, "uninstalled: OAuth token deleted")
    if outcome == "reinstalled_since":
        return HandlerResult.skipped(event, "re-installed after this uninstall: the newer install is kept")
    return HandlerResult.skipped(event, NOT_INSTALLED)


def _event_time(event: ClaimedEvent) -> datetime:
    """When the event happened: GHL's `timestamp` (ISO-8601) when present, else when it arrived."""
    return parse_iso8601(event.payload.get("timestamp")) or event.received_at


def register_handlers(registry: HandlerRegistry) -> None:
    registry.register("ghl", *INSTALL_EVENTS)(handle_app_install)
    registry.register("ghl", *UNINSTALL_EVENTS)(handle_app_uninstall)
