"""``cxrflow data ...``: the phantom generator and the DVC data registry (init, versions,
rollback, snapshot)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cxrflow.cli.context import current_settings, print_json

app = typer.Typer(help="data tools: phantom generator, DVC data registry", no_args_is_help=True)


@app.command("synth")
def data_synth(out: Annotated[Path, typer.Option(help="output directory")]) -> None:
    """Write PHANTOM (synthetic) CXRs in the real Kermany and Cohen layouts. Reads params:
    data.synth."""
    from cxrflow.data.synthetic import generate_phantom

    summary = generate_phantom(out, current_settings().params().data.synth)
    print(f"PHANTOM data written: kermany={summary.kermany_dir} cohen={summary.cohen_dir}")
    print_json(summary.counts)


RegistryOption = Annotated[
    str | None,
    typer.Option(help="data registry repo (default: params data.registry, else .)"),
]


def _registry(registry: str | None) -> tuple[Any, str, list[str]]:
    from cxrflow.data.sources.roles import configure_sources

    params = current_settings().params()
    configure_sources(params.data)  # a csv source lists its labels like a built-in one
    repo = registry or params.data.registry or "."
    if not params.data.source_paths:
        raise ValueError(
            "params data.sources names no tracked data paths; set e.g. "
            "data.sources.kermany: [raw/chest_xray] (paths inside the data registry)"
        )
    return params, repo, params.data.source_paths


@app.command("versions")
def data_versions(
    registry: RegistryOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
) -> None:
    """List the data registry's versions with class counts from DVC listings (no image
    download). Reads params: data, ingest."""
    from cxrflow.config import ALL_LABELS
    from cxrflow.data.versions import list_versions

    params, repo, _ = _registry(registry)
    versions = list_versions(repo, params.data.sources, params.ingest)
    if as_json:
        print_json([v.__dict__ for v in versions])
        return
    header = f"{'rev':<16} {'commit':<12} {'date':<25} " + " ".join(f"{x:>9}" for x in ALL_LABELS)
    print(header)
    for v in versions:
        counts = v.label_totals()
        print(
            f"{v.rev:<16} {v.commit[:12]:<12} {v.date:<25} "
            + " ".join(f"{counts.get(x, 0):>9}" for x in ALL_LABELS)
        )


@app.command("rollback")
def data_rollback(
    rev: Annotated[str, typer.Argument(help="git tag or commit of the data registry")],
    registry: RegistryOption = None,
) -> None:
    """Restore the working copy of the tracked data to REV (`dvc checkout`, pulling from the
    remote as needed). Reads params: data."""
    from cxrflow.data.versions import rollback

    _, repo, paths = _registry(registry)
    v = rollback(repo, rev, paths)
    print(
        f"working copy of {paths} restored to {rev} ({v.commit[:12]}); "
        "commit the .dvc files to make it the new current version"
    )


@app.command("init")
def data_init(
    remote: Annotated[
        str, typer.Option(help="DVC remote URL, e.g. s3://bucket/dvcstore (or a folder)")
    ],
    registry: Annotated[Path, typer.Argument(help="the registry folder (created if missing)")],
) -> None:
    """Make a folder a DVC data registry: git repository, DVC project, default remote. Only the
    remote's URL is written; endpoint and credentials stay in the environment. Reads no
    params."""
    from cxrflow.data.versions import init_registry

    init_registry(registry, remote)
    print(f"data registry {registry.resolve()}: DVC remote {remote}")


@app.command("snapshot")
def data_snapshot(
    message: Annotated[str, typer.Option("--message", "-m", help="commit message")],
    tag: Annotated[str | None, typer.Option(help="tag the new version")] = None,
    no_push: Annotated[bool, typer.Option("--no-push", help="do not dvc push")] = False,
    registry: RegistryOption = None,
) -> None:
    """dvc add + git commit (+ tag) + dvc push of the tracked data: a new data version. Reads
    params: data."""
    from cxrflow.data.versions import snapshot

    _, repo, paths = _registry(registry)
    v = snapshot(repo, paths, message, tag=tag, push=not no_push)
    print(f"data version {v.rev} ({v.commit[:12]}): {v.dvc_hashes}")
