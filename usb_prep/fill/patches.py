"""Stages "patch" and "nlm": fills that copy tissue from the image itself (:mod:`.patchmatch`).

The patch fill copies one near-best patch centre per voxel (NiftySeg-like texture); the nlm fill the
mean of the best patches, its distances guided by a layout estimate inside the lesion (the model's
fill), so that deep inside big lesions it copies tissue that fits the model's layout. Both may draw
candidates from the mirrored brain too (``patch_mirror``, ``nlm_mirror``), and both match the patches of
another contrast of the head too where the call has one (``other_contrast``, ``guide_weight``).
"""

from __future__ import annotations

import numpy as np

from .blend import blend
from .context import FillContext
from .patchmatch import coarse_guide, fill_nlm, fill_patch
from .settings import FillSettings


def other_contrast(ctx: FillContext, settings: FillSettings, mirror: bool) -> dict:
    """The patch engine's arguments for the guide contrast (none without one, or with ``guide_weight`` 0)."""
    if ctx.other_contrast is None or settings.guide_weight == 0:
        return {}
    return dict(aux=ctx.other_contrast, aux_weight=settings.guide_weight,
                aux_extra=ctx.mirrored_other if mirror else None)


def patch_fill(ctx: FillContext, settings: FillSettings) -> np.ndarray:
    """The whole image with the classical patch fill in the mask (the image, bit for bit, elsewhere)."""
    extra = ctx.mirrored if settings.patch_mirror else None
    return fill_patch(ctx.image, ctx.mask, np.random.default_rng(ctx.seed), brain=ctx.brain, extra=extra,
                      **other_contrast(ctx, settings, settings.patch_mirror))


def nlm_guide(ctx: FillContext, model_fill: np.ndarray, settings: FillSettings) -> np.ndarray:
    """The first nlm pass's guide: the model's fill (whole image), with ``nlm_coarse`` averaged with the
    nlm fill of a 2x coarser copy (whose patches reach twice as far from the border)."""
    if settings.nlm_coarse:
        coarse = coarse_guide(ctx.image, ctx.mask, brain=ctx.brain, search=settings.nlm_search)
        return 0.5 * model_fill + 0.5 * coarse
    return model_fill


def nlm_fill(ctx: FillContext, guide: np.ndarray, settings: FillSettings) -> np.ndarray:
    """The whole image with the nlm fill in the mask, its patch distances seeing ``guide`` inside the mask."""
    extra = ctx.mirrored if settings.nlm_mirror else None
    return fill_nlm(ctx.image, ctx.mask, brain=ctx.brain, guide=guide, extra=extra, search=settings.nlm_search,
                    **other_contrast(ctx, settings, settings.nlm_mirror))


def patch_stage(ctx: FillContext, parts, settings: FillSettings) -> np.ndarray:
    """Stage "patch": the whole image with the patch fill in the working mask."""
    return patch_fill(ctx, settings)


def nlm_stage(ctx: FillContext, parts, settings: FillSettings) -> np.ndarray:
    """Stage "nlm": the whole image with the nlm fill in the working mask; the first pass guided by the model's
    fill (:func:`nlm_guide`), each further one (``nlm_passes``) by the blend of the parts so far."""
    nlm = nlm_fill(ctx, nlm_guide(ctx, parts.model, settings), settings)
    for _ in range(settings.nlm_passes - 1):
        ctx.progress.update(1)
        nlm = nlm_fill(ctx, ctx.whole(blend(ctx, settings, parts.model, parts.patch, nlm)), settings)
    return nlm
