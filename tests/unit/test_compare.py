"""``cxrflow compare`` on synthetic run records (no MLflow): selection, the change rule, the
parameter diff and the three renderings."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from cxrflow.compare import (
    BEYOND,
    DEGENERATE,
    MISSING,
    NO_INTERVAL,
    WITHIN,
    Estimate,
    build_comparison,
    differing_params,
    format_terminal,
    metric_delta,
    render_html,
    render_markdown,
    row_from_record,
    run_link,
    select_runs,
    version_matches,
    write_comparison,
)

V1 = "data-v1@0123456789ab"
V2 = "data-v2@fedcba987654"
CLASSES = {
    "dataset_1": ("normal", "bacterial", "covid"),
    "dataset_0": ("normal", "bacterial", "viral"),
}


def _metric(out: dict[str, float], name: str, value: float, half: float | None) -> None:
    out[f"test_{name}"] = value
    if half is not None:
        out[f"test_{name}_ci_low"] = max(0.0, value - half)
        out[f"test_{name}_ci_high"] = min(1.0, value + half)


def record(
    run_id: str,
    model_key: str = "model_1",
    version: str = V1,
    pipeline_run: str = "p1",
    *,
    accuracy: float = 0.8,
    half: float | None = 0.05,
    start: int = 0,
    params: dict[str, str] | None = None,
    audit: bool | None = None,
    evaluated: bool = True,
    experiment_id: str = "1",
) -> dict[str, Any]:
    """A model run record the way :class:`cxrflow.tracking.RunStore` returns it."""
    dataset = "dataset_0" if model_key == "model_0" else "dataset_1"
    metrics: dict[str, float] = {"loss": 0.5, "val_accuracy": 0.7}  # per-epoch: ignored
    if evaluated:
        for name, value in (
            ("accuracy", accuracy),
            ("precision_macro", accuracy - 0.01),
            ("recall_macro", accuracy - 0.02),
            ("f1_macro", accuracy - 0.03),
            ("roc_auc_macro", min(1.0, accuracy + 0.1)),
            ("ece", 0.1),
        ):
            _metric(metrics, name, value, half)
        for i, c in enumerate(CLASSES[dataset]):
            _metric(metrics, f"recall_{c}", accuracy - 0.1 * i, half)
            _metric(metrics, f"precision_{c}", accuracy, half)
        metrics["test_latency_ms_per_image"] = 2.5
        metrics["test_latency_batch1_p95_ms"] = 3.0
    tags = {
        "cxrflow.run_kind": "model",
        "cxrflow.model_key": model_key,
        "cxrflow.pipeline_run_id": pipeline_run,
        "cxrflow.data.version": version,
        "cxrflow.data.manifest_hash": "m" + version[-4:],
        "cxrflow.params_hash": f"hash{pipeline_run}",
        "cxrflow.dataset": dataset,
    }
    if audit is not None:
        tags["cxrflow.audit.passed"] = str(audit).lower()
        tags["cxrflow.audit.reasons"] = (
            "controls: inconclusive: 2 control images; source_probe: "
            + ("pass" if audit else "FAIL")
            + ": AUC 0.9 (95% CI 0.8-1.0); within x; ablation: pass: balanced accuracy 40%"
        )
        metrics.update(
            audit_control_covid_rate=0.1,
            audit_source_probe_auc=0.9 if not audit else 0.6,
            audit_masked_balanced_accuracy=0.4,
        )
    return {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "run_name": model_key,
        "status": "FINISHED",
        "start_time": start,
        "tags": tags,
        "metrics": metrics,
        "params": {
            "evaluate.confidence": "0.95",
            "data.version": version.split("@")[0],
            "train.epochs": "2",
            "audit.max_control_covid_rate": "0.2",
            "audit.max_source_probe_auc": "0.75",
            "audit.max_masked_accuracy_gain": "0.15",
            **(params or {}),
        },
    }


def pipeline_record(run_id: str, pipeline_run: str, experiment_id: str = "1") -> dict[str, Any]:
    return {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "run_name": f"pipeline-{pipeline_run}",
        "status": "FINISHED",
        "start_time": 0,
        "tags": {"cxrflow.run_kind": "pipeline", "cxrflow.pipeline_run_id": pipeline_run},
        "metrics": {},
        "params": {},
    }


class FakeSource:
    """The :class:`cxrflow.compare.RunSource` protocol over a list of records; understands the
    two filters :func:`select_runs` sends."""

    uri = "sqlite:///fake.db"

    def __init__(self, records: Sequence[dict[str, Any]], experiments: dict[str, str]) -> None:
        self.records = list(records)
        self.experiments = experiments
        self.searches: list[str] = []

    def experiment_id(self, name: str) -> str | None:
        return self.experiments.get(name)

    def get(self, run_id: str) -> dict[str, Any] | None:
        return next((r for r in self.records if r["run_id"] == run_id), None)

    def search(
        self, experiment_ids: Sequence[str], filter_string: str = "", on_page: Any = None
    ) -> list[dict[str, Any]]:
        self.searches.append(filter_string)
        conds = dict(re.findall(r"tags\.`([^`]+)` = '([^']*)'", filter_string))
        found = [
            r
            for r in sorted(self.records, key=lambda r: r["start_time"])
            if r["experiment_id"] in experiment_ids
            and all(r["tags"].get(k) == v for k, v in conds.items())
        ]
        if on_page is not None:
            on_page(len(found))
        return found


def _rid(n: int) -> str:
    return f"{n:032x}"


@pytest.fixture
def two_versions() -> FakeSource:
    """Two pipeline runs of model_0/model_1 on data v1 and v2, an older rerun of model_1 on v1,
    a run never evaluated, and a run in another experiment."""
    recs = [
        record(_rid(1), "model_1", V1, "p1", accuracy=0.70, start=10, audit=True),
        record(_rid(2), "model_0", V1, "p1", accuracy=0.60, start=11),
        record(_rid(3), "model_1", V2, "p2", accuracy=0.90, start=20, audit=False,
               params={"train.epochs": "3"}),
        record(_rid(4), "model_0", V2, "p2", accuracy=0.62, start=21, params={"train.epochs": "3"}),
        record(_rid(5), "model_1", V1, "p0", accuracy=0.10, start=1),  # older rerun on v1
        record(_rid(6), "model_2", V2, "p2", start=22, evaluated=False),
        record(_rid(7), "model_1", V1, "px", start=30, experiment_id="2"),
        pipeline_record(_rid(8), "p2"),
    ]  # fmt: skip
    return FakeSource(recs, {"cxrflow": "1", "other": "2"})


# ------------------------------------------------------------------------------ the rule


def test_delta_beyond_when_interval_of_change_excludes_zero() -> None:
    z = 1.959963984540054
    a = Estimate(0.70, 0.65, 0.75)  # se 0.05 / z
    b = Estimate(0.90, 0.85, 0.95)
    d = metric_delta("m", "accuracy", a, b, 0.95)
    half = z * math.hypot(0.05 / z, 0.05 / z)  # = 0.0707
    assert d.delta == pytest.approx(0.20)
    assert (d.low, d.high) == (pytest.approx(0.20 - half), pytest.approx(0.20 + half))
    assert d.verdict == BEYOND and d.better is True
    # a change inside the combined half-width (0.0707) is within, although the two CIs
    # [0.65, 0.75] and [0.71, 0.81] do not contain each other's estimates
    assert metric_delta("m", "accuracy", a, Estimate(0.76, 0.71, 0.81)).verdict == WITHIN
    # just past it: beyond (CIs overlap, and still the change is larger than its uncertainty)
    d2 = metric_delta("m", "accuracy", a, Estimate(0.775, 0.725, 0.825))
    assert d2.verdict == BEYOND and d2.low is not None and d2.low > 0


def test_delta_lower_is_better_missing_and_no_interval() -> None:
    worse = metric_delta("m", "ece", Estimate(0.05, 0.04, 0.06), Estimate(0.20, 0.18, 0.22))
    assert worse.verdict == BEYOND and worse.better is False
    lat = metric_delta("m", "latency_ms_per_image", Estimate(3.0), Estimate(2.0))
    assert lat.verdict == NO_INTERVAL and lat.delta == pytest.approx(-1.0) and lat.better
    gone = metric_delta("m", "recall_covid", Estimate(0.5, 0.4, 0.6), None)
    assert gone.verdict == MISSING and gone.delta is None
    # a zero-width interval (every resample agreed: a class of two patients, both right)
    # measured no uncertainty: no verdict, on either side
    perfect = Estimate(1.0, 1.0, 1.0)
    assert perfect.degenerate and not Estimate(0.9, 0.8, 1.0).degenerate
    for b in (Estimate(0.25, 0.0, 0.5), perfect):
        d = metric_delta("m", "recall_covid", perfect, b)
        assert d.verdict == DEGENERATE and d.delta is not None and d.low is None


def test_wider_confidence_widens_the_interval_of_the_change() -> None:
    a, b = Estimate(0.70, 0.65, 0.75), Estimate(0.78, 0.73, 0.83)
    d95 = metric_delta("m", "accuracy", a, b, 0.95)
    d99 = metric_delta("m", "accuracy", a, b, 0.99)
    # the same intervals read at 99 % mean smaller standard errors: the rule is scale-free
    assert d95.high - d95.low == pytest.approx(d99.high - d99.low)


# ---------------------------------------------------------------------- rows and selection


def test_version_matching() -> None:
    assert version_matches(V1, "data-v1")
    assert version_matches(V1, V1)
    assert version_matches(V1, "0123456")
    assert not version_matches(V1, "data-v2")
    assert not version_matches(V1, "012345")  # too short for a commit prefix
    assert version_matches("0123456789abcdef0123456789abcdef01234567", "0123456789ab")
    assert not version_matches("phantom-seed7", "phantom")
    assert version_matches("phantom-seed7", "phantom-seed7")


def test_run_links() -> None:
    assert (
        run_link("http://mlflow:5000/", "3", "abc") == "http://mlflow:5000/#/experiments/3/runs/abc"
    )
    assert run_link("sqlite:///x.db", "3", "abc") == "runs:/abc"
    assert run_link("sqlite:///x.db", "3", "abc", "https://ui.example") == (
        "https://ui.example/#/experiments/3/runs/abc"
    )


def test_row_from_record_reads_metrics_intervals_classes_and_audit() -> None:
    row = row_from_record(record(_rid(1), audit=False), "http://h:5000")
    assert row.classes == ("bacterial", "covid", "normal")
    acc = row.metrics["accuracy"]
    assert (acc.value, acc.low, acc.high) == (0.8, pytest.approx(0.75), pytest.approx(0.85))
    assert row.metrics["latency_ms_per_image"] == Estimate(2.5)
    assert "loss" not in row.metrics and "val_accuracy" not in row.metrics
    assert row.audit_passed is False and row.audit["source_probe_auc"] == 0.9
    assert row.audit_tests == {
        "control_covid_rate": "inconclusive",
        "source_probe_auc": "FAIL",
        "masked_balanced_accuracy": "pass",
    }
    assert row.link == f"http://h:5000/#/experiments/1/runs/{_rid(1)}"
    assert row.label == "model_1 @ data-v1"


def test_select_experiment_leaves_out_unevaluated_and_other_experiments(two_versions) -> None:
    pages: list[int] = []
    sel = select_runs(two_versions, experiment="cxrflow", on_page=pages.append)
    ids = [r["run_id"] for r in sel.records]
    assert _rid(6) not in ids and _rid(7) not in ids and _rid(8) not in ids
    assert set(ids) == {_rid(n) for n in (1, 2, 3, 4, 5)}
    assert sel.versions == (V1, V2)  # two versions present: compared, older first
    assert any("without test metrics" in n for n in sel.notes)
    assert pages == [6]


def test_select_runs_by_mlflow_and_pipeline_ids(two_versions) -> None:
    # a pipeline's parent run id stands for its model runs; a pipeline run id too
    sel = select_runs(two_versions, experiment="cxrflow", run_refs=[_rid(8), "p1"])
    assert [r["run_id"] for r in sel.records] == [_rid(3), _rid(4), _rid(1), _rid(2)]
    assert sel.versions == (V2, V1)  # in the order the runs were named
    one = select_runs(two_versions, experiment="cxrflow", run_refs=[_rid(3)])
    assert [r["run_id"] for r in one.records] == [_rid(3)] and one.versions is None
    with pytest.raises(LookupError, match="no MLflow run of that id"):
        select_runs(two_versions, experiment="cxrflow", run_refs=["nope"])
    with pytest.raises(ValueError, match="letters, digits"):
        select_runs(two_versions, experiment="cxrflow", run_refs=["x' or '1"])


def test_select_data_versions(two_versions) -> None:
    sel = select_runs(two_versions, experiment="cxrflow", data_versions=["data-v2", "data-v1"])
    assert sel.versions == ("data-v2", "data-v1")
    assert {r["tags"]["cxrflow.data.version"] for r in sel.records} == {V1, V2}
    with pytest.raises(LookupError, match="versions there: data-v1@"):
        select_runs(two_versions, experiment="cxrflow", data_versions=["data-v1", "data-v9"])
    with pytest.raises(LookupError, match="no MLflow experiment 'nope'"):
        select_runs(two_versions, experiment="nope")
    with pytest.raises(ValueError, match="two versions"):
        select_runs(two_versions, experiment="cxrflow", data_versions=["data-v1"])


# ------------------------------------------------------------------------- the comparison


def _comparison(source: FakeSource, versions: Sequence[str] = ("data-v1", "data-v2")):
    sel = select_runs(source, experiment="cxrflow", data_versions=versions)
    rows = [row_from_record(r, "http://mlflow.test:5000") for r in sel.records]
    return build_comparison(
        rows, description=sel.description, source=source.uri, version_pair=sel.versions,
        notes=sel.notes,
    )  # fmt: skip


def test_version_comparison_uses_latest_run_per_model(two_versions) -> None:
    comp = _comparison(two_versions)
    assert comp.versions == (V1, V2)
    a, b = comp.pairs["model_1"]
    assert a is not None and a.run_id == _rid(1)  # not the older rerun _rid(5)
    assert b is not None and b.run_id == _rid(3)
    by = {(d.model_key, d.metric): d for d in comp.deltas}
    acc = by["model_1", "accuracy"]
    assert acc.delta == pytest.approx(0.20) and acc.verdict == BEYOND
    assert by["model_0", "accuracy"].verdict == WITHIN
    assert by["model_0", "recall_viral"].verdict == WITHIN
    assert ("model_1", "recall_viral") not in by
    assert by["model_1", "latency_ms_per_image"].verdict == NO_INTERVAL
    # rows: by data version, then model
    assert [(r.data_version, r.model_key) for r in comp.rows][:3] == [
        (V1, "model_0"),
        (V1, "model_1"),
        (V1, "model_1"),
    ]


def test_differing_params_only_keys_that_differ(two_versions) -> None:
    comp = _comparison(two_versions)
    diff = differing_params(comp.rows)
    assert set(diff.keys) == {"data.version", "train.epochs"}
    col = {g.split(" ")[0]: i for i, g in enumerate(diff.groups)}
    epochs = dict(zip(diff.keys, diff.values, strict=True))["train.epochs"]
    assert epochs[col["hashp2"]] == "3" and epochs[col["hashp1"]] == "2"
    assert "evaluate.confidence" not in diff.keys
    one = differing_params(comp.rows[:1])
    assert one.keys == ()


def test_terminal_table_is_compact_and_flags_the_change(two_versions) -> None:
    text = format_terminal(_comparison(two_versions))
    lines = text.splitlines()
    assert max(len(x) for x in lines) <= 140
    assert len(lines) < 30  # one screen
    assert "data version data-v1 -> data-v2" in text
    line = next(x for x in lines if x.startswith("model_1") and "accuracy" in x)
    assert "+0.20" in line and "beyond uncertainty (better)" in line
    assert "metrics with intervals changed beyond the uncertainty" in text


def test_markdown_has_tables_links_rule_and_figures(two_versions, tmp_path: Path) -> None:
    comp = _comparison(two_versions)
    md_path, _ = write_comparison(comp, tmp_path)
    md = md_path.read_text()
    assert f"[{_rid(3)[:8]}](http://mlflow.test:5000/#/experiments/1/runs/{_rid(3)})" in md
    assert "## Data version data-v1 -> data-v2" in md and "sqrt(se_a^2 + se_b^2)" in md
    assert "| train.epochs |" in md and "| data.version |" in md
    assert "0.700 [0.650, 0.750]" in md
    for name in ("metric_by_version", "per_class_recall", "latency_vs_accuracy", "audit_verdicts"):
        assert f"(compare_files/{name}.png)" in md
        png = tmp_path / "compare_files" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "FAILED" in md and "passed" in md


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_html_is_self_contained_and_links_each_row(two_versions, tmp_path: Path) -> None:
    comp = _comparison(two_versions)
    _, html_path = write_comparison(comp, tmp_path)
    page = html_path.read_text()
    parser = _Collect()
    parser.feed(page)
    imgs = [a for t, a in parser.tags if t == "img"]
    assert len(imgs) == 4 and all(str(a["src"]).startswith("data:image/png;base64,") for a in imgs)
    assert not [t for t, a in parser.tags if t == "script"]
    remote = [
        a
        for t, a in parser.tags
        if t in ("link", "img") and "http" in str(a.get("href") or a.get("src"))
    ]
    assert not remote
    links = [str(a["href"]) for t, a in parser.tags if t == "a"]
    assert set(links) == {
        f"http://mlflow.test:5000/#/experiments/1/runs/{r.run_id}" for r in comp.rows
    }
    assert "beyond-better" in page  # model_1's accuracy row is highlighted
    # the page is compare.md rendered: every table cell of the one is a cell of the other
    md = (tmp_path / "compare.md").read_text()
    assert page.count("<tr") == sum(line.startswith("| ") for line in md.splitlines())


def test_local_store_rows_show_run_uris_not_links(two_versions) -> None:
    sel = select_runs(two_versions, experiment="cxrflow")
    rows = [row_from_record(r, two_versions.uri) for r in sel.records]
    comp = build_comparison(rows, description=sel.description, source=two_versions.uri)
    assert comp.version_pair is None and comp.deltas == ()
    page = render_html(comp)
    assert "<a href" not in page and f"runs:/{_rid(1)}" in page
    assert f"`runs:/{_rid(1)}`" in render_markdown(comp)
    assert "No audit verdicts" not in page  # two runs were audited


def test_no_rows_is_an_error() -> None:
    with pytest.raises(LookupError, match="no evaluated model runs"):
        build_comparison([], description="experiment 'x'", source="sqlite:///a.db")


def test_html_escapes_run_data() -> None:
    rec = record(_rid(1), version="<script>alert(1)</script>")
    comp = build_comparison([row_from_record(rec, "sqlite:///a")], description="d", source="s")
    page = render_html(comp)
    assert "<script>" not in page and "&lt;script&gt;" in page


# ------------------------------------------------------------- a real store and the program


@pytest.fixture
def sqlite_store(tmp_path: Path, two_versions: FakeSource) -> str:
    """A sqlite MLflow store holding the fake records (experiment ``cxrflow``)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("cxrflow", artifact_location=(tmp_path / "art").as_uri())
    for rec in two_versions.records:
        if rec["experiment_id"] != "1":
            continue
        run = client.create_run(exp, start_time=1000 + rec["start_time"], run_name=rec["run_name"])
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, v, 0, 0) for k, v in rec["metrics"].items()],
            params=[Param(k, v) for k, v in rec["params"].items()],
            tags=[RunTag(k, v) for k, v in rec["tags"].items()],
        )
        client.set_terminated(run.info.run_id)
    return uri


