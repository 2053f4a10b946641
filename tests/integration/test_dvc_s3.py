"""DVC-versioned raw data on an S3 remote (a local moto server): push, list, download, roll back.

Every byte read back is compared (sha256) with what was snapshotted; downloads run with the
local DVC cache out of the way so that they must come from S3.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

from cxrflow.config import IngestParams
from cxrflow.data.versions import (
    DataRegistryError,
    UnknownRevisionError,
    init_registry,
    list_versions,
    materialize,
    resolve,
    rollback,
    snapshot,
)

if TYPE_CHECKING:
    from conftest import S3, Registry

TRACKED = ("raw/kermany", "raw/cohen")
SOURCES = {"kermany": ["raw/kermany"], "cohen": ["raw/cohen"]}

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket[/prefix] URL: {url!r}")
    return parts.netloc, parts.path.strip("/")


def dead_endpoint() -> str:
    """A 127.0.0.1 URL where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_tracked_config_has_no_endpoint_or_credentials(data_registry: Registry) -> None:
    assert data_registry.tracked == TRACKED
    tracked = git(data_registry.repo, "show", "HEAD:.dvc/config")
    assert data_registry.remote_url in tracked
    for secret in ("endpointurl", "127.0.0.1", "testing", "access_key", "secret"):
        assert secret not in tracked
    assert "analytics = false" in tracked


def test_storage_helpers(moto_s3: str, s3: S3) -> None:
    assert s3.client.meta.endpoint_url == moto_s3  # the environment's endpoint, not AWS
    assert s3.ensure_bucket("cxrflow-scratch") is True
    assert s3.ensure_bucket("cxrflow-scratch") is False
    s3.client.put_object(Bucket="cxrflow-scratch", Key="a/b.txt", Body=b"x")
    assert s3.list_objects("cxrflow-scratch", "a/") == ["a/b.txt"]
    assert s3.list_objects("cxrflow-scratch", "zzz/") == []
    assert parse_s3_url("s3://bucket/some/prefix/") == ("bucket", "some/prefix")
    with pytest.raises(ValueError, match="s3://"):
        parse_s3_url("/local/path")


def test_push_put_every_object_on_s3(data_registry: Registry, s3: S3) -> None:
    bucket, prefix = parse_s3_url(data_registry.remote_url)
    keys = s3.list_objects(bucket, prefix + "/")
    for tag in data_registry.tags:
        for path, md5 in resolve(data_registry.repo, tag).dvc_hashes.items():
            assert f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}" in keys, (tag, path)
    contents = {sha for files in data_registry.files.values() for sha in files.values()}
    assert len([k for k in keys if not k.endswith(".dir")]) == len(contents)


def test_list_versions_counts_from_listings(data_registry: Registry) -> None:
    with data_registry.without_local_cache():
        versions = list_versions(data_registry.repo, SOURCES, IngestParams())
    assert [v.rev for v in versions] == ["data-v2", "data-v1"]  # HEAD is data-v2
    v2, v1 = versions
    assert v2.commit == git(data_registry.repo, "rev-parse", "HEAD")
    assert v1.commit == git(data_registry.repo, "rev-parse", "data-v1^{commit}")
    assert (v1.tags, v2.tags) == (("data-v1",), ("data-v2",))
    assert v1.message == "phantom data, seed 7"
    assert v1.date <= v2.date and "T" in v1.date
    for v in versions:
        assert set(v.dvc_hashes) == set(TRACKED)
        assert all(h.endswith(".dir") for h in v.dvc_hashes.values())
        assert v.class_counts == data_registry.counts[v.rev], v.rev
    assert all(v1.dvc_hashes[p] != v2.dvc_hashes[p] for p in TRACKED)
    assert v1.class_counts["kermany"] != v2.class_counts["kermany"]
    assert v1.class_counts["cohen"]["covid"] < v2.class_counts["cohen"]["covid"]


def test_resolve(data_registry: Registry) -> None:
    head = resolve(data_registry.repo, None)
    assert head.rev == "HEAD" and head.tags == ("data-v2",) and head.class_counts == {}
    by_sha = resolve(data_registry.repo, head.commit[:10])
    assert by_sha.commit == head.commit
    v1 = resolve(
        data_registry.repo,
        "data-v1",
        counts=True,
        sources=SOURCES,
    )
    assert v1.class_counts == data_registry.counts["data-v1"]


@pytest.mark.parametrize("tag", ["data-v1", "data-v2"])
def test_materialize_comes_from_s3(data_registry: Registry, tag: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with data_registry.without_local_cache():
        got, version = materialize(data_registry.repo, tag, list(TRACKED), out)
    assert version.rev == tag
    assert got == {p: out / p for p in TRACKED}
    assert data_registry.digest(out) == data_registry.files[tag]


def test_materialize_from_fresh_clone(data_registry: Registry, tmp_path: Path) -> None:
    clone = data_registry.clone(tmp_path / "clone")
    got, _ = materialize(clone, "data-v1", ["raw/cohen"], tmp_path / "out")
    assert got == {"raw/cohen": tmp_path / "out" / "raw" / "cohen"}
    expected = {
        k: v for k, v in data_registry.files["data-v1"].items() if k.startswith("raw/cohen/")
    }
    assert data_registry.digest(tmp_path / "out", ("raw/cohen",)) == expected
    assert not (clone / "raw" / "cohen").exists()  # the clone's working copy is untouched


def test_materialize_refuses_to_overwrite_and_names_missing_paths(
    data_registry: Registry, tmp_path: Path
) -> None:
    (tmp_path / "raw" / "cohen").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="raw/cohen"):
        materialize(data_registry.repo, "data-v1", ["raw/cohen"], tmp_path)
    got, _ = materialize(data_registry.repo, "data-v1", ["raw/cohen"], tmp_path, overwrite=True)
    assert (got["raw/cohen"] / "metadata.csv").is_file()
    with pytest.raises(DataRegistryError, match=r"raw/nothing does not exist at data-v1"):
        materialize(data_registry.repo, "data-v1", ["raw/nothing"], tmp_path / "x")
    assert not list(tmp_path.glob(".materialize-*"))  # no temporary leftovers


