"""The Python API: the four USB tasks and lesion filling on images.

Arrays in, arrays out (``*_array``) for pipelines that hold data in memory;
images in, images out (``fill_lesion`` ...) keeping the input's header,
affine, shape and dtype.  Mask polarity everywhere: 1 = lesion (to fill).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from . import __version__, crops, sampling
from .io import get_data, like_input, load_image, mask_array
from .mirror import mirror_lr
from .model import USBModel
from .weights import load_model

log = logging.getLogger(__name__)

METHODS = ("usb", "wmstats", "patch", "nlm")


@dataclass
class FillResult:
    image: nib.spatialimages.SpatialImage
    mask: nib.spatialimages.SpatialImage
    settings: dict = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)


# --- helpers ----------------------------------------------------------------
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available; use --device cpu or auto")
    return dev


@contextlib.contextmanager
def threads(n: int | None):
    """Temporarily use ``n`` CPU threads in torch (None: leave as is)."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def intensity_scale(data: np.ndarray, exclude: np.ndarray | None = None, pct: float = 99.5) -> float:
    """Robust scale: the ``pct`` percentile of foreground voxels (> 0, outside ``exclude``)."""
    fg = data > 0
    if exclude is not None:
        fg &= ~exclude
    vals = data[fg]
    if vals.size == 0:
        vals = np.abs(data[np.isfinite(data)])
    s = float(np.percentile(vals, pct)) if vals.size else 1.0
    return s if s > 0 else 1.0


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _zoom_to(arr: np.ndarray, shape, order: int) -> np.ndarray:
    out = ndimage.zoom(arr, [s / a for s, a in zip(shape, arr.shape)], order=order, grid_mode=True, mode="grid-constant")
    return crops.extract(out, crops.Box((0, 0, 0), tuple(shape)))


# --- arrays -----------------------------------------------------------------
def fill_array(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    model: USBModel | None = None,
    weights=None,
    steps: int | None = None,
    t_start: int | None = None,
    seed: int = 0,
    voxel_size=(1.0, 1.0, 1.0),
    device="auto",
    context: int = 16,
    margin: int | None = None,
    acg_region: str = "ring",
    target: str = "noised",
    progress: bool = False,
    affine: np.ndarray | None = None,
    calibrate: bool = True,
    samples: int | None = None,
    patch_weight: float | None = None,
    nlm_weight: float | None = None,
    nlm_passes: int | None = None,
    nlm_coarse: bool | None = None,
    nlm_mirror: bool | None = None,
    patch_mirror: bool | None = None,
    smooth: float | None = None,
    refine: bool | None = None,
) -> np.ndarray:
    """Known-mask filling of a normalised image (float, brain ~[0, 1]); returns a new array.

    Works crop by crop around each lesion at the model's voxel size; voxels
    outside ``mask`` are returned unchanged.  ``affine`` tells which voxel
    axis is left-right (for the mirror prior); without it axis 0 is assumed.
    ``steps``, ``margin``, ``samples`` (fills averaged), ``patch_weight``
    (share of the classical patch fill averaged in: texture copied from the
    image itself, complementary to the model's mean estimate) and
    ``nlm_weight`` (share of the non-local-means patch fill: the mean of the
    best-matching patches' centres, matched against the model's fill as well
    as the known border), ``nlm_passes``, ``nlm_coarse``, ``nlm_mirror``, ``patch_mirror`` and ``smooth`` (see
    :func:`_blend_classical`) default to the model's config (see
    :func:`fill_settings`); the model's fill gets the rest. ``refine`` (default
    true): where the weights ship a refiner (``model.refiner``,
    :mod:`usb_prep.refine`), it corrects the blend (needs both patch fills in it).
    """
    dev = resolve_device(device)
    if model is None:
        model, _ = load_model(weights, "fill", dev)
    cfg = model.cfg
    opts = fill_settings(cfg, steps=steps, margin=margin, samples=samples, patch_weight=patch_weight,
                         nlm_weight=nlm_weight, nlm_passes=nlm_passes, nlm_coarse=nlm_coarse, nlm_mirror=nlm_mirror,
                         patch_mirror=patch_mirror, smooth=smooth, refine=refine)
    steps, margin, samples = opts["steps"], opts["margin"], opts["samples"]
    mask = np.asarray(mask, bool)
    if cfg.grid is not None:
        out = _fill_on_grid(model, image, mask, steps=steps, t_start=t_start, seed=seed, voxel_size=voxel_size,
                            device=dev, margin=margin, acg_region=acg_region, target=target, progress=progress)
    else:
        out = _fill_patches(model, image, mask, steps, t_start, seed, voxel_size, dev, context, margin, acg_region,
                            target, progress, affine, calibrate, samples)
    return _blend(out, image, mask, seed, opts, affine, model.refiner)


