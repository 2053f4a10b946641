"""Offline checks of the cluster side: kustomize manifests, component image, MLflow server, submit.

Nothing here reaches a cluster, a registry or a Docker engine. Manifests are checked against
the Kubernetes object models shipped in the ``kubernetes`` client (field names and types), then
for the wiring the pipeline relies on: ConfigMap and Secret keys, Service selectors, the MLflow
server's bind address, secret-sourced backend URI and Host-header allow-list. ``kubectl
kustomize`` renders the kustomizations where kubectl is installed. ``pipelines/submit.py`` is
driven with a fake ``kfp.Client`` whose calls are bound against the real client's signatures.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

ROOT = Path(__file__).resolve().parents[2]

from pipelines.cxrflow_pipeline import (  # noqa: E402
    CONFIG_MAP_ENV,
    CONFIG_MAP_NAME,
    GPU_NODE_SELECTOR,
    GPU_TOLERATION,
    SECRET_ENV,
    SECRET_NAME,
)

INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "gpu-cluster"
MLFLOW_DIR = ROOT / "mlflow"
DOCKERFILE = INFRA / "Dockerfile"
SECRET_EXAMPLE = BASE / "secret.example.yaml"
KUSTOMIZATION_KINDS = {"Kustomization", "Component"}


# --------------------------------------------------------------------------------------------
# helpers


def _yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in {".yaml", ".yml"})


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _base_objects() -> list[dict[str, Any]]:
    """The objects that the base kustomization lists (in files, before kustomize)."""
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [d for res in kust["resources"] for d in _docs(BASE / res)]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _base_objects() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in the base, found {len(found)}"
    return found[0]


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    pod = obj["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _flag(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def _check_model(data: Any, type_name: str, where: str, errors: list[str]) -> None:
    """Check ``data`` against a kubernetes-client model type (field names and value types)."""
    if type_name == "object":  # IntOrString, RawExtension...
        return
    if type_name.startswith("list["):
        if not isinstance(data, list):
            errors.append(f"{where}: expected a list, got {type(data).__name__}")
            return
        for i, item in enumerate(data):
            _check_model(item, type_name[5:-1], f"{where}[{i}]", errors)
        return
    if type_name.startswith("dict("):
        if not isinstance(data, dict):
            errors.append(f"{where}: expected a mapping, got {type(data).__name__}")
            return
        value_type = type_name[type_name.index(",") + 1 : -1].strip()
        for key, value in data.items():
            # Quantities (resources, quota) are typed str here; the API also takes numbers.
            if (
                value_type == "str"
                and isinstance(value, int | float)
                and not isinstance(value, bool)
            ):
                continue
            _check_model(value, value_type, f"{where}.{key}", errors)
        return
    scalars: dict[str, type | tuple[type, ...]] = {
        "str": str,
        "int": int,
        "bool": bool,
        "float": (int, float),
        "datetime": str,
        "date": str,
    }
    if type_name in scalars:
        if not isinstance(data, scalars[type_name]) or (
            type_name == "int" and isinstance(data, bool)
        ):
            errors.append(f"{where}: expected {type_name}, got {data!r}")
        return
    model = getattr(k8s, type_name)
    if not isinstance(data, dict):
        errors.append(f"{where}: expected a {type_name} mapping, got {type(data).__name__}")
        return
    by_json = {json_key: attr for attr, json_key in model.attribute_map.items()}
    for key, value in data.items():
        if key not in by_json:
            errors.append(f"{where}: unknown field {key!r} for {type_name}")
            continue
        _check_model(value, model.openapi_types[by_json[key]], f"{where}.{key}", errors)


def _model_name(doc: dict[str, Any]) -> str:
    group_version = doc["apiVersion"]
    version = group_version.rsplit("/", 1)[-1]
    return f"{version.capitalize()}{doc['kind']}"


# --------------------------------------------------------------------------------------------
# manifests: structure


def test_every_manifest_parses_with_api_version_kind_and_name() -> None:
    files = _yaml_files()
    assert files, "no YAML under infra/k8s"
    for path in files:
        docs = _docs(path)
        assert docs, f"{path}: empty"
        for doc in docs:
            rel = path.relative_to(ROOT)
            assert isinstance(doc, dict), f"{rel}: not a mapping"
            assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], rel
            assert isinstance(doc.get("kind"), str) and doc["kind"], rel
            assert isinstance(doc.get("metadata", {}).get("name"), str), f"{rel}: metadata.name"


def test_manifests_match_kubernetes_object_schemas() -> None:
    errors: list[str] = []
    for path in _yaml_files():
        for doc in _docs(path):
            if doc["kind"] in KUSTOMIZATION_KINDS:
                continue
            name = _model_name(doc)
            assert hasattr(k8s, name), (
                f"{path.relative_to(ROOT)}: no kubernetes model {name} to check "
                f"{doc['apiVersion']}/{doc['kind']} against"
            )
            _check_model(doc, name, f"{path.relative_to(ROOT)}:{doc['kind']}", errors)
    assert not errors, "\n".join(errors)


def test_schema_check_catches_typos() -> None:
    """The schema check itself: a misspelt field and a wrong type are reported."""
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "replicas": "two",
            "template": {"spec": {"containers": [{"name": "c", "imagePullPolice": "Always"}]}},
        },
    }
    errors: list[str] = []
    _check_model(bad, _model_name(bad), "bad", errors)
    assert any("replicas" in e for e in errors)
    assert any("imagePullPolice" in e for e in errors)


def _kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


@pytest.mark.parametrize("kust", _kustomizations(), ids=lambda p: str(p.relative_to(K8S)))
def test_kustomization_references_exist(kust: Path) -> None:
    doc = yaml.safe_load(kust.read_text())
    assert doc["apiVersion"].startswith("kustomize.config.k8s.io/")
    assert doc["kind"] == "Kustomization"
    refs: list[str] = list(doc.get("resources", [])) + list(doc.get("components", []))
    refs += [p["path"] for p in doc.get("patches", []) if "path" in p]
    refs += list(doc.get("patchesStrategicMerge", []))
    for gen in doc.get("configMapGenerator", []) + doc.get("secretGenerator", []):
        refs += [f.split("=", 1)[-1] for f in gen.get("files", [])]
        refs += [f for f in gen.get("envs", [])]
    assert refs, f"{kust}: references nothing"
    for ref in refs:
        target = (kust.parent / ref).resolve()
        assert target.exists(), f"{kust.relative_to(ROOT)}: {ref} does not exist"
        if target.is_dir():
            assert (target / "kustomization.yaml").is_file(), f"{ref}: no kustomization.yaml"
    # Every manifest in the folder is used, except the Secret example, which must never be.
    used = {(kust.parent / r).resolve() for r in refs}
    for path in kust.parent.glob("*.yaml"):
        if path.name == "kustomization.yaml":
            continue
        if path == SECRET_EXAMPLE:
            assert path not in used, "secret.example.yaml must not be a kustomize resource"
        else:
            assert path.resolve() in used, f"{path.relative_to(ROOT)} is not referenced"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("folder", [BASE, OVERLAY], ids=["base", "gpu-cluster"])
def test_kustomize_renders(folder: Path) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("ConfigMap", CONFIG_MAP_NAME) in kinds
    assert ("Deployment", "mlflow") in kinds and ("Service", "mlflow") in kinds
    assert not any(d["kind"] == "Secret" for d in docs), "kustomize must not ship Secrets"
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "cxrflow", d["metadata"]["name"]


# --------------------------------------------------------------------------------------------
# manifests: the wiring the pipeline relies on


def test_config_map_keys_are_the_pipeline_config_map_env() -> None:
    cm = _one("ConfigMap", CONFIG_MAP_NAME)
    assert set(cm["data"]) == set(CONFIG_MAP_ENV)
    assert all(isinstance(v, str) and v for v in cm["data"].values())
    assert cm["data"]["MLFLOW_TRACKING_URI"] == "http://mlflow.cxrflow.svc:5000"


def test_tracking_uri_points_at_the_mlflow_service() -> None:
    uri = _one("ConfigMap", CONFIG_MAP_NAME)["data"]["MLFLOW_TRACKING_URI"]
    m = re.fullmatch(r"http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc:(\d+)", uri)
    assert m, uri
    svc = _one("Service", m.group(1))
    namespace = yaml.safe_load((BASE / "kustomization.yaml").read_text())["namespace"]
    assert m.group(2) == namespace
    assert int(m.group(3)) in {p["port"] for p in svc["spec"]["ports"]}


def test_secret_example_covers_every_secret_reference() -> None:
    examples = {d["metadata"]["name"]: d for d in _docs(SECRET_EXAMPLE)}
    assert all(d["kind"] == "Secret" for d in examples.values())
    assert set(SECRET_ENV) <= set(examples[SECRET_NAME]["stringData"])
    text = SECRET_EXAMPLE.read_text()
    assert "kubectl" in text and "create secret generic" in text  # how to make the real one
    for doc in _base_objects():
        if doc["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        for c in _containers(doc):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in examples[ref["name"]]["stringData"], ref
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["name"] == CONFIG_MAP_NAME
                    assert ref["key"] in CONFIG_MAP_ENV, ref


def test_services_select_existing_pods() -> None:
    objs = _base_objects()
    workloads = [d for d in objs if d["kind"] in {"Deployment", "StatefulSet"}]
    for w in workloads:
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert w["spec"]["selector"]["matchLabels"].items() <= labels.items(), w["metadata"]
    for svc in (d for d in objs if d["kind"] == "Service"):
        sel = svc["spec"]["selector"]
        matches = [
            w
            for w in workloads
            if sel.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matches, f"Service {svc['metadata']['name']} selects no pod"
        ports = {p["name"] for w in matches for c in _containers(w) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, (svc["metadata"]["name"], port)


def test_mlflow_server_binds_all_interfaces_and_reads_backend_uri_from_secret() -> None:
    dep = _one("Deployment", "mlflow")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    args = [str(a) for a in [*c.get("command", []), *c["args"]]]
    assert args[:2] == ["mlflow", "server"]
    assert _flag(args, "--host") == "0.0.0.0"
    port = int(_flag(args, "--port"))
    assert port in {p["containerPort"] for p in c["ports"]}
    assert _flag(args, "--artifacts-destination") == "s3://cxrflow-mlflow/"
    env = _env(c)
    ref = env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] == "MLFLOW_BACKEND_STORE_URI"
    if "--backend-store-uri" in args:  # allowed only as a $(VAR) reference to that env var
        assert _flag(args, "--backend-store-uri") == "$(MLFLOW_BACKEND_STORE_URI)"
    assert not any("://" in a and "@" in a for a in args), "credentials in args"
    for name in SECRET_ENV:
        assert "secretKeyRef" in env[name]["valueFrom"], name
    for probe in ("readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/health"
        assert get["port"] in {"http", port}
    assert c["resources"]["requests"] and c["resources"]["limits"]


def test_mlflow_allowed_hosts_cover_the_tracking_uri() -> None:
    from urllib.parse import urlparse

    from mlflow.server.security_utils import is_allowed_host_header

    (c,) = _one("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    allowed = [h.strip() for h in _flag([str(a) for a in c["args"]], "--allowed-hosts").split(",")]
    uri = urlparse(_one("ConfigMap", CONFIG_MAP_NAME)["data"]["MLFLOW_TRACKING_URI"])
    assert is_allowed_host_header(allowed, uri.netloc)
    assert is_allowed_host_header(allowed, "localhost:5000")  # kubectl port-forward
    assert not is_allowed_host_header(allowed, "attacker.example:5000")
    assert "*" not in allowed


def test_mlflow_image_matches_locked_mlflow() -> None:
    (c,) = _one("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    image, tag = c["image"].rsplit(":", 1)
    assert image == "ghcr.io/mlflow/mlflow"
    assert tag == f"v{dist_version('mlflow')}-full"  # -full: has psycopg2 and boto3
    overlay = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    for img in overlay.get("images", []):
        if img["name"] == image and "newTag" in img:
            assert img["newTag"].split("@")[0] == tag


def test_postgres_has_persistent_storage_and_secret_credentials() -> None:
    sts = _one("StatefulSet", "mlflow-postgres")
    assert sts["spec"]["volumeClaimTemplates"], "no PersistentVolumeClaim"
    svc = _one("Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    env = _env(c)
    for name in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    mounts = {m["name"] for m in c["volumeMounts"]}
    assert {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]} <= mounts


def test_workloads_run_as_non_root() -> None:
    for doc in _base_objects():
        if doc["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert pod["securityContext"]["runAsUser"] > 0
        for c in _containers(doc):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]


def test_gpu_node_pool_note_matches_the_pipeline() -> None:
    readme = (INFRA / "README.md").read_text()
    key, value = GPU_NODE_SELECTOR
    assert f"{key}={value}" in readme
    assert GPU_TOLERATION["key"] in readme and GPU_TOLERATION["effect"] in readme


# --------------------------------------------------------------------------------------------
# no credentials in the repository

_SECRET_KEY = re.compile(
    r"(?i)\b[\w.-]*(password|passwd|secret_access_key|secret_key|token|api_key)[\w.-]*"
    r"[\"']?\s*[:=]\s*(?P<value>[^\s#]*)"
)
_URI_CREDS = re.compile(r"[a-z][a-z0-9+.-]*://(?P<user>[^:/\s@]+):(?P<value>[^@\s]+)@")
_PLACEHOLDER = re.compile(
    r"""^["']?(REPLACE_ME|<[^>]*>|\$\{?\(?[A-Za-z_][A-Za-z0-9_]*\)?\}?|password|\.\.\.|true|false|)["']?$"""
)


