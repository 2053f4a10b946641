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
  COVID-19 lateral views (``view`` = ``L``), COVID-19 CT slices and other findings.

So the real *source shortcut* exists in the phantom too: a classifier can tell Kermany from Cohen
(child from adult, clean film from annotated figure) without looking at the lungs.

Class signal follows the radiology, with per-image severity from mild to severe:

- normal: clear lung fields (vascular markings only);
- bacterial: dense, mottled lobar consolidation confined to one lobe of one lung;
- viral: bilateral, perihilar, reticular/streaky interstitial pattern;
- covid: bilateral, peripheral, lower-zone ground-glass opacities (hazy, patchy) with a faint
  reticular component, i.e. related to viral, which is what makes viral-to-covid transfer help.

Everything is derived from ``SynthParams.seed``: the same params give byte-identical files.
Each patient draws from its own generator (``SeedSequence(seed, spawn_key=(stream, index))``),
so a patient's images do not depend on iteration order or on how many other patients exist.
Images are written one at a time, so memory stays flat however many are generated.
"""

from __future__ import annotations

import csv
import datetime as dt
import importlib.metadata
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxrflow.config import ALL_LABELS, SynthParams

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

RENDER_SIDE = 144
"""Longest side at which anatomy is rendered before resizing to the requested size."""
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
}


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


# ---------------------------------------------------------------------------------------------
# Rendering


def _smoothstep(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0.0, 1.0)
    return v * v * (3.0 - 2.0 * v)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: float) -> np.ndarray:
    """Band-limited noise (about ``cells`` features across the longer side), unit-ish variance."""
    h, w = shape
    scale = cells / max(h, w)
    gh, gw = max(2, round(h * scale) + 2), max(2, round(w * scale) + 2)
    small = rng.standard_normal((gh, gw)).astype(np.float32)
    big = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32)


def _ridges(noise: np.ndarray, width: float) -> np.ndarray:
    """Thin lines along the zero contours of smooth noise: a reticular (net-like) pattern."""
    return np.exp(-np.square(noise / width))


def _soft_ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float, edge: float
) -> np.ndarray:
    r = np.sqrt(np.square((x - cx) / rx) + np.square((y - cy) / ry))
    return np.clip((1.0 - r) / edge, 0.0, 1.0)


# Per-age-group body traits: uniform ranges (drawn in this order), side-marker probability and
# age range. Children: smaller, rounder thorax, higher lungs, wide mediastinum, flat ribs.
_BODY: dict[str, tuple[dict[str, tuple[float, float]], float, tuple[int, int]]] = {
    "adult": (
        {
            "thorax_w": (0.78, 0.92),
            "lung_h": (0.58, 0.70),
            "lung_top": (0.06, 0.13),
            "med_w": (0.04, 0.06),
            "ctr": (0.40, 0.50),
            "heart_shift": (0.03, 0.07),
            "rib_curv": (1.0, 1.6),
            "rib_amp": (0.08, 0.13),
            "clav_amp": (0.08, 0.14),
            "wall": (0.03, 0.05),
        },
        0.1,
        (30, 86),
    ),
    "pediatric": (
        {
            "thorax_w": (0.72, 0.84),
            "lung_h": (0.44, 0.54),
            "lung_top": (0.12, 0.20),
            "med_w": (0.055, 0.075),
            "ctr": (0.50, 0.60),
            "heart_shift": (0.02, 0.05),
            "rib_curv": (0.2, 0.6),
            "rib_amp": (0.07, 0.11),
            "clav_amp": (0.03, 0.07),
            "wall": (0.04, 0.07),
        },
        0.6,
        (1, 6),
    ),
}


def _sample_traits(
    label: str, rng: np.random.Generator, age_group: str | None = None
) -> dict[str, Any]:
    """Per-patient anatomy and acquisition settings (all in image-relative units)."""
    if age_group is None:
        age_group = "adult" if label == "covid" else "pediatric"
    if age_group not in ("adult", "pediatric"):
        raise ValueError(f"age_group must be 'adult' or 'pediatric', got {age_group!r}")
    u = rng.uniform
    t: dict[str, Any] = {"age_group": age_group, "view": "PA", "modality": "X-ray"}
    ranges, marker_p, ages = _BODY[age_group]
    t.update({name: u(lo, hi) for name, (lo, hi) in ranges.items()})
    t.update(side_marker=bool(rng.uniform() < marker_p), age=int(rng.integers(*ages)))
    t.update(
        sex=str(rng.choice(["M", "F"])),
        dome_h=u(0.10, 0.22),
        right_dome_raise=u(0.02, 0.06),
        spine_w=u(0.022, 0.032),
        body_level=u(0.55, 0.66),
        background=u(0.0, 0.25),
        lung_dark=u(0.30, 0.40),
        contrast=u(0.85, 1.2),
        brightness=u(-0.06, 0.06),
        gamma=u(0.85, 1.2),
        noise=u(0.008, 0.03),
        heel=u(-0.08, 0.08),
        position=(u(-0.1, 0.1), u(-0.1, 0.1)),
        zoom=u(0.85, 1.3) if age_group == "adult" else u(0.95, 1.3),
        arms_up=bool(rng.uniform() < (0.15 if age_group == "adult" else 0.5)),
        severity=u(0.5, 1.0),
        bact_side=int(rng.integers(0, 2)),
        bact_lobe=str(rng.choice(["upper", "middle", "lower"])),
        bact_center=(u(-0.3, 0.3), u(-0.3, 0.3)),
        annotation=False,
    )
    return t


def _pose_grid(
    t: dict[str, Any], rng: np.random.Generator, h: int, w: int, jitter: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Image-relative coordinates in [0, 1]: the patient's position plus per-image jitter."""
    ang = rng.normal(0.0, 0.05) * jitter
    px, py = t["position"]
    sx, sy = px + rng.normal(0.0, 0.035) * jitter, py + rng.normal(0.0, 0.035) * jitter
    sc = t["zoom"] * (1.0 + rng.normal(0.0, 0.05) * jitter)
    yy = ((np.arange(h, dtype=np.float32) + 0.5) / h - 0.5 - sy)[:, None]
    xx = ((np.arange(w, dtype=np.float32) + 0.5) / w - 0.5 - sx)[None, :]
    c, s = math.cos(ang), math.sin(ang)
    x = (xx * c + yy * s) / sc + 0.5
    y = (yy * c - xx * s) / sc + 0.5
    return x.astype(np.float32), y.astype(np.float32)


