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

T_MIN = 0.3  # a ring voxel at least 30% of the way from the tissue around to the lesion
CONTRAST = 0.15  # lesions within 15% of the tissue around them have no rim to miss
SHARE = 0.75  # a lesion is grown when this share of its ring is lesion-like
MIN_RING = 10  # lesions with a smaller ring follow the whole mask's share


def _local_mean(image, where, sigma=3.0):
    num = ndimage.gaussian_filter(np.where(where, image, 0).astype(np.float32), sigma)
    den = ndimage.gaussian_filter(where.astype(np.float32), sigma)
    return num / np.maximum(den, 1e-6)


def lesion_like_ring(image: np.ndarray, mask: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The voxels of the mask's first ring (in ``brain``) that look like a partial volume of the lesion."""
    ring = ndimage.binary_dilation(mask) & ~mask & brain
    if not ring.any():
        return ring
    outer = ndimage.binary_dilation(mask, iterations=5) & ~ndimage.binary_dilation(mask, iterations=2) & brain
    ref, inner = _local_mean(image, outer), _local_mean(image, mask)
    gap = ref - inner
    t = (ref - image) / np.where(np.abs(gap) > 1e-6, gap, 1e-6)
    return ring & (np.abs(gap) > CONTRAST * np.abs(ref)) & (t > T_MIN)


def missed_rims(image: np.ndarray, mask: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The rim voxels to treat as unknown: the first ring of each lesion whose ring is mostly lesion-like
    (lesions are the 26-connected groups of the mask grown by one voxel)."""
    out = np.zeros(mask.shape, bool)
    if not mask.any():
        return out
    # the mask's bounding box plus what the ring's values depend on (ring 1 + outer shell 5 + Gaussian 12 voxels):
    # the same answer as on the whole image, at a fraction of the cost
    idx = np.nonzero(mask)
    box = tuple(slice(max(int(i.min()) - MARGIN, 0), int(i.max()) + MARGIN + 1) for i in idx)
    out[box] = _missed_rims(image[box], mask[box], brain[box])
    return out


MARGIN = 1 + 5 + 13


def _missed_rims(image, mask, brain):
    ring = ndimage.binary_dilation(mask) & ~mask & brain
    like = lesion_like_ring(image, mask, brain)
    if not like.any():
        return like
    labels, n = ndimage.label(mask | ring, np.ones((3, 3, 3)))
    idx = np.arange(1, n + 1)
    size = ndimage.sum(ring, labels, idx)
    share = ndimage.sum(like, labels, idx) / np.maximum(size, 1)
    overall = like.sum() / ring.sum()
    grow = np.where(size >= MIN_RING, share, overall) >= SHARE
    return ring & np.concatenate([[False], grow])[labels]
