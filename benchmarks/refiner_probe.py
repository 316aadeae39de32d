#!/usr/bin/env python
"""Score a fill refiner (``usb_prep.refine``) on the validation masks -> results/refiner_probe.md.

The refiner is trained by ``usb-train --config benchmarks/train_refiner.json`` (``usb_prep.refine_training``:
synthetic cases on the training brains filled by the fill model, then the residual CNN beside them).
``val`` scores the default blend and the refined blend on the validation masks' cached parts
(``validation.cache_parts``: otsu_head x held-out masks that are not benchmark cases), the refiner applied
as the package applies it (``usb_prep.refine.refine_fill``)::

    python benchmarks/refiner_probe.py val packaged /work/runs/refiner/refine.pt --flips 1 4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from usb_prep.refine import refine_fill
from usb_prep.weights import load_refiner_state

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def val(args):
    import validation as V
    from run_benchmark import classical_patch

    from usb_prep import metrics as M

    torch.set_num_threads(args.threads)
    a = argparse.Namespace(data=args.data, brains=args.brains, weights=None, extra=args.extra)
    data, truth, brain, affine = V.cases(a)
    hi = float(truth[brain].max())
    tr = M.scale01(truth, 0, hi)
    parts = V.cache_parts(a, data, affine)
    nets = {w: load_refiner_state(w) for w in args.weights}
    heads = ["patch (classical)", "blend"] + [f"{Path(w).name if w != 'packaged' else w}, flips {k}"
                                              for w in nets for k in args.flips]
    rows = []
    for cat, name, img, m in data:
        full = {}
        for key in ("u", "pf", "nf"):
            full[key] = img.copy()
            full[key][m] = parts[name][key]
        if args.nlm:  # a variant's nlm fill in place of the default one (fill_variants.py --variants)
            f = HERE / "cache" / "variants" / f"{name}.{args.nlm}.npy"
            if not f.exists():
                print(f"{cat} {name}: no {args.nlm} fill, skipped", flush=True)
                continue
            full["nf"][m] = np.load(f)
        blend = 0.2 * full["pf"] + 0.8 * full["nf"]
        patch = classical_patch(img, m, brain)  # the benchmark's classical patch filler
        outs = [patch[m], blend[m]] + [refine_fill(net, img, m, full["u"], full["pf"], full["nf"], blend, flips=k)
                             for net in nets.values() for k in args.flips]
        scores = []
        for vals in outs:
            o = img.copy()
            o[m] = vals
            o = M.scale01(o, 0, hi)
            scores += [float(M.masked_psnr(o, tr, m)), float(M.masked_ssim(o, tr, m))]
        rows.append((cat, name, m.sum() / 1000, scores))
        print(rows[-1], flush=True)
    s = np.array([r[3] for r in rows])
    cmd = " ".join(["python benchmarks/refiner_probe.py val", *args.weights, "--flips", *map(str, args.flips),
                    "--extra", str(args.extra)] + (["--nlm", args.nlm] if args.nlm else []))
    lines = ["# Refiner probe (validation masks)", "",
             f"Command: `{cmd}` (`packaged`: the refiner in the packaged weights; others: `OUT/refine.pt` of "
             "`usb-train --config benchmarks/train_refiner.json`); in-mask PSNR dB / SSIM of the classical patch "
             "filler, the default blend (0.2 patch + 0.8 nlm parts, mirror settings of the packaged config) "
             "and the refined blends (the residual averaged over `flips` flipped inputs).", "",
             "| category | mask | ml | " + " | ".join(heads) + " |", "|---" * (3 + len(heads)) + "|"]
    for c, n, ml, v in rows:
        lines.append(f"| {c} | {n} | {ml:.1f} | " + " | ".join(f"{v[2 * j]:.2f} / {v[2 * j + 1]:.3f}"
                                                           for j in range(len(heads))) + " |")
    lines.append("| **mean** | | | " + " | ".join(f"**{s[:, 2 * j].mean():.2f} / {s[:, 2 * j + 1].mean():.3f}**"
                                                 for j in range(len(heads))) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["val"])
    p.add_argument("weights", nargs="+", help="refiners: `packaged` or state dicts (OUT/refine.pt)")
    p.add_argument("--flips", type=int, nargs="+", default=[1], help="flip counts to average the residual over")
    p.add_argument("--data", default="/work/shared/data")
    p.add_argument("--brains", default="/work/cache/brains")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--extra", type=int, default=4)
    p.add_argument("--nlm", default=None, help="use this fill_variants.py variant's nlm fill (cached) as the nlm part")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.out = args.out or str(HERE / "results" / "refiner_probe.md")
    return val(args)


if __name__ == "__main__":
    main()
