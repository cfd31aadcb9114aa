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
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from df_middleware.config import Settings
from df_middleware.connectors.aloware import AlowareClient
from df_middleware.connectors.ghl import GhlClient
from df_middleware.db.models import AgentDirectory
from df_middleware.db.session import Database
from df_middleware.errors import SyncError

#: A directory file is configuration, not data: larger than this is a mistake (a wrong path).
MAX_FILE_BYTES = 1024 * 1024
MAX_AGENTS = 1000
MAX_TEXT_CHARS = 256
MAX_EMAIL_CHARS = 320
#: How long start-up waits for one system's user list before applying the file without it.
USERS_LOOKUP_TIMEOUT_SECONDS = 30.0
#: Upper-cased, it becomes part of Aloware list names `DF_<AGENT>_<LIST>`.
AGENT_KEY_PATTERN = re.compile(r"[A-Za-z0-9_]{1,64}")
_EMAIL_SHAPE = re.compile(r"[^@\s]+@[^@\s]+")
#: The keys a file may use: `agent_directory`'s columns, in the order messages list them.
COLUMNS = (
    "agent_key",
    "display_name",
    "ghl_owner_id",
    "ghl_owner_email",
    "ghl_assigned_agent_field_value",
    "required_tag",
    "aloware_user_id",
    "is_active",
)
_OPTIONAL_TEXT = COLUMNS[2:7]

System = Literal["ghl", "aloware"]
FileFormat = Literal["yaml", "json", "either"]


class AgentsFileError(ValueError):
    """An agents file refused whole: the message names the file and, where there is one, the line."""

    def __init__(self, source: str | Path, problem: str, line: int | None = None) -> None:
        self.source = str(source)
        self.problem = problem
        self.line = line
        where = f"{source}, line {line}" if line is not None else str(source)
        super().__init__(f"agents file {where}: {problem}")


class AgentSpec(BaseModel):
    """One agent as the file states it, validated: strict types (a `yes` that YAML made a boolean
    is not a tag), blank text is absent, `agent_key` upper-cased, `display_name` defaulting to the
    key as written."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, str_strip_whitespace=True)

    agent_key: str
    display_name: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    ghl_owner_id: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    ghl_owner_email: str | None = Field(None, max_length=MAX_EMAIL_CHARS)
    ghl_assigned_agent_field_value: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    required_tag: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    aloware_user_id: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    is_active: bool = True

    @model_validator(mode="before")
    @classmethod
    def _absent_and_defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        values = dict(data)
        for column in (*_OPTIONAL_TEXT, "display_name"):
            value = values.get(column)
            if isinstance(value, str) and not value.strip():
                values[column] = None
        if values.get("display_name") is None:
            key = values.get("agent_key")
            values["display_name"] = key.strip() if isinstance(key, str) else key
        return values

    @field_validator("agent_key", mode="before")
    @classmethod
    def _key(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value  # the strict type check names it
        key = value.strip()
        if not AGENT_KEY_PATTERN.fullmatch(key):
            raise ValueError(
                f"{value!r} is not an agent key: letters, digits and _ only, 1 to 64 of them "
                "(it becomes part of the Aloware list names DF_<AGENT>_<LIST>)"
            )
        return key.upper()

    @field_validator("aloware_user_id", mode="before")
    @classmethod
    def _aloware_id(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a user id (text or a whole number), got true/false")
        return str(value) if isinstance(value, int) else value

    @field_validator(
        "display_name",
        "ghl_owner_id",
        "ghl_owner_email",
        "ghl_assigned_agent_field_value",
        "required_tag",
        "aloware_user_id",
    )
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        """Control characters (a NUL, a terminal escape) are refused: PostgreSQL cannot store a
        NUL at all, and none belongs in a name, an id, an email or a tag."""
        if value is not None and any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ValueError("contains a control character")
        return value

    @field_validator("ghl_owner_email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL_SHAPE.fullmatch(value):
            raise ValueError(f"{value!r} is not an email address")
        return value


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


# --- reading the file ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Nested:
    """A value that is a list or an object, where every column holds one value."""

    kind: str


@dataclass(frozen=True)
class _Field:
    key: str | None  # None: a YAML key that is not a plain value
    value: Any
    line: int


@dataclass(frozen=True)
class _Item:
    line: int
    fields: tuple[_Field, ...] | None  # None: the item is not an object
    kind: str


def load_agents_file(path: str | Path) -> list[AgentSpec]:
    """The agents of `path`, or AgentsFileError naming the file and the line.

    `.yaml`/`.yml` are YAML, `.json` is JSON; any other name is tried as JSON, then as YAML.
    """
    source = Path(path)
    try:
        with source.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise AgentsFileError(source, f"cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise AgentsFileError(source, f"larger than {MAX_FILE_BYTES} bytes; is it the right file?")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AgentsFileError(source, "not UTF-8 text", raw[: exc.start].count(b"\n") + 1) from None
    suffix = source.suffix.lower()
    fmt: FileFormat = "yaml" if suffix in (".yaml", ".yml") else "json" if suffix == ".json" else "either"
    return parse_agents(text, source, fmt)


def parse_agents(text: str, source: str | Path, fmt: FileFormat = "either") -> list[AgentSpec]:
    """The agents a file's text states (pure). `source` only names the file in messages."""
    try:
        return _parse_agents(text, source, fmt)
    except RecursionError:
        # PyYAML composes nested collections recursively: a few hundred KB of `[[[…` exhaust the
        # stack before any agent is read.
        raise AgentsFileError(source, "nested too deeply to be a list of agents") from None


