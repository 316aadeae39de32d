"""The known-mask fill as named stages: model -> patch, nlm -> blend -> refine.

Every stage has one shape, ``stage(ctx, parts, settings) -> image``: it reads the call's
:class:`FillContext` (image, working mask, model, device, progress) and the parts earlier stages made, and
returns its own part, a whole image that differs from ``ctx.image`` only inside the working mask.
:data:`PIPELINE` lists them in order: adding, reordering or dropping a stage is one line there (and its name
in :data:`usb_prep.fill.settings.STAGES`, which the torch-free front ends read).

:func:`run_fill` returns every part it computed (:class:`FillParts`), so benchmarks and refiner training read
parts instead of re-running the fill with weights set to 0. Which stages run is explicit (``stages=``) or
follows from the settings (:meth:`FillSettings.stages`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..runtime import Progress
from . import prior
from .background import outside_head
from .blend import blend_stage
from .context import FillContext
from .model_fill import model_stage
from .patches import nlm_stage, patch_stage
from .refiner import refine_stage
from .rims import missed_rims
from .settings import STAGES, FillSettings, fallback

PIPELINE = (("model", model_stage), ("patch", patch_stage), ("nlm", nlm_stage), ("blend", blend_stage),
            ("refine", refine_stage))
RESULTS = ("refine", "blend", "model")  # the fill is the part of the first of these that ran


@dataclass
class FillParts:
    """The parts of one fill, each a whole image (None where its stage did not run): ``model``, ``patch``,
    ``nlm``, ``blend``, ``refine`` differ from the image inside the working mask (the mask grown by
    ``auto_ring`` and ``ring``; the mask itself without them); ``final`` is the fill, written in the mask only."""

    model: np.ndarray | None = None
    patch: np.ndarray | None = None
    nlm: np.ndarray | None = None
    blend: np.ndarray | None = None
    refine: np.ndarray | None = None
    final: np.ndarray | None = None
    stages: tuple[str, ...] = ()
    mask: np.ndarray | None = None  # the working mask
    rim_voxels: int = 0  # voxels auto_ring added to the working mask (missed rims)
    background_voxels: int = 0  # mask voxels left as background (keep_background: the mask spills out of the head)
    outline_voxels: int = 0  # mask voxels left as background by the registered template's brain (outline_prior)
    prior: dict | None = None  # the template registration's record (quality, seconds, used; which prior ran), if any
    seconds: dict = field(default_factory=dict)  # wall seconds per stage


def check_stages(stages, settings: FillSettings, refiner) -> tuple[str, ...]:
    """``stages`` (None: what ``settings`` need), validated: known names, the parts each one reads."""
    stages = settings.stages() if stages is None else tuple(stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown fill stages {unknown}; choose from {STAGES}")
    if "model" not in stages:
        raise ValueError("the 'model' stage is needed by every fill (it guides the nlm fill and is the blend's rest)")
    if "refine" in stages:
        if refiner is None:
            raise ValueError("refine: these weights ship no refiner (use refine=False / --no-refine)")
        if not {"patch", "nlm", "blend"} <= set(stages):
            raise ValueError("the 'refine' stage reads the patch, nlm and blend parts: run those stages too")
    return tuple(s for s in STAGES if s in stages)


@torch.inference_mode()
def run_fill(model, ctx: FillContext, settings: FillSettings, *, stages=None, device="cpu",
             progress: bool = False) -> FillParts:
    """Fill ``ctx.mask`` in ``ctx.image`` by ``stages`` (default: those ``settings`` need)."""
    given, rims = ctx, None
    if settings.auto_ring:
        rims = missed_rims(ctx.image, ctx.mask, ctx.brain)
        ctx = ctx.grown(rims) if rims.any() else ctx
    if settings.ring:
        ctx = ctx.widened(settings.ring)
    stages = check_stages(stages, settings, getattr(model, "refiner", None))
    if settings.t_start is not None and not 0 <= settings.t_start < model.cfg.num_train_timesteps:
        raise ValueError(f"t_start must be in [0, {model.cfg.num_train_timesteps - 1}], got {settings.t_start}")
    bar = Progress(len(stages) + (settings.nlm_passes - 1 if "nlm" in stages else 0), progress, "filling")
    ctx = dataclasses.replace(ctx, model=model, device=device, progress=bar)
    parts = FillParts(stages=stages, mask=ctx.mask, rim_voxels=0 if rims is None else int(rims.sum()))
    empty = not ctx.mask.any()  # nothing to fill: the model stage returns the image, the rest is skipped
    try:
        for name, stage in PIPELINE:
            if name not in stages:
                continue
            bar.stage(name)
            t0 = time.perf_counter()
            setattr(parts, name, stage(ctx, parts, settings))
            parts.seconds[name] = time.perf_counter() - t0
            bar.update(1)
            if empty:
                break
    finally:
        bar.close()
    final = next(getattr(parts, n) for n in RESULTS if getattr(parts, n) is not None)
    parts.final = final if ctx.mask is given.mask else np.where(given.mask, final, given.image)
    if empty:
        return parts
    registered = prior_stage(given, parts, settings, seed=ctx.seed)
    if settings.keep_background:
        outside = outside_head(given.image, given.mask, given.affine)
        parts.background_voxels = int(outside.sum())
        if parts.background_voxels:
            parts.final = np.where(outside, given.image, parts.final)
    if parts.prior is not None and parts.prior["outline"]:
        outline_stage(given, parts, registered)
    return parts


def prior_stage(ctx: FillContext, parts: FillParts, settings: FillSettings, seed: int = 0):
    """The registered template, where a prior runs (None elsewhere): the tissue prior on thick masks
    (:func:`prior.thick`), mixed into ``parts.final`` by depth here; the outline prior where a mask reaches the
    empty space around a skull-stripped brain (applied by :func:`outline_stage` after ``keep_background``). One
    registration serves both; ``parts.prior`` records it and which ran."""
    tissue = settings.tissue_prior > 0 and prior.thick(ctx.mask, ctx.voxel_size)
    outline = settings.outline_prior and prior.needs_prior(ctx.image, ctx.mask) and \
        prior.skull_stripped(ctx.image, ctx.mask)
    if not (tissue or outline):
        return None
    t0 = time.perf_counter()
    affine = ctx.affine if ctx.affine is not None else np.diag([*ctx.voxel_size, 1.0])
    registered = prior.register_template(ctx.image, ctx.mask, affine, seed=seed, tissues=tissue)
    parts.prior = {**registered.record(), "outline": outline, "tissue_weight": settings.tissue_prior if tissue else 0}
    image = prior.tissue_image(registered, ctx.image, ctx.mask) if tissue else None
    if image is not None:
        parts.final = prior.depth_blend(parts.final, image, ctx.mask, weight=settings.tissue_prior)
    parts.seconds["prior"] = time.perf_counter() - t0
    return registered


def outline_stage(ctx: FillContext, parts: FillParts, registered) -> None:
    """The mask's voxels that the registered template (its surface moved to the image's own edge) puts outside
    the brain become background (0) in ``parts.final``."""
    offset = prior.edge_offset(registered, ctx.image, ctx.mask) if registered.usable else 0
    out = prior.outside_brain(registered, ctx.mask, offset=offset)
    parts.prior["surface_offset_voxels"] = offset
    parts.outline_voxels = int(out.sum())
    if parts.outline_voxels:
        parts.final = np.where(out, np.float32(0), parts.final)


def settings_for(model, settings: FillSettings | dict | None = None, **overrides) -> FillSettings:
    """The fill settings for ``model``: ``settings`` (default: the weights' own, :attr:`model.fill_settings`, or
    for a model not loaded from weights :func:`usb_prep.fill.settings.fallback`), with ``overrides``
    (``None`` = keep) applied."""
    if settings is None:
        settings = getattr(model, "fill_settings", None) or fallback(getattr(model, "refiner", None) is not None)
    elif isinstance(settings, dict):
        settings = FillSettings.from_dict(settings)
    return settings.replace(**overrides)
