"""The agent directory from `AGENTS_FILE` (R-AG-5): read, checked line by line, applied in one transaction.

Nothing about agents is hard-coded: the file (YAML or JSON, a list of objects whose keys are exactly
`agent_directory`'s columns) is the directory. `serve`, `worker` and `agents seed` apply it; an
agent no longer in the file becomes inactive and is never deleted (its contacts' state and list
names still refer to it).

Why line numbers everywhere: the file is edited by hand and read at start-up, and a directory
silently half-applied would route leads to the wrong agent. So a file that does not parse, has an
unknown key, a value of the wrong type, or names an agent (or one key of an agent) twice is refused
whole, with the file and the line named, and the table is not touched. YAML is composed into nodes
(PyYAML keeps each node's line); JSON is parsed by the standard library and its lines found by a
small scan of the (by then known valid) text.

Missing ids are filled by exact email match (`ghl_owner_email`, compared after trimming and
lower-casing) against GHL's users (`GET /users/`) and Aloware's (`GET /webhook/users`). Those are
remote calls at start-up: a system that is not configured or cannot be reached is reported, the
file is applied all the same, and an id it had filled before from the same email is kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from df_middleware.agents.agents_file import (
    COLUMNS,
    AgentsFileError,
    AgentSpec,
    load_agents_file,
    parse_agents,
)
from df_middleware.config import Settings
from df_middleware.connectors.aloware import AlowareClient
from df_middleware.connectors.ghl import GhlClient
from df_middleware.db.models import AgentDirectory
from df_middleware.db.session import Database
from df_middleware.errors import SyncError

__all__ = [
    "Agent",
    "AgentSpec",
    "AgentsFileError",
    "ApplyReport",
    "active_agents",
    "all_agents",
    "apply_agents",
    "apply_agents_file",
    "load_agents_file",
    "parse_agents",
]

#: How long start-up waits for one system's user list before applying the file without it.
USERS_LOOKUP_TIMEOUT_SECONDS = 30.0

System = Literal["ghl", "aloware"]


@dataclass(frozen=True)
class Agent:
    """One row of `agent_directory`, as agent resolution reads it (R-AG-1)."""

    agent_key: str
    display_name: str
    ghl_owner_id: str | None
    ghl_owner_email: str | None
    ghl_assigned_agent_field_value: str | None
    required_tag: str | None
    aloware_user_id: str | None
    is_active: bool

    @classmethod
    def from_row(cls, row: AgentDirectory) -> Agent:
        return cls(**{column: getattr(row, column) for column in COLUMNS})


# --- applying it -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilledId:
    agent_key: str
    system: System
    user_id: str


@dataclass(frozen=True)
class Unmatched:
    agent_key: str
    system: System
    email: str
    why: str


@dataclass
class ApplyReport:
    """What applying a file did. `unavailable`: systems whose users could not be asked (not
    configured, or unreachable), with why; their missing ids stay empty (or as filled before)."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deactivated: list[str] = field(default_factory=list)
    ids_filled: list[FilledId] = field(default_factory=list)
    unmatched: list[Unmatched] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for an operator (emails are not in it: it is also logged)."""
        agents = len(self.created) + len(self.updated) + len(self.unchanged)
        parts = [
            f"{agents} agents in the file: {len(self.created)} created, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged",
            f"{len(self.deactivated)} deactivated",
            f"{len(self.ids_filled)} ids filled by email",
            f"{len(self.unmatched)} unmatched emails",
        ]
        if self.unavailable:
            parts.append(f"not asked for users: {', '.join(sorted(self.unavailable))}")
        return "; ".join(parts)


#: One system's users: normalised email → the ids of the users with it.
UsersByEmail = Mapping[str, Sequence[str]]


def normalize_email(email: str) -> str:
    return email.strip().lower()


def users_by_email(users: Iterable[tuple[str | None, str]]) -> dict[str, list[str]]:
    """(email, id) pairs → normalised email → ids (several when accounts share an email)."""
    found: dict[str, list[str]] = {}
    for email, user_id in users:
        if email and email.strip():
            ids = found.setdefault(normalize_email(email), [])
            if user_id not in ids:
                ids.append(user_id)
    return found


@dataclass(frozen=True)
class IdDecision:
    user_id: str | None
    filled: bool = False
    unmatched_why: str | None = None


def decide_id(
    given: str | None,
    email: str | None,
    users: UsersByEmail | None,
    stored: Agent | None,
    stored_id: str | None,
) -> IdDecision:
    """One system's user id for one agent (pure).

    The file's id wins. Without one, the only user whose email is the agent's `ghl_owner_email`
    (exact, after trimming and lower-casing). When the system's users could not be asked
    (`users` None), the id stored before is kept if it was for the same email: a GHL outage at
    start-up must not unroute an agent.
    """
    if given is not None:
        return IdDecision(given)
    if email is None:
        return IdDecision(None)
    if users is None:
        same_email = stored is not None and normalize_email(stored.ghl_owner_email or "") == normalize_email(
            email
        )
        return IdDecision(stored_id if same_email else None)
    matches = users.get(normalize_email(email), ())
    if len(matches) == 1:
        return IdDecision(matches[0], filled=True)
    if not matches:
        return IdDecision(None, unmatched_why="no user has this email")
    return IdDecision(None, unmatched_why=f"{len(matches)} users have this email")


def decide_row(
    spec: AgentSpec, stored: Agent | None, ghl_users: UsersByEmail | None, aloware_users: UsersByEmail | None
) -> tuple[Agent, list[FilledId], list[Unmatched]]:
    """The row an agent of the file should be, and what matching by email did (pure)."""
    filled: list[FilledId] = []
    unmatched: list[Unmatched] = []
    ids: dict[System, str | None] = {}
    wanted: list[tuple[System, str | None, UsersByEmail | None, str | None]] = [
        ("ghl", spec.ghl_owner_id, ghl_users, stored.ghl_owner_id if stored else None),
        ("aloware", spec.aloware_user_id, aloware_users, stored.aloware_user_id if stored else None),
    ]
    for system, given, users, stored_id in wanted:
        decision = decide_id(given, spec.ghl_owner_email, users, stored, stored_id)
        ids[system] = decision.user_id
        if decision.filled and decision.user_id is not None:
            filled.append(FilledId(spec.agent_key, system, decision.user_id))
        if decision.unmatched_why is not None and spec.ghl_owner_email is not None:
            unmatched.append(Unmatched(spec.agent_key, system, spec.ghl_owner_email, decision.unmatched_why))
    row = Agent(
        agent_key=spec.agent_key,
        display_name=spec.display_name,
        ghl_owner_id=ids["ghl"],
        ghl_owner_email=spec.ghl_owner_email,
        ghl_assigned_agent_field_value=spec.ghl_assigned_agent_field_value,
        required_tag=spec.required_tag,
        aloware_user_id=ids["aloware"],
        is_active=spec.is_active,
    )
    return row, filled, unmatched


async def _ask_users(
    system: System, fetch: Callable[[], Awaitable[list[tuple[str | None, str]]]] | None, needed: bool
) -> tuple[dict[str, list[str]] | None, str | None]:
    """A system's users by email, or (None, why not). Never raises for the remote's failure."""
    if not needed:
        return None, None
    if fetch is None:
        return None, "not configured"
    try:
        async with asyncio.timeout(USERS_LOOKUP_TIMEOUT_SECONDS):
            return users_by_email(await fetch()), None
    except TimeoutError:
        return None, f"no answer within {USERS_LOOKUP_TIMEOUT_SECONDS:.0f} s"
    except SyncError as exc:
        return None, str(exc) or type(exc).__name__


def _ghl_fetch(ghl: GhlClient | None) -> Callable[[], Awaitable[list[tuple[str | None, str]]]] | None:
    if ghl is None:
        return None

    async def fetch() -> list[tuple[str | None, str]]:
        return [(user.email, user.id) for user in await ghl.list_users()]

    return fetch


def _aloware_fetch(
    aloware: AlowareClient | None,
) -> Callable[[], Awaitable[list[tuple[str | None, str]]]] | None:
    if aloware is None:
        return None

    async def fetch() -> list[tuple[str | None, str]]:
        return [(user.email, str(user.id)) for user in await aloware.list_users()]

    return fetch


async def apply_agents(
    db: Database,
    specs: Sequence[AgentSpec],
    *,
    ghl: GhlClient | None,
    aloware: AlowareClient | None,
    whole_directory: bool = True,
) -> ApplyReport:
    """Make `agent_directory` what `specs` say, in one transaction: upsert by agent_key, agents
    not in `specs` inactive (never deleted), missing ids filled by email. GHL and Aloware are asked
    only when some agent needs an id from them; their failure is reported, not raised.
    `whole_directory=False` upserts `specs` and leaves every other agent as it is (the admin
    API's create and update of one agent)."""
    seen: set[str] = set()
    for spec in specs:
        if spec.agent_key in seen:
            raise ValueError(f"agent_key {spec.agent_key} is given twice")
        seen.add(spec.agent_key)
    needs_ghl = any(s.ghl_owner_id is None and s.ghl_owner_email for s in specs)
    needs_aloware = any(s.aloware_user_id is None and s.ghl_owner_email for s in specs)
    (ghl_users, ghl_why), (aloware_users, aloware_why) = await asyncio.gather(
        _ask_users("ghl", _ghl_fetch(ghl), needs_ghl),
        _ask_users("aloware", _aloware_fetch(aloware), needs_aloware),
    )
    unavailable = {system: why for system, why in (("ghl", ghl_why), ("aloware", aloware_why)) if why}
    attempts = 3
    for attempt in range(1, attempts + 1):
        try:
            report = await _write(db, specs, ghl_users, aloware_users, whole_directory=whole_directory)
        except IntegrityError:
            # Another process (serve and worker starting together) inserted the same agent
            # first; the next attempt finds its row and updates it.
            if attempt == attempts:
                raise
            continue
        report.unavailable = unavailable
        return report
    raise AssertionError("unreachable")  # pragma: no cover


async def _write(
    db: Database,
    specs: Sequence[AgentSpec],
    ghl_users: UsersByEmail | None,
    aloware_users: UsersByEmail | None,
    *,
    whole_directory: bool,
) -> ApplyReport:
    report = ApplyReport()
    async with db.session() as session:
        result = await session.scalars(select(AgentDirectory).with_for_update())
        rows = {row.agent_key: row for row in result.all()}
        for spec in sorted(specs, key=lambda s: s.agent_key):
            row = rows.get(spec.agent_key)
            stored = Agent.from_row(row) if row is not None else None
            wanted, filled, unmatched = decide_row(spec, stored, ghl_users, aloware_users)
            report.ids_filled += filled
            report.unmatched += unmatched
            values = asdict(wanted)
            if row is None:
                session.add(AgentDirectory(**values))
                report.created.append(spec.agent_key)
                continue
            changed = {column: value for column, value in values.items() if getattr(row, column) != value}
            for column, value in changed.items():
                setattr(row, column, value)
            (report.updated if changed else report.unchanged).append(spec.agent_key)
        in_file = {spec.agent_key for spec in specs}
        for key in sorted(rows) if whole_directory else ():
            row = rows[key]
            if key not in in_file and row.is_active:
                row.is_active = False
                report.deactivated.append(key)
    return report


async def apply_agents_file(db: Database, settings: Settings, specs: Sequence[AgentSpec]) -> ApplyReport:
    """`apply_agents` with the clients the settings configure, opened for this and closed."""
    from df_middleware.connectors.suite import Connectors

    connectors = Connectors.from_settings(settings, db)
    try:
        return await apply_agents(db, specs, ghl=connectors.ghl, aloware=connectors.aloware)
    finally:
        await connectors.aclose()


async def upsert_agent(db: Database, settings: Settings, spec: AgentSpec) -> ApplyReport:
    """Create or update one agent (the admin API), its missing ids filled by email as the file's
    are; the rest of the directory is untouched. ValueError when its Aloware list names would
    meet another agent's (`list_name_clash`). With AGENTS_FILE set the file stays the directory:
    the next start applies it again (an agent made here and absent there becomes inactive)."""
    from df_middleware.agents.agents_file import list_name_clash
    from df_middleware.connectors.suite import Connectors

    keys = {agent.agent_key for agent in await all_agents(db)} | {spec.agent_key, settings.default_agent_key}
    clash = list_name_clash(sorted(keys), settings.list_keys)
    if clash is not None:
        raise ValueError(clash)
    connectors = Connectors.from_settings(settings, db)
    try:
        return await apply_agents(
            db, [spec], ghl=connectors.ghl, aloware=connectors.aloware, whole_directory=False
        )
    finally:
        await connectors.aclose()


async def all_agents(db: Database) -> list[Agent]:
    """Every agent of the directory, inactive ones included, ordered by agent_key."""
    async with db.session() as session:
        rows = (await session.scalars(select(AgentDirectory))).all()
    # Ordered here, by code point: PostgreSQL's collation may ignore `_`, and ties between
    # agents break by this order (R-AG-1), the same on both engines.
    return sorted((Agent.from_row(row) for row in rows), key=lambda agent: agent.agent_key)


async def active_agents(db: Database) -> list[Agent]:
    """The agents a contact may be assigned to (R-AG-1), ordered by agent_key (ties break by it)."""
    return [agent for agent in await all_agents(db) if agent.is_active]
