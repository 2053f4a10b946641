"""The built component image (``make image``, which ``make test`` runs first), as a pod runs it.

Every container runs as the image's user with a read-only root file system and a writable
``/tmp`` (tmpfs) only, as the pod spec requires; the image is named by the digest in the record
``components.images`` reads, so these tests check what a compiled pipeline would run. Skipped
only where podman itself cannot run a container here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.images import record_path

pytestmark = pytest.mark.container

UID = 10001
SECRET_NAMES = re.compile(
    r"(^|/)(\.env|server\.env|\.stack/.*|secrets\.json|mlflow-admin-password|\.netrc|"
    r"\.git-credentials|\.pypirc|credentials|id_rsa|id_ed25519|\.dockerconfigjson|config\.json)$"
)
# Everywhere: an AWS access key id standing alone (not inside base64 data, not AWS's documented
# "...EXAMPLE" ones). Outside the venv (the OS, the code, its config) also private keys and
# env-file style secret assignments; inside it libraries legitimately spell PEM headers and the
# names of credential variables, so there only this machine's real secret values count.
AWS_KEY_ID = rb"(?<![A-Za-z0-9/+=])AKIA[0-9A-Z]{16}(?![A-Za-z0-9/+=])"
OUTSIDE_VENV = (
    rb"-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"
    rb"|(?m:^(?:export\s+)?(?:\w*PASSWORD|\w*SECRET\w*|AWS_SECRET_ACCESS_KEY)=\S+)"
)
VENV = "opt/cxrflow/.venv/"
MAX_SCANNED = 8 * 1024 * 1024


def _podman_runs() -> str | None:
    """None when podman can run a container here, else why not."""
    if shutil.which("podman") is None:
        return "podman is not installed (make image installs it where apt-get and root allow)"
    info = subprocess.run(["podman", "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        lines = (info.stderr.strip() or "podman info failed").splitlines()
        return f"podman cannot run here: {lines[-1]}"
    return None


@pytest.fixture(scope="module")
def image() -> dict[str, Any]:
    """The CPU entry of the image record (fails, not skips, when podman runs but none is built)."""
    why = _podman_runs()
    if why:
        pytest.skip(why)
    path = record_path()
    assert path.is_file(), f"no image record at {path}: run `make image` first"
    entry: dict[str, Any] = json.loads(path.read_text())["images"]["cpu"]
    ref = f"{entry['repository']}@{entry['digest']}"
    exists = subprocess.run(["podman", "image", "exists", ref], check=False)
    assert exists.returncode == 0, f"{ref} (from {path}) is not in podman's store: make image"
    entry["ref"] = ref
    return entry


def run_in(image: dict[str, Any], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``args`` in the image as a pod would: its user, read-only root, a tmpfs /tmp only."""
    cmd = [
        "podman",
        "run",
        "--rm",
        "--network=none",
        "--read-only",
        "--read-only-tmpfs=false",
        "--tmpfs=/tmp:rw,size=256m",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        image["ref"],
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=300)


