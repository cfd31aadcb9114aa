"""Agent resolution and desired lists as pure functions (SPEC §6.5), property-tested."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from df_middleware.connectors.ghl_models import CustomFieldDefinition
from df_middleware.sync.agent_field import find_field_id
from df_middleware.sync.agent_routing import (
    BLOCKED,
    CLOSED,
    MEMBER,
    NEW_LEADS,
    contact_signals,
    desired_lists,
    list_name,
    name_key,
    plan_lists,
    resolve_agent,
    stage_placement,
    tag_lists,
)

KEYS = ("CALL_NOW", "NEW_LEADS", "FOLLOW_UP", "HOT")


@dataclass(frozen=True)
class A:
    agent_key: str
    ghl_owner_id: str | None = None
    ghl_assigned_agent_field_value: str | None = None
    required_tag: str | None = None
    is_active: bool = True


AGENTS = [
    A("BOB", ghl_owner_id="u-bob", ghl_assigned_agent_field_value="Bob", required_tag="team-bob"),
    A("ALICE", ghl_owner_id="u-alice", ghl_assigned_agent_field_value="alice", required_tag="team-alice"),
    A("GONE", ghl_owner_id="u-gone", ghl_assigned_agent_field_value="gone", is_active=False),
]


def test_owner_then_field_then_tag_then_default() -> None:
    """R-AG-1: first match wins in the order owner, custom field, tag, default."""

    def resolve(owner: str | None = None, value: str | None = None, tags: tuple[str, ...] = ()) -> str:
        return resolve_agent(
            assigned_to=owner, field_value=value, tags=tags, agents=AGENTS, default_key="UNASSIGNED"
        )

    assert resolve("u-bob", "alice", ("team-alice",)) == "BOB"
    assert resolve("u-nobody", "ALICE", ("team-bob",)) == "ALICE"
    assert resolve(None, "  bob ", ()) == "BOB"
    assert resolve(None, "nobody", ("Team-Alice",)) == "ALICE"
    assert resolve(None, None, ("other",)) == "UNASSIGNED"
    assert resolve("u-gone", "gone", ()) == "UNASSIGNED", "inactive agents never match"


agent_strategy = st.builds(
    A,
    agent_key=st.sampled_from(["A1", "B2", "C3", "D4"]),
    ghl_owner_id=st.one_of(st.none(), st.sampled_from(["o1", "o2"])),
    ghl_assigned_agent_field_value=st.one_of(st.none(), st.sampled_from(["x", "X", "y"])),
    required_tag=st.one_of(st.none(), st.sampled_from(["t1", "T1", "t2"])),
    is_active=st.booleans(),
)


@given(
    agents=st.lists(agent_strategy, max_size=6),
    owner=st.one_of(st.none(), st.sampled_from(["o1", "o2", "o3"])),
    value=st.one_of(st.none(), st.sampled_from(["x", "y", "z"])),
    tags=st.lists(st.sampled_from(["t1", "t2", "t3"]), max_size=3),
)
def test_resolution_is_a_function_of_the_directory_not_its_order(
    agents: list[A], owner: str | None, value: str | None, tags: list[str]
) -> None:
    """R-AG-1: the same contact and directory always resolve to the same agent, whatever order the
    directory is read in (ties go to the first agent_key); the result is an active agent or the
    default."""
    kwargs = {"assigned_to": owner, "field_value": value, "tags": tags, "default_key": "UNASSIGNED"}
    first = resolve_agent(agents=agents, **kwargs)  # type: ignore[arg-type]
    assert resolve_agent(agents=list(reversed(agents)), **kwargs) == first  # type: ignore[arg-type]
    active = {a.agent_key for a in agents if a.is_active}
    assert first in active | {"UNASSIGNED"}
    if owner is not None:
        owners = sorted(a.agent_key for a in agents if a.is_active and a.ghl_owner_id == owner)
        if owners:
            assert first == owners[0]


def test_field_names_compare_without_case_or_punctuation() -> None:
    """R-AG-1: `assignedAgent`, `assigned_agent`, `Assigned Agent` and `contact.assigned_agent` are
    one name; a fieldKey match wins over a name match."""
    assert {
        name_key(n) for n in ("assignedAgent", "assigned_agent", "Assigned Agent", "contact.assigned_agent")
    } == {"assignedagent"}
    definitions = [
        CustomFieldDefinition.model_validate(
            {"id": "f-name", "name": "Assigned Agent", "fieldKey": "contact.other"}
        ),
        CustomFieldDefinition.model_validate(
            {"id": "f-key", "name": "Owner", "fieldKey": "contact.assigned_agent"}
        ),
    ]
    assert find_field_id(definitions, name_key("assignedAgent")) == "f-key"
    assert find_field_id(definitions[:1], name_key("assignedAgent")) == "f-name"
    assert find_field_id([], "assignedagent") is None


def test_signals_of_native_and_workflow_payloads() -> None:
    """R-AG-1: native webhooks carry custom fields by id, workflow webhooks by name; workflow tags
    may be one comma-separated string; a payload without tags says so (None)."""
    native = contact_signals(
        {"assignedTo": "u1", "tags": ["Hot", " "], "customFields": [{"id": "f1", "value": "bob"}]}
    )
    assert (native.assigned_to, native.tags, dict(native.field_ids)) == ("u1", ("Hot",), {"f1": "bob"})
    workflow = contact_signals({"contact_id": "c1", "tags": "hot, vip", "Assigned Agent": "Alice"})
    assert workflow.tags == ("hot", "vip")
    assert workflow.named_fields["assignedagent"] == "Alice"
    assert contact_signals({"type": "OpportunityStageUpdate", "contactId": "c"}).tags is None


def test_tag_match_modes() -> None:
    """R-AG-2: exact, case-insensitive (default) and regex (full match) tag matching."""
    assert tag_lists(["hot"], KEYS, "case_insensitive") == {"HOT"}
    assert tag_lists(["hot"], KEYS, "exact") == frozenset()
    assert tag_lists(["HOT"], KEYS, "exact") == {"HOT"}
    assert tag_lists(["HOTTER"], KEYS, "regex") == frozenset(), "a regex must match the whole tag"
    assert tag_lists(["HOT"], ("H.T",), "regex") == {"H.T"}
    assert tag_lists(["x"], ("(",), "regex") == frozenset(), "a bad pattern matches nothing"


def test_stage_placement() -> None:
    """R-AG-2: stage names place the contact; won/lost/closed/dead and closing statuses close it; an
    unknown stage keeps the placement; a reopened deal with an unknown stage is a lead again."""
    assert stage_placement("New Lead", "open", None) == NEW_LEADS
    assert stage_placement("follow-up", "open", NEW_LEADS) == "FOLLOW_UP"
    assert stage_placement("Hot", None, None) == "HOT"
    for name in ("Won", "lost", "CLOSED", "dead"):
        assert stage_placement(name, "open", "HOT") == CLOSED
    assert stage_placement(None, "abandoned", "HOT") == CLOSED
    assert stage_placement("Proposal sent", "open", "HOT") == "HOT"
    assert stage_placement("Proposal sent", "open", CLOSED) is None
    assert stage_placement(None, None, "FOLLOW_UP") == "FOLLOW_UP"


@given(
    tags=st.lists(st.sampled_from(["hot", "call_now", "vip", "follow_up"]), max_size=4),
    placement=st.sampled_from([None, NEW_LEADS, "FOLLOW_UP", "HOT", CLOSED]),
    blocked=st.sampled_from([None, "opted out of SMS"]),
)
def test_desired_lists(tags: list[str], placement: str | None, blocked: str | None) -> None:
    """R-AG-2: a blocked or closed contact is on no list; otherwise its placement's list (NEW_LEADS
    before any stage) plus its tags' lists, and nothing that is not a list key."""
    wanted = desired_lists(
        list_keys=KEYS, tags=tags, mode="case_insensitive", placement=placement, blocked_because=blocked
    )
    if blocked or placement == CLOSED:
        assert wanted == frozenset()
        return
    assert (placement or NEW_LEADS) in wanted
    assert wanted <= set(KEYS)
    assert tag_lists(tags, KEYS, "case_insensitive") <= wanted