def test_run_store_pages_through_a_real_store(
    sqlite_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxrflow.tracking import RunStore

    store = RunStore(sqlite_store)
    monkeypatch.setattr(RunStore, "PAGE_SIZE", 2)
    pages: list[int] = []
    exp = store.experiment_id("cxrflow")
    assert exp is not None and store.experiment_id("nope") is None
    found = store.search([exp], "tags.`cxrflow.run_kind` = 'model'", pages.append)
    assert pages == [2, 2, 2] and len(found) == 6
    assert [r["start_time"] for r in found] == sorted(r["start_time"] for r in found)
    one = store.get(found[0]["run_id"])
    assert one is not None and one["metrics"] == found[0]["metrics"]
    assert one["params"]["train.epochs"] in ("2", "3")
    assert store.get("0" * 32) is None
    sel = select_runs(store, experiment="cxrflow", data_versions=["data-v1", "data-v2"])
    assert len(sel.records) == 5


def _cxrflow(*args: str, cwd: Path) -> Any:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "cxrflow.cli", "--params", str(ROOT / "params.yaml"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_cli_compare_writes_the_page_and_fails_in_one_line(
    sqlite_store: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    res = _cxrflow(
        "compare", "--tracking-uri", sqlite_store, "--data-versions", "data-v1", "data-v2",
        "--ui-url", "http://ui.test", "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "data version data-v1 -> data-v2" in res.stdout
    assert "beyond uncertainty (better)" in res.stdout
    assert (out / "compare.md").is_file() and (
        out / "compare_files" / "audit_verdicts.png"
    ).is_file()
    assert 'href="http://ui.test/#/experiments/' in (out / "compare.html").read_text()
    for args, needle in (
        (["--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"], "no MLflow tracking store"),
        (["--tracking-uri", sqlite_store, "--experiment", "nope"], "no MLflow experiment 'nope'"),
        (["--tracking-uri", sqlite_store, "--runs", "p9"], "p9: no MLflow run of that id"),
    ):
        res = _cxrflow("compare", *args, cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("cxrflow: error: ") and needle in last, res.stderr
        assert "Traceback" not in res.stderr
    assert not (tmp_path / "none.db").exists()  # a read-only command creates no store
