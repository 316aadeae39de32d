"""Stage "model": the diffusion model's own fill, crop by crop around each lesion.

Patch models (``cfg.grid`` None) run on crops at the model's voxel size, averaging ``samples`` fills
under flips of the axes, then shift the fill by the model's own error in the ring around the lesion
(:func:`ring_bias`); whole-brain models (the paper's 160^3 grid) conform the image to their grid.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .. import crops
from ..crops import pad_to, zoom_to
from ..diffusion import sampling
from ..runtime import Progress, generator
from .context import FillContext
from .settings import FillSettings

CONTEXT_MM = 16  # known tissue around each lesion crop (model voxels)
FLIPS = [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]


def model_fill(model, ctx: FillContext, settings: FillSettings, device, progress: Progress | None = None, *,
               calibrate: bool = True) -> np.ndarray:
    """The whole image with the model's fill inside ``ctx.mask`` (``calibrate``: the ring correction)."""
    progress = progress or Progress(0, False, "")
    if model.cfg.grid is not None:
        return _fill_on_grid(model, ctx, settings, device, progress)
    return _fill_crops(model, ctx, settings, device, progress, calibrate)


def model_stage(ctx: FillContext, parts, settings: FillSettings) -> np.ndarray:
    """Stage "model": :func:`model_fill` by the call's model (``ctx.model``)."""
    return model_fill(ctx.model, ctx, settings, ctx.device, ctx.progress)


def _fill_crops(model, ctx, settings, dev, progress, calibrate) -> np.ndarray:
    cfg, mask = model.cfg, ctx.mask
    out = ctx.image.copy()
    if not mask.any():
        return out
    zoom = np.asarray(ctx.voxel_size, float) / cfg.voxel_mm  # model voxels per input voxel
    needs_zoom = np.any(np.abs(zoom - 1) > 0.15)
    ctx_vox = np.maximum(1, np.round(CONTEXT_MM / zoom)).astype(int)
    boxes = crops.lesion_boxes(mask, int(ctx_vox.max()), 1, 1)
    mirrored = ctx.mirrored if cfg.mirror else None
    hi = float(out[~mask].max()) if (~mask).any() else 1.0  # fills stay within the image's own range
    gen = generator(ctx.seed)
    progress.grow(len(boxes) * settings.steps * settings.samples)
    src = out if ctx.start is None else np.where(mask, ctx.start, out).astype(np.float32)
    for box in boxes:
        v = crops.extract(src, box)
        m = crops.extract(mask, box)
        mi = crops.extract(mirrored, box) if mirrored is not None else None
        if needs_zoom:
            shape = np.maximum(1, np.round(np.array(v.shape) * zoom)).astype(int)
            v_m, m_m = zoom_to(v, shape, 1), zoom_to(m.astype(np.float32), shape, 1) >= 0.5
            mi = zoom_to(mi, shape, 1) if mi is not None else None
        else:
            v_m, m_m = v, m
        filled = fill_crop(model, v_m, m_m, settings, gen, dev, progress, mi, calibrate)
        if needs_zoom:
            filled = zoom_to(filled, v.shape, 1)
        crops.paste(out, box, np.clip(filled, 0.0, hi), mask)
    return out


def fill_crop(model, v, m, settings: FillSettings, gen, dev, progress, mirrored=None, calibrate=True):
    """Fill one crop; ``settings.samples`` > 1 averages that many fills, each under its own flip of the
    axes (patch models are trained orientation-free) and its own noise: a posterior-mean estimate."""
    div = model.divisor * model.downsample
    samples, margin = settings.samples, settings.margin
    vp = pad_to(v.astype(np.float32), div, 2 * div)
    mp = pad_to(m, div, 2 * div)
    mirp = pad_to(mirrored.astype(np.float32), div, 2 * div) if mirrored is not None and model.cfg.mirror else None
    flips = FLIPS if model.cfg.grid is None else [()]
    acc_y, acc_pred = 0.0, 0.0
    for i in range(samples):
        ax = flips[i % len(flips)]

        def f(a):
            return None if a is None else np.ascontiguousarray(np.flip(a, ax) if ax else a)

        y_out, pred = _fill_once(model, f(vp), f(mp), f(mirp), settings, gen, dev, progress)
        acc_y, acc_pred = acc_y + f(y_out), acc_pred + f(pred)
    v_out, pred = acc_y / samples, acc_pred / samples
    if calibrate and model.autoencoder is None:
        v_out = v_out + ring_bias(vp, pred, mp, margin)
    return v_out[tuple(slice(0, n) for n in v.shape)]