memberships = st.dictionaries(
    st.tuples(st.sampled_from(["A", "B"]), st.sampled_from(KEYS)),
    st.sampled_from([MEMBER, BLOCKED]),
    max_size=5,
)


@given(current=memberships, agent=st.sampled_from(["A", "B"]), desired=st.frozensets(st.sampled_from(KEYS)))
def test_plan_reaches_the_desired_set(
    current: dict[tuple[str, str], str], agent: str, desired: frozenset[str]
) -> None:
    """R-AG-3, R-AG-4: applying the plan to Aloware's lists (remove-all, then adds) leaves the
    contact on exactly the desired lists of one agent (a list still missing stays blocked);
    nothing is called when the current memberships already are the desired ones; an unchanged
    plan applied twice calls nothing."""
    plan = plan_lists(current, agent, desired)
    on_lists = {m for m, s in current.items() if s == MEMBER}
    if plan.remove_all:
        on_lists = set()
    on_lists |= set(plan.add)
    wanted = {(agent, k) for k in desired}
    still_blocked = set() if plan.remove_all else {m for m, s in current.items() if s == BLOCKED} & wanted
    assert on_lists == wanted - still_blocked, "a still-wanted blocked list waits for `lists rebuild`"
    if {m for m in current} == {(agent, k) for k in desired}:
        assert plan.calls_nothing
    after = {m: MEMBER for m in on_lists} | {m: BLOCKED for m in still_blocked}
    assert plan_lists(after, agent, desired).changes_nothing


def test_list_names() -> None:
    """R-AG-3: lists are DF_<AGENT>_<LIST>."""
    assert list_name("alice", "new_leads") == "DF_ALICE_NEW_LEADS"


def test_what_a_payload_does_not_say_is_unknown_not_empty() -> None:
    """R-AG-1, R-AG-2: a workflow webhook without the owner, an owner that is not text, or tags that
    are not text leave owner or tags unknown (read from GHL), never "unassigned" or "no tags"; a
    native webhook without `assignedTo` is an unassigned contact."""
    assert contact_signals({"tags": ["a"]}).owner_known
    assert not contact_signals({"tags": "a"}, whole=False).owner_known
    assert not contact_signals({"assignedTo": {"id": "u1"}, "tags": []}).owner_known
    assert contact_signals({"tags": [["x"]]}).tags is None
    workflow = contact_signals({"tags": "hot"}, whole=False)
    ghl = contact_signals(
        {"assignedTo": "u-alice", "tags": ["vip"], "customFields": [{"id": "f", "value": "v"}]}
    )
    merged = workflow.over(ghl)
    assert (merged.assigned_to, merged.tags, dict(merged.field_ids)) == ("u-alice", ("hot",), {"f": "v"})
