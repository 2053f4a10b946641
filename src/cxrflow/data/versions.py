"""Data registry: raw data versioned by DVC on an S3 remote; a data version is a git revision.

A *registry* is a git repository whose raw data folders (``raw/kermany``, ``raw/cohen``) are
tracked by DVC: one ``.dvc`` file per folder pins the folder's content hash (the md5 of its
``.dir`` listing), git commits and tags those pins, and the DVC remote (S3) holds the content.
A version is therefore any git revision, normally a tag such as ``data-v1``.

- :func:`init_registry` and :func:`snapshot` write versions (``dvc add``, commit, tag, push).
- :func:`list_versions` and :func:`resolve` describe versions; class counts come from
  directory listings and metadata files only (each source's
  :meth:`~cxrflow.data.sources.Source.count_labels`), never from image downloads.
- :func:`materialize` downloads some paths of a version into a folder, with no checkout.
- :func:`rollback` restores the registry's working copy of the data to an older version.

Endpoint and credentials. Nothing about them is written to tracked files. The S3 endpoint comes
from the environment only (``AWS_ENDPOINT_URL``; ``AWS_ENDPOINT_URL_S3`` wins when both are set,
as in botocore), credentials from boto3's default chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``). DVC's S3 filesystem (s3fs on aiobotocore) honours
``AWS_ENDPOINT_URL`` by itself, through botocore's configured-endpoint support, so the ``dvc``
commands run here simply inherit the environment (and nothing goes to ``config.local`` where a
stale endpoint could outlive the environment). In-process reads (``dvc.api.DVCFileSystem``) pass
the same endpoint explicitly as ``remote_config={"endpointurl": ...}``, so that they do not
depend on botocore's resolution and error messages can name the endpoint used.

No other network. ``dvc`` runs with ``DVC_NO_ANALYTICS=1``; :func:`init_registry` also writes
``core.analytics false`` and ``core.check_update false`` to the registry's config (DVC checks
for updates only in ``dvc version``, but a person may run that in the registry). Git is only
used locally.

Commands run through :mod:`cxrflow.data.vcs` (subprocesses with timeouts); a failing command
raises :class:`~cxrflow.data.vcs.DataRegistryError` (a :class:`RuntimeError`) naming the command
and its error output.

Reading a registry at a revision lives in :mod:`cxrflow.data.registry_git` and
:mod:`cxrflow.data.registry_dvc`; this module holds the operations above.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from cxrflow.data.registry_dvc import _check_sources, _open_fs, _root_cause, _with_counts
from cxrflow.data.registry_git import (
    HEAD,
    DataVersion,
    UnknownRevisionError,
    _describe,
    _norm_path,
    _repo_root,
    _rev_parse,
    _tags_by_commit,
    _tracked_at,
)
from cxrflow.data.vcs import DataRegistryError, dvc, first_line, git, git_identity_args, tail

if TYPE_CHECKING:
    from cxrflow.config import IngestParams


log = logging.getLogger(__name__)

DEFAULT_REMOTE_NAME = "storage"


_UNSAVED_MARKER = "without confirmation"
"""In DVC's message when ``dvc checkout`` would delete files missing from the cache."""


# ------------------------------------------------------------------------------ public API


