"""The pipeline steps as plain functions over directories.

These are what the CLI, the DVC stages and the KFP components call: each takes the whole
resolved :class:`~cxrflow.config.Params`, reads its inputs from directories, calls the pure
library functions, writes its outputs to ``out_dir`` and records what it did in MLflow. Every
MLflow run of one pipeline run (the parent and each model's nested run) logs the same flattened
params and the same params hash. Step names are ``Params.steps``.

Which pipeline run a step belongs to: ingest writes the id of the run that made the data into
``provenance.json``. Locally (the CLI, DVC) the later steps take it from there. In a KFP run
the data steps may be reused from an earlier run (KFP caching), so the other steps are given
the current run's id; when it differs from the provenance's, the current run's parent records
the reuse (:func:`_record_reuse`): ``cxrflow.data.reused_from``, the data steps marked done as
``cached``, the manifest as a dataset input, the data tags ingest set.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

from cxrflow.config import DATASETS, Params, flatten_params, params_hash
from cxrflow.jsonio import write_json_atomic
from cxrflow.logs import emit_progress, emit_summary

log = logging.getLogger(__name__)

PROVENANCE_FILE = "provenance.json"
MODEL_FILE = "model.keras"
MODEL_INFO_FILE = "model_info.json"
METRICS_FILE = "metrics.json"
REGISTERED_FILE = "registered.json"
TAG_STEP_DONE = "cxrflow.step_done."
TAG_FAILED_STEP = "cxrflow.failed_step"
STEP_CACHED = "cached"
"""The value of ``cxrflow.step_done.<step>`` for a data step reused from an earlier run."""
PIPELINE_RUN_ENV = "CXRFLOW_PIPELINE_RUN_ID"
"""The pipeline run executing a step, where the runner can say so without a step input: the
cluster sets it on the cacheable data steps from their pod's ``pipeline/runid`` label (what
KFP's ``{{$.pipeline_job_uuid}}`` resolves to), ``pipelines.local`` for every step of a local
run. An input would enter KFP's cache key; an environment variable does not."""


@dataclass(frozen=True)
class Provenance:
    """Where a dataset directory came from; travels with it to every later step."""

    pipeline_run_id: str
    data_version: str
    manifest_hash: str
    origin: str
    profile: str
    sources: dict[str, Any]


# ------------------------------------------------------------------------------------ timing

TIMING_MARKER = "::cxrflow-timing::"
"""Prefix of the one JSON line each step writes at its end with where its time went (read by
the local runner into ``runs/<run>/steps.json``, and by ``bench/overhead.py``)."""
COMPUTE_PHASES = ("compute",)
"""The phases that are the work itself (training, evaluation); the rest is overhead."""


def _process_start() -> float:
    """When this process started (epoch seconds), or now where it cannot be told.

    On Linux from ``/proc/self/stat`` against the boot-time clock, to 10 ms; psutil's
    ``create_time`` adds the boot time, which the kernel gives in whole seconds, so every step's
    start-up read up to a second too long.
    """
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # psutil missing or refused: count no start-up
        return time.time()


class StepTimes:
    """Where one step's wall time goes, by phase; phases nest, an inner one's time is its own.

    Phases: ``imports`` (the heavy libraries a step imports when it starts), ``data`` (reading
    and decoding images, building or checking the data), ``compute`` (training, evaluation),
    ``model_io`` (saving and loading Keras models), ``tracking`` (MLflow calls). Whatever no
    phase covers is ``other``; the time from process start to the step's entry is
    ``startup`` (interpreter, the KFP executor, light imports).
    """

    def __init__(self, step: str) -> None:
        self.step = step
        self.process_start = _process_start()
        self.entry = time.time()
        self._t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._stack: list[tuple[str, float]] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the time inside the block as ``name`` (minus nested phases' time)."""
        now = time.perf_counter()
        if self._stack:  # pause the enclosing phase
            outer, since = self._stack[-1]
            self.seconds[outer] = self.seconds.get(outer, 0.0) + now - since
        self._stack.append((name, now))
        try:
            yield
        finally:
            end = time.perf_counter()
            _, since = self._stack.pop()
            self.seconds[name] = self.seconds.get(name, 0.0) + end - since
            if self._stack:
                outer, _ = self._stack[-1]
                self._stack[-1] = (outer, end)

    def timed(self, module: Any, name: str) -> Any:
        """``module`` whose functions count as phase ``name`` (e.g. every MLflow call)."""
        return _TimedModule(module, self, name)

    def callback(self, inner: Any, name: str) -> Any:
        """A Keras callback running ``inner``'s epoch-end hook (its only hook) as phase
        ``name``."""
        import keras

        times = self

        class _Timed(keras.callbacks.Callback):  # type: ignore[misc]
            def set_model(self, model: Any) -> None:
                super().set_model(model)
                inner.set_model(model)

            def set_params(self, params: Any) -> None:
                super().set_params(params)
                inner.set_params(params)

            def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
                with times.phase(name):
                    inner.on_epoch_end(epoch, logs)

        return _Timed()

    def report(self) -> dict[str, Any]:
        """Seconds by phase so far, with ``other``, ``startup`` and the total."""
        total = time.perf_counter() - self._t0
        phases = dict(self.seconds)
        phases["other"] = max(0.0, total - sum(phases.values()))
        phases["startup"] = max(0.0, self.entry - self.process_start)
        return {
            "step": self.step,
            "process_start": self.process_start,
            "entry": self.entry,
            "end": self.entry + total,
            "seconds": total,
            # forked from the local runner's warm server (pipelines/warm.py): no start-up
            "warm": os.environ.get("CXRFLOW_WARM_STARTED") == "1",
            "phases": {k: round(v, 4) for k, v in sorted(phases.items())},
        }

    def emit(self) -> dict[str, Any]:
        """Write the report as one marked line on stdout (the local runner keeps it)."""
        rep = self.report()
        print(f"{TIMING_MARKER} {json.dumps(rep, sort_keys=True)}", flush=True)
        return rep


class _TimedModule:
    def __init__(self, module: Any, times: StepTimes, name: str) -> None:
        self._module, self._times, self._name = module, times, name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._module, attr)
        if not callable(value) or isinstance(value, type):
            return value

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            with self._times.phase(self._name):
                result = value(*args, **kwargs)
            if hasattr(result, "__enter__") and hasattr(result, "__exit__"):
                return _TimedContext(result, self._times, self._name)
            return result

        return call


class _TimedContext:
    """A context manager whose enter and exit (not its body) count as one phase; anything else
    is the wrapped object's."""

    def __init__(self, inner: Any, times: StepTimes, name: str) -> None:
        self._inner, self._times, self._name = inner, times, name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)

    def __enter__(self) -> Any:
        with self._times.phase(self._name):
            return self._inner.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        with self._times.phase(self._name):
            return self._inner.__exit__(*exc)


def _to_jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if is_dataclass(obj) and not isinstance(obj, type):
        return json.loads(json.dumps(asdict(obj), default=str))
    return obj


