"""Every part of the fill on validation masks, with the model's fill mixed into the refined one, by depth.

One fill per mask (otsu_head, ``validation.py``'s masks of ``--categories``, default the 150-500 ml strokes that
no benchmark case has): in-mask PSNR of the model, patch, nlm, blend and refine parts, of ``s * model + (1 - s) *
refine`` for s = 0.2, 0.4, 0.6, and RMSE of model / blend / refine by distance from the mask's edge. One JSON line
per mask (``results/validation/xl_parts_*.jsonl``): is the model stage better than the blend deep in large masks?

    python -m benchmarks study xl-parts [--weights DIR] > results/validation/xl_parts_packaged.jsonl
"""
import argparse
import json

import numpy as np
import torch
from scipy import ndimage

from ..cases import ALL_CATEGORIES, scores
from ..validation import validation_set
from .. import paths

PARTS = ("model", "patch", "nlm", "blend", "refine")
DEPTHS = ((0, 3), (3, 6), (6, 10), (10, 99))


def main(argv=None):
    from usb_prep import api
    from usb_prep.weights import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    paths.add(p, "data")
    paths.add(p, "brains")
    p.add_argument("--weights", default=None)
    p.add_argument("--categories", nargs="+", default=["stroke_xl"], choices=list(ALL_CATEGORIES))
    p.add_argument("--per-category", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, _ = load_model(args.weights, "fill", "cpu")
    data = validation_set(args.data, args.brains, args.per_category, args.categories)
    for c in data:
        parts = api.fill_parts(c.image, c.mask, model=model, device="cpu", affine=c.affine, seed=0)
        depth = ndimage.distance_transform_edt(c.mask)
        row = {"case": c.name, "ml": round(c.volume_ml, 1)}
        row.update({k: round(scores(getattr(parts, k), c)["psnr"], 2) for k in PARTS})
        for s in (0.2, 0.4, 0.6):
            f = c.image.copy()
            f[c.mask] = s * parts.model[c.mask] + (1 - s) * parts.refine[c.mask]
            row[f"mix{s}"] = round(scores(f, c)["psnr"], 2)
        for lo, hi in DEPTHS:
            sel = c.mask & (depth > lo) & (depth <= hi)
            if sel.any():
                row[f"d{lo}-{hi}"] = {k: round(float(np.sqrt(np.mean((getattr(parts, k)[sel] - c.truth[sel]) ** 2))), 4)
                                      for k in ("model", "blend", "refine")} | {"n": int(sel.sum())}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