def init_registry(
    repo_dir: str | os.PathLike[str], remote_url: str, remote_name: str = DEFAULT_REMOTE_NAME
) -> None:
    """Make ``repo_dir`` a data registry: git repo, DVC project, default remote; commit that.

    Idempotent: an existing git repo or DVC project is kept and the remote is (re)set. Only the
    remote's URL goes to the tracked ``.dvc/config``; endpoint and credentials stay in the
    environment (see the module docstring).

    Args:
        repo_dir: The registry folder (created when missing).
        remote_url: DVC remote URL, e.g. ``s3://bucket/dvcstore`` (any DVC remote URL works).
        remote_name: Name of the remote, made the default.

    Raises:
        DataRegistryError: A git or dvc command failed.
    """
    root = Path(repo_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    if not (root / ".git").exists():
        git(root, "init", "-q")
    if not (root / ".dvc").is_dir():
        dvc(root, "init")
    dvc(root, "remote", "add", "--force", "--default", remote_name, remote_url)
    dvc(root, "config", "core.analytics", "false")
    dvc(root, "config", "core.check_update", "false")
    files = [f for f in (".dvc/config", ".dvc/.gitignore", ".dvcignore") if (root / f).exists()]
    git(root, "add", "--", *files)
    unborn = git(root, "rev-parse", "--verify", "--quiet", "HEAD", check=False).returncode != 0
    changed = git(root, "diff", "--cached", "--quiet", "HEAD", "--", *files, check=False)
    if unborn or changed.returncode != 0:
        git(
            root,
            *git_identity_args(root),
            "commit",
            "-q",
            "-m",
            f"Data registry: DVC with default remote {remote_name}",
            "--",
            *files,
        )
    log.info("versions: registry %s, default remote %s = %s", root, remote_name, remote_url)


def snapshot(
    repo_dir: str | os.PathLike[str],
    paths: Sequence[str],
    message: str,
    tag: str | None = None,
    push: bool = True,
) -> DataVersion:
    """Record the current content of ``paths`` as a new version.

    Runs ``dvc add`` on the paths, stages their ``.dvc`` files and ``.gitignore`` files, pushes
    the data to the default remote (before committing, so that no commit or tag ever names
    data the remote lacks), commits only those files (other staged changes stay staged), and
    tags the commit. Unchanged data makes no new commit; the tag then names the current HEAD.
    When the push fails nothing is committed; the ``.dvc`` files stay updated and staged and a
    second call picks up from there.

    Args:
        repo_dir: The registry (see :func:`init_registry`).
        paths: Data folders or files, relative to the registry root (or absolute inside it).
        message: Commit (and annotated tag) message.
        tag: Tag to create, e.g. ``data-v2``; must not exist yet.
        push: Upload the data to the default remote.

    Returns:
        The new version (without class counts).

    Raises:
        DataRegistryError: A path is missing or outside the registry, the tag exists or is not
            a valid name, or a git/dvc command (including the push) failed.
    """
    root = _repo_root(repo_dir)
    rels = [_norm_path(root, p) for p in paths]
    if not rels:
        raise DataRegistryError("snapshot: no paths given")
    for rel in rels:
        if not (root / rel).exists():
            raise DataRegistryError(f"snapshot: {rel} does not exist in {root}")
    if tag is not None:
        if git(root, "check-ref-format", f"refs/tags/{tag}", check=False).returncode != 0:
            raise DataRegistryError(f"snapshot: {tag!r} is not a valid tag name")
        if git(root, "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}", check=False).stdout:
            raise DataRegistryError(f"snapshot: tag {tag!r} already exists in {root}")

    dvc(root, "add", *rels)
    dvc_files = [f"{rel}.dvc" for rel in rels]
    ignores = sorted(
        {
            posixpath.join(posixpath.dirname(rel), ".gitignore")
            for rel in rels
            if (root / posixpath.dirname(rel) / ".gitignore").is_file()
        }
    )
    files = [*dvc_files, *ignores]
    git(root, "add", "--", *files)
    if push:
        try:
            dvc(root, "push", *dvc_files)
        except DataRegistryError as exc:
            raise DataRegistryError(
                f"snapshot: the push failed, so nothing was committed or tagged; the .dvc files "
                f"are updated and staged, and snapshot can simply be run again.\n{exc}"
            ) from exc
    unborn = git(root, "rev-parse", "--verify", "--quiet", "HEAD", check=False).returncode != 0
    changed = unborn or (
        git(root, "diff", "--cached", "--quiet", "HEAD", "--", *files, check=False).returncode != 0
    )
    identity = git_identity_args(root)
    if changed:
        git(root, *identity, "commit", "-q", "-m", message, "--", *files)
    else:
        log.info("versions: %s unchanged since HEAD; no new commit", ", ".join(rels))
    commit = _rev_parse(root, HEAD)
    if tag is not None:
        git(root, *identity, "tag", "-a", "-m", message, "--", tag, commit)
    log.info("versions: snapshot %s -> %s %s", rels, commit[:12], tag or "")
    return _describe(root, tag or commit, commit, _tags_by_commit(root))


def resolve(
    repo: str | os.PathLike[str],
    rev: str | None = None,
    *,
    counts: bool = False,
    sources: Mapping[str, Sequence[str]] | None = None,
    ingest_params: IngestParams | None = None,
) -> DataVersion:
    """Describe one version.

    Args:
        repo: The registry (a local git repository).
        rev: Tag, branch or commit; ``None`` means ``HEAD`` (the committed state, not the
            working copy).
        counts: Also compute class counts (see :func:`list_versions`); this reads listings
            and metadata files from the DVC cache or the remote.
        sources: For the counts: ``{source name: [root in the registry, ...]}`` (``data.sources``).
        ingest_params: For the counts: the sources' filters; default :class:`IngestParams`.

    Raises:
        UnknownRevisionError: ``rev`` names no commit (the message names it and the tags).
        DataRegistryError: Not a registry, or the listing could not be read from the remote.
        ValueError: A source name that is not registered (naming ``data.sources.<name>``).
    """
    from cxrflow.config import IngestParams

    if counts:
        _check_sources(sources or {})
    root = _repo_root(repo)
    name = rev if rev is not None else HEAD
    version = _describe(root, name, _rev_parse(root, name), _tags_by_commit(root))
    if counts:
        version = _with_counts(root, version, sources or {}, ingest_params or IngestParams())
    return version


def list_versions(
    repo: str | os.PathLike[str],
    sources: Mapping[str, Sequence[str]],
    ingest_params: IngestParams,
) -> list[DataVersion]:
    """Every tagged version and HEAD, newest first, with class counts.

    A commit with several tags is listed once (``rev`` is its newest tag); HEAD is listed as
    ``HEAD`` unless it is tagged. Order is git's topological order (children before parents),
    which commit dates of the same second cannot disturb.

    Class counts come from listings, not images: each source counts the files of its roots at
    that version with :meth:`~cxrflow.data.sources.Source.count_labels`, i.e. by the rules its
    discovery applies (``kermany``: files per label plus ``unknown`` for undecidable names;
    ``cohen``: ``metadata.csv`` rows that pass ``ingest_params.cohen`` and name a listed file),
    summed over the source's roots, duplicates across roots included. A source none of whose
    roots exists at a version gets ``{}``. Only ``.dir`` listings and metadata files are read
    (from the DVC cache, else the remote).

    Args:
        repo: The registry (a local git repository).
        sources: ``{source name: [root in the registry, ...]}``, e.g.
            ``{"kermany": ["raw/kermany"], "cohen": ["raw/cohen"]}`` (``data.sources``).
        ingest_params: The sources' filters (``ingest.cohen``).

    Raises:
        DataRegistryError: Not a registry, or a listing could not be read from the remote.
        ValueError: A source name that is not registered (naming ``data.sources.<name>``).
    """
    _check_sources(sources)
    root = _repo_root(repo)
    tags = _tags_by_commit(root)
    head = git(root, "rev-parse", "--verify", "--quiet", HEAD, check=False).stdout.strip()
    wanted = set(tags) | ({head} if head else set())
    if not wanted:
        return []
    order = git(root, "rev-list", "--topo-order", *sorted(wanted)).stdout.split()
    versions = []
    for commit in (c for c in order if c in wanted):
        rev = tags[commit][0] if commit in tags else HEAD
        version = _describe(root, rev, commit, tags)
        versions.append(_with_counts(root, version, sources, ingest_params))
    return versions


def materialize(
    repo: str | os.PathLike[str],
    rev: str | None,
    paths: Sequence[str],
    dest: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> tuple[dict[str, Path], DataVersion]:
    """Download ``paths`` as they are at ``rev`` into ``dest`` (``dest/<path>``).

    Reads through ``dvc.api.DVCFileSystem`` at the commit: content comes from the registry's
    DVC cache where present, else from the remote; the registry's working copy and HEAD are
    not touched. Each path is downloaded into a temporary folder inside ``dest`` and renamed
    into place, so an interrupted download never leaves a partial ``dest/<path>``.

    Args:
        repo: The registry (a local git repository).
        rev: Tag, branch or commit; ``None`` means ``HEAD``.
        paths: Paths in the registry: DVC-tracked folders, or files or folders inside them.
        dest: Output folder (created when missing).
        overwrite: Replace an existing ``dest/<path>``; otherwise that raises.

    Returns:
        Local path per requested path (as normalised: POSIX, relative to the registry root),
        and the version.

    Raises:
        UnknownRevisionError: ``rev`` names no commit.
        FileExistsError: ``dest/<path>`` exists and ``overwrite`` is false.
        DataRegistryError: A path does not exist at ``rev``, or the download failed (the message
            names the remote and endpoint).
    """
    root = _repo_root(repo)
    version = resolve(root, rev)
    rels = [_norm_path(root, p) for p in paths]
    if not rels:
        raise DataRegistryError("materialize: no paths given")
    out = Path(dest).expanduser().resolve()
    targets = {rel: out.joinpath(*PurePosixPath(rel).parts) for rel in rels}
    for rel, target in targets.items():
        if (target.exists() or target.is_symlink()) and not overwrite:
            raise FileExistsError(f"{target} exists (materialize {rel}@{version.rev})")
    out.mkdir(parents=True, exist_ok=True)

    def tracked(rel: str) -> bool:
        return any(rel == t or rel.startswith(t + "/") for t in version.dvc_hashes)

    with _open_fs(root, version.commit) as (fs, remote):
        for rel, target in targets.items():
            try:
                # Inside a tracked folder the download itself reports a missing path; asking
                # exists() first would turn an unreachable remote into "does not exist".
                if not tracked(rel) and not fs.exists(rel):
                    raise DataRegistryError(
                        f"{rel} does not exist at {version.rev} ({version.commit[:12]}) in "
                        f"registry {root}; DVC-tracked there: {sorted(version.dvc_hashes)}"
                    )
                is_dir = fs.isdir(rel)
                tmp = Path(tempfile.mkdtemp(prefix=".materialize-", dir=out))
                try:
                    part = tmp / "data"
                    fs.get(rel, str(part), recursive=is_dir)
                    if is_dir:
                        part.mkdir(exist_ok=True)  # an empty folder downloads as nothing
                    if target.exists() or target.is_symlink():
                        _remove(target)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(part, target)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            except DataRegistryError:
                raise
            except Exception as exc:
                raise DataRegistryError(
                    f"materialize {rel} at {version.rev} ({version.commit[:12]}) from registry "
                    f"{root}: download from {remote.describe()} failed: {_root_cause(exc)}"
                ) from exc
            log.info("versions: materialized %s@%s -> %s", rel, version.rev, target)
    return targets, version


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def rollback(
    repo_dir: str | os.PathLike[str],
    rev: str,
    paths: Sequence[str] | None = None,
    *,
    force: bool = False,
) -> DataVersion:
    """Restore the registry's working copy of the tracked data to version ``rev``.

    Writes the ``.dvc`` files of ``rev`` over the current ones and runs ``dvc checkout`` on
    them; objects missing from the local cache are fetched from the remote first. HEAD and the
    branch do not move: afterwards the ``.dvc`` files are modified and staged (``git status``
    shows them), so that ``git commit`` records the rollback as a new version, and
    ``git checkout HEAD -- <file>.dvc`` followed by ``dvc checkout`` undoes it. Other staged
    changes are left as they are. When the checkout fails, the previous ``.dvc`` files are put
    back (best effort for the data, see ``DataRegistryError``'s message).

    DVC refuses to delete working-copy files that are not in its cache (data added but never
    snapshotted); such a rollback fails unless ``force`` is true, which discards them.

    Args:
        repo_dir: The registry.
        rev: Tag, branch or commit to restore.
        paths: Tracked paths to restore; default all paths tracked at ``rev``. Paths tracked
            now but not at ``rev`` are left alone (and logged).
        force: Pass ``--force`` to ``dvc checkout``.

    Returns:
        The version restored (without class counts).

    Raises:
        UnknownRevisionError: ``rev`` names no commit.
        DataRegistryError: A path is not tracked at ``rev``, or the checkout or the fetch failed.
    """
    root = _repo_root(repo_dir)
    commit = _rev_parse(root, rev)
    at_rev = _tracked_at(root, commit)
    if paths is None:
        wanted = sorted(at_rev)
        head = git(root, "rev-parse", "--verify", "--quiet", HEAD, check=False).stdout.strip()
        newer = sorted(set(_tracked_at(root, head)) - set(at_rev)) if head else []
        if newer:
            log.warning("rollback: %s not tracked at %s; left as they are", newer, rev)
    else:
        wanted = [_norm_path(root, p) for p in paths]
        for p in wanted:
            if p not in at_rev:
                raise DataRegistryError(
                    f"rollback: {p} is not DVC-tracked at {rev} ({commit[:12]}); "
                    f"tracked there: {sorted(at_rev)}"
                )
    if not wanted:
        raise DataRegistryError(f"rollback: nothing is DVC-tracked at {rev} ({commit[:12]})")
    dvc_files = sorted({at_rev[p].dvc_file for p in wanted})

    before = {f: (root / f).read_bytes() if (root / f).is_file() else None for f in dvc_files}
    for f in dvc_files:
        (root / f).write_bytes(git(root, "show", f"{commit}:{f}").stdout.encode("utf-8"))
    checkout = ["checkout", *(["--force"] if force else []), *dvc_files]
    touched = True  # whether a failed checkout may have changed the working copy
    try:
        first = dvc(root, *checkout, check=False)
        if first.returncode != 0:
            if _UNSAVED_MARKER in first.stderr + first.stdout:
                # DVC refuses before changing anything: fetching cannot help.
                touched = False
                raise DataRegistryError(
                    "dvc checkout refuses to delete working-copy files that are not in the DVC "
                    "cache (data changed since the last snapshot?): snapshot them first, or "
                    f"pass force=True to discard them.\n{tail(first.stderr or first.stdout)}"
                )
            # Otherwise objects are missing from the cache: fetch them and check out again.
            log.info("rollback: objects missing from the cache, fetching %s", dvc_files)
            dvc(root, "fetch", *dvc_files)
            dvc(root, *checkout)
    except DataRegistryError as exc:
        for f, content in before.items():
            if content is None:
                (root / f).unlink(missing_ok=True)
            else:
                (root / f).write_bytes(content)
        state = "the working copy was not changed"
        restored = [f for f, c in before.items() if c is not None]
        if touched and restored:
            back = dvc(root, "checkout", *restored, check=False)
            state = (
                "the previous data was checked out again"
                if back.returncode == 0
                else "checking the previous data out again failed too (run `dvc pull` there "
                f"when the remote is reachable): {first_line(back.stderr)}"
            )
        raise DataRegistryError(
            f"rollback of {root} to {rev} failed; its .dvc files were restored and {state}.\n{exc}"
        ) from exc
    git(root, "add", "--", *dvc_files)
    log.info("versions: rolled %s back to %s (%s)", wanted, rev, commit[:12])
    return _describe(root, rev, commit, _tags_by_commit(root))


__all__ = [
    "DEFAULT_REMOTE_NAME",
    "HEAD",
    "DataRegistryError",
    "DataVersion",
    "UnknownRevisionError",
    "init_registry",
    "list_versions",
    "materialize",
    "resolve",
    "rollback",
    "snapshot",
]
