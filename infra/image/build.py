"""Build the component image (``infra/Dockerfile``) with podman: ``make image [VARIANT=gpu]``.

    python3 infra/image/build.py                  # CPU variant
    python3 infra/image/build.py --variant gpu    # tensorflow[and-cuda] instead of tensorflow-cpu

What it does, in order (standard library only, so it runs before the venv exists):

1. Installs podman, runc and mmdebstrap with apt-get when one is missing (as root; as
   ``make stack`` installs PostgreSQL).
2. Writes a ``containers.conf`` drop-in: the ``runc`` runtime (crun rejects a hybrid cgroup
   layout), the ``cgroupfs`` manager, and default ulimits at or below this machine's hard limits
   (podman's own defaults fail with "setrlimit ... Operation not permitted" in a container).
3. Picks the base: the public ``python:3.11-slim-bookworm`` when it is here or can be pulled,
   else two Debian bookworm images made offline with mmdebstrap and ``podman import`` (the
   runtime base with ``python3``; the builder base adds ``python3-pip`` and ``binutils``).
4. ``podman build --format docker`` (the OCI format drops ``SHELL``, and with it ``pipefail``)
   on the host network with the host's CA directory mounted read-only, since PyPI is reached
   only through them here; the CA settings are build arguments, never image configuration.
5. Tags ``localhost/cxrflow:<version>[-gpu]`` and ``localhost/cxrflow:<version>-<commit12>[-gpu]``
   (``-dirty`` when tracked files differ from the commit) and writes the record
   ``build/image.json`` (per variant: tags, image id, digest, size, layers, commit, seconds),
   which ``components.images`` reads so that a compiled pipeline names the image by digest.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
REPO = "localhost/cxrflow"
RECORD = ROOT / "build" / "image.json"
PUBLIC_BASE = "docker.io/library/python:3.11-slim-bookworm"
OFFLINE_BASE = "localhost/cxrflow-base:bookworm"
OFFLINE_BUILD_BASE = "localhost/cxrflow-base:bookworm-build"
TOOLS = {"podman": "podman", "runc": "runc", "mmdebstrap": "mmdebstrap"}
CONF_NAME = "50-cxrflow.conf"
CA_DIR = Path("/etc/ssl/certs")
CA_FILE = CA_DIR / "ca-certificates.crt"
PULL_TIMEOUT_S = 60
# dpkg leaves these out of the offline bases: nothing in a batch pod reads them.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)


class BuildError(RuntimeError):
    """A build step failed; the message is one line for the user."""


def say(message: str) -> None:
    """Print one progress line (stderr, so that stdout stays for the record path)."""
    print(f"image: {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], *, capture: bool = False, timeout: float | None = None) -> str:
    """Run ``cmd``; raise :class:`BuildError` naming it when it fails."""
    try:
        done = subprocess.run(cmd, check=True, text=True, capture_output=capture, timeout=timeout)
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or "").strip().splitlines()[-1:] if capture else []
        raise BuildError(
            f"`{' '.join(cmd[:3])} ...` failed (exit {exc.returncode}) {tail}"
        ) from exc
    return done.stdout if capture else ""


def ensure_tools() -> None:
    """Install podman, runc and mmdebstrap with apt-get when one is missing."""
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BuildError(
            f"{', '.join(missing)} not found and cannot be installed here (needs root and "
            "apt-get): install them with your package manager"
        )
    say(f"installing {' '.join(missing)} (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
    )


def conf_dir() -> Path:
    """Where podman reads ``containers.conf`` drop-ins for this user."""
    if os.geteuid() == 0:
        return Path("/etc/containers/containers.conf.d")
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "containers" / "containers.conf.d"


def ulimit_text(name: str, limit: int, wanted: int = 1024) -> str:
    """``name=soft:hard`` at ``wanted`` or the hard limit when that is lower."""
    value = wanted if limit == resource.RLIM_INFINITY else min(wanted, limit)
    return f"{name}={value}:{value}"


def containers_conf() -> str:
    """The drop-in's text (runtime, cgroup manager, ulimits within this machine's hard limits)."""
    nofile = ulimit_text("nofile", resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    nproc = ulimit_text("nproc", resource.getrlimit(resource.RLIMIT_NPROC)[1])
    return (
        "# written by infra/image/build.py (make image)\n"
        "[containers]\n"
        f'default_ulimits = ["{nofile}", "{nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
    )


def write_containers_conf() -> None:
    """Write the drop-in when it is missing or different."""
    path = conf_dir() / CONF_NAME
    text = containers_conf()
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    say(f"wrote {path}")


def image_exists(ref: str) -> bool:
    """Whether podman holds ``ref`` locally."""
    return subprocess.run(["podman", "image", "exists", ref], check=False).returncode == 0


def make_offline_base(ref: str, packages: str) -> None:
    """``mmdebstrap`` a bookworm minbase with ``packages`` and import it as ``ref``."""
    say(f"making {ref} offline (mmdebstrap bookworm + {packages})")
    with tempfile.TemporaryDirectory(prefix="cxrflow-base-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        cmd = [
            "mmdebstrap",
            "--quiet",
            "--variant=minbase",
            f"--include={packages}",
            '--aptopt=APT::Install-Recommends "false"',
            *(f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES),
            "bookworm",
            str(tar),
        ]
        run(cmd)
        run(
            [
                "podman",
                "import",
                "--quiet",
                "--change",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--change",
                "ENV LANG=C.UTF-8",
                str(tar),
                ref,
            ],
            capture=True,
        )


def pick_bases(rebuild: bool) -> tuple[str, str]:
    """(runtime base, builder base): public when here or pullable, else made offline."""
    if not rebuild:
        if image_exists(PUBLIC_BASE):
            return PUBLIC_BASE, PUBLIC_BASE
        if image_exists(OFFLINE_BASE) and image_exists(OFFLINE_BUILD_BASE):
            return OFFLINE_BASE, OFFLINE_BUILD_BASE
        try:
            run(["podman", "pull", "--quiet", PUBLIC_BASE], capture=True, timeout=PULL_TIMEOUT_S)
            return PUBLIC_BASE, PUBLIC_BASE
        except (BuildError, subprocess.TimeoutExpired):
            say(f"{PUBLIC_BASE} cannot be pulled here; using a Debian base made offline")
    make_offline_base(OFFLINE_BASE, "python3")
    make_offline_base(OFFLINE_BUILD_BASE, "python3,python3-pip,binutils")
    return OFFLINE_BASE, OFFLINE_BUILD_BASE


def git_state() -> tuple[str, bool]:
    """(HEAD commit, whether tracked files differ from it); ("unknown", False) outside git."""
    try:
        commit = run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture=True).strip()
        status = run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture=True,
        )
    except (BuildError, FileNotFoundError):
        return "unknown", False
    return commit, bool(status.strip())


def project_version() -> str:
    """``project.version`` of pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return str(tomllib.load(fh)["project"]["version"])


