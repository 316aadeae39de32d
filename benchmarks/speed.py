"""Denoiser speed on this CPU: fp32 vs bfloat16 autocast, per crop size and thread count.

    python -m benchmarks speed [--out benchmarks/results] [--weights DIR]

Writes ``speed.md`` and ``speed.json``: seconds per USB_brain forward pass (the cost of one
filling step) for the packaged ``fill`` model, and the time of one known-mask fill of a
20 ml lesion on the MNI152 template at the model's default step count.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def time_forward(model, size: int, precision: str, threads: int, reps: int = 3) -> float:
    torch.set_num_threads(threads)
    model.precision = precision
    y = torch.randn(1, 1, size, size, size)
    cond = torch.randn(1, model.cfg.brain_net.cond_channels, size, size, size)
    t = torch.tensor([500])
    with torch.no_grad():
        model.brain_out(y, cond, t)  # warm-up
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            model.brain_out(y, cond, t)
            best = min(best, time.perf_counter() - t0)
    return best


def case_20ml():
    """A ~20 ml ellipsoid lesion in the MNI152 template (1 mm): (image scaled to ~[0, 1], mask, affine)."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    img = load_mni152_template(resolution=1)
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    brain = np.asanyarray(load_mni152_brain_mask(resolution=1).dataobj) > 0
    data = np.where(brain, data, 0) / np.percentile(data[brain], 99.5)
    c = np.array(data.shape) // 2 + np.array([20, 5, 10])
    zz = np.indices(data.shape) - c[:, None, None, None]
    mask = ((zz[0] / 14.0) ** 2 + (zz[1] / 18.0) ** 2 + (zz[2] / 19.0) ** 2 <= 1) & brain
    return data, mask, img.affine


def fill_20ml(model, threads: int, case) -> tuple[float, dict, float, int]:
    """Wall time of the default fill of ``case`` (:func:`case_20ml`), its seconds per stage, volume (ml), steps."""
    from usb_prep import api

    torch.set_num_threads(threads)
    data, mask, affine = case
    model.precision = "auto"
    t0 = time.perf_counter()
    parts = api.fill_parts(data, mask, model=model, affine=affine, device="cpu")
    return time.perf_counter() - t0, parts.seconds, float(mask.sum() / 1000), model.fill_settings.steps


def api_defaults(model) -> str:
    return ", ".join(f"{k} {v}" for k, v in model.fill_settings.to_dict().items())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--weights", default=None)
    p.add_argument("--tag", default="", help="results go to speed_TAG.md/.json (e.g. the CPU kind)")
    args = p.parse_args(argv)
    from usb_prep.diffusion.model import bf16_supported
    from usb_prep.weights import load_model

    model, info = load_model(args.weights, "fill", "cpu")
    rows = []
    for threads in (1, 2):
        for size in (32, 48, 64):
            r = {"threads": threads, "size": size, "fp32_s": time_forward(model, size, "fp32", threads)}
            if bf16_supported("cpu"):
                r["bf16_s"] = time_forward(model, size, "bf16", threads)
            rows.append(r)
            print(r, flush=True)
    t_fill, stages, ml, steps = fill_20ml(model, 2, case_20ml())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"weights_sha256": info["sha256"], "cpu_bf16": bf16_supported("cpu"),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
           "forward": rows, "fill_seconds": t_fill, "fill_stage_seconds": stages,
           "settings": api_defaults(model),
           "fill_ml": ml, "fill_steps": steps,
           "command": "python -m benchmarks speed" + (f" --tag {args.tag}" if args.tag else "")}
    stem = f"speed_{args.tag}" if args.tag else "speed"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2))
    lines = ["# Denoiser speed (USB_brain of the packaged fill model, one forward pass)", "",
             f"CPU capability {res['cpu_capability']}, oneDNN bf16 kernels: {res['cpu_bf16']}, torch {torch.__version__}.",
             f"Command: `{res['command']}`", "",
             "| threads | crop | fp32 (s) | bf16 autocast (s) | speed-up |", "|---|---|---|---|---|"]
    for r in rows:
        bf = r.get("bf16_s")
        lines.append(f"| {r['threads']} | {r['size']}^3 | {r['fp32_s']:.3f} | "
                     f"{bf:.3f} | {r['fp32_s'] / bf:.1f}x |" if bf else f"| {r['threads']} | {r['size']}^3 | "
                     f"{r['fp32_s']:.3f} | - | - |")
    lines += ["", f"Known-mask fill of a {ml:.1f} ml lesion in the 1 mm MNI152 template, {steps} steps, 2 threads: "
              f"**{t_fill:.1f} s** wall time with the default settings ({api_defaults(model)}); per stage: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()) + ".", ""]
    (out / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
