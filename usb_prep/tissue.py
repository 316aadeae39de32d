"""Tissue classes of a brain image by intensity: a 1-D k-means, and the contrast an image's tissue order tells.

No torch here: the CLI's contrast check and the synthetic T2w/FLAIR maps (:mod:`usb_prep.data.contrast`) read it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .config import CONTRASTS  # noqa: F401 -- the one list of contrast names


def kmeans_1d(values: np.ndarray, n_classes: int = 3, n_iter: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic 1-D k-means (Lloyd), initialised at evenly spaced quantiles.

    Parameters
    ----------
    values : ndarray
        1-D sample.
    n_classes : int
        Number of clusters.
    n_iter : int
        Maximum Lloyd iterations.

    Returns
    -------
    centres : ndarray, shape (k,)
        Cluster means sorted ascending (empty clusters are dropped, so k may be
        smaller than ``n_classes``).
    labels : ndarray of int
        Index into ``centres`` for every value.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    q = (np.arange(n_classes) + 0.5) / n_classes
    centres = np.unique(np.quantile(v, q))
    for _ in range(n_iter):
        # 1-D: nearest centre = bin by midpoints between sorted centres.
        labels = np.searchsorted((centres[1:] + centres[:-1]) / 2, v)
        counts = np.bincount(labels, minlength=centres.size)
        sums = np.bincount(labels, weights=v, minlength=centres.size)
        keep = counts > 0
        new = sums[keep] / counts[keep]
        if new.size == centres.size and np.allclose(new, centres, rtol=0, atol=1e-12):
            break
        centres = np.sort(new)
    labels = np.searchsorted((centres[1:] + centres[:-1]) / 2, v)
    return centres, labels


# ------------------------------------------------------------------------------------------ contrast from the image
CORE_MM = {True: 4.0, False: 18.0}  # depth (mm) below the foreground's surface read: skull-stripped or not
# The tissue order in one number: r = (top - middle) / (middle - bottom) of the three k-means levels. T2w: CSF
# (bright) far above grey and white (r > 1.5 on every T2w here); T1w: three even steps (0.54-1.04); FLAIR: CSF
# (dark) far below grey and white, which lie close (0.27-0.41). Bands set on the real scans of the project's data
# (``python -m benchmarks contrast-guess``) with a gap on each side; between them the image does not tell.
BANDS = (("flair", 0.0, 0.47), ("t1w", 0.5, 1.15), ("t2w", 1.3, float("inf")))
MIN_CORE = 20_000  # voxels read at least (a brain at 4 mm has about that many): smaller images do not tell


def _foreground(x: np.ndarray) -> np.ndarray:
    nz = x[x > 0]
    fg = x > 0.15 * np.percentile(nz, 99) if nz.size else np.zeros(x.shape, bool)
    lab, n = ndimage.label(fg)
    if n > 1:
        fg = lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
    return ndimage.binary_fill_holes(ndimage.binary_closing(fg, iterations=2))


def guess_contrast(image: np.ndarray, mask: np.ndarray | None = None, zooms=(1.0, 1.0, 1.0)) -> tuple[str | None, dict]:
    """The contrast (t1w, t2w, flair) an image's tissue order tells, or None when it is ambiguous; and the
    evidence (``dict``: the three levels, their shares, the ratio ``r`` and the reason).

    A 3-class k-means of the voxels deep enough below the head's (or the skull-stripped brain's) surface (so no
    scalp), the mask and its surroundings left out, gives three levels, read through :data:`BANDS`. On T2w the
    brightest class (CSF) must also be the smaller extreme."""
    x = np.asarray(image, np.float32)
    if mask is not None and np.any(mask):
        x = np.where(ndimage.binary_dilation(np.asarray(mask, bool), iterations=3), 0, x)
    fg = _foreground(x)
    if fg.sum() < 1000:
        return None, {"reason": "too little foreground"}
    stripped = float((x[ndimage.binary_dilation(fg, iterations=3) & ~fg] <= 0).mean()) > 0.95
    depth = ndimage.distance_transform_edt(fg, sampling=zooms)
    core = fg & (depth >= CORE_MM[stripped]) & (x > 0)
    if core.sum() < MIN_CORE:
        return None, {"reason": f"too little tissue below the surface ({int(core.sum())} voxels) to tell"}
    centres, labels = kmeans_1d(x[core].astype(np.float64), 3)
    if centres.size < 3 or centres[1] <= centres[0]:
        return None, {"reason": "fewer than three tissue levels"}
    share = np.bincount(labels, minlength=3) / labels.size
    r = float((centres[2] - centres[1]) / (centres[1] - centres[0]))
    evidence = {"levels": [round(float(c), 4) for c in centres], "shares": [round(float(q), 3) for q in share],
                "r": round(r, 3), "skull_stripped": bool(stripped)}
    for name, lo, hi in BANDS:
        if lo <= r <= hi and (name != "t2w" or share[2] < share[0]):
            evidence["reason"] = {"t1w": "CSF < grey < white, evenly spaced",
                                  "t2w": "CSF far above grey and white", "flair": "CSF far below grey and white"}[name]
            return name, evidence
    evidence["reason"] = f"tissue levels between the contrasts' bands (r = {r:.2f})"
    return None, evidence
