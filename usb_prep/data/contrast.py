"""Synthetic T2w and FLAIR brains from T1w ones (contrast randomisation).

Real T2w / FLAIR anatomy is scarce, T1w brains are not: a T1w brain's three tissue levels (CSF, GM,
WM: a 1-D k-means of its brain voxels) are mapped to levels drawn for the target contrast, linearly in
between, so partial volumes, folding and texture carry over while the tissue order changes (T2w: CSF
brightest, WM darkest; FLAIR: CSF dark, GM above WM). Each draw is a new plausible scanner; the
result is normalised as the fill normalises images (99.5th percentile of the brain = 1).
"""

from __future__ import annotations

import numpy as np

from ..config import CONTRASTS  # noqa: F401 -- the one list of contrast names
#: Target tissue levels relative to WM = 1, drawn uniformly: CSF, GM, and the brightest T1w tissue
#: (above WM: vessels, fat at the brain's edge).
LEVELS = {
    "t2w": {"csf": (2.0, 3.5), "gm": (1.2, 1.6), "top": (1.0, 2.0)},
    "flair": {"csf": (0.15, 0.5), "gm": (1.1, 1.4), "top": (0.9, 1.6)},
}


def parse_contrasts(spec: str) -> tuple[str, ...]:
    """``"T2w,FLAIR"`` -> ``("t2w", "flair")``; unknown names raise."""
    out = tuple(c.strip().lower() for c in str(spec).split(",") if c.strip())
    bad = [c for c in out if c not in CONTRASTS]
    if bad or not out:
        raise ValueError(f"contrast must be one or more of {', '.join(CONTRASTS)} (comma-separated), got {spec!r}")
    return out


def tissue_levels(values: np.ndarray) -> np.ndarray:
    """CSF, GM and WM levels (ascending) of a T1w brain's voxel values (> 0): the 1-D k-means of
    :func:`usb_prep.tissue.kmeans_1d`, 3 classes (a class it drops as empty repeats the top level)."""
    from ..tissue import kmeans_1d

    v = np.asarray(values, np.float64).ravel()
    centres, _ = kmeans_1d(v[v > 0], 3)
    return np.pad(centres, (0, 3 - centres.size), mode="edge")


def draw_map(levels, contrast: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Control points ``(xp, fp)`` of a random T1w -> ``contrast`` intensity map (``np.interp``)."""
    csf, gm, wm = (float(x) for x in levels)
    r = LEVELS[contrast]
    t_csf, t_gm, t_top = (rng.uniform(*r[k]) for k in ("csf", "gm", "top"))
    wm_t = rng.uniform(0.95, 1.05)
    top = max(1.0, wm * 1.15)
    # below CSF's level lies CSF too (deep sulci, partial volume with the background): the CSF level
    xp = np.array([0.0, csf, gm, wm, top])
    fp = np.array([t_csf, t_csf, t_gm, wm_t, t_top])
    return xp, fp


def remap(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """``x`` through the map; zeros (background) stay zero."""
    x = np.asarray(x, np.float32)
    return np.where(x > 0, np.interp(x, xp, fp), 0.0).astype(np.float32)


def random_map(contrast: str, rng: np.random.Generator, values: np.ndarray, levels=None):
    """A random T1w -> ``contrast`` map as a function of intensities, normalised so that the 99.5th
    percentile of ``values`` (a T1w brain's voxels, or a sample of them) through it is 1."""
    if contrast == "t1w":
        return lambda x: np.asarray(x, np.float32)
    levels = tissue_levels(values) if levels is None else levels
    xp, fp = draw_map(levels, contrast, rng)
    scale = float(np.percentile(remap(values, xp, fp), 99.5)) or 1.0
    return lambda x: remap(x, xp, fp) / np.float32(scale)


def synthesise(image: np.ndarray, brain: np.ndarray, contrast: str, rng: np.random.Generator) -> np.ndarray:
    """A T1w ``image`` (normalised, background 0) as a random ``contrast`` image (:func:`random_map` of its
    brain's voxels)."""
    return random_map(contrast, rng, np.asarray(image)[np.asarray(brain, bool)])(image)
