"""Synthetic "phantom" chest X-rays written in the real Kermany and Cohen folder layouts.

The phantom lets every step run (and be tested) without the real data. It is deliberately
faithful to the *structure* of the real sources, traps included:

- Kermany (the paper's Dataset_0 and Dataset_1's normal/bacterial classes):
  ``kermany/chest_xray/{train,test}/NORMAL/[NORMAL2-]IM-xxxx-000k.jpeg`` and
  ``kermany/chest_xray/{train,test}/PNEUMONIA/personN_{bacteria,virus}_M.jpeg``. A patient stays in
  one of train/test. Every Kermany phantom is *pediatric*: a small, round thorax that fills less
  of the frame, a relatively large heart and wide upper mediastinum (thymus), horizontal ribs,
  faint clavicles, arms often raised, bowel gas below the diaphragm, and usually a lead side
  marker burned in near a corner (as in the real Kermany films).
- Cohen (Dataset_1's COVID-19 class): ``cohen/metadata.csv`` with the real 2020-06 columns (and
  the real unnamed trailing column) plus ``cohen/images/``. Every Cohen phantom is *adult*: a
  large, tall thorax, smaller heart, sloping ribs, prominent clavicles; a quarter carry burned-in
  annotations (arrows, panel letters) like journal figures. Trap rows exercise ingest filters:
  COVID-19 lateral views (``view`` = ``L``), COVID-19 CT slices and other findings. The other
  findings are frontal X-rays of adults (``SynthParams.control_fraction`` patients per COVID-19
  patient, at least 2) cycling through :data:`COHEN_OTHER_FINDINGS`: ``Streptococcus``
  (drawn as bacterial), ``No Finding`` (normal) and ``SARS`` (viral) become the audit's
  same-source *controls* at ingest; ``Pneumocystis`` (drawn as viral) stays excluded.

So the real *source shortcut* exists in the phantom too: a classifier can tell Kermany from Cohen
(child from adult, clean film from annotated figure) without looking at the lungs. Two options
exist for testing the shortcut audit (:mod:`cxrflow.audit`): ``source_shortcut=False`` makes
each patient's age group a coin flip, draws every frontal view (Kermany's too) from Cohen's
PA / AP Supine / AP proportions, both from a seed stream of the patient's own, and annotates no
image, so the sources no longer differ in anatomy, view or labels; ``planted_marker=<label>`` burns a bright square into the
upper-right corner of every image of that label (see :func:`burn_marker`). With the defaults
(shortcut on, no marker) every byte is what earlier versions wrote, except ``PHANTOM.md``,
which lists every parameter.

The images are drawn by :mod:`cxrflow.data.phantom_render` (anatomy, class signal, views);
this module writes them in the two layouts with their names and metadata.

Everything is derived from ``SynthParams.seed``: the same params give byte-identical files.
Each patient draws from its own generator (``SeedSequence(seed, spawn_key=(stream, index))``),
so a patient's images do not depend on iteration order or on how many other patients exist.
Images are written one at a time, so memory stays flat however many are generated.
"""

from __future__ import annotations

import csv
import datetime as dt
import importlib.metadata
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxrflow.config import ALL_LABELS, SynthParams, params_to_dict
from cxrflow.data.phantom_render import render_radiograph, sample_traits

COHEN_COLUMNS: tuple[str, ...] = (
    "patientid",
    "offset",
    "sex",
    "age",
    "finding",
    "survival",
    "intubated",
    "intubation_present",
    "went_icu",
    "in_icu",
    "needed_supplemental_O2",
    "extubated",
    "temperature",
    "pO2_saturation",
    "leukocyte_count",
    "neutrophil_count",
    "lymphocyte_count",
    "view",
    "modality",
    "date",
    "location",
    "folder",
    "filename",
    "doi",
    "url",
    "license",
    "clinical_notes",
    "other_notes",
)
"""Named columns of Cohen's 2020-06 ``metadata.csv``; the real header adds one unnamed column."""

KERMANY_SUBDIR = Path("kermany") / "chest_xray"
COHEN_SUBDIR = Path("cohen")
PHANTOM_NOTE = "PHANTOM.md"
PHANTOM_CLINICAL_NOTE = "PHANTOM synthetic image, not a real patient"
PHANTOM_LICENSE = "CC0 (synthetic phantom)"
COHEN_OTHER_FINDINGS: tuple[str, ...] = ("Streptococcus", "No Finding", "SARS", "Pneumocystis")
"""Non-COVID findings of the trap rows, and the phantom class each is drawn as."""
_OTHER_FINDING_LABEL = {
    "Streptococcus": "bacterial",
    "No Finding": "normal",
    "SARS": "viral",
    "Pneumocystis": "viral",
}