def _fill_once(model, vp, mp, mirp, settings, gen, dev, progress):
    """One fill of a padded crop: (filled image, the last step's own prediction), numpy."""
    mir = None if mirp is None else torch.from_numpy(mirp)[None, None].to(dev)
    y0 = model.encode_image(torch.from_numpy(vp)[None, None].to(dev))
    m_t = torch.from_numpy(mp)[None, None].float().to(dev)
    if model.downsample > 1:
        m_t = torch.nn.functional.max_pool3d(m_t, model.downsample)
    for s in sampling.fill_progressive(model, y0, m_t, steps=settings.steps, t_start=settings.t_start, generator=gen,
                                       margin=settings.margin, mirror=mir):
        progress.update(1)
    return tuple(model.decode_image(y)[0, 0].float().cpu().numpy() for y in (s.y, s.y0_pred))


def ring_bias(truth: np.ndarray, pred: np.ndarray, mask: np.ndarray, margin: int,
              sigmas=(8.0, 4.0, 2.0, 1.0)) -> np.ndarray:
    """The model's own error around the lesion, carried inwards (residual interpolation).

    The ring is the mask dilated by ``max(margin, 1)``, minus the mask: voxels whose true values
    are known and that the network predicted (inside the hole when ``margin`` > 0, its first known
    layer otherwise).  ``truth - pred`` there is interpolated into the lesion by normalised
    Gaussian smoothing, coarse to fine: fine scales where the ring is near (thin lesions, edges),
    coarse ones deep inside big lesions, the ring's mean where it is far away.
    """
    ring = ndimage.binary_dilation(mask, iterations=max(margin, 1)) & ~mask
    if not ring.any():
        return np.zeros_like(pred)
    res = np.where(ring, truth - pred, 0.0)
    field = np.full(pred.shape, float(res[ring].mean()), np.float32)
    r = ring.astype(np.float32)
    for sigma in sigmas:
        num = ndimage.gaussian_filter(res, sigma)
        den = ndimage.gaussian_filter(r, sigma)
        alpha = np.clip(den / 0.2, 0.0, 1.0)  # trust a scale where enough ring lies within it
        field = alpha * (num / np.maximum(den, 1e-6)) + (1 - alpha) * field
    return np.where(mask, field, 0.0).astype(np.float32)


def _fill_on_grid(model, ctx, settings, device, progress) -> np.ndarray:
    """Whole-brain models (fixed grid, e.g. the paper's 160^3): conform, fill, map the edit back."""
    image, mask = ctx.image, ctx.mask
    grid_img, back = conform_to_grid(image, model.cfg, ctx.voxel_size)
    grid_mask, _ = conform_to_grid(mask.astype(np.float32), model.cfg, ctx.voxel_size, order=1)
    progress.grow(settings.steps)
    filled = fill_crop(model, grid_img, grid_mask >= 0.5, settings.replace(samples=1), generator(ctx.seed), device,
                       progress)
    out = image.copy()
    edit = back(filled - grid_img)
    out[mask] = image[mask] + edit[mask]
    return out


def conform_to_grid(arr: np.ndarray, cfg, voxel_size, order: int = 1):
    """Resample ``arr`` to ``cfg.grid`` at ``cfg.voxel_mm``, centred on the array's centre.

    Returns the grid array and a function mapping a grid array back to ``arr``'s shape.
    """
    grid = np.array(cfg.grid)
    zoom = np.asarray(voxel_size, float) / cfg.voxel_mm
    shape = np.maximum(1, np.round(np.array(arr.shape) * zoom)).astype(int)
    res = zoom_to(arr.astype(np.float32), shape, order)
    lo = (shape - grid) // 2
    box = crops.Box(tuple(lo), tuple(lo + grid))

    def back(g: np.ndarray) -> np.ndarray:
        full = np.zeros(shape, np.float32)
        crops.paste(full, box, g.astype(np.float32), np.ones(shape, bool))
        return zoom_to(full, arr.shape, 1)

    return crops.extract(res, box), back
