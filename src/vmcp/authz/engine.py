"""The Cedar authorizer: decisions for calls, batched decisions for listings, reloads.

Per request, only the delta is built (the caller's ``Client`` entity and the target's)
and added to the static entities parsed once per policy set; only the attributes some
policy reads are included. A listing is one batch: all its items' entities and one
request each, evaluated in a single call into Cedar.

What is cached, and why it is safe: every cache key holds the policy set's hash, so a
reload misses every entry by construction; a caller is named by the hash of its
verified token (which fixes its claims). Cached are the caller's entity; listing
decisions per caller and catalog object (compared by identity, so a changed catalog
misses); the parsed entities of caller and target; and, per caller and target, the
verdict of the policies that read no argument. A call then evaluates only the policies
that read arguments (none, for most sets), and the two verdicts combine exactly as the
whole set's would: an error denies, a forbid beats a permit, nothing permitted is denied.

Cedar leaves a policy that errors out of the decision; here any evaluation error denies
the whole request (as ToolHive does), so a ``forbid`` that errors can never let a request
through.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cedarpy

from vmcp.authz import entities
from vmcp.authz.decisions import (
    ACTION_OF,
    ENTITY_TYPE_OF,
    Decision,
    Item,
    PolicyStatus,
    Target,
)
from vmcp.authz.policies import PolicyBundle, PolicySubset, load_bundle
from vmcp.config import AuthzConfig
from vmcp.identity import Principal
from vmcp.lru import LRU

logger = logging.getLogger(__name__)

CACHE_SIZE = 4096


class CedarAuthorizer:
    """Decides by the Cedar policy set in force; :meth:`reload` replaces it atomically."""

    enabled = True

    def __init__(self, config: AuthzConfig, bundle: PolicyBundle | None = None) -> None:
        """Loads the policy set now; raises ``ConfigError`` if it is invalid."""
        self._config = config
        self._bundle = bundle if bundle is not None else load_bundle(config)
        # Used from the event loop only, so the caches need no lock.
        self._callers: LRU[tuple[str, str], _Caller] = LRU(CACHE_SIZE)
        self._listings: LRU[tuple[Any, ...], tuple[object, list[bool]]] = LRU(1024)
        self._fixed: LRU[tuple[Any, ...], _Verdict] = LRU(CACHE_SIZE)
        self._worlds: LRU[tuple[Any, ...], cedarpy.Entities] = LRU(CACHE_SIZE)
        self.evaluation_errors = 0

    @property
    def bundle(self) -> PolicyBundle:
        return self._bundle

    def reload(self, config: AuthzConfig | None = None) -> PolicyBundle:
        """Read the files again (those of ``config`` if given) and swap the new set in.

        Raises ``ConfigError`` and keeps the running set if the new one is invalid.
        """
        bundle = load_bundle(config or self._config)
        self.adopt(bundle)
        return bundle

    def adopt(self, bundle: PolicyBundle) -> None:
        """Put ``bundle`` (already loaded and checked) in force, in one step. The caches
        are keyed by the policy set's hash; clearing them only frees the memory."""
        self._bundle = bundle
        for cache in (self._callers, self._listings, self._fixed, self._worlds):
            cache.clear()

    def status(self) -> PolicyStatus:
        bundle = self._bundle
        return PolicyStatus(bundle.sha256, bundle.loaded_at, bundle.count, bundle.files)

    # -- decisions -------------------------------------------------------------------

    def check(self, principal: Principal, target: Target,
              arguments: Mapping[str, Any] | None = None) -> Decision:
        """Decided in two parts with the same outcome as the whole set: the verdict of the
        policies that read no argument, cached per caller and target, then (unless that
        already denies) the policies that read arguments, on this call's arguments."""
        bundle = self._bundle
        try:
            caller = self._caller(principal, bundle)
            target_key = (caller.key, bundle.sha256, _target_key(target))
            fixed = self._fixed.get(target_key)
            if fixed is None:
                fixed = self._verdict(bundle.fixed, caller, target, caller.claims_json,
                                      self._target_world(bundle, caller, target, target_key))
                self._fixed.put(target_key, fixed)
            if fixed.kind in ("error", "forbid") or bundle.per_call is None:
                return self._conclude(fixed, _NOTHING)
            args = entities.argument_attributes(arguments, bundle.referenced)
            world = (_world(bundle, caller, [entities.target_entity(
                         target, arguments, _static(bundle, target), bundle.referenced)])
                     if bundle.arguments_on_resource
                     else self._target_world(bundle, caller, target, target_key))
            context = {**caller.claims, **args} if args else caller.claims_json
            per_call = self._verdict(bundle.per_call, caller, target, context, world)
        except Exception as exc:  # a decision that cannot be made denies
            self.evaluation_errors += 1
            logger.warning("authorization failed, denying: %s", exc)
            return Decision(False, errors=(str(exc),))
        return self._conclude(fixed, per_call)

    def _target_world(self, bundle: PolicyBundle, caller: _Caller, target: Target,
                      key: tuple[Any, ...]) -> cedarpy.Entities:
        """The parsed entities of caller and target without arguments, built once."""
        handle = self._worlds.get(key)
        if handle is None:
            handle = _handle(_world(bundle, caller, [entities.target_entity(
                target, None, _static(bundle, target), bundle.referenced)]))
            self._worlds.put(key, handle)
        return handle

    def _verdict(self, subset: PolicySubset | None, caller: _Caller, target: Target,
                 context: Mapping[str, Any] | str, world: str | cedarpy.Entities) -> _Verdict:
        if subset is None:
            return _NOTHING
        result = cedarpy.is_authorized_batch([caller.request(target, context)],
                                             subset.policies, world)[0]
        diagnostics = result.diagnostics
        ids = tuple(subset.labels.get(p, p) for p in diagnostics.reasons)
        if diagnostics.errors:
            return _Verdict("error", ids, tuple(diagnostics.errors))
        if result.allowed:
            return _Verdict("permit", ids)
        return _Verdict("forbid", ids) if ids else _NOTHING

    def _conclude(self, fixed: _Verdict, per_call: _Verdict) -> Decision:
        """The decision of the whole set from its two parts: an error denies, a forbid
        beats a permit, and nothing permitted is denied."""
        for verdict in (fixed, per_call):
            if verdict.kind == "error":
                self.evaluation_errors += 1
                logger.warning("policy evaluation error, denying: %s",
                               "; ".join(verdict.errors))
                return Decision(False, verdict.ids, verdict.errors)
        forbids = [v for v in (fixed, per_call) if v.kind == "forbid"]
        if forbids:
            return Decision(False, tuple(i for v in forbids for i in v.ids))
        permits = [v for v in (fixed, per_call) if v.kind == "permit"]
        return Decision(bool(permits), tuple(i for v in permits for i in v.ids))

    def filter_listing(self, principal: Principal, items: Sequence[Item],
                       target_of: Callable[[Item], Target | None], *,
                       catalog: object | None = None, listing: str = "") -> list[Item]:
        bundle = self._bundle
        key: tuple[Any, ...] | None = None
        if catalog is not None:
            key = (id(catalog), listing, _caller_key(principal), bundle.sha256, len(items))
            hit = self._listings.get(key)
            if hit is not None and hit[0] is catalog:
                return [item for item, ok in zip(items, hit[1], strict=True) if ok]
        allowed = self._decide_all(principal, bundle, [target_of(item) for item in items])
        if key is not None:
            self._listings.put(key, (catalog, allowed))
        return [item for item, ok in zip(items, allowed, strict=True) if ok]

    def _decide_all(self, principal: Principal, bundle: PolicyBundle,
                    targets: Sequence[Target | None]) -> list[bool]:
        present = [t for t in targets if t is not None]
        if not present:
            return [False] * len(targets)
        try:
            caller = self._caller(principal, bundle)
            seen: dict[tuple[str, str], None] = {}
            resources = []
            for target in present:
                key = (ENTITY_TYPE_OF[target.kind], target.name)
                if key not in seen:
                    seen[key] = None
                    resources.append(entities.target_entity(
                        target, None, bundle.merge.get(key), bundle.referenced))
            world = _world(bundle, caller, resources)
            # One context for the whole batch, serialized once rather than per request.
            requests = [caller.request(target, caller.claims_json) for target in present]
            results = iter(cedarpy.is_authorized_batch(requests, bundle.policies, world))
        except Exception as exc:
            self.evaluation_errors += 1
            logger.warning("authorization of a listing failed, showing nothing: %s", exc)
            return [False] * len(targets)
        return [t is not None and self._decision(bundle, next(results), quiet=True).allowed
                for t in targets]

    def _caller(self, principal: Principal, bundle: PolicyBundle) -> _Caller:
        """The caller's entity, built once per caller and policy set."""
        key = (_caller_key(principal), bundle.sha256)
        caller = self._callers.get(key)
        if caller is None:
            caller = _Caller(key[0], principal, bundle)
            self._callers.put(key, caller)
        return caller

    def _decision(self, bundle: PolicyBundle, result: cedarpy.AuthzResult, *,
                  quiet: bool = False) -> Decision:
        diagnostics = result.diagnostics
        ids = tuple(bundle.labels.get(p, p) for p in diagnostics.reasons)
        if diagnostics.errors:
            self.evaluation_errors += 1
            if not quiet:
                logger.warning("policy evaluation error, denying: %s",
                               "; ".join(diagnostics.errors))
            return Decision(False, ids, tuple(diagnostics.errors))
        return Decision(result.allowed, ids)