def test_rollback_restores_the_working_copy(data_registry: Registry) -> None:
    repo = data_registry.repo
    head = git(repo, "rev-parse", "HEAD")
    assert data_registry.digest(repo) == data_registry.files["data-v2"]

    version = rollback(repo, "data-v1")
    assert version.rev == "data-v1" and version.tags == ("data-v1",)
    assert data_registry.digest(repo) == data_registry.files["data-v1"]
    assert git(repo, "rev-parse", "HEAD") == head  # HEAD and branch do not move
    staged = git(repo, "diff", "--cached", "--name-only").splitlines()
    assert sorted(staged) == sorted(f"{p}.dvc" for p in TRACKED)
    for p in TRACKED:
        assert (repo / f"{p}.dvc").read_text() == git(repo, "show", f"data-v1:{p}.dvc") + "\n"

    rollback(repo, "data-v2")
    assert data_registry.digest(repo) == data_registry.files["data-v2"]
    assert git(repo, "status", "--porcelain", "--", *(f"{p}.dvc" for p in TRACKED)) == ""


def test_rollback_fetches_what_the_cache_lacks(data_registry: Registry, tmp_path: Path) -> None:
    clone = data_registry.clone(tmp_path / "clone")  # no data, empty cache
    rollback(clone, "data-v1")
    assert data_registry.digest(clone) == data_registry.files["data-v1"]
    rollback(clone, "data-v2", paths=["raw/kermany"])
    expected = {
        **{k: v for k, v in data_registry.files["data-v2"].items() if k.startswith("raw/kermany/")},
        **{k: v for k, v in data_registry.files["data-v1"].items() if k.startswith("raw/cohen/")},
    }
    assert data_registry.digest(clone) == expected


def test_rollback_keeps_unsnapshotted_data(data_registry: Registry) -> None:
    repo = data_registry.repo
    extra = repo / "raw" / "kermany" / "chest_xray" / "train" / "NORMAL" / "IM-9999-0001.jpeg"
    extra.write_bytes(b"not yet snapshotted")
    try:
        with pytest.raises(DataRegistryError, match="force=True"):
            rollback(repo, "data-v1")
        assert extra.read_bytes() == b"not yet snapshotted"
        assert git(repo, "status", "--porcelain", "--", "raw/kermany.dvc", "raw/cohen.dvc") == ""
    finally:
        extra.unlink()
    assert data_registry.digest(repo) == data_registry.files["data-v2"]


def test_unknown_revision_is_named(data_registry: Registry, tmp_path: Path) -> None:
    repo = data_registry.repo
    for call in (
        lambda: resolve(repo, "data-v9"),
        lambda: materialize(repo, "data-v9", ["raw/cohen"], tmp_path),
        lambda: rollback(repo, "data-v9"),
    ):
        with pytest.raises(UnknownRevisionError, match=r"'data-v9'.*tags: data-v1, data-v2"):
            call()
    with pytest.raises(UnknownRevisionError, match="--help"):
        resolve(repo, "--help")  # never taken for an option
    assert data_registry.digest(repo) == data_registry.files["data-v2"]


def test_wrong_endpoint_is_a_clear_error(
    data_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = dead_endpoint()
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore would retry a refused connection
    with data_registry.without_local_cache():
        with pytest.raises(DataRegistryError, match="remote 'storage'") as err:
            materialize(data_registry.repo, "data-v1", ["raw/kermany"], tmp_path / "out")
        assert dead in str(err.value)
        with pytest.raises(DataRegistryError, match=dead):
            list_versions(data_registry.repo, SOURCES, IngestParams())
    assert not (tmp_path / "out" / "raw" / "kermany").exists()

    clone = data_registry.clone(tmp_path / "clone")
    with pytest.raises(DataRegistryError, match=r"dvc fetch") as err:
        rollback(clone, "data-v1")
    assert dead.removeprefix("http://") in str(err.value)
    assert git(clone, "status", "--porcelain") == ""  # .dvc files restored


def test_snapshot_without_git_identity_and_local_remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("DVC_GLOBAL_CONFIG_DIR", "DVC_SYSTEM_CONFIG_DIR", "DVC_SITE_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    repo = tmp_path / "reg"
    init_registry(repo, str(tmp_path / "remote"))
    (repo / "data").mkdir()
    (repo / "data" / "a.txt").write_text("one")
    v1 = snapshot(repo, ["data"], "one", tag="v1")
    assert git(repo, "log", "-1", "--format=%an <%ae>") == "cxrflow <cxrflow@localhost>"
    assert v1.rev == "v1" and v1.tags == ("v1",) and set(v1.dvc_hashes) == {"data"}
    with pytest.raises(DataRegistryError, match="already exists"):
        snapshot(repo, ["data"], "again", tag="v1")
    again = snapshot(repo, ["data"], "unchanged", tag="v1b", push=False)  # no new commit
    assert again.commit == v1.commit and set(again.tags) == {"v1", "v1b"}
    with pytest.raises(DataRegistryError, match="not DVC-tracked at v1"):
        rollback(repo, "v1", paths=["elsewhere"])
    with pytest.raises(DataRegistryError, match="does not exist"):
        snapshot(repo, ["missing"], "nothing")
