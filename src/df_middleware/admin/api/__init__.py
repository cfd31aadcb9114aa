"""The admin API (SPEC §8.1): JSON under `/api/admin`, every route behind the admin secret
(`Authorization: Bearer` or `X-DF-ADMIN-SECRET`, constant time; 401 otherwise).

One module per flow: events (`events.py`), consent (`consent.py`), agents and lists
(`directory.py`), the sync log, mappings and connections (`operations.py`), reconcile and the
repair of one contact (`reconcile.py`). Every route calls the same service function as its CLI
twin; the routes only parse, bound and shape.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from df_middleware.admin.api.common import MAX_ADMIN_BODY_BYTES
from df_middleware.admin.api.consent import consent_router
from df_middleware.admin.api.directory import directory_router
from df_middleware.admin.api.events import events_router
from df_middleware.admin.api.operations import operations_router
from df_middleware.admin.api.reconcile import reconcile_router
from df_middleware.admin.auth import require_admin

ADMIN_API_PREFIX = "/api/admin"


#: Answers any admin operation may give besides its own (documented for clients and the fuzzer).
ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "The body is not JSON"},
    413: {"description": f"The body is larger than {MAX_ADMIN_BODY_BYTES} bytes"},
    401: {"description": "The admin secret is missing or wrong"},
    404: {"description": "No such event, number or agent"},
    409: {"description": "The action does not fit the current state (e.g. the event is being processed)"},
    422: {"description": "A filter, id or body field is invalid (the answer says which)"},
    503: {"description": "The database is unavailable, or the service is starting or stopping; retry"},
}


def admin_api_router() -> APIRouter:
    router = APIRouter(
        prefix=ADMIN_API_PREFIX,
        tags=["admin"],
        dependencies=[Depends(require_admin)],
        responses=ADMIN_RESPONSES,
    )
    for part in (
        events_router(),
        consent_router(),
        directory_router(),
        operations_router(),
        reconcile_router(),
    ):
        router.include_router(part)
    return router
