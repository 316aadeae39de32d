"""Stage "blend": the weighted average of the model, patch and nlm fills, optionally smoothed.

The model's smooth mean estimate and the patch fills (texture copied from the image itself) err
differently, so their average beats each of them. ``smooth`` > 0 finally smooths the blend by a
Gaussian of that sigma (voxels), normalised over the brain: the copying noise averages out.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .. import crops
from .context import FillContext
from .settings import FillSettings


def blend(ctx: FillContext, settings: FillSettings, model: np.ndarray, patch: np.ndarray | None,
          nlm: np.ndarray | None) -> np.ndarray:
    """The blend's values over the mask (the parts are whole images; ``patch``, ``nlm`` None where they did not
    run and have no weight)."""
    w_patch, w_nlm, m = settings.patch_weight, settings.nlm_weight, ctx.mask
    out = (1 - w_patch - w_nlm) * model[m]
    if w_patch > 0:
        out += w_patch * patch[m]
    if w_nlm > 0:
        out = out + w_nlm * nlm[m]
    return out


def blend_stage(ctx: FillContext, parts, settings: FillSettings) -> np.ndarray:
    """Stage "blend": the whole image with the blend (smoothed by ``settings.smooth``) in the working mask."""
    values = blend(ctx, settings, parts.model, parts.patch, parts.nlm)
    if settings.smooth > 0:
        values = smooth(ctx, values, settings.smooth)
    return ctx.whole(values)


def smooth(ctx: FillContext, values: np.ndarray, sigma: float) -> np.ndarray:
    """``values`` (the mask's voxels) smoothed with their surroundings by a Gaussian normalised over the brain."""
    mask = ctx.mask
    brain = ctx.brain | mask
    full = ctx.whole(values)
    out = full.copy()
    for bx in crops.lesion_boxes(mask, int(np.ceil(4 * sigma)) + 1, 1, 1):
        v, w = crops.extract(full, bx), crops.extract(brain, bx).astype(np.float32)
        sm = ndimage.gaussian_filter(v * w, sigma) / np.maximum(ndimage.gaussian_filter(w, sigma), 1e-6)
        crops.paste(out, bx, sm.astype(np.float32), mask)
    return out[mask]