def _credential_findings(text: str) -> list[str]:
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in [*_SECRET_KEY.finditer(line), *_URI_CREDS.finditer(line)]:
            value = m.group("value")
            if not _PLACEHOLDER.match(value) and not value.startswith(("$", '"$')):
                found.append(f"line {lineno}: {line.strip()}")
        if re.search(r"\bAKIA[0-9A-Z]{16}\b", line):
            found.append(f"line {lineno}: AWS access key id")
    return found


def test_no_plaintext_credentials_under_infra_and_mlflow() -> None:
    files = [p for d in (INFRA, MLFLOW_DIR) for p in d.rglob("*") if p.is_file()]
    assert files
    problems = {
        str(p.relative_to(ROOT)): f for p in files if (f := _credential_findings(p.read_text()))
    }
    assert not problems, problems


def test_credential_scan_flags_literals() -> None:
    assert _credential_findings("POSTGRES_PASSWORD: hunter2")
    assert _credential_findings("uri: postgresql://mlflow:s3cr3t@db:5432/mlflow")
    assert _credential_findings("AWS_SECRET_ACCESS_KEY=abc123")
    assert not _credential_findings("POSTGRES_PASSWORD: REPLACE_ME")
    assert not _credential_findings("- name: AWS_SECRET_ACCESS_KEY")
    assert not _credential_findings('--from-literal=POSTGRES_PASSWORD="$PGPW"')