def _frontal(
    t: dict[str, Any], rng: np.random.Generator, label: str, sev: float, shape: tuple[int, int]
) -> np.ndarray:
    """Attenuation map (0 air .. ~1 bone) of a frontal (PA/AP) chest radiograph."""
    h, w = shape
    x, y = _pose_grid(t, rng, h, w)
    view = t["view"]
    adult = t["age_group"] == "adult"
    tw, m = t["thorax_w"], t["med_w"]
    lh = t["lung_h"] * (0.92 if view == "AP Supine" else 1.0)  # supine: poorer inspiration
    top = t["lung_top"]
    rx = (tw / 2.0 - m) / 2.0
    ry = lh / 2.0
    cy = top + ry
    dome_h = t["dome_h"] * ry

    # Lungs: pear-shaped fields (narrow apex, wide base) cut from below by the diaphragm domes.
    lungs: list[np.ndarray] = []
    dome_y: list[np.ndarray] = []
    lat_n: list[np.ndarray] = []
    for side, cx in enumerate((0.5 - m - rx, 0.5 + m + rx)):
        dx = x - cx
        lateral = -dx if side == 0 else dx  # > 0 towards the chest wall
        yn = (y - cy) / ry
        wf = 0.62 + 0.38 * np.clip((yn + 1.0) * 0.5, 0.0, 1.0)
        rxe = np.where(lateral > 0, rx, 0.85 * rx) * wf
        r = np.square(dx / rxe) + np.where(yn > 0, np.square(np.square(yn)), np.square(yn))
        inside = np.clip((1.0 - r) / 0.1, 0.0, 1.0)
        base = cy + 0.95 * ry - (t["right_dome_raise"] if side == 0 else 0.0)
        yd = base - dome_h * (1.0 - np.clip(np.square(dx / rx), 0.0, 1.0))
        lungs.append(inside * np.clip((yd - y) / 0.01, 0.0, 1.0))
        dome_y.append(yd)
        lat_n.append(lateral / rx)
    dome_top = cy + 0.95 * ry - dome_h

    # Heart sits on the left hemidiaphragm (image right) and hides the medial lung bases.
    hw = t["ctr"] * tw / 2.0 * (1.12 if view.startswith("AP") else 1.0)
    hh = hw * 0.7
    heart = _soft_ellipse(x, y, 0.5 + t["heart_shift"], dome_top - 0.3 * hh, hw, hh, 0.1)
    lungs = [lu * (1.0 - 0.9 * heart) for lu in lungs]
    lung = np.maximum(lungs[0], lungs[1])

    # Soft tissue: boxy torso with shoulders and neck; denser mediastinum and abdomen.
    bw = tw / 2.0 + t["wall"]
    by = 0.95 if adult else 0.7
    bcy = top + (0.85 if adult else 0.6)
    torso = np.clip(
        (1.0 - (np.abs((x - 0.5) / bw) ** 2.6 + np.abs((y - bcy) / by) ** 2.6)) / 0.06, 0.0, 1.0
    )
    shoulders = _soft_ellipse(x, y, 0.5, top + 0.02, bw * 1.02, 0.12, 0.3)
    neck = np.clip((0.1 - np.abs(x - 0.5)) / 0.03, 0.0, 1.0) * np.clip((top + 0.1 - y) / 0.05, 0, 1)
    body = np.maximum(np.maximum(torso, shoulders), neck)
    if t["arms_up"]:  # children are often held with their arms beside the head
        for sgn in (-1.0, 1.0):
            arm = _soft_ellipse(x, y, 0.5 + sgn * (bw + 0.06), top - 0.05, 0.06, 0.3, 0.3)
            body = np.maximum(body, arm)
    below = np.clip((y - np.minimum(dome_y[0], dome_y[1])) / 0.04, 0.0, 1.0)
    column = np.exp(-np.square((x - 0.5) / (1.5 * m)))

    a = t["background"] + body * (t["body_level"] - t["background"])
    a += body * (0.10 * column + 0.10 * below) + heart * 0.04
    zone = np.clip((y - top) / lh, 0.0, 1.0)  # lung bases overlap more soft tissue
    a -= lung * t["lung_dark"] * (1.0 - 0.25 * zone)

    # Bone: posterior ribs (adult: sloping down laterally; child: horizontal), clavicles, spine.
    d = np.abs(x - 0.5)
    phase = (y - top - t["rib_curv"] * np.square(d) + 0.1 * d) / (lh / 8.5)
    ribs = np.square(np.square(0.5 + 0.5 * np.cos(2.0 * np.pi * phase)))
    cage = _soft_ellipse(x, y, 0.5, cy, bw, ry * 1.15, 0.2)
    a += ribs * cage * t["rib_amp"] * (1.0 - 0.5 * column)
    yc = top + 0.03 - 0.08 * (d - 0.04)
    clav = np.exp(-np.square((y - yc) / 0.014)) * np.clip((d - 0.03) / 0.02, 0.0, 1.0)
    a += clav * np.clip((bw * 0.9 - d) / 0.03, 0.0, 1.0) * t["clav_amp"]
    vert = 0.8 + 0.2 * np.cos(2.0 * np.pi * (y - top) / (lh / 9.5))
    a += np.exp(-np.square((x - 0.5) / t["spine_w"])) * vert * body * (1.0 - lung) * 0.1

    # Below the diaphragm: gastric bubble (adults), bowel gas (children).
    if adult:
        bubble = _soft_ellipse(x, y, 0.5 + m + 1.2 * rx, dome_top + 0.06, 0.05, 0.03, 0.5)
        a -= bubble * torso * 0.15 * rng.uniform(0.0, 1.0)
    else:
        gas = _smoothstep((_smooth_noise(rng, shape, 24.0) - 1.4) / 0.4)
        a -= gas * np.clip((y - dome_top - 0.1) / 0.05, 0.0, 1.0) * torso * 0.1

    # Normal vascular markings: faint branching lines fanning out from the hila.
    hila = [(0.5 - m - 0.35 * rx, cy - 0.05 * ry), (0.5 + m + 0.35 * rx, cy - 0.05 * ry)]
    ph = [np.exp(-(np.square((x - hx) / (1.6 * rx)) + np.square((y - hy) / ry))) for hx, hy in hila]
    perihilar = np.maximum(ph[0], ph[1])
    marks = _ridges(_smooth_noise(rng, shape, 14.0), 0.22) * perihilar * rng.uniform(0.03, 0.06)
    extra = _pathology(label, t, rng, sev, shape, x, y, lungs, lat_n, (cy, ry, rx), hila)
    return a + lung * (marks + extra)


