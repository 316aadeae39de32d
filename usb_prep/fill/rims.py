"""Masks that miss a lesion's rim: find the lesions whose first ring outside the mask looks like the lesion.

Manual and automatic masks often stop one voxel short of a lesion's partial-volume rim. Every filler then
takes that dark (T1w) or bright (T2w, FLAIR) rim for healthy context and carries it inwards. Per lesion,
the ring voxel's partial-volume share of the lesion is ``t = (ref - I) / (ref - lesion)``, with ``ref`` the
tissue 3-5 voxels out and ``lesion`` the mask's own values nearby (both local Gaussian means). A lesion
whose ring is mostly (``share``) lesion-like (``t`` > ``t_min``) is grown by one voxel.

The thresholds were chosen on the validation masks (benchmarks/validation.py), never the benchmark's:
on lesions painted inside their masks at most 63% of a lesion's ring qualifies, where the rim leaves the
mask at least 80%; on the real patients' own masks (ms07 T1w and FLAIR, two stroke T2w) at most 70%.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .. import crops

T_MIN = 0.3  # a ring voxel at least 30% of the way from the tissue around to the lesion
CONTRAST = 0.15  # lesions within 15% of the tissue around them have no rim to miss
SHARE = 0.75  # a lesion is grown when this share of its ring is lesion-like
MIN_RING = 10  # lesions with a smaller ring follow the whole mask's share
MARGIN = 1 + 5 + 13  # what a ring voxel's test depends on: the ring, the outer shell, the Gaussian's reach (+1)


def _local_mean(image, where, sigma=3.0):
    num = ndimage.gaussian_filter(np.where(where, image, 0).astype(np.float32), sigma)
    den = ndimage.gaussian_filter(where.astype(np.float32), sigma)
    return num / np.maximum(den, 1e-6)


def first_ring(mask: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The mask's first (6-connected) ring of voxels outside it, within ``brain``."""
    return ndimage.binary_dilation(mask) & ~mask & brain


def lesion_like_ring(image: np.ndarray, mask: np.ndarray, brain: np.ndarray, ring=None) -> np.ndarray:
    """The voxels of the mask's first ring (``ring``, default :func:`first_ring`) that look like a partial volume
    of the lesion."""
    ring = first_ring(mask, brain) if ring is None else ring
    if not ring.any():
        return ring
    outer = ndimage.binary_dilation(mask, iterations=5) & ~ndimage.binary_dilation(mask, iterations=2) & brain
    ref, inner = _local_mean(image, outer), _local_mean(image, mask)
    gap = ref - inner
    t = (ref - image) / np.where(np.abs(gap) > 1e-6, gap, 1e-6)
    return ring & (np.abs(gap) > CONTRAST * np.abs(ref)) & (t > T_MIN)


def missed_rims(image: np.ndarray, mask: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The rim voxels to treat as unknown: the first ring of each lesion whose ring is mostly lesion-like
    (lesions are the 26-connected groups of the mask grown by one voxel). Computed on the mask's bounding box
    grown by :data:`MARGIN`: the same answer as on the whole image, at a fraction of the cost."""
    out = np.zeros(mask.shape, bool)
    if mask.any():
        box = crops.bbox(mask, MARGIN)
        out[box] = _missed_rims(image[box], mask[box], brain[box])
    return out


def _missed_rims(image, mask, brain):
    ring = first_ring(mask, brain)
    like = lesion_like_ring(image, mask, brain, ring)
    if not like.any():
        return like
    labels, n = ndimage.label(mask | ring, np.ones((3, 3, 3)))
    idx = np.arange(1, n + 1)
    size = ndimage.sum(ring, labels, idx)
    share = ndimage.sum(like, labels, idx) / np.maximum(size, 1)
    overall = like.sum() / ring.sum()
    grow = np.where(size >= MIN_RING, share, overall) >= SHARE
    return ring & np.concatenate([[False], grow])[labels]