def image_tags(version: str, commit: str, dirty: bool, variant: str) -> list[str]:
    """The version tag and the commit tag of ``variant`` (``-gpu`` suffixed)."""
    suffix = "-gpu" if variant == "gpu" else ""
    tags = [f"{REPO}:{version}{suffix}"]
    if commit != "unknown":
        tags.append(f"{REPO}:{version}-{commit[:12]}{'-dirty' if dirty else ''}{suffix}")
    return tags


def build_command(tags: list[str], variant: str, commit: str, bases: tuple[str, str]) -> list[str]:
    """The ``podman build`` command line."""
    cmd = [
        "podman",
        "build",
        "--format",
        "docker",
        "--network",
        "host",
        "--layers",
        "--file",
        str(ROOT / "infra" / "Dockerfile"),
        "--build-arg",
        f"BASE={bases[0]}",
        "--build-arg",
        f"BUILD_BASE={bases[1]}",
        "--build-arg",
        f"TF_VARIANT={variant}",
        "--build-arg",
        f"CXRFLOW_GIT_COMMIT={commit}",
    ]
    # The host's CA bundle, for PyPI through this network only: mounted, never copied.
    if CA_FILE.is_file():
        cmd += [
            "--volume",
            f"{CA_DIR}:{CA_DIR}:ro",
            "--build-arg",
            "UV_NATIVE_TLS=1",
            "--build-arg",
            f"PIP_CERT={CA_FILE}",
        ]
    for tag in tags:
        cmd += ["--tag", tag]
    return [*cmd, str(ROOT)]


