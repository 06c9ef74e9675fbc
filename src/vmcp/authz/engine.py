"""The Cedar authorizer: decisions for calls, batched decisions for listings, reloads.

Per request, only the delta is built (the caller's ``Client`` entity and the target's)
and added to the static entities parsed once per policy set. A listing is one batch:
all its items' entities and one request each, evaluated in a single call into Cedar.
Listing results are cached per caller (issuer, subject and claims), policy set hash and
catalog object: a caller who lists the same catalog again is not decided again, and a
reload or a changed catalog misses the cache by construction, so no stale decision can
be served.

Cedar leaves a policy that errors out of the decision; here any evaluation error denies
the whole request (as ToolHive does), so a ``forbid`` that errors can never let a request
through.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
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
from vmcp.authz.policies import PolicyBundle, load_bundle
from vmcp.config import AuthzConfig
from vmcp.identity import Principal

logger = logging.getLogger(__name__)

LISTING_CACHE_SIZE = 1024


class CedarAuthorizer:
    """Decides by the Cedar policy set in force; :meth:`reload` replaces it atomically."""

    enabled = True

    def __init__(self, config: AuthzConfig, bundle: PolicyBundle | None = None) -> None:
        """Loads the policy set now; raises ``ConfigError`` if it is invalid."""
        self._config = config
        self._bundle = bundle if bundle is not None else load_bundle(config)
        self._lock = threading.Lock()
        self._listings: collections.OrderedDict[tuple[Any, ...], tuple[object, list[bool]]] = (
            collections.OrderedDict())
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
        """Put ``bundle`` (already loaded and checked) in force, in one step."""
        with self._lock:
            self._bundle = bundle
            self._listings.clear()

    def status(self) -> PolicyStatus:
        bundle = self._bundle
        return PolicyStatus(bundle.sha256, bundle.loaded_at, bundle.count, bundle.files)

    # -- decisions -------------------------------------------------------------------

    def check(self, principal: Principal, target: Target,
              arguments: Mapping[str, Any] | None = None) -> Decision:
        bundle = self._bundle
        try:
            caller = _Caller(principal, bundle.group_claims)
            args = entities.argument_attributes(arguments)
            resource = entities.target_entity(target, arguments, bundle.merge.get(
                (ENTITY_TYPE_OF[target.kind], target.name)))
            world = bundle.static_entities.with_added_json_str(
                entities.dumps([caller.entity(bundle), resource]))
            request = caller.request(target, {**caller.claims, **args})
            result = cedarpy.is_authorized_batch([request], bundle.policies, world)[0]
        except Exception as exc:  # a decision that cannot be made denies
            self.evaluation_errors += 1
            logger.warning("authorization failed, denying: %s", exc)
            return Decision(False, errors=(str(exc),))
        return self._decision(bundle, result)

    def filter_listing(self, principal: Principal, items: Sequence[Item],
                       target_of: Callable[[Item], Target | None], *,
                       catalog: object | None = None, listing: str = "") -> list[Item]:
        bundle = self._bundle
        key: tuple[Any, ...] | None = None
        if catalog is not None:
            key = (id(catalog), listing, _caller_key(principal), bundle.sha256, len(items))
            with self._lock:
                hit = self._listings.get(key)
                if hit is not None and hit[0] is catalog:
                    self._listings.move_to_end(key)
                    return [item for item, ok in zip(items, hit[1], strict=True) if ok]
        allowed = self._decide_all(principal, bundle, [target_of(item) for item in items])
        if key is not None:
            with self._lock:
                self._listings[key] = (catalog, allowed)
                while len(self._listings) > LISTING_CACHE_SIZE:
                    self._listings.popitem(last=False)
        return [item for item, ok in zip(items, allowed, strict=True) if ok]

    def _decide_all(self, principal: Principal, bundle: PolicyBundle,
                    targets: Sequence[Target | None]) -> list[bool]:
        present = [t for t in targets if t is not None]
        if not present:
            return [False] * len(targets)
        try:
            caller = _Caller(principal, bundle.group_claims)
            seen: dict[tuple[str, str], None] = {}
            resources = []
            for target in present:
                key = (ENTITY_TYPE_OF[target.kind], target.name)
                if key not in seen:
                    seen[key] = None
                    resources.append(entities.target_entity(target, None, bundle.merge.get(key)))
            world = bundle.static_entities.with_added_json_str(
                entities.dumps([caller.entity(bundle), *resources]))
            requests = [caller.request(target, caller.claims) for target in present]
            results = iter(cedarpy.is_authorized_batch(requests, bundle.policies, world))
        except Exception as exc:
            self.evaluation_errors += 1
            logger.warning("authorization of a listing failed, showing nothing: %s", exc)
            return [False] * len(targets)
        return [t is not None and self._decision(bundle, next(results), quiet=True).allowed
                for t in targets]

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


class _Caller:
    """The caller's side of the entities and requests of one decision or batch."""

    def __init__(self, principal: Principal, group_claims: Sequence[str]) -> None:
        self.principal = principal
        self.claims = entities.prefixed(principal.claims, "claim_")
        self.group_claims = group_claims
        self.uid = entities.uid("Client", entities.principal_id(principal))

    def entity(self, bundle: PolicyBundle) -> dict[str, Any]:
        built = entities.principal_entity(self.principal, self.claims, self.group_claims)
        static = bundle.merge.get(("Client", self.uid["id"]))
        if static:
            built["attrs"] = {**static.get("attrs", {}), **built["attrs"]}
            built["parents"] += [p for p in static.get("parents", [])
                                 if p not in built["parents"]]
        return built

    def request(self, target: Target, context: Mapping[str, Any]) -> dict[str, Any]:
        return {"principal": self.uid,
                "action": entities.uid("Action", ACTION_OF[target.kind]),
                "resource": entities.target_uid(target),
                "context": context}


def _caller_key(principal: Principal) -> str:
    """What a caller's decisions depend on: issuer, subject and every claim."""
    claims = json.dumps(principal.claims, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(claims.encode()).hexdigest()
    return f"{principal.issuer}\x00{principal.subject}\x00{digest}"