def _parse_agents(text: str, source: str | Path, fmt: FileFormat) -> list[AgentSpec]:
    if fmt == "json":
        items = _json_items(text, source)
    elif fmt == "yaml":
        items = _yaml_items(text, source)
    else:
        try:
            items = _json_items(text, source)
        except AgentsFileError as as_json:
            if as_json.problem.startswith("not valid JSON"):
                items = _yaml_items(text, source)
            else:
                raise
    return _specs_of(items, source)


def _specs_of(items: Sequence[_Item], source: str | Path) -> list[AgentSpec]:
    """Validate every item; the first problem, by its line, refuses the file."""
    specs: list[AgentSpec] = []
    key_lines: dict[str, int] = {}
    for number, item in enumerate(items, 1):
        if item.fields is None:
            raise AgentsFileError(
                source,
                f"agent {number}: expected an object of agent_directory columns, got {item.kind}",
                item.line,
            )
        values: dict[str, Any] = {}
        lines: dict[str, int] = {}
        for entry in item.fields:
            if entry.key not in COLUMNS:
                shown = repr(entry.key) if entry.key is not None else "a key that is not a name"
                raise AgentsFileError(
                    source, f"unknown key {shown}; the keys are {', '.join(COLUMNS)}", entry.line
                )
            if entry.key in values:
                first = lines[entry.key]
                raise AgentsFileError(
                    source, f"{entry.key} is given twice for one agent (first on line {first})", entry.line
                )
            if isinstance(entry.value, _Nested):
                raise AgentsFileError(
                    source, f"{entry.key}: expected one value, got {entry.value.kind}", entry.line
                )
            values[entry.key] = entry.value
            lines[entry.key] = entry.line
        if "agent_key" not in values:
            raise AgentsFileError(source, f"agent {number} has no agent_key (it is required)", item.line)
        try:
            spec = AgentSpec.model_validate(values)
        except ValidationError as exc:
            error = exc.errors()[0]
            column = str(error["loc"][0]) if error["loc"] else "agent_key"
            raise AgentsFileError(
                source, f"{column}: {_explain(error)}", lines.get(column, item.line)
            ) from None
        first_line = key_lines.get(spec.agent_key)
        if first_line is not None:
            raise AgentsFileError(
                source,
                f"agent_key {spec.agent_key} is named twice (first on line {first_line}; keys are compared "
                "without regard to case)",
                lines["agent_key"],
            )
        key_lines[spec.agent_key] = lines["agent_key"]
        specs.append(spec)
    return specs


def _explain(error: ErrorDetails) -> str:
    context = error.get("ctx") or {}
    if error["type"] == "value_error" and "error" in context:
        return str(context["error"])
    return f"{error['msg'][:1].lower()}{error['msg'][1:]} (got {_kind(error['input'])})"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return "text"
    if isinstance(value, _Nested):
        return value.kind
    return f"a {type(value).__name__}"  # a YAML date or time


# YAML: composed into nodes, which carry their lines.

_YAML_STR = "tag:yaml.org,2002:str"
_YAML_INT = "tag:yaml.org,2002:int"


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "an object"
    return "a single value"


