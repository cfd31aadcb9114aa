"""Operations on the dialer lists as a whole (SPEC §6.5, §8.3): what is on each list, which lists
are blocked, and a rebuild that re-applies every contact's desired lists.

Used by `df-middleware lists status|rebuild` (and the admin API later): each command calls one of
these functions and prints what it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, select

from df_middleware.agents.directory import active_agents
from df_middleware.config import Settings
from df_middleware.connectors.suite import Connectors
from df_middleware.db.models import CallListRegistry, ContactAgentState, ContactListMembership, ContactMapping
from df_middleware.db.session import Database
from df_middleware.errors import PermanentError, RetryableError
from df_middleware.sync.agent_routing import BLOCKED, MEMBER, list_name
from df_middleware.sync.call_lists import sync_contact_lists
from df_middleware.sync.registry import HandlerContext


@dataclass(frozen=True)
class ListLine:
    """One agent's list: its Aloware list (None: not found yet), members and blocked contacts."""

    agent_key: str
    list_key: str
    list_name: str
    aloware_list_id: str | None
    members: int
    blocked: int


@dataclass
class ListsStatus:
    lines: list[ListLine]

    @property
    def blocked_lists(self) -> list[str]:
        """Lists that contacts should be on but that Aloware does not have."""
        return [line.list_name for line in self.lines if line.blocked]

    def as_dict(self) -> dict[str, Any]:
        return {"lists": [asdict(line) for line in self.lines], "blocked_lists": self.blocked_lists}


async def lists_status(settings: Settings, db: Database) -> ListsStatus:
    """Every active agent's lists (AGENT_LIST_KEYS), plus any list with memberships (an agent
    since deactivated, a key since removed): members and blocked contacts per list."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    async with db.session() as session:
        rows = await session.execute(
            select(
                ContactListMembership.agent_key,
                ContactListMembership.list_key,
                ContactListMembership.status,
                func.count(),
            ).group_by(
                ContactListMembership.agent_key, ContactListMembership.list_key, ContactListMembership.status
            )
        )
        for agent_key, list_key, status, count in rows:
            counts.setdefault((agent_key, list_key), {})[status] = count
        registry = {
            (r.agent_key, r.list_key): r.aloware_list_id
            for r in await session.scalars(select(CallListRegistry))
        }
    wanted = {(a.agent_key, key) for a in await active_agents(db) for key in settings.list_keys}
    lines = [
        ListLine(
            agent_key=agent_key,
            list_key=list_key,
            list_name=list_name(agent_key, list_key),
            aloware_list_id=registry.get((agent_key, list_key)),
            members=counts.get((agent_key, list_key), {}).get(MEMBER, 0),
            blocked=counts.get((agent_key, list_key), {}).get(BLOCKED, 0),
        )
        for agent_key, list_key in sorted(wanted | set(counts))
    ]
    return ListsStatus(lines)


@dataclass
class RebuildReport:
    """What `lists rebuild` did: contacts recomputed, those whose lists changed, and failures."""

    contacts: int = 0
    changed: int = 0
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "contacts": self.contacts,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "failed": [{"contact_id": c, "error": e} for c, e in self.failed],
        }


async def rebuild_contacts(db: Database, agent_key: str | None) -> list[str]:
    """The GHL contacts a rebuild recomputes: every live mapped contact and every contact with list
    state; with `agent_key`, those we last assigned to that agent or that are on its lists."""
    async with db.session() as session:
        if agent_key is not None:
            assigned = select(ContactAgentState.contact_id).where(ContactAgentState.agent_key == agent_key)
            listed = select(ContactListMembership.contact_id).where(
                ContactListMembership.agent_key == agent_key
            )
            ids = set(await session.scalars(assigned)) | set(await session.scalars(listed))
        else:
            mapped = select(ContactMapping.ghl_contact_id).where(
                ContactMapping.deleted_at.is_(None), ContactMapping.aloware_contact_id.is_not(None)
            )
            ids = set(await session.scalars(mapped)) | set(
                await session.scalars(select(ContactAgentState.contact_id))
            )
    return sorted(i for i in ids if i)


async def rebuild_lists(
    settings: Settings,
    db: Database,
    connectors: Connectors,
    *,
    agent_key: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RebuildReport:
    """R-AG-3: recompute every contact's desired lists (from GHL's contact as it is now) and apply
    the differences, retrying blocked memberships (their list may exist now). A contact that fails
    is reported and the rebuild goes on; unchanged contacts cost no Aloware call."""
    ctx = HandlerContext(settings=settings, db=db, connectors=connectors, direction="ghl_to_aloware")
    contacts = await rebuild_contacts(db, agent_key.upper() if agent_key else None)
    report = RebuildReport(contacts=len(contacts))
    for done, contact_id in enumerate(contacts, start=1):
        try:
            entry = await sync_contact_lists(ctx, contact_id, retry_blocked=True)
        except (RetryableError, PermanentError) as exc:
            report.failed.append((contact_id, str(exc)))
        else:
            if entry is not None and entry.status == "success":
                report.changed += 1
            else:
                report.unchanged += 1
        if progress is not None:
            progress(done, len(contacts))
    return report