def _pathology(
    label: str,
    t: dict[str, Any],
    rng: np.random.Generator,
    sev: float,
    shape: tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    lungs: list[np.ndarray],
    lat_n: list[np.ndarray],
    geometry: tuple[float, float, float],
    hila: list[tuple[float, float]],
) -> np.ndarray | float:
    """Extra density inside the lungs (multiplied by the lung mask by the caller)."""
    cy, ry, rx = geometry
    yn = (y - cy) / ry
    if label == "bacterial":
        side, lobe = int(t["bact_side"]), t["bact_lobe"]
        lat = lat_n[side]
        if lobe == "upper":
            region = _smoothstep((-0.05 + 0.15 * lat - yn) / 0.25 + 0.5)
            c_y = -0.45
        elif lobe == "lower":
            region = _smoothstep((yn - 0.15 - 0.1 * lat) / 0.25 + 0.5)
            c_y = 0.5
        else:  # right middle lobe / lingula: lower zone, medial (silhouettes the heart border)
            region = np.exp(-np.square((yn - 0.35) / 0.3)) * _smoothstep((0.6 - lat) / 0.4)
            c_y = 0.35
        cx_off, cy_off = t["bact_center"]
        hx = hila[side][0] + (1 if side else -1) * (0.3 + cx_off) * rx
        radius = 0.6 + 0.9 * sev
        dist = np.sqrt(np.square((x - hx) / (rx * 1.2)) + np.square(yn - c_y - 0.3 * cy_off))
        blob = _smoothstep((radius - dist) / 0.35 + 0.5)
        cons = lungs[side] * region * blob
        texture = 0.8 + 0.15 * _smooth_noise(rng, shape, 12.0)
        return cons * texture * (0.3 + 0.3 * sev)
    if label == "viral":
        reach = 0.7 + 0.5 * sev
        ph = [
            np.exp(-(np.square((x - hx) / (reach * 1.5 * rx)) + np.square((y - hy) / (reach * ry))))
            for hx, hy in hila
        ]
        weight = ph[0] + ph[1]
        ret = _ridges(_smooth_noise(rng, shape, 22.0), 0.3)
        streaks = []
        warp = _smooth_noise(rng, shape, 6.0)
        for hx, hy in hila:
            theta = np.arctan2(y - hy, x - hx)
            streaks.append(np.power(0.5 + 0.5 * np.cos(28.0 * theta + 1.5 * warp), 6))
        streak = np.maximum(streaks[0] * ph[0], streaks[1] * ph[1])
        amp = 0.1 + 0.16 * sev
        return amp * (weight * (0.4 * ret + 0.6) + 0.5 * streak)
    if label == "covid":
        lower = _smoothstep((yn + 0.2 + 0.4 * sev) / 0.9)
        patches = _smoothstep((_smooth_noise(rng, shape, 7.0) + 0.5) / 1.3)
        amp = 0.18 + 0.3 * sev
        total: np.ndarray | float = 0.0
        for side in (0, 1):
            periph = _smoothstep((lat_n[side] + 0.45 * sev - 0.1) / 0.9)
            total = total + lungs[side] * periph
        paving = _ridges(_smooth_noise(rng, shape, 22.0), 0.3) * 0.25
        return amp * lower * (0.35 + 0.65 * patches) * (total + paving * total)
    return 0.0


