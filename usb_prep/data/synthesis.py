"""Synthetic lesions painted into healthy brains ("anomaly randomisation").

Training pairs for the stroke model are synthetic (see docs/usb-method.md, section 1):
a real lesion shape is deformed, placed in a healthy brain, and given an
intensity. The healthy brain is the ground truth for lesion filling.

Everything here is numpy / scipy and takes an explicit ``np.random.Generator`` so
that a seed reproduces a sample exactly. Masks are kept as cropped bounding
boxes: 1000 full 182 x 218 x 182 boolean masks would take 7 GB.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..crops import bbox

log = logging.getLogger(__name__)

#: Intensity encodings drawn for T1w (hypointense family) with their probabilities.
T1_MODES = {"authors": 0.35, "csf": 0.25, "mild": 0.2, "hetero": 0.2}
#: Same for FLAIR / T2w (hyperintense family).
HYPER_MODES = {"authors": 0.4, "uniform": 0.3, "hetero": 0.3}


# --------------------------------------------------------------------------- mask bank
def _resample_crop(data: np.ndarray, src_affine: np.ndarray, shape, affine: np.ndarray):
    """Nearest-neighbour resampling of a mask's bounding box onto a target grid.

    Returns ``(offset, crop)`` with ``crop`` a bool array placed at voxel ``offset``
    of the target grid, or ``None`` when the mask is empty or falls outside.
    """
    idx = np.argwhere(data > 0)
    if idx.size == 0:
        return None
    lo, hi = idx.min(0) - 1, idx.max(0) + 1
    corners = np.array(
        [[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    vox2vox = np.linalg.inv(affine) @ src_affine  # source voxel -> target voxel
    tc = (vox2vox @ corners.T).T[:, :3]
    t_lo = np.clip(np.floor(tc.min(0)).astype(int), 0, np.asarray(shape))
    t_hi = np.clip(np.ceil(tc.max(0)).astype(int) + 1, 0, np.asarray(shape))
    if np.any(t_hi <= t_lo):
        return None
    # target voxel (crop-relative) -> source voxel
    shift = np.eye(4)
    shift[:3, 3] = t_lo
    m = np.linalg.inv(src_affine) @ affine @ shift
    crop = ndimage.affine_transform(
        (data > 0).astype(np.uint8), m[:3, :3], offset=m[:3, 3],
        output_shape=tuple(t_hi - t_lo), order=0, mode="constant", cval=0,
    ).astype(bool)
    if not crop.any():
        return None
    # tighten the box
    idx = np.argwhere(crop)
    c_lo, c_hi = idx.min(0), idx.max(0) + 1
    crop = crop[c_lo[0]:c_hi[0], c_lo[1]:c_hi[1], c_lo[2]:c_hi[2]]
    return tuple(int(v) for v in t_lo + c_lo), crop


def load_mask_bank(
    paths: Sequence[str | Path],
    target_shape_affine: tuple,
    min_ml: float = 0.2,
    max_ml: float = 150.0,
) -> list[dict]:
    """Load binary lesion masks onto one grid, as cropped bounding boxes.

    Parameters
    ----------
    paths : sequence of path
        Mask files (any grid; e.g. SOOP 157x189x136, MS 182x218x182, both MNI).
    target_shape_affine : (shape, affine)
        Target grid, e.g. ``(MNI_SHAPE, MNI_AFFINE)`` from :mod:`usb_prep.data.prep`.
    min_ml, max_ml : float
        Keep masks whose volume on the target grid lies in this range (ml).

    Returns
    -------
    list of dict
        One ``{"name", "offset", "crop", "ml"}`` per kept mask: ``crop`` is a bool
        array whose corner lies at voxel ``offset`` (3 ints) of the target grid.
    """
    import nibabel as nib  # noqa: PLC0415

    shape, affine = target_shape_affine
    shape = tuple(int(s) for s in shape)
    affine = np.asarray(affine, dtype=float)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    bank = []
    for p in paths:
        img = nib.load(str(p))
        data = np.asarray(img.dataobj)
        if data.ndim > 3:
            data = data.reshape(data.shape[:3] + (-1,))[..., 0]
        res = _resample_crop(data, img.affine, shape, affine)
        if res is None:
            continue
        offset, crop = res
        ml = float(crop.sum() * voxel_ml)
        if not (min_ml <= ml <= max_ml):
            continue
        bank.append({"name": Path(p).name.split(".nii")[0], "offset": offset, "crop": crop, "ml": ml})
    log.info("mask bank: kept %d of %d masks", len(bank), len(paths))
    return bank


def place_crop(crop: np.ndarray, offset: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Paste a cropped mask into a full-size zero array (clipped at the borders)."""
    out = np.zeros(tuple(shape), dtype=bool)
    src, dst = [], []
    for o, c, s in zip(offset, crop.shape, shape):
        a, b = max(0, o), min(s, o + c)
        if b <= a:
            return out
        dst.append(slice(a, b))
        src.append(slice(a - o, b - o))
    out[tuple(dst)] = crop[tuple(src)]
    return out