@dataclass(frozen=True)
class _Verdict:
    """What some of the policies say: ``permit``, ``forbid`` (a forbid is satisfied),
    ``none`` (nothing satisfied) or ``error``; with the satisfied policies' ids."""

    kind: str
    ids: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


_NOTHING = _Verdict("none")


def _static(bundle: PolicyBundle, target: Target) -> Mapping[str, Any] | None:
    return bundle.merge.get((ENTITY_TYPE_OF[target.kind], target.name))


class _Caller:
    """The caller's side of a decision: its uid, its claims as the context carries them,
    and its entity as JSON, ready to be added to the entities of each request."""

    def __init__(self, key: str, principal: Principal, bundle: PolicyBundle) -> None:
        self.key = key
        self.claims = entities.prefixed(principal.claims, "claim_", bundle.referenced)
        self.uid = entities.uid("Client", entities.principal_id(principal))
        built = entities.principal_entity(principal, self.claims, bundle.group_claims)
        static = bundle.merge.get(("Client", self.uid["id"]))
        if static:
            built["attrs"] = {**static.get("attrs", {}), **built["attrs"]}
            built["parents"] += [p for p in static.get("parents", [])
                                 if p not in built["parents"]]
        self.entity_json = json.dumps(built, separators=(",", ":"), ensure_ascii=False)
        self.claims_json = json.dumps(self.claims, separators=(",", ":"), ensure_ascii=False)

    def request(self, target: Target, context: Mapping[str, Any] | str) -> dict[str, Any]:
        return {"principal": self.uid, "action": _ACTIONS[target.kind],
                "resource": entities.target_uid(target), "context": context}