def read_provenance(dataset_dir: str | Path) -> Provenance:
    """Read ``provenance.json`` of a dataset directory."""
    path = Path(dataset_dir) / PROVENANCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {dataset_dir} an ingest output?")
    return Provenance(**json.loads(path.read_text()))


def _common_tags(params: Params, prov: Provenance) -> dict[str, str]:
    from cxrflow import tracking

    hashes = prov.sources.get("dvc_hashes") or {}
    extra = {"cxrflow.data.dvc_hashes": json.dumps(hashes, sort_keys=True)} if hashes else {}
    return {
        **extra,
        tracking.TAG_PROFILE: params.profile,
        tracking.TAG_MANIFEST_HASH: prov.manifest_hash,
        tracking.TAG_DATA_VERSION: prov.data_version,
        tracking.TAG_DATA_ORIGIN: prov.origin,
        tracking.TAG_GIT_COMMIT: tracking.git_commit(),
        "cxrflow.params_hash": params_hash(params),
    }


def current_pipeline_run(given: str = "") -> str | None:
    """The id of the pipeline run executing this step, for a KFP component.

    ``$CXRFLOW_PIPELINE_RUN_ID`` when the runner sets it (see :data:`PIPELINE_RUN_ENV`), else
    ``given`` (KFP's run-id placeholder), else None (the step then makes or reads one).
    """
    return os.environ.get(PIPELINE_RUN_ENV, "").strip() or given.strip() or None


def _parent_run(
    params: Params,
    prov: Provenance,
    pipeline_run_id: str | None = None,
    *,
    step: str,
    dataset_dir: str | Path | None = None,
) -> str:
    """The MLflow parent run of the current pipeline run (``pipeline_run_id``, default: the
    run that made the data), found or created; records a reuse of the data steps."""
    from cxrflow import tracking

    current = pipeline_run_id or prov.pipeline_run_id
    parent = tracking.get_or_create_parent_run(
        params.tracking.experiment_name,
        current,
        _common_tags(params, prov),
        flatten_params(params),
    )
    if current != prov.pipeline_run_id:
        _record_reuse(parent, prov, step, dataset_dir)
    return parent


def _record_reuse(parent: str, prov: Provenance, step: str, dataset_dir: str | Path | None) -> None:
    """Record on ``parent`` that this run reuses data made by run ``prov.pipeline_run_id``.

    The data steps before ``step`` that did not run in this run (no done tag yet) are marked
    done as ``cached``: KFP reuses only successful executions, and a step runs only after its
    upstream steps succeeded. Idempotent: parallel model steps may all call it.
    """
    from cxrflow import tracking
    from cxrflow.config import DATA_STEPS

    tags = tracking.run_tags(parent)
    before = DATA_STEPS[: DATA_STEPS.index(step)] if step in DATA_STEPS else DATA_STEPS
    marks = {TAG_STEP_DONE + s: STEP_CACHED for s in before if TAG_STEP_DONE + s not in tags}
    first = tracking.TAG_DATA_REUSED_FROM not in tags
    if first or marks:
        tracking.set_tags(
            parent,
            {tracking.TAG_DATA_REUSED_FROM: prov.pipeline_run_id, **_data_tags(prov), **marks},
        )
    if first and dataset_dir is not None:
        from cxrflow.data.manifest import read_manifest

        _log_manifest(parent, prov, read_manifest(dataset_dir))
    if marks:
        log.info(
            "data steps %s reused from pipeline run %s",
            ", ".join(s.removeprefix(TAG_STEP_DONE) for s in marks),
            prov.pipeline_run_id,
        )


def _data_tags(prov: Provenance) -> dict[str, str]:
    """The registry, commit and DVC hashes of registry data (ingest's tags on the parent)."""
    registry = prov.sources.get("registry")
    if not registry:
        return {}
    hashes = prov.sources.get("dvc_hashes") or {}
    return {
        "cxrflow.data.registry": str(registry),
        "cxrflow.data.commit": str(prov.sources.get("registry_commit") or ""),
        **{f"cxrflow.data.dvc_md5.{k}": str(v) for k, v in hashes.items()},
    }


def _log_manifest(parent: str, prov: Provenance, manifest: Any) -> None:
    """The manifest as the parent run's dataset input (lineage in the MLflow UI)."""
    from cxrflow import tracking

    tracking.log_dataset(
        parent,
        "manifest",
        prov.manifest_hash,
        _data_source(prov),
        {"rows": len(manifest), "labels": manifest["label"].value_counts().to_dict()},
        "ingest",
        list(manifest.columns),
    )


def _step_done(parent: str, step: str) -> None:
    from cxrflow import tracking

    tracking.set_tags(parent, {TAG_STEP_DONE + step: "true"})


def _data_source(prov: Provenance) -> dict[str, Any]:
    return {
        "data_version": prov.data_version,
        "registry": prov.sources.get("registry"),
        "registry_commit": prov.sources.get("registry_commit"),
        "roots": prov.sources.get("roots"),
        "origin": prov.origin,
        "pipeline_run_id": prov.pipeline_run_id,
    }


def checkpoint_dir(
    params: Params,
    pipeline_run_id: str,
    model_key: str,
    out: Path,
    volume: str | Path | None = None,
) -> Path:
    """Where a training step checkpoints every epoch, so that a retried pod resumes.

    ``train.checkpoint_root`` if set; else ``volume`` (the cluster's checkpoint volume,
    ``cluster.checkpoints.mount_path``) when it is mounted here, i.e. a directory: kfp.local
    mounts no volume and keeps the checkpoints in the output; else inside the step's output
    (lost with the pod). Durable roots are keyed by pipeline run and model.
    """
    root = params.train.checkpoint_root
    if not root and volume and Path(volume).is_dir():
        root = str(volume)
    elif not root and volume:
        log.info("checkpoint volume %s is not mounted here: checkpoints stay in the output", volume)
    if root:
        return Path(root) / pipeline_run_id / model_key
    return out / "checkpoints"


def split_digest(table: Any, splits: tuple[str, ...]) -> str:
    """Content digest of some splits of a split table (which images, which labels, which split):
    the MLflow dataset digest of what a run trained or was tested on."""
    import hashlib

    rows = table[table["split"].isin(splits)].sort_values("path")
    blob = "\n".join(f"{p},{lab},{sp}" for p, lab, sp in rows[["path", "label", "split"]].values)
    return hashlib.sha256(blob.encode()).hexdigest()


def step_params(params: Mapping[str, Any]) -> Params:
    """The resolved configuration a KFP component receives, as :class:`Params`; sets up logging
    and a quick process exit (:func:`exit_without_final_gc`).

    Every component receives the whole configuration resolved when the pipeline was compiled or
    submitted (one ``params`` parameter): no step sees defaults for sections it does not read.
    Only components call it: a component's process runs one step and ends.
    """
    from cxrflow.config import params_from_kfp
    from cxrflow.logs import setup_logging

    setup_logging()
    exit_without_final_gc()
    return params_from_kfp(params)