def blend_fill(model_fill: np.ndarray, image: np.ndarray, mask: np.ndarray, cfg, *, seed: int = 0,
               affine: np.ndarray | None = None, refiner=None, **settings) -> np.ndarray:
    """The last stage of :func:`fill_array`: the model's own fill (``fill_array`` with ``patch_weight=0,
    nlm_weight=0``) averaged with the patch fills, per ``settings`` (:func:`fill_settings` keywords) and
    the model config ``cfg``, then corrected by ``refiner`` (pass the fill model's ``refiner``) if given.
    ``fill_array(x, seed=s)`` equals ``blend_fill(model_only, x, ..., seed=s, refiner=model.refiner)``:
    callers that want both the model's fill and the default fill run the model once.
    """
    return _blend(np.array(model_fill, np.float32, copy=True), image, np.asarray(mask, bool), seed,
                  fill_settings(cfg, **settings), affine, refiner)


def _blend(out, image, mask, seed, opts, affine, refiner=None):
    if mask.any():
        out[mask] = _blend_classical(out, image, mask, seed, opts, affine, refiner if opts["refine"] else None)
    return out


def _blend_classical(model_fill, image, mask, seed, opts, affine=None, refiner=None) -> np.ndarray:
    """Lesion voxels of the weighted average of the model's fill and the two patch fills (``opts``:
    :func:`fill_settings`).

    The non-local-means fill is guided by the model's: its patch distances see the model's values in
    the unfilled lesion, so deep inside big lesions it copies real tissue that fits the model's layout.
    With ``nlm_coarse`` that guide is the mean of the model's fill and the nlm fill of a 2x coarser
    copy (whose patches reach twice as far from the border); with ``nlm_mirror`` its candidates also come
    from the brain mirrored across the left-right midline (``affine`` tells which axis; the lesion is
    left out of the mirror), so a unilateral lesion can copy its healthy counterpart's tissue, searched in
    the same window (which absorbs the brain's asymmetry), and with ``patch_mirror`` the patch fill's
    candidates too; with ``nlm_passes`` > 1 each further
    pass is guided by the previous pass's average. The model's smooth mean estimate and the patch
    fills (texture copied from the image itself) err differently, so their average beats each of them.
    ``smooth`` > 0 finally smooths the fill by a Gaussian of that sigma (voxels), normalised over the
    brain: the fill's own copying noise averages out. A ``refiner`` (:mod:`usb_prep.refine`) finally
    corrects the result from the model's fill and the two patch fills (when both are in the blend).
    """
    from .classical import coarse_guide, fill_nlm, fill_patch

    w_patch, w_nlm = opts["patch_weight"], opts["nlm_weight"]
    img = np.asarray(image, np.float32)
    brain = img > 0
    base = (1 - w_patch - w_nlm) * model_fill[mask]
    pf = nf = None
    mirrored = None
    if (opts["patch_mirror"] and w_patch > 0) or (opts["nlm_mirror"] and w_nlm > 0):
        mirrored = mirror_lr(img, affine, exclude=mask)
    if w_patch > 0:
        pf = fill_patch(img, mask, np.random.default_rng(seed), brain=brain,
                        extra=mirrored if opts["patch_mirror"] else None)[mask]
        base += w_patch * pf
    out = base
    if w_nlm > 0:
        extra = mirrored if opts["nlm_mirror"] else None
        guide = model_fill
        if opts["nlm_coarse"]:
            guide = 0.5 * model_fill + 0.5 * coarse_guide(img, mask, brain=brain)
        for i in range(opts["nlm_passes"]):
            nf = fill_nlm(img, mask, brain=brain, guide=guide, extra=extra)[mask]
            out = base + w_nlm * nf
            if i + 1 < opts["nlm_passes"]:  # the next pass's guide
                guide = img.copy()
                guide[mask] = out
    if opts["smooth"] > 0:
        out = _smooth_in(img, mask, out, brain | mask, opts["smooth"])
    if refiner is not None and pf is not None and nf is not None:
        from .refine import refine_fill

        def whole(values):
            a = img.copy()
            a[mask] = values
            return a

        out = refine_fill(refiner, img, mask, model_fill, whole(pf), whole(nf), whole(out))
    return out