def _lateral(
    t: dict[str, Any], rng: np.random.Generator, label: str, sev: float, shape: tuple[int, int]
) -> np.ndarray:
    """Attenuation map of a lateral chest view (anterior to the image left)."""
    h, w = shape
    x, y = _pose_grid(t, rng, h, w)
    u = rng.uniform
    depth, lrx = u(0.34, 0.46), u(0.24, 0.32)
    top, lh = t["lung_top"], t["lung_h"] * u(0.95, 1.1)
    body = _soft_ellipse(x, y, 0.5, 0.62, depth, 0.75, 0.06)
    lung = _soft_ellipse(x, y, 0.52, top + lh / 2.0, lrx, lh / 2.0, 0.2)
    dome = top + lh * u(0.8, 0.95) - 0.08 * (1.0 - np.square((x - 0.55) / 0.35))
    lung *= np.clip((dome - y) / 0.015, 0.0, 1.0)
    heart = _soft_ellipse(x, y, u(0.34, 0.42), top + lh * 0.75, u(0.11, 0.16), 0.13, 0.3)
    lung *= 1.0 - 0.7 * heart
    a = t["background"] + body * (t["body_level"] - t["background"]) - lung * t["lung_dark"]
    vert = 0.75 + 0.25 * np.cos(2.0 * np.pi * y / 0.055)
    a += np.exp(-np.square((x - 0.5 - 0.8 * depth) / 0.045)) * vert * body * 0.18
    a += np.exp(-np.square((x - 0.5 + 0.85 * depth) / 0.012)) * body * 0.08  # sternum
    arms = _soft_ellipse(x, y, 0.55, top, 0.25, u(0.08, 0.16), 0.4)
    a += arms * 0.12
    if label != "normal":
        lower_post = _smoothstep((y - 0.4) / 0.3) * _smoothstep((x - 0.45) / 0.3)
        patches = _smoothstep((_smooth_noise(rng, shape, 7.0) + 0.5) / 1.3)
        a += lung * lower_post * (0.35 + 0.65 * patches) * (0.07 + 0.2 * sev)
    return a


