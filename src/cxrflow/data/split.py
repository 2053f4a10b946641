"""Undersampling and patient-grouped train / validation / test splits.

Pure functions over the manifest DataFrame. The split is grouped by ``patient_id`` so that no
patient contributes images to two splits (the paper does not say it did this; leaking patients
across splits inflates test scores). The report also exposes the *source shortcut*: in the
paper's Dataset_1 every normal and bacterial image is pediatric (Kermany) and every COVID image
adult (Cohen), so a classifier can score well by telling sources apart. Which labels of which
source enter each dataset, and which population a source was drawn from, are the sources' own
attributes (:class:`cxrflow.data.sources.Source`).

Only ``study`` rows of the manifest ever enter a dataset. ``control`` rows (same-source images
kept for the shortcut audit, e.g. Cohen's adult non-COVID X-rays) are set aside by
:func:`select_controls`; a model never trains, validates or is tested on them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrflow.config import DATASETS, MIXED_DATASET, SplitParams
from cxrflow.data.manifest import SPLIT_COLUMNS, SPLITS, write_table
from cxrflow.data.sources import CONTROL, STUDY, get_source
from cxrflow.data.unionfind import UnionFind
from cxrflow.jsonio import write_json_atomic

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SPLIT_REPORT_FILE = "split_report.json"


@dataclass(frozen=True)
class SplitReport:
    """What the split step did, per dataset."""

    counts: dict[str, dict[str, dict[str, int]]]  # dataset -> split -> label -> n
    patients: dict[str, dict[str, int]]  # dataset -> split -> n patients
    shortfalls: dict[str, dict[str, int]]  # dataset -> label -> missing images
    confounds: dict[str, list[str]] = field(default_factory=dict)  # dataset -> warnings
    crosstabs: dict[str, dict[str, int]] = field(default_factory=dict)  # "<ds>.<attr>" -> counts
    controls: dict[str, int] = field(default_factory=dict)  # "<source>|<label>|<finding>" -> n

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {
            "counts": self.counts,
            "patients": self.patients,
            "shortfalls": self.shortfalls,
            "confounds": self.confounds,
            "crosstabs": self.crosstabs,
            "controls": self.controls,
        }


def _cohort(manifest: pd.DataFrame) -> pd.Series:
    """The ``cohort`` column (all ``study`` for a manifest written before controls existed)."""
    import pandas as pd

    if "cohort" in manifest.columns:
        return manifest["cohort"]
    return pd.Series(STUDY, index=manifest.index)


def select_dataset_rows(manifest: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Rows eligible for a dataset, before undersampling.

    Each source says which of its labels a dataset takes (:attr:`Source.datasets`): the paper's
    Dataset_0 is Kermany's normal / bacterial / viral, Dataset_1 Kermany's normal / bacterial
    plus Cohen's COVID-19. Only ``study`` rows are eligible: a control row never enters a
    dataset, whatever its label.

    Raises:
        ValueError: A manifest source that is not registered.
    """
    manifest = manifest[(_cohort(manifest) == STUDY).to_numpy()]
    classes = set(DATASETS[dataset])
    takes = {
        name: classes & set(get_source(name).datasets.get(dataset, ()))
        for name in manifest["source"].unique()
    }
    keep = np.array(
        [
            label in takes[source]
            for source, label in zip(manifest["source"], manifest["label"], strict=True)
        ],
        dtype=bool,
    )
    rows = manifest[keep]
    return rows.sort_values("image_id").reset_index(drop=True)


def select_controls(manifest: pd.DataFrame, exclude_patients: Iterable[str] = ()) -> pd.DataFrame:
    """The manifest's ``control`` rows, sorted by ``image_id``: the audit's same-source controls.

    Some control patients also have study images (Cohen files a patient's pre-COVID "No
    Finding" film next to their COVID-19 films): pass the patients a model trained or validated
    on as ``exclude_patients`` (e.g. the non-test rows of its split table), so that the model
    is never judged on another film of a person it has learnt.

    Args:
        manifest: The ingest manifest (``cohort`` and ``finding`` columns; a manifest without
            ``cohort`` has no controls).
        exclude_patients: Patient ids whose control rows are left out.

    Returns:
        Control rows with every manifest column (``label`` is the control's label, ``finding``
        the source's raw finding, ``patient_id`` the bootstrap group).
    """
    rows = manifest[(_cohort(manifest) == CONTROL).to_numpy()]
    left_out = rows["patient_id"].isin(set(exclude_patients))
    if left_out.any():
        log.info(
            "controls: %d rows of %d patients the model has seen are left out",
            int(left_out.sum()),
            rows.loc[left_out, "patient_id"].nunique(),
        )
    return rows[~left_out.to_numpy()].sort_values("image_id").reset_index(drop=True)


