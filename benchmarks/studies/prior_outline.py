"""Validation of the outline prior (usb_prep.fill.prior) on brains other than the benchmark's.

Masks that spill past a skull-stripped brain, as the BraTS inpainting region does: train-split SOOP stroke
masks of 20-200 ml placed on colin27_brain (MNI) and fsA_norm (FreeSurfer norm.mgz, masks carried by an affine
registration of MNI152), grown by 5 voxels past the brain, the image voided (0) inside. For each registration
variant: the mask voxels that are background in the truth, how many the prior calls background (hits) and how
many brain voxels it wrongly empties, and the in-mask PSNR of a Laplace fill with the outline applied.
Decides the variant the fill ships (rule in benchmarks/results/training_log.md, written before the first run).

    python -m benchmarks study prior-outline --data ../shared/data --out benchmarks/results/validation
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from usb_prep.data.splits import list_masks
from usb_prep.fill import prior

VARIANTS = {"3mm_t0.5": (3.0, "level"), "3mm_edge": (3.0, "edge"), "2mm_t0.5": (2.0, "level"),
            "2mm_edge": (2.0, "edge"), "3mm_offset": (3.0, "offset"), "2mm_offset": (2.0, "offset"),
            "3mm_offset_mirror": (3.0, "offset_mirror"), "3mm_offset_own": (3.0, "offset_own"),
            "own": (3.0, "own"), "3mm_offset_hull": (3.0, "offset_hull"),
            "hull": (3.0, "hull")}  # "own" and "hull" use no template (the registration runs for the others)


def laplace(image, mask, iters=400):
    """A Jacobi harmonic fill (enough for scoring the outline; the benchmark's is exact)."""
    out = image.copy()
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in ndimage.find_objects(mask.astype(int))[0])
    o, m = out[box], mask[box]
    o[m] = image[~mask & (image > 0)].mean()
    for _ in range(iters):
        avg = sum(np.roll(o, d, a) for a in range(3) for d in (-1, 1)) / 6
        o[m] = avg[m]
    out[box] = o
    return out


def brains(data: Path):
    colin = nib.load(str(data / "healthy/colin27_brain.nii.gz"))
    fs = nib.load(str(data / "healthy/fsA_norm.mgz"))
    return {"colin27_brain": colin, "fsA_norm": nib.Nifti1Image(fs.get_fdata(dtype=np.float32), fs.affine)}


def mask_mover(name, img):
    """A function taking a mask image (MNI) onto ``img``'s grid."""
    from nibabel.processing import resample_from_to

    if name == "colin27_brain":
        return lambda m: np.asarray(resample_from_to(m, img, order=0).dataobj) > 0.5
    import ants
    from nilearn import datasets

    from usb_prep.data.prep import ants_to_nib, nib_to_ants, seeded_registration

    tmpl = datasets.load_mni152_template(resolution=2)
    bm = datasets.load_mni152_brain_mask(resolution=2)
    moving = nib_to_ants(nib.Nifti1Image(np.asarray(tmpl.dataobj, np.float32) * (np.asarray(bm.dataobj) > 0),
                                         tmpl.affine))
    fixed = nib_to_ants(img)
    reg = seeded_registration(ants, fixed=fixed, moving=moving, type_of_transform="Affine")

    def move(m):
        w = ants.apply_transforms(fixed, nib_to_ants(nib.Nifti1Image(np.asarray(m.dataobj, np.float32), m.affine)),
                                  reg["fwdtransforms"], interpolator="nearestNeighbor")
        return ants_to_nib(w).get_fdata() > 0.5
    return move


def strokes(data: Path, per_brain: int, make, ml=(20, 200)):
    """The first ``per_brain`` cases of each validation brain: train-split SOOP strokes of ``ml`` ml on the brain,
    each made a case by ``make(x, brain, lesion, n)`` -> ``(mask, painted image or None)``, or None when it is not
    one; yields ``(brain name, mask name, image, mask, affine, painted)``."""
    ml_range = ml
    for name, img in brains(data).items():
        x = img.get_fdata(dtype=np.float32)
        brain = x > 0
        x = x / np.percentile(x[brain], 99.5)
        move = mask_mover(name, img)
        n = 0
        for path in [q for q in list_masks(data / "lesion_masks", "train") if q.parent.name == "soop"]:
            m = nib.load(str(path))
            m = nib.Nifti1Image((np.asanyarray(m.dataobj) > 0.5).astype(np.uint8), m.affine)
            lesion = move(m) & brain
            ml = lesion.sum() * np.prod(img.header.get_zooms()[:3]) / 1000
            if not ml_range[0] <= ml <= ml_range[1]:
                continue
            case = make(x, brain, lesion, n)
            if case is None:
                continue
            yield (name, path.name, x, case[0], img.affine, case[1])
            n += 1
            if n >= per_brain:
                break


def spilling(x, brain, lesion, n):
    """The stroke grown 5 voxels past the brain (500 voxels or more outside it); the image is voided there."""
    mask = ndimage.binary_dilation(lesion, iterations=5)
    return None if (mask & ~brain).sum() < 500 else (mask, None)


def inside(x, brain, lesion, n):
    """The stroke inside the brain, painted with the training synthesis, where it touches the brain's surface
    (where the prior runs)."""
    from ..cases import paint

    painted = paint("train", x, brain, lesion, np.random.default_rng(n))
    return (lesion, painted) if prior.needs_prior(painted, lesion) and prior.skull_stripped(painted, lesion) else None