def _ct(
    t: dict[str, Any], rng: np.random.Generator, label: str, sev: float, shape: tuple[int, int]
) -> np.ndarray:
    """Attenuation map of an axial chest CT slice (anterior up), lung window."""
    h, w = shape
    x, y = _pose_grid(t, rng, h, w, jitter=0.5)
    u = rng.uniform
    brx, bry, lx, lrx, lry = (
        u(0.38, 0.47),
        u(0.26, 0.34),
        u(0.15, 0.2),
        u(0.12, 0.17),
        u(0.18, 0.24),
    )
    body = _soft_ellipse(x, y, 0.5, 0.5, brx, bry, 0.04)
    fat = body - _soft_ellipse(x, y, 0.5, 0.5, brx - 0.04, bry - 0.04, 0.04)
    a = 0.02 + body * 0.45 - np.clip(fat, 0.0, 1.0) * 0.1
    lungs = [_soft_ellipse(x, y, 0.5 + sg * lx, 0.5, lrx, lry, 0.08) for sg in (-1.0, 1.0)]
    heart = _soft_ellipse(x, y, 0.53, 0.5 - 0.4 * lry, u(0.08, 0.12), u(0.08, 0.11), 0.2)
    lung = np.maximum(lungs[0], lungs[1]) * (1.0 - heart)
    a -= lung * 0.42
    a += _soft_ellipse(x, y, 0.5, 0.74, 0.045, 0.045, 0.2) * 0.45  # vertebral body
    a += lung * _ridges(_smooth_noise(rng, shape, 18.0), 0.15) * 0.08  # vessels
    a += np.clip((0.015 - np.abs(y - 0.5 - bry - 0.05)) / 0.01, 0.0, 1.0) * 0.3  # table
    if label != "normal":
        periph = np.maximum(
            _smoothstep((np.abs(x - 0.5) - 0.22) / 0.12), _smoothstep((y - 0.55) / 0.12)
        )
        patches = _smoothstep((_smooth_noise(rng, shape, 8.0) + 0.3) / 1.2)
        a += lung * periph * patches * (0.12 + 0.25 * sev)
    return a


def _annotate(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Burn in a journal-figure arrow and, sometimes, a panel letter block."""
    h, w = img.shape
    yy = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None]
    xx = ((np.arange(w, dtype=np.float32) + 0.5) / w)[None, :]
    tip = (rng.uniform(0.25, 0.75), rng.uniform(0.35, 0.7))
    ang = rng.uniform(0, 2 * np.pi)
    tail = (tip[0] + 0.15 * math.cos(ang), tip[1] + 0.15 * math.sin(ang))
    vx, vy = tip[0] - tail[0], tip[1] - tail[1]
    px, py = xx - tail[0], yy - tail[1]
    tt = np.clip((px * vx + py * vy) / (vx * vx + vy * vy), 0.0, 1.0)
    dist = np.sqrt(np.square(px - tt * vx) + np.square(py - tt * vy))
    mark = np.clip((0.012 - dist) / 0.004, 0.0, 1.0)
    head = np.sqrt(np.square(xx - tip[0]) + np.square(yy - tip[1]))
    mark = np.maximum(mark, np.clip((0.025 - head) / 0.006, 0.0, 1.0))
    if rng.uniform() < 0.5:
        box = (np.abs(xx - 0.07) < 0.04) & (np.abs(yy - 0.07) < 0.04)
        mark = np.maximum(mark, box.astype(np.float32))
    return np.maximum(img, mark * 0.97)


def _side_marker(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Burn in a lead side marker (a bright letter-like block near the upper-left corner)."""
    h, w = img.shape
    yy = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None]
    xx = ((np.arange(w, dtype=np.float32) + 0.5) / w)[None, :]
    mx, my = rng.uniform(0.04, 0.1), rng.uniform(0.04, 0.2)
    outer = (np.abs(xx - mx) < 0.022) & (np.abs(yy - my) < 0.03)
    slot = (np.abs(xx - mx - 0.006) < 0.008) & (np.abs(yy - my - 0.01) < 0.012)
    return np.maximum(img, (outer & ~slot).astype(np.float32) * 0.95)


