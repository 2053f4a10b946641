"""Local runs whose steps run in the built component image (``pipeline run --local --containers``).

Every step runs as it would in a pod: in the image the compiled pipeline names (by digest after
``make image``, see :mod:`components.images`), through ``kfp.local.DockerRunner`` on podman's
Docker API, as the image's non-root user, with a read-only root file system and a tmpfs
``/tmp`` as its only writable place besides the pipeline root, which kfp.local mounts at the
same path. Steps reach ``make stack``'s MLflow server and S3 over the host's network (the
stack listens on loopback).

- The service: :func:`container_session` starts ``podman system service --time=0`` on a unix
  socket in a private temporary folder for the length of the run, sets ``DOCKER_HOST`` (read by
  docker-py, which kfp.local uses) only inside the block, and at the end removes any container
  still labelled with the session (an interrupted run) and stops the service.
- The environment, from one place (:func:`container_environment`): the keys a pod gets from the
  ``cxrflow-credentials`` Secret and the ``cxrflow-config`` ConfigMap (MLflow basic auth, S3
  keys and endpoints, the alert webhook), read from this environment, which is the stack's
  client environment (``eval "$(python infra/stack/stack.py env)"``); plus the run's own
  variables (``CXRFLOW_PIPELINE_RUN_ID``, so that every step logs to one parent run, and the
  runner channel), ``CXRFLOW_GIT_COMMIT`` (the image's own, else this checkout's) and
  ``GIT_PYTHON_REFRESH=quiet`` (the image has no git: MLflow's git lookups stay quiet).
- The user and the pipeline root: as root here, the steps run as the image's user (uid 10001,
  as in a pod) and the pipeline root gets that user's group with group write, as a pod's
  ``fsGroup`` makes a volume writable; nothing is made world-writable and the root keeps its
  owner. Everything a step writes there is then owned by the image's user. Run by another user,
  the steps run with that user's uid and gid instead (what they write is the user's; no change
  of ownership is needed or possible). The runner channel, which the steps append to, is a
  folder of the run under ``<pipeline root>/.cxrflow/``, group-writable the same way and
  removed at the end of the run.
- Images: the train steps name the GPU image; where none is built, the local run gives them the
  CPU image (a local run uses no GPU) and says so in one line.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

CONTAINER_LABEL = "io.cxrflow.local-run"
"""The label of every container of a session (its value: the session's id), for clean-up."""

CHANNEL_FOLDER = ".cxrflow"
"""The folder under the pipeline root holding the runner channel of container runs."""

TMPFS_OPTIONS = "rw,nosuid,nodev,size=4g,mode=1777"
"""The steps' ``/tmp``: the only writable place of their root file system (as in a pod)."""

SERVICE_START_SECONDS = 60.0
"""How long podman's API service gets to answer before the run gives up."""

SERVICE_STOP_SECONDS = 10.0
"""How long podman's API service gets to end after SIGTERM before SIGKILL."""

EXTRA_ENV = ("AWS_DEFAULT_REGION",)
"""Client settings passed besides the Secret's and ConfigMap's keys, when set here."""

QUIET_GIT = {"GIT_PYTHON_REFRESH": "quiet"}
"""GitPython imports without a git executable, so MLflow's git lookups fail silently."""

DOCKER_HOST_ENV = "DOCKER_HOST"


class ContainerError(RuntimeError):
    """A container run cannot start here (no podman, no image, no tracking server)."""


def pod_env_keys() -> tuple[str, ...]:
    """The variables a cluster pod gets from the Secret and the ConfigMap, plus the extras.

    Read from the pipeline definition (one list for the cluster and for local containers).
    """
    from pipelines import cxrflow_pipeline as pipeline

    keys: list[str] = []
    for mapping in (
        pipeline.MLFLOW_AUTH_ENV,
        pipeline.SECRET_ENV,
        pipeline.ALERT_ENV,
        pipeline.PATIENT_SALT_ENV,
        pipeline.CONFIG_MAP_ENV,
    ):
        keys += [k for k in mapping if k not in keys]
    return (*keys, *EXTRA_ENV)


def container_environment(
    run_env: Mapping[str, str],
    environ: Mapping[str, str] | None = None,
    *,
    git_commit: str,
    keys: tuple[str, ...] | None = None,
) -> dict[str, str]:
    """The environment of every step's container: the local equivalent of the pod's Secret.

    Args:
        run_env: the run's own variables (pipeline run id, runner channel, tracking URI); they
            win over ``environ``.
        environ: where the credentials and endpoints are read (default: ``os.environ``, which
            holds the stack's client environment).
        git_commit: the commit of the code in the image (``CXRFLOW_GIT_COMMIT``).
        keys: the variables taken from ``environ`` (default: :func:`pod_env_keys`).

    Returns:
        Name -> value; a key unset in ``environ`` is left out (as an optional Secret key is).
    """
    env = os.environ if environ is None else environ
    wanted = pod_env_keys() if keys is None else keys
    out = {k: env[k] for k in wanted if env.get(k)}
    out.update(run_env)
    out.update(QUIET_GIT)
    out["CXRFLOW_GIT_COMMIT"] = git_commit
    return out


def container_run_args(user: str, environment: Mapping[str, str], session: str) -> dict[str, Any]:
    """The ``docker run`` settings of every step (``kfp.local.DockerRunner``'s arguments).

    Args:
        user: ``uid:gid`` the step runs as.
        environment: its environment (:func:`container_environment`).
        session: the session's id, put in a label for clean-up.

    Returns:
        Keyword arguments of ``DockerRunner`` (docker-py's ``containers.run``).
    """
    return {
        "user": user,
        "read_only": True,
        "tmpfs": {"/tmp": TMPFS_OPTIONS},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        # the stack listens on loopback only
        "network_mode": "host",
        "environment": dict(environment),
        "labels": {CONTAINER_LABEL: session},
    }


def image_user(config: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(uid, gid)`` of an image's numeric ``USER`` (its config), or None if not numeric."""
    user = str(config.get("User") or "")
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        return None
    return int(uid), int(gid or uid)


def image_env(config: Mapping[str, Any], name: str) -> str:
    """The value of ``name`` in an image's ``ENV`` (its config), or ``""``."""
    for item in config.get("Env") or []:
        key, _, value = str(item).partition("=")
        if key == name:
            return value
    return ""


def pipeline_images(pipeline_func: Any) -> list[str]:
    """Every image the pipeline's tasks name, in first-use order."""
    spec = getattr(pipeline_func, "pipeline_spec", None)
    if spec is None:
        return []
    from google.protobuf import json_format

    deployment = json_format.MessageToDict(spec.deployment_spec)
    images: list[str] = []
    for executor in (deployment.get("executors") or {}).values():
        image = (executor.get("container") or {}).get("image")
        if image and image not in images:
            images.append(str(image))
    return images


def grant_group(path: Path, gid: int) -> None:
    """Give ``path`` the group ``gid`` with group read, write and search (its owner stays).

    What a pod's ``fsGroup`` does to a volume; nothing becomes world-writable.
    """
    st = path.stat()
    if st.st_gid != gid:
        os.chown(path, -1, gid)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o070 != 0o070:
        os.chmod(path, mode | 0o070)


@dataclass
class ContainerSession:
    """A podman API service and what the steps of one local run get from it.

    Made by :func:`container_session`; :func:`pipelines.local.run_local` calls
    :meth:`prepare` with the pipeline and its root, then :meth:`runner` with the run's variables.

    Attributes:
        docker_host: the service's ``unix://`` URL.
        session: this session's id (the containers' label value).
        environ: where the credentials are read (see :func:`container_environment`).
        user: ``uid:gid`` of the steps, once prepared.
        git_commit: the commit of the code in the image, once prepared.
        channel_dir: the run's channel folder, once prepared.
    """

    docker_host: str
    session: str
    environ: Mapping[str, str]
    user: str = ""
    git_commit: str = ""
    channel_dir: Path | None = None
    images: list[str] = field(default_factory=list)

    def client(self) -> Any:
        """A docker-py client of the service."""
        import docker

        return docker.DockerClient(base_url=self.docker_host, timeout=120)

    def prepare(self, pipeline_func: Any, root: Path) -> Path:
        """Check the images, choose the steps' user, open the pipeline root to it.

        Args:
            pipeline_func: the ``@dsl.pipeline`` function to run.
            root: the pipeline root (exists).

        Returns:
            The run's channel folder (under ``root``, writable by the steps, empty).

        Raises:
            ContainerError: an image is not in podman's store or runs as root.
        """
        import docker

        self.images = pipeline_images(pipeline_func)
        if not self.images:
            raise ContainerError("the pipeline names no container image")
        client = self.client()
        try:
            configs = []
            for image in self.images:
                try:
                    configs.append(client.images.get(image).attrs.get("Config") or {})
                except docker.errors.ImageNotFound:
                    raise ContainerError(
                        f"image {image} is not in podman's store: run `make image` (the "
                        "pipeline names the image build/image.json records)"
                    ) from None
        finally:
            client.close()
        owner = image_user(configs[0])
        if owner is None or owner[0] == 0:
            raise ContainerError(f"image {self.images[0]} does not run as a numeric non-root user")
        from cxrflow.tracking import git_commit

        baked = image_env(configs[0], "CXRFLOW_GIT_COMMIT")
        self.git_commit = baked if baked and baked != "unknown" else git_commit()
        channels = root / CHANNEL_FOLDER
        channels.mkdir(exist_ok=True)
        channel_dir = channels / self.session
        channel_dir.mkdir(mode=0o700)
        if os.geteuid() == 0:
            uid, gid = owner
            grant_group(root, gid)
            grant_group(channel_dir, gid)
        else:  # a user's own folders: the steps run as that user
            uid, gid = os.getuid(), os.getgid()
        self.user = f"{uid}:{gid}"
        self.channel_dir = channel_dir
        return channel_dir

    def runner(self, run_env: Mapping[str, str]) -> Any:
        """The ``kfp.local.DockerRunner`` of the run (after :meth:`prepare`).

        Args:
            run_env: the run's own variables (pipeline run id, channel, tracking URI).
        """
        import logging

        from kfp import local

        # kfp announces its pip-install limiter at INFO: no step installs packages
        logging.getLogger("kfp.local.pip_install_manager").setLevel(logging.WARNING)
        environment = container_environment(run_env, self.environ, git_commit=self.git_commit)
        return local.DockerRunner(**container_run_args(self.user, environment, self.session))

    def leftover_containers(self) -> list[str]:
        """The names of this session's containers that still exist."""
        client = self.client()
        try:
            found = client.containers.list(
                all=True, filters={"label": f"{CONTAINER_LABEL}={self.session}"}
            )
            return [str(c.name) for c in found]
        finally:
            client.close()

    def remove_containers(self) -> list[str]:
        """Remove (force) this session's containers; their names."""
        import docker

        client = self.client()
        removed = []
        try:
            for container in client.containers.list(
                all=True, filters={"label": f"{CONTAINER_LABEL}={self.session}"}
            ):
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    container.remove(force=True)
                    removed.append(str(container.name))
        finally:
            client.close()
        return removed


def podman_problem() -> str | None:
    """None when podman can run containers here, else why not (one line)."""
    if shutil.which("podman") is None:
        return "podman is not installed (`make image` installs it where apt-get and root allow)"
    try:
        info = subprocess.run(
            ["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"podman cannot run here: {exc}"
    if info.returncode != 0:
        lines = (info.stderr.strip() or "podman info failed").splitlines()
        return f"podman cannot run here: {lines[-1]}"
    return None


def require_tracking_server(uri: str) -> None:
    """Refuse a tracking URI that the steps' containers cannot reach (a local file store).

    Raises:
        ContainerError: ``uri`` is not ``http(s)://``.
    """
    if not uri.startswith(("http://", "https://")):
        raise ContainerError(
            f"--containers needs an MLflow tracking server, not {uri}: the containers see only "
            'the pipeline root; start one with `make stack` and `eval "$(python '
            'infra/stack/stack.py env)"`'
        )


def local_images(environ: Mapping[str, str] | None = None) -> tuple[dict[str, str], str | None]:
    """Image variables for a local container run, and the line that says why, if any.

    The train steps name the GPU image; where none is built (it resolves to the release tag)
    but a CPU image is, they get the CPU image: kfp.local runs no step on a GPU.

    Returns:
        ``{"CXRFLOW_GPU_IMAGE": <cpu image>}`` or ``{}``, and the line (or None).
    """
    images = _images_module()
    cpu, gpu = images.resolve_image("cpu", environ), images.resolve_image("gpu", environ)
    if gpu.source != "tag" or cpu.source == "tag":
        return {}, None
    line = f"train steps run on the CPU image {cpu.image} (no GPU image built; no GPU locally)"
    return {images.IMAGE_ENV["gpu"]: cpu.image}, line


def _images_module() -> ModuleType:
    """``components/images.py``, without importing the ``components`` package.

    The package imports its factory, which takes the images when first imported: importing it
    here would fix them before :func:`container_session` names the local ones. The module
    itself imports only the standard library.
    """
    if "components.images" in sys.modules:
        return sys.modules["components.images"]
    package = importlib.util.find_spec("components")
    assert package is not None and package.submodule_search_locations
    path = Path(next(iter(package.submodule_search_locations))) / "images.py"
    name = "_cxrflow_component_images"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _set_environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until the service answers ``/_ping``; raises ContainerError if it ends or never does."""
    import docker

    deadline = time.monotonic() + SERVICE_START_SECONDS
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise ContainerError(f"podman system service exited ({proc.returncode}): {tail[0]}")
        try:
            client = docker.DockerClient(base_url=url, timeout=5)
            try:
                if client.ping():
                    return
            finally:
                client.close()
        except Exception:  # not listening yet
            pass
        if time.monotonic() > deadline:
            raise ContainerError(
                f"podman system service did not answer in {SERVICE_START_SECONDS}s"
            )
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=SERVICE_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def container_session(
    tracking_uri: str,
    *,
    out: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> Iterator[ContainerSession]:
    """podman's Docker API for the length of the block, and the session its steps use.

    Also sets, only inside the block, ``DOCKER_HOST`` (docker-py's, for kfp.local) and, where
    no GPU image is built, ``CXRFLOW_GPU_IMAGE`` (see :func:`local_images`; the pipeline must be
    built inside the block).

    Args:
        tracking_uri: the run's MLflow tracking URI (must be a server).
        out: where the one line about images goes (default: nowhere).
        environ: where the credentials are read (default: ``os.environ`` when the steps start).

    Raises:
        ContainerError: podman cannot run here, its service does not start, or the tracking URI
            is not a server.
    """
    require_tracking_server(tracking_uri)
    why = podman_problem()
    if why is not None:
        raise ContainerError(why)
    folder = Path(tempfile.mkdtemp(prefix="cxrflow-podman-"))  # 0700: the socket is root's API
    url = f"unix://{folder / 'podman.sock'}"
    log = folder / "service.log"
    with log.open("wb") as log_file:
        # its own session: a Ctrl-C for the run must leave it up until the containers are gone
        proc = subprocess.Popen(
            ["podman", "system", "service", "--time=0", url],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    session = ContainerSession(
        docker_host=url,
        session=secrets.token_hex(6),
        environ=os.environ if environ is None else environ,
    )
    try:
        _wait_ready(url, proc, log)
        images, line = local_images()
        if line and out is not None:
            print(line, file=out, flush=True)
        with _set_environ({DOCKER_HOST_ENV: url, **images}):
            yield session
    finally:
        try:
            if proc.poll() is None:
                session.remove_containers()
        finally:
            _stop(proc)
            if session.channel_dir is not None:
                shutil.rmtree(session.channel_dir, ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)
