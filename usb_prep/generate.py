"""Generation: lesion/brain pairs, unconditionally or for a given mask, on the generation model's grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from .diffusion import sampling
from .io import get_data, load_image
from .runtime import Progress, generator, resolve_device, threads
from .weights import load_model, model_or_load


@torch.inference_mode()
def generate_pair_array(*, model=None, weights=None, steps: int | None = None, seed: int = 0, device="auto",
                        progress=False) -> tuple[np.ndarray, np.ndarray]:
    """Unconditional paired generation on the model's grid: ``(brain [0, 1], lesion mask bool)``."""
    dev = resolve_device(device)
    model = model_or_load(model, weights, "generate", dev)
    shape = [g // model.downsample for g in _grid(model)]
    steps = steps or model.cfg.default_steps
    bar = Progress(steps, progress, "generating")
    for s in sampling.generate_pair_progressive(model, shape, steps=steps, generator=generator(seed), device=dev):
        bar.update()
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


@torch.inference_mode()
def generate_from_mask_array(mask: np.ndarray, *, model=None, weights=None, steps: int | None = None, seed: int = 0,
                             device="auto", progress=False) -> np.ndarray:
    """Brain image for a given lesion mask on the model grid."""
    dev = resolve_device(device)
    model = model_or_load(model, weights, "generate", dev)
    m_t = torch.from_numpy(np.asarray(mask, np.float32))[None, None].to(dev)
    y = sampling.generate_from_mask(model, model.encode_mask(m_t), steps=steps or model.cfg.default_steps,
                                    generator=generator(seed))
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


def generate_from_mask(mask, *, weights=None, steps=None, seed: int = 0, device="auto", progress=False,
                       num_threads=None):
    """A brain image for the given lesion mask (resampled onto the model grid by world coordinates)."""
    from .io import resample_like

    with threads(num_threads):
        dev = resolve_device(device)
        model, _ = load_model(weights, "generate", dev)
        ref = _grid_image(np.zeros(model.cfg.grid), model.cfg)
        m = get_data(resample_like(load_image(mask, what="mask"), ref, order=1)) >= 0.5
        brain = generate_from_mask_array(m, model=model, steps=steps, seed=seed, device=dev, progress=progress)
    return _grid_image(brain, model.cfg)
