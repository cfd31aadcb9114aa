"""Which agent a GHL contact belongs to, and which of that agent's dialer lists it should be on
(SPEC §6.5: R-AG-1, R-AG-2). Pure functions only: the handlers in `sync/call_lists.py` read the
inputs (payload, directory, registry rows, consent) and apply what these decide.

- **Agent (R-AG-1)**, first match wins: the contact's owner (`assignedTo`) is an agent's
  `ghl_owner_id`; the agent custom field's value is an agent's `ghl_assigned_agent_field_value`
  (case-insensitive); one of the contact's tags is an agent's `required_tag` (case-insensitive);
  else DEFAULT_AGENT_KEY. Only active agents count, tried in `agent_key` order, so a tie always
  goes the same way whatever order the directory was read in.
- **Placement (R-AG-2).** The pipeline places a contact: stage `new`/`new lead` on NEW_LEADS,
  `follow up` on FOLLOW_UP, `hot` on HOT, `won`/`lost`/`closed`/`dead` (or an opportunity whose
  status is won, lost or abandoned) on no list at all (`CLOSED`). Before any stage, a contact is a
  new lead. A stage with another name leaves the placement as it was.
- **Desired set (R-AG-2, R-AG-3).** The placement's list, plus every list key one of the contact's
  tags matches (TAG_MATCH_MODE); nothing when the contact is closed or may not be dialled.
- **Plan (R-AG-3, R-AG-4).** The difference between the memberships we applied and the desired
  ones. Aloware can add a contact to one list, or remove it from *all* lists (there is no
  remove-from-one call), so leaving any list means remove-all followed by re-adding the lists it
  stays on; joining only means adds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias

from df_middleware.texting_payload import scalar_text

TagMatchMode: TypeAlias = Literal["exact", "case_insensitive", "regex"]

NEW_LEADS = "NEW_LEADS"
FOLLOW_UP = "FOLLOW_UP"
HOT = "HOT"
#: Placement of a contact whose deal is over: on no list, whatever its tags say.
CLOSED = "CLOSED"

MEMBER = "member"
BLOCKED = "blocked"
LIST_MISSING = "list missing"

#: Stage names (normalised: lower case, letters and digits only) → placement.
STAGE_PLACEMENTS: Mapping[str, str] = {
    "new": NEW_LEADS,
    "newlead": NEW_LEADS,
    "newleads": NEW_LEADS,
    "followup": FOLLOW_UP,
    "hot": HOT,
    "won": CLOSED,
    "lost": CLOSED,
    "closed": CLOSED,
    "dead": CLOSED,
}
#: Opportunity statuses that end the deal, whatever its stage is called.
CLOSING_STATUSES = frozenset({"won", "lost", "abandoned"})

#: Aloware list names are `DF_<AGENT>_<LIST>`; both parts are letters, digits and `_`.
LIST_NAME_PREFIX = "DF_"


class AgentRule(Protocol):
    """What agent resolution reads of an agent of the directory."""

    @property
    def agent_key(self) -> str: ...
    @property
    def ghl_owner_id(self) -> str | None: ...
    @property
    def ghl_assigned_agent_field_value(self) -> str | None: ...
    @property
    def required_tag(self) -> str | None: ...
    @property
    def is_active(self) -> bool: ...


def name_key(name: str) -> str:
    """A custom field's name as R-AG-1 compares it: `assignedAgent`, `assigned_agent`,
    `Assigned Agent` and `contact.assigned_agent` are one name (lower case, letters and digits,
    GHL's `contact.` model prefix dropped)."""
    text = name.strip().strip("{} ").lower()
    if text.startswith("contact."):
        text = text[len("contact.") :]
    return "".join(ch for ch in text if ch.isalnum())


def _folded(value: str | None) -> str:
    return (value or "").strip().casefold()


def resolve_agent(
    *,
    assigned_to: str | None,
    field_value: str | None,
    tags: Iterable[str],
    agents: Sequence[AgentRule],
    default_key: str,
) -> str:
    """R-AG-1: the agent key of a contact with this owner, agent field value and tags."""
    active = sorted((a for a in agents if a.is_active), key=lambda a: a.agent_key)
    owner = (assigned_to or "").strip()
    if owner:
        for agent in active:
            if agent.ghl_owner_id and agent.ghl_owner_id.strip() == owner:
                return agent.agent_key
    wanted = _folded(field_value)
    if wanted:
        for agent in active:
            if _folded(agent.ghl_assigned_agent_field_value) == wanted:
                return agent.agent_key
    folded_tags = {_folded(tag) for tag in tags} - {""}
    for agent in active:
        if agent.required_tag and _folded(agent.required_tag) in folded_tags:
            return agent.agent_key
    return default_key


def list_name(agent_key: str, list_key: str) -> str:
    """The Aloware list of an agent's list key (R-AG-3)."""
    return f"{LIST_NAME_PREFIX}{agent_key.upper()}_{list_key.upper()}"


def tag_matches(tag: str, list_key: str, mode: TagMatchMode) -> bool:
    """Whether a tag names a list key under TAG_MATCH_MODE (R-AG-2). In `regex` mode the list key
    is the pattern and must match the whole tag."""
    text = tag.strip()
    if mode == "exact":
        return text == list_key
    if mode == "regex":
        try:
            return re.fullmatch(list_key, text) is not None
        except re.error:
            return False
    return text.casefold() == list_key.casefold()


def tag_lists(tags: Iterable[str], list_keys: Sequence[str], mode: TagMatchMode) -> frozenset[str]:
    """The list keys the contact's tags put it on."""
    tag_list = [t for t in tags if isinstance(t, str) and t.strip()]
    return frozenset(key for key in list_keys if any(tag_matches(t, key, mode) for t in tag_list))


def stage_placement(stage_name: str | None, status: str | None, current: str | None) -> str | None:
    """R-AG-2: where an opportunity event places the contact, given where it was.

    A closing status (won, lost, abandoned) closes it; a known stage name places it; a reopened
    deal (status open) whose stage name we do not know goes back to being a lead rather than
    staying closed; anything else leaves the placement as it was."""
    folded_status = _folded(status)
    if folded_status in CLOSING_STATUSES:
        return CLOSED
    placement = STAGE_PLACEMENTS.get(name_key(stage_name or ""))
    if placement is not None:
        return placement
    if folded_status == "open" and current == CLOSED:
        return None
    return current


def desired_lists(
    *,
    list_keys: Sequence[str],
    tags: Iterable[str],
    mode: TagMatchMode,
    placement: str | None,
    blocked_because: str | None,
) -> frozenset[str]:
    """R-AG-2: the list keys a contact should be on. NEW_LEADS until the pipeline places it
    elsewhere; the tags' lists on top; nothing when the deal is closed or the person may not be
    dialled (R-OPT-3, R-OPT-6: the reason comes from the consent registries)."""
    if blocked_because is not None or placement == CLOSED:
        return frozenset()
    wanted = set(tag_lists(tags, list_keys, mode))
    base = placement or NEW_LEADS
    if base in list_keys:
        wanted.add(base)
    return frozenset(wanted)


Membership: TypeAlias = tuple[str, str]  # (agent_key, list_key)


@dataclass(frozen=True)
class ListPlan:
    """What to do to a contact's lists, from the memberships we applied to the desired ones.

    `remove_all`: leave every list first (some membership is no longer wanted); `add`: the
    memberships to add afterwards (every desired one after a remove-all, else only the new ones);
    `drop`: rows to delete without any call (blocked memberships no longer wanted, and every
    membership a remove-all ends); `keep`: desired memberships that need nothing.
    """

    desired: frozenset[Membership]
    remove_all: bool = False
    add: frozenset[Membership] = field(default_factory=frozenset)
    drop: frozenset[Membership] = field(default_factory=frozenset)

    @property
    def calls_nothing(self) -> bool:
        return not self.remove_all and not self.add

    @property
    def changes_nothing(self) -> bool:
        return self.calls_nothing and not self.drop


def plan_lists(current: Mapping[Membership, str], agent_key: str, desired: Iterable[str]) -> ListPlan:
    """R-AG-3, R-AG-4: the difference between `current` (membership → `member`/`blocked`, any
    agent's) and the desired list keys of `agent_key`.

    A reassigned contact's old memberships are simply not desired any more, so it leaves them all
    and joins the new agent's lists in one plan. A blocked membership (its list was missing) that
    is still desired needs no call here: `lists rebuild` retries those."""
    wanted = frozenset((agent_key, key) for key in desired)
    members = {m for m, status in current.items() if status == MEMBER}
    leaving = members - wanted
    if leaving:
        return ListPlan(
            desired=wanted,
            remove_all=True,
            add=wanted,
            drop=frozenset(current) - wanted,
        )
    return ListPlan(
        desired=wanted,
        add=frozenset(wanted - set(current)),
        drop=frozenset(set(current) - wanted),
    )


def _tag_values(value: Any) -> list[str] | None:
    """Tags as a list of text, or None when the value is not tags at all (then they are unknown
    and read from GHL, rather than taken as "no tags", which would strip the contact's lists)."""
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return [t.strip() for t in value if t.strip()]
    return None


@dataclass(frozen=True)
class ContactSignals:
    """What a GHL contact (webhook or API) says about its agent and lists.

    `tags` is None when the source does not say (an opportunity webhook, a workflow webhook without
    the tags): then the contact must be read from GHL. `field_ids` are native custom fields
    (definition id → value); `named_fields` are those a workflow webhook carries by name
    (`name_key` → value).
    """

    assigned_to: str | None
    tags: tuple[str, ...] | None
    field_ids: Mapping[str, str]
    named_fields: Mapping[str, str]
    #: Whether the source says who owns the contact: an owner, or the owner key left out of a
    #: contact GHL sends whole (native webhooks, the API: unassigned). A malformed owner says nothing.
    owner_known: bool = True

    def over(self, base: ContactSignals) -> ContactSignals:
        """These signals completed by `base` (GHL's contact as it is now) where they say nothing."""
        return ContactSignals(
            assigned_to=self.assigned_to if self.owner_known else base.assigned_to,
            tags=self.tags if self.tags is not None else base.tags,
            field_ids={**base.field_ids, **self.field_ids},
            named_fields={**base.named_fields, **self.named_fields},
            owner_known=self.owner_known or base.owner_known,
        )


OWNER_KEYS = ("assignedTo", "assigned_to")


def contact_signals(payload: Mapping[str, Any], *, whole: bool = True) -> ContactSignals:
    """Read a GHL contact — a native webhook, a workflow webhook or `GET /contacts/{id}`'s
    contact — into `ContactSignals`. Workflow webhooks nest the contact under `contact` in some
    set-ups and put custom fields at the top level or under `customData`, by name.

    `whole`: the source is the whole contact (native webhooks, the API), so a missing owner means
    unassigned; a workflow webhook carries what its workflow was set up to send, so a missing owner
    is unknown. An owner that is not text (an object, a list) is unknown either way."""
    nested = payload.get("contact") if isinstance(payload.get("contact"), Mapping) else {}
    assert isinstance(nested, Mapping)
    owners = [
        source[key] for source in (payload, nested) for key in OWNER_KEYS if source.get(key) is not None
    ]
    assigned = next((text for text in map(scalar_text, owners) if text), None)
    malformed = any(not isinstance(value, str) for value in owners)
    owner_known = assigned is not None or (whole and not malformed)
    tags = _tag_values(payload.get("tags"))
    if tags is None:
        tags = _tag_values(nested.get("tags"))
    field_ids: dict[str, str] = {}
    for source in (payload.get("customFields"), payload.get("customField"), nested.get("customFields")):
        if isinstance(source, list):
            for item in source:
                if isinstance(item, Mapping):
                    field_id, value = scalar_text(item.get("id")), scalar_text(item.get("value"))
                    if field_id and value:
                        field_ids.setdefault(field_id, value)
    named: dict[str, str] = {}
    for source in (payload, nested, payload.get("customData")):
        if isinstance(source, Mapping):
            for key, value in source.items():
                text = scalar_text(value)
                if isinstance(key, str) and text:
                    named.setdefault(name_key(key), text)
    return ContactSignals(
        assigned_to=assigned,
        tags=tuple(tags) if tags is not None else None,
        field_ids=field_ids,
        named_fields=named,
        owner_known=owner_known,
    )
