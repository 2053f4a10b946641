"""Step ``ingest``: the manifest from the configured sources (or phantom data)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrflow.artifacts import Provenance
from cxrflow.steps.frame import step_frame
from cxrflow.steps.lineage import data_tags, log_manifest, new_pipeline_run_id
from cxrflow.steps.spec import Port, StepSpec

if TYPE_CHECKING:
    from cxrflow.config import Params, SynthParams


log = logging.getLogger(__name__)

INGEST_FILES = ("ingest_report.json", "quarantine.csv", "excluded.csv", "duplicates.csv")


def _read_sources(params: Params, tmp: Path) -> tuple[dict[str, list[Path]], str, dict[str, Any]]:
    """The source roots to ingest, the data version, and where they came from."""
    data = params.data
    registry: dict[str, Any] = {"registry_commit": "", "dvc_hashes": {}}
    if data.registry is not None:
        from cxrflow.data.versions import materialize

        log.info("reading %s at %s from its DVC remote", data.registry, data.version or "HEAD")
        local, dv = materialize(data.registry, data.version, data.source_paths, tmp)
        roots = {name: [local[r] for r in rs] for name, rs in data.sources.items()}
        registry = {"registry_commit": dv.commit, "dvc_hashes": dict(dv.dvc_hashes)}
        version = f"{dv.rev}@{dv.commit[:12]}" if dv.rev != dv.commit else dv.commit
        return roots, version, registry
    if data.is_phantom:
        from cxrflow.data.synthetic import generate_phantom

        log.warning(
            "no data configured (data.sources): generating PHANTOM (synthetic) data; "
            "results say nothing clinical"
        )
        roots = {
            k: [Path(r) for r in v] for k, v in generate_phantom(tmp, data.synth).sources.items()
        }
        if data.synth.external_site_patients:
            from cxrflow.config import PHANTOM_SITE
            from cxrflow.data.phantom_site import write_external_site

            site = write_external_site(
                tmp / PHANTOM_SITE,
                data.synth,
                n_patients_per_class=data.synth.external_site_patients,
            )
            roots[PHANTOM_SITE] = [Path(site.root)]
        return roots, phantom_version(data.synth), registry
    roots = {name: [Path(r) for r in rs] for name, rs in data.sources.items()}
    return roots, "unversioned", registry


def phantom_version(synth: SynthParams) -> str:
    """The data version of a phantom: ``phantom-seed<seed>-<8 hex>``, the hex a digest of the
    whole ``data.synth`` section, so that phantoms made with other settings (the demo and smoke
    profiles: 620 and 72 images) are two data versions, not one."""
    import hashlib
    import json

    text = json.dumps(synth.model_dump(mode="json"), sort_keys=True)
    return f"phantom-seed{synth.seed}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def run_ingest(
    params: Params, dataset: str | Path, pipeline_run_id: str | None = None
) -> dict[str, Any]:
    """ingest: read the configured sources (or generate phantom data) into a manifest.

    Reads params ``data``, ``ingest``. With no source configured, generates phantom data first
    and labels everything ``origin=phantom``. With ``data.registry`` the sources are read at
    ``data.version`` from the registry's DVC remote. Quarantines bad files with a reason, lists
    excluded rows, collapses duplicates and writes manifest.csv, quarantine.csv, excluded.csv,
    duplicates.csv, provenance.json and the images to ``dataset``. Cached when data.version
    pins the data.
    """
    with step_frame("ingest", params, pipeline_run_id=pipeline_run_id) as ctx:
        with ctx.phase("imports"):
            from cxrflow.data.ingest import ingest
            from cxrflow.data.manifest import manifest_hash, read_manifest
            from cxrflow.data.sources.roles import configure_sources
            from cxrflow.data.synthetic import is_phantom

        out = Path(dataset)
        data = params.data
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="cxrflow-raw-") as tmp, ctx.phase("data"):
            roots, version, registry = _read_sources(params, Path(tmp))
            flat = [r for rs in roots.values() for r in rs]
            origin = "phantom" if flat and all(is_phantom(r) for r in flat) else "real"
            if origin == "real" and any(is_phantom(r) for r in flat):
                raise ValueError(f"mixing phantom and real sources is not allowed: {flat}")
            sources = configure_sources(data)  # each source read as its role says
            pairs = [(sources.get(name, name), r) for name, rs in roots.items() for r in rs]
            report = ingest(out, params.ingest, sources=pairs, origin=origin)
        manifest = read_manifest(out)
        prov = Provenance(
            pipeline_run_id=pipeline_run_id or new_pipeline_run_id(),
            data_version=version,
            manifest_hash=manifest_hash(manifest),
            origin=origin,
            profile=params.profile,
            sources={
                "roots": {k: list(v) for k, v in data.sources.items()},
                "registry": data.registry,
                **registry,
                "phantom_seed": data.synth.seed
                if origin == "phantom" and not data.registry
                else None,
            },
        )
        prov.write(out)
        report_dict = report.to_dict()
        parent = ctx.open_parent(prov)
        tags = data_tags(prov)
        if tags:
            ctx.tracking.set_tags(parent, tags)
        with ctx.phase("tracking"):
            log_manifest(parent, prov, manifest)
        for name in (*INGEST_FILES, Provenance.FILE):
            if (out / name).is_file():
                ctx.tracking.log_artifact(parent, out / name, "ingest")
        ctx.summary = (
            f"{report_dict['kept']} images kept of {report_dict['considered']} "
            f"({report_dict['quarantined']} quarantined, {report_dict['excluded_by_filter']} "
            f"excluded, {report_dict['duplicates_collapsed']} duplicates); data {version}"
        )
    return {"provenance": prov.model_dump(), "report": report_dict, "parent_run_id": parent}


def _publish(result: Mapping[str, Any] | None, outputs: Mapping[str, Any]) -> None:
    if result is not None:
        prov = result["provenance"]
        outputs["dataset"].metadata.update(
            {k: prov[k] for k in ("manifest_hash", "origin", "data_version")}
        )


def _show(result: Mapping[str, Any]) -> str:
    from cxrflow.data.ingest import summarize_report

    return (
        f"{summarize_report(result['report'])}\n"
        f"manifest hash: {result['provenance']['manifest_hash']}"
    )


def _is_remote(registry: str) -> bool:
    """A registry DVC cannot hash as a local path (a URL or ``user@host:path``)."""
    return "://" in registry or ("@" in registry and ":" in registry.split("/", 1)[0])


def _dvc_deps(params_yaml: Mapping[str, Any]) -> list[str]:
    """The data ingest reads, as DVC deps: so that a data rollback makes ``dvc repro`` rerun.

    Each root of params.yaml's ``data.sources`` (``${data.sources.<name>[<i>]}``, so that a
    changed root is followed; a new root needs the generator to run again). With a local
    ``data.registry`` each root's ``.dvc`` file there instead (``cxrflow data snapshot``
    tracks exactly the roots), since ingest reads the registry's committed version, not its
    working copy. A remote registry and phantom data give none: ``data.version`` and
    ``data.synth`` are params, which the stage lists already.
    """
    data = params_yaml.get("data") or {}
    sources = data.get("sources") or {}
    registry = data.get("registry")
    if registry is not None and _is_remote(str(registry)):
        return []
    deps = []
    for name, roots in sources.items():
        for i in range(len(roots or [])):
            root = f"${{data.sources.{name}[{i}]}}"
            deps.append(root if registry is None else f"${{data.registry}}/{root}.dvc")
    return deps


SPEC = StepSpec(
    name="ingest",
    run=run_ingest,
    kind="data",
    reads=("data", "ingest"),
    outputs=(Port("dataset", "Dataset", "data/dataset"),),
    cache=lambda params: params.data.is_pinned,
    dvc_deps=_dvc_deps,
    io_retry=True,
    publish=_publish,
    show=_show,
)