def _smooth_in(img, mask, values, brain, sigma) -> np.ndarray:
    """``values`` (the mask's voxels) smoothed with their surroundings by a Gaussian normalised over ``brain``."""
    box = crops.lesion_boxes(mask, int(np.ceil(4 * sigma)) + 1, 1, 1)
    full = img.copy()
    full[mask] = values
    out = full.copy()
    for bx in box:
        v, w = crops.extract(full, bx), crops.extract(brain, bx).astype(np.float32)
        sm = ndimage.gaussian_filter(v * w, sigma) / np.maximum(ndimage.gaussian_filter(w, sigma), 1e-6)
        crops.paste(out, bx, sm.astype(np.float32), mask)
    return out[mask]


# fill_settings' keywords besides ``steps``: what fill_lesion records of its ``**kw`` in the sidecar
FILL_SETTINGS = ("margin", "samples", "patch_weight", "nlm_weight", "nlm_passes", "nlm_coarse", "nlm_mirror",
                 "patch_mirror", "smooth", "refine")


def fill_settings(cfg, *, steps=None, margin=None, samples=None, patch_weight=None, nlm_weight=None,
                  nlm_passes=None, nlm_coarse=None, nlm_mirror=None, patch_mirror=None, smooth=None,
                  refine=None) -> dict:
    """Known-mask filling settings: the given ones, the model config's ``default_*`` for the rest."""
    opts = {
        "steps": steps or cfg.default_steps,
        "margin": cfg.default_margin if margin is None else int(margin),
        "samples": max(1, int(samples or cfg.default_samples)),
        "patch_weight": float(cfg.default_patch_weight if patch_weight is None else patch_weight),
        "nlm_weight": float(cfg.default_nlm_weight if nlm_weight is None else nlm_weight),
        "nlm_passes": max(1, int(cfg.default_nlm_passes if nlm_passes is None else nlm_passes)),
        "nlm_coarse": bool(cfg.default_nlm_coarse if nlm_coarse is None else nlm_coarse),
        "nlm_mirror": bool(cfg.default_nlm_mirror if nlm_mirror is None else nlm_mirror),
        "patch_mirror": bool(cfg.default_patch_mirror if patch_mirror is None else patch_mirror),
        "smooth": float(cfg.default_smooth if smooth is None else smooth),
        "refine": True if refine is None else bool(refine),  # used where the weights ship a refiner
    }
    w = (opts["patch_weight"], opts["nlm_weight"])
    if min(w) < 0 or sum(w) > 1 + 1e-6:
        raise ValueError(f"patch_weight and nlm_weight must be >= 0 with a sum <= 1, got {w[0]} and {w[1]}")
    if opts["smooth"] < 0:
        raise ValueError(f"smooth must be >= 0, got {opts['smooth']}")
    return opts


def _fill_patches(model, image, mask, steps, t_start, seed, voxel_size, dev, context, margin, acg_region, target,
                  progress, affine, calibrate, samples) -> np.ndarray:
    """Patch models: fill crop by crop around each lesion at the model's voxel size."""
    cfg = model.cfg
    out = np.array(image, dtype=np.float32, copy=True)
    if not mask.any():
        return out
    zoom = np.asarray(voxel_size, float) / cfg.voxel_mm  # model voxels per input voxel
    needs_zoom = np.any(np.abs(zoom - 1) > 0.15)
    ctx = np.maximum(1, np.round(context / zoom)).astype(int)
    boxes = crops.lesion_boxes(mask, int(ctx.max()), 1, 1)
    mirrored = mirror_lr(out, affine, exclude=mask) if cfg.mirror else None
    hi = float(out[~mask].max()) if (~mask).any() else 1.0  # fills stay within the image's own range
    gen = _generator(seed)
    bar = _progress(len(boxes) * steps * samples, progress, "filling")
    for box in boxes:
        v = crops.extract(out, box)
        m = crops.extract(mask, box)
        mi = crops.extract(mirrored, box) if mirrored is not None else None
        if needs_zoom:
            shape = np.maximum(1, np.round(np.array(v.shape) * zoom)).astype(int)
            v_m, m_m = _zoom_to(v, shape, 1), _zoom_to(m.astype(np.float32), shape, 1) >= 0.5
            mi = _zoom_to(mi, shape, 1) if mi is not None else None
        else:
            v_m, m_m = v, m
        filled = _fill_crop(model, v_m, m_m, steps, t_start, gen, dev, margin, acg_region, target, bar, mi,
                            calibrate, samples)
        if needs_zoom:
            filled = _zoom_to(filled, v.shape, 1)
        crops.paste(out, box, np.clip(filled, 0.0, hi), mask)
    if bar is not None:
        bar.close()
    return out


