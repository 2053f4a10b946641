"""Offline checks of the cluster side that standard linters cannot know: the wiring.

``make lint-infra`` (infra/lint/lint-infra.sh) runs the standard tools on the manifests and the
Dockerfile: kubectl kustomize, kubernetes-validate, checkov, hadolint, yamllint. The tests here
check what those tools cannot know, because it lives in this project's other files: ConfigMap
and Secret keys against the pipeline's, the runs' RBAC against the objects the steps read, the
checkpoint volume against params.yaml, Service selectors, the MLflow server's arguments (and a
real ``mlflow server`` started with them), PodSecurity "restricted" at the validated Kubernetes
version, the GPU node pool examples against the pipeline's node selector and toleration, the
component image against the lock. One slow test plants problems in a copy of infra/ and checks
that lint-infra.sh reports each. Nothing here reaches a cluster, a registry or a Docker engine.
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

ROOT = Path(__file__).resolve().parents[2]

from pipelines import submit  # noqa: E402
from pipelines.cxrflow_pipeline import (  # noqa: E402
    ALERT_ENV,
    CONFIG_MAP_ENV,
    CONFIG_MAP_NAME,
    GPU_LIMIT,
    GPU_NODE_SELECTOR,
    GPU_RESOURCE,
    GPU_TOLERATION,
    MLFLOW_AUTH_ENV,
    MLFLOW_CLIENT_LABEL,
    SECRET_ENV,
    SECRET_NAME,
)

INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
BASE = K8S / "base"
RUNS = K8S / "pipeline-runs"
CONFIG_COMPONENT = K8S / "components" / "cxrflow-config"
OVERLAY = K8S / "overlays" / "gpu-cluster"
NODE_POOLS = INFRA / "gpu-node-pools"
LINT = INFRA / "lint"
MLFLOW_DIR = ROOT / "mlflow"
DOCKERFILE = INFRA / "Dockerfile"
SECRET_EXAMPLE = BASE / "secret.example.yaml"
RUNS_SERVICE_ACCOUNT = submit.DEFAULT_SERVICE_ACCOUNT  # what runs are submitted as


# --------------------------------------------------------------------------------------------
# helpers


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kustomization(folder: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return doc


def _listed_files(folder: Path) -> list[Path]:
    """The manifest files a kustomization lists, following the folders (bases, components) it
    includes. Read as files: no kustomize, no patches (lint-infra renders the real output)."""
    kust = _kustomization(folder)
    files: list[Path] = []
    for ref in [*kust.get("resources", []), *kust.get("components", [])]:
        target = (folder / ref).resolve()
        files += _listed_files(target) if target.is_dir() else [target]
    return files


def _objects(folder: Path) -> list[dict[str, Any]]:
    return [d for path in _listed_files(folder) for d in _docs(path)]


def _base_objects() -> list[dict[str, Any]]:
    return _objects(BASE)


def _one(kind: str, name: str, folder: Path = BASE) -> dict[str, Any]:
    found = [d for d in _objects(folder) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in {folder.name}, found {len(found)}"
    return found[0]


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    pod = obj["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _flag(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def _lint_versions() -> dict[str, str]:
    lines = (LINT / "versions.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_]+=", line))


def _run_on_kubernetes_section() -> str:
    # the walk-through lives in docs/kubernetes.md; the README points to it
    guide = (ROOT / "docs" / "kubernetes.md").read_text()
    start = guide.index("## Run on Kubernetes")
    end = guide.find("\n## ", start + 1)
    return guide[start : end if end != -1 else None]


# --------------------------------------------------------------------------------------------
# manifests: structure the linters do not check


def _kustomization_folders() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


@pytest.mark.parametrize("folder", _kustomization_folders(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_in_a_kustomization_folder_is_used(folder: Path) -> None:
    """kustomize renders what is listed; a manifest left out of the list would silently not be
    applied. The Secret example is the one file that must never be listed."""
    kust = _kustomization(folder)
    refs = [*kust.get("resources", []), *kust.get("components", [])]
    refs += [p["path"] for p in kust.get("patches", []) if "path" in p]
    used = {(folder / r).resolve() for r in refs}
    for path in folder.glob("*.yaml"):
        if path.name == "kustomization.yaml":
            continue
        if path == SECRET_EXAMPLE:
            assert path.resolve() not in used, "secret.example.yaml must not be a resource"
        else:
            assert path.resolve() in used, f"{path.relative_to(ROOT)} is not referenced"


def test_no_secret_is_shipped_by_kustomize() -> None:
    for folder in (BASE, RUNS):
        assert not [d for d in _objects(folder) if d["kind"] == "Secret"], folder.name


def test_config_map_is_one_definition_shared_by_mlflow_and_the_runs() -> None:
    """The MLflow server's namespace and the runs' namespace get the same ConfigMap, from one
    kustomize component, and the overlay's endpoint patch reaches both."""
    for folder in (BASE, RUNS):
        assert CONFIG_COMPONENT.resolve() in {
            (folder / c).resolve() for c in _kustomization(folder).get("components", [])
        }, folder.name
    overlay = _kustomization(OVERLAY)
    assert "namespace" not in overlay, "the overlay must keep base's and the runs' namespaces"
    assert {(OVERLAY / r).resolve() for r in overlay["resources"]} >= {
        BASE.resolve(),
        RUNS.resolve(),
    }
    patch = next(p for p in overlay["patches"] if p["path"] == "configmap-endpoints.yaml")
    assert patch["target"] == {"kind": "ConfigMap", "name": CONFIG_MAP_NAME}  # every match
    (cm,) = _docs(OVERLAY / "configmap-endpoints.yaml")
    assert set(cm["data"]) <= set(CONFIG_MAP_ENV)


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


