"""Training the paired USB model: samplers of synthetic lesion pairs, the paired loss, the loop.

The paired objective (usb-method.md section 3): ``L = L_lesion + L_brain`` with
``L_lesion = |eps_x - eps_x(x_t, y_t, t)|^2`` and ``L_brain = |eps_y - eps_y(y_t,
x0_hat, t)|^2``, the one-step lesion estimate ``x0_hat`` detached as the brain
model's condition.  Ours adds, for context models, a "fill" share of samples
where the brain model learns the *healthy* image inside a hole from the
context around it (and, for mirror models, the contralateral hemisphere).

Runs on one CPU, one GPU, or many processes under ``torchrun`` (DDP; gloo on CPU).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from .. import crops
from ..config import ModelConfig, preset
from ..mirror import midline
from ..diffusion.model import USBModel

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    preset: str = "cpu"  # model preset (usb_prep.config.PRESETS)
    brains: str = ""  # folder of prepared brains: NAME_T1w.nii.gz + NAME_brainmask.nii.gz (MNI 1 mm, normalised)
    masks: str = ""  # lesion mask root (soop/, ms/, neglect/ of binary MNI masks)
    out: str = "runs/usb"
    iterations: int = 2000
    minutes: float | None = None  # wall-clock budget; stops (and saves) when reached
    batch_size: int = 4
    patch: int = 32  # patch models: cube edge in voxels
    lr: float = 2e-4
    ema: float = 0.995
    p_empty: float = 0.1  # share of healthy samples with an empty mask
    p_fill: float = 0.6  # context models: share of brain samples trained as "fill" (healthy target, hole)
    p_context: float = 0.5  # context models, paired samples: share that also get context
    known_weight: float = 0.1  # loss weight of known (context) voxels relative to the hole
    p_spatial: float = 0.0  # patch models: share of patches warped by a random affine + elastic deformation
    margins: tuple[int, ...] = (2,)  # hole = lesion dilated by one of these (voxels), drawn per sample
    healthy_context: bool = False  # fill samples see healthy context: the mask covers the whole lesion
    p_native: float = 0.3  # T2w/FLAIR runs: share of a contrast's samples cut from real scans of it, when any
    p_tmax: float = 0.0  # share of fill samples trained at the last timestep, where one-step filling starts
    lr_decay: bool = False  # cosine decay to lr/10 over the budget (iterations or minutes, whichever ends first)
    contrast: str = "T1w"  # T1w, T2w, FLAIR or several ("T2w,FLAIR", one drawn per sample): other than T1w, the
    # T1w brains are mapped to that contrast per sample (usb_prep.data.contrast) and lesions painted bright
    min_ml: float = 0.1
    max_ml: float = 150.0
    max_masks: int | None = None  # use only this many masks (tests)
    exclude_brains: tuple[str, ...] = ("otsu_head",)  # held out for the benchmark
    seed: int = 0
    threads: int | None = None
    checkpoint_every: int = 100
    log_every: int = 10
    device: str = "auto"
    workers: int = 1  # background sampling processes (0: sample in the main process)
    init_weights: str | None = None  # start from these weights (e.g. the packaged model) instead of random

    def to_dict(self):
        return asdict(self)


# --- data ---------------------------------------------------------------------
def load_brains(folder: str | os.PathLike, exclude=(), contrasts=("t1w",)) -> list[dict]:
    """Prepared brains: ``{name, image (float32), brain (bool), affine, lesion, contrast}`` for every
    NAME_T1w.nii.gz, and for every NAME_T2w.nii.gz / NAME_FLAIR.nii.gz whose contrast is in ``contrasts``.

    ``lesion`` (bool or None) marks real lesions of patient brains (NAME_lesionmask.nii.gz): their
    healthy tissue trains the model, the lesions themselves are neither filled nor learned as healthy.
    ``contrast`` is ``t1w``, ``t2w`` or ``flair`` (real scans of that contrast: used as they are).
    """
    wanted = {"t1w"} | {c.lower() for c in contrasts}
    files = [(p, c) for c in ("T1w", "T2w", "FLAIR") if c.lower() in wanted
             for p in sorted(Path(folder).glob(f"*_{c}.nii.gz"))]
    out = []
    for p, suffix in files:
        name, contrast = p.name[: -len(f"_{suffix}.nii.gz")], suffix.lower()
        if name in exclude:
            log.info("holding out brain %s", name)
            continue
        img = nib.load(str(p))
        bm_p = p.with_name(f"{name}_brainmask.nii.gz")
        data = np.asanyarray(img.dataobj, dtype=np.float32)
        brain = np.asanyarray(nib.load(str(bm_p)).dataobj) > 0 if bm_p.exists() else data > 0
        les_p = p.with_name(f"{name}_lesionmask.nii.gz")
        lesion = np.asanyarray(nib.load(str(les_p)).dataobj) > 0 if les_p.exists() else None
        lesion = lesion if lesion is not None and lesion.any() else None  # an empty mask: a healthy brain
        out.append({"name": name, "image": data, "brain": brain, "affine": img.affine, "lesion": lesion,
                    "contrast": contrast})
    if not any(b["contrast"] == "t1w" for b in out):
        raise FileNotFoundError(f"no prepared brains (*_T1w.nii.gz) in {folder}")
    return out


def load_bank(cfg: TrainConfig, ref_shape, ref_affine) -> list[dict]:
    from ..data.splits import list_masks
    from ..data.synthesis import load_mask_bank

    paths = list_masks(cfg.masks, split="train")
    if cfg.max_masks:
        rng = np.random.default_rng(cfg.seed)
        paths = [paths[i] for i in sorted(rng.choice(len(paths), min(cfg.max_masks, len(paths)), replace=False))]
    bank = load_mask_bank(paths, (tuple(ref_shape), ref_affine), min_ml=cfg.min_ml, max_ml=cfg.max_ml)
    if not bank:
        raise RuntimeError(f"no training masks left in {cfg.masks} after the volume filter")
    return bank


def place_bank_mask(bank: list[dict], rng: np.random.Generator) -> tuple[np.ndarray, crops.Box, dict]:
    """A random mask of ``bank`` (:func:`load_bank`), deformed and shifted by up to 4 voxels: the mask
    crop, its box on the bank's grid and the bank entry."""
    from ..data.synthesis import deform_mask

    e = bank[rng.integers(len(bank))]
    m = deform_mask(e["crop"], rng, strength=float(rng.uniform(0.5, 1.5)))
    lo = np.asarray(e["offset"]) + rng.integers(-4, 5, 3) + (np.asarray(e["crop"].shape) - np.asarray(m.shape)) // 2
    return m.astype(bool), crops.Box(tuple(int(v) for v in lo), tuple(int(v) for v in lo + np.asarray(m.shape))), e


