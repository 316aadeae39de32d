"""The priors on the benchmark's own cases (the second half of their shipping rules, training log of 2026-12-08).

Outline prior: on which cases it runs (masks that reach the image's empty background), how many mask voxels it
empties, and the in-mask PSNR with and without it. ``--tissue``: the tissue prior's depth blend on the cases its
gate admits (:func:`usb_prep.fill.prior.thick`) and on the BraTS case (the challenge's metric), with and without.
A check, never a choice: nothing is tuned on these cases.

    python -m benchmarks study prior-check --data DATA --brains BRAINS > benchmarks/results/validation/prior_check.jsonl
    python -m benchmarks study prior-check --tissue --data DATA --brains BRAINS > .../tissue_check.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from usb_prep import api
from usb_prep.fill import prior
from usb_prep.weights import load_model

from .. import paths
from ..cases import FAMILIES, load_brain, make_cases, scores, tissue_classes
from ..run_benchmark import BRAINS, brats_input


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks study prior-check", description=__doc__.split("\n\n")[0])
    paths.add(p, "data", "brains")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mirror", action="store_true", help="the variant that also needs the mirror to be background")
    p.add_argument("--tissue", action="store_true", help="the tissue prior's depth blend instead of the outline")
    p.add_argument("--weight", type=float, default=0.6, help="the tissue blend's weight (--tissue)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    data = Path(a.data)
    model, _ = load_model(None, "fill", "cpu")
    if a.tissue:
        return tissue_check(model, data, Path(a.brains), a.weight)
    cases = make_cases([load_brain(b, data, Path(a.brains)) for b in BRAINS], data, 1, FAMILIES, log=lambda m: None)
    for c in cases:
        runs = prior.needs_prior(c.image, c.mask) and prior.skull_stripped(c.image, c.mask)
        row = {"case": c.name, "ml": round(c.volume_ml, 1), "prior_runs": bool(runs)}
        if runs:
            fill = api.fill_array(c.image, c.mask, model=model, affine=c.affine, device="cpu", seed=0,
                                  outline_prior=False)
            reg = prior.register_template(c.image, c.mask, c.affine)
            offset = prior.edge_offset(reg, c.image, c.mask) if reg.usable else 0
            mirror = prior.mirrored(c.image, c.mask, c.affine) if a.mirror else None
            out = prior.outside_brain(reg, c.mask, offset=offset, mirror=mirror)
            row.update(quality=round(reg.quality, 3), offset=offset, emptied=int(out.sum()),
                       psnr_without=round(scores(fill, c)["psnr"], 3),
                       psnr_with=round(scores(np.where(out, 0, fill), c)["psnr"], 3))
        print(json.dumps(row), flush=True)


def tissue_check(model, data: Path, brains: Path, weight: float):
    """The tissue blend on the benchmark's cases its gate admits, then on the BraTS case (with and without the
    outline prior, which BraTS users would turn on)."""
    loaded = [load_brain(b, data, brains) for b in BRAINS]
    thresholds = {b.name: tissue_classes(b.image, b.brain) for b in loaded}
    for c in make_cases(loaded, data, 1, FAMILIES, log=lambda m: None):
        zooms = np.sqrt((c.affine[:3, :3] ** 2).sum(0))
        row = {"case": c.name, "ml": round(c.volume_ml, 1), "gate": prior.thick(c.mask, zooms)}
        if row["gate"]:
            fill = api.fill_array(c.image, c.mask, model=model, affine=c.affine, device="cpu", seed=0)
            reg = prior.register_template(c.image, c.mask, c.affine, tissues=True)
            tissue = prior.tissue_image(reg, c.image, c.mask)
            blended = fill if tissue is None else prior.depth_blend(fill, tissue, c.mask, weight=weight)
            before, after = (scores(x, c, thresholds[c.brain]) for x in (fill, blended))
            row.update(quality=round(reg.quality, 3), psnr_without=round(before["psnr"], 3),
                       psnr_with=round(after["psnr"], 3), tissue_without=round(before["tissue"], 3),
                       tissue_with=round(after["tissue"], 3), registration_s=round(reg.seconds, 1))
        print(json.dumps(row), flush=True)
    brats_check(model, data, weight)


def brats_check(model, data: Path, weight: float):
    """The BraTS case: the packaged fill, with the tissue blend, with the outline prior, with both."""
    import tempfile

    import nibabel as nib
    from inpainting.challenge_metrics_2023 import compute_image_quality_metrics
    from scipy import ndimage

    x, mask, affine, scale = brats_input(data)
    lab, n = ndimage.label(mask)
    healthy = mask & (lab != 1 + int(np.argmax(np.bincount(lab.ravel())[1:])))
    d = data / "patients" / "brats_gli_00001"
    reg = prior.register_template(x, mask, affine, tissues=True)
    tissue = prior.tissue_image(reg, x, mask)
    with tempfile.TemporaryDirectory() as tmp:
        hp = Path(tmp) / "healthy.nii.gz"
        nib.save(nib.Nifti1Image(healthy.astype(np.uint8), affine), str(hp))
        for outline in (False, True):
            parts = api.fill_parts(x, mask, model=model, affine=affine, device="cpu", seed=0, outline_prior=outline)
            fills = {"without": parts.final}
            if tissue is not None:  # the blend where the outline left tissue (its background stays)
                fills["with"] = np.where(parts.final > 0, prior.depth_blend(parts.final, tissue, mask, weight=weight),
                                         parts.final) if outline else prior.depth_blend(parts.final, tissue, mask,
                                                                                        weight=weight)
            row = {"case": "brats_gli_00001", "outline_prior": outline, "quality": round(reg.quality, 3)}
            for k, arr in fills.items():
                pp = Path(tmp) / f"{k}.nii.gz"
                nib.save(nib.Nifti1Image((arr * scale).astype(np.float32), affine), str(pp))
                m = compute_image_quality_metrics(str(pp), str(hp), str(d / "t1n.nii.gz"),
                                                  str(d / "t1n_voided.nii.gz"))
                row[f"psnr_{k}"], row[f"ssim_{k}"] = round(m["psnr"], 3), round(m["ssim"], 3)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
