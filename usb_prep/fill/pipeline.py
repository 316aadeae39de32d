"""The known-mask fill as named stages: model -> patch, nlm -> blend -> refine.

:func:`run_fill` returns every part it computed (:class:`FillParts`), so benchmarks and refiner
training read parts instead of re-running the fill with weights set to 0. Which stages run is explicit
(``stages=``) or follows from the settings (:meth:`FillSettings.stages`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..runtime import Progress
from .blend import blend, smooth
from .context import FillContext
from .model_fill import model_fill
from .patches import nlm_fill, nlm_guide, patch_fill
from .rims import missed_rims
from .settings import STAGES, FillSettings


@dataclass
class FillParts:
    """The parts of one fill. ``model`` and ``final`` are whole images; ``patch``, ``nlm`` and ``blend`` the
    working mask's voxels (None where the stage did not run). The working mask is the mask grown by
    ``auto_ring`` and ``ring`` (the mask itself without them); ``final`` differs from the image only inside the mask."""

    model: np.ndarray
    patch: np.ndarray | None = None
    nlm: np.ndarray | None = None
    blend: np.ndarray | None = None
    final: np.ndarray | None = None
    stages: tuple[str, ...] = ()
    mask: np.ndarray | None = None  # the working mask
    rim_voxels: int = 0  # voxels auto_ring added to the working mask (missed rims)
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
    refiner = getattr(model, "refiner", None)
    stages = check_stages(stages, settings, refiner)
    if settings.t_start is not None and not 0 <= settings.t_start < model.cfg.num_train_timesteps:
        raise ValueError(f"t_start must be in [0, {model.cfg.num_train_timesteps - 1}], got {settings.t_start}")
    extra = len(stages) - 1 + (settings.nlm_passes - 1 if "nlm" in stages else 0)
    bar = Progress(extra, progress, "filling")
    clock = [time.perf_counter()]

    def done(name, units=1):
        now = time.perf_counter()
        parts.seconds[name] = parts.seconds.get(name, 0.0) + now - clock[0]
        clock[0] = now
        bar.update(units)

    try:
        bar.stage("model")
        parts = FillParts(model=model_fill(model, ctx, settings, device, bar), stages=stages, mask=ctx.mask,
                          rim_voxels=0 if rims is None else int(rims.sum()))
        done("model", units=0)  # the model stage counted its own steps
        if not ctx.mask.any():
            parts.final = given.image.copy()
            return parts
        if "patch" in stages:
            bar.stage("patch")
            parts.patch = patch_fill(ctx, settings)
            done("patch")
        if "nlm" in stages:
            bar.stage("nlm")
            parts.nlm = nlm_fill(ctx, nlm_guide(ctx, parts.model, settings), settings)
            done("nlm")
            for _ in range(settings.nlm_passes - 1):  # each further pass guided by the previous blend
                guide = ctx.whole(blend(ctx, settings, parts.model, parts.patch, parts.nlm))
                parts.nlm = nlm_fill(ctx, guide, settings)
                done("nlm")
        final = parts.model
        if "blend" in stages:
            bar.stage("blend")
            parts.blend = blend(ctx, settings, parts.model, parts.patch, parts.nlm)
            if settings.smooth > 0:
                parts.blend = smooth(ctx, parts.blend, settings.smooth)
            final = ctx.whole(parts.blend)
            done("blend")
        if "refine" in stages:
            from .refiner import refine_fill

            bar.stage("refine")
            values = refine_fill(refiner, ctx.image, ctx.mask, parts.model, ctx.whole(parts.patch),
                                 ctx.whole(parts.nlm), final)
            final = ctx.whole(values)
            done("refine")
        parts.final = final if ctx is given else np.where(given.mask, final, given.image)
        return parts
    finally:
        bar.close()


def settings_for(model, settings: FillSettings | dict | None = None, **overrides) -> FillSettings:
    """The fill settings for ``model``: ``settings`` (default: the weights' own, :attr:`model.fill_settings`,
    or the dataclass defaults with the model config's steps and the refiner where the model has one), with
    ``overrides`` (``None`` = keep) applied."""
    if settings is None:
        settings = getattr(model, "fill_settings", None) or FillSettings(
            steps=model.cfg.default_steps, refine=getattr(model, "refiner", None) is not None)
    elif isinstance(settings, dict):
        settings = FillSettings.from_dict(settings)
    return settings.replace(**overrides)
