"""Data augmentation of (image, mask) pairs, numpy / scipy, explicit RNG.

Spatial transforms (flips, axis permutations, affine, elastic) are applied
identically to image and mask; intensity transforms (bias field, gamma, noise,
blur / low resolution) to the image only. ``image`` may carry a leading channel
axis (e.g. healthy and pathological stacked): every channel then receives the
*same* transforms, noise included, so voxels equal in two channels stay equal.
Random flips and axis permutations make the model orientation agnostic.
Random numbers come from numpy; the heavy resampling runs in torch (CPU), which
is several times faster than ``scipy.ndimage`` at 160^3.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

DEFAULT_PROBABILITIES = {
    "p_flip": 0.5,  # per axis
    "p_permute": 0.3,
    "p_affine": 0.5,
    "p_elastic": 0.3,
    "p_bias": 0.5,
    "p_gamma": 0.4,
    "p_noise": 0.3,
    "p_blur": 0.2,
}


# --------------------------------------------------------------------------- spatial
def _affine_matrix(rng: np.random.Generator, max_rot_deg: float, scale_range) -> np.ndarray:
    a = np.deg2rad(rng.uniform(-max_rot_deg, max_rot_deg, 3))
    c, s = np.cos(a), np.sin(a)
    rx = np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
    ry = np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
    rz = np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
    scale = np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]), 3))
    return rz @ ry @ rx @ np.diag(scale)


def _upsample_smooth(coarse: np.ndarray, shape) -> np.ndarray:
    """Upsample a coarse random grid to ``shape``: cubic to 1/4 size, then trilinear.

    A full-size cubic zoom costs seconds at 160^3; the field is smooth at the
    1/4 scale already, so the final linear step is visually identical.
    """
    mid = tuple(max(c, -(-s // 4)) for s, c in zip(shape, coarse.shape))
    x = ndimage.zoom(coarse, [m / c for m, c in zip(mid, coarse.shape)], order=3,
                     grid_mode=True, mode="nearest").astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(x))[None, None]
    t = F.interpolate(t, size=tuple(int(v) for v in shape), mode="trilinear", align_corners=False)
    return t[0, 0].numpy()


def _elastic_displacement(shape, rng, magnitude: float, spacing: int) -> np.ndarray:
    """Smooth random displacement (3, *shape) in voxels: coarse noise, cubic upsampling."""
    coarse = tuple(max(2, s // spacing + 1) for s in shape)
    out = []
    for _ in range(3):
        out.append(_upsample_smooth(rng.standard_normal(coarse) * magnitude, shape))
    return np.stack(out)


def random_spatial_coords(
    shape,
    rng: np.random.Generator,
    do_affine: bool,
    do_elastic: bool,
    max_rot_deg: float = 10.0,
    scale_range=(0.9, 1.1),
    elastic_magnitude: float = 2.0,
    elastic_spacing: int = 24,
) -> np.ndarray | None:
    """Sampling coordinates (3, *shape) for an affine + elastic warp, or None (identity)."""
    if not (do_affine or do_elastic):
        return None
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    centre = (np.asarray(shape, dtype=np.float32) - 1) / 2
    coords = grid
    if do_affine:
        mat = np.linalg.inv(_affine_matrix(rng, max_rot_deg, scale_range)).astype(np.float32)
        shift = rng.uniform(-3, 3, 3).astype(np.float32)  # small translation (voxels)
        rel = grid - centre[:, None, None, None]
        coords = np.einsum("ij,j...->i...", mat, rel) + (centre + shift)[:, None, None, None]
    if do_elastic:
        coords = coords + _elastic_displacement(shape, rng, elastic_magnitude, elastic_spacing)
    return coords


def _warp_many(vols: np.ndarray, coords: np.ndarray, mode: str) -> np.ndarray:
    """Sample volumes (N, X, Y, Z) at voxel coordinates (3, X, Y, Z); zeros outside."""
    shape = vols.shape[1:]
    c = torch.from_numpy(np.ascontiguousarray(coords, dtype=np.float32))
    # grid_sample wants (x, y, z) = (last, middle, first) axis, normalised to [-1, 1].
    norm = [2.0 * c[i] / max(shape[i] - 1, 1) - 1.0 for i in range(3)]
    grid = torch.stack([norm[2], norm[1], norm[0]], dim=-1)[None]
    v = torch.from_numpy(np.ascontiguousarray(vols, dtype=np.float32))[None]
    out = F.grid_sample(v, grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out[0].numpy()


# --------------------------------------------------------------------------- intensity
def warp_volumes(vols: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Linear resampling of volumes (N, X, Y, Z) at voxel coordinates (3, X, Y, Z); zeros outside."""
    return _warp_many(vols, coords, mode="bilinear")


def random_bias_field(shape, rng: np.random.Generator, strength: float = 0.3) -> np.ndarray:
    """Smooth multiplicative field ``exp(s * n)`` with ``n`` a very low frequency noise."""
    coarse = tuple(3 for _ in shape)
    n = _upsample_smooth(rng.standard_normal(coarse), shape)
    n /= np.abs(n).max() + 1e-6
    return np.exp(rng.uniform(0, strength) * n).astype(np.float32)