def _yaml_items(text: str, source: str | Path) -> list[_Item]:
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        root = loader.get_single_node()
        if root is None:
            raise AgentsFileError(source, "the file is empty; expected a list of agents ([] for none)", 1)
        if not isinstance(root, yaml.SequenceNode):
            raise AgentsFileError(
                source, f"expected a list of agents, got {_node_kind(root)}", root.start_mark.line + 1
            )
        items: list[_Item] = []
        for node in root.value:
            _bound(items, source, node.start_mark.line + 1)
            if not isinstance(node, yaml.MappingNode):
                items.append(_Item(node.start_mark.line + 1, None, _node_kind(node)))
                continue
            fields = tuple(
                _Field(
                    key.value if isinstance(key, yaml.ScalarNode) else None,
                    _yaml_value(loader, value),
                    key.start_mark.line + 1,
                )
                for key, value in node.value
            )
            items.append(_Item(node.start_mark.line + 1, fields, "an object"))
        return items
    except yaml.MarkedYAMLError as exc:
        raise AgentsFileError(source, *_yaml_problem(exc, text)) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise AgentsFileError(
            source, f"not valid YAML: character {exc.character!r} is not allowed", line
        ) from None
    except yaml.YAMLError as exc:
        raise AgentsFileError(source, f"not valid YAML: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_problem(exc: yaml.MarkedYAMLError, text: str) -> tuple[str, int | None]:
    """PyYAML's error as one clause and the line where it noticed the problem; where the
    construct it was reading began is named too, as the mistake is often there. A problem noticed
    only at the end of the file (a quote never closed) is the line where that construct began."""
    mark = exc.problem_mark or exc.context_mark
    if mark is not None and mark.index >= len(text.rstrip()) and exc.context_mark is not None:
        mark = exc.context_mark
    problem = exc.problem or exc.context or "cannot be read"
    if exc.problem and exc.context:
        began = f" on line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
        problem = f"{exc.problem} ({exc.context}{began})"
    return f"not valid YAML: {problem}", mark.line + 1 if mark is not None else None


def _yaml_value(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return _Nested("a list")
    if isinstance(node, yaml.MappingNode):
        return _Nested("an object")
    if node.tag == _YAML_INT and isinstance(node, yaml.ScalarNode) and len(node.value) > MAX_NUMBER_DIGITS:
        return node.value  # refused by validation, with its line (see MAX_NUMBER_DIGITS)
    value = loader.construct_object(node, deep=True)
    if node.tag == _YAML_INT and isinstance(value, int) and str(value) != node.value:
        # YAML 1.1 reads 0123 as octal 83 and 1_000 as 1000: an id is what was written.
        return node.value
    return value


# JSON: parsed by the standard library; lines from a scan of the valid text.


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its pairs, in order: a key given twice stays visible."""


#: Longest whole number read as a number; a longer one stays its digits (Python refuses to convert
#: more than 4300 digits, and no id or flag of an agent is that long): validation then names its line.
MAX_NUMBER_DIGITS = 64


def _json_int(digits: str) -> int | str:
    return int(digits) if len(digits) <= MAX_NUMBER_DIGITS else digits


def _json_items(text: str, source: str | Path) -> list[_Item]:
    try:
        data = json.loads(text, object_pairs_hook=_Pairs, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        raise AgentsFileError(source, f"not valid JSON: {exc.msg} (column {exc.colno})", exc.lineno) from None
    except RecursionError:
        raise AgentsFileError(source, "not valid JSON: nested too deeply") from None
    if not isinstance(data, list):
        kind = "an object" if isinstance(data, _Pairs) else "a single value"
        raise AgentsFileError(source, f"expected a list of agents, got {kind}", _first_line(text))
    positions = _json_positions(text)
    items: list[_Item] = []
    for index, value in enumerate(data):
        item_line, key_lines = positions[index]
        _bound(items, source, item_line)
        if not isinstance(value, _Pairs):
            kind = "a list" if isinstance(value, list) else "a single value"
            items.append(_Item(item_line, None, kind))
            continue
        fields = tuple(
            _Field(key, _json_value(item), line) for (key, item), line in zip(value, key_lines, strict=True)
        )
        items.append(_Item(item_line, fields, "an object"))
    return items


def _json_value(value: Any) -> Any:
    if isinstance(value, _Pairs):
        return _Nested("an object")
    if isinstance(value, list):
        return _Nested("a list")
    return value


def _first_line(text: str) -> int:
    stripped = text.lstrip()
    return text[: len(text) - len(stripped)].count("\n") + 1


def _json_positions(text: str) -> list[tuple[int, list[int]]]:
    """For valid JSON whose top level is a list: each item's line and, for an object, its keys' lines."""
    positions: list[tuple[int, list[int]]] = []
    stack: list[str] = []
    line, index, length = 1, 0, len(text)
    item_pending = expecting_key = False
    while index < length:
        char = text[index]
        if char == "\n":
            line += 1
        elif not char.isspace():
            if len(stack) == 1 and item_pending and char not in ",]":
                positions.append((line, []))
                item_pending = False
            if char == '"':
                end = index + 1
                while text[end] != '"':
                    end += 2 if text[end] == "\\" else 1
                if len(stack) == 2 and stack[-1] == "{" and expecting_key:
                    positions[-1][1].append(line)
                    expecting_key = False
                index = end
            elif char in "[{":
                stack.append(char)
                item_pending = len(stack) == 1
                expecting_key = len(stack) == 2 and char == "{"
            elif char in "]}":
                stack.pop()
            elif char == ",":
                item_pending = len(stack) == 1
                expecting_key = len(stack) == 2 and stack[-1] == "{"
        index += 1
    return positions


def _bound(items: Sequence[_Item], source: str | Path, line: int) -> None:
    if len(items) >= MAX_AGENTS:
        raise AgentsFileError(source, f"more than {MAX_AGENTS} agents", line)


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
    db: Database, specs: Sequence[AgentSpec], *, ghl: GhlClient | None, aloware: AlowareClient | None
) -> ApplyReport:
    """Make `agent_directory` what `specs` say, in one transaction: upsert by agent_key, agents
    not in `specs` inactive (never deleted), missing ids filled by email. GHL and Aloware are asked
    only when some agent needs an id from them; their failure is reported, not raised."""
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
            report = await _write(db, specs, ghl_users, aloware_users)
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
        for key in sorted(rows):
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