def exit_without_final_gc() -> None:
    """Skip the interpreter's last garbage collection when this process exits.

    At exit CPython walks every object still alive looking for cycles to free; with TensorFlow,
    MLflow and Great Expectations loaded that took 2 s per step on a quiet machine and 4-9 s
    under load, about a sixth of ``make run``'s overhead (``bench/overhead.py``: a step's
    teardown). Freezing the heap in the last exit handler (registered first, so every handler
    registered later, e.g. MLflow's, still runs before it) leaves only that walk out: files
    are closed and flushed by their owners and the exit status is unchanged.
    """
    import atexit
    import gc

    global _FINAL_GC_SKIPPED
    if not _FINAL_GC_SKIPPED:
        atexit.register(gc.freeze)
        _FINAL_GC_SKIPPED = True


_FINAL_GC_SKIPPED = False


def new_pipeline_run_id() -> str:
    """A fresh id grouping the MLflow runs of one local (non-KFP) pipeline run."""
    return f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------------ ingest


def run_ingest(
    params: Params, out_dir: str | Path, pipeline_run_id: str | None = None
) -> dict[str, Any]:
    """Step ``ingest``: build the manifest from the configured sources (or phantom data).

    Reads params ``data``, ``ingest``. With no source configured, generates phantom data first
    and labels everything ``origin=phantom``. With ``data.registry`` the sources are read at
    ``data.version`` from the registry's DVC remote.
    """
    times = StepTimes("ingest")
    with times.phase("imports"):
        from cxrflow import tracking as tracking_module
        from cxrflow.data.ingest import ingest
        from cxrflow.data.manifest import manifest_hash, read_manifest
        from cxrflow.data.synthetic import is_phantom
    tracking = times.timed(tracking_module, "tracking")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_id = pipeline_run_id or new_pipeline_run_id()
    data = params.data
    dvc_hashes: dict[str, str] = {}
    commit = ""
    with tempfile.TemporaryDirectory(prefix="cxrflow-raw-") as tmp, times.phase("data"):
        roots: dict[str, list[Path]]
        if data.registry is not None:
            from cxrflow.data.versions import materialize

            log.info("reading %s at %s from its DVC remote", data.registry, data.version or "HEAD")
            local, dv = materialize(data.registry, data.version, data.source_paths, Path(tmp))
            roots = {name: [local[r] for r in rs] for name, rs in data.sources.items()}
            dvc_hashes = dict(dv.dvc_hashes)
            commit = dv.commit
            version = f"{dv.rev}@{dv.commit[:12]}" if dv.rev != dv.commit else dv.commit
        elif data.is_phantom:
            from cxrflow.data.synthetic import generate_phantom

            log.warning(
                "no data configured (data.sources): generating PHANTOM (synthetic) data; "
                "results say nothing clinical"
            )
            roots = {
                k: [Path(r) for r in v]
                for k, v in generate_phantom(Path(tmp), data.synth).sources.items()
            }
            version = f"phantom-seed{data.synth.seed}"
        else:
            roots = {name: [Path(r) for r in rs] for name, rs in data.sources.items()}
            version = "unversioned"
        flat = [r for rs in roots.values() for r in rs]
        origin = "phantom" if flat and all(is_phantom(r) for r in flat) else "real"
        if origin == "real" and any(is_phantom(r) for r in flat):
            raise ValueError(f"mixing phantom and real sources is not allowed: {flat}")
        pairs = [(name, r) for name, rs in roots.items() for r in rs]
        report = ingest(out, params.ingest, sources=pairs, origin=origin)
    manifest = read_manifest(out)
    mhash = manifest_hash(manifest)
    prov = Provenance(
        pipeline_run_id=run_id,
        data_version=version,
        manifest_hash=mhash,
        origin=origin,
        profile=params.profile,
        sources={
            "roots": {k: list(v) for k, v in data.sources.items()},
            "registry": data.registry,
            "registry_commit": commit,
            "dvc_hashes": dvc_hashes,
            "phantom_seed": data.synth.seed if origin == "phantom" and not data.registry else None,
        },
    )
    write_json_atomic(out / PROVENANCE_FILE, asdict(prov))
    report_dict = _to_jsonable(report)
    with times.phase("tracking"):
        parent = _parent_run(params, prov, step="ingest")
        tags = _data_tags(prov)
        if tags:
            tracking.set_tags(parent, tags)
        _log_manifest(parent, prov, manifest)
    for name in (
        "ingest_report.json",
        "quarantine.csv",
        "excluded.csv",
        "duplicates.csv",
        PROVENANCE_FILE,
    ):
        if (out / name).is_file():
            tracking.log_artifact(parent, out / name, "ingest")
    with times.phase("tracking"):
        _step_done(parent, "ingest")
    times.emit()
    emit_summary(
        "ingest",
        f"{report_dict['kept']} images kept of {report_dict['considered']} "
        f"({report_dict['quarantined']} quarantined, {report_dict['excluded_by_filter']} "
        f"excluded, {report_dict['duplicates_collapsed']} duplicates); data {version}",
    )
    return {"provenance": asdict(prov), "report": report_dict, "parent_run_id": parent}


# ---------------------------------------------------------------------------------- validate


def run_validate(
    params: Params,
    dataset_dir: str | Path,
    out_dir: str | Path,
    pipeline_run_id: str | None = None,
) -> dict[str, Any]:
    """Step ``validate``: the Great Expectations gate over the manifest.

    Reads params ``validate``. Writes ``validation.json`` and Data Docs HTML to ``out_dir``,
    logs both to the parent MLflow run of ``pipeline_run_id`` (default: the run that made the
    dataset), and raises ``DataValidationError`` (naming each failed expectation with
    examples) when the suite fails, so nothing trains on bad data.
    """
    times = StepTimes("validate")
    with times.phase("imports"):
        from cxrflow import tracking as tracking_module
        from cxrflow.data.manifest import read_manifest
        from cxrflow.data.validate import raise_on_failure, validate_manifest
    tracking = times.timed(tracking_module, "tracking")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prov = read_provenance(dataset_dir)
    with times.phase("data"):
        df = read_manifest(dataset_dir)
        summary = validate_manifest(df, params.validate, docs_dir=out / "data_docs")
    write_json_atomic(out / "validation.json", summary.to_dict())
    page = write_data_docs_page(out / "data_docs", out / DATA_DOCS_PAGE)
    with times.phase("tracking"):
        parent = _parent_run(
            params, prov, pipeline_run_id, step="validate", dataset_dir=dataset_dir
        )
    tracking.log_artifact(parent, out / "validation.json", "validate")
    if page is not None:
        tracking.log_artifact(parent, page, "validate")
    if (out / "data_docs").is_dir():
        tracking.log_artifact(parent, out / "data_docs", "validate/data_docs")
    tracking.set_tags(parent, {"cxrflow.validate.success": str(summary.success)})
    raise_on_failure(summary)
    with times.phase("tracking"):
        _step_done(parent, "validate")
    times.emit()
    emit_summary("validate", f"{summary.evaluated} expectations passed on {len(df)} images")
    return summary.to_dict()


DATA_DOCS_PAGE = "data_docs.html"


