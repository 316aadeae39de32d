"""Prepare the healthy development cohort (MNI 1 mm, skull-stripped, normalised).

Usage::

    python -m benchmarks prepare --data DATA --out BRAINS [--only otsu_head]

Writes ``{name}_T1w.nii.gz`` and ``{name}_brainmask.nii.gz`` for each brain, and
a mid-slice PNG per brain under ``OUT/png/`` for visual checks. ``otsu_head`` is
the held-out brain (see ``usb_prep.data.splits.HELDOUT_BRAINS``). Patients (``PATIENTS``)
also get ``{name}_lesionmask.nii.gz``; training uses only their healthy tissue.
"""
from __future__ import annotations

import os

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")  # before ants loads

import argparse  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from usb_prep.data.prep import MNI_AFFINE, load_template, prepare_cohort  # noqa: E402
from . import paths

# (name, file, skull_stripped)
COHORT = [
    ("chris_t1_head", "chris_t1_head.nii.gz", False),
    ("otsu_head", "otsu_head.nii.gz", False),  # held out
    ("fsA_norm", "fsA_norm.mgz", True),
    # Colin27 from the head: the shipped ch2bet brain has streak artefacts along
    # the midline and skull base (seen in its own slices); our stripping is cleaner.
    ("colin27", "colin27_head.nii.gz", False),
    ("allineate_T1w_2mm_head", "allineate_T1w_2mm_head.nii.gz", False),
    ("allineate_bench_T1_2mm_head", "allineate_bench_T1_2mm_head.nii.gz", False),
]

# Patients whose healthy tissue adds anatomy: (name, file, skull_stripped, lesion mask[, contrast]), under
# --patients. Training keeps synthetic lesions and the loss off their lesions. ms07 and stroke_m2307 stay out: the
# benchmark's real test scans (benchmarks/contrasts.py). The clinical stroke T2w is the one real T2w that trains
# (T2w/FLAIR fill models only; T1w training reads *_T1w.nii.gz).
PATIENTS = [
    ("brats_gli_00001", "brats_gli_00001/t1n.nii.gz", True, "brats_gli_00001/inpainting_mask.nii.gz"),
    ("clinical_t2", "stroke_t2_clinical/T2w_head.nii", False, "stroke_t2_clinical/lesion_mask.nii", "T2w"),
]


def array_sha(path: Path) -> str:
    """The first 16 hex digits of the sha256 of a prepared image's float32 array: the same on two machines
    means their validation numbers compare (see results/training_log.md)."""
    import hashlib

    data = nib.load(str(path)).get_fdata(dtype=np.float32)
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()[:16]


def write_mni152(out_dir: Path) -> None:
    """The nilearn MNI152 template masked by its brain mask, same format as the rest."""
    from usb_prep.data.prep import robust_normalise, clean_mask

    img_out, mask_out = out_dir / "mni152_T1w.nii.gz", out_dir / "mni152_brainmask.nii.gz"
    if img_out.exists() and mask_out.exists():
        return
    tmpl, mask = load_template(brain_only=True)
    brain = clean_mask(np.asarray(mask.dataobj) > 0)
    data = robust_normalise(np.asarray(tmpl.dataobj, np.float32), brain) * brain
    nib.save(nib.Nifti1Image(data.astype(np.float32), MNI_AFFINE), str(img_out))
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), MNI_AFFINE), str(mask_out))


def save_pngs(out_dir: Path, names: list[str]) -> None:
    """Slices of each prepared brain with the mask contour, for visual checks.

    Top row: sagittal / coronal / axial through MNI (0, -18, 10) and a lateral
    sagittal (x = +40). Bottom row: axial slices at z = -30, 0, +45, +65 (skull
    remnants show up at the skull base and the vertex first).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = out_dir / "png"
    png.mkdir(exist_ok=True)
    vox = lambda x, y, z: (91 + x, 126 + y, 72 + z)  # noqa: E731  MNI mm -> voxel
    for name in names:
        path = next(p for c in ("T1w", "T2w", "FLAIR") if (p := out_dir / f"{name}_{c}.nii.gz").exists())
        img = nib.load(str(path)).get_fdata()
        msk = nib.load(str(out_dir / f"{name}_brainmask.nii.gz")).get_fdata() > 0
        x0, y0, z0 = vox(0, -18, 10)
        views = [
            (img[x0], msk[x0]), (img[:, y0], msk[:, y0]), (img[:, :, z0], msk[:, :, z0]),
            (img[vox(40, 0, 0)[0]], msk[vox(40, 0, 0)[0]]),
        ] + [(img[:, :, vox(0, 0, z)[2]], msk[:, :, vox(0, 0, z)[2]]) for z in (-30, 0, 45, 65)]
        fig, ax = plt.subplots(2, 4, figsize=(18, 9))
        for a, (sl, ms) in zip(ax.flat, views):
            a.imshow(sl.T, origin="lower", cmap="gray", vmin=0, vmax=1.2)
            a.contour(ms.T, [0.5], colors="r", linewidths=0.6)
            a.axis("off")
        fig.suptitle(f"{name}  max={img.max():.2f}  brain={msk.sum() / 1000:.0f} ml")
        fig.savefig(png / f"{name}.png", dpi=60, bbox_inches="tight")
        plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    paths.add(ap, "data")
    ap.add_argument("--out", type=Path, required=True, help="folder for the prepared brains (what --brains reads)")
    ap.add_argument("--no-n4", action="store_true", help="skip N4 bias correction")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="prepare only these (e.g. otsu_head, the benchmark's)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    healthy, patients = Path(args.data) / "healthy", Path(args.data) / "patients"
    entries = [(n, healthy / f, s) for n, f, s in COHORT]
    entries += [(n, patients / f, s, patients / les, *c) for n, f, s, les, *c in PATIENTS]
    if args.only:
        entries = [e for e in entries if e[0] in args.only]
    for entry in entries:
        t = time.time()
        [image] = prepare_cohort([entry], args.out, n4=not args.no_n4)
        logging.info("%s done in %.0f s (image sha256 %s)", entry[0], time.time() - t, array_sha(image))
    names = [e[0] for e in entries]
    if not args.only or "mni152" in args.only:
        write_mni152(args.out)
        names.append("mni152")
    save_pngs(args.out, names)
    logging.info("cohort ready in %s (%.0f s)", args.out, time.time() - t0)


if __name__ == "__main__":
    main()
