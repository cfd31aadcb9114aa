"""`reconcile lists` (R-REC-3): every contact's desired dialer lists recomputed and applied as
differences.

It is `lists rebuild` run as a reconcile job: `list_operations.rebuild_lists` reads each mapped
contact (and each contact with list state) from GHL as it is now, computes its desired lists
(agent, tags, pipeline stage, consent: `call_lists.sync_contact_lists`) and applies only the
difference against `contact_list_memberships`, retrying blocked memberships. A contact whose
lists are right costs its one GHL read and no Aloware call. A contact that fails is counted in
`errors` and the run goes on.
"""

from __future__ import annotations

import uuid

from df_middleware.config import Settings
from df_middleware.connectors.suite import Connectors
from df_middleware.db.session import Database
from df_middleware.sync.list_operations import rebuild_lists
from df_middleware.sync.reconcile_runs import ReconcileNotConfigured, ReconcileProgress, Totals

#: How many failed contacts the run's error message names.
FAILURES_SHOWN = 5


async def reconcile_lists(
    settings: Settings,
    db: Database,
    connectors: Connectors,
    run_id: uuid.UUID,
    totals: Totals,
    *,
    progress: ReconcileProgress | None = None,
) -> str | None:
    """Re-apply every contact's lists; fills `totals`; returns what failed (None: nothing)."""
    del run_id  # lists keep no cursor: every run covers every contact
    if connectors.ghl is None or connectors.aloware is None:
        raise ReconcileNotConfigured(
            "reconcile lists needs GHL (GHL_LOCATION_ID with GHL_API_KEY or OAuth) and Aloware "
            "(ALOWARE_API_TOKEN)"
        )
    seen = 0

    def advanced(done: int, total: int) -> None:
        nonlocal seen
        if progress is not None:
            if seen == 0:
                progress.start(total)
            progress.advance(done - seen)
        seen = done
        totals.scanned = done

    report = await rebuild_lists(settings, db, connectors, progress=advanced)
    totals.scanned = report.contacts
    totals.drifted = totals.repaired = report.changed
    totals.errors = len(report.failed)
    if not report.failed:
        return None
    named = "; ".join(f"{contact}: {error}" for contact, error in report.failed[:FAILURES_SHOWN])
    return f"{len(report.failed)} of {report.contacts} contacts failed: {named}"