JPEG_QUALITY = 90
PNG_COMPRESS_LEVEL = 1
KERMANY_TEST_FRACTION = 0.1
COHEN_ANNOTATION_PROB = 0.25
_FRONTAL_VIEWS: tuple[str, ...] = ("PA", "AP Supine", "AP")
_FRONTAL_VIEW_P: tuple[float, ...] = (0.52, 0.28, 0.20)  # the real 2020-06 proportions
_COHEN_EXTS: tuple[str, ...] = ("jpeg", "jpg", "png")
_COHEN_EXT_P: tuple[float, ...] = (0.45, 0.35, 0.20)
_BASE_DATE = dt.date(2020, 1, 20)

# SeedSequence spawn keys: one stream per kind of patient/image, never reordered.
_STREAM = {
    "normal": 0,
    "bacterial": 1,
    "viral": 2,
    "covid": 3,
    "other": 4,
    "ct": 5,
    "lateral": 6,
    "age": 7,  # source_shortcut=False: the age-group coin of a patient of another stream
}
MARKER_ROWS: tuple[float, float] = (0.04, 0.14)
MARKER_COLS: tuple[float, float] = (0.86, 0.96)
"""Where :func:`burn_marker` puts its square (rows, columns), as fractions of the height and
width: the upper-right corner, mostly background, outside the central box the audit masks at
any ``mask_fraction`` up to 0.7."""


@dataclass(frozen=True)
class PhantomSummary:
    """What :func:`generate_phantom` wrote.

    Attributes:
        kermany_dir: Root holding ``train/`` and ``test/`` (``<out>/kermany/chest_xray``).
        cohen_dir: Root holding ``metadata.csv`` and ``images/`` (``<out>/cohen``).
        counts: Images written per label (``normal``, ``bacterial``, ``viral``, ``covid``: COVID-19
            frontal X-rays only) plus ``cohen_other`` (lateral, CT and other-finding images).
    """

    kermany_dir: Path
    cohen_dir: Path
    counts: dict[str, int]

    @property
    def sources(self) -> dict[str, list[Path]]:
        """The roots in ``data.sources`` shape, for :func:`cxrflow.data.ingest.ingest`."""
        return {"kermany": [self.kermany_dir], "cohen": [self.cohen_dir]}


def patient_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAM[stream], index)))


def sample_size(rng: np.random.Generator, p: SynthParams) -> tuple[int, int]:
    h = int(rng.integers(p.min_side, p.max_side + 1))
    w = round(h * rng.uniform(0.8, 1.25))
    return h, int(min(max(w, p.min_side), p.max_side))


def jitter_size(rng: np.random.Generator, size: tuple[int, int], p: SynthParams) -> tuple[int, int]:
    f = rng.uniform(0.95, 1.05)
    h, w = (int(min(max(round(s * f), p.min_side), p.max_side)) for s in size)
    return h, w


def save_image(img: np.ndarray, path: Path) -> None:
    pil = Image.fromarray(img)
    if path.suffix.lower() == ".png":
        pil.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        pil.save(path, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)


@dataclass
class _Patient:
    label: str
    rng: np.random.Generator
    traits: dict[str, Any]
    size: tuple[int, int]
    n_images: int
    free: np.random.Generator | None = None  # source_shortcut=False: age coin, then views

    def view(self, default: str) -> str:
        """``default``, or without the source shortcut a frontal view drawn as Cohen's are."""
        if self.free is None:
            return default
        return _FRONTAL_VIEWS[int(self.free.choice(len(_FRONTAL_VIEWS), p=_FRONTAL_VIEW_P))]

    def frontal_traits(self) -> dict[str, Any]:
        """The patient's traits for one Kermany image (its view drawn by :meth:`view`)."""
        return self.traits if self.free is None else {**self.traits, "view": self.view("PA")}


def burn_marker(img: np.ndarray) -> np.ndarray:
    """``img`` with a white square at :data:`MARKER_ROWS` x :data:`MARKER_COLS` (at least
    2 px a side): the planted shortcut of ``SynthParams.planted_marker``."""
    h, w = img.shape
    r0, r1 = (round(f * h) for f in MARKER_ROWS)
    c0, c1 = (round(f * w) for f in MARKER_COLS)
    out = img.copy()
    out[r0 : max(r1, r0 + 2), c0 : max(c1, c0 + 2)] = 255
    return out


