"""Generation tasks: distribution distances to real brains, and example pictures.

Real set: every prepared brain (training brains and the held-out one) averaged down to the
generation model's grid.  Features: ``usb_prep.metrics.image_features`` (a fixed random-weight
3D conv net seeded 0, pooled, plus intensity histogram statistics).  With a handful of images on
each side the distances are noisy; the real-vs-real split gives their scale.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import paths


def real_on_grid(brains_dir: Path, cfg) -> list[np.ndarray]:
    """Prepared healthy brains (MNI 1 mm) on the generation model's grid, as the training sampler sees them;
    patients (with a ``_lesionmask``) are left out."""
    from usb_prep.train.diffusion import load_brains, to_model_grid

    try:
        brains = load_brains(brains_dir)
    except FileNotFoundError:  # no prepared brains: generation is reported without the real-data metrics
        return []
    return [to_model_grid(b["image"], cfg) for b in brains if b["lesion"] is None]


def run_generation(out_dir: Path, brains_dir: Path, *, weights=None, n: int = 4, steps: int = 25, log=print) -> dict:
    from usb_prep import api, metrics
    from usb_prep.weights import load_model

    try:
        model, info = load_model(weights, "generate", "cpu")
    except Exception as e:  # noqa: BLE001 -- reported, not fatal
        return {"error": f"not available: {type(e).__name__}: {str(e).splitlines()[0]}"}
    real = real_on_grid(brains_dir, model.cfg)
    pairs, times = [], []
    for i in range(n):
        t0 = time.perf_counter()
        pairs.append(api.generate_pair_array(model=model, steps=steps, seed=i, device="cpu"))
        times.append(time.perf_counter() - t0)
        log(f"  generated pair {i}: {times[-1]:.1f}s, lesion {int(pairs[-1][1].sum())} voxels")
    masks = [np.zeros(model.cfg.grid, bool)]
    if real:
        brain0 = real[0] > 0.05
        blob = np.zeros(model.cfg.grid, bool)
        c = np.array(model.cfg.grid) // 2 + np.array([5, 2, 2])
        blob[c[0] - 3:c[0] + 3, c[1] - 4:c[1] + 4, c[2] - 3:c[2] + 3] = True
        masks = [blob & brain0]
    t0 = time.perf_counter()
    from_mask = api.generate_from_mask_array(masks[0], model=model, steps=steps, seed=0, device="cpu")
    t_mask = time.perf_counter() - t0
    gen = [b for b, _ in pairs]
    fr = np.stack([metrics.image_features(r) for r in real]) if real else None
    fg = np.stack([metrics.image_features(g) for g in gen])
    res = {"n_generated": n, "n_real": len(real), "steps": steps, "weights_sha256": info["sha256"],
           "seconds_per_pair": float(np.mean(times)), "seconds_from_mask": t_mask,
           "lesion_voxels": [int(m.sum()) for _, m in pairs],
           "lesion_inside_brain": [float((m & (b > 0.05)).sum() / max(m.sum(), 1)) for b, m in pairs]}
    if fr is not None and len(real) >= 2:
        res["mmd_gen_real"] = metrics.mmd(fg, fr)
        res["frechet_gen_real"] = metrics.frechet_distance(fg, fr)
        half = len(real) // 2
        res["mmd_real_real"] = metrics.mmd(fr[:half], fr[half:])
        res["frechet_real_real"] = metrics.frechet_distance(fr[:half], fr[half:])
    _figure(out_dir / "fig_generation.png", pairs, real, masks[0], from_mask)
    return res


def _figure(path: Path, pairs, real, mask, from_mask):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(pairs) + 2
    fig, axes = plt.subplots(2, cols, figsize=(2.2 * cols, 4.6))
    for j, (b, m) in enumerate(pairs):
        z = int(np.argmax(m.sum((0, 1)))) if m.any() else b.shape[2] // 2 + 3
        for row, (img, ax) in enumerate(((b[:, :, z], axes[0, j]), (b[:, b.shape[1] // 2, :], axes[1, j]))):
            ax.imshow(np.rot90(img), cmap="gray", vmin=0, vmax=1.1)
            if row == 0 and m.any():
                ax.contour(np.rot90(m[:, :, z]), levels=[0.5], colors="r", linewidths=0.8)
            ax.axis("off")
        axes[0, j].set_title(f"pair {j}", fontsize=8)
    z = int(np.argmax(mask.sum((0, 1)))) if mask.any() else from_mask.shape[2] // 2
    axes[0, -2].imshow(np.rot90(from_mask[:, :, z]), cmap="gray", vmin=0, vmax=1.1)
    axes[0, -2].contour(np.rot90(mask[:, :, z]), levels=[0.5], colors="r", linewidths=0.8)
    axes[0, -2].set_title("from mask", fontsize=8)
    if real:
        axes[0, -1].imshow(np.rot90(real[0][:, :, z]), cmap="gray", vmin=0, vmax=1.1)
        axes[0, -1].set_title("real (4 mm)", fontsize=8)
    for ax in axes[1, -2:]:
        ax.axis("off")
    for ax in axes[0, -2:]:
        ax.axis("off")
    fig.suptitle("usb_prep generation (4 mm grid): top axial with lesion outline, bottom coronal", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(res: dict) -> str:
    if "error" in res:
        return f"\n## Generation\n\n{res['error']}\n"
    lines = ["", "## Generation (cpu-gen model, 4 mm grid)", "",
             f"{res['n_generated']} unconditional pairs at {res['steps']} steps ({res['seconds_per_pair']:.1f} s each), "
             f"one brain from a mask ({res['seconds_from_mask']:.1f} s); real set: {res['n_real']} prepared brains "
             "on the same grid. Features: `usb_prep.metrics.image_features`.", ""]
    if "mmd_gen_real" in res:
        lines += ["| | MMD^2 | Frechet |", "|---|---|---|",
                  f"| generated vs real | {res['mmd_gen_real']:.4f} | {res['frechet_gen_real']:.2f} |",
                  f"| real vs real (split) | {res['mmd_real_real']:.4f} | {res['frechet_real_real']:.2f} |"]
    else:
        lines.append("MMD and Frechet distances need at least 2 prepared brains in `--brains` "
                     "(`python -m benchmarks prepare`); not computed.")
    lines += ["", f"Lesion voxels per pair: {res['lesion_voxels']}; share inside the brain: "
              f"{[round(x, 2) for x in res['lesion_inside_brain']]}", "", "![generation](fig_generation.png)", ""]
    return "\n".join(lines)


def main(argv=None):
    """``python -m benchmarks generation [--brains DIR] [--n 4] [--steps 25]`` -> results/generation.md."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    paths.add(p, "brains")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--weights", default=None)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--steps", type=int, default=25)
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = run_generation(out, Path(a.brains), weights=a.weights, n=a.n, steps=a.steps)
    (out / "generation.md").write_text("# Generation" + markdown(res))


if __name__ == "__main__":
    main()
