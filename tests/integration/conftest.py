"""Integration fixtures: a real S3 protocol server (moto, server mode) and a DVC data registry.

Nothing here reaches beyond 127.0.0.1: the S3 endpoint is the local moto server, DVC
analytics are off, DVC's global/system/site folders are temporary, and git works locally.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cxrflow.config import CohenFilter, SynthParams
from cxrflow.data.sources import Candidate
from cxrflow.data.sources.cohen import discover_cohen
from cxrflow.data.sources.kermany import discover_kermany
from cxrflow.data.synthetic import generate_phantom
from cxrflow.data.versions import init_registry, snapshot
from cxrflow.storage import endpoint_url_from_env

BUCKET = "cxrflow-registry"
PREFIX = "dvcstore"
TRACKED = ("raw/kermany", "raw/cohen")


def small_phantom(seed: int) -> SynthParams:
    """A phantom of a few dozen small images."""
    return SynthParams(
        patients_per_class=6, images_per_patient_max=2, min_side=96, max_side=128, seed=seed
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"moto server exited with {proc.returncode}:\n{out}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server at {url} did not answer within {timeout} s")


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (free port); yields its endpoint URL.

    For the session, the environment holds fake credentials, ``AWS_ENDPOINT_URL`` pointing at
    the server, and isolated DVC/AWS config locations; all are restored afterwards.
    """
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    home = tmp_path_factory.mktemp("s3env")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        mp.setenv("AWS_CONFIG_FILE", str(home / "aws-config"))  # absent: no user profile
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "aws-credentials"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask an instance role
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        mp.setenv("DVC_NO_ANALYTICS", "1")
        mp.setenv("CXRFLOW_DVC_TIMEOUT", "300")  # a hang fails the test instead of CI
        for name in ("DVC_GLOBAL_CONFIG_DIR", "DVC_SYSTEM_CONFIG_DIR", "DVC_SITE_CACHE_DIR"):
            mp.setenv(name, str(home / name.lower()))

        # the request log goes to a file: a pipe nobody reads fills up and blocks the server
        log = open(home / "moto.log", "wb")  # noqa: SIM115 - closed in the finally below
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_up(endpoint, proc)
            yield endpoint
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            log.close()


@dataclass(frozen=True)
class S3:
    """Bucket helpers over a boto3 client for the endpoint the environment names."""

    client: Any

    def ensure_bucket(self, name: str) -> bool:
        """Create bucket ``name`` unless it exists; whether it was created."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=name)
            return False
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) not in ("404", "NoSuchBucket"):
                raise
        self.client.create_bucket(Bucket=name)  # us-east-1: no LocationConstraint
        return True

    def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key of ``bucket`` under ``prefix``, sorted, across pages."""
        keys: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(keys)


@pytest.fixture(scope="session")
def s3(moto_s3: str) -> S3:
    """A client of the moto server, found the way the library finds an endpoint."""
    import boto3

    return S3(boto3.client("s3", endpoint_url=endpoint_url_from_env()))


def tree_digest(root: Path, rels: tuple[str, ...] = TRACKED) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``root/<rel>`` for each rel."""
    digests = {}
    for rel in rels:
        for f in sorted((root / rel).rglob("*")):
            if f.is_file():
                digests[f.relative_to(root).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return digests


def expected_counts(raw: Path, flt: CohenFilter) -> dict[str, dict[str, int]]:
    """Class counts of ``raw/kermany`` and ``raw/cohen`` by the library's own readers."""
    kermany = Counter({"normal": 0, "bacterial": 0, "viral": 0})
    kermany.update(c.label for c in discover_kermany(raw / "kermany") if isinstance(c, Candidate))
    cohen = discover_cohen(raw / "cohen", flt)
    return {"kermany": dict(kermany), "cohen": {"covid": len(cohen.candidates)}}