class PatchSampler:
    """Patches around (synthetic) lesions: healthy, pathological, mask, contralateral mirror."""

    def __init__(self, brains: list[dict], bank: list[dict], cfg: TrainConfig, model_cfg: ModelConfig):
        from ..data.contrast import parse_contrasts, tissue_levels

        self.bank, self.cfg, self.mcfg = bank, cfg, model_cfg
        self.contrasts = parse_contrasts(cfg.contrast)
        # T1w brains serve every contrast (mapped per sample); real T2w / FLAIR scans only their own
        self.brains = [b for b in brains if b.get("contrast", "t1w") == "t1w"]
        self.native = {c: [b for b in brains if b.get("contrast") == c] for c in self.contrasts if c != "t1w"}
        for c, bs in self.native.items():
            if bs:
                log.info("real %s scans (%.0f%% of its samples): %s", c, 100 * cfg.p_native,
                         ", ".join(b["name"] for b in bs))
        rng = np.random.default_rng(cfg.seed)
        for b in brains:  # midline of each brain along voxel axis 0 (prepared brains are RAS)
            b["centre"] = midline(b["image"], 0)
            # T1w brains mapped to other contrasts: a sample of brain voxels gives each map's levels and scale
            if self.contrasts != ("t1w",) and b.get("contrast", "t1w") == "t1w":
                vals = b["image"][b["brain"] & (b["image"] > 0)]
                b["values"] = rng.choice(vals, min(20000, vals.size), replace=False)
                b["levels"] = tissue_levels(b["values"])
            les = b.get("lesion")
            # real lesions plus a safety shell: no synthetic hole there, no loss there
            b["avoid"] = ndimage.binary_dilation(les, iterations=2) if les is not None else None

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        from ..data.synthesis import paint_lesion

        P = self.cfg.patch
        contrast = self.contrasts[rng.integers(len(self.contrasts))] if len(self.contrasts) > 1 else self.contrasts[0]
        native = self.native.get(contrast)
        if native and rng.random() < self.cfg.p_native:
            b = native[rng.integers(len(native))]
        else:
            b = self.brains[rng.integers(len(self.brains))]
        img, brain, avoid = b["image"], b["brain"], b.get("avoid")
        full_mask = np.zeros(img.shape, bool)
        empty = rng.random() < self.cfg.p_empty
        if not empty:
            m, mbox, _ = place_bank_mask(self.bank, rng)
            crops.paste(full_mask, mbox, m, np.ones(img.shape, bool))
            full_mask &= brain
            if avoid is not None:
                full_mask &= ~avoid
        if full_mask.any():
            idx = np.argwhere(full_mask)
            centre = idx[rng.integers(len(idx))]  # a random lesion voxel: big lesions get varied views
        else:
            idx = np.argwhere(brain)
            centre = idx[rng.integers(len(idx))]
        lo = centre - P // 2 + rng.integers(-P // 4, P // 4 + 1, 3)
        box = crops.Box(tuple(int(v) for v in lo), tuple(int(v) + P for v in lo))
        warp = rng.random() < self.cfg.p_spatial
        pad = P // 4 if warp else 0  # warped patches are cut from a larger box: no empty corners
        box = crops.Box(tuple(v - pad for v in box.lo), tuple(v + pad for v in box.hi))
        # contralateral patch: voxel i -> 2c - i along axis 0, jittered to mimic imperfect alignment
        c = b["centre"] + rng.normal(0, 1.0)
        mlo = int(round(2 * c - (box.hi[0] - 1)))
        jit = rng.integers(-2, 3, 2)
        mbox = crops.Box((mlo, box.lo[1] + int(jit[0]), box.lo[2] + int(jit[1])),
                         (mlo + box.hi[0] - box.lo[0], box.hi[1] + int(jit[0]), box.hi[2] + int(jit[1])))

        def cut(a, bx):
            return crops.extract(a, bx) if a is not None else np.zeros(bx.shape, bool)

        stack = np.stack([cut(img, box), cut(brain, box), cut(full_mask, box), cut(avoid, box), cut(img, mbox)[::-1],
                          (cut(full_mask, mbox) | cut(avoid, mbox))[::-1]]).astype(np.float32)
        if warp:
            from ..data.augment import random_spatial_coords, warp_volumes

            coords = random_spatial_coords(stack.shape[1:], rng, True, True, max_rot_deg=15.0,
                                           scale_range=(0.85, 1.15), elastic_spacing=12)
            stack = warp_volumes(stack, coords)[:, pad:pad + P, pad:pad + P, pad:pad + P]
        H, Hm = stack[0], stack[4]
        Bm, M, A, Mm = (stack[i] > 0.5 for i in (1, 2, 3, 5))
        if contrast != b.get("contrast", "t1w"):
            from ..data.contrast import random_map

            f = random_map(contrast, rng, b["values"], b["levels"])
            H, Hm = f(H), f(Hm)
        H, Hm = _intensity_aug(rng, H, Hm)
        if M.any():
            Pth, _ = paint_lesion(H, Bm, M, rng, contrast=contrast)
        else:
            Pth = H.copy()
        mirror = np.where(Mm, 0, Hm)
        arrs = {"healthy": H, "patho": Pth.astype(np.float32), "mask": M.astype(np.float32), "mirror": mirror,
                "valid": (~A).astype(np.float32)}
        return _flip_permute(rng, arrs)


