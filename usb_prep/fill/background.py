"""Masks that spill out of the head: the mask's voxels that lie in the background stay background.

A lesion mask drawn before skull stripping, dilated, or an inpainting region placed near the brain's surface
can reach past the brain. Every filler would paint tissue there (a bump on the brain that registration and
segmentation then take for brain). Where the brain ends inside the mask is unknown, but brains are close to
symmetric: a mask voxel whose mirror across the midline is known background, more than :data:`TOLERANCE`
voxels from the mirrored head, and which is background (<= 0) in the image itself, is background.
A lesion that skull stripping cut away (a cortical stroke cavity set to 0) has brain in its mirror: it is filled.

The tolerance was chosen on the validation masks (``benchmarks/validation.py``: otsu_head, never the
benchmark's cases), as they are and grown by 3 voxels past the brain, painted and voided, by the rule: the best
mean whose loss on no mask that stays inside the brain exceeds 0.2 dB. Brains are not quite symmetric: at 0 or
1 voxel, brain voxels at the surface that are 0 (a voided mask, a lesion painted black) mirror onto background
and were emptied (up to -1.4 and -0.6 dB on one medium stroke); at 2 the worst loss is 0.12 dB and the grown
masks gain 0.2-0.4 dB; at 3 almost nothing changes either way
(``benchmarks/results/validation/background_tolerance.md``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .. import crops
from ..mirror import lr_axis, mask_free_midline, mirror_lr

TOLERANCE = 2  # voxels from the mirrored head: see the module's docstring


def outside_head(image: np.ndarray, mask: np.ndarray, affine: np.ndarray | None = None,
                 tolerance: float = TOLERANCE) -> np.ndarray:
    """The voxels of ``mask`` that are background: zero (or less) in ``image`` and mirrored across the midline
    onto known background farther than ``tolerance`` voxels from the mirrored head. ``affine`` tells which axis is
    left-right (None: axis 0)."""
    out = np.zeros(mask.shape, bool)
    candidates = mask & (image <= 0)
    if not candidates.any():
        return out
    box = crops.bbox(candidates, int(np.ceil(tolerance)) + 2)
    axis = lr_axis(affine)
    # the head's midline from the left-right lines that miss the mask: a voided mask would pull it aside, a spill
    # counted as head the other way
    centre = mask_free_midline(image, mask, axis)
    head = mirror_lr(((image > 0) & ~mask).astype(np.float32), affine, centre=centre) > 0.5
    known = mirror_lr((~mask).astype(np.float32), affine, centre=centre) > 0.5
    far = ndimage.distance_transform_edt(~head[box]) > tolerance
    out[box] = candidates[box] & known[box] & far
    return out
