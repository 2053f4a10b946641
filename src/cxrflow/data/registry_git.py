"""Reading a data registry's git side: the :class:`DataVersion` record, revisions resolved to
commits, the tags per commit, and the DVC pins (``.dvc`` files) tracked at a commit. Git runs
locally only, through :mod:`cxrflow.data.vcs`.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cxrflow.data.vcs import DataRegistryError, git

HEAD = "HEAD"


class UnknownRevisionError(DataRegistryError, LookupError):
    """The revision names no commit of the registry (not a tag, branch or commit id)."""


@dataclass(frozen=True)
class DataVersion:
    """One version of the registry's data.

    Attributes:
        rev: The revision as given, or the (newest) tag name in :func:`list_versions`, or
            ``HEAD`` for an untagged HEAD.
        commit: Full git commit id.
        tags: Tags pointing at the commit, newest first.
        date: Committer date, ISO 8601.
        message: Full commit message.
        dvc_hashes: DVC-tracked path (relative to the repo root, POSIX) -> the md5 pinned by its
            ``.dvc`` file at this commit (``<md5>.dir`` for a folder).
        class_counts: Source name -> label -> number of inputs, from listings (see
            :func:`list_versions`); empty when not computed.
    """

    rev: str
    commit: str
    tags: tuple[str, ...]
    date: str
    message: str
    dvc_hashes: dict[str, str]
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def label_totals(self) -> dict[str, int]:
        """Images per label summed over sources (every label of :data:`ALL_LABELS`)."""
        from cxrflow.config import ALL_LABELS

        return {lab: sum(c.get(lab, 0) for c in self.class_counts.values()) for lab in ALL_LABELS}


@dataclass(frozen=True)
class _Tracked:
    dvc_file: str
    md5: str


# ------------------------------------------------------------------------------ git helpers


def _repo_root(repo: str | os.PathLike[str]) -> Path:
    root = Path(repo).expanduser().resolve()
    if not (root / ".git").exists():
        raise DataRegistryError(
            f"{root}: not a data registry (no git repository there); pass --registry or set "
            "data.registry to one, or make this one with `git init && dvc init` and "
            "`cxrflow data snapshot`"
        )
    return root


def _norm_path(root: Path, path: str | os.PathLike[str]) -> str:
    """``path`` relative to the repo root, POSIX, no trailing slash; must stay inside it."""
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(root)
        except ValueError:
            raise DataRegistryError(f"{path}: not inside the registry {root}") from None
    rel = posixpath.normpath(p.as_posix())
    if rel in (".", "") or rel == ".." or rel.startswith("../"):
        raise DataRegistryError(f"{path!s}: not a path inside the registry {root}")
    return rel


def _tags_by_commit(root: Path) -> dict[str, list[str]]:
    """Commit id -> tag names pointing at it, newest tag first."""
    out = git(
        root,
        "for-each-ref",
        "--sort=-creatordate",
        "--format=%(objectname)%00%(*objectname)%00%(refname:strip=2)",
        "refs/tags",
    ).stdout
    tags: dict[str, list[str]] = {}
    for line in out.splitlines():
        obj, peeled, name = line.split("\0")
        tags.setdefault(peeled or obj, []).append(name)
    return tags


def _rev_parse(root: Path, rev: str) -> str:
    proc = git(
        root,
        "rev-parse",
        "--verify",
        "--quiet",
        "--end-of-options",
        f"{rev}^{{commit}}",
        check=False,
    )
    commit = proc.stdout.strip()
    if proc.returncode != 0 or not commit:
        tags = sorted(t for names in _tags_by_commit(root).values() for t in names)
        raise UnknownRevisionError(
            f"unknown data version {rev!r} in registry {root}: no tag, branch or commit of that "
            f"name (tags: {', '.join(tags) or 'none'}); `cxrflow data versions` lists them"
        )
    return commit


def _tracked_at(root: Path, commit: str) -> dict[str, _Tracked]:
    """DVC-tracked path -> its ``.dvc`` file and pinned md5, from the ``.dvc`` files at commit."""
    import yaml

    names = git(root, "ls-tree", "-r", "-z", "--name-only", commit).stdout.split("\0")
    tracked: dict[str, _Tracked] = {}
    for name in sorted(n for n in names if n.endswith(".dvc") and not n.startswith(".dvc/")):
        text = git(root, "show", f"{commit}:{name}").stdout
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise DataRegistryError(f"{name} at {commit[:12]}: not valid YAML: {exc}") from exc
        for out in doc.get("outs") or []:
            md5 = out.get("md5")
            if not out.get("path") or not md5:
                continue
            path = posixpath.normpath(posixpath.join(posixpath.dirname(name), out["path"]))
            tracked[path] = _Tracked(dvc_file=name, md5=str(md5))
    return tracked


def _describe(root: Path, rev: str, commit: str, tags: Mapping[str, list[str]]) -> DataVersion:
    date, _, message = git(root, "show", "-s", "--format=%cI%x00%B", commit).stdout.partition("\0")
    return DataVersion(
        rev=rev,
        commit=commit,
        tags=tuple(tags.get(commit, ())),
        date=date.strip(),
        message=message.strip(),
        dvc_hashes={p: t.md5 for p, t in _tracked_at(root, commit).items()},
    )
