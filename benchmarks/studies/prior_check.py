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
import time
from pathlib import Path

import numpy as np
import torch
from nibabel.affines import voxel_sizes

from usb_prep import api
from usb_prep.fill import prior
from usb_prep.weights import load_model

from .. import paths
from ..cases import FAMILIES, load_brain, make_cases, scores, tissue_classes
from ..run_benchmark import BRAINS, brats_healthy, brats_input, brats_score, largest_piece


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks study prior-check", description=__doc__.split("\n\n")[0])
    paths.add(p, "data", "brains")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mirror", action="store_true", help="the variant that also needs the mirror to be background")
    p.add_argument("--tissue", action="store_true", help="the tissue prior's depth blend instead of the outline")
    p.add_argument("--weight", type=float, default=0.6, help="the tissue blend's weight (--tissue)")
    p.add_argument("--downstream", action="store_true",
                   help="--tissue: ANTs registration and Atropos segmentation of each fill of the 'train' cases "
                        "against the healthy image's (benchmarks/downstream.py), the BraTS case left out")
    p.add_argument("--figures", type=Path, default=None,
                   help="--tissue: write truth / input / fills of the first thick case and of BraTS here (PNG)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    data = Path(a.data)
    model, _ = load_model(None, "fill", "cpu")
    if a.tissue:
        return tissue_check(model, data, Path(a.brains), a.weight, a.figures, a.downstream)
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


def tissue_check(model, data: Path, brains: Path, weight: float, figures: Path | None = None,
                 downstream: bool = False):
    """The fill with and without ``tissue_prior`` = ``weight`` (as it would ship: :func:`usb_prep.api.fill_parts`)
    on the benchmark's cases its gate admits, then on the BraTS case; with ``downstream`` the downstream effects
    of both fills on the 'train' cases instead of BraTS."""
    loaded = [load_brain(b, data, brains) for b in BRAINS]
    thresholds = {b.name: tissue_classes(b.image, b.brain) for b in loaded}
    if downstream:
        from .. import downstream as ds

        template, refs = ds.Template(), {}
    for c in make_cases(loaded, data, 1, FAMILIES, log=lambda m: None):
        if downstream and c.family != "train":
            continue
        zooms = voxel_sizes(c.affine)
        row = {"case": c.name, "ml": round(c.volume_ml, 1), "gate": prior.thick(c.mask, zooms)}
        if row["gate"]:
            fills = {w: api.fill_parts(c.image, c.mask, model=model, affine=c.affine, voxel_size=tuple(zooms),
                                       device="cpu", seed=0, tissue_prior=w) for w in (0.0, weight)}
            before, after = (scores(fills[w].final, c, thresholds[c.brain]) for w in (0.0, weight))
            row.update(prior=fills[weight].prior, psnr_without=round(before["psnr"], 3),
                       psnr_with=round(after["psnr"], 3), tissue_without=round(before["tissue"], 3),
                       tissue_with=round(after["tissue"], 3))
            if downstream:
                b = next(b for b in loaded if b.name == c.brain)
                if b.name not in refs:  # the healthy image through both tools, once per brain
                    refs[b.name] = ds.reference(template, b.image, b.brain, b.affine)
                row["downstream"] = {str(w): ds.effect(template, refs[b.name], fills[w].final, c.mask, b.brain,
                                                       b.affine) for w in (0.0, weight)}
            if figures is not None and not list(figures.glob("fig_thick_*.png")):
                figure([("truth", c.truth), ("input", c.image), ("usb_prep", fills[0.0].final),
                        (f"usb_prep, tissue prior {weight}", fills[weight].final)], c.mask, c.mask,
                       f"{c.name} ({c.volume_ml:.0f} ml): the mask outlined in red",
                       figures / f"fig_thick_{c.name.replace('/', '_')}.png")
        print(json.dumps(row), flush=True)
    if not downstream:
        brats_check(model, data, weight, figures)


def figure(cols, contour, around, title, png):
    """Three planes through the centre of mass of ``around``, ``contour`` outlined
    (:func:`benchmarks.brats_figure.three_planes`)."""
    from scipy import ndimage

    from ..brats_figure import three_planes

    png.parent.mkdir(parents=True, exist_ok=True)
    centre = [int(v) for v in np.round(ndimage.center_of_mass(around))]
    three_planes(cols, contour, centre, float(np.percentile(cols[0][1][cols[0][1] > 0], 99.5)), title, png)


def brats_check(model, data: Path, weight: float, figures: Path | None = None):
    """The BraTS case, the challenge's metric: the fill without and with the tissue prior, each without and with
    the outline prior (which users filling such a region would turn on)."""
    import tempfile

    import nibabel as nib

    x, mask, affine, scale = brats_input(data)
    healthy, _ = brats_healthy(mask)
    d = data / "patients" / "brats_gli_00001"
    shown = [("truth", nib.load(str(d / "t1n.nii.gz")).get_fdata(dtype=np.float32) / scale), ("voided input", x)]
    with tempfile.TemporaryDirectory() as tmp:
        hp = Path(tmp) / "healthy.nii.gz"
        nib.save(nib.Nifti1Image(healthy.astype(np.uint8), affine), str(hp))
        for outline in (False, True):
            for w in (0.0, weight):
                t0 = time.perf_counter()
                parts = api.fill_parts(x, mask, model=model, affine=affine, device="cpu", seed=0,
                                       outline_prior=outline, tissue_prior=w)
                row = {"case": "brats_gli_00001", "outline_prior": outline, "tissue_prior": w, "prior": parts.prior,
                       "seconds": round(time.perf_counter() - t0, 1)}
                m = brats_score(parts.final, scale, affine, hp, data, Path(tmp) / "fill.nii.gz")
                row.update(psnr=round(m["psnr"], 3), ssim=round(m["ssim"], 3), mae=round(m["mae"], 4))
                shown.append((f"usb_prep{', outline' if outline else ''}{f', tissue {w}' if w else ''}", parts.final))
                print(json.dumps(row), flush=True)
    if figures is not None:
        figure(shown, healthy, largest_piece(healthy)[0],
               "BraTS 2023 inpainting case: the scored region outlined in red", figures / "fig_brats_tissue_prior.png")


if __name__ == "__main__":
    main()