def _low_resolution(vol: np.ndarray, axis: int, factor: float) -> np.ndarray:
    """Simulate thick slices along ``axis``: blur, subsample, linear upsample."""
    sigma = [0.0, 0.0, 0.0]
    sigma[axis] = factor / 2.355  # FWHM equal to the slice thickness
    blurred = ndimage.gaussian_filter(vol, sigma)
    zoom = [1.0, 1.0, 1.0]
    zoom[axis] = 1.0 / factor
    small = ndimage.zoom(blurred, zoom, order=1, grid_mode=True, mode="nearest")
    up = ndimage.zoom(small, [s / t for s, t in zip(vol.shape, small.shape)], order=1,
                      grid_mode=True, mode="nearest")
    out = np.zeros_like(vol)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(vol.shape, up.shape))
    out[sl] = up[sl]
    return out


# --------------------------------------------------------------------------- main entry
def augment_pair(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    **probabilities: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly augment an image (or channel stack) and its mask.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z) or (C, X, Y, Z)
        Non-negative intensities; background 0 stays 0 (noise is added to the
        foreground only).
    mask : ndarray, shape (X, Y, Z)
        Bool / integer (nearest neighbour) or float (linear) mask.
    rng : numpy.random.Generator
    **probabilities : float
        Override any of :data:`DEFAULT_PROBABILITIES` (``p_flip`` is per axis),
        e.g. ``augment_pair(img, m, rng, p_elastic=0, p_noise=1)``.

    Returns
    -------
    image, mask : ndarray
        Augmented copies, same shapes (axis permutation may reorder X, Y, Z) and
        dtypes as the inputs.
    """
    unknown = set(probabilities) - set(DEFAULT_PROBABILITIES)
    if unknown:
        raise TypeError(f"unknown augmentation probabilities: {sorted(unknown)}")
    p = {**DEFAULT_PROBABILITIES, **probabilities}
    img = np.asarray(image)
    in_dtype, mask_dtype = img.dtype, np.asarray(mask).dtype
    chans = img.astype(np.float32, copy=False)
    squeeze = chans.ndim == 3
    if squeeze:
        chans = chans[None]
    msk = np.asarray(mask)
    binary_mask = msk.dtype == bool or np.issubdtype(msk.dtype, np.integer)
    msk = msk.astype(np.float32)
    if msk.shape != chans.shape[1:]:
        raise ValueError(f"mask shape {msk.shape} != image shape {chans.shape[1:]}")

    # Exact spatial operations first (no interpolation).
    for axis in range(3):
        if rng.random() < p["p_flip"]:
            chans = np.flip(chans, axis=axis + 1)
            msk = np.flip(msk, axis=axis)
    if rng.random() < p["p_permute"]:
        perm = rng.permutation(3)
        chans = np.transpose(chans, (0, *(perm + 1)))
        msk = np.transpose(msk, perm)
    chans, msk = np.ascontiguousarray(chans), np.ascontiguousarray(msk)

    # Interpolating spatial transform, one coordinate map for everything.
    coords = random_spatial_coords(
        msk.shape, rng, rng.random() < p["p_affine"], rng.random() < p["p_elastic"]
    )
    if coords is not None:
        chans = _warp_many(chans, coords, mode="bilinear")
        msk = _warp_many(msk[None], coords, mode="nearest" if binary_mask else "bilinear")[0]

    # Intensity transforms: identical for all channels.
    fg = np.any(chans > 0, axis=0)
    if rng.random() < p["p_bias"]:
        chans = chans * random_bias_field(msk.shape, rng)[None]
    if rng.random() < p["p_gamma"]:
        gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
        top = float(chans.max()) or 1.0
        chans = top * np.power(np.clip(chans / top, 0, None), gamma)
    if rng.random() < p["p_blur"]:
        if rng.random() < 0.5:
            sigma = float(rng.uniform(0.3, 1.2))
            chans = np.stack([ndimage.gaussian_filter(c, sigma) for c in chans])
        else:
            axis, factor = int(rng.integers(3)), float(rng.uniform(2.0, 4.0))
            chans = np.stack([_low_resolution(c, axis, factor) for c in chans])
        chans = chans * fg[None]  # blur must not leak into the background
    if rng.random() < p["p_noise"]:
        sd = float(rng.uniform(0.005, 0.04)) * (float(np.percentile(chans[:, fg], 99)) if fg.any() else 1.0)
        noise = rng.standard_normal(msk.shape).astype(np.float32) * sd
        chans = chans + noise[None] * fg[None]
    chans = np.clip(chans, 0, None)

    out = chans[0] if squeeze else chans
    if binary_mask:
        msk_out = (msk > 0.5).astype(mask_dtype)
    else:
        msk_out = msk.astype(mask_dtype)
    out_img = out.astype(in_dtype) if np.issubdtype(in_dtype, np.floating) else out
    return out_img, msk_out