def to_model_grid(a: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """A 1 mm volume averaged to ``cfg.voxel_mm`` voxels and centred on ``cfg.grid`` (generation models)."""
    f = int(round(cfg.voxel_mm))
    grid = np.array(cfg.grid)
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    pad = [(-s) % f for s in a.shape]
    t = F.pad(t, [0, pad[2], 0, pad[1], 0, pad[0]])
    c = F.avg_pool3d(t, f)[0, 0].numpy()
    lo = (np.array(c.shape) - grid) // 2
    return crops.extract(c, crops.Box(tuple(lo), tuple(lo + grid)))


class GridSampler:
    """Whole brains on the model's coarse grid (generation models)."""

    def __init__(self, brains: list[dict], bank: list[dict], cfg: TrainConfig, model_cfg: ModelConfig):
        from ..data.contrast import parse_contrasts

        if parse_contrasts(cfg.contrast) != ("t1w",):
            raise ValueError("generation models are trained on T1w only (contrast T1w)")
        self.cfg, self.mcfg = cfg, model_cfg
        self.grid = np.array(model_cfg.grid)
        patients = [b["name"] for b in brains if b.get("lesion") is not None]
        if patients:  # a whole-brain sample would teach their lesions as healthy anatomy
            log.info("generation training skips brains with real lesions: %s", ", ".join(patients))
            brains = [b for b in brains if b["name"] not in patients]
        if not brains:
            raise RuntimeError("generation training needs brains without lesions")
        self.brains = [(self._coarse(b["image"]), self._coarse(b["brain"].astype(np.float32)) > 0.5) for b in brains]
        self.bank = bank
        self.shape1 = brains[0]["image"].shape

    def _coarse(self, a: np.ndarray) -> np.ndarray:
        return to_model_grid(a, self.mcfg)

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        from ..data.synthesis import deform_mask, paint_lesion

        i = rng.integers(len(self.brains))
        H, Bm = self.brains[i]
        M = np.zeros(self.grid, bool)
        if rng.random() >= self.cfg.p_empty:
            e = self.bank[rng.integers(len(self.bank))]
            full = np.zeros(self.shape1, np.float32)
            m = deform_mask(e["crop"], rng, strength=float(rng.uniform(0.5, 1.5)))
            lo = np.asarray(e["offset"])
            crops.paste(full, crops.Box(tuple(lo), tuple(lo + np.asarray(m.shape))), m.astype(np.float32),
                        np.ones(self.shape1, bool))
            M = (self._coarse(full) >= 0.4) & Bm
        H, _ = _intensity_aug(rng, H.copy(), H.copy(), noise=0.01)
        Pth = paint_lesion(H, Bm, M, rng, contrast=self.cfg.contrast)[0] if M.any() else H.copy()
        arrs = {"healthy": H, "patho": Pth.astype(np.float32), "mask": M.astype(np.float32),
                "mirror": np.zeros_like(H)}
        if rng.random() < 0.5:  # left-right flip keeps the grid's orientation meaningful
            arrs = {k: np.ascontiguousarray(v[::-1]) for k, v in arrs.items()}
        return arrs


def _intensity_aug(rng, a: np.ndarray, b: np.ndarray, noise: float = 0.03):
    """Same global contrast change for a patch and its mirror: scale, gamma, noise."""
    scale = rng.uniform(0.8, 1.2)
    gamma = math.exp(rng.normal(0, 0.15))
    sd = rng.uniform(0, noise)

    def f(x):
        x = np.clip(x, 0, None) ** gamma * scale
        return (x + rng.normal(0, sd, x.shape) * (x > 0)).astype(np.float32)

    return f(a), f(b)


def _flip_permute(rng, arrs: dict) -> dict:
    """Random flips and axis permutation, the same for every array (orientation-agnostic patch models)."""
    perm = rng.permutation(3)
    flips = rng.random(3) < 0.5
    out = {}
    for k, v in arrs.items():
        v = np.transpose(v, perm)
        for ax in range(3):
            if flips[ax]:
                v = np.flip(v, ax)
        out[k] = np.ascontiguousarray(v, dtype=np.float32)
    return out


class _SampleStream(torch.utils.data.IterableDataset):
    """Endless batches from a sampler, drawn in a worker process so the CPU overlaps data and model work."""

    def __init__(self, sampler, batch_size: int, seed: int):
        self.sampler, self.batch_size, self.seed = sampler, batch_size, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            samples = [self.sampler.sample(rng) for _ in range(self.batch_size)]
            yield {k: torch.from_numpy(np.stack([s[k] for s in samples]))[:, None] for k in samples[0]}


def batches(sampler, batch_size: int, seed: int, workers: int):
    """Iterator of batches; ``workers`` > 0 samples in background processes."""
    stream = _SampleStream(sampler, batch_size, seed)
    if workers <= 0:
        return iter(stream)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=2,
                                         persistent_workers=True)
    return iter(loader)