def write_data_docs_page(docs_dir: Path, target: Path) -> Path | None:
    """The newest Data Docs validation page as one self-contained HTML file (KFP's HTML viewer
    shows one file; GX's site is a folder). None when there are no Data Docs."""
    from cxrflow.htmlpack import inline_html

    pages = sorted((docs_dir / "validations").rglob("*.html")) if docs_dir.is_dir() else []
    if not pages:
        return None
    newest = max(pages, key=lambda p: p.stat().st_mtime)
    target.write_text(inline_html(newest), encoding="utf-8")
    return target


# ------------------------------------------------------------------------------------- split


def run_split(
    params: Params,
    dataset_dir: str | Path,
    out_dir: str | Path,
    pipeline_run_id: str | None = None,
) -> dict[str, Any]:
    """Step ``split``: undersample (Dataset_1 counts) and split by patient; GX-check the result.

    Reads params ``split``, ``validate``. Fails if a patient lands in two splits or classes
    are out of balance tolerance. Logs to the parent run of ``pipeline_run_id`` (default: the
    run that made the dataset).
    """
    times = StepTimes("split")
    with times.phase("imports"):
        from cxrflow import tracking as tracking_module
        from cxrflow.data.manifest import read_manifest
        from cxrflow.data.split import split_manifest, write_splits
        from cxrflow.data.validate import raise_on_failure, validate_splits
    tracking = times.timed(tracking_module, "tracking")

    out = Path(out_dir)
    prov = read_provenance(dataset_dir)
    report_path = Path(dataset_dir) / "ingest_report.json"
    links = (
        json.loads(report_path.read_text()).get("patient_links", [])
        if report_path.is_file()
        else []
    )
    with times.phase("data"):
        tables, report = split_manifest(read_manifest(dataset_dir), params.split, links)
        write_splits(tables, report, out)
    with times.phase("tracking"):
        parent = _parent_run(params, prov, pipeline_run_id, step="split", dataset_dir=dataset_dir)
    tracking.log_artifact(parent, out / "split_report.json", "split")
    summaries = {}
    for name, table in tables.items():
        # Dataset_1 is checked against its undersampling targets; a capped Dataset_0 against
        # its mean class count; an uncapped Dataset_0 keeps the paper's natural imbalance.
        targets = dict(params.split.dataset_1_counts) if name == "dataset_1" else None
        with times.phase("data"):
            summary = validate_splits(
                table,
                params.validate,
                docs_dir=out / f"data_docs_{name}",
                class_counts_expected=targets,
                # the paper keeps Dataset_0's natural imbalance unless it is capped
                check_balance=name == "dataset_1"
                or params.split.dataset_0_max_per_class is not None,
            )
        summaries[name] = summary.to_dict()
        write_json_atomic(out / f"validation_{name}.json", summaries[name])
        tracking.log_artifact(parent, out / f"validation_{name}.json", "split")
        raise_on_failure(summary)
    if report.confounds:
        tracking.set_tags(
            parent,
            {
                f"cxrflow.confound.{k}": "; ".join(v)[:4900]
                for k, v in report.confounds.items()
                if v
            },
        )
    with times.phase("tracking"):
        _step_done(parent, "split")
    times.emit()
    figures = []
    for ds, per_split in report.counts.items():
        sizes = " / ".join(f"{sp} {sum(c.values())}" for sp, c in per_split.items())
        figures.append(f"{ds}: {sizes}")
    confounds = sum(len(v) for v in report.confounds.values())
    emit_summary(
        "split", "; ".join(figures) + (f"; {confounds} confound warning(s)" if confounds else "")
    )
    return {"report": report.to_dict(), "validation": summaries}


# ------------------------------------------------------------------------------------- train


