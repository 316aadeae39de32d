"""Train fill-model variants side by side on one accelerator, from one packed data file.

A machine with a GPU but without ``../shared`` (or the time to prepare brains) gets everything in one file:

    python -m benchmarks train-device pack --out .devdata/pack.npz        # here: prepared brains + training masks
    python -m benchmarks train-device train --pack .devdata/pack.npz --out runs/dev --minutes 7   # on the GPU

``pack`` holds the prepared training brains (``TrainConfig.exclude_brains`` stay out: the benchmark's and the
BraTS case) and the training split of the lesion masks. ``train`` feeds every variant (``VARIANTS``) the same
batches, drawn by :class:`usb_prep.train.diffusion.PatchSampler` in background processes; each batch is shown
``--reuse`` times under a fresh flip / axis permutation / bias field on the device, since drawing patches (mask
deformation, painting) is what bounds the speed. Each variant's EMA weights are exported every ``--export-every``
seconds to ``OUT/NAME/`` in the shipped format (``usb.json`` + ``fill.safetensors``), with ``OUT/log.jsonl``.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from usb_prep.config import NetConfig, preset
from usb_prep.diffusion.model import USBModel
from usb_prep.train.diffusion import (PairedLoss, PatchSampler, TrainConfig, batches, draw_modes, export, load_bank,
                                      load_brains, optimise)

from . import paths

log = logging.getLogger("train_device")

# what the run trains: name -> (model config changes on the "cpu" preset, nets initialised from the packaged
# weights ("all", "lesion": USB_lesion only, None), lr)
VARIANTS = {
    "base": ({}, "all", 2e-4),
    "wide": ({"brain_net": NetConfig(1, 4, 1, (16, 32, 64, 96), (False,) * 4, 1, 32, 8)}, "lesion", 6e-4),
}
MAX_FILE = 15 * 2 ** 20  # larger weight files are also written in float16 (what a device run can send back)


def train_config(a) -> TrainConfig:
    return TrainConfig(brains=a.brains, masks=str(Path(a.data) / "lesion_masks"), patch=a.patch, batch_size=a.batch, p_fill=0.8, p_tmax=0.7,
                       healthy_context=True, margins=(0, 1, 2), lr_decay=True, minutes=a.minutes, ema=0.998,
                       exclude_brains=("otsu_head", "brats_gli_00001", "ms07"), workers=a.workers, seed=a.seed)


# --- pack -----------------------------------------------------------------------
def pack(a):
    cfg = train_config(a)
    brains = load_brains(cfg.brains, cfg.exclude_brains)
    bank = load_bank(cfg, brains[0]["image"].shape, brains[0]["affine"])
    arrs = {"brain_names": np.array([b["name"] for b in brains]), "bank_names": np.array([e["name"] for e in bank]),
            "affine": brains[0]["affine"], "bank_offsets": np.array([e["offset"] for e in bank]),
            "bank_shapes": np.array([e["crop"].shape for e in bank]), "bank_ml": np.array([e["ml"] for e in bank])}
    for i, b in enumerate(brains):
        arrs[f"image{i}"] = b["image"].astype(np.float16)
        arrs[f"brain{i}"] = np.packbits(b["brain"])
    arrs["bank_bits"] = np.concatenate([np.packbits(e["crop"].ravel()) for e in bank])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(a.out, **arrs)
    print(f"{a.out}: {len(brains)} brains ({', '.join(arrs['brain_names'])}), {len(bank)} masks, "
          f"{os.path.getsize(a.out) / 1e6:.1f} MB")


def unpack(path):
    z = np.load(path)
    shape = z["image0"].shape
    brains = [{"name": str(n), "image": z[f"image{i}"].astype(np.float32), "affine": z["affine"], "lesion": None,
               "brain": np.unpackbits(z[f"brain{i}"])[: int(np.prod(shape))].reshape(shape).astype(bool)}
              for i, n in enumerate(z["brain_names"])]
    bits, bank, pos = z["bank_bits"], [], 0
    for name, off, shp, ml in zip(z["bank_names"], z["bank_offsets"], z["bank_shapes"], z["bank_ml"]):
        n = int(np.prod(shp))
        nbytes = -(-n // 8)
        crop = np.unpackbits(bits[pos:pos + nbytes])[:n].reshape(shp).astype(bool)
        pos += nbytes
        bank.append({"name": str(name), "offset": tuple(int(v) for v in off), "crop": crop, "ml": float(ml)})
    return brains, bank


# --- device-side augmentation ------------------------------------------------------
def reorient(batch: dict, gen: torch.Generator) -> dict:
    """One random axis permutation and flips for the whole batch (patch models are orientation-free)."""
    perm = torch.randperm(3, generator=gen).tolist()
    flips = [2 + i for i in range(3) if torch.rand(1, generator=gen).item() < 0.5]
    out = {}
    for k, v in batch.items():
        v = v.permute(0, 1, *[2 + p for p in perm])
        out[k] = torch.flip(v, flips) if flips else v
    return {k: v.contiguous() for k, v in out.items()}


def bias_field(n: int, shape, gen: torch.Generator, device, strength: float = 0.15) -> torch.Tensor:
    """Smooth multiplicative fields (N, 1, *shape), log-amplitude about ``strength``; half of them flat."""
    coarse = torch.randn(n, 1, 3, 3, 3, generator=gen) * strength
    coarse = coarse * (torch.rand(n, 1, 1, 1, 1, generator=gen) < 0.5)
    return torch.exp(F.interpolate(coarse.to(device), size=tuple(shape), mode="trilinear", align_corners=True))


def augment(batch: dict, gen: torch.Generator) -> dict:
    b = reorient(batch, gen)
    shape, n, dev = b["mask"].shape[2:], b["mask"].shape[0], b["mask"].device
    f, fm = bias_field(n, shape, gen, dev), bias_field(n, shape, gen, dev)
    b["healthy"], b["patho"], b["mirror"] = b["healthy"] * f, b["patho"] * f, b["mirror"] * fm
    return b


# --- train ----------------------------------------------------------------------
class Variant:
    def __init__(self, name, changes, init, lr, cfg: TrainConfig, device, init_weights):
        self.name, self.lr0 = name, lr
        mcfg = preset("cpu").replace(**changes)
        torch.manual_seed(cfg.seed)
        self.model = USBModel(mcfg).to(device)
        if init:
            from usb_prep.weights import load_model

            m, _ = load_model(init_weights, "fill", "cpu")
            keep = "lesion_net." if init == "lesion" else ""
            state = {k: v for k, v in m.state_dict().items() if k.startswith(keep) and not k.startswith("refiner.")}
            self.model.load_state_dict(state, strict=not keep)
        self.ema = copy.deepcopy(self.model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)
        self.loss = PairedLoss(self.model, cfg)
        self.params = sum(p.numel() for p in self.model.parameters())

    def step(self, batch, t, nx, ny, modes, margins, lr, ema):
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.model.train()
        loss, parts = self.loss(batch, t, nx, ny, modes, margins)
        optimise(self.model, self.ema, self.opt, loss, ema)
        return {k: float(v.detach()) for k, v in {"loss": loss, **parts}.items()}


def draw(cfg: TrainConfig, n: int, T: int, gen: torch.Generator, device):
    """The training loop's timesteps and modes (:func:`draw_modes`) and a hole margin per sample."""
    t, modes = draw_modes(cfg, n, T, gen, context=True)
    margins = torch.tensor(cfg.margins)[torch.randint(0, len(cfg.margins), (n,), generator=gen)]
    return t.to(device), modes.to(device), margins.to(device)