@dataclass(frozen=True)
class Registry:
    """What :func:`data_registry` built."""

    repo: Path
    endpoint: str
    bucket: str
    prefix: str
    remote_url: str
    tags: tuple[str, ...]
    files: dict[str, dict[str, str]]  # tag -> relative path -> sha256
    counts: dict[str, dict[str, dict[str, int]]]  # tag -> source -> label -> n
    site_cache: Path
    tracked: tuple[str, ...] = TRACKED

    @staticmethod
    def digest(root: Path, rels: tuple[str, ...] = TRACKED) -> dict[str, str]:
        """See :func:`tree_digest`."""
        return tree_digest(root, rels)

    @contextmanager
    def without_local_cache(self) -> Iterator[None]:
        """Move the registry's DVC cache aside and empty DVC's site cache (which remembers
        ``.dir`` listings), so that every object must come from the remote; put it back after."""
        cache = self.repo / ".dvc" / "cache"
        aside = self.repo / ".dvc" / "cache-aside"
        cache.rename(aside)
        shutil.rmtree(self.site_cache, ignore_errors=True)
        try:
            yield
        finally:
            shutil.rmtree(cache, ignore_errors=True)
            aside.rename(cache)

    def clone(self, dest: Path) -> Path:
        """A fresh git clone of the registry: no data, no DVC cache, no ``config.local``."""
        subprocess.run(
            ["git", "clone", "-q", str(self.repo), str(dest)], check=True, capture_output=True
        )
        return dest


def _grow(raw: Path, extra: Path) -> None:
    """v2 from v1: a few new Kermany images and Cohen rows, one Kermany image removed."""
    k_new = extra / "kermany" / "chest_xray"
    k_old = raw / "kermany" / "chest_xray"
    for cls in ("NORMAL", "PNEUMONIA"):
        for i, f in enumerate(sorted((k_new / "train" / cls).iterdir())[:3]):
            shutil.copyfile(f, k_old / "train" / cls / f"v2{i}-{f.name}")
    removed = sorted((k_old / "test" / "NORMAL").iterdir())[0]
    removed.unlink()

    # Cohen: append the extra phantom's rows whose files exist, under new file names.
    with open(extra / "cohen" / "metadata.csv", newline="", encoding="utf-8") as fh:
        header, *rows = list(csv.reader(fh))
    i_file, i_folder = header.index("filename"), header.index("folder")
    added = []
    for cells in rows:
        src = extra / "cohen" / cells[i_folder] / cells[i_file]
        if len(added) >= 4 or not src.is_file():
            continue
        cells[i_file] = f"v2-{cells[i_file]}"
        shutil.copyfile(src, raw / "cohen" / cells[i_folder] / cells[i_file])
        added.append(cells)
    assert added, "the extra phantom gave no Cohen rows to add"
    with open(raw / "cohen" / "metadata.csv", "a", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(added)


@pytest.fixture(scope="module")
def data_registry(moto_s3: str, s3: S3, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A registry with phantom data: ``data-v1`` and a larger ``data-v2``, both pushed to S3."""
    base = tmp_path_factory.mktemp("registry")
    repo = base / "registry"
    prefix = f"{PREFIX}/{base.name}"  # one prefix per registry: object counts stay exact
    remote_url = f"s3://{BUCKET}/{prefix}"
    s3.ensure_bucket(BUCKET)
    init_registry(repo, remote_url)
    raw = repo / "raw"
    generate_phantom(raw, small_phantom(7))
    flt = CohenFilter()
    files, counts = {}, {}

    files["data-v1"], counts["data-v1"] = tree_digest(repo), expected_counts(raw, flt)
    snapshot(repo, TRACKED, "phantom data, seed 7", tag="data-v1")

    generate_phantom(base / "extra", small_phantom(8))
    _grow(raw, base / "extra")
    files["data-v2"], counts["data-v2"] = tree_digest(repo), expected_counts(raw, flt)
    snapshot(repo, TRACKED, "more phantom data, seed 8", tag="data-v2")

    return Registry(
        repo=repo,
        endpoint=moto_s3,
        bucket=BUCKET,
        prefix=prefix,
        remote_url=remote_url,
        tags=("data-v1", "data-v2"),
        files=files,
        counts=counts,
        site_cache=Path(os.environ["DVC_SITE_CACHE_DIR"]),
    )