def _render(
    label: str,
    rng: np.random.Generator,
    size: tuple[int, int],
    traits: dict[str, Any],
    p: SynthParams,
) -> np.ndarray:
    img = render_radiograph(label, rng, size, traits)
    return burn_marker(img) if label == p.planted_marker else img


def _plan_patient(
    seed: int, stream: str, index: int, label: str, p: SynthParams, adult: bool
) -> _Patient:
    free = None
    if not p.source_shortcut:  # a generator of its own, so the patient's other draws stay put
        coin = np.random.SeedSequence(seed, spawn_key=(_STREAM["age"], _STREAM[stream], index))
        free = np.random.default_rng(coin)
        adult = bool(free.uniform() < 0.5)
    rng = patient_rng(seed, stream, index)
    traits = sample_traits(label, rng, "adult" if adult else "pediatric")
    size = sample_size(rng, p)
    n_images = int(rng.integers(1, p.images_per_patient_max + 1))
    return _Patient(label, rng, traits, size, n_images, free)


def _test_patients(rng: np.random.Generator, n: int) -> set[int]:
    k = max(1, round(KERMANY_TEST_FRACTION * n)) if n >= 2 else 0
    return {int(i) for i in rng.choice(n, size=k, replace=False)}


def _write_kermany(root: Path, p: SynthParams, rng: np.random.Generator) -> dict[str, int]:
    n = p.patients_per_class
    counts = {"normal": 0, "bacterial": 0, "viral": 0}
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)

    # Normals: IM-xxxx (or NORMAL2-IM-xxxx) is the patient, -0001, -0002 ... the images.
    im_numbers = rng.choice(np.arange(1, max(10_000, 3 * n)), size=n, replace=False)
    normal2 = rng.uniform(size=n) < 0.5
    test = _test_patients(rng, n)
    for i in range(n):
        pat = _plan_patient(p.seed, "normal", i, "normal", p, adult=False)
        split = "test" if i in test else "train"
        stem = f"{'NORMAL2-' if normal2[i] else ''}IM-{int(im_numbers[i]):04d}"
        for k in range(pat.n_images):
            size = jitter_size(pat.rng, pat.size, p)
            img = _render("normal", pat.rng, size, pat.frontal_traits(), p)
            save_image(img, root / split / "NORMAL" / f"{stem}-{k + 1:04d}.jpeg")
            counts["normal"] += 1

    # Pneumonia: personN is the patient; M runs over all images of a kind, in person order.
    persons = rng.choice(np.arange(1, max(2_000, 4 * n)), size=2 * n, replace=False)
    for j, (label, kind) in enumerate((("bacterial", "bacteria"), ("viral", "virus"))):
        numbers = persons[j * n : (j + 1) * n]
        test = _test_patients(rng, n)
        running = 0
        for i in np.argsort(numbers, kind="stable"):
            i = int(i)
            pat = _plan_patient(p.seed, label, i, label, p, adult=False)
            split = "test" if i in test else "train"
            for _ in range(pat.n_images):
                running += 1
                size = jitter_size(pat.rng, pat.size, p)
                img = _render(label, pat.rng, size, pat.frontal_traits(), p)
                name = f"person{int(numbers[i])}_{kind}_{running}.jpeg"
                save_image(img, root / split / "PNEUMONIA" / name)
                counts[label] += 1
    return counts


def _cohen_date(base_days: int, offset: int) -> str:
    d = _BASE_DATE + dt.timedelta(days=base_days + offset)
    return f"{d:%B} {d.day}, {d.year}"


def _yn(rng: np.random.Generator) -> str:
    return str(rng.choice(["Y", "N", ""], p=[0.3, 0.5, 0.2]))


def _cohen_row(
    fixed: dict[str, str], base_days: int, offset: int, view: str, modality: str, name: str
) -> list[str]:
    """One ``metadata.csv`` row; ``date`` follows ``offset`` (days since the first image)."""
    values = {
        **fixed,
        "offset": str(offset),
        "view": view,
        "modality": modality,
        "date": _cohen_date(base_days, offset),
        "filename": name,
    }
    return [values.get(c, "") for c in COHEN_COLUMNS] + [""]  # the real unnamed last column