# --------------------------------------------------------------------------------------------
# component image


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    """``[[(INSTRUCTION, arguments), ...] per stage]``, continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    stages: list[list[tuple[str, str]]] = [[]]
    for line in lines:
        instr, _, rest = line.partition(" ")
        if instr.upper() == "FROM":
            stages.append([])
        stages[-1].append((instr.upper(), rest.strip()))
    return stages


def test_dockerfile_builds_from_the_lock_and_copies_the_project() -> None:
    preamble, *stages = _dockerfile_stages()
    assert len(stages) >= 2, "expected a multi-stage build"
    args = dict(a.split("=", 1) for instr, a in preamble if instr == "ARG" and "=" in a)
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["BASE"]), args["BASE"]
    builder, runtime = stages[0], stages[-1]
    runs = " ".join(a for instr, a in builder if instr == "RUN")
    assert re.search(r"uv sync --frozen --no-dev\b", runs)
    copies = [a for instr, a in builder if instr == "COPY"]
    assert any("uv.lock" in c.split() for c in copies)
    copied = {
        src.rstrip("/")
        for instr, a in runtime
        if instr == "COPY" and not a.startswith("--from")
        for src in a.split()[:-1]
    }
    assert {"src", "components", "pipelines", "params.yaml"} <= copied
    for src in copied | {c for a in copies for c in a.split()[:-1]}:
        assert (ROOT / src.rstrip("/")).exists(), f"COPY source {src} missing"
    env = " ".join(a for instr, a in runtime if instr == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    assert "CXRFLOW_GIT_COMMIT=${CXRFLOW_GIT_COMMIT}" in env
    assert any(instr == "ARG" and a.startswith("CXRFLOW_GIT_COMMIT") for instr, a in runtime)
    (user,) = [a for instr, a in runtime if instr == "USER"]
    assert user.split(":")[0] not in {"0", "root"}


def test_dockerfile_gpu_variant_keeps_the_locked_tensorflow_version() -> None:
    text = DOCKERFILE.read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("tensorflow-cpu"))
    locked = re.search(r"==([\w.]+)", pin)
    assert locked
    assert f"ARG TF_VERSION={locked.group(1)}" in text
    assert "tensorflow[and-cuda]==${TF_VERSION}" in text
    assert "uv export --frozen --no-dev" in text  # GPU swap constrained by the lock


def _image_defaults() -> dict[str, str]:
    tree = ast.parse((ROOT / "components" / "images.py").read_text())
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            call_args = node.value.args
            if len(call_args) == 2 and isinstance(call_args[1], ast.Constant):
                out[node.targets[0].id] = call_args[1].value  # type: ignore[attr-defined]
    return out


def test_readme_builds_the_images_the_pipeline_references() -> None:
    readme = (INFRA / "README.md").read_text()
    images = _image_defaults()
    assert set(images) == {"CPU_IMAGE", "GPU_IMAGE"}
    for image in images.values():
        assert image in readme, image
    assert "TF_VARIANT=gpu" in readme
    assert "not run" in readme.lower()  # says plainly what was not validated


# --------------------------------------------------------------------------------------------
# mlflow/ (configuration only) and the local server script


def test_mlflow_folder_is_not_a_python_package() -> None:
    assert not list(MLFLOW_DIR.rglob("*.py")), "mlflow/ must not shadow the mlflow library"
    names = {p.name for p in MLFLOW_DIR.iterdir()}
    assert {"README.md", "server.env.example", "start-local-server.sh"} <= names
    env_keys = {
        line.split("=", 1)[0].lstrip("# ")
        for line in (MLFLOW_DIR / "server.env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#  ")
    }
    assert set(CONFIG_MAP_ENV) | set(SECRET_ENV) <= env_keys


def test_start_local_server_binds_loopback_with_sqlite(tmp_path: Path) -> None:
    script = MLFLOW_DIR / "start-local-server.sh"
    assert script.stat().st_mode & stat.S_IXUSR, "not executable"
    assert "set -euo pipefail" in script.read_text()
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    fake = tmp_path / "mlflow"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CXRFLOW_"))}
    out = subprocess.run(
        ["bash", str(script), "--workers", "1"],
        env={**env, "MLFLOW_BIN": str(fake)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    argv = out.stdout.splitlines()
    assert argv[0] == "server"
    assert _flag(argv, "--host") == "127.0.0.1"
    assert _flag(argv, "--port") == "5000"
    assert _flag(argv, "--backend-store-uri") == f"sqlite:///{ROOT}/mlruns.db"
    assert _flag(argv, "--artifacts-destination") == f"{ROOT}/mlartifacts"
    assert argv[-2:] == ["--workers", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, host: str) -> int:
    req = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def mlflow_server_as_deployed(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`mlflow server` with the Deployment's own args, on loopback, over a sqlite store."""
    (c,) = _one("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    args = [str(a) for a in [*c["command"], *c["args"]]]
    port = _free_port()
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    args[0] = str(ROOT / ".venv" / "bin" / "mlflow")
    if not Path(args[0]).exists():
        args[0] = shutil.which("mlflow") or pytest.skip("mlflow CLI not found")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))},
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "HOME": str(tmp_path),
    }
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(tmp_path / 'server.log').read_text()}")
            try:
                if _get(f"{base}/health", f"127.0.0.1:{port}") == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not become healthy in 120 s")
        uri = _one("ConfigMap", CONFIG_MAP_NAME)["data"]["MLFLOW_TRACKING_URI"]
        yield base, uri.split("://", 1)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # our own session: the server and its workers
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


@pytest.mark.slow
def test_mlflow_server_accepts_the_deployment_args(
    mlflow_server_as_deployed: tuple[str, str],
) -> None:
    """The real CLI takes the Deployment's args and serves the ConfigMap's Host header."""
    base, service_host = mlflow_server_as_deployed
    search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _get(f"{base}/health", service_host) == 200
    assert _get(search, service_host) == 200
    assert _get(search, "localhost:5000") == 200
    assert _get(search, "attacker.example:5000") == 403
