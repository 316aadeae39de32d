"""The Python API: the four USB tasks and lesion filling on images.

Arrays in, arrays out (``*_array``) for pipelines that hold data in memory; images in, images out
(``fill_lesion`` ...) keeping the input's header, affine, shape and dtype. Mask polarity everywhere:
1 = lesion (to fill). The known-mask fill itself lives in :mod:`usb_prep.fill` (settings, stages).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from ._version import __version__
from .embed import embed_array
from .fill.context import FillContext
from .fill import detect
from .fill.pipeline import FillParts, run_fill, settings_for
from .fill.settings import METHODS, FillSettings
from .io import (check_guide, decide_contrast, get_data, guide_array, like_input, load_image, mask_array,
                 told_contrast)
from .runtime import resolve_device, threads
from .generate import (generate_from_mask, generate_from_mask_array, generate_pair, generate_pair_array,
                       grid_affine)
from .weights import WeightsError, fill_role, fill_settings_of, load_model, model_or_load

__all__ = ["FillResult", "FillSettings", "METHODS", "fill_array", "fill_parts", "fill_lesion", "heal_array",
           "detect_array", "embed_array", "embed_lesion", "generate_pair", "generate_pair_array",
           "generate_from_mask", "generate_from_mask_array", "grid_affine", "intensity_scale", "resolve_device"]


@dataclass
class FillResult:
    image: nib.spatialimages.SpatialImage
    mask: nib.spatialimages.SpatialImage
    settings: dict = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)


MAX_BRAIN_SHARE = 0.5  # a mask covering more of the foreground than this leaves too little to fill from
LARGE_MASK_ML = 200.0  # masks larger than this take minutes: say so


def intensity_offset(data: np.ndarray) -> float:
    """What to subtract so that the background is 0 and tissue positive: 0 for the usual images (a few
    negative voxels, e.g. from interpolation, do not count), the 0.5th percentile for shifted or z-scored
    ones (at least 1% of voxels negative: their background is their lowest value)."""
    lo, p1 = np.percentile(data, (0.5, 1.0))
    return float(lo) if p1 < 0 else 0.0


def normalise(data: np.ndarray, mask: np.ndarray | None, messages: list, done: str = "filled"
              ) -> tuple[np.ndarray, float, float]:
    """``(image, scale, offset)``: the image the models read (background 0, brain about [0, 1]; shifted or
    z-scored inputs are shifted first, see :func:`intensity_offset`) and how to map values back
    (``value * scale + offset``). Filling and embedding both read images this way."""
    offset = intensity_offset(data)
    if offset:
        messages.append(f"the image has negative intensities: {done} after shifting its background ({offset:g}) to 0")
    data0 = np.maximum(data - offset, 0) if offset else data
    scale = intensity_scale(data0, mask)
    return (data0 / scale).astype(np.float32), scale, offset


def check_mask(data: np.ndarray, mask: np.ndarray, voxel_ml: float, messages: list) -> None:
    """Refuse masks that cannot be filled sensibly; note large ones. ``data``: offset, non-negative."""
    fg = data > 0.05 * intensity_scale(data)
    share = (mask & fg).sum() / max(int((fg | mask).sum()), 1)
    if share > MAX_BRAIN_SHARE:
        raise ValueError(f"the mask covers {100 * share:.0f}% of the image's foreground (more than "
                         f"{100 * MAX_BRAIN_SHARE:.0f}%): too little tissue is left to fill from")
    ring = ndimage.binary_dilation(mask, iterations=2) & ~mask
    if ring.any() and (fg & ring).sum() < 0.05 * ring.sum():
        raise ValueError("the mask lies outside the head: its surroundings are background (check the mask's "
                         "orientation and grid)")
    if mask.sum() * voxel_ml > LARGE_MASK_ML:
        messages.append(f"large mask ({mask.sum() * voxel_ml:.0f} ml): filling takes minutes")


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


# --- arrays -----------------------------------------------------------------
def fill_parts(image: np.ndarray, mask: np.ndarray, *, model=None, weights=None, settings=None, stages=None,
               seed: int = 0, voxel_size=(1.0, 1.0, 1.0), affine: np.ndarray | None = None, device="auto",
               progress: bool = False, guide: np.ndarray | None = None, **overrides) -> FillParts:
    """Known-mask filling of a normalised image (float, brain ~[0, 1]); every part of the fill
    (:class:`usb_prep.fill.pipeline.FillParts`). ``settings`` (a :class:`FillSettings` or dict; default: the
    weights' own) with ``overrides`` (its field names) applied; ``stages`` (default: those the settings
    need), e.g. ``("model",)`` for the model's fill alone. ``affine`` tells which voxel axis is left-right
    (for the mirror); without it axis 0 is assumed. ``guide``: another contrast of the same head on the same
    grid, normalised alike and already filled (e.g. the filled T1w for a FLAIR): the patch and nlm fills match
    its patches too (setting ``guide_weight``)."""
    dev = resolve_device(device)
    model = model_or_load(model, weights, "fill", dev)
    s = settings_for(model, settings, **overrides)
    ctx = FillContext(image, mask, affine=affine, voxel_size=tuple(voxel_size), seed=seed, other_contrast=guide)
    return run_fill(model, ctx, s, stages=stages, device=dev, progress=progress)


def fill_array(image: np.ndarray, mask: np.ndarray, **kw) -> np.ndarray:
    """The final fill of :func:`fill_parts` (same arguments): a new array, voxels outside ``mask`` unchanged."""
    return fill_parts(image, mask, **kw).final


def detect_array(image: np.ndarray, *, model=None, weights=None, device="auto", **kw) -> np.ndarray:
    """USB_lesion's estimate of the lesion in ``image`` (:func:`usb_prep.fill.detect.detect_array`)."""
    dev = resolve_device(device)
    return detect.detect_array(image, model_or_load(model, weights, "fill", dev), device=dev, **kw)