def lr_factor(elapsed: float, budget: float) -> float:
    warm = min(1.0, elapsed / 20.0 + 0.05)  # 20 s warm-up
    frac = min(1.0, elapsed / budget)
    return warm * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))


def _export(ema, folder: Path, cfg: TrainConfig, it: int):
    """The shipped format; a weights file over MAX_FILE is replaced by its float16 copy (``fp16_to_fp32`` restores it)."""
    from safetensors.torch import load_file, save_file

    export(ema, folder, cfg, it)
    f = folder / "fill.safetensors"
    if f.stat().st_size > MAX_FILE:
        save_file({k: v.half() for k, v in load_file(str(f)).items()}, str(folder / "fill.fp16.safetensors"))
        f.unlink()


def fp16_to_fp32(folder: Path):
    """Undo :func:`_export`'s float16 copy: the shipped format again (sha256 recomputed)."""
    from safetensors.torch import load_file

    from usb_prep.config import ModelConfig
    from usb_prep.weights import save_model

    folder = Path(folder)
    manifest = json.loads((folder / "usb.json").read_text())
    model = USBModel(ModelConfig.from_dict(manifest["models"]["fill"]["config"]))
    model.load_state_dict({k: v.float() for k, v in load_file(str(folder / "fill.fp16.safetensors")).items()})
    save_model(folder, {"fill": model})
    (folder / "fill.fp16.safetensors").unlink()