def _secret_refs(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(Secret name, key) for every env secretKeyRef and every item of a secret volume."""
    refs = [
        (ref["name"], ref["key"])
        for c in _containers(doc)
        for e in c.get("env", [])
        if (ref := e.get("valueFrom", {}).get("secretKeyRef"))
    ]
    for vol in doc["spec"]["template"]["spec"].get("volumes", []):
        if "secret" in vol:
            items = vol["secret"].get("items")
            assert items, f"{vol['name']}: mount only the keys needed (items)"
            refs += [(vol["secret"]["secretName"], item["key"]) for item in items]
    return refs


def test_secret_example_covers_every_secret_reference() -> None:
    examples = {d["metadata"]["name"]: d for d in _docs(SECRET_EXAMPLE)}
    assert all(d["kind"] == "Secret" for d in examples.values())
    assert set(SECRET_ENV) <= set(examples[SECRET_NAME]["stringData"])
    assert set(MLFLOW_AUTH_ENV) | set(ALERT_ENV) <= set(examples[SECRET_NAME]["stringData"])
    text = SECRET_EXAMPLE.read_text()
    assert "kubectl" in text and "create secret generic" in text  # how to make the real one
    for doc in _base_objects():
        if doc["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        for name, key in _secret_refs(doc):
            assert key in examples[name]["stringData"], (name, key)
        for c in _containers(doc):
            for e in c.get("env", []):
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


def test_mlflow_runs_basic_auth_with_the_runs_login_as_admin() -> None:
    """As `make stack`: --app-name basic-auth, the admin created from the very Secret keys the
    run pods log in with, the auth config a read-only file from the Secret, one Flask key."""
    import configparser

    dep = _one("Deployment", "mlflow")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert _flag([str(a) for a in c["args"]], "--app-name") == "basic-auth"
    env = _env(c)
    for server_var, key in (
        ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_TRACKING_USERNAME"),
        ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_TRACKING_PASSWORD"),
    ):
        assert env[server_var]["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": key}
        assert key in MLFLOW_AUTH_ENV  # what every run pod gets (pipelines/cxrflow_pipeline.py)
    assert "secretKeyRef" in env["MLFLOW_FLASK_SERVER_SECRET_KEY"]["valueFrom"]
    config_path = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (name,) = [n for n, m in mounts.items() if Path(m["mountPath"]) == config_path.parent]
    assert mounts[name]["readOnly"] is True
    items = volumes[name]["secret"]["items"]
    assert [i["path"] for i in items] == [config_path.name]
    # the example's auth config is one MLflow reads: its own store, basic auth
    example = {d["metadata"]["name"]: d for d in _docs(SECRET_EXAMPLE)}
    secret = example[volumes[name]["secret"]["secretName"]]["stringData"]
    ini = configparser.ConfigParser()
    ini.read_string(secret[items[0]["key"]])
    assert ini["mlflow"]["database_uri"].endswith("/mlflow_auth")
    assert ini["mlflow"]["authorization_function"].endswith("authenticate_request_basic_auth")
    # the init container creates that database, reading the credentials as files
    (init,) = pod["initContainers"]
    assert "createdb mlflow_auth" in init["command"][-1]
    assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in init.get("env", []))


def test_mlflow_port_admits_only_labelled_clients_of_the_runs_namespace() -> None:
    """Not every namespace (as before): the runs' pods by their label, in the namespace where
    KFP runs them, and this namespace's pods that carry the same label."""
    key, value = MLFLOW_CLIENT_LABEL
    policy = _one("NetworkPolicy", "mlflow-ingress")
    dep = _one("Deployment", "mlflow")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= (
        dep["spec"]["template"]["metadata"]["labels"].items()
    )
    (rule,) = policy["spec"]["ingress"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert [p["port"] for p in rule["ports"]] == [c["ports"][0]["containerPort"]]
    runs_namespace = _kustomization(RUNS)["namespace"]
    namespaces = []
    for peer in rule["from"]:
        assert peer["podSelector"] == {"matchLabels": {key: value}}, peer
        assert "ipBlock" not in peer
        if "namespaceSelector" in peer:
            namespaces.append(peer["namespaceSelector"]["matchLabels"])
    assert namespaces == [{"kubernetes.io/metadata.name": runs_namespace}]


def test_mlflow_image_matches_locked_mlflow() -> None:
    (c,) = _one("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    image, tag = c["image"].rsplit(":", 1)
    assert image == "ghcr.io/mlflow/mlflow"
    assert tag == f"v{dist_version('mlflow')}-full"  # -full: has psycopg2 and boto3
    overlay = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    for img in overlay.get("images", []):
        if img["name"] == image and "newTag" in img:
            assert img["newTag"].split("@")[0] == tag


def test_postgres_has_persistent_storage_and_file_credentials() -> None:
    """The image's entrypoint reads POSTGRES_{USER,PASSWORD,DB}_FILE; each must name a key of
    the mounted Secret, and the probes must read the same files."""
    sts = _one("StatefulSet", "mlflow-postgres")
    assert sts["spec"]["volumeClaimTemplates"], "no PersistentVolumeClaim"
    svc = _one("Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = _env(c)
    assert not [e for e in env.values() if "valueFrom" in e], "credentials as env values"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    (secret_vol,) = [v for v in pod["volumes"] if "secret" in v]
    assert secret_vol["secret"]["secretName"] == "cxrflow-mlflow-db"
    paths = {
        f"{mounts[secret_vol['name']]}/{item['path']}": item["key"]
        for item in secret_vol["secret"]["items"]
    }
    for name in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        assert paths[env[f"{name}_FILE"]["value"]] == name
    for probe in ("readinessProbe", "livenessProbe"):
        command = " ".join(c[probe]["exec"]["command"])
        assert "pg_isready" in command
        assert env["POSTGRES_USER_FILE"]["value"] in command
    assert {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]} <= set(mounts)
    assert env["PGDATA"]["value"].startswith(mounts["data"] + "/")  # not the volume root


def test_namespace_enforces_restricted_pod_security_at_the_validated_version() -> None:
    ns = _one("Namespace", "cxrflow")
    major, minor, _ = _lint_versions()["KUBERNETES_VERSION"].split(".")
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
        assert labels[f"pod-security.kubernetes.io/{mode}-version"] == f"v{major}.{minor}"


_RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def test_workloads_meet_restricted_pod_security() -> None:
    """The "restricted" profile the namespace enforces: admission would reject the pods
    otherwise, which no offline tool here checks as such. Read-only root filesystems too."""
    workloads = [d for d in _base_objects() if d["kind"] in {"Deployment", "StatefulSet"}]
    assert workloads
    for doc in workloads:
        name = doc["metadata"]["name"]
        pod = doc["spec"]["template"]["spec"]
        pod_ctx = pod["securityContext"]
        assert pod_ctx["runAsNonRoot"] is True and pod_ctx["runAsUser"] > 0, name
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), name
        for vol in pod.get("volumes", []):
            assert set(vol) - {"name"} <= _RESTRICTED_VOLUMES, (name, vol["name"])
        for c in _containers(doc):
            ctx = c["securityContext"]
            seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", (name, c["name"])
            assert ctx["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert ctx["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert not ctx["capabilities"].get("add"), (name, c["name"])
            assert ctx.get("readOnlyRootFilesystem") is True, (name, c["name"])
            assert ctx.get("runAsUser", pod_ctx["runAsUser"]) > 0, (name, c["name"])


# --------------------------------------------------------------------------------------------
# what pipeline runs need where KFP executes them


def test_runs_service_account_reads_exactly_the_config_map_and_secret() -> None:
    (sa,) = [d for d in _objects(RUNS) if d["kind"] == "ServiceAccount"]
    assert sa["metadata"]["name"] == RUNS_SERVICE_ACCOUNT
    roles = {d["metadata"]["name"]: d for d in _objects(RUNS) if d["kind"] == "Role"}
    (reader,) = roles.values()
    granted = {
        (res, name, verb)
        for rule in reader["rules"]
        for res in rule["resources"]
        for name in rule["resourceNames"]
        for verb in rule["verbs"]
    }
    assert granted == {("configmaps", CONFIG_MAP_NAME, "get"), ("secrets", SECRET_NAME, "get")}
    bindings = {d["roleRef"]["name"]: d for d in _objects(RUNS) if d["kind"] == "RoleBinding"}
    # ours, and KFP's own Role that every run pod needs (launcher, Argo executor)
    assert set(bindings) == {reader["metadata"]["name"], "pipeline-runner"}
    for binding in bindings.values():
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RUNS_SERVICE_ACCOUNT}]


def test_checkpoint_volume_is_the_one_the_pipeline_mounts() -> None:
    from cxrflow.config import load_params

    pvc_name = load_params(ROOT / "params.yaml").cluster.checkpoints.pvc
    assert pvc_name, "params.yaml cluster.checkpoints.pvc is null: no volume to provide"
    pvc = _one("PersistentVolumeClaim", pvc_name, RUNS)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # four model steps, several nodes


def test_gpu_quota_fits_one_run_in_the_runs_namespace() -> None:
    from cxrflow.config import load_params

    models = load_params(ROOT / "params.yaml").models
    (quota,) = _docs(OVERLAY / "gpu-quota.yaml")
    assert quota["metadata"]["namespace"] == _kustomization(RUNS)["namespace"]
    assert int(quota["spec"]["hard"][f"requests.{GPU_RESOURCE}"]) == len(models) * GPU_LIMIT


def test_gpu_node_pool_examples_match_the_pipeline() -> None:
    """The pools' label is the pipeline's node selector and their taint is what the pipeline's
    toleration tolerates (and what its CPU steps do not)."""
    key, value = GPU_NODE_SELECTOR
    taint_key, effect = GPU_TOLERATION["key"], GPU_TOLERATION["effect"]
    assert GPU_TOLERATION["operator"] == "Exists"  # any value of the taint
    quota = int(_docs(OVERLAY / "gpu-quota.yaml")[0]["spec"]["hard"][f"requests.{GPU_RESOURCE}"])

    (eks,) = _docs(NODE_POOLS / "eks-gpu-nodegroup.yaml")
    assert eks["kind"] == "ClusterConfig"
    (group,) = eks["managedNodeGroups"]
    assert group["labels"] == {key: value}
    assert [(t["key"], t["effect"]) for t in group["taints"]] == [(taint_key, effect)]
    assert group["maxSize"] == quota

    (gke,) = _docs(NODE_POOLS / "gke-gpu-node-pool.yaml")
    assert gke["kind"] == "ContainerNodePool"
    node = gke["spec"]["nodeConfig"]
    assert node["labels"] == {key: value}
    gke_effect = re.sub(r"(?<!^)([A-Z])", r"_\1", effect).upper()  # NoSchedule -> NO_SCHEDULE
    assert [(t["key"], t["effect"]) for t in node["taint"]] == [(taint_key, gke_effect)]
    assert gke["spec"]["autoscaling"]["maxNodeCount"] == quota
    gcloud = (NODE_POOLS / "gke-gpu-node-pool.yaml").read_text()
    assert f"--node-labels {key}={value}" in gcloud
    assert f"--node-taints {taint_key}=present:{effect}" in gcloud


def test_readme_walks_through_the_cluster_setup_it_validates() -> None:
    section = _run_on_kubernetes_section()
    major, minor, _ = _lint_versions()["KUBERNETES_VERSION"].split(".")
    assert f"Kubernetes {major}.{minor}" in section
    assert re.search(r"Kubeflow Pipelines (backend )?2\.\d+\.\d+", section)
    key, value = GPU_NODE_SELECTOR
    assert f"{key}={value}" in section
    for needed in (
        "infra/k8s/overlays/gpu-cluster",
        "create secret generic",
        "pipeline submit",
        "pipeline schedule create",
        "make lint-infra",
    ):
        assert needed in section, needed
    assert "offline" in section.lower() and "| " in section  # the validated-how table


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
    # Manifests, configuration, scripts and docs. Python code (infra/stack) is left out: it
    # passes secrets around in variables, which this line-based scan cannot tell from literals.
    files = [
        p
        for d in (INFRA, MLFLOW_DIR)
        for p in d.rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc"}
    ]
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


ADMIN = ("admin", "test-admin-password-0123")


def _get_as(url: str, host: str, login: tuple[str, str] | None = ADMIN) -> int:
    import base64

    headers = {"Host": host}
    if login:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def mlflow_server_as_deployed(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`mlflow server` with the Deployment's own args (basic auth included), on loopback, over
    sqlite stores, with the Deployment's literal environment and test secrets for the rest."""
    (c,) = _one("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    args = [str(a) for a in [*c["command"], *c["args"]]]
    port = _free_port()
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    args[0] = str(ROOT / ".venv" / "bin" / "mlflow")
    if not Path(args[0]).exists():
        args[0] = shutil.which("mlflow") or pytest.skip("mlflow CLI not found")
    auth_ini = tmp_path / "basic_auth.ini"
    auth_ini.write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{tmp_path}/auth.db\n"
    )
    literal = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))},
        **literal,
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-flask-key",
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "HOME": str(tmp_path),
        # no job runner: faster start, and no /dev/shm folder left behind per server
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
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
    """The real CLI takes the Deployment's args and serves the ConfigMap's Host header, to the
    admin the Secret's keys create and to nobody without them."""
    base, service_host = mlflow_server_as_deployed
    search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _get(f"{base}/health", service_host) == 200
    assert _get_as(search, service_host) == 200
    assert _get_as(search, "localhost:5000") == 200
    assert _get_as(search, "attacker.example:5000") == 403
    assert _get_as(search, service_host, login=None) == 401
    assert _get_as(search, service_host, login=(ADMIN[0], "wrong-password-0123")) == 401