def _pad_to(arr: np.ndarray, divisor: int, min_size: int = 0):
    shape = [max(-(-s // divisor) * divisor, min_size) for s in arr.shape]
    box = crops.Box((0, 0, 0), tuple(shape))
    return crops.extract(arr, box)


def _fill_crop(model, v, m, steps, t_start, gen, dev, margin, acg_region, target, bar, mirrored=None,
               calibrate=True, samples=1):
    """Fill one crop; ``samples`` > 1 averages that many fills, each under its own flip of the
    axes (patch models are trained orientation-free) and its own noise: a posterior-mean estimate."""
    div = model.divisor * model.downsample
    vp = _pad_to(v.astype(np.float32), div, 2 * div)
    mp = _pad_to(m, div, 2 * div)
    mirp = _pad_to(mirrored.astype(np.float32), div, 2 * div) if mirrored is not None and model.cfg.mirror else None
    flips = [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)] if model.cfg.grid is None else [()]
    acc_y, acc_pred = 0.0, 0.0
    for i in range(samples):
        ax = flips[i % len(flips)]

        def f(a):
            return None if a is None else np.ascontiguousarray(np.flip(a, ax) if ax else a)

        y_out, pred = _fill_once(model, f(vp), f(mp), f(mirp), steps, t_start, gen, dev, margin, acg_region, target,
                                 bar)
        acc_y, acc_pred = acc_y + f(y_out), acc_pred + f(pred)
    v_out, pred = acc_y / samples, acc_pred / samples
    if calibrate and model.autoencoder is None:
        v_out = v_out + _ring_bias(vp, pred, mp, margin)
    return v_out[tuple(slice(0, n) for n in v.shape)]


def _fill_once(model, vp, mp, mirp, steps, t_start, gen, dev, margin, acg_region, target, bar):
    """One fill of a padded crop: (filled image, the last step's own prediction), numpy."""
    mir = None if mirp is None else torch.from_numpy(mirp)[None, None].to(dev)
    y0 = model.encode_image(torch.from_numpy(vp)[None, None].to(dev))
    m_t = torch.from_numpy(mp)[None, None].float().to(dev)
    if model.downsample > 1:
        m_t = torch.nn.functional.max_pool3d(m_t, model.downsample)
    for s in sampling.fill_progressive(model, y0, m_t, steps=steps, t_start=t_start, generator=gen, margin=margin,
                                       acg_region=acg_region, target=target, mirror=mir):
        if bar is not None:
            bar.update(1)
    return tuple(model.decode_image(y)[0, 0].float().cpu().numpy() for y in (s.y, s.y0_pred))


def _ring_bias(truth: np.ndarray, pred: np.ndarray, mask: np.ndarray, margin: int,
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


def _fill_on_grid(model, image, mask, *, steps, t_start, seed, voxel_size, device, margin, acg_region, target, progress):
    """Whole-brain models (fixed grid, e.g. the paper's 160^3): conform, fill, map the edit back."""
    grid_img, back = conform_to_grid(image, model.cfg, voxel_size)
    grid_mask, _ = conform_to_grid(mask.astype(np.float32), model.cfg, voxel_size, order=1)
    filled = _fill_crop(model, grid_img, grid_mask >= 0.5, steps, t_start, _generator(seed), device, margin,
                        acg_region, target, _progress(steps, progress, "filling"))
    out = np.array(image, np.float32, copy=True)
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
    res = _zoom_to(arr.astype(np.float32), shape, order)
    lo = (shape - grid) // 2
    box = crops.Box(tuple(lo), tuple(lo + grid))

    def back(g: np.ndarray) -> np.ndarray:
        full = np.zeros(shape, np.float32)
        crops.paste(full, box, g.astype(np.float32), np.ones(shape, bool))
        return _zoom_to(full, arr.shape, 1)

    return crops.extract(res, box), back


def detect_array(image: np.ndarray, *, model=None, weights=None, steps: int = 6, seed: int = 0, device="auto",
                 brain: np.ndarray | None = None, threshold: float = 0.5, voxel_size=(1.0, 1.0, 1.0),
                 detect_mm: float = 1.5) -> np.ndarray:
    """USB_lesion's estimate of the lesion in ``image`` (boolean), restricted to ``brain``.

    The lesion chain runs against the image noised to each step, on a ``detect_mm`` grid: the
    whole brain at 1 mm costs about a minute per step on a CPU, at 1.5 mm a few seconds.
    """
    dev = resolve_device(device)
    if model is None:
        model, _ = load_model(weights, "fill", dev)
    fg = image > 0.05 if brain is None else brain
    if not fg.any():
        return np.zeros(image.shape, bool)
    idx = np.argwhere(fg)
    box = crops.Box(tuple(idx.min(0) - 2), tuple(idx.max(0) + 3))
    v = crops.extract(image.astype(np.float32), box)
    zoom = np.asarray(voxel_size, float) / detect_mm
    shape = np.maximum(1, np.round(np.array(v.shape) * zoom)).astype(int)
    vz = _pad_to(_zoom_to(v, shape, 1), model.divisor * model.downsample)
    y0 = model.encode_image(torch.from_numpy(vz)[None, None].to(dev))
    x = sampling.detect_lesion(model, y0, steps=steps, t_start=model.cfg.num_train_timesteps - 1, generator=_generator(seed))
    soft = model.decode_mask(x)[0, 0].float().cpu().numpy()[tuple(slice(0, n) for n in shape)]
    out = np.zeros(image.shape, np.float32)
    crops.paste(out, box, _zoom_to(soft, v.shape, 1), np.ones(image.shape, bool))
    return (out >= threshold) & fg


def heal_array(image: np.ndarray, *, model=None, weights=None, steps: int | None = None, detect_steps: int = 6,
               seed: int = 0, device="auto", brain=None, voxel_size=(1.0, 1.0, 1.0), progress=False,
               dilate: int = 1, affine=None) -> tuple[np.ndarray, np.ndarray]:
    """Mask-free pathology-to-healthy: USB_lesion finds the lesion, then known-mask filling heals it.

    Returns ``(healed, detected_mask)``.
    """
    dev = resolve_device(device)
    if model is None:
        model, _ = load_model(weights, "fill", dev)
    found = detect_array(image, model=model, steps=detect_steps, seed=seed, device=dev, brain=brain,
                         voxel_size=voxel_size)
    if dilate:
        found = ndimage.binary_dilation(found, iterations=dilate)
    healed = fill_array(image, found, model=model, steps=steps, seed=seed, voxel_size=voxel_size, device=dev,
                        progress=progress, affine=affine)
    return healed, found


def embed_array(image: np.ndarray, mask: np.ndarray, *, model=None, weights=None, steps: int | None = None,
                t_start: int | None = None, seed: int = 0, device="auto", margin: int = 2, lam: float = 1.0,
                gamma0: float = 20.0, k: float = 0.5, progress=False) -> np.ndarray:
    """Healthy-to-pathology: paint the lesion ``mask`` into a healthy normalised image (ACG + LCG)."""
    dev = resolve_device(device)
    if model is None:
        model, _ = load_model(weights, "fill", dev)
    from .guidance import soft_lesion_map

    mask = np.asarray(mask, bool)
    out = np.array(image, np.float32, copy=True)
    if not mask.any():
        return out
    steps = steps or model.cfg.default_steps
    t_start = 500 if t_start is None else t_start
    gen = _generator(seed)
    div = model.divisor * model.downsample
    region_np = ndimage.binary_dilation(mask, iterations=margin) if margin else mask  # what may change
    for box in crops.lesion_boxes(mask, 16, 1, 1):
        v = crops.extract(out, box)
        m = crops.extract(mask, box)
        vp, mp = _pad_to(v, div, 2 * div), _pad_to(m, div, 2 * div)
        y0 = model.encode_image(torch.from_numpy(vp)[None, None].to(dev))
        m_t = torch.from_numpy(mp)[None, None].float().to(dev)
        code = model.encode_mask(m_t)
        region = sampling.dilate(m_t, margin)
        if model.downsample > 1:
            m_t = torch.nn.functional.max_pool3d(m_t, model.downsample)
            region = torch.nn.functional.max_pool3d(region, model.downsample)
        y = sampling.edit(model, y0, code, steps=steps, t_start=t_start, generator=gen, gamma0=gamma0, k=k,
                          lcg_map=soft_lesion_map(m_t), lam=lam, known=1 - region)
        res = model.decode_image(y)[0, 0].float().cpu().numpy()[tuple(slice(0, n) for n in v.shape)]
        crops.paste(out, box, np.maximum(res, 0), region_np)
    return out


def generate_pair_array(*, model=None, weights=None, steps: int | None = None, seed: int = 0, device="auto",
                        progress=False) -> tuple[np.ndarray, np.ndarray]:
    """Unconditional paired generation on the model's grid: ``(brain [0, 1], lesion mask bool)``."""
    dev = resolve_device(device)
    if model is None:
        model, _ = load_model(weights, "generate", dev)
    shape = [g // model.downsample for g in _grid(model)]
    steps = steps or model.cfg.default_steps
    bar = _progress(steps, progress, "generating")
    for s in sampling.generate_pair_progressive(model, shape, steps=steps, generator=_generator(seed), device=dev):
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    brain = model.decode_image(s.y)[0, 0].clamp(min=0).float().cpu().numpy()
    lesion = model.decode_mask(s.x)[0, 0].float().cpu().numpy() >= 0.5
    head = _largest_component(ndimage.gaussian_filter(brain, 1.0) > 0.1)
    brain = np.where(head, brain, 0.0).astype(np.float32)  # background exactly 0, as in the training images
    return brain, lesion & head


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def generate_from_mask_array(mask: np.ndarray, *, model=None, weights=None, steps: int | None = None, seed: int = 0,
                             device="auto", progress=False) -> np.ndarray:
    """Brain image for a given lesion mask on the model grid."""
    dev = resolve_device(device)
    if model is None:
        model, _ = load_model(weights, "generate", dev)
    m_t = torch.from_numpy(np.asarray(mask, np.float32))[None, None].to(dev)
    y = sampling.generate_from_mask(model, model.encode_mask(m_t), steps=steps or model.cfg.default_steps,
                                    generator=_generator(seed))
    brain = model.decode_image(y)[0, 0].clamp(min=0).float().cpu().numpy()
    head = _largest_component(ndimage.gaussian_filter(brain, 1.0) > 0.1) | np.asarray(mask, bool)
    return np.where(head, brain, 0.0).astype(np.float32)


def _grid(model) -> tuple[int, int, int]:
    if model.cfg.grid is None:
        raise ValueError(f"model {model.cfg.name!r} has no whole-brain grid; generation needs a 'generate' model")
    return tuple(model.cfg.grid)


def grid_affine(cfg) -> np.ndarray:
    """World affine of a model grid: RAS, ``voxel_mm`` voxels, centred on the origin (MNI-like)."""
    grid = np.array(cfg.grid)
    aff = np.diag([cfg.voxel_mm] * 3 + [1.0])
    aff[:3, 3] = -cfg.voxel_mm * (grid - 1) / 2
    return aff


# --- images -----------------------------------------------------------------
def _voxel_size(img) -> tuple[float, float, float]:
    return tuple(float(z) for z in img.header.get_zooms()[:3])


def fill_lesion(image, mask=None, *, weights=None, steps: int | None = None, t_start: int | None = None, seed: int = 0,
                device="auto", method: str = "usb", resample_mask: bool = False, progress: bool = False,
                num_threads: int | None = None, mask_kind: str = "lesion", **kw) -> FillResult:
    """Fill the lesion (mask 1 = lesion) in a NIfTI/MGZ image; without a mask, heal mask-free.

    The returned image has the input's header, affine, shape and dtype, and
    every voxel outside the mask keeps its stored value bit for bit.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    t0 = time.perf_counter()
    img = load_image(image, what="image")
    messages: list[str] = []
    data = get_data(img)
    m = None
    if mask is not None:
        m_img = load_image(mask, what="mask")
        m = mask_array(m_img, img, resample_mask=resample_mask, messages=messages)
    settings = {"method": method, "seed": seed, "steps": steps, "t_start": t_start, "mask_kind": mask_kind,
                "usb_prep_version": __version__, "mask_given": mask is not None}
    with threads(num_threads):
        settings["num_threads"] = torch.get_num_threads()
        if m is not None and not m.any():
            out_img = like_input(data, img, where=np.zeros(data.shape, bool))
            return FillResult(out_img, _mask_img(m, img), settings, messages)
        scale = intensity_scale(data, m)
        v = (data / scale).astype(np.float32)
        vox = _voxel_size(img)
        if method == "usb":
            dev = resolve_device(device)
            model, info = load_model(weights, "fill", dev)
            settings.update(weights=info, device=str(dev), steps=steps or model.cfg.default_steps)
            if m is not None:
                given = {k: kw.get(k) for k in FILL_SETTINGS}
                settings.update(fill_settings(model.cfg, steps=steps, **given))
            if m is None:
                filled, m = heal_array(v, model=model, steps=steps, seed=seed, device=dev, voxel_size=vox,
                                       progress=progress, affine=img.affine)
                messages.append(f"no mask given: USB_lesion detected {int(m.sum())} lesion voxels, then filled them")
            else:
                filled = fill_array(v, m, model=model, steps=steps, t_start=t_start, seed=seed, voxel_size=vox,
                                    device=dev, progress=progress, affine=img.affine, **kw)
        else:
            if m is None:
                raise ValueError(f"method {method!r} needs a mask")
            from . import classical

            filled = classical.FILLERS[method](v, m, np.random.default_rng(seed))
        settings["intensity_scale"] = scale
    settings["seconds"] = round(time.perf_counter() - t0, 2)
    settings["mask_voxels"] = int(m.sum())
    out_img = like_input(filled.astype(np.float64) * scale, img, where=m)
    return FillResult(out_img, _mask_img(m, img), settings, messages)


def _mask_img(m: np.ndarray, ref):
    out = nib.Nifti1Image(m.astype(np.uint8), ref.affine)
    out.header.set_xyzt_units(*ref.header.get_xyzt_units()) if hasattr(ref.header, "get_xyzt_units") else None
    return out


def embed_lesion(image, mask, *, weights=None, steps=None, t_start=None, seed: int = 0, device="auto",
                 progress: bool = False, resample_mask: bool = False, num_threads=None) -> FillResult:
    """Healthy-to-pathology: paint the lesion ``mask`` into a healthy image (header kept)."""
    img = load_image(image, what="image")
    messages: list[str] = []
    m = mask_array(load_image(mask, what="mask"), img, resample_mask=resample_mask, messages=messages)
    data = get_data(img)
    with threads(num_threads):
        dev = resolve_device(device)
        model, info = load_model(weights, "fill", dev)
        scale = intensity_scale(data)
        out = embed_array((data / scale).astype(np.float32), m, model=model, steps=steps, t_start=t_start, seed=seed,
                          device=dev, progress=progress)
    region = ndimage.binary_dilation(m, iterations=2)
    settings = {"task": "embed", "seed": seed, "steps": steps, "t_start": t_start, "weights": info,
                "intensity_scale": scale, "usb_prep_version": __version__}
    return FillResult(like_input(out.astype(np.float64) * scale, img, where=region), _mask_img(m, img), settings, messages)


def _grid_image(arr: np.ndarray, cfg, dtype=np.float32):
    img = nib.Nifti1Image(arr.astype(dtype), grid_affine(cfg))
    img.header.set_xyzt_units("mm")
    return img


def generate_pair(*, weights=None, steps=None, seed: int = 0, device="auto", progress=False, num_threads=None):
    """Unconditional paired generation: ``(brain image, lesion mask image)`` on the model grid."""
    with threads(num_threads):
        dev = resolve_device(device)
        model, _ = load_model(weights, "generate", dev)
        brain, lesion = generate_pair_array(model=model, steps=steps, seed=seed, device=dev, progress=progress)
    return _grid_image(brain, model.cfg), _grid_image(lesion, model.cfg, np.uint8)


def generate_from_mask(mask, *, weights=None, steps=None, seed: int = 0, device="auto", progress=False, num_threads=None):
    """A brain image for the given lesion mask (resampled onto the model grid by world coordinates)."""
    with threads(num_threads):
        dev = resolve_device(device)
        model, _ = load_model(weights, "generate", dev)
        m_img = load_image(mask, what="mask")
        ref = _grid_image(np.zeros(model.cfg.grid), model.cfg)
        m = get_data(resample_like_world(m_img, ref)) >= 0.5
        brain = generate_from_mask_array(m, model=model, steps=steps, seed=seed, device=dev, progress=progress)
    return _grid_image(brain, model.cfg)


def resample_like_world(moving, reference):
    from .io import resample_like

    return resample_like(moving, reference, order=1)