def heal_array(image: np.ndarray, *, model=None, weights=None, detect_steps: int = 6, seed: int = 0, device="auto",
               brain=None, voxel_size=(1.0, 1.0, 1.0), dilate: int = 1, **fill_kw) -> tuple[np.ndarray, np.ndarray]:
    """Mask-free pathology-to-healthy: USB_lesion finds the lesion, then :func:`fill_array` (``fill_kw``:
    its settings, stages, affine, progress) heals it. Returns ``(healed, detected_mask)``."""
    dev = resolve_device(device)
    model = model_or_load(model, weights, "fill", dev)
    found = detect_array(image, model=model, steps=detect_steps, seed=seed, device=dev, brain=brain,
                         voxel_size=voxel_size)
    if dilate:
        found = ndimage.binary_dilation(found, iterations=dilate)
    healed = fill_array(image, found, model=model, seed=seed, voxel_size=voxel_size, device=dev, **fill_kw)
    return healed, found


# --- images -----------------------------------------------------------------
def _voxel_size(img) -> tuple[float, float, float]:
    return tuple(float(z) for z in img.header.get_zooms()[:3])


def prior_messages(parts) -> list[str]:
    """What a fill's template priors did (``parts.prior``), in words."""
    p, said = parts.prior, []
    how = f"registration correlation {p['quality']:.2f}, {p['seconds']:.0f} s"
    which = " and ".join(n for n, ran in (("tissue", p["tissue_weight"] > 0), ("outline", p["outline"])) if ran)
    if not p["used"]:
        return [f"the {which} prior was not used: {p.get('note', '')}; filled as without it"]
    if p["tissue_weight"] > 0:
        said.append(f"a thick mask: the registered MNI152 tissue image mixed into the fill's depth (tissue_prior "
                    f"{p['tissue_weight']}; {how})")
    if p["outline"]:
        said.append(f"the mask reaches past the brain: {parts.outline_voxels} mask voxels that the registered MNI152 "
                    f"brain puts outside it left as background (outline_prior; {how})")
    return said


