"""Known-mask filling with and without the ring calibration (``usb_prep.api._ring_bias``).

    python benchmarks/ring_calibration.py [--weights DIR] [--out benchmarks/results]

Four held-out stroke masks (the first benchmark cases) painted into the held-out brain ``otsu_head``
(prepared by ``benchmarks/prepare_data.py``), seed 1000 + i; in-mask PSNR / SSIM on [0, 1].
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from nibabel.processing import resample_from_to

NAMES = ["bwsrsub-1072_lesion", "bwsrsub-11_lesion", "bwsrsub-1040_lesion", "bwsrsub-100_lesion"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None)
    p.add_argument("--brains", default="/work/cache/brains")
    p.add_argument("--data", default="/work/shared/data")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from usb_prep import api, metrics
    from usb_prep.data.splits import list_masks
    from usb_prep.data.synthesis import paint_lesion
    from usb_prep.weights import load_model

    img = nib.load(f"{args.brains}/otsu_head_T1w.nii.gz")
    v = np.asanyarray(img.dataobj, dtype=np.float32)
    brain = np.asanyarray(nib.load(f"{args.brains}/otsu_head_brainmask.nii.gz").dataobj) > 0
    hi = float(v[brain].max())
    model, info = load_model(args.weights, "fill", "cpu")
    paths = {q.name.split(".nii")[0]: q for q in list_masks(Path(args.data) / "lesion_masks", "heldout")}
    lines = ["# Ring calibration on/off (known-mask filling, packaged fill model)", "",
             f"Command: `python benchmarks/ring_calibration.py`; weights sha256 {info['sha256'][:12]}...", "",
             "| mask | ml | steps | PSNR off | PSNR on | SSIM off | SSIM on |", "|---|---|---|---|---|---|---|"]
    for i, name in enumerate(NAMES):
        mi = nib.load(str(paths[name]))
        mi = nib.Nifti1Image((np.asanyarray(mi.dataobj) > 0.5).astype(np.uint8), mi.affine)
        m = (np.asanyarray(resample_from_to(mi, img, order=0).dataobj) > 0) & brain
        lesioned = np.where(m, paint_lesion(v, brain, m, np.random.default_rng(1000 + i))[0], v)
        for steps in (1, 5):
            r = {}
            for cal in (False, True):
                out = np.clip(api.fill_array(lesioned, m, model=model, steps=steps, affine=img.affine,
                                             calibrate=cal) / hi, 0, 1)
                r[cal] = (metrics.masked_psnr(out, v / hi, m), metrics.masked_ssim(out, v / hi, m))
            lines.append(f"| {name} | {m.sum() / 1000:.1f} | {steps} | {r[False][0]:.2f} | {r[True][0]:.2f} | "
                         f"{r[False][1]:.3f} | {r[True][1]:.3f} |")
            print(lines[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ring_calibration.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
