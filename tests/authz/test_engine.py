"""The Cedar engine on its own: policy files, the entity model, decisions, the cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cedarpy
import pytest

from vmcp.authz import AllowAll, CedarAuthorizer, Target, load_bundle
from vmcp.authz.entities import (
    groups_of,
    prefixed,
    principal_entity,
    principal_id,
    target_entity,
)
from vmcp.authz.policies import split_statements
from vmcp.config import AuthzConfig
from vmcp.errors import ConfigError
from vmcp.identity import ANONYMOUS, Principal

CALCULATOR = Target("tool", "calculator", "math", "calculator")
WEATHER = Target("tool", "weather", "forecasts", "weather")


def authorizer(tmp_path: Path, policies: str, entities: list[dict[str, Any]] | None = None,
               **settings: Any) -> CedarAuthorizer:
    (tmp_path / "p.cedar").write_text(policies)
    config: dict[str, Any] = {"policies_file": str(tmp_path / "p.cedar"), **settings}
    if entities is not None:
        (tmp_path / "e.json").write_text(json.dumps(entities))
        config["entities_file"] = str(tmp_path / "e.json")
    return CedarAuthorizer(AuthzConfig.model_validate(config))


def caller(sub: str, **claims: Any) -> Principal:
    """A verified caller; as with a real token, different claims mean a different token."""
    claims = {"sub": sub, **claims}
    return Principal("https://idp", sub, f"token-{json.dumps(claims, sort_keys=True)}", claims)


TOOLHIVE_EXAMPLES = Path(__file__).parent / "data" / "toolhive_docs_examples.cedar"


def test_toolhive_documented_examples_decide_as_documented(tmp_path: Path) -> None:
    engine = authorizer(tmp_path, TOOLHIVE_EXAMPLES.read_text())
    john = caller("u1", name="John Doe")
    assert engine.check(john, CALCULATOR, {"operation": "add"}).allowed
    assert engine.check(john, CALCULATOR, {"operation": "subtract"}).allowed
    assert not engine.check(john, CALCULATOR, {"operation": "multiply"}).allowed
    assert engine.check(john, WEATHER, {"location": "Paris"}).allowed       # by claim_name
    jane = caller("u2", name="Jane Roe")
    assert engine.check(jane, WEATHER, {"location": "London"}).allowed
    assert not engine.check(jane, WEATHER, {"location": "Paris"}).allowed


def test_forbid_beats_permit_and_nothing_permitted_is_denied(tmp_path: Path) -> None:
    engine = authorizer(tmp_path, """
        @id("all") permit(principal, action, resource);
        @id("no-weather") forbid(principal, action, resource in Backend::"forecasts");
    """)
    assert engine.check(caller("a"), CALCULATOR).policy_ids == ("all",)
    refused = engine.check(caller("a"), WEATHER)
    assert not refused.allowed
    assert refused.policy_ids == ("no-weather",)
    (tmp_path / "other").mkdir()
    nothing = authorizer(tmp_path / "other",
                         'permit(principal, action, resource == Tool::"other");')
    assert not nothing.check(caller("a"), CALCULATOR).allowed
    assert nothing.check(caller("a"), CALCULATOR).policy_ids == ()


def test_an_evaluation_error_denies_even_where_another_policy_permits(tmp_path: Path) -> None:
    engine = authorizer(tmp_path, """
        permit(principal, action, resource);
        forbid(principal, action, resource) when { principal.claim_level > 3 };
    """)
    assert engine.check(caller("a", level=1), CALCULATOR).allowed
    decision = engine.check(caller("a"), CALCULATOR)       # no level claim: the forbid errs
    assert not decision.allowed
    assert decision.errors


def test_groups_come_from_the_configured_claims_and_the_entity_hierarchy(tmp_path: Path
                                                                           ) -> None:
    engine = authorizer(
        tmp_path, 'permit(principal in THVGroup::"staff", action, resource);',
        entities=[{"uid": {"type": "THVGroup", "id": "admins"}, "attrs": {},
                   "parents": [{"type": "THVGroup", "id": "staff"}]}],
        group_claims=["groups", "realm_access.roles"])
    assert engine.check(caller("a", realm_access={"roles": ["admins"]}), CALCULATOR).allowed
    assert engine.check(caller("b", groups=["staff"]), CALCULATOR).allowed
    assert not engine.check(caller("c", groups=["visitors"]), CALCULATOR).allowed
    assert not engine.check(caller("d", roles=["admins"]), CALCULATOR).allowed  # not configured


def test_a_claim_cannot_forge_an_entity_reference(tmp_path: Path) -> None:
    engine = authorizer(tmp_path, """
        permit(principal, action, resource) when {
          principal has claim_boss && principal.claim_boss == THVGroup::"admins" };
    """)
    forged = caller("mallory", boss={"__entity": {"type": "THVGroup", "id": "admins"}})
    assert not engine.check(forged, CALCULATOR).allowed
    assert prefixed({"boss": {"__entity": {"type": "X", "id": "y"}}, "n": 2**70,
                     "ok": [1, 2.5, None]}, "claim_") == {
        "claim_ok": [1, {"__extn": {"fn": "decimal", "arg": "2.5000"}}]}


def test_anonymous_callers_are_client_anonymous(tmp_path: Path) -> None:
    engine = authorizer(tmp_path, 'permit(principal == Client::"anonymous", action, resource);')
    assert principal_id(ANONYMOUS) == "anonymous"
    assert engine.check(ANONYMOUS, CALCULATOR).allowed
    assert not engine.check(caller("someone"), CALCULATOR).allowed
    static = Principal("ci", "deploy-bot", "t")          # static tokens carry no claims
    assert principal_id(static) == "deploy-bot"


def test_a_listing_is_decided_in_one_batch_and_cached_until_a_reload(tmp_path: Path) -> None:
    engine = authorizer(tmp_path, 'permit(principal, action, resource == Tool::"t1");')
    items = [{"name": f"t{i}"} for i in range(3)]
    calls: list[str] = []

    def target_of(item: dict[str, str]) -> Target:
        calls.append(item["name"])
        return Target("tool", item["name"], "b", item["name"])

    catalog = object()
    first = engine.filter_listing(caller("a"), items, target_of, catalog=catalog,
                                  listing="tools/list")
    assert first == [{"name": "t1"}]
    assert engine.filter_listing(caller("a"), items, target_of, catalog=catalog,
                                 listing="tools/list") == first
    assert len(calls) == 3                                   # the second came from the cache
    (tmp_path / "p.cedar").write_text('permit(principal, action, resource == Tool::"t2");')
    engine.reload()
    assert engine.filter_listing(caller("a"), items, target_of, catalog=catalog,
                                 listing="tools/list") == [{"name": "t2"}]


def test_policy_problems_are_reported_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "p.cedar").write_text(
        '// a comment; with a semicolon\n'
        'permit(principal, action == Action::"call_tools", resource);\n'
        '\n'
        'permit(principal, action, resource) when { resource.nmae == "x;y" };\n'
        'permit(principal, action,\n')
    with pytest.raises(ConfigError) as raised:
        load_bundle(AuthzConfig(policies_file=str(tmp_path / "p.cedar")))
    lines = str(raised.value).splitlines()
    path = tmp_path / "p.cedar"
    assert any(line.startswith(f"{path}:2: unrecognized action") for line in lines), lines
    assert any(line.startswith(f"{path}:4: ") and "nmae" in line for line in lines), lines
    assert any(line.startswith(f"{path}:5: syntax") for line in lines), lines


def test_claims_and_arguments_are_open_but_the_model_is_checked(tmp_path: Path) -> None:
    (tmp_path / "p.cedar").write_text(
        'permit(principal, action == Action::"call_tool", resource) when {'
        ' principal.claim_x == 1 && context.arg_y == "z" && resource.readOnlyHint };\n'
        'permit(principal, action == Action::"get_prompt", resource == Tool::"t");\n')
    with pytest.raises(ConfigError) as raised:
        load_bundle(AuthzConfig(policies_file=str(tmp_path / "p.cedar")))
    assert str(raised.value).splitlines() == [
        f"{tmp_path / 'p.cedar'}:2: unable to find an applicable action given the policy "
        "scope constraints"]


def test_statements_are_split_outside_strings_and_comments() -> None:
    statements = split_statements(
        '@id("a;b")\npermit(principal, action, resource)\n  when { "x;" == "x;" };'
        '// ; not here\n\nforbid(principal, action, resource);')
    assert [s.line for s in statements] == [1, 5]
    assert statements[0].text.endswith('"x;" == "x;" };')


def test_group_claims_accept_dot_paths_and_single_strings() -> None:
    claims = {"groups": "eng", "realm_access": {"roles": ["a", "b", 3]},
              "https://example.com/groups": ["c"]}
    assert groups_of(claims, ["groups", "realm_access.roles", "https://example.com/groups"]
                     ) == ["eng", "a", "b", "c"]


def test_without_authorization_everyone_may_use_everything() -> None:
    allow = AllowAll()
    assert allow.check(ANONYMOUS, CALCULATOR).allowed
    assert allow.filter_listing(ANONYMOUS, [1, 2], lambda _: None) == [1, 2]
    assert allow.status() is None


@pytest.mark.parametrize("reads", ["context.arg_city", "resource.arg_city"])
def test_cached_parts_never_answer_for_other_arguments_or_policies(tmp_path: Path,
                                                                   reads: str) -> None:
    engine = authorizer(tmp_path, f'permit(principal, action, resource) when '
                                  f'{{ {reads} == "Paris" }};')
    alice = caller("alice")
    for _ in range(2):                                      # the second round is cached
        assert engine.check(alice, WEATHER, {"city": "Paris"}).allowed
        assert not engine.check(alice, WEATHER, {"city": "London"}).allowed
    (tmp_path / "p.cedar").write_text('permit(principal, action, resource == Tool::"calculator");')
    engine.reload()
    assert not engine.check(alice, WEATHER, {"city": "Paris"}).allowed
    assert engine.check(alice, CALCULATOR).allowed
    assert engine.check(alice, CALCULATOR).allowed           # from the decision cache
    assert not engine.check(caller("alice", extra=1), WEATHER).allowed


def test_the_example_policies_decide_as_their_comments_say() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "policies.cedar"
    engine = CedarAuthorizer(AuthzConfig(policies_file=str(example)))
    forecast = Target("tool", "weather_forecast", "weather", "forecast")
    delete = Target("tool", "notes_delete_note", "notes", "delete_note")
    add = Target("tool", "notes_add_note", "notes", "add_note")
    assert engine.check(ANONYMOUS, forecast, {"city": "Paris", "days": 3}).allowed
    assert not engine.check(ANONYMOUS, forecast, {"city": "Paris", "days": 8}).allowed
    assert not engine.check(ANONYMOUS, add).allowed
    staff, editor = caller("s", groups=["staff"]), caller("e", groups=["staff", "editors"])
    assert engine.check(staff, add).allowed
    assert not engine.check(staff, delete).allowed
    assert engine.check(editor, delete).allowed
    assert engine.check(editor, delete).policy_ids == ("staff-notes",)


MIXED = """
@id("eng") permit(principal in THVGroup::"eng", action, resource in Backend::"forecasts");
@id("no-interns")
forbid(principal in THVGroup::"interns", action, resource == Tool::"weather");
@id("paris") permit(principal, action, resource == Tool::"calculator")
  when { context has arg_city && context.arg_city == "Paris" };