def _write_cohen(root: Path, p: SynthParams, rng: np.random.Generator) -> dict[str, int]:
    n = p.patients_per_class
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    counts = {"covid": 0, "cohen_other": 0}

    # Patients: n COVID-19, then a few other findings; planned again (same draws) when written.
    n_other = max(2, round(p.control_fraction * n))
    findings = ["COVID-19"] * n + [
        COHEN_OTHER_FINDINGS[i % len(COHEN_OTHER_FINDINGS)] for i in range(n_other)
    ]

    def plan(idx: int) -> _Patient:
        if idx < n:
            return _plan_patient(p.seed, "covid", idx, "covid", p, adult=True)
        label = _OTHER_FINDING_LABEL[findings[idx]]
        return _plan_patient(p.seed, "other", idx - n, label, p, adult=True)

    # Trap rows are chosen among all COVID images, so count those first.
    first_image = np.cumsum([0] + [plan(i).n_images for i in range(n)])
    n_covid_images = int(first_image[-1])
    n_lateral = 0
    if p.covid_lateral_fraction > 0:
        n_lateral = min(n_covid_images, max(1, round(p.covid_lateral_fraction * n_covid_images)))
    lateral_at = {int(k) for k in rng.choice(n_covid_images, size=n_lateral, replace=False)}
    n_ct = max(2, round(0.05 * n_covid_images))
    ct_per_patient = np.bincount(rng.choice(n, size=n_ct), minlength=n)
    patient_ids = rng.permutation(len(findings)) + 1
    views = rng.choice(len(_FRONTAL_VIEWS), size=n_covid_images, p=_FRONTAL_VIEW_P)
    lateral_seq = ct_seq = 0

    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([*COHEN_COLUMNS, ""])
        for idx in (int(i) for i in np.argsort(patient_ids, kind="stable")):
            finding, pat = findings[idx], plan(idx)
            pid = int(patient_ids[idx])
            prng = pat.rng
            fixed = {
                "patientid": str(pid),
                "sex": pat.traits["sex"],
                "age": str(pat.traits["age"]),
                "finding": finding,
                **{c: _yn(prng) for c in COHEN_COLUMNS[5:12]},  # survival .. extubated
                "location": f"Phantom General Hospital {int(prng.integers(1, 40))}",
                "folder": "images",
                "license": PHANTOM_LICENSE,
                "clinical_notes": PHANTOM_CLINICAL_NOTE,
            }
            base_days = int(prng.integers(0, 150))
            names = (f"{pid:06d}-{k}" for k in range(1, 1_000_000))
            is_covid = idx < n
            offset = 0
            for k in range(pat.n_images):
                offset += int(prng.integers(2, 6)) if k else 0
                if is_covid:
                    view = _FRONTAL_VIEWS[int(views[first_image[idx] + k])]
                else:
                    view = str(prng.choice(["PA", "AP"]))
                view = pat.view(view)
                name = f"{next(names)}.{prng.choice(_COHEN_EXTS, p=_COHEN_EXT_P)}"
                traits = {
                    **pat.traits,
                    "view": view,
                    "annotation": bool(prng.uniform() < COHEN_ANNOTATION_PROB)
                    and p.source_shortcut,
                }
                size = jitter_size(prng, pat.size, p)
                save_image(_render(pat.label, prng, size, traits, p), images / name)
                writer.writerow(_cohen_row(fixed, base_days, offset, view, "X-ray", name))
                counts["covid" if is_covid else "cohen_other"] += 1
                if is_covid and int(first_image[idx]) + k in lateral_at:
                    lrng = patient_rng(p.seed, "lateral", lateral_seq)
                    lateral_seq += 1
                    name = f"{next(names)}.jpg"
                    ltraits = {**pat.traits, "view": "L"}
                    save_image(_render("covid", lrng, pat.size, ltraits, p), images / name)
                    writer.writerow(_cohen_row(fixed, base_days, offset, "L", "X-ray", name))
                    counts["cohen_other"] += 1
            for _ in range(int(ct_per_patient[idx]) if is_covid else 0):
                crng = patient_rng(p.seed, "ct", ct_seq)
                ct_seq += 1
                side = min(pat.size)
                name = f"{next(names)}.png"
                ctraits = {**pat.traits, "modality": "CT", "view": "Axial"}
                save_image(_render("covid", crng, (side, side), ctraits, p), images / name)
                writer.writerow(_cohen_row(fixed, base_days, offset, "Axial", "CT", name))
                counts["cohen_other"] += 1
    return counts


def cxrflow_version() -> str:
    try:
        return importlib.metadata.version("cxrflow")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        return "unknown"