# --------------------------------------------------------------------------------------------
# make lint-infra itself: each tool reports a problem planted in a copy of infra/

_PLANTED_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: planted
  annotations:
    checkov.io/skip1: CKV_K8S_43
spec:
  selector:
    matchLabels: {app: planted}
  template:
    metadata:
      labels: {app: planted}
    spec:
      containers:
        - name: c
          image: busybox:1.37
          imagePullPolice: Always
          securityContext:
            privileged: true
"""


def _uv() -> list[str] | None:
    if found := shutil.which("uv"):
        return [found]
    probe = subprocess.run(
        ["python3", "-m", "uv", "--version"], capture_output=True, check=False, timeout=60
    )
    return ["python3", "-m", "uv"] if probe.returncode == 0 else None


@pytest.mark.slow
@pytest.mark.skipif(_uv() is None, reason="uv not installed (make venv installs it)")
def test_lint_infra_reports_planted_problems(tmp_path: Path) -> None:
    """A misspelt field (kubernetes-validate), a privileged container and a suppression without
    a reason (checkov), an unpinned apt-get (hadolint), a "yes" boolean (yamllint): each is
    reported, by name, and the script fails. The rest of the copy is the real infra/."""
    infra = tmp_path / "infra"
    shutil.copytree(INFRA, infra, ignore=shutil.ignore_patterns("stack", "__pycache__"))
    base = infra / "k8s" / "base"
    (base / "planted.yaml").write_text(_PLANTED_DEPLOYMENT)
    kust = base / "kustomization.yaml"
    kust.write_text(kust.read_text().replace("resources:\n", "resources:\n  - planted.yaml\n"))
    dockerfile = infra / "Dockerfile"
    dockerfile.write_text(
        dockerfile.read_text().replace(
            "WORKDIR /opt/cxrflow\n",
            "RUN apt-get update && apt-get install -y curl\nWORKDIR /opt/cxrflow\n",
            1,
        )
    )
    (infra / "gpu-node-pools" / "planted.yaml").write_text("enabled: yes\n")

    out = subprocess.run(
        ["bash", str(infra / "lint" / "lint-infra.sh")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    report = out.stdout + out.stderr
    assert out.returncode == 1, report
    summary = {line.split()[0]: line for line in report.splitlines() if line.startswith("  ")}
    assert "ok" in summary["kubectl"], report  # it renders; the problems are in the content
    for tool, finding in [
        ("kubernetes-validate", "imagePullPolice"),
        ("checkov", "CKV_K8S_16"),  # privileged container
        ("checkov", "NO REASON GIVEN"),
        ("hadolint", "DL3008"),  # apt-get install without a pinned version
        ("yamllint", "truthy"),
    ]:
        assert "FAIL" in summary[tool], report
        assert finding in report, (tool, finding, report)