_RENDERERS = {"frontal": _frontal, "lateral": _lateral, "ct": _ct}


def render_radiograph(
    label: str,
    rng: np.random.Generator,
    size: tuple[int, int],
    patient_traits: dict[str, Any] | None = None,
) -> np.ndarray:
    """Render one phantom chest radiograph.

    The patient's anatomy and acquisition settings (``patient_traits``) stay fixed across that
    patient's images; pose, severity jitter, textures and noise are drawn from ``rng`` per image.

    Args:
        label: ``normal``, ``bacterial``, ``viral`` or ``covid``.
        rng: Source of all randomness for this image (and of the traits when not given).
        size: ``(height, width)`` in pixels, each at least 8.
        patient_traits: Optional overrides of the sampled traits, e.g. ``{"age_group": "adult"}``,
            ``{"view": "L"}`` (lateral), ``{"modality": "CT"}`` (axial slice), ``{"severity": 0.9}``
            or ``{"annotation": True}`` (burned-in arrow). Omitted keys are sampled from ``rng``:
            pediatric anatomy for Kermany labels, adult for ``covid``.

    Returns:
        ``uint8`` grayscale array of shape ``size``.

    Raises:
        ValueError: Unknown label or a side under 8 pixels.
    """
    if label not in ALL_LABELS:
        raise ValueError(f"label must be one of {list(ALL_LABELS)}, got {label!r}")
    h, w = int(size[0]), int(size[1])
    if h < 8 or w < 8:
        raise ValueError(f"size must be at least 8x8, got {size!r}")
    given = dict(patient_traits or {})
    traits = _sample_traits(label, rng, given.get("age_group"))
    traits.update(given)
    sev = float(np.clip(traits["severity"] + rng.normal(0.0, 0.1), 0.05, 1.0))
    if traits["modality"] == "CT":
        kind = "ct"
    elif traits["view"] == "L":
        kind = "lateral"
    else:
        kind = "frontal"
    # Anatomy is smooth: render it at most RENDER_SIDE px and resize, so cost per image is flat.
    scale = min(1.0, RENDER_SIDE / max(h, w))
    rh, rw = max(8, round(h * scale)), max(8, round(w * scale))
    a = np.clip(_RENDERERS[kind](traits, rng, label, sev, (rh, rw)), 0.0, 1.2)

    contrast = traits["contrast"] * (1.0 + rng.normal(0.0, 0.04))
    brightness = traits["brightness"] + rng.normal(0.0, 0.015)
    # Exposure falls off along the tube axis (heel effect) and, per image, in a random direction.
    tilt = rng.normal(0.0, 0.05, size=2)
    ramp = (np.arange(rh, dtype=np.float32) / rh - 0.5)[:, None] * (traits["heel"] + tilt[0])
    ramp = ramp + (np.arange(rw, dtype=np.float32) / rw - 0.5)[None, :] * tilt[1]
    img = brightness + contrast * np.power(a, traits["gamma"]) + ramp
    # Quantum noise at the render resolution: slightly correlated grain after resizing.
    img = (img + rng.standard_normal((rh, rw), dtype=np.float32) * traits["noise"]).astype(
        np.float32
    )
    if (rh, rw) != (h, w):
        img = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BICUBIC))
    if traits["side_marker"]:
        img = _side_marker(img, rng)
    if traits["annotation"]:
        img = _annotate(img, rng)
    return np.clip(img * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Writing the layouts


def _patient_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAM[stream], index)))