# --- loss ------------------------------------------------------------------------
class PairedLoss(nn.Module):
    """``forward(batch, generator) -> (loss, parts)``; one module so DDP can wrap it."""

    def __init__(self, model: USBModel, cfg: TrainConfig):
        super().__init__()
        self.model, self.cfg = model, cfg

    @staticmethod
    def hole(M: torch.Tensor, margins: torch.Tensor | None) -> torch.Tensor:
        """The lesion dilated by a per-sample margin (voxels; None: 2).  Wide margins cover painted
        edges beyond the mask; a zero margin lets thin lesions use their direct neighbours."""
        if margins is None:
            margins = torch.full((M.shape[0],), 2, device=M.device)
        out = torch.empty_like(M)
        for r in margins.unique().tolist():
            sel = margins == r
            out[sel] = F.max_pool3d(M[sel], 2 * r + 1, stride=1, padding=r) if r > 0 else M[sel]
        return out

    def forward(self, batch: dict[str, torch.Tensor], t: torch.Tensor, noise_x, noise_y, modes, margins=None):
        model, sch = self.model, self.model.schedule
        M = batch["mask"]
        x0 = model.encode_mask(M)
        hole = self.hole(M, margins)
        # the brain target: pathological image (paired) or healthy (fill)
        fill = modes == 1
        ctx_on = modes >= 1
        target01 = torch.where(fill[:, None, None, None, None], batch["healthy"], batch["patho"])
        y0 = model.encode_image(target01)
        y_patho = model.encode_image(batch["patho"])
        # lesion chain sees the noisy pathological image
        x_t = sch.add_noise(x0, noise_x, t)
        y_t_patho = sch.add_noise(y_patho, noise_y, t)
        pred = model.cfg.prediction
        out_x = model.lesion_out(x_t, y_t_patho, t)
        valid = batch.get("valid")  # 0 on real lesions of patient brains: no target there
        if valid is None:
            l_lesion = F.mse_loss(out_x, sch.target(x0, noise_x, t, pred))
        else:
            w = _like(valid, out_x)
            err = (out_x - sch.target(x0, noise_x, t, pred)) ** 2 * w
            l_lesion = err.sum() / (w.sum() * out_x.shape[1]).clamp(min=1)
        x0_hat = sch.split(out_x.detach(), x_t, t, pred)[1].clamp(-1, 1)
        # paired samples condition on the one-step lesion estimate (paper); samples with context
        # (embedding with a known mask) on the true mask, as at inference; fill samples on "no lesion"
        given = (modes == 2)[:, None, None, None, None]
        lesion_cond = torch.where(given, x0, x0_hat)
        lesion_cond = torch.where(fill[:, None, None, None, None], model.empty_mask(x0_hat), lesion_cond)
        y_t = sch.add_noise(y0, noise_y, t)
        weight = torch.ones_like(hole)
        if model.cfg.context:
            known = (1 - hole) * ctx_on[:, None, None, None, None].float()
            mirror = batch["mirror"] * ctx_on[:, None, None, None, None].float() if model.cfg.mirror else None
            context = y_patho
            if self.cfg.healthy_context:  # fill samples: the lesion, painted edges included, lies in the hole
                context = torch.where(fill[:, None, None, None, None], y0, y_patho)  # y0: the healthy target
            cond = model.brain_cond(lesion_cond, context, known, mirror)
            weight = torch.where(known > 0, torch.full_like(known, self.cfg.known_weight), weight)
        else:
            cond = model.brain_cond(lesion_cond)
        if valid is not None:
            weight = weight * _like(valid, weight)
        out_y = model.brain_out(y_t, cond, t)
        l_brain = ((out_y - sch.target(y0, noise_y, t, pred)) ** 2 * weight).sum() / weight.sum().clamp(min=1)
        return l_lesion + l_brain, {"lesion": l_lesion.detach(), "brain": l_brain.detach()}