# --------------------------------------------------------------------------- deformation
def _smooth_noise(shape, rng: np.random.Generator, coarse: int = 6, order: int = 3) -> np.ndarray:
    """Smooth random field: Gaussian noise on a coarse grid, spline-upsampled."""
    small = rng.standard_normal(tuple(max(2, -(-s // coarse) + 1) for s in shape))
    zoom = [s / c for s, c in zip(shape, small.shape)]
    out = ndimage.zoom(small, zoom, order=order, mode="nearest", grid_mode=True)
    return out[: shape[0], : shape[1], : shape[2]]


def _divergence_free_velocity(shape, rng, scale: int = 6) -> np.ndarray:
    """Curl of a smooth random vector potential (3, *shape): divergence-free by construction."""
    a = [_smooth_noise(shape, rng, coarse=scale) for _ in range(3)]
    g = [np.gradient(ai) for ai in a]  # g[i][j] = d a_i / d x_j
    v = np.stack([g[2][1] - g[1][2], g[0][2] - g[2][0], g[1][0] - g[0][1]])
    return v


def deform_mask(
    mask: np.ndarray,
    rng: np.random.Generator,
    strength: float = 1.0,
    p_flip: float = 0.5,
    max_rot_deg: float = 15.0,
    scale_range: tuple[float, float] = (0.8, 1.25),
    n_steps: int = 4,
) -> np.ndarray:
    """Randomly and smoothly deform a binary mask (same array shape).

    Advection along a random divergence-free velocity field (the authors use
    Perlin noise; a spline-smoothed Gaussian field plays the same role), a small
    random affine about the mask's centre (rotation, scale) and a random
    left-right flip (axis 0). The soft mask is resampled and thresholded at 0.5.
    Pad a crop before calling if the lesion should be able to grow.

    Parameters
    ----------
    mask : ndarray of bool, 3D
    rng : numpy.random.Generator
    strength : float
        Scales the advection displacement (about ``3 * strength`` voxels at most)
        and the affine ranges; 0 leaves only the flip.
    p_flip : float
        Probability of flipping along axis 0.
    max_rot_deg : float
        Maximum absolute rotation about each axis (degrees), times ``strength``.
    scale_range : (float, float)
        Isotropic scale range; the log-scale is multiplied by ``strength``.
    n_steps : int
        Euler steps of the advection.

    Returns
    -------
    ndarray of bool
    """
    mask = np.asarray(mask, dtype=bool)
    shape = mask.shape
    if not mask.any():
        return mask.copy()
    if rng.random() < p_flip:
        mask = mask[::-1]
    if strength <= 0:
        return mask.copy()
    # Work on a half-resolution grid for the displacement (smooth anyway) to stay fast.
    # Coarse grid of at most ~32^3 points: large (e.g. multi-lesion MS) crops stay fast.
    step = int(max(1 if min(shape) < 8 else 2, np.ceil(np.prod(shape) ** (1 / 3) / 32)))
    cshape = tuple(-(-s // step) for s in shape)
    v = _divergence_free_velocity(cshape, rng)
    vmax = np.abs(v).max() + 1e-8
    disp_total = 3.0 * strength * max(1.0, np.prod(shape) ** (1 / 3) / 64) / step  # coarse voxels
    v *= disp_total / (vmax * n_steps)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in cshape], indexing="ij"))
    pos = grid.copy()
    for _ in range(n_steps):  # integrate the flow: pos <- pos + v(pos)
        vel = np.stack([ndimage.map_coordinates(v[i], pos, order=1, mode="nearest") for i in range(3)])
        pos += vel
    disp = (pos - grid) * step  # fine voxels
    if step > 1:
        disp = np.stack(
            [ndimage.zoom(d, [s / c for s, c in zip(shape, cshape)], order=1, grid_mode=True,
                          mode="nearest")[: shape[0], : shape[1], : shape[2]] for d in disp]
        )
    # Random affine about the mask centre of mass.
    angles = np.deg2rad(rng.uniform(-max_rot_deg, max_rot_deg, 3) * strength)
    lo, hi = np.log(scale_range[0]), np.log(scale_range[1])
    scale = float(np.exp(rng.uniform(lo, hi) * strength))
    rot = _rotation(angles)
    inv = rot.T / scale  # output -> input (inverse mapping)
    centre = np.array(ndimage.center_of_mass(mask))
    full = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    coords = full + disp
    coords = np.einsum("ij,j...->i...", inv, coords - centre[:, None, None, None]) + centre[
        :, None, None, None
    ]
    soft = ndimage.map_coordinates(mask.astype(np.float32), coords, order=1, mode="constant")
    return soft > 0.5


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return (rz @ ry @ rx).astype(np.float32)


# --------------------------------------------------------------------------- painting
def _choose(modes: dict, rng: np.random.Generator) -> str:
    names = list(modes)
    p = np.array([modes[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def paint_lesion(
    image: np.ndarray,
    brain: np.ndarray,
    lesion_mask: np.ndarray,
    rng: np.random.Generator,
    contrast: str = "T1w",
    mode: str | None = None,
    p_rim: float = 0.15,
) -> tuple[np.ndarray, np.ndarray]:
    """Give a lesion an intensity inside a healthy brain image.

    The mask is intersected with the brain; its partial-volume edge is a
    Gaussian-smoothed copy (sigma 0.5-1.5 voxels), clipped to [0, 1] and kept
    inside the brain: the soft map ``P``. Encodings (one drawn per call unless
    ``mode`` is given), with ``W`` the white-matter level (90th brain percentile)
    and ``I_mu`` the mean intensity under the mask:

    T1w (hypointense):
      * ``authors``: ``mu = -(0.75 + 0.25 U) I_mu``, ``sigma = 0.25 U I_mu``,
        ``I <- max(0, I + P (mu + sigma N))`` (docs/usb-method.md, section 1);
      * ``csf``: blend to a CSF-like level ``f W``, ``f ~ U(0.05, 0.4)``;
      * ``mild``: MS-like, multiply by ``f ~ U(0.5, 0.8)``;
      * ``hetero``: blend to a low-frequency random texture in ``[0.05, 0.7] W``.
    FLAIR / T2w (hyperintense): ``authors`` with ``mu = +(0.3 + 0.5 U) I_mu``,
    ``uniform`` (level ``U(1.15, 1.6) W``) and ``hetero``. With probability
    ``p_rim`` a thin hyperintense rim is added (T1w: gliosis-like).

    Parameters
    ----------
    image : ndarray of float, 3D
        Healthy image (normalised, WM about 1).
    brain : ndarray of bool
        Brain mask; the lesion is confined to it.
    lesion_mask : ndarray of bool
        Binary lesion mask, same shape.
    rng : numpy.random.Generator
    contrast : {"T1w", "FLAIR", "T2w"}
    mode : str, optional
        Force one encoding (see above).
    p_rim : float
        Probability of an added rim.

    Returns
    -------
    pathological : ndarray of float32
        Copy of ``image``; voxels where the soft map is 0 are bit-identical.
    soft : ndarray of float32
        The soft lesion map ``P`` in [0, 1].
    """
    image = np.asarray(image)
    out = image.astype(np.float32, copy=True)
    soft_full = np.zeros(image.shape, dtype=np.float32)
    brain = np.asarray(brain, dtype=bool)
    m = np.asarray(lesion_mask, dtype=bool) & brain
    if not m.any():
        return out, soft_full
    hyper = contrast.upper() in ("FLAIR", "T2W", "T2")
    sigma = float(rng.uniform(0.5, 1.5))
    box = bbox(m, int(np.ceil(3 * sigma)) + 1)
    mb, bb, ib = m[box], brain[box], out[box]
    soft = np.clip(ndimage.gaussian_filter(mb.astype(np.float32), sigma), 0.0, 1.0)
    # Keep the core fully lesioned: smoothing would otherwise dim thin lesions.
    soft = np.where(mb, np.maximum(soft, 0.5 + 0.5 * soft), soft) * bb
    soft[soft < 1e-3] = 0.0
    inside = image[brain]
    wm = float(np.percentile(inside, 90)) if inside.size else 1.0
    wm = wm if wm > 0 else 1.0
    i_mu = float(ib[mb].mean())
    mode = mode or _choose(HYPER_MODES if hyper else T1_MODES, rng)
    noise = rng.standard_normal(ib.shape).astype(np.float32)
    if mode == "authors":
        sign = 1.0 if hyper else -1.0
        mu = sign * ((0.3 + 0.5 * rng.random()) if hyper else (0.75 + 0.25 * rng.random())) * i_mu
        sd = 0.25 * rng.random() * i_mu
        new = ib + soft * (mu + sd * noise)
    elif mode == "csf":
        level = rng.uniform(0.05, 0.4) * wm
        new = ib + soft * (level + 0.03 * wm * noise - ib)
    elif mode == "mild":
        f = rng.uniform(0.5, 0.8)
        new = ib * (1.0 - soft * (1.0 - f)) + soft * 0.02 * wm * noise
    elif mode == "uniform":
        level = rng.uniform(1.15, 1.6) * wm
        new = ib + soft * (level + 0.04 * wm * noise - ib)
    elif mode == "hetero":
        tex = _smooth_noise(ib.shape, rng, coarse=int(rng.integers(3, 8)))
        tex = (tex - tex.min()) / (np.ptp(tex) + 1e-6)
        lo, hi = (1.05, 1.7) if hyper else (0.05, 0.7)
        level = (lo + (hi - lo) * tex) * wm
        new = ib + soft * (level + 0.02 * wm * noise - ib)
    else:
        raise ValueError(f"unknown lesion mode {mode!r}")
    if rng.random() < p_rim:
        rim = 4.0 * soft * (1.0 - soft)  # peaks on the partial-volume edge
        new = new + rim * rng.uniform(0.1, 0.3) * wm
    new = np.clip(new, 0.0, max(1.2, float(image.max())))
    sel = soft > 0
    ib[sel] = new[sel].astype(np.float32)  # only the soft map's support changes
    out[box] = ib
    soft_full[box] = soft
    return out, soft_full


# --------------------------------------------------------------------------- pairs
def sample_lesion_pair(
    image: np.ndarray,
    brain: np.ndarray,
    bank: Sequence[dict],
    rng: np.random.Generator,
    p_empty: float = 0.15,
    contrast: str = "T1w",
    max_shift: int = 4,
    p_mirror: float = 0.5,
    deform_strength: float = 1.0,
    min_voxels: int = 20,
    max_tries: int = 5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one (healthy, pathological, mask) training triple.

    A bank entry (see :func:`load_mask_bank`) is placed at its own MNI position,
    mirrored to the other hemisphere with probability ``p_mirror`` (axis 0,
    about the grid centre), shifted by up to ``max_shift`` voxels, deformed
    (:func:`deform_mask`), intersected with the brain and painted
    (:func:`paint_lesion`). With probability ``p_empty`` (or when no placement
    keeps ``min_voxels`` inside the brain) the mask is empty and the
    pathological image equals the healthy one.

    Parameters
    ----------
    image, brain : ndarray
        Healthy image and its brain mask, on the bank's grid.
    bank : sequence of dict
        Entries with ``offset`` and ``crop``.
    rng : numpy.random.Generator
    p_empty : float
        Probability of an empty (no lesion) pair.
    contrast : str
        Passed to :func:`paint_lesion`.

    Returns
    -------
    healthy : ndarray of float32
    pathological : ndarray of float32
    mask : ndarray of bool
        Binary lesion mask (inside the brain).
    """
    healthy = np.asarray(image, dtype=np.float32)
    brain = np.asarray(brain, dtype=bool)
    empty = np.zeros(healthy.shape, dtype=bool)
    if len(bank) == 0 or rng.random() < p_empty:
        return healthy, healthy.copy(), empty
    for _ in range(max_tries):
        entry = bank[int(rng.integers(len(bank)))]
        crop = np.asarray(entry["crop"], dtype=bool)
        pad = 4 + int(0.15 * max(crop.shape))  # room to grow under scaling
        crop = np.pad(crop, pad)
        offset = np.asarray(entry["offset"]) - pad
        mirror = rng.random() < p_mirror
        if mirror:
            crop = crop[::-1]
            offset[0] = healthy.shape[0] - (offset[0] + crop.shape[0])
        offset = offset + rng.integers(-max_shift, max_shift + 1, 3)
        if deform_strength > 0:
            crop = deform_mask(crop, rng, strength=deform_strength, p_flip=0.0)
        mask = place_crop(crop, offset, healthy.shape) & brain
        if mask.sum() >= min_voxels:
            patho, _ = paint_lesion(healthy, brain, mask, rng, contrast=contrast)
            return healthy, patho, mask
    return healthy, healthy.copy(), empty
