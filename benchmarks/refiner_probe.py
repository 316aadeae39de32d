#!/usr/bin/env python
"""Train and score the fill's refiner (``usb_prep.refine``), the last stage of the default fill.

The blend is 0.2 classical patch fill + 0.8 model-guided nlm fill (``api._blend_classical``);
the model's own fill only guides the nlm. The refiner sees the known image, the mask and the three parts
(model fill, patch fill, guided nlm fill) and adds a residual inside the mask; its last layer starts at
zero, so it starts as the default blend. Three steps:

    python benchmarks/refiner_probe.py gen --shard 0/2 --minutes 60   # and 1/2 in a second process
    python benchmarks/refiner_probe.py train --minutes 45 --out benchmarks/cache/refiner/ref.pt
    python benchmarks/refiner_probe.py val benchmarks/cache/refiner/ref.pt -> results/refiner_probe.md

``gen`` paints deformed training masks (the 80% split) on the training brains (never ``otsu_head``, nor
the BraTS patient) as the benchmark paints its cases, runs the default fill's parts with the packaged
weights and saves crops under ``benchmarks/cache/refiner/cases`` (about 40 s a case on one core);
``train`` reads new cases as they appear (run it beside ``gen``); ``val`` scores the refined blend on the
validation masks' cached parts (``validation.cache_parts``, otsu_head x held-out masks that are not
benchmark cases), the refiner applied as the package applies it (``usb_prep.refine.refine_fill``).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from usb_prep.refine import CONTEXT, Refiner, pad_to_window, refine_fill, refiner_inputs
from usb_prep.refine import PATCH as P

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
CACHE = HERE / "cache" / "refiner"


def gen(args):
    import run_benchmark as RB
    import validation as V
    from usb_prep import crops
    from usb_prep.data.splits import list_masks
    from usb_prep.data.synthesis import load_mask_bank
    from usb_prep.training import load_brains, place_bank_mask
    from usb_prep.weights import load_model

    torch.set_num_threads(1)
    out = CACHE / "cases"
    out.mkdir(parents=True, exist_ok=True)
    k, n = (int(v) for v in args.shard.split("/"))
    brains = load_brains(args.brains, exclude=("otsu_head", "brats_gli_00001"))
    ref = brains[0]
    bank = load_mask_bank(list_masks(Path(args.data) / "lesion_masks", "train"), (ref["image"].shape, ref["affine"]),
                          min_ml=0.5, max_ml=120)
    model, _ = load_model(args.fill_weights, "fill", "cpu")
    t_end = time.time() + args.minutes * 60
    for i in range(k, args.cases, n):
        if time.time() > t_end:
            break
        f = out / f"{i:04d}.npz"
        if f.exists():
            continue
        rng = np.random.default_rng(10_000 + i)
        b = brains[rng.integers(len(brains))]
        truth, brain, aff = b["image"], b["brain"], b["affine"]
        mm, box, e = place_bank_mask(bank, rng)  # as the fill model's training places them
        m = np.zeros(truth.shape, bool)
        crops.paste(m, box, mm, np.ones(truth.shape, bool))
        m &= brain
        if m.sum() < 300:
            continue
        img, _ = RB.paint(truth, brain, m, rng)
        t0 = time.time()
        u = V.model_fill(model, img, m, aff)
        pf, nf = V.patch_fills(model, u, img, m, aff)
        idx = np.argwhere(m)  # the lesions' box with CONTEXT known voxels, as refine_fill crops
        sl = tuple(slice(a, c) for a, c in zip(np.maximum(idx.min(0) - CONTEXT, 0),
                                               np.minimum(idx.max(0) + CONTEXT + 1, m.shape)))
        np.savez_compressed(f.with_suffix(".tmp.npz"), truth=truth[sl], img=img[sl], mask=m[sl], u=u[sl], pf=pf[sl],
                            nf=nf[sl], brain_name=b["name"], mask_name=e["name"])
        os.replace(f.with_suffix(".tmp.npz"), f)
        print(f"{i} {b['name']} {e['name']} {m.sum() / 1000:.1f} ml {time.time() - t0:.0f} s", flush=True)


def _load(files):
    cases = []
    for f in files:
        with np.load(f) as z:
            m = z["mask"]
            x, base = refiner_inputs(z["img"], m, z["u"], z["pf"], z["nf"], 0.2 * z["pf"] + 0.8 * z["nf"])
            cases.append(tuple(pad_to_window(a) for a in (x, base, z["truth"].astype(np.float32), m)))
    return cases


def _sample(cases, rng):
    x, base, t, m = cases[rng.integers(len(cases))]
    idx = np.argwhere(m)
    lo = np.clip(idx[rng.integers(len(idx))] - P // 2 + rng.integers(-8, 9, 3), 0, np.array(m.shape) - P)
    sl = tuple(slice(a, a + P) for a in lo)
    arrs = [x[(slice(None),) + sl], base[sl][None], t[sl][None], m[sl][None].astype(np.float32)]
    for ax in range(3):
        if rng.random() < 0.5:
            arrs = [np.flip(a, ax + 1) for a in arrs]
    perm = rng.permutation(3) + 1
    return [np.ascontiguousarray(a.transpose(0, *perm)) for a in arrs]


def train(args):
    torch.set_num_threads(args.threads)
    pattern = str(CACHE / "cases" / "*.npz")
    files = sorted(glob.glob(pattern))
    cases = _load(files)
    torch.manual_seed(args.seed)
    net, ema = Refiner(), Refiner()
    ema.load_state_dict(net.state_dict())
    opt = torch.optim.AdamW(net.parameters(), 3e-4, weight_decay=1e-4)
    rng, t0, it, gains = np.random.default_rng(args.seed), time.time(), 0, []
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    while time.time() - t0 < args.minutes * 60:
        batch = [_sample(cases, rng) for _ in range(args.batch)]
        x, base, t, m = (torch.from_numpy(np.stack([b[j] for b in batch])) for j in range(4))
        n = m.sum((1, 2, 3, 4)).clamp(min=1)
        mse = ((base + m * net(x) - t) ** 2 * m).sum((1, 2, 3, 4)) / n
        mse0 = ((base - t) ** 2 * m).sum((1, 2, 3, 4)) / n
        loss = torch.log(mse + 1e-5).mean()  # mean log MSE: the mean in-mask PSNR the benchmark reports
        opt.zero_grad()
        loss.backward()
        opt.step()
        it += 1
        with torch.no_grad():
            for p, q in zip(ema.parameters(), net.parameters()):
                p.mul_(0.995).add_(q, alpha=0.005)
        gains.append(float(torch.log(mse0 + 1e-5).mean() - loss.detach()) * 10 / np.log(10))
        if it % 300 == 0:  # cases still being generated
            new = sorted(set(glob.glob(pattern)) - set(files))
            files += new
            cases += _load(new)
        if it % 50 == 0:
            print(f"it {it} {time.time() - t0:.0f} s, {len(cases)} cases, training gain {np.mean(gains[-50:]):.3f} dB",
                  flush=True)
            torch.save(ema.state_dict(), args.out)
    torch.save(ema.state_dict(), args.out)


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
             "`gen` + `train`, see the script); in-mask PSNR dB / SSIM of the default blend and the refined blend.", "",
             "| category | mask | ml | default | refined |", "|---|---|---|---|---|"]
    lines += [f"| {c} | {n} | {ml:.1f} | {v[0]:.2f} / {v[1]:.3f} | {v[2]:.2f} / {v[3]:.3f} |" for c, n, ml, v in rows]
    lines.append(f"| **mean** | | | **{s[:, 0].mean():.2f} / {s[:, 1].mean():.3f}** | "
                 f"**{s[:, 2].mean():.2f} / {s[:, 3].mean():.3f}** |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["gen", "train", "val"])
    p.add_argument("weights", nargs="?", help="val: the refiner's state dict")
    p.add_argument("--data", default="/work/shared/data")
    p.add_argument("--brains", default="/work/cache/brains")
    p.add_argument("--shard", default="0/1")
    p.add_argument("--cases", type=int, default=400)
    p.add_argument("--minutes", type=float, default=60, help="gen, train: wall-clock budget")
    p.add_argument("--fill-weights", default=None, help="gen: the fill whose parts to refine (default: packaged)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--extra", type=int, default=4)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.step == "train":
        args.out = args.out or str(CACHE / "ref.pt")
        return train(args)
    if args.step == "val":
        args.out = args.out or str(HERE / "results" / "refiner_probe.md")
        return val(args)
    return gen(args)


if __name__ == "__main__":
    main()