_ACTIONS = {kind: entities.uid("Action", action) for kind, action in ACTION_OF.items()}


def _world(bundle: PolicyBundle, caller: _Caller, resources: Sequence[Mapping[str, Any]]
           ) -> str | cedarpy.Entities:
    """The entities of one decision or batch: the caller, the resources, and the entities
    file's (added to its pre-parsed handle; without one, one JSON text is cheapest)."""
    delta = "[" + ",".join([caller.entity_json, *(
        json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in resources)]) + "]"
    if len(bundle.static_entities) == 0:
        return delta
    return bundle.static_entities.with_added_json_str(delta)


def _handle(world: str | cedarpy.Entities) -> cedarpy.Entities:
    return cedarpy.Entities.from_json_str(world) if isinstance(world, str) else world


def _target_key(target: Target) -> tuple[str, ...]:
    annotations = json.dumps(dict(target.annotations), sort_keys=True, default=str) \
        if target.annotations else ""
    return (target.kind, target.name, target.backend, target.original_name, annotations)


def _caller_key(principal: Principal) -> str:
    """What a caller's decisions depend on: issuer, subject and claims. A verified token
    fixes all three, so its hash stands for them; without a token, they are hashed."""
    if principal.token is not None:
        material = "token\x00" + principal.token
    else:
        material = "claims\x00" + json.dumps(
            [principal.issuer, principal.subject, principal.claims], sort_keys=True,
            default=str)
    return hashlib.sha256(material.encode()).hexdigest()
