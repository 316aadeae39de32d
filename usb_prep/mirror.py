"""Left-right mirror of a brain across its midline: the contralateral prior for filling."""

from __future__ import annotations

import nibabel as nib
import numpy as np


def lr_axis(affine: np.ndarray | None) -> int:
    """Voxel axis that runs left-right in world space (0 for RAS/LAS arrays or no affine)."""
    if affine is None:
        return 0
    codes = nib.orientations.aff2axcodes(affine)
    return next(i for i, c in enumerate(codes) if c in ("L", "R"))


def midline(data: np.ndarray, axis: int) -> float:
    """Centre of mass of the foreground along ``axis`` (voxels), a robust midline for roughly aligned heads."""
    fg = data > 0.1 * np.percentile(data[data > 0], 99) if np.any(data > 0) else np.ones(data.shape, bool)
    prof = fg.sum(axis=tuple(i for i in range(data.ndim) if i != axis)).astype(float)
    if prof.sum() == 0:
        return (data.shape[axis] - 1) / 2
    return float((prof * np.arange(prof.size)).sum() / prof.sum())


def mask_free_midline(image: np.ndarray, mask: np.ndarray, axis: int) -> float:
    """The midline from the left-right lines that miss ``mask``: a voided mask (or one that spills past the head)
    would pull :func:`midline` aside."""
    free = ~mask.any(axis=axis, keepdims=True)
    return midline(np.where(free, image, 0) if free.sum() > 0.2 * free.size else image, axis)


def mirror_lr(data: np.ndarray, affine: np.ndarray | None = None, exclude: np.ndarray | None = None,
              centre: float | None = None) -> np.ndarray:
    """``data`` reflected across the left-right midline; voxels of ``exclude`` (e.g. lesions) are zeroed first.

    Voxel i maps to round(2 c - i); voxels reflected from outside the array are 0.
    """
    axis = lr_axis(affine)
    src = np.where(exclude, 0, data) if exclude is not None else data
    c = midline(data, axis) if centre is None else centre
    n = data.shape[axis]
    idx = np.rint(2 * c - np.arange(n)).astype(int)
    ok = (idx >= 0) & (idx < n)
    out = np.zeros_like(src)
    sl_out = [slice(None)] * data.ndim
    sl_src = [slice(None)] * data.ndim
    sl_out[axis] = np.nonzero(ok)[0]
    sl_src[axis] = idx[ok]
    out[tuple(sl_out)] = src[tuple(sl_src)]
    return out
