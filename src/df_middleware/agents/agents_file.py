"""`AGENTS_FILE` read and checked (R-AG-5): YAML or JSON, every problem named by its line.

The file is edited by hand and read at start-up, and a directory silently half-applied would route
leads to the wrong agent. So a file that does not parse, has an unknown key, a value of the wrong type,
or names an agent (or one key of an agent) twice is refused whole, with the file and the line named.
YAML is composed into nodes (PyYAML keeps each node's line); JSON is parsed by the standard library and
its lines found by a small scan of the (by then known valid) text. Pure: no database, no network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

#: A directory file is configuration, not data: larger than this is a mistake (a wrong path).
MAX_FILE_BYTES = 1024 * 1024
MAX_AGENTS = 1000
MAX_TEXT_CHARS = 256
MAX_EMAIL_CHARS = 320
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


def list_name_clash(agent_keys: Sequence[str], list_keys: Sequence[str]) -> str | None:
    """Two (agent, list key) pairs whose Aloware list names `DF_<AGENT>_<LIST>` are the same, said
    as a sentence, or None. With custom AGENT_LIST_KEYS, agent `A` and list `VERY_HOT` meet agent
    `A_VERY` and list `HOT` at `DF_A_VERY_HOT`: two agents' leads would share one dialer list."""
    owners: dict[str, tuple[str, str]] = {}
    for agent in agent_keys:
        for key in list_keys:
            name = f"DF_{agent.upper()}_{key.upper()}"
            other = owners.setdefault(name, (agent.upper(), key.upper()))
            if other != (agent.upper(), key.upper()):
                return (
                    f"agent {other[0]} list {other[1]} and agent {agent.upper()} list {key.upper()} "
                    f"would both be the Aloware list {name}: rename one agent_key or list key"
                )
    return None
