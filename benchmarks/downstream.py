"""What users fill for: the effect of each filler on registration and tissue segmentation (real ANTs tools).

For a painted case and a filler's output, against the same tool run on the healthy truth (the brain before
painting):

- **registration**: ANTs SyN (antspyx ``registration``, affine + SyN, 2 mm, fixed seed) of the image to nilearn's
  MNI152 brain. Each run maps every template voxel to a point of the subject; the difference between the
  filled image's map and the healthy image's map (mm) is averaged over the template voxels that map into the
  lesion (``reg_lesion_mm``) and into a 5 mm ring around it (``reg_ring_mm``).
- **tissue segmentation**: ANTs Atropos, three classes (CSF / GM / WM, k-means start, MRF 0.1) within the brain
  mask. ``vol_err_ml``: the summed absolute GM / WM / CSF volume error against the healthy segmentation (ml,
  whole brain); ``dice``: the mean Dice of the three classes in the lesion and its 5 mm ring.

    python -m benchmarks downstream --check      # one small case end to end (a few minutes)

Used by ``run_benchmark.py`` (``--downstream``).
"""
from __future__ import annotations

import os

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")

import numpy as np
from scipy import ndimage

from usb_prep.data.prep import seeded_registration

RING_MM = 5
REG_MM = 2.0
SEED = 1  # SyN's random metric sampling (antspyx takes the seed from ants.config: seeded_registration)


def _ants(arr, affine):
    """An (array, affine) pair as an ANTsImage."""
    import nibabel as nib

    from usb_prep.data.prep import nib_to_ants

    return nib_to_ants(nib.Nifti1Image(np.asarray(arr, np.float32), affine))


class Template:
    """The fixed image: MNI152 brain (nilearn) at ``REG_MM``."""

    def __init__(self):
        import ants

        from usb_prep.data.prep import load_template

        tmpl, _ = load_template(brain_only=True)
        self.image = ants.resample_image(_ants(tmpl.get_fdata(dtype=np.float32), tmpl.affine), (REG_MM,) * 3, False, 0)


def register(template: Template, image: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The subject point (mm, on the subject's own grid axes) each template voxel maps to: (3, *template)."""
    import ants

    mov = ants.resample_image(_ants(image, affine), (REG_MM,) * 3, False, 0)
    reg = seeded_registration(ants, SEED, fixed=template.image, moving=mov, type_of_transform="SyN", verbose=False)
    idx = np.indices(mov.shape).astype(np.float32)
    maps = []
    for k in range(3):
        coord = mov.new_image_like(idx[k] * REG_MM)
        maps.append(ants.apply_transforms(template.image, coord, reg["fwdtransforms"], "linear").numpy())
    for f in set(reg["fwdtransforms"] + reg["invtransforms"]):
        if os.path.exists(f):
            os.remove(f)
    return np.stack(maps)


def segment(image: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Atropos three-class labels (1 CSF, 2 GM, 3 WM; 0 outside ``brain``)."""
    import ants

    img, msk = _ants(image, affine), _ants(brain.astype(np.float32), affine)
    seg = ants.atropos(a=img, x=msk, i="Kmeans[3]", m="[0.1,1x1x1]", c="[5,0]")["segmentation"].numpy()
    return seg.astype(np.uint8)


def near(mask: np.ndarray, voxel_mm: float = 1.0) -> np.ndarray:
    return ndimage.binary_dilation(mask, iterations=max(1, round(RING_MM / voxel_mm)))


def reference(template: Template, truth: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> dict:
    """The healthy image through both tools (once per brain)."""
    return {"map": register(template, truth, affine), "seg": segment(truth, brain, affine)}


def effect(template: Template, ref: dict, image: np.ndarray, mask: np.ndarray, brain: np.ndarray,
           affine: np.ndarray) -> dict:
    """A filled (or unfilled) image's downstream differences from the healthy reference."""
    vox_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    seg = segment(image, brain, affine)
    vol_err = sum(abs(float((seg == k).sum()) - float((ref["seg"] == k).sum())) for k in (1, 2, 3)) * vox_ml
    zone = near(mask) & brain
    dice = []
    for k in (1, 2, 3):
        a, b = (seg == k) & zone, (ref["seg"] == k) & zone
        if a.sum() + b.sum():
            dice.append(2 * float((a & b).sum()) / float(a.sum() + b.sum()))
    m = register(template, image, affine)
    # template voxels whose healthy map lands in the lesion / the ring (subject voxel = map / REG_MM on the 2 mm grid)
    lesion2 = _on_reg_grid(mask, affine)
    ring2 = _on_reg_grid(near(mask) & ~mask, affine)
    pos = np.rint(ref["map"] / REG_MM).astype(int)
    inside = np.all([(pos[k] >= 0) & (pos[k] < lesion2.shape[k]) for k in range(3)], axis=0)
    p = tuple(np.where(inside, pos[k], 0) for k in range(3))
    diff = np.linalg.norm(m - ref["map"], axis=0)
    in_les, in_ring = inside & lesion2[p], inside & ring2[p]
    return {"vol_err_ml": vol_err, "dice": float(np.mean(dice)) if dice else float("nan"),
            "reg_lesion_mm": float(diff[in_les].mean()) if in_les.any() else float("nan"),
            "reg_ring_mm": float(diff[in_ring].mean()) if in_ring.any() else float("nan")}


def _on_reg_grid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``mask`` on the subject's ``REG_MM`` grid, as ``register`` resamples it (linear, then > 0.5)."""
    import ants

    return ants.resample_image(_ants(mask.astype(np.float32), affine), (REG_MM,) * 3, False, 0).numpy() > 0.5


def check():
    """One synthetic case on the MNI152 brain: the healthy image matches itself; a dark lesion does not."""
    import time

    from usb_prep.data.prep import load_template

    tmpl, bm = load_template(brain_only=True)
    truth, brain, aff = tmpl.get_fdata(dtype=np.float32), np.asarray(bm.dataobj) > 0, tmpl.affine
    truth = truth / np.percentile(truth[brain], 99.5)
    mask = np.zeros(brain.shape, bool)
    mask[60:80, 100:125, 70:90] = True
    mask &= brain
    lesion = np.where(mask, 0.1, truth).astype(np.float32)
    t0 = time.time()
    t = Template()
    ref = reference(t, truth, brain, aff)
    print("reference", round(time.time() - t0), "s")
    for name, img in (("healthy", truth), ("lesion", lesion)):
        t0 = time.time()
        print(name, effect(t, ref, img, mask, brain, aff), round(time.time() - t0), "s")


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m benchmarks downstream", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="run one synthetic case")
    if ap.parse_args(argv).check:
        check()


if __name__ == "__main__":
    main()
