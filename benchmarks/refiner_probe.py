#!/usr/bin/env python
"""Score a fill refiner (``usb_prep.refine``) on the validation masks -> results/refiner_probe.md.

The refiner is trained by ``usb-train --config benchmarks/train_refiner.json`` (``usb_prep.refine_training``:
synthetic cases on the training brains filled by the fill model, then the residual CNN beside them).
``val`` scores the default blend and the refined blend on the validation masks' cached parts
(``validation.cache_parts``: otsu_head x held-out masks that are not benchmark cases), the refiner applied
as the package applies it (``usb_prep.refine.refine_fill``)::

    python benchmarks/refiner_probe.py val /work/runs/refiner/refine.pt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from usb_prep.refine import Refiner, refine_fill

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def val(args):
    import validation as V
    from usb_prep import metrics as M

    torch.set_num_threads(args.threads)
    a = argparse.Namespace(data=args.data, brains=args.brains, weights=None, extra=args.extra)
    data, truth, brain, affine = V.cases(a)
    hi = float(truth[brain].max())
    tr = M.scale01(truth, 0, hi)
    parts = V.cache_parts(a, data, affine)
    net = Refiner()
    net.load_state_dict(torch.load(args.weights))
    net.eval()
    rows = []
    for cat, name, img, m in data:
        full = {}
        for key in ("u", "pf", "nf"):
            full[key] = img.copy()
            full[key][m] = parts[name][key]
        blend = 0.2 * full["pf"] + 0.8 * full["nf"]
        scores = []
        for vals in (blend[m], refine_fill(net, img, m, full["u"], full["pf"], full["nf"], blend)):
            o = img.copy()
            o[m] = vals
            o = M.scale01(o, 0, hi)
            scores += [float(M.masked_psnr(o, tr, m)), float(M.masked_ssim(o, tr, m))]
        rows.append((cat, name, m.sum() / 1000, scores))
        print(rows[-1], flush=True)
    s = np.array([r[3] for r in rows])
    lines = ["# Refiner probe (validation masks)", "",
             f"Command: `python benchmarks/refiner_probe.py val {args.weights} --extra {args.extra}` (weights from "
             "`usb-train --config benchmarks/train_refiner.json`); in-mask PSNR dB / SSIM of the default blend and the refined blend.", "",
             "| category | mask | ml | default | refined |", "|---|---|---|---|---|"]
    lines += [f"| {c} | {n} | {ml:.1f} | {v[0]:.2f} / {v[1]:.3f} | {v[2]:.2f} / {v[3]:.3f} |" for c, n, ml, v in rows]
    lines.append(f"| **mean** | | | **{s[:, 0].mean():.2f} / {s[:, 1].mean():.3f}** | "
                 f"**{s[:, 2].mean():.2f} / {s[:, 3].mean():.3f}** |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["val"])
    p.add_argument("weights", nargs="?", help="val: the refiner's state dict")
    p.add_argument("--data", default="/work/shared/data")
    p.add_argument("--brains", default="/work/cache/brains")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--extra", type=int, default=4)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.out = args.out or str(HERE / "results" / "refiner_probe.md")
    return val(args)


if __name__ == "__main__":
    main()
