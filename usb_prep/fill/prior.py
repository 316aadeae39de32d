"""Anatomical priors from nilearn's MNI152 2009 template registered to the image: the brain's outline for masks
that reach its edge (``outline_prior``), its tissue maps for thick masks (``tissue_prior``).

Tissue prior: :func:`register_template` with ``tissues`` also warps the GM and WM maps (1 mm);
:func:`tissue_image` multiplies them by the image's own tissue levels (measured outside the mask), and
:func:`depth_blend` mixes that into the fill by depth. It runs on masks :func:`thick` admits (30 ml or more, 6 voxels
deep). Validation (``python -m benchmarks study tissue-prior``, 6 strokes of 37-264 ml on colin27_brain and fsA_norm):
+0.29 dB at weight 0.6, under the +0.3 dB its rule asked: off by default (training log, 2026-12-08, second session).

Where a mask reaches past a skull-stripped brain (an inpainting region placed at the surface, a mask drawn
before stripping or dilated), no filler knows where the brain ended: each paints tissue up to the mask's edge.
:func:`register_template` registers nilearn's MNI152 2009 brain (shipped with nilearn: no download) to the image
with antspyx, the mask (grown) left out of the metric, affine then SyN at 3 mm, and warps its brain mask onto the
image's grid. Skull strips differ (FreeSurfer's keeps more than MNI152's brain mask): :func:`edge_offset` moves the
warped brain's surface until it matches the image's own edge near the mask. :func:`outside_brain` then keeps as
background the mask's voxels that the moved brain puts outside it.

Chosen on validation masks only (``python -m benchmarks study prior-outline``: strokes grown past colin27_brain and
fsA_norm, voided; usb_prep's fill with the outline applied): 3 mm with the edge offset, +0.63 dB on average over
the fill without it, no case worse; 2 mm was +0.12 dB better again at twice the time, under the 0.2 dB the rule
asked for; the level 0.5 without the offset lost up to 1.1 dB on fsA_norm (its strip is wider than the
template's brain), ``benchmarks/results/validation/prior_outline_usb.md``. The BraTS inpainting case, once: 15.71
-> 18.16 dB. But it also runs on masks that lie inside the brain and touch its surface, and there it empties brain
(6 of the benchmark's 16 cases, -0.12 to -0.63 dB, ``validation/prior_check.md``): off by default
(``outline_prior``), for masks known to reach past the brain (inpainting regions, masks drawn before stripping).

It runs only where it can matter (:func:`needs_prior`): the mask touches the image's background (value <= 0)
and that background is the empty space around a skull-stripped brain, not a dark lesion. Small and deep masks
never touch it, so they keep their speed. Registration quality is the correlation of the warped template with
the image in the brain outside the mask; below :data:`MIN_QUALITY` (or if antspyx is missing or fails) the
prior is not used and the fill says why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SPACING = 3.0  # mm: the registration's grid (the outline needs no finer; 1 mm SyN took 89 s on 2 cores)
EXCLUDE_GROW = 3  # voxels the mask is grown by before it is left out of the registration's metric
THRESHOLD = 0.5  # warped brain-mask value under which a mask voxel is outside the brain (fixed a priori)
MIN_QUALITY = 0.5  # correlation of warped template and image (brain, outside the mask) below which it is unused
EMPTY_SHARE = 0.9  # share of the non-brain voxels near the brain that must be 0 for the image to be skull-stripped


@dataclass
class Prior:
    """The registered template on the image's grid: ``brain`` (warped brain-mask, 0-1), ``quality``
    (correlation with the image outside the mask), ``seconds`` and ``note`` (why it is unused, when it is)."""

    brain: np.ndarray | None
    quality: float
    seconds: float
    note: str = ""
    tissues: np.ndarray | None = None  # (CSF, GM, WM) probabilities on the image's grid, when asked for

    @property
    def usable(self) -> bool:
        return self.brain is not None and self.quality >= MIN_QUALITY

    def record(self) -> dict:
        """What the sidecar says of it."""
        return {"quality": round(float(self.quality), 3), "seconds": round(self.seconds, 1),
                "used": self.usable, **({"note": self.note} if self.note else {})}


def needs_prior(image: np.ndarray, mask: np.ndarray) -> bool:
    """Whether a mask needs the outline prior: it touches background (<= 0) voxels outside itself that belong to
    the empty space around a skull-stripped brain (connected to the volume's border through zeros)."""
    if not mask.any():
        return False
    ring = ndimage.binary_dilation(mask, iterations=2) & ~mask
    zero = (image <= 0) & ~mask
    if not (ring & zero).any():
        return False
    labels, _ = ndimage.label(zero | mask)  # background reached through the mask counts as outside too
    border = np.unique(np.concatenate([labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(),
                                       labels[:, -1].ravel(), labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    outside = np.isin(labels, border[border > 0])
    return bool((ring & zero & outside).any())


def skull_stripped(image: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the image is a skull-stripped brain: the voxels in a 5-voxel shell around its foreground
    (the mask left out) are almost all exactly 0 (a head image has skull and scalp there)."""
    fg = (image > 0) | mask
    fg = ndimage.binary_fill_holes(ndimage.binary_closing(fg, iterations=2))
    shell = ndimage.binary_dilation(fg, iterations=5) & ~ndimage.binary_dilation(fg, iterations=1) & ~mask
    return bool(shell.any()) and float((image[shell] <= 0).mean()) >= EMPTY_SHARE and \
        float((image[fg & ~mask] <= 0).mean()) < 0.2


def _template():
    """nilearn's MNI152 2009 brain (2 mm, skull stripped by its brain mask) and that mask."""
    import nibabel as nib
    from nilearn import datasets

    tmpl = datasets.load_mni152_template(resolution=2)
    bmask = datasets.load_mni152_brain_mask(resolution=2)
    b = np.asarray(bmask.dataobj, np.float32)
    t = np.asarray(tmpl.dataobj, np.float32) * (b > 0.5)
    return nib.Nifti1Image(t, tmpl.affine), nib.Nifti1Image(b, bmask.affine)


def _tissue_maps():
    """nilearn's MNI152 2009 GM and WM probability maps at 1 mm."""
    from nilearn import datasets

    return datasets.load_mni152_gm_template(resolution=1), datasets.load_mni152_wm_template(resolution=1)


def register_template(image: np.ndarray, mask: np.ndarray, affine: np.ndarray, *, spacing: float = SPACING,
                      seed: int = 0, tissues: bool = False) -> Prior:
    """MNI152's brain mask warped onto ``image``'s grid (affine, then SyN at ``spacing`` mm; mattes mutual
    information, so any contrast), the mask grown by :data:`EXCLUDE_GROW` left out of the metric; with
    ``tissues`` its CSF, GM and WM maps too (:attr:`Prior.tissues`)."""
    import nibabel as nib

    t0 = time.perf_counter()
    try:
        import ants
    except ImportError:
        return Prior(None, 0.0, 0.0, "antspyx is not installed (pip install 'usb_prep[registration]')")
    from ..data.prep import ants_to_nib, nib_to_ants, seeded_registration

    try:
        tmpl, bmask = _template()
        fixed_full = nib_to_ants(nib.Nifti1Image(np.asarray(image, np.float32), affine))
        keep = ~ndimage.binary_dilation(mask, iterations=EXCLUDE_GROW)
        weight_full = nib_to_ants(nib.Nifti1Image(keep.astype(np.float32), affine))
        fixed = ants.resample_image(fixed_full, (spacing,) * 3, use_voxels=False, interp_type=0)
        weight = ants.resample_image_to_target(weight_full, fixed, interpolator="nearestNeighbor")
        moving = ants.resample_image(nib_to_ants(tmpl), (spacing,) * 3, use_voxels=False, interp_type=0)
        reg = seeded_registration(ants, seed=seed, fixed=fixed, moving=moving, type_of_transform="SyN",
                                  mask=weight, aff_metric="mattes", syn_metric="mattes",
                                  reg_iterations=(40, 20, 0), verbose=False)
        warped_brain = ants.apply_transforms(fixed_full, nib_to_ants(bmask), reg["fwdtransforms"],
                                             interpolator="linear")
        warped_t1 = ants.apply_transforms(fixed, moving, reg["fwdtransforms"], interpolator="linear")
        brain = np.clip(ants_to_nib(warped_brain).get_fdata(dtype=np.float32), 0, 1)
        maps = None
        if tissues:
            gm, wm = (np.clip(ants_to_nib(ants.apply_transforms(fixed_full, nib_to_ants(m), reg["fwdtransforms"],
                                                                 interpolator="linear")).get_fdata(dtype=np.float32),
                              0, 1) for m in _tissue_maps())
            maps = np.stack([np.clip(brain - gm - wm, 0, 1), gm, wm])
        a, w = fixed.numpy(), weight.numpy() > 0.5
        t = warped_t1.numpy()
        sel = w & (a > 0) & (t > 0)
        quality = float(np.corrcoef(a[sel], t[sel])[0, 1]) if sel.sum() > 100 else 0.0
    except Exception as e:  # noqa: BLE001 -- any registration failure falls back to the fill without the prior
        return Prior(None, 0.0, time.perf_counter() - t0, f"registration failed: {e}")
    if not np.isfinite(quality):
        quality = 0.0
    note = "" if quality >= MIN_QUALITY else f"registration poor (correlation {quality:.2f} < {MIN_QUALITY})"
    return Prior(brain, quality, time.perf_counter() - t0, note, maps)


def _band(mask: np.ndarray, band: int) -> np.ndarray:
    """The voxels within ``band`` of the mask, the mask grown by :data:`EXCLUDE_GROW` left out: where the image's
    own brain edge is known and compared with the template's."""
    return ndimage.binary_dilation(mask, iterations=band) & ~ndimage.binary_dilation(mask, iterations=EXCLUDE_GROW)


def edge_threshold(prior: Prior, image: np.ndarray, mask: np.ndarray, band: int = 8) -> float:
    """The warped brain-mask level that best matches the image's own brain edge near the mask: in a band of
    ``band`` voxels around the mask (the mask grown by :data:`EXCLUDE_GROW` left out), the level whose brain
    (``prior.brain >= level``) agrees with the image's (``image > 0``) on the most voxels. Corrects a template
    brain that is, locally, a little too large or too small."""
    near = _band(mask, band)
    if near.sum() < 100:
        return THRESHOLD
    b, own = prior.brain[near], image[near] > 0
    levels = np.linspace(0.05, 0.95, 19)
    agree = [int(((b >= t) == own).sum()) for t in levels]
    return float(levels[int(np.argmax(agree))])


def edge_offset(prior: Prior, image: np.ndarray, mask: np.ndarray, band: int = 8, reach=(-3, 6)) -> int:
    """How many voxels the warped brain's surface must move (out > 0, in < 0) to best match the image's own
    brain edge near the mask: in a band of ``band`` voxels around the mask (the mask grown by
    :data:`EXCLUDE_GROW` left out), the offset whose brain agrees with the image's (``image > 0``) on the most
    voxels. A skull strip that keeps more (dura, CSF) or less than the template's brain mask moves it."""
    near = _band(mask, band)
    if near.sum() < 100:
        return 0
    sd = signed_distance(prior.brain >= THRESHOLD)
    own = image[near] > 0
    offsets = sorted(range(reach[0], reach[1] + 1), key=abs)  # ties: the smallest move
    agree = [int(((sd[near] <= d) == own).sum()) for d in offsets]
    return offsets[int(np.argmax(agree))]


def signed_distance(inside: np.ndarray) -> np.ndarray:
    """Voxels from the surface of ``inside``: 1, 2, ... outside; 0 on its outermost layer, -1, -2, ... deeper. So
    ``signed_distance(b) <= d`` is ``b`` grown by ``d`` voxels (shrunk for ``d < 0``)."""
    return ndimage.distance_transform_edt(~inside) - ndimage.distance_transform_edt(inside) + inside


def outside_brain(prior: Prior, mask: np.ndarray, threshold: float = THRESHOLD, offset: int = 0,
                  mirror: np.ndarray | None = None) -> np.ndarray:
    """The mask's voxels the registered template (its surface moved by ``offset`` voxels) puts outside the
    brain; with ``mirror`` (the image reflected across its midline, the mask left out, see :func:`mirrored`) only
    those whose mirror is not brain either."""
    if not prior.usable:
        return np.zeros(mask.shape, bool)
    if offset == 0:
        out = mask & (prior.brain < threshold)
    else:
        out = mask & (signed_distance(prior.brain >= threshold) > offset)
    return out if mirror is None else out & (mirror <= 0)


def mirrored(image: np.ndarray, mask: np.ndarray, affine: np.ndarray | None) -> np.ndarray:
    """``image`` reflected across the head's midline, taken from the left-right lines that miss the mask (a voided
    mask would pull the usual estimate aside), the mask's voxels left out (0)."""
    from ..mirror import lr_axis, mask_free_midline, mirror_lr

    return mirror_lr(image, affine, exclude=mask, centre=mask_free_midline(image, mask, lr_axis(affine)))


def tissue_image(prior: Prior, image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """The registered template's tissue maps times the image's own tissue means (each map's weighted mean of the
    image in its brain outside the mask grown by :data:`EXCLUDE_GROW`): an estimate of the image known inside the
    mask too, in the image's units and contrast. None where the prior is unusable or has no tissue maps."""
    if not prior.usable or prior.tissues is None:
        return None
    keep = (image > 0) & ~ndimage.binary_dilation(mask, iterations=EXCLUDE_GROW)
    p = prior.tissues
    means = [float((p[k][keep] * image[keep]).sum() / max(p[k][keep].sum(), 1e-6)) for k in range(len(p))]
    total = p.sum(0)
    out = sum(m * p[k] for k, m in enumerate(means)) / np.maximum(total, 1e-6)
    return np.where(total > 0.05, out, 0).astype(np.float32)


def mask_depth(mask: np.ndarray) -> np.ndarray:
    """Each mask voxel's distance (voxels) to the nearest voxel outside the mask; 0 outside."""
    if not mask.any():
        return np.zeros(mask.shape, np.float32)
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in ndimage.find_objects(mask.astype(np.uint8))[0])
    out = np.zeros(mask.shape, np.float32)
    out[box] = ndimage.distance_transform_edt(mask[box])
    return out


def thick(mask: np.ndarray, voxel_size=(1.0, 1.0, 1.0), ml: float = 30.0, depth: float = 6.0) -> bool:
    """Whether a mask is thick enough for the tissue prior: ``ml`` or more, its deepest voxel ``depth`` voxels or
    more from its edge (an MS mask of many small lesions is neither deep nor, lesion by lesion, large)."""
    if mask.sum() * float(np.prod(voxel_size)) / 1000 < ml:
        return False
    return float(mask_depth(mask).max()) >= depth


def depth_blend(fill: np.ndarray, tissue: np.ndarray, mask: np.ndarray, lo: float = 2.0, hi: float = 8.0,
                weight: float = 0.6) -> np.ndarray:
    """``fill`` with ``tissue`` mixed in by depth: weight 0 up to ``lo`` voxels deep, rising to ``weight`` at ``hi``
    and beyond; outside the mask, ``fill`` unchanged."""
    w = weight * np.clip((mask_depth(mask) - lo) / (hi - lo), 0, 1)
    return np.where(mask, (1 - w) * fill + w * tissue, fill).astype(np.float32)