def fill_lesion(image, mask=None, *, weights=None, seed: int = 0, device="auto", method: str = "usb",
                resample_mask: bool = False, progress: bool = False, num_threads: int | None = None,
                mask_kind: str = "lesion", settings=None, contrast: str = "t1w", guide=None, **overrides) -> FillResult:
    """Fill the lesion (mask 1 = lesion) in a NIfTI/MGZ image; without a mask, heal mask-free (T1w only).

    ``contrast``: the image's contrast (t1w, t2w, flair; ``"auto"``: told by the file name's BIDS suffix or its
    sidecar, else an error): the weights' model for that contrast fills the lesion.
    ``guide``: another contrast of the same subject (path or image), its lesion already filled, aligned with the
    image (resampled onto its grid by world coordinates where the grids differ), e.g. the filled T1w when
    filling a FLAIR: the patch fills match its anatomy too (method "usb" with a mask only).
    ``settings`` / ``overrides``: the fill settings (:class:`FillSettings` fields; ``method="usb"`` only).
    The returned image has the input's header, affine, shape and dtype, and every voxel outside the
    mask keeps its stored value bit for bit.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    if guide is not None and (method != "usb" or mask is None):
        raise ValueError("a guide contrast serves method 'usb' with a mask only")
    given = {k: v for k, v in overrides.items() if v is not None}
    contrast = str(contrast).lower()
    named = told_contrast(image) if isinstance(image, (str, os.PathLike)) else (None, None)
    # an option that says what the name says (the BIDS app passes the suffix) records the name as the source
    told, source = named if contrast == "auto" or contrast == named[0] else (contrast, "option")
    if told is not None:
        fill_role(told)  # unknown contrasts fail here
    if method != "usb" and (given or settings is not None):
        raise ValueError(f"fill settings ({', '.join(sorted(given)) or 'settings'}) apply to method 'usb' only, "
                         f"not {method!r}")
    if method == "usb" and told is not None:
        _check_settings(weights, settings, given, told)  # bad names and values fail before reading any image
    t0 = time.perf_counter()
    img = load_image(image, what="image")
    messages: list[str] = []
    data = get_data(img)
    m = None
    if mask is not None:
        m = mask_array(load_image(mask, what="mask"), img, resample_mask=resample_mask, messages=messages)
    g = None if guide is None else guide_array(load_image(guide, what="guide image"), img, messages)
    contrast, source, _ = decide_contrast(told, source, data, m, _voxel_size(img), str(image), messages)
    if contrast is None and (method == "usb" or mask is None):
        raise ValueError(f"cannot tell the contrast of {image}: not from its name (BIDS suffix _T1w, _T2w, _FLAIR), "
                         "its sidecar or its tissue levels; give it (--contrast t1w|t2w|flair)")
    role = fill_role(contrast) if contrast else None
    if mask is None and contrast != "t1w":
        raise ValueError(f"mask-free healing (no mask) reads T1w images only; give the lesion mask of this "
                         f"{contrast} image")
    if method == "usb" and told is None:
        _check_settings(weights, settings, given, contrast)
    record = {"method": method, "contrast": contrast, "contrast_source": source, "seed": seed, "mask_kind": mask_kind,
              "usb_prep_version": __version__,
              "torch_version": torch.__version__, "mask_given": mask is not None,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with threads(num_threads):
        record["num_threads"] = torch.get_num_threads()
        if m is not None and not m.any():
            out_img = like_input(data, img, where=np.zeros(data.shape, bool))
            return FillResult(out_img, _mask_img(m, img), record, messages)
        vox = _voxel_size(img)
        v, scale, offset = normalise(data, m, messages)
        if m is not None:
            check_mask(v, m, float(np.prod(vox)) / 1000, messages)
        gv = None
        if g is not None:  # an empty or non-overlapping guide stops here; a doubtful one is left out
            gv = normalise(g, m, [])[0]
            unused = check_guide(gv, v, m)
            if unused:
                messages.append(f"warning: {unused}")
                record["guide_unused"] = unused
                gv = None
        if method == "usb":
            dev = resolve_device(device)
            model, info = load_model(weights, role, dev)
            s = settings_for(model, settings, **given)
            record.update(weights=info, device=str(dev), **s.to_dict())
            if gv is not None:
                record["guide"] = str(guide) if isinstance(guide, (str, os.PathLike)) else "image"
            kw = dict(model=model, settings=s, seed=seed, voxel_size=vox, device=dev, progress=progress,
                      affine=img.affine)
            if m is None:
                filled, m = heal_array(v, **kw)
                messages.append(f"no mask given: USB_lesion detected {int(m.sum())} lesion voxels, then filled them")
            else:
                parts = fill_parts(v, m, guide=gv, **kw)
                filled = parts.final
                record["rim_voxels"] = parts.rim_voxels
                if parts.rim_voxels:
                    messages.append(f"{parts.rim_voxels} voxels just outside the mask look like a lesion rim the mask "
                                    "misses: filled around, not written (auto_ring)")
                record["background_voxels"] = parts.background_voxels
                if parts.background_voxels:
                    messages.append(f"{parts.background_voxels} mask voxels lie outside the head (background here and "
                                    "in the mirror): left as background (keep_background)")
                if parts.prior is not None:
                    messages += prior_messages(parts)
                    record["prior_run"] = {**parts.prior, "outline_voxels": parts.outline_voxels}
        else:
            if m is None:
                raise ValueError(f"method {method!r} needs a mask")
            from .fill.fillers import FILLERS

            kw = {}
            if method == "nlm":  # the weights' search window (the packaged ones': what the benchmark chose)
                kw["search"] = fill_settings_of(weights, {}, "t1w").nlm_search
                record["nlm_search"] = kw["search"]
            filled = FILLERS[method](v, m, np.random.default_rng(seed), **kw)
        record["intensity_scale"], record["intensity_offset"] = scale, offset
    record["seconds"] = round(time.perf_counter() - t0, 2)
    record["mask_voxels"] = int(m.sum())
    out_img = like_input(filled.astype(np.float64) * scale + offset, img, where=m)
    return FillResult(out_img, _mask_img(m, img), record, messages)


def _check_settings(weights, settings, given: dict, contrast: str) -> None:
    """Fill settings checked against the weights' own for ``contrast`` (unknown names, bad values and
    combinations fail before any work)."""
    if settings is None:
        try:
            fill_settings_of(weights, given, contrast)
        except WeightsError:  # unusable weights are reported where the model loads, after the inputs
            FillSettings.model_only().replace(**given)
    elif not isinstance(settings, dict):
        settings.replace(**given)


def _mask_img(m: np.ndarray, ref):
    out = nib.Nifti1Image(m.astype(np.uint8), ref.affine)
    if hasattr(ref.header, "get_xyzt_units"):
        out.header.set_xyzt_units(*ref.header.get_xyzt_units())
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
        v, scale, offset = normalise(data, m, messages, done="embedded")
        out = embed_array(v, m, model=model, steps=steps, t_start=t_start, seed=seed, device=dev, progress=progress)
    region = ndimage.binary_dilation(m, iterations=2)
    settings = {"task": "embed", "seed": seed, "steps": steps, "t_start": t_start, "weights": info,
                "intensity_scale": scale, "intensity_offset": offset, "usb_prep_version": __version__}
    return FillResult(like_input(out.astype(np.float64) * scale + offset, img, where=region), _mask_img(m, img),
                      settings, messages)