def inspect_image(ref: str) -> dict[str, Any]:
    """Id, digest, size and layers (size and the instruction that made each) of ``ref``."""
    info = json.loads(run(["podman", "image", "inspect", ref], capture=True))[0]
    history = json.loads(run(["podman", "history", "--format", "json", ref], capture=True))
    layers = [
        {"size": int(h.get("size") or 0), "created_by": str(h.get("CreatedBy") or "")[-160:]}
        for h in history
    ]
    return {
        "id": info["Id"],
        "digest": info["Digest"],
        "size": int(info["Size"]),
        "layers": layers,
    }


def write_record(variant: str, entry: dict[str, Any], path: Path = RECORD) -> None:
    """Merge ``entry`` into the record under ``variant`` (the other variant's entry stays)."""
    record: dict[str, Any] = {}
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            record = {}
    record.setdefault("images", {})[variant] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def stamp_commit(image_id: str, tags: list[str], commit: str) -> None:
    """Bake the commit into the image in a last step whose text holds the commit itself.

    buildah's layer cache keys an ``ENV``/``LABEL`` by its text before the build args are
    expanded, so the same tree built at a new commit reused the old commit's layer and
    ``cxrflow --version`` named the old commit (a clean-clone run caught it).
    """
    with tempfile.TemporaryDirectory(prefix="cxrflow-stamp-") as tmp:
        containerfile = Path(tmp) / "Containerfile"
        containerfile.write_text(
            f"FROM {image_id}\n"
            f'LABEL org.opencontainers.image.revision="{commit}"\n'
            f"ENV CXRFLOW_GIT_COMMIT={commit}\n"
        )
        cmd = ["podman", "build", "--format", "docker", "--layers", "--file", str(containerfile)]
        for tag in tags:
            cmd += ["--tag", tag]
        run([*cmd, tmp])


def build(variant: str, rebuild_base: bool) -> dict[str, Any]:
    """Everything above, in order; returns the record entry."""
    started = time.monotonic()
    ensure_tools()
    write_containers_conf()
    bases = pick_bases(rebuild_base)
    commit, dirty = git_state()
    version = project_version()
    tags = image_tags(version, commit, dirty, variant)
    say(f"building {', '.join(tags)} ({variant}) on {bases[0]}")
    build_started = time.monotonic()
    run(build_command(tags, variant, commit, bases))
    stamp_commit(inspect_image(tags[0])["id"], tags, commit)
    built = inspect_image(tags[0])
    entry = {
        "repository": REPO,
        "tags": tags,
        "reference": f"{REPO}@{built['digest']}",
        "variant": variant,
        "version": version,
        "commit": commit,
        "dirty": dirty,
        "base": bases[0],
        "build_seconds": round(time.monotonic() - build_started, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **built,
    }
    write_record(variant, entry)
    return entry


def main(argv: list[str] | None = None) -> int:
    """Command line: build, print the record path and one summary line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument(
        "--rebuild-base", action="store_true", help="make the offline Debian bases again"
    )
    args = parser.parse_args(argv)
    try:
        entry = build(args.variant, args.rebuild_base)
    except BuildError as exc:
        print(f"image: error: {exc}", file=sys.stderr)
        return 1
    say(
        f"built {entry['reference']} ({entry['size'] / 1e9:.2f} GB, "
        f"{entry['build_seconds']} s build, {entry['total_seconds']} s total)"
    )
    print(RECORD)
    return 0


if __name__ == "__main__":
    sys.exit(main())
