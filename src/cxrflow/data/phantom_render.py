"""Phantom chest radiographs: a small anatomical renderer, one image at a time.

Anatomy follows the age group: *pediatric* (Kermany's children) is a small, round thorax that
fills less of the frame, a relatively large heart and wide upper mediastinum (thymus),
horizontal ribs, faint clavicles, arms often raised, bowel gas below the diaphragm and usually a
lead side marker burned in near a corner; *adult* (Cohen) is a large, tall thorax, smaller
heart, sloping ribs and prominent clavicles, sometimes with burned-in journal-figure
annotations. Frontal (PA/AP), lateral and axial CT views are drawn.

Class signal follows the radiology, with per-image severity from mild to severe:

- normal: clear lung fields (vascular markings only);
- bacterial: dense, mottled lobar consolidation confined to one lobe of one lung;
- viral: bilateral, perihilar, reticular/streaky interstitial pattern;
- covid: bilateral, peripheral, lower-zone ground-glass opacities (hazy, patchy) with a faint
  reticular component, i.e. related to viral, which is what makes viral-to-covid transfer help.

Every value is drawn from the generator passed in, in a fixed order, so the same generator
state gives the same pixels (:mod:`cxrflow.data.synthetic` relies on it for byte-identical
phantoms). The writer of the Kermany and Cohen layouts is :mod:`cxrflow.data.synthetic`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

from cxrflow.config import ALL_LABELS

RENDER_SIDE = 144
"""Longest side at which anatomy is rendered before resizing to the requested size."""


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


def sample_traits(
    label: str, rng: np.random.Generator, age_group: str | None = None
) -> dict[str, Any]:
    """Per-patient anatomy and acquisition settings (all in image-relative units).

    Args:
        label: The class; decides the default age group (``covid`` adult, else pediatric).
        rng: Source of every draw (their order is part of the phantom's byte identity).
        age_group: ``adult`` or ``pediatric``; default from ``label``.

    Returns:
        The traits :func:`render_radiograph` accepts as ``patient_traits``.

    Raises:
        ValueError: An unknown age group.
    """
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
    traits = sample_traits(label, rng, given.get("age_group"))
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