def _like(valid: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """A voxel weight on ``ref``'s grid (latent models: pooled to the latent's size)."""
    if valid.shape[2:] != ref.shape[2:]:
        valid = (F.adaptive_max_pool3d(1 - valid, ref.shape[2:]) < 0.5).to(valid.dtype)
    return valid


# --- loop ------------------------------------------------------------------------
def draw_modes(cfg: TrainConfig, n: int, T: int, gen: torch.Generator, context: bool):
    """One batch's timesteps (antithetic pairs t, T-1-t) and sample modes (0 paired, 1 fill, 2 paired with
    context; context models only), a ``p_tmax`` share of fills at t = T-1; on the CPU, drawn from ``gen``."""
    th = torch.randint(0, T, ((n + 1) // 2,), generator=gen)
    t = torch.cat([th, T - 1 - th])[:n]
    u = torch.rand(n, generator=gen)
    if context:
        modes = torch.where(u < cfg.p_fill, 1, torch.where(torch.rand(n, generator=gen) < cfg.p_context, 2, 0))
    else:
        modes = torch.zeros(n, dtype=torch.long)
    if cfg.p_tmax > 0:  # the one-step fill is the estimate at t = T-1: train it directly
        at_max = (modes == 1) & (torch.rand(n, generator=gen) < cfg.p_tmax)
        t = torch.where(at_max, torch.full_like(t, T - 1), t)
    return t, modes


def optimise(model: USBModel, ema: USBModel, opt, loss: torch.Tensor, decay: float) -> None:
    """One optimiser step on ``loss`` (gradients clipped per net), then the EMA update with ``decay``."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    for net in (model.lesion_net, model.brain_net):  # separately: one net's spikes do not stall the other
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)


def _decay(it: int, cfg: TrainConfig, elapsed: float) -> float:
    """Cosine factor from 1 to 0.1 over the run's budget (iterations, or minutes when that ends first),
    after a 100-iteration warm-up (a fresh optimiser on pretrained weights)."""
    warm = min(1.0, (it + 1) / 100)
    frac = it / max(cfg.iterations, 1)
    if cfg.minutes:
        frac = max(frac, elapsed / (cfg.minutes * 60))
    return warm * (0.1 + 0.45 * (1 + math.cos(math.pi * min(frac, 1.0))))

def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return world, rank


def train(cfg: TrainConfig, *, progress: bool = True, model_cfg: ModelConfig | None = None) -> Path:
    """Train (or resume) a model; writes ``cfg.out/ckpt.pt`` and the EMA weights ``cfg.out/weights/``."""
    import torch.distributed as dist

    world, rank = _dist_info()
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    mcfg = model_cfg or preset(cfg.preset)
    from ..data.contrast import parse_contrasts

    brains = load_brains(cfg.brains, cfg.exclude_brains, parse_contrasts(cfg.contrast))
    bank = load_bank(cfg, brains[0]["image"].shape, brains[0]["affine"])
    sampler = (GridSampler if mcfg.grid is not None else PatchSampler)(brains, bank, cfg, mcfg)
    with torch.random.fork_rng(devices=[]):  # initial weights from cfg.seed, global state untouched
        torch.manual_seed(cfg.seed)
        model = USBModel(mcfg).to(device)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    start = 0
    ckpt_path = out / "ckpt.pt"
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        start = ck["iteration"]
        log.info("resumed from %s at iteration %d", ckpt_path, start)
    elif cfg.init_weights:
        from ..weights import load_model

        init, info = load_model(cfg.init_weights, "generate" if mcfg.grid is not None else "fill")
        init.refiner = None  # the refiner belongs to the weights' fill, not to the run (--stage refiner trains it)
        model.load_state_dict(init.state_dict())
        ema.load_state_dict(init.state_dict())
        log.info("initialised from %s (sha256 %s)", info["file"], info["sha256"])
    loss_mod = PairedLoss(model, cfg)
    runner = loss_mod
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(loss_mod)
    data = batches(sampler, cfg.batch_size, seed=cfg.seed * 7919 + rank * 104729 + start, workers=cfg.workers)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank * 7919 + start)
    T = mcfg.num_train_timesteps
    t0 = time.time()
    logf = open(out / "log.jsonl", "a") if rank == 0 else None
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iterations, initial=start, desc="training", unit="it")
    it = start
    stop = False
    while it < cfg.iterations and not stop:
        batch = {k: v.to(device) for k, v in next(data).items()}
        t, modes = draw_modes(cfg, cfg.batch_size, T, gen, mcfg.context)
        t = t.to(device)
        modes = modes.to(device)
        if cfg.lr_decay:
            for g in opt.param_groups:
                g["lr"] = cfg.lr * _decay(it, cfg, time.time() - t0)
        shape = batch["mask"].shape
        noise_x = torch.randn(shape, generator=gen).to(device)
        noise_y = torch.randn(shape, generator=gen).to(device)
        model.train()
        margins = torch.tensor(cfg.margins, dtype=torch.long)
        if len(margins) > 1:  # a single margin draws nothing: the random stream of older configs is kept
            margins = margins[torch.randint(0, len(margins), (cfg.batch_size,), generator=gen)]
        margins = margins.expand(cfg.batch_size).to(device)
        loss, parts = runner(batch, t, noise_x, noise_y, modes, margins)
        optimise(model, ema, opt, loss, min(cfg.ema, (1 + it) / (10 + it)))
        it += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        elapsed = time.time() - t0
        if cfg.minutes is not None and elapsed > cfg.minutes * 60:
            stop = True
        if rank == 0 and (it % cfg.log_every == 0 or stop or it >= cfg.iterations):
            rec = {"iteration": it, "loss": loss.item(), **{k: v.item() for k, v in parts.items()},
                   "seconds": round(elapsed, 1)}
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
        if rank == 0 and (it % cfg.checkpoint_every == 0 or stop or it >= cfg.iterations):
            _save_checkpoint(ckpt_path, model, ema, opt, it, cfg)
            export(ema, out / "weights", cfg, it)
    if bar is not None:
        bar.close()
    if logf is not None:
        logf.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return out / "weights"


def _save_checkpoint(path: Path, model, ema, opt, it, cfg):
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "iteration": it,
                "train_config": cfg.to_dict()}, tmp)
    tmp.replace(path)


def export(ema: USBModel, folder: Path, cfg: TrainConfig, it: int, role: str | None = None) -> Path:
    """Write the EMA weights in the shipped format, with a training summary in the config."""
    from ..weights import save_model

    summary = {**{k: v for k, v in cfg.to_dict().items() if k not in ("out",)}, "iterations_done": it}
    changes = {"training": summary}
    if ema.cfg.grid is None:  # patch models see inputs of their training patch size at inference
        changes["window"] = cfg.patch
    m = USBModel(ema.cfg.replace(**changes))
    m.load_state_dict(ema.state_dict())
    role = role or ("generate" if ema.cfg.grid is not None else "fill")
    return save_model(folder, {role: m})