def test_runs_as_the_non_root_user_on_a_read_only_root(image: dict[str, Any]) -> None:
    config = json.loads(
        subprocess.run(
            ["podman", "image", "inspect", image["ref"]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )[0]["Config"]
    assert config["User"] == f"{UID}:{UID}"
    probe = (
        "import os, pathlib; print(os.getuid(), os.getgid());"
        "pathlib.Path('/tmp/w').write_text('x'); print('tmp writable');"
        "\ntry:\n    pathlib.Path('/opt/cxrflow/w').write_text('x')\n"
        "except OSError as e:\n    print('root read-only', e.errno)"
    )
    out = run_in(image, "python3", "-c", probe).stdout.split("\n")
    assert out[0] == f"{UID} {UID}"
    assert "tmp writable" in out
    assert "root read-only 30" in out  # EROFS


def test_version_names_the_commit(image: dict[str, Any]) -> None:
    out = run_in(image, "cxrflow", "--version").stdout.strip()
    assert image["commit"] != "unknown"
    assert out == f"cxrflow {image['version']} ({image['commit']})"


def test_kfp_executor_entry_point_and_the_steps_import(image: dict[str, Any]) -> None:
    helped = run_in(image, "python3", "-m", "kfp.dsl.executor_main", "--help")
    assert "--executor_input" in helped.stdout
    # What the size trimming must not break: TensorFlow (stripped), Keras, the step modules.
    code = (
        "import numpy as np, tensorflow as tf, keras, mlflow, onnxruntime, great_expectations;"
        "import cxrflow.steps.registry, components.factory, pipelines.cxrflow_pipeline;"
        "m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation='softmax')]);"
        "m.compile('adam', 'sparse_categorical_crossentropy');"
        "h = m.fit(np.ones((8, 4)), np.zeros(8), epochs=1, verbose=0);"
        "print('ok', tf.__version__, round(float(h.history['loss'][0]), 3) >= 0)"
    )
    out = run_in(image, "python3", "-c", code).stdout
    assert out.strip().startswith("ok 2.")


def test_the_cli_works_in_a_read_only_pod(image: dict[str, Any]) -> None:
    done = run_in(image, "cxrflow", "--profile", "smoke", "params", "show", check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def _layers(archive: Path) -> Iterator[tuple[str, tarfile.TarFile]]:
    with tarfile.open(archive) as outer:
        for member in outer.getmembers():
            if member.isfile() and member.name.endswith(".tar"):
                fh = outer.extractfile(member)
                assert fh is not None
                with tarfile.open(fileobj=fh) as layer:
                    yield member.name, layer


def _known_secret_values() -> list[bytes]:
    """This machine's real secrets (the local stack's, mlflow/server.env's), if any."""
    values: list[bytes] = []
    stack = Path(".stack")
    for path in (stack / "secrets.json", stack / "mlflow-admin-password"):
        if path.is_file():
            text = path.read_text().strip()
            try:
                values += [str(v).encode() for v in json.loads(text).values() if len(str(v)) >= 8]
            except (ValueError, AttributeError):
                values.append(text.encode())
    env_file = Path("mlflow/server.env")
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if any(k in key.upper() for k in ("PASSWORD", "SECRET", "KEY")) and len(value) >= 8:
                values.append(value.strip().strip("'\"").encode())
    return [v for v in values if v]


def test_no_credential_or_secret_in_any_layer(image: dict[str, Any], tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    subprocess.run(
        [
            "podman",
            "save",
            "--quiet",
            "--format",
            "docker-archive",
            "-o",
            str(archive),
            image["ref"],
        ],
        check=True,
        timeout=600,
    )
    literals = [re.escape(v) for v in _known_secret_values()]
    in_venv = re.compile(b"|".join([AWS_KEY_ID, *literals]))
    pattern = re.compile(b"|".join([AWS_KEY_ID, OUTSIDE_VENV, *literals]))
    found: list[str] = []
    for layer_name, layer in _layers(archive):
        for member in layer:
            name = member.name.lstrip("./")
            if SECRET_NAMES.search(name) and not name.startswith(VENV):
                found.append(f"{layer_name}: {name} (file name)")
            if not member.isfile() or member.size > MAX_SCANNED:
                continue
            fh = layer.extractfile(member)
            data = fh.read() if fh else b""
            if data[:4] == b"\x7fELF":
                continue
            for hit in (in_venv if name.startswith(VENV) else pattern).finditer(data):
                if b"EXAMPLE" not in hit.group(0):
                    found.append(f"{layer_name[:12]}: {name}: {hit.group(0)[:24]!r}...")
    config = subprocess.run(
        ["podman", "image", "inspect", image["ref"]], capture_output=True, check=True
    ).stdout
    history = subprocess.run(
        ["podman", "history", "--no-trunc", "--format", "{{.CreatedBy}}", image["ref"]],
        capture_output=True,
        check=True,
    ).stdout
    for where, blob in (("config", config), ("history", history)):
        for hit in pattern.finditer(blob):
            found.append(f"{where}: {hit.group(0)[:24]!r}...")
        for word in (b"PASSWORD=", b"SECRET=", b"AWS_SECRET_ACCESS_KEY", b"PIP_CERT="):
            if word in blob:
                found.append(f"{where}: {word.decode()}")
    assert not found, "secrets in the image:\n" + "\n".join(found[:30])


def test_the_secret_patterns_catch_what_they_should() -> None:
    """The scan above is only as good as its patterns: a planted key is found, noise is not."""
    key = rb"AKIA" + b"Z7Q2X4W6V8T0R1P3"
    assert re.search(AWS_KEY_ID, b'aws_access_key_id = "' + key + b'"')
    assert not re.search(AWS_KEY_ID, b"xAKIAAQAAAAAABAAHAM0Aq")  # inside base64 data
    assert re.search(OUTSIDE_VENV, b"# x\nMLFLOW_TRACKING_PASSWORD=hunter2hunter2\n")
    assert re.search(OUTSIDE_VENV, b"-----BEGIN OPENSSH PRIVATE KEY-----")
    for name in (".stack/secrets.json", "opt/cxrflow/mlflow/server.env", "app/.env"):
        assert SECRET_NAMES.search(name), name
    assert not SECRET_NAMES.search("usr/lib/python3.11/site-packages/botocore/credentials.py")