@id("no-rome") forbid(principal, action, resource)
  when { resource has arg_city && resource.arg_city == "Rome" };
@id("level") forbid(principal, action, resource == Tool::"calculator")
  when { principal.claim_level > 3 };
@id("days") permit(principal in THVGroup::"ops", action, resource)
  when { context.arg_days < 5 };
"""


def test_deciding_in_two_parts_decides_like_the_whole_set(tmp_path: Path) -> None:
    """The cached verdict of the argument-free policies combined with the per-call one
    gives what evaluating every policy at once gives (any error denying)."""
    engine = authorizer(tmp_path, MIXED)
    whole = cedarpy.PolicySet.from_str(MIXED)
    callers = [caller("a", groups=["eng"], level=1), caller("b", groups=["eng", "interns"]),
               caller("c", groups=["ops"], level=5), caller("d"), ANONYMOUS]
    argument_sets: list[dict[str, Any] | None] = [
        None, {"city": "Paris"}, {"city": "Rome"}, {"days": 2}, {"days": 9, "city": "Paris"}]
    outcomes: list[tuple[bool, bool]] = []
    for principal in callers:
        claims = {f"claim_{k}": v for k, v in principal.claims.items()}
        for target in (CALCULATOR, WEATHER):
            for arguments in argument_sets:
                args = {f"arg_{k}": v for k, v in (arguments or {}).items()}
                world = [principal_entity(principal, claims, ("groups",)),
                         target_entity(target, arguments)]
                request = {"principal": {"type": "Client", "id": world[0]["uid"]["id"]},
                           "action": {"type": "Action", "id": "call_tool"},
                           "resource": {"type": "Tool", "id": target.name},
                           "context": {**claims, **args}}
                expected = cedarpy.is_authorized(request, whole, world)
                allowed = expected.allowed and not expected.diagnostics.errors
                for _ in range(2):                               # uncached, then cached
                    assert engine.check(principal, target, arguments).allowed == allowed, (
                        principal.claims, target.name, arguments)
                outcomes.append((allowed, bool(expected.diagnostics.errors)))
    assert len(outcomes) == 50
    assert {allowed for allowed, _ in outcomes} == {True, False}
    assert any(errored for _, errored in outcomes)