def run_train(
    params: Params,
    model_key: str,
    dataset_dir: str | Path,
    splits_dir: str | Path,
    out_dir: str | Path,
    base_model_dir: str | Path | None = None,
    verbose: int = 2,
    *,
    pipeline_run_id: str | None = None,
    checkpoint_volume: str | Path | None = None,
) -> dict[str, Any]:
    """Step ``<model_key>``: train one model of ``params.models`` and log it to MLflow.

    Reads params ``train``, ``models.<model_key>`` (and logs the whole configuration). A model
    whose ``init`` names another model starts from that model's output (``base_model_dir``).
    Writes ``model.keras``, ``history.json`` and ``model_info.json`` (incl. the MLflow model
    URI) to ``out_dir``. Training checkpoints every epoch (:func:`checkpoint_dir`, with
    ``checkpoint_volume``) and resumes from the checkpoint a killed attempt of the same
    pipeline run left, in the same nested MLflow run. The train and val images are decoded
    once into a temporary file (``$TMPDIR``, 50 KB an image at 224 px, removed at the end)
    and streamed from it a batch at a time, so memory does not grow with the dataset. Ends
    with a timing line (:class:`StepTimes`).

    Args:
        pipeline_run_id: The current pipeline run (default: the run that made the dataset).
        checkpoint_volume: The cluster's checkpoint volume mount, used where it is mounted.
    """
    times = StepTimes(model_key)
    with times.phase("imports"):
        import keras
        import numpy as np

        from cxrflow import tracking as tracking_module
        from cxrflow.config import check_model_key
        from cxrflow.data.split import read_split_table
        from cxrflow.datasets import write_split_cache
        from cxrflow.models import get_architecture
        from cxrflow.train import train_model
    tracking = times.timed(tracking_module, "tracking")

    spec = check_model_key(params, model_key)
    arch = get_architecture(spec.architecture)
    classes = DATASETS[spec.dataset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prov = read_provenance(dataset_dir)
    table = read_split_table(splits_dir, spec.dataset)
    size = params.train.image_size
    # Each image is decoded once, to a file that training reads a batch at a time: memory
    # stays flat however large the split (bench/input_pipeline.py measures both forms).
    with tempfile.TemporaryDirectory(prefix="cxrflow-images-") as cache:
        with times.phase("data"):
            x_tr, y_tr = write_split_cache(dataset_dir, table, "train", classes, size, cache)
            x_va, y_va = write_split_cache(dataset_dir, table, "val", classes, size, cache)
        log.info(
            "%s: %d train / %d val images of %s", model_key, len(x_tr), len(x_va), spec.dataset
        )
        base = None
        if spec.base_model_key is not None:
            if base_model_dir is None:
                raise ValueError(
                    f"{model_key}: init={spec.init} needs the trained {spec.init} "
                    f"(--base-model {spec.init}'s output directory)"
                )
            with times.phase("model_io"):
                base = keras.models.load_model(Path(base_model_dir) / MODEL_FILE)

        run_key = pipeline_run_id or prov.pipeline_run_id
        with times.phase("tracking"):
            parent = _parent_run(params, prov, run_key, step=model_key, dataset_dir=dataset_dir)
            tags = {
                **_common_tags(params, prov),
                "cxrflow.dataset": spec.dataset,
                "cxrflow.architecture": spec.architecture,
                "cxrflow.init": spec.init,
                tracking.TAG_PRETRAINED: (spec.weights_path or "NONE (random init)")
                if spec.init_kind == "imagenet"
                else spec.init,
            }
        with tracking.model_run(
            params.tracking.experiment_name,
            parent,
            run_key,
            model_key,
            tags,
            flatten_params(params),
        ) as run_id:
            if spec.init_kind == "imagenet" and not spec.weights_path:
                tracking.set_tags(
                    run_id,
                    {
                        "cxrflow.warning": f"{spec.architecture} trained WITHOUT ImageNet "
                        f"weights (models.{model_key}.weights_path is null)"
                    },
                )
            if spec.weights_path:
                from cxrflow.data.manifest import file_sha256

                tracking.set_tags(
                    run_id, {"cxrflow.pretrained_weights_sha256": file_sha256(spec.weights_path)}
                )
            tracking.log_dataset(
                run_id,
                f"{spec.dataset}/train+val",
                split_digest(table, ("train", "val")),
                {**_data_source(prov), "manifest_hash": prov.manifest_hash},
                {"train": len(x_tr), "val": len(x_va), "classes": list(classes)},
                "training",
            )
            epochs_max = params.train.epochs

            class _Progress(keras.callbacks.Callback):  # type: ignore[misc]
                def __init__(self, phase: str, offset: int) -> None:
                    super().__init__()
                    self.phase, self.offset = phase, offset

                def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
                    figures = " ".join(
                        f"{k}={float(v):.4f}"
                        for k, v in (logs or {}).items()
                        if k in ("loss", "accuracy", "val_loss", "val_accuracy")
                    )
                    emit_progress(
                        model_key, f"{self.phase} epoch {epoch + 1}/{epochs_max} {figures}"
                    )

            def cb(phase: str, offset: int) -> list[Any]:
                logger = tracking.make_epoch_logger(run_id, phase, offset)
                return [times.callback(logger, "tracking"), _Progress(phase, offset)]

            t0 = time.perf_counter()
            ckpt = checkpoint_dir(params, run_key, model_key, out, checkpoint_volume)
            with times.phase("compute"):
                result = train_model(
                    spec,
                    params.train,
                    classes,
                    (x_tr, y_tr, x_va, y_va),
                    base,
                    cb,
                    verbose,
                    checkpoint_dir=ckpt,
                    model_key=model_key,
                )
            train_s = time.perf_counter() - t0
            if result.resumed_from_epoch:
                tracking.set_tags(run_id, {"cxrflow.resumed_from_epoch": result.resumed_from_epoch})
            with times.phase("model_io"):
                result.model.save(out / MODEL_FILE)
            write_json_atomic(
                out / "history.json", {"history": result.history, "phases": result.phases}
            )
            tracking.log_metrics(
                run_id,
                {
                    "train_seconds": train_s,
                    "epochs_total": float(len(result.history.get("loss", []))),
                    "n_train": float(len(x_tr)),
                    "n_val": float(len(x_va)),
                    "cxrflow.time.data_s": times.seconds.get("data", 0.0),
                },
            )
            tracking.log_artifact(run_id, out / "history.json")
            model_uri = tracking.log_keras_model(
                result.model,
                "model",
                x_tr[:2].astype(np.float32),
                {
                    "classes": list(classes),
                    "image_size": size,
                    "model_key": model_key,
                    "preprocessing": arch.preprocessing,
                },
            )
    info = {
        "model_key": model_key,
        "classes": list(classes),
        "image_size": size,
        "dataset": spec.dataset,
        "run_id": run_id,
        "model_uri": model_uri,
        "pipeline_run_id": run_key,
        "pretrained": result.pretrained,
        "phases": result.phases,
        "train_seconds": train_s,
        "resumed_from_epoch": result.resumed_from_epoch,
    }
    write_json_atomic(out / MODEL_INFO_FILE, info)
    # the model is saved and logged: the per-epoch checkpoint (hundreds of MB for ResNet-50)
    # must not become part of the step's output
    shutil.rmtree(ckpt, ignore_errors=True)
    with times.phase("tracking"):
        _step_done(parent, model_key)
    val_acc = result.history.get("val_accuracy") or [float("nan")]
    times.emit()
    emit_summary(
        model_key,
        f"{len(result.history.get('loss', []))} epochs, best val_accuracy {max(val_acc):.3f} "
        f"({train_s:.0f} s)",
    )
    return info


# ---------------------------------------------------------------------------------- evaluate


MCNEMAR_FILE = "mcnemar.json"


@dataclass(frozen=True)
class TestSplit:
    """One dataset's test split in memory: images, labels and who they belong to."""

    x: Any
    y: Any
    groups: Any
    sources: Any
    table: Any


def load_test_split(
    dataset_dir: str | Path,
    splits_dir: str | Path,
    dataset: str,
    classes: list[str],
    image_size: int,
) -> TestSplit:
    """The test split of ``dataset`` with patient ids (bootstrap unit) and sources, in the
    same row order as the images."""
    import numpy as np

    from cxrflow.data.split import read_split_table
    from cxrflow.datasets import load_arrays

    table = read_split_table(splits_dir, dataset)
    x, y = load_arrays(dataset_dir, table, "test", classes, image_size)
    rows = table[table["split"] == "test"]
    return TestSplit(
        x=x,
        y=y,
        groups=np.asarray(rows["patient_id"].astype(str)),
        sources=np.asarray(rows["source"].astype(str)),
        table=rows,
    )


def run_evaluate(
    params: Params,
    dataset_dir: str | Path,
    splits_dir: str | Path,
    model_dirs: Mapping[str, str | Path],
    out_dir: str | Path,
    pipeline_run_id: str | None = None,
) -> dict[str, Any]:
    """Step ``evaluate``: test-split metrics with patient-level bootstrap CIs, for each model.

    Reads params ``evaluate``. For every model: accuracy, macro and per-class precision /
    recall / F1, one-vs-rest ROC AUC, confusion matrix and calibration error, each with a
    confidence interval resampling *patients*; latency at batch 1 and batched with the
    hardware; plots (confusion matrix, ROC curves, reliability diagram, training curves with
    the phase boundary, Grad-CAM overlays). McNemar's test between every pair of models tested
    on the same images. Writes ``metrics.json``, ``mcnemar.json``, ``plots/`` and
    ``summary.md``; logs metrics and plots to each model's nested run.
    """
    times = StepTimes("evaluate")
    with times.phase("imports"):
        import keras
        import numpy as np

        from cxrflow import tracking as tracking_module
        from cxrflow.evaluate import evaluate_model, flat_metrics
        from cxrflow.gradcam import gradcam_grid
        from cxrflow.plots import plot_confusion, plot_reliability, plot_roc, plot_training_curves
        from cxrflow.stats import mcnemar_pairs
    tracking = times.timed(tracking_module, "tracking")

    ep = params.evaluate
    out = Path(out_dir)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    prov = read_provenance(dataset_dir)
    run_key = pipeline_run_id or prov.pipeline_run_id
    with times.phase("tracking"):
        parent = _parent_run(params, prov, run_key, step="evaluate", dataset_dir=dataset_dir)
    results: dict[str, Any] = {}
    tests: dict[tuple[str, int], TestSplit] = {}
    for key in sorted(model_dirs):
        mdir = Path(model_dirs[key])
        info = json.loads((mdir / MODEL_INFO_FILE).read_text())
        classes = list(info["classes"])
        dataset = info["dataset"]
        size = int(info["image_size"])
        if (dataset, size) not in tests:
            with times.phase("data"):
                tests[dataset, size] = load_test_split(
                    dataset_dir, splits_dir, dataset, classes, size
                )
        test = tests[dataset, size]
        with times.phase("model_io"):
            model = keras.models.load_model(mdir / MODEL_FILE)
        with times.phase("compute"):  # the evaluation itself: metrics, plots, Grad-CAM
            metrics, proba = evaluate_model(model, test.x, test.y, classes, test.groups, ep)
            title = f"{key} on {dataset} test (n={metrics['n_test']})"
            pngs = [
                plot_confusion(
                    metrics["confusion_matrix"], classes, title, plots / f"confusion_{key}.png"
                ),
                plot_roc(test.y, proba, classes, title, plots / f"roc_{key}.png"),
                plot_reliability(
                    test.y, proba, ep.calibration_bins, title, plots / f"reliability_{key}.png"
                ),
            ]
            history_file = mdir / "history.json"
            if history_file.is_file():
                hist = json.loads(history_file.read_text())
                pngs.append(
                    plot_training_curves(
                        hist["history"],
                        hist["phases"],
                        f"{key} training",
                        plots / f"training_{key}.png",
                    )
                )
            if ep.gradcam_per_class > 0:
                pngs.append(
                    gradcam_grid(
                        model,
                        test.x,
                        test.y,
                        classes,
                        ep.gradcam_per_class,
                        ep.seed,
                        f"{key}: Grad-CAM on test images",
                        plots / f"gradcam_{key}.png",
                    )
                )
        metrics.update(
            model_key=key,
            dataset=dataset,
            run_id=info["run_id"],
            model_uri=info["model_uri"],
            data_version=prov.data_version,
            manifest_hash=prov.manifest_hash,
            params_hash=params_hash(params),
            pipeline_run_id=run_key,
            plots=[str(p.relative_to(out)) for p in pngs],
        )
        results[key] = metrics
        tracking.log_metrics(info["run_id"], flat_metrics(metrics))
        tracking.log_dataset(
            info["run_id"],
            f"{dataset}/test",
            split_digest(test.table, ("test",)),
            {**_data_source(prov), "manifest_hash": prov.manifest_hash},
            {"test": int(metrics["n_test"]), "patients": int(metrics["n_patients"])},
            "evaluation",
        )
        for png in pngs:
            tracking.log_artifact(info["run_id"], png, "evaluation")
        log.info(
            "%s: accuracy %.4f [%.4f, %.4f], macro F1 %.4f, %.2f ms/image",
            key,
            metrics["accuracy"],
            metrics["accuracy_ci"]["ci_low"] or float("nan"),
            metrics["accuracy_ci"]["ci_high"] or float("nan"),
            metrics["f1_macro"],
            metrics["latency_ms_per_image"],
        )
    pairs: list[dict[str, Any]] = []
    for dataset in sorted({m["dataset"] for m in results.values()}):
        same = {k: m for k, m in results.items() if m["dataset"] == dataset}
        if len(same) < 2:
            continue
        y = next(t.y for (d, _), t in tests.items() if d == dataset)
        preds = {k: np.asarray(m["predictions"]) for k, m in same.items()}
        pairs += [{"dataset": dataset, **pair} for pair in mcnemar_pairs(y, preds)]
    write_json_atomic(out / METRICS_FILE, results)
    write_json_atomic(out / MCNEMAR_FILE, pairs)
    (out / "summary.md").write_text(format_summary(results, pairs))
    for name in (METRICS_FILE, MCNEMAR_FILE, "summary.md"):
        tracking.log_artifact(parent, out / name, "evaluate")
    tracking.log_metrics(
        parent,
        {
            **{f"{key}.{k}": v for key, m in results.items() for k, v in flat_metrics(m).items()},
            "cxrflow.time.evaluate.compute_s": times.seconds.get("compute", 0.0),
        },
    )
    with times.phase("tracking"):
        _step_done(parent, "evaluate")
    times.emit()
    if results:
        best = max(results, key=lambda k: results[k]["f1_macro"])
        ci = results[best]["f1_macro_ci"]
        emit_summary(
            "evaluate",
            f"{len(results)} models on the test split; best macro F1 {best} "
            f"{results[best]['f1_macro']:.3f} [{_fmt(ci.get('ci_low'))}, "
            f"{_fmt(ci.get('ci_high'))}]",
        )
    return results


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def _with_ci(m: Mapping[str, Any], name: str) -> str:
    ci = m.get(f"{name}_ci") or {}
    if ci.get("ci_low") is None:
        return _fmt(m.get(name))
    return f"{_fmt(m.get(name))} [{_fmt(ci['ci_low'])}, {_fmt(ci['ci_high'])}]"


def format_summary(
    results: Mapping[str, Mapping[str, Any]], mcnemar: Sequence[Mapping[str, Any]] | None = None
) -> str:
    """Markdown table of the models' test metrics with their 95 % CIs (and McNemar's tests)."""
    lines = [
        "| model | dataset | n_test | accuracy [95% CI] | macro F1 [95% CI] | ROC AUC | ECE "
        "| ms/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(results):
        m = results[key]
        lines.append(
            f"| {key} | {m['dataset']} | {m['n_test']} | {_with_ci(m, 'accuracy')} | "
            f"{_with_ci(m, 'f1_macro')} | {_with_ci(m, 'roc_auc_macro')} | "
            f"{_fmt(m.get('ece'))} | {m['latency_ms_per_image']:.2f} |"
        )
    if mcnemar:
        lines += [
            "",
            "| McNemar | dataset | a right, b wrong | a wrong, b right | p |",
            "|---|---|---|---|---|",
        ]
        for pair in mcnemar:
            lines.append(
                f"| {pair['a']} vs {pair['b']} | {pair['dataset']} | "
                f"{pair['n_a_right_b_wrong']} | {pair['n_a_wrong_b_right']} | "
                f"{_fmt(pair['p_value'], 4)} |"
            )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- register


AUDIT_FILE = "audit.json"


def run_register(
    params: Params,
    evaluation_dir: str | Path,
    out_dir: str | Path,
    audit_dir: str | Path | None = None,
    pipeline_run_id: str | None = None,
) -> dict[str, Any]:
    """Step ``register``: register the best candidate as champion, or as challenger.

    Reads params ``register``, ``audit``. :func:`cxrflow.register.decide_promotion` decides:
    a candidate that failed the shortcut audit (when ``audit.block_promotion``) is never
    promoted; the best allowed candidate becomes ``champion`` only if it beats the current
    champion by more than ``register.promotion_margin``; otherwise it is registered with the
    alias ``challenger`` and the reason as a tag. Aliases only, never the deprecated stages.
    The decision is recorded on the parent run of ``pipeline_run_id`` (default: the run
    named in the evaluation's metrics).
    """
    times = StepTimes("register")
    with times.phase("imports"):
        from cxrflow import tracking as tracking_module
        from cxrflow.register import CHAMPION, decide_promotion
    tracking = times.timed(tracking_module, "tracking")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads((Path(evaluation_dir) / METRICS_FILE).read_text())
    audit: dict[str, Any] = {}
    if audit_dir is not None and (Path(audit_dir) / AUDIT_FILE).is_file():
        audit = json.loads((Path(audit_dir) / AUDIT_FILE).read_text())
    rp = params.register
    tracking.configure(params.tracking.experiment_name)
    current = tracking.alias_version(rp.model_name, rp.alias)
    current_value = None
    if current is not None:
        tag = current["tags"].get(f"cxrflow.metric.{rp.metric}") or current["tags"].get(
            f"cxrflow.{rp.metric}"
        )
        current_value = float(tag) if tag else None
    passed = {k: (audit[k]["passed"] if k in audit else None) for k in rp.candidates}
    scores = {k: float(results[k][rp.metric]) for k in rp.candidates if k in results}
    decision = decide_promotion(
        scores,
        rp.candidates,
        passed,
        current_value,
        metric=rp.metric,
        margin=rp.promotion_margin,
        block_on_audit=params.audit.block_promotion,
    )
    key = decision.model_key
    m = results[key]
    alias = rp.alias if decision.role == CHAMPION else rp.challenger_alias
    metric_tags = {
        f"cxrflow.metric.{k}": f"{float(m[k]):.6f}"
        for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc_macro")
        if m.get(k) is not None
    }
    audit_tags = {}
    if key in audit:
        audit_tags = {
            "cxrflow.audit.passed": str(audit[key]["passed"]).lower(),
            "cxrflow.audit.reasons": "; ".join(audit[key].get("reasons", []))[:4900],
        }
    version = tracking.register_model(
        m["model_uri"],
        rp.model_name,
        alias,
        tags={
            "cxrflow.model_key": key,
            f"cxrflow.{rp.metric}": f"{m[rp.metric]:.6f}",
            "cxrflow.run_id": m["run_id"],
            "cxrflow.dataset": m["dataset"],
            tracking.TAG_DATA_VERSION: str(m.get("data_version", "")),
            tracking.TAG_MANIFEST_HASH: str(m.get("manifest_hash", "")),
            tracking.TAG_PIPELINE_RUN: str(m.get("pipeline_run_id", "")),
            "cxrflow.params_hash": params_hash(params),
            "cxrflow.promotion": decision.role,
            "cxrflow.promotion_reason": decision.reason[:4900],
            **metric_tags,
            **audit_tags,
        },
        description=f"{key} ({decision.role}): {decision.reason}",
    )
    champion = key if decision.role == CHAMPION else None
    info = {
        "model_key": key,
        "role": decision.role,
        "reason": decision.reason,
        "champion": champion,
        "previous_champion_version": None if current is None else current["version"],
        "metric": rp.metric,
        "value": m[rp.metric],
        "model_name": rp.model_name,
        "alias": alias,
        "version": version,
        "model_uri": f"models:/{rp.model_name}@{alias}",
        "source_model_uri": m["model_uri"],
        "audit_passed": decision.audit_passed,
        "eligible": list(decision.eligible),
        "candidates": {k: results[k][rp.metric] for k in rp.candidates if k in results},
        "audit": {
            k: {"passed": v["passed"], "reasons": v.get("reasons", [])} for k, v in audit.items()
        },
    }
    write_json_atomic(out / REGISTERED_FILE, info)
    tracking.set_tags(m["run_id"], {"cxrflow.promotion": decision.role})
    pipeline_run_id = pipeline_run_id or str(m.get("pipeline_run_id", ""))
    parent = (
        tracking.find_parent_run(params.tracking.experiment_name, pipeline_run_id)
        if pipeline_run_id
        else None
    )
    if parent is not None:
        tracking.set_tags(
            parent,
            {
                "cxrflow.champion": champion or "none",
                "cxrflow.promotion": f"{key} -> {alias}",
                "cxrflow.promotion_reason": decision.reason[:4900],
            },
        )
        with times.phase("tracking"):
            _step_done(parent, "register")
    times.emit()
    emit_summary(
        "register",
        f"{key} -> models:/{rp.model_name}@{alias} (version {version}): {decision.reason}",
    )
    return info


def run_audit(
    params: Params,
    dataset_dir: str | Path,
    splits_dir: str | Path,
    model_dirs: Mapping[str, str | Path],
    out_dir: str | Path,
    pipeline_run_id: str | None = None,
) -> dict[str, Any]:
    """Step ``audit``: the shortcut audit of every candidate model, before register.

    Reads params ``audit``, ``register.candidates``, ``evaluate`` (bootstrap size and seed).
    For each candidate: the share of adult non-COVID control X-rays from the COVID source that
    it calls COVID-19, how well a probe tells the data sources apart from its features, and its
    accuracy with the lung field masked out, each with a CI and a verdict against the
    thresholds (:func:`cxrflow.audit.audit_verdict`). Writes ``audit.json`` and the mask
    picture; logs the figures and the verdict to each model's nested run.
    """
    times = StepTimes("audit")
    with times.phase("imports"):
        import keras

        from cxrflow import tracking as tracking_module
        from cxrflow.audit import audit_model, control_arrays, plot_mask
        from cxrflow.data.manifest import read_manifest
        from cxrflow.data.split import read_split_table
    tracking = times.timed(tracking_module, "tracking")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prov = read_provenance(dataset_dir)
    with times.phase("tracking"):
        parent = _parent_run(params, prov, pipeline_run_id, step="audit", dataset_dir=dataset_dir)
    results: dict[str, Any] = {}
    if not params.audit.enabled:
        write_json_atomic(out / AUDIT_FILE, results)
        _step_done(parent, "audit")
        times.emit()
        emit_summary("audit", "disabled (audit.enabled: false): nothing audited")
        return results
    manifest = read_manifest(dataset_dir)
    ep = params.evaluate
    controls_cache: dict[tuple[str, int], dict[str, Any]] = {}
    for key in [k for k in params.register.candidates if k in model_dirs]:
        mdir = Path(model_dirs[key])
        info = json.loads((mdir / MODEL_INFO_FILE).read_text())
        classes = list(info["classes"])
        dataset, size = info["dataset"], int(info["image_size"])
        with times.phase("data"):
            test = load_test_split(dataset_dir, splits_dir, dataset, classes, size)
            if (dataset, size) not in controls_cache:
                controls_cache[dataset, size] = control_arrays(
                    dataset_dir, manifest, size, read_split_table(splits_dir, dataset)
                )
        with times.phase("model_io"):
            model = keras.models.load_model(mdir / MODEL_FILE)
        with times.phase("compute"):
            result = audit_model(
                model,
                x_test=test.x,
                y_test=test.y,
                groups_test=list(test.groups),
                sources_test=list(test.sources),
                classes=classes,
                params=params.audit,
                seed=ep.seed,
                n_boot=ep.bootstrap_samples,
                **controls_cache[dataset, size],
            )
        result["figures"] = audit_figures(result)
        results[key] = result
        tracking.log_metrics(
            info["run_id"], {f"audit_{k}": v for k, v in result["figures"].items() if v is not None}
        )
        tracking.set_tags(
            info["run_id"],
            {
                "cxrflow.audit.passed": str(result["passed"]).lower(),
                "cxrflow.audit.reasons": "; ".join(result["reasons"])[:4900],
            },
        )
    if results:
        first = next(iter(controls_cache.values()))
        sample = first["x_controls"][0] if len(first["x_controls"]) else None
        if sample is not None:
            plot_mask(sample, params.audit.mask_fraction, out / "lung_mask.png")
    write_json_atomic(out / AUDIT_FILE, results)
    tracking.log_artifact(parent, out / AUDIT_FILE, "audit")
    passed = [k for k, r in results.items() if r["passed"]]
    tracking.set_tags(parent, {"cxrflow.audit.passed": ",".join(passed) or "none"})
    with times.phase("tracking"):
        _step_done(parent, "audit")
    times.emit()
    emit_summary(
        "audit",
        "; ".join(f"{k} {'passed' if r['passed'] else 'FAILED'}" for k, r in results.items())
        or "no candidate to audit",
    )
    return results


def audit_figures(result: Mapping[str, Any]) -> dict[str, float | None]:
    """The audit's headline numbers (for MLflow metrics and the KFP UI)."""
    rate = (result.get("controls") or {}).get("covid_rate") or {}
    auc = (result.get("source_probe") or {}).get("auc") or {}
    masked = ((result.get("ablation") or {}).get("masked") or {}).get("balanced_accuracy") or {}
    return {
        "control_covid_rate": rate.get("value"),
        "source_probe_auc": auc.get("value"),
        "masked_balanced_accuracy": masked.get("value"),
    }


def format_promotion(registered: Mapping[str, Any]) -> str:
    """The audit verdicts and the promotion decision, plainly (the end of a run's output)."""
    lines = [""]
    audit = registered.get("audit") or {}
    if audit:
        lines.append("| candidate | shortcut audit | why |")
        lines.append("|---|---|---|")
        for key, verdict in audit.items():
            why = "; ".join(verdict.get("reasons", [])) or "all tests within thresholds"
            lines.append(f"| {key} | {'passed' if verdict['passed'] else 'FAILED'} | {why} |")
        if not any(v["passed"] for v in audit.values()):
            lines.append("")
            lines.append("NO MODEL PASSED THE SHORTCUT AUDIT: none was promoted to champion.")
    lines.append("")
    lines.append(
        f"{registered['model_key']} -> models:/{registered['model_name']}@{registered['alias']} "
        f"(version {registered['version']}): {registered['reason']}"
    )
    return "\n".join(lines) + "\n"


def log_report(params: Params, dataset_dir: str | Path, files: list[Path]) -> str | None:
    """Log report files to the MLflow parent run of the run that made ``dataset_dir``."""
    from cxrflow import tracking

    prov = read_provenance(dataset_dir)
    if not tracking.tracking_store_exists():
        return None
    parent = tracking.find_parent_run(params.tracking.experiment_name, prov.pipeline_run_id)
    if parent is None:
        return None
    for f in files:
        tracking.log_artifact(parent, f, "report")
    return parent


# ------------------------------------------------------------------------------ start points


START_FILE = "START.json"


def write_start_point(params: Params, kind: str, out_dir: str | Path) -> dict[str, Any]:
    """Describe a starting point of training (``scratch`` or ``imagenet``) in ``out_dir``.

    DVC's model stages depend on ``models/<init>``: a transfer on the model it starts from, the
    others on this description. For ``imagenet`` it records each configured weights file with
    its sha256, so replacing a weights file (a DVC-tracked artifact) reruns the models that
    load it; for ``scratch`` the training seed.
    """
    from cxrflow.config import INIT_IMAGENET, INIT_SCRATCH
    from cxrflow.data.manifest import file_sha256

    if kind not in (INIT_SCRATCH, INIT_IMAGENET):
        raise ValueError(f"a start point is {INIT_SCRATCH} or {INIT_IMAGENET}, got {kind!r}")
    users = {k: m for k, m in params.models.items() if m.init == kind}
    info: dict[str, Any] = {"init": kind, "models": sorted(users)}
    if kind == INIT_SCRATCH:
        info["seed"] = params.train.seed
    else:
        weights: dict[str, Any] = {}
        for key, spec in sorted(users.items()):
            path = spec.weights_path
            if path and not Path(path).is_file():
                raise FileNotFoundError(
                    f"models.{key}.weights_path: {path} does not exist (download the no-top "
                    "ImageNet weights once, then `dvc add` the file)"
                )
            weights[key] = {"path": path, "sha256": file_sha256(path) if path else None}
        info["weights"] = weights
    write_json_atomic(Path(out_dir) / START_FILE, info)
    return info


# ---------------------------------------------------------------------------------- finalize


def run_finalize(
    params: Params, pipeline_run_id: str, state: str, error: str = ""
) -> dict[str, Any]:
    """End the pipeline run's MLflow parent run: ``FINISHED``, or ``FAILED`` naming the step.

    Runs after every other step, whatever happened (KFP's exit handler; the local runner).
    The failed step is the first of ``params.steps`` that did not mark itself done on the
    parent run. Nested runs a killed step left ``RUNNING`` are marked ``FAILED`` too.

    Args:
        params: The run's resolved configuration.
        pipeline_run_id: The pipeline run (KFP job id, or a local id).
        state: The pipeline's final state as KFP reports it (``SUCCEEDED``, ``FAILED``...).
        error: The error message KFP reports, if any.
    """
    times = StepTimes("finalize")
    with times.phase("imports"):
        from cxrflow import tracking as tracking_module
    tracking = times.timed(tracking_module, "tracking")

    exp = params.tracking.experiment_name
    parent = tracking.find_parent_run(exp, pipeline_run_id)
    if parent is None:  # failed before ingest created it: record the failure anyway
        parent = tracking.get_or_create_parent_run(
            exp,
            pipeline_run_id,
            {
                tracking.TAG_PROFILE: params.profile,
                tracking.TAG_GIT_COMMIT: tracking.git_commit(),
                "cxrflow.params_hash": params_hash(params),
            },
            flatten_params(params),
        )
    tags = tracking.run_tags(parent)
    done = {k[len(TAG_STEP_DONE) :] for k, v in tags.items() if k.startswith(TAG_STEP_DONE)}
    missing = [step for step in params.steps if step not in done]
    succeeded = state.upper() in ("SUCCEEDED", "SUCCESS", "COMPLETE") and not missing
    failed_step = "" if succeeded else (missing[0] if missing else "unknown")
    if not succeeded:
        reason = error.strip().splitlines()[-1][:500] if error.strip() else state
        tracking.set_tags(parent, {TAG_FAILED_STEP: failed_step, "cxrflow.error": reason})
    stale = tracking.fail_running_children(exp, pipeline_run_id)
    status = "FINISHED" if succeeded else "FAILED"
    tracking.end_run(parent, status)
    times.emit()
    emit_summary(
        "finalize",
        f"MLflow parent run {parent} {status}"
        + (f" (failed step: {failed_step})" if failed_step else ""),
    )
    return {"parent_run_id": parent, "status": status, "failed_step": failed_step, "stale": stale}
