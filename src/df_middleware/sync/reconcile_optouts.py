"""`reconcile optouts` (R-REC-3): GHL's SMS DND re-asserted for every opted-out number.

An SMS opt-out sets the GHL contact's `dndSettings.SMS.status = "active"` (R-OPT-3), but a GHL
user may switch it off (which does not lift a texting STOP, R-OPT-5), a write may have been lost,
or the contact may have been created after the STOP. For each number `optout_registry` holds as
opted out, the GHL contacts with that number (GHL allows duplicates; one search finds them all,
matched exactly on E.164, R-ID-2) get SMS DND `active` through `optout.set_ghl_dnd`, the flow's
own write: remembered as our echo (R-LOOP-1), and not made when GHL already shows DND on (the
search answer carries `dndSettings`, so a number already right costs its one search).

Totals: `scanned` numbers, `drifted` = `repaired` contacts whose DND was set, `skipped` numbers
with no GHL contact (and contacts GHL deleted meanwhile), `errors` contacts GHL refused.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select

from df_middleware.config import Settings
from df_middleware.connectors.ghl import FIND_PAGE_LIMIT
from df_middleware.connectors.suite import Connectors
from df_middleware.consent.decisions import OPTED_OUT
from df_middleware.db.models import OptoutRegistry
from df_middleware.db.session import Database
from df_middleware.errors import PermanentError
from df_middleware.phones import normalize_phone
from df_middleware.sync.optout import set_ghl_dnd
from df_middleware.sync.reconcile_contacts import write_log
from df_middleware.sync.reconcile_runs import ReconcileNotConfigured, ReconcileProgress, Totals
from df_middleware.sync.registry import HandlerContext, SyncLogEntry

INTERNAL = "internal"
FAILURES_SHOWN = 5


async def opted_out_numbers(db: Database) -> list[str]:
    async with db.session() as session:
        rows = await session.scalars(
            select(OptoutRegistry.phone_number)
            .where(OptoutRegistry.status == OPTED_OUT)
            .order_by(OptoutRegistry.phone_number)
        )
        return list(rows)


async def reconcile_optouts(
    settings: Settings,
    db: Database,
    connectors: Connectors,
    run_id: uuid.UUID,
    totals: Totals,
    *,
    progress: ReconcileProgress | None = None,
) -> str | None:
    """Set SMS DND on every opted-out number's GHL contacts that lack it; fills `totals`;
    returns what failed (None: nothing)."""
    ghl = connectors.ghl
    if ghl is None:
        raise ReconcileNotConfigured(
            "reconcile optouts needs GHL (GHL_LOCATION_ID with GHL_API_KEY or OAuth)"
        )
    ctx = HandlerContext(settings=settings, db=db, connectors=connectors, direction=INTERNAL)
    region = settings.default_phone_region
    numbers = await opted_out_numbers(db)
    if progress is not None:
        progress.start(len(numbers))
    failed: list[str] = []
    for phone in numbers:
        totals.scanned += 1
        page = await ghl.search_contacts(
            filters=[{"field": "phone", "operator": "eq", "value": phone}],
            page_limit=FIND_PAGE_LIMIT,
            sort=(),
        )
        contacts = [c for c in page.contacts if c.phone and normalize_phone(c.phone, region) == phone]
        if not contacts:
            totals.skipped += 1
        for contact in contacts:
            try:
                done = await set_ghl_dnd(ctx, ghl, contact.id, "SMS", "active", shown=contact.dnd_settings)
            except PermanentError as exc:
                totals.errors += 1
                failed.append(f"{contact.id}: {exc}")
                await write_log(
                    db, str(run_id), [_row(contact.id, "error", "SMS DND not re-asserted", str(exc))]
                )
                continue
            if done == "set":
                totals.drifted += 1
                totals.repaired += 1
                await write_log(
                    db,
                    str(run_id),
                    [
                        _row(
                            contact.id,
                            "success",
                            "reconcile: GHL contact SMS DND set active (number opted out)",
                        )
                    ],
                )
            elif done == "gone":
                totals.skipped += 1
        if progress is not None:
            progress.advance(1)
    if not failed:
        return None
    return f"{len(failed)} contacts failed: {'; '.join(failed[:FAILURES_SHOWN])}"


def _row(contact_id: str, status: str, message: str, error: str | None = None) -> SyncLogEntry:
    return SyncLogEntry(
        direction=INTERNAL,
        entity_type="contact",
        entity_id=contact_id,
        source_id=contact_id,
        status=status,  # type: ignore[arg-type]
        message=message,
        target_id=contact_id,
        error_message=error[:1000] if error else None,
    )