def train(a):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    cfg = train_config(a)
    t_load = time.time()
    brains, bank = unpack(a.pack)
    log.info("unpacked %d brains, %d masks in %.0f s", len(brains), len(bank), time.time() - t_load)
    sampler = PatchSampler(brains, bank, cfg, preset("cpu"))
    data = batches(sampler, cfg.batch_size, seed=a.seed, workers=cfg.workers)
    names = a.variants.split(",")
    variants = [Variant(n, *VARIANTS[n][:2], VARIANTS[n][2] * a.lr_scale, cfg, device, a.init_weights) for n in names]
    for v in variants:
        log.info("variant %s: %d parameters, lr %g", v.name, v.params, v.lr0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "log.jsonl", "a")  # noqa: SIM115  (closed after the loop)
    gen = torch.Generator().manual_seed(a.seed)
    T = variants[0].model.cfg.num_train_timesteps
    budget = a.minutes * 60
    t0 = last_export = time.time()
    it, wait = 0, 0.0
    while True:
        tw = time.time()
        cpu_batch = next(data)
        wait += time.time() - tw
        base = {k: v.to(device, non_blocking=True) for k, v in cpu_batch.items()}
        for _ in range(a.reuse):
            batch = augment(base, gen)
            n = batch["mask"].shape[0]
            t, modes, margins = draw(cfg, n, T, gen, device)
            nx = torch.randn(batch["mask"].shape, generator=gen).to(device)
            ny = torch.randn(batch["mask"].shape, generator=gen).to(device)
            elapsed = time.time() - t0
            ema = min(cfg.ema, (1 + it) / (10 + it))
            recs = {v.name: v.step(batch, t, nx, ny, modes, margins, v.lr0 * lr_factor(elapsed, budget), ema)
                    for v in variants} if it % a.log_every == 0 else None
            if recs is None:
                for v in variants:
                    v.step(batch, t, nx, ny, modes, margins, v.lr0 * lr_factor(elapsed, budget), ema)
            it += 1
            if recs is not None:
                rec = {"iteration": it, "seconds": round(elapsed, 1), "data_wait_s": round(wait, 1), **{
                    f"{k}.{p}": round(x, 5) for k, r in recs.items() for p, x in r.items()}}
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                print(json.dumps(rec), flush=True)
        done = time.time() - t0 > budget
        if done or time.time() - last_export > a.export_every:
            for v in variants:
                _export(v.ema, out / v.name, cfg, it)
            last_export = time.time()
            log.info("exported at iteration %d (%.0f s, data wait %.0f s)", it, time.time() - t0, wait)
        if done:
            break
    logf.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("pack", "train"):
        s = sub.add_parser(name)
        paths.add(s, "brains", "data")
        s.add_argument("--out", required=True)
        s.add_argument("--patch", type=int, default=48)
        s.add_argument("--batch", type=int, default=16)
        s.add_argument("--minutes", type=float, default=7.0)
        s.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
        s.add_argument("--seed", type=int, default=0)
        if name == "train":
            s.add_argument("--pack", required=True)
            s.add_argument("--variants", default=",".join(VARIANTS))
            s.add_argument("--reuse", type=int, default=2, help="device-side augmented views of each batch")
            s.add_argument("--init-weights", default=None, help="default: the packaged weights")
            s.add_argument("--export-every", type=float, default=60.0)
            s.add_argument("--lr-scale", type=float, default=1.0, help="every variant's learning rate times this")
            s.add_argument("--log-every", type=int, default=20)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    (pack if a.cmd == "pack" else train)(a)


if __name__ == "__main__":
    main()