def own_outside(image: np.ndarray, mask: np.ndarray, hull: int = 0) -> np.ndarray:
    """The mask's voxels whose nearest boundary voxel (just outside the mask) is empty (<= 0): the image's own
    brain surface carried straight into the mask, no template. With ``hull`` > 0 only empty voxels outside the
    brain's hull count (the brain and the mask closed by ``hull`` voxels): sulcal CSF that a tight strip left at 0
    is inside the hull, the space around the brain is not."""
    out = np.zeros(mask.shape, bool)
    if not mask.any():
        return out
    pad = 2 + 2 * hull
    box = tuple(slice(max(s.start - pad, 0), s.stop + pad)
                for s in ndimage.find_objects(mask.astype(np.uint8))[0])
    m, x = mask[box], image[box]
    ring = ndimage.binary_dilation(m) & ~m
    if not ring.any():
        return out
    idx = ndimage.distance_transform_edt(~ring, return_distances=False, return_indices=True)
    empty = ring & (x <= 0)
    if hull:
        closed = ndimage.binary_closing(np.pad((x > 0) | m, hull), iterations=hull)[(slice(hull, -hull),) * 3]
        empty &= ~closed
    out[box] = m & empty[tuple(idx)]
    return out


def psnr(a, b, m):
    return float(10 * np.log10(1.0 / np.mean((a[m] - b[m]) ** 2)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the shared data folder (healthy/, lesion_masks/)")
    p.add_argument("--out", type=Path, required=True, help="results folder")
    p.add_argument("--per-brain", type=int, default=5)
    p.add_argument("--fill", choices=["laplace", "usb"], default="laplace",
                   help="the fill the outline is applied to: a Laplace fill, or usb_prep's (packaged weights, "
                        "keep_background on, as it ships)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--inside", action="store_true",
                   help="masks that stay inside the brain and touch its surface, painted (the prior must not move "
                        "them) instead of masks grown past the brain and voided")
    p.add_argument("--cache", type=Path, default=None,
                   help="folder keeping each case's base fill (reruns of other variants skip the fill)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, mname, x, mask, aff, painted in strokes(Path(args.data), args.per_brain,
                                                       inside if args.inside else spilling):
        truth_bg = mask & (x <= 0)
        voided = np.where(mask, 0, x).astype(np.float32) if painted is None else painted
        kind = "inside_" if args.inside else ""
        cached = args.cache / f"{kind}{args.fill}_{name}_{mname}.npy" if args.cache else None
        if cached is not None and cached.exists():
            base = np.load(cached)
        elif args.fill == "usb":
            from usb_prep import api

            base = api.fill_array(voided, mask, affine=aff, device="cpu", seed=0, outline_prior=False)
        else:
            base = laplace(voided, mask)
        if cached is not None and not cached.exists():
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.save(cached, base)
        row = {"brain": name, "mask": mname, "mask_voxels": int(mask.sum()), "background": int(truth_bg.sum()),
               "needs_prior": prior.needs_prior(voided, mask), "stripped": prior.skull_stripped(voided, mask),
               "psnr_none": psnr(base, x, mask)}
        variants = {k: VARIANTS[k] for k in args.variants}
        for spacing in sorted({s for s, _ in variants.values()}):
            pr = prior.register_template(voided, mask, aff, spacing=spacing)
            for key, (sp, mode) in variants.items():
                if sp != spacing:
                    continue
                thr = prior.edge_threshold(pr, voided, mask) if mode == "edge" else prior.THRESHOLD
                offset = prior.edge_offset(pr, voided, mask) if mode.startswith("offset") else 0
                mirror = prior.mirrored(voided, mask, aff) if mode.endswith("mirror") else None
                own = own_outside(voided, mask, hull=4 if mode.endswith("hull") else 0) \
                    if mode.endswith(("own", "hull")) else mask
                out = mask & own if mode in ("own", "hull") else \
                    prior.outside_brain(pr, mask, thr, offset, mirror) & own
                row[key] = {"seconds": pr.seconds, "quality": pr.quality, "threshold": thr, "offset": offset,
                            "hits": int((out & truth_bg).sum()), "emptied_brain": int((out & ~truth_bg).sum()),
                            "psnr": psnr(np.where(out, 0, base), x, mask)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    tag = ("" if args.fill == "laplace" else f"_{args.fill}") + ("_inside" if args.inside else "")
    (args.out / f"prior_outline{tag}.json").write_text(json.dumps(rows, indent=1))
    lines = ["# Outline prior on validation masks (spilling strokes on colin27_brain and fsA_norm)", "",
             "Command: `python -m benchmarks study prior-outline --data ../shared/data --out "
             "benchmarks/results/validation`. Cell: Laplace-fill PSNR in the mask with the outline applied "
             "(background voxels hit / brain voxels emptied).".replace("Laplace", args.fill), "",
             "| case | background | none | " + " | ".join(variants) + " |", "|---|---|---|" + "---|" * len(variants)]
    for r in rows:
        lines.append(f"| {r['brain']}/{r['mask']} | {r['background']} | {r['psnr_none']:.2f} | " + " | ".join(
            f"{r[k]['psnr']:.2f} ({r[k]['hits']}/{r[k]['emptied_brain']})" for k in variants) + " |")
    mean = {k: np.mean([r[k]["psnr"] for r in rows]) for k in variants}
    secs = {k: np.mean([r[k]["seconds"] for r in rows]) for k in variants}
    lines.append(f"| **mean** | | {np.mean([r['psnr_none'] for r in rows]):.2f} | "
                 + " | ".join(f"**{mean[k]:.2f}** ({secs[k]:.0f} s)" for k in variants) + " |")
    (args.out / f"prior_outline{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
