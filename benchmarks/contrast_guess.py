"""The contrast read from the image (``usb_prep.tissue.guess_contrast``) on every real scan of the data folder and
on nilearn's MNI152 mapped to T2w and FLAIR: what it decides, from which tissue levels, against the truth.

    python -m benchmarks contrast-guess --data DATA      # ~1 minute; writes results/contrast_guess.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from usb_prep.tissue import guess_contrast

from . import paths

HERE = Path(__file__).resolve().parent
# scan (relative to the data folder) -> its true contrast (the data folder's README)
SCANS = {
    "healthy/allineate_T1w_2mm_head.nii.gz": "t1w", "healthy/allineate_bench_T1_2mm_head.nii.gz": "t1w",
    "healthy/chris_t1_head.nii.gz": "t1w", "healthy/colin27_brain.nii.gz": "t1w", "healthy/colin27_head.nii.gz": "t1w",
    "healthy/fsA_norm.mgz": "t1w", "healthy/otsu_head.nii.gz": "t1w",
    "patients/brats_gli_00001/t1n.nii.gz": "t1w", "patients/brats_gli_00001/t1n_voided.nii.gz": "t1w",
    "patients/ms07/T1w.nii.gz": "t1w", "patients/ms07/FLAIR.nii.gz": "flair",
    "patients/stroke_m2307/T2w_brain.nii.gz": "t2w", "patients/stroke_t2_clinical/T2w_head.nii": "t2w",
}
MASKS = {"patients/brats_gli_00001/t1n_voided.nii.gz": "patients/brats_gli_00001/inpainting_mask.nii.gz",
         "patients/ms07/T1w.nii.gz": "patients/ms07/lesion_mask.nii.gz",
         "patients/ms07/FLAIR.nii.gz": "patients/ms07/lesion_mask.nii.gz",
         "patients/stroke_m2307/T2w_brain.nii.gz": "patients/stroke_m2307/lesion_mask.nii.gz",
         "patients/stroke_t2_clinical/T2w_head.nii": "patients/stroke_t2_clinical/lesion_mask.nii"}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks contrast-guess", description=__doc__.split("\n\n")[0])
    paths.add(p, "data")
    p.add_argument("--out", default=str(HERE / "results" / "contrast_guess.md"))
    a = p.parse_args(argv)
    data = Path(a.data)
    rows = []
    for rel, truth in SCANS.items():
        img = nib.load(str(data / rel))
        x = img.get_fdata(dtype=np.float32)
        mask = nib.load(str(data / MASKS[rel])).get_fdata() > 0.5 if rel in MASKS else None
        found, ev = guess_contrast(x, mask, img.header.get_zooms()[:3])
        rows.append((rel, truth, found, ev))
    from nilearn import datasets

    from usb_prep.data.contrast import synthesise

    t = datasets.load_mni152_template(resolution=1)
    x = np.asarray(t.dataobj, np.float32)
    x /= np.percentile(x[x > 0], 99.5)
    rows.append(("nilearn MNI152 2009 (T1w)", "t1w", *guess_contrast(x)))
    for c in ("t2w", "flair"):
        for seed in range(3):
            y = synthesise(x, x > 0, c, np.random.default_rng(seed))
            rows.append((f"MNI152 mapped to {c} (seed {seed})", c, *guess_contrast(y)))
    right = sum(found == truth for _, truth, found, _ in rows)
    lines = ["# The contrast read from the image", "", f"Command: `python -m benchmarks contrast-guess --data DATA`. "
             f"{right} of {len(rows)} right, {sum(f is None for _, _, f, _ in rows)} undecided (exit 2 in usb-fill), "
             f"{sum(f is not None and f != t for _, t, f, _ in rows)} wrong. r = (top - middle) / (middle - bottom) of "
             "the three tissue levels; bands: FLAIR <= 0.47, T1w 0.5-1.15, T2w >= 1.3 (set on these scans).", "",
             "| scan | truth | decided | r | levels | shares | reason |", "|---|---|---|---|---|---|---|"]
    for rel, truth, found, ev in rows:
        lines.append(f"| {rel} | {truth} | {found or 'undecided'} | {ev.get('r', '')} | {ev.get('levels', '')} | "
                     f"{ev.get('shares', '')} | {ev.get('reason', '')} |")
    Path(a.out).write_text("\n".join(lines) + "\n")
    Path(a.out).with_suffix(".json").write_text(json.dumps(
        [{"scan": r, "truth": t, "decided": f, **e} for r, t, f, e in rows], indent=1, default=float))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