def _sample_size(rng: np.random.Generator, p: SynthParams) -> tuple[int, int]:
    h = int(rng.integers(p.min_side, p.max_side + 1))
    w = round(h * rng.uniform(0.8, 1.25))
    return h, int(min(max(w, p.min_side), p.max_side))


def _jitter_size(
    rng: np.random.Generator, size: tuple[int, int], p: SynthParams
) -> tuple[int, int]:
    f = rng.uniform(0.95, 1.05)
    h, w = (int(min(max(round(s * f), p.min_side), p.max_side)) for s in size)
    return h, w


def _save(img: np.ndarray, path: Path) -> None:
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


def _plan_patient(
    seed: int, stream: str, index: int, label: str, p: SynthParams, adult: bool
) -> _Patient:
    rng = _patient_rng(seed, stream, index)
    traits = _sample_traits(label, rng, "adult" if adult else "pediatric")
    size = _sample_size(rng, p)
    n_images = int(rng.integers(1, p.images_per_patient_max + 1))
    return _Patient(label, rng, traits, size, n_images)


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
            img = render_radiograph(
                "normal", pat.rng, _jitter_size(pat.rng, pat.size, p), pat.traits
            )
            _save(img, root / split / "NORMAL" / f"{stem}-{k + 1:04d}.jpeg")
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
                size = _jitter_size(pat.rng, pat.size, p)
                img = render_radiograph(label, pat.rng, size, pat.traits)
                name = f"person{int(numbers[i])}_{kind}_{running}.jpeg"
                _save(img, root / split / "PNEUMONIA" / name)
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
    n_other = max(2, round(0.1 * n))
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
                name = f"{next(names)}.{prng.choice(_COHEN_EXTS, p=_COHEN_EXT_P)}"
                traits = {
                    **pat.traits,
                    "view": view,
                    "annotation": bool(prng.uniform() < COHEN_ANNOTATION_PROB),
                }
                size = _jitter_size(prng, pat.size, p)
                _save(render_radiograph(pat.label, prng, size, traits), images / name)
                writer.writerow(_cohen_row(fixed, base_days, offset, view, "X-ray", name))
                counts["covid" if is_covid else "cohen_other"] += 1
                if is_covid and int(first_image[idx]) + k in lateral_at:
                    lrng = _patient_rng(p.seed, "lateral", lateral_seq)
                    lateral_seq += 1
                    name = f"{next(names)}.jpg"
                    ltraits = {**pat.traits, "view": "L"}
                    _save(render_radiograph("covid", lrng, pat.size, ltraits), images / name)
                    writer.writerow(_cohen_row(fixed, base_days, offset, "L", "X-ray", name))
                    counts["cohen_other"] += 1
            for _ in range(int(ct_per_patient[idx]) if is_covid else 0):
                crng = _patient_rng(p.seed, "ct", ct_seq)
                ct_seq += 1
                side = min(pat.size)
                name = f"{next(names)}.png"
                ctraits = {**pat.traits, "modality": "CT", "view": "Axial"}
                _save(render_radiograph("covid", crng, (side, side), ctraits), images / name)
                writer.writerow(_cohen_row(fixed, base_days, offset, "Axial", "CT", name))
                counts["cohen_other"] += 1
    return counts


def _version() -> str:
    try:
        return importlib.metadata.version("cxrflow")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        return "unknown"


def _phantom_note(p: SynthParams, counts: dict[str, int] | None) -> str:
    lines = [
        "# PHANTOM DATA: synthetic, not real patients",
        "",
        "Every image and every row of `cohen/metadata.csv` under this folder is synthetic,",
        f"generated by cxrflow {_version()} (`cxrflow.data.synthetic.generate_phantom`).",
        "No image shows a real patient; none may be used for any clinical purpose.",
        "",
        "## Parameters",
        "",
        *[f"- `{k}`: {v}" for k, v in asdict(p).items()],
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
        "- Kermany phantoms are pediatric (small round thorax, large heart, horizontal ribs,",
        "  usually a burned-in side marker); Cohen phantoms are adult and a quarter carry",
        "  burned-in arrows or panel letters. A classifier can separate the sources (and so",
        "  tell COVID-19 from the other classes) without looking at the lungs.",
        "- Several images per patient; Cohen trap rows: lateral views, CT slices, other findings.",
        "",
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
