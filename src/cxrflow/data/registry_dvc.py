"""Reading a data registry's DVC side at a commit: the default remote in effect, a
``DVCFileSystem`` whose S3 remote uses the environment's endpoint, and per-source class counts
from listings and metadata files (never image downloads).
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrflow.data.vcs import DataRegistryError
from cxrflow.storage import endpoint_url_from_env

if TYPE_CHECKING:
    from dvc.api import DVCFileSystem

    from cxrflow.config import IngestParams

from cxrflow.data.registry_git import DataVersion, _norm_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Remote:
    """The default DVC remote of a registry at some revision, as used for a read."""

    name: str | None
    url: str | None
    endpoint: str | None

    def describe(self) -> str:
        where = self.url or "no default remote"
        if self.url and self.url.startswith("s3://"):
            where += f" at endpoint {self.endpoint or 'AWS default (AWS_ENDPOINT_URL unset)'}"
        return f"remote {self.name!r} ({where})"


# ------------------------------------------------------------------------------ DVC reads


def _remote_at(root: Path, commit: str) -> _Remote:
    """The default remote in effect at ``commit`` (tracked config at commit + local config)."""
    from dvc.repo import Repo

    with Repo(str(root), rev=commit, uninitialized=True) as repo:
        conf = repo.config
        name = conf["core"].get("remote")
        url = conf["remote"].get(name, {}).get("url") if name else None
    return _Remote(name=name, url=url, endpoint=endpoint_url_from_env())


@contextmanager
def _open_fs(root: Path, commit: str) -> Iterator[tuple[DVCFileSystem, _Remote]]:
    """A :class:`DVCFileSystem` of ``commit`` whose S3 remote uses the environment's endpoint."""
    from dvc.api import DVCFileSystem

    remote = _remote_at(root, commit)
    remote_config: dict[str, Any] | None = None
    if remote.endpoint and remote.url and remote.url.startswith("s3://"):
        # Only S3 remotes accept ``endpointurl``; other remote types reject the key.
        remote_config = {"endpointurl": remote.endpoint}
    fs = DVCFileSystem(str(root), rev=commit, remote_config=remote_config)
    try:
        yield fs, remote
    finally:
        fs.close()


def _root_cause(exc: BaseException) -> str:
    """The innermost exception of a chain, as ``Type: message`` (DVC wraps network errors)."""
    seen: set[int] = set()
    inner = exc
    while id(inner) not in seen:
        seen.add(id(inner))
        nxt = inner.__cause__ or inner.__context__
        if nxt is None:
            break
        inner = nxt
    if inner is exc:
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc} (caused by {type(inner).__name__}: {inner})"


def _files_under(fs: DVCFileSystem, path: str) -> list[str] | None:
    """Files under ``path`` (repo-relative POSIX), or ``None`` when the path does not exist."""
    if not fs.exists(path):
        return None
    if not fs.isdir(path):
        return [path]
    return sorted(str(f).lstrip("/") for f in fs.find(path, detail=False))


def _class_counts(
    fs: DVCFileSystem, sources: Mapping[str, Sequence[str]], params: IngestParams
) -> dict[str, dict[str, int]]:
    """``{source: {label: n}}`` summed over each source's roots, by the source's own rules.

    A source none of whose roots exists at this version gets ``{}``.
    """
    from cxrflow.data.sources import get_source

    counts: dict[str, dict[str, int]] = {}
    for name, paths in sources.items():
        source = get_source(name)
        total: dict[str, int] | None = None
        for path in paths:
            listed = _files_under(fs, path)
            if listed is None:
                log.info("versions: %s absent at this version", path)
                continue

            def read_file(rel: str, base: str = path) -> bytes:
                return bytes(fs.cat_file(posixpath.join(base, rel)))

            rels = [posixpath.relpath(f, path) for f in listed]
            got = source.count_labels(rels, read_file, params)
            total = total or {}
            for label, n in got.items():
                total[label] = total.get(label, 0) + n
        counts[name] = total if total is not None else {}
    return counts


def _with_counts(
    root: Path,
    version: DataVersion,
    sources: Mapping[str, Sequence[str]],
    params: IngestParams,
) -> DataVersion:
    paths = {name: [_norm_path(root, p) for p in roots] for name, roots in sources.items()}
    with _open_fs(root, version.commit) as (fs, remote):
        try:
            counts = _class_counts(fs, paths, params)
        except DataRegistryError:
            raise
        except Exception as exc:
            raise DataRegistryError(
                f"registry {root} at {version.rev} ({version.commit[:12]}): cannot list the data "
                f"from {remote.describe()}: {_root_cause(exc)}"
            ) from exc
    return dataclasses.replace(version, class_counts=counts)


def _check_sources(sources: Mapping[str, Sequence[str]]) -> None:
    """Fail before any git or DVC work when a source name is not registered."""
    from cxrflow.data.sources import get_source

    for name in sources:
        get_source(name)