def undersample(
    rows: pd.DataFrame, targets: dict[str, int | None], seed: int
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Randomly keep at most ``targets[label]`` images per label (``None`` keeps all).

    Returns the kept rows and, per label, how many images were missing to reach the target
    (a shortfall is logged as a warning, never hidden).
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    parts = []
    shortfalls: dict[str, int] = {}
    for label in sorted(targets):
        sub = rows[rows["label"] == label].sort_values("image_id")
        target = targets[label]
        if target is None or len(sub) <= target:
            if target is not None and len(sub) < target:
                shortfalls[label] = target - len(sub)
                log.warning(
                    "undersample: class %s has %d images, fewer than the %d configured; "
                    "keeping all of them",
                    label,
                    len(sub),
                    target,
                )
            parts.append(sub)
            continue
        idx = np.sort(rng.choice(len(sub), size=target, replace=False))
        parts.append(sub.iloc[idx])
    out = pd.concat(parts) if parts else rows.iloc[0:0]
    return out.sort_values("image_id").reset_index(drop=True), shortfalls


def _allocate(patient_labels: pd.DataFrame, fraction: float, rng: np.random.Generator) -> set[str]:
    """Choose patients so that each primary label gets ~``fraction`` of its images."""
    chosen: set[str] = set()
    for _label, grp in patient_labels.groupby("primary", sort=True):
        order = grp.sort_values("patient_id").reset_index(drop=True)
        order = order.iloc[rng.permutation(len(order))]
        total = int(order["n"].sum())
        target = fraction * total
        acc = 0
        for taken, (pid, n) in enumerate(zip(order["patient_id"], order["n"], strict=True)):
            if acc >= target:
                break
            if len(order) > 1 and taken == len(order) - 1:
                break  # keep at least one patient of this class on the other side
            chosen.add(pid)
            acc += int(n)
    return chosen


def link_groups(patient_ids: Iterable[str], links: Iterable[Sequence[str]]) -> dict[str, str]:
    """Map each patient id to a group id: patients linked (transitively) share one group.

    Links come from ingest (one film filed under two patient ids); the group id is the
    smallest patient id of the group, so it is deterministic. Links naming an unknown patient
    are ignored.
    """
    groups: UnionFind[str] = UnionFind(patient_ids)
    for a, b in links:
        if a in groups and b in groups:
            groups.union(a, b)
    return groups.roots()


def patient_primaries(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: ``patient_id``, ``primary`` (its most frequent label; ties by
    name) and ``n`` (its images): the unit patient-grouped draws stratify on."""
    counts = rows.groupby(["patient_id", "label"]).size().reset_index(name="k")
    counts = counts.sort_values(["patient_id", "k", "label"], ascending=[True, False, True])
    primary = counts.drop_duplicates("patient_id")[["patient_id", "label"]]
    primary = primary.rename(columns={"label": "primary"})
    n = rows.groupby("patient_id").size().reset_index(name="n")
    return primary.merge(n, on="patient_id")


def grouped_split(
    rows: pd.DataFrame,
    test_fraction: float,
    val_fraction: float,
    seed: int,
    links: Iterable[Sequence[str]] = (),
) -> pd.DataFrame:
    """Assign ``split`` in {train, val, test}, grouped by patient, stratified by label.

    Each patient's *primary* label (its most frequent label; ties by name) is used for
    stratification, so patients with images of two labels (Kermany has such ``personN``) stay
    together in one split. Patients joined by ``links`` count as one patient.
    """
    rng = np.random.default_rng(seed)
    group = link_groups(rows["patient_id"].unique(), links)
    original = rows
    rows = rows.assign(patient_id=rows["patient_id"].map(group))
    patients = patient_primaries(rows)
    test = _allocate(patients, test_fraction, rng)
    rest = patients[~patients["patient_id"].isin(test)]
    val = _allocate(rest, val_fraction, rng)
    out = original.copy()
    out["split"] = "train"
    out.loc[rows["patient_id"].isin(val).to_numpy(), "split"] = "val"
    out.loc[rows["patient_id"].isin(test).to_numpy(), "split"] = "test"
    return out


def build_dataset(
    manifest: pd.DataFrame,
    dataset: str,
    params: SplitParams,
    links: Iterable[Sequence[str]] = (),
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Undersample and split one dataset. Returns the split table and the shortfalls."""
    rows = select_dataset_rows(manifest, dataset)
    classes = DATASETS[dataset]
    targets: dict[str, int | None]
    if dataset == "dataset_1":
        targets = {c: int(params.dataset_1_counts[c]) for c in classes}
    else:
        targets = {c: params.dataset_0_max_per_class for c in classes}
    kept, shortfalls = undersample(rows, targets, params.seed)
    table = grouped_split(kept, params.test_fraction, params.val_fraction, params.seed, links)
    table["dataset"] = dataset
    leaked = table.groupby("patient_id")["split"].nunique()
    if (leaked > 1).any():  # pragma: no cover - guarded by construction; GX checks it too
        raise AssertionError(f"patients in two splits: {list(leaked[leaked > 1].index[:5])}")
    return table.reindex(columns=list(SPLIT_COLUMNS)), shortfalls


def mixed_controls(
    manifest: pd.DataFrame, dataset_1: pd.DataFrame, share: float, seed: int
) -> pd.DataFrame:
    """The control rows that join Dataset_1_mixed: a patient-grouped ``share`` of each label.

    Eligible: control rows labelled with a class of Dataset_1 other than COVID-19 (Cohen's
    adult normal and bacterial X-rays; viral controls have no class there), of patients with no
    image in ``dataset_1`` (a patient filed with both a COVID-19 film and a "No Finding" one
    stays a control, so no patient reaches two splits). Patients are drawn per label, by the
    patient's most frequent label, with ``seed``.

    Returns:
        The chosen rows (``cohort`` still ``control``), sorted by ``image_id``.
    """
    classes = set(DATASETS[MIXED_DATASET]) - {"covid"}
    rows = select_controls(manifest, exclude_patients=dataset_1["patient_id"])
    rows = rows[rows["label"].isin(classes).to_numpy()]
    if rows.empty or share <= 0.0:
        return rows.iloc[0:0]
    patients = patient_primaries(rows)
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for _label, grp in patients.groupby("primary", sort=True):
        order = grp.sort_values("patient_id").reset_index(drop=True)
        order = order.iloc[rng.permutation(len(order))]
        chosen |= set(order["patient_id"].iloc[: round(share * len(order))])
    picked = rows[rows["patient_id"].isin(chosen).to_numpy()]
    return picked.sort_values("image_id").reset_index(drop=True)


def build_mixed_dataset(
    manifest: pd.DataFrame,
    dataset_1: pd.DataFrame,
    params: SplitParams,
    links: Iterable[Sequence[str]] = (),
) -> pd.DataFrame:
    """Dataset_1_mixed: Dataset_1's split table unchanged, plus :func:`mixed_controls` split
    by patient with the same fractions and seed.

    Dataset_1's rows keep their splits, so its test images are a subset of this dataset's and
    the two can be compared on them; the added adults get a train / val / test split of their
    own. The rest of the controls stay audit controls (the audit leaves out the control
    patients a model trained or validated on, :func:`cxrflow.audit.control_arrays`).
    """
    import pandas as pd

    added = mixed_controls(manifest, dataset_1, params.mixed_control_share, params.seed)
    parts = [dataset_1.drop(columns=["dataset"], errors="ignore")]
    if len(added):
        parts.append(
            grouped_split(added, params.test_fraction, params.val_fraction, params.seed, links)
        )
    table = pd.concat(parts).sort_values("image_id").reset_index(drop=True)
    table["dataset"] = MIXED_DATASET
    leaked = table.groupby("patient_id")["split"].nunique()
    if (leaked > 1).any():  # pragma: no cover - guarded by construction
        raise AssertionError(f"patients in two splits: {list(leaked[leaked > 1].index[:5])}")
    return table.reindex(columns=list(SPLIT_COLUMNS))


CONFOUND_ATTRIBUTES: tuple[str, ...] = ("source", "age_group", "population")
"""Attributes a label must not be determined by; ``population`` is the source's."""


def detect_confounds(table: pd.DataFrame) -> tuple[list[str], dict[str, dict[str, int]]]:
    """Warnings where a label is fully determined by an attribute (shortcut risk).

    Checks :data:`CONFOUND_ATTRIBUTES`: the manifest's ``source`` and ``age_group``, and the
    ``population`` each source was drawn from (:attr:`Source.population`), which exposes the
    child/adult shortcut even where ages are unknown per image.

    Returns:
        The warnings, and per attribute the ``"<label>|<value>" -> rows`` cross-tabulation.
    """
    table = table.assign(
        population=table["source"].map(
            {name: get_source(name).population for name in table["source"].unique()}
        )
    )
    warnings: list[str] = []
    crosstabs: dict[str, dict[str, int]] = {}
    for attr in CONFOUND_ATTRIBUTES:
        ct = table.groupby(["label", attr]).size()
        crosstabs[attr] = {f"{lab}|{val}": int(n) for (lab, val), n in ct.items()}
        per_label = table.groupby("label")[attr].nunique()
        values = table.groupby(attr)["label"].nunique()
        if len(per_label) > 1 and (per_label == 1).all() and table[attr].nunique() > 1:
            mapping = table.groupby("label")[attr].first().to_dict()
            shared = [v for v, k in values.items() if k > 1]
            msg = (
                f"every label comes from a single {attr} ({mapping})"
                + (f"; only {shared} mixes labels" if shared else "")
                + f": a model can separate classes by {attr} alone (shortcut learning)"
            )
            warnings.append(msg)
            log.warning("confound: %s", msg)
    return warnings, crosstabs


def split_manifest(
    manifest: pd.DataFrame, params: SplitParams, links: Iterable[Sequence[str]] = ()
) -> tuple[dict[str, pd.DataFrame], SplitReport]:
    """Build the split tables of every dataset (:data:`cxrflow.config.DATASETS`).

    Args:
        manifest: The ingest manifest.
        params: Split parameters.
        links: Patient-id pairs to keep together (ingest's ``patient_links``).

    Returns:
        ``{"dataset_0": table, "dataset_1": table, "dataset_1_mixed": table}`` (study rows;
        the mixed dataset adds control rows, :func:`build_mixed_dataset`) and a
        :class:`SplitReport` (its ``controls`` counts what :func:`select_controls` sets aside).
    """
    tables: dict[str, pd.DataFrame] = {}
    counts: dict[str, dict[str, dict[str, int]]] = {}
    patients: dict[str, dict[str, int]] = {}
    shortfalls: dict[str, dict[str, int]] = {}
    confounds: dict[str, list[str]] = {}
    crosstabs: dict[str, dict[str, int]] = {}
    controls = select_controls(manifest)
    if len(controls):
        by = controls.groupby(["source", "label", "finding"]).size()
        control_counts = {f"{s}|{lab}|{f}": int(n) for (s, lab, f), n in by.items()}
    else:
        control_counts = {}
    for dataset in DATASETS:
        short: dict[str, int] = {}
        if dataset == MIXED_DATASET:
            table = build_mixed_dataset(manifest, tables["dataset_1"], params, links)
        else:
            table, short = build_dataset(manifest, dataset, params, links)
        tables[dataset] = table
        shortfalls[dataset] = short
        counts[dataset] = {
            s: {
                c: int(((table["split"] == s) & (table["label"] == c)).sum())
                for c in DATASETS[dataset]
            }
            for s in SPLITS
        }
        patients[dataset] = {
            s: int(table.loc[table["split"] == s, "patient_id"].nunique()) for s in SPLITS
        }
        confounds[dataset], ct = detect_confounds(table)
        for attr, tab in ct.items():
            crosstabs[f"{dataset}.{attr}"] = dict(tab)
    return tables, SplitReport(counts, patients, shortfalls, confounds, crosstabs, control_counts)


def read_split_table(splits_dir: str | Path, dataset: str) -> pd.DataFrame:
    """Read ``<dataset>.csv`` from a splits directory."""
    import pandas as pd

    path = Path(splits_dir) / f"{dataset}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split table not found (run `cxrflow split` first)")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df["width"] = df["width"].astype(int)
    df["height"] = df["height"].astype(int)
    return df


def write_splits(tables: dict[str, pd.DataFrame], report: SplitReport, out_dir: str | Path) -> None:
    """Write ``<dataset>.csv`` per dataset and ``split_report.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        write_table(table, out / f"{name}.csv", SPLIT_COLUMNS)
    write_json_atomic(out / SPLIT_REPORT_FILE, report.to_dict())