def _phantom_note(p: SynthParams, counts: dict[str, int] | None) -> str:
    lines = [
        "# PHANTOM DATA: synthetic, not real patients",
        "",
        "Every image and every row of `cohen/metadata.csv` under this folder is synthetic,",
        f"generated by cxrflow {cxrflow_version()} (`cxrflow.data.synthetic.generate_phantom`).",
        "No image shows a real patient; none may be used for any clinical purpose.",
        "",
        "## Parameters",
        "",
        *[f"- `{k}`: {v}" for k, v in params_to_dict(p).items()],
        "",
        f"Seed {p.seed}: the same parameters and seed give byte-identical files.",
        "",
        "## Layout (the real sources' layouts)",
        "",
        "- `kermany/chest_xray/{train,test}/NORMAL/[NORMAL2-]IM-xxxx-000k.jpeg`,",
        "  `kermany/chest_xray/{train,test}/PNEUMONIA/personN_{bacteria,virus}_M.jpeg`",
        "- `cohen/metadata.csv` (Cohen 2020-06 columns) and `cohen/images/`",
        "",
        "## Built-in confounds, as in the real data",
        "",
        *(
            [
                "- Kermany phantoms are pediatric (small round thorax, large heart, horizontal ribs,",
                "  usually a burned-in side marker); Cohen phantoms are adult and a quarter carry",
                "  burned-in arrows or panel letters. A classifier can separate the sources (and so",
                "  tell COVID-19 from the other classes) without looking at the lungs.",
            ]
            if p.source_shortcut
            else [
                "- None by anatomy (`source_shortcut: false`): each patient's age group is a coin",
                "  flip and no image is annotated.",
            ]
        ),
        "- Several images per patient; Cohen trap rows: lateral views, CT slices, other findings.",
        "",
        *(
            [
                f"Planted shortcut: every `{p.planted_marker}` image has a white square burned into",
                "its upper-right corner.",
                "",
            ]
            if p.planted_marker is not None
            else []
        ),
    ]
    if counts is None:
        lines += ["Status: generation in progress (incomplete).", ""]
    else:
        lines += ["## Images written", ""]
        lines += [f"- {k}: {v}" for k, v in counts.items()]
        lines.append("")
    return "\n".join(lines)


def _prepare_out_dir(out: Path) -> None:
    owned = [out / KERMANY_SUBDIR.parts[0], out / COHEN_SUBDIR]
    present = [d for d in owned if d.exists()]
    if present and not (out / PHANTOM_NOTE).is_file():
        raise FileExistsError(
            f"{out}: {', '.join(d.name for d in present)} exist(s) without {PHANTOM_NOTE}; "
            "refusing to overwrite what may be real data"
        )
    for d in present:
        shutil.rmtree(d)
    out.mkdir(parents=True, exist_ok=True)


def is_phantom(root: str | Path) -> bool:
    """Whether a source root (or one of its two parents) carries the ``PHANTOM.md`` label."""
    p = Path(root)
    return any((d / PHANTOM_NOTE).is_file() for d in (p, p.parent, p.parent.parent))


def generate_phantom(out_dir: str | Path, params: SynthParams) -> PhantomSummary:
    """Write phantom Kermany and Cohen datasets, in their real layouts, under ``out_dir``.

    A previous phantom in ``out_dir`` (recognised by its ``PHANTOM.md``) is replaced; anything
    else named ``kermany/`` or ``cohen/`` there is left alone and raises.

    Args:
        out_dir: Output folder; ``kermany/``, ``cohen/`` and ``PHANTOM.md`` are written there.
        params: Generator settings; ``params.seed`` determines every byte written.

    Returns:
        Where each source's root is and how many images were written per label.

    Raises:
        FileExistsError: ``out_dir`` holds ``kermany/`` or ``cohen/`` but no ``PHANTOM.md``.
    """
    out = Path(out_dir)
    _prepare_out_dir(out)
    note = out / PHANTOM_NOTE
    note.write_text(_phantom_note(params, None), encoding="utf-8")
    rng = np.random.default_rng(params.seed)
    kermany_dir = out / KERMANY_SUBDIR
    cohen_dir = out / COHEN_SUBDIR
    counts = _write_kermany(kermany_dir, params, rng)
    counts.update(_write_cohen(cohen_dir, params, rng))
    counts = {k: counts[k] for k in (*ALL_LABELS, "cohen_other")}
    note.write_text(_phantom_note(params, counts), encoding="utf-8")
    # a copy inside each source tree, so the label travels when only those trees are versioned
    for tree in (out / Path(KERMANY_SUBDIR).parts[0], cohen_dir):
        shutil.copyfile(note, tree / PHANTOM_NOTE)
    return PhantomSummary(kermany_dir=kermany_dir, cohen_dir=cohen_dir, counts=counts)
