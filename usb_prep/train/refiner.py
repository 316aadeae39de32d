"""Training the fill's refiner (:mod:`usb_prep.fill.refiner`): synthetic cases, then the residual CNN.

A *case* is a training mask (deformed and placed as the fill model's training places them) painted
as a T1w lesion on a healthy training brain, confined to the mask, and the three parts of the default
fill computed on it by the fill model being refined: the model's own fill, the classical patch fill
and the model-guided nlm fill (one pass, as the default blend runs them). Cases are crops (the
lesions' box with :data:`usb_prep.fill.refiner.CONTEXT` known voxels) saved as ``OUT/cases/NNNN.npz``; the
refiner trains on random :data:`usb_prep.fill.refiner.PATCH`^3 windows of them (flips, axis permutations),
reading new cases as they appear, so generation and training can run side by side.
Case ``i`` is drawn from seed ``10000 + i`` alone: any process or shard makes the same case.

``usb-train --config benchmarks/configs/train_refiner.json`` runs both (``RefinerConfig.workers`` generating
processes, training in the main one).
"""
from __future__ import annotations

import glob
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .. import crops
from ..fill.refiner import CONTEXT, PATCH, Refiner, pad_to_window, refiner_inputs

log = logging.getLogger(__name__)

LOSSES = ("window_log", "case_relative")


@dataclass
class RefinerConfig:
    brains: str = ""  # prepared brains (as TrainConfig.brains)
    masks: str = ""  # lesion mask root (soop/, ms/, neglect/); the "train" split is used
    out: str = "runs/refiner"
    fill_weights: str | None = None  # the fill model whose parts the refiner corrects (None: packaged)
    cases: int = 400  # case indices 0 .. cases-1
    gen_minutes: float = 60.0  # generating processes stop after this
    minutes: float = 45.0  # training budget
    iterations: int | None = None  # ... or this many iterations, whichever ends first
    start_after: float = 20.0  # minutes of generation before training starts (0 with cases already made)
    workers: int = 2  # generating processes (0: no generation, train on OUT/cases as it is)
    batch_size: int = 4
    lr: float = 3e-4
    loss: str = "window_log"  # "window_log": mean log in-mask MSE of each window (the shipped refiner's);
    # "case_relative": each window's in-mask MSE over its case's MSE before refining, so a window weighs what it
    # adds to its case's PSNR (window_log lets the many low-error rim windows of a large lesion outweigh its core)
    ema: float = 0.995
    seed: int = 0
    threads: int = 1
    min_ml: float = 0.5
    max_ml: float = 120.0
    min_voxels: int = 300  # placed masks smaller than this (inside the brain) are skipped
    ms_every: int = 5  # every ms_every-th case (i % ms_every == ms_every - 1) draws an MS mask (0: never);
    # the bank is ~97% stroke, users' and the benchmark's lesions are not
    large_every: int = 0  # every large_every-th case (i % large_every == 0, unless it is an MS case) draws a mask of
    # at least large_ml (0: never): the bank holds few masks that large, users' tumours and big strokes are
    large_ml: float = 120.0
    max_masks: int | None = None  # use only this many masks (tests)
    contrast: str = "T1w"  # T1w, T2w, FLAIR or several (one drawn per case): other than T1w, the brain is mapped
    # to that contrast (real scans of it used as they are for p_native of its cases), the lesion painted bright and
    # the parts made by the fill weights' model for that contrast, under its blend
    p_native: float = 0.3
    exclude_brains: tuple[str, ...] = ("otsu_head", "brats_gli_00001")
    channels: tuple[int, ...] = (16, 32, 48)
    init: str | None = None  # start from this refiner: "packaged" or a state dict (OUT/refine.pt); None: from scratch
    log_every: int = 50
    reload_every: int = 300  # iterations between looks for new cases

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"refiner loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")

    def to_dict(self):
        return asdict(self)


def paint_t1w(image, brain, mask, rng, contrast: str = "T1w") -> np.ndarray:
    """A lesion (T1w unless ``contrast`` says otherwise) painted by :func:`usb_prep.data.synthesis.paint_lesion`,
    confined to ``mask`` (the mask covers the whole lesion, as a user's mask should)."""
    from ..data.synthesis import paint_lesion

    out = paint_lesion(image, brain, mask, rng, contrast=contrast)
    out = out[0] if isinstance(out, tuple) else out
    return np.where(mask, out, image).astype(np.float32)


def fill_parts(model, image, mask, affine):
    """The three parts the refiner reads (whole images): the model's own fill, the classical patch fill and
    the nlm fill guided by the model's (one pass, no coarse guide), under the model's fill settings."""
    from .. import api

    parts = api.fill_parts(image, mask, model=model, device="cpu", affine=affine, stages=("model", "patch", "nlm"),
                           nlm_passes=1, nlm_coarse=False)
    return parts.model, parts.patch, parts.nlm


def _banks(cfg: RefinerConfig, ref):
    """The training masks (all cohorts) and those of the ``ms`` cohort; :func:`large_bank` picks the large ones."""
    from ..data.splits import list_masks
    from ..data.synthesis import load_mask_bank

    paths = list_masks(Path(cfg.masks), "train")
    if cfg.max_masks:
        paths = paths[: cfg.max_masks]
    grid = (ref["image"].shape, ref["affine"])
    bank = load_mask_bank(paths, grid, min_ml=cfg.min_ml, max_ml=cfg.max_ml)
    ms = [p for p in paths if p.parent.name == "ms"]
    return bank, (load_mask_bank(ms, grid, min_ml=cfg.min_ml, max_ml=cfg.max_ml) if ms else [])


def large_bank(bank, min_ml: float) -> list[dict]:
    """The masks of ``bank`` of at least ``min_ml``."""
    return [e for e in bank if e["ml"] >= min_ml]


def make_case(i: int, brains, bank, model, min_voxels: int = 300, ms_bank=(), ms_every: int = 0,
              contrasts=("t1w",), p_native: float = 0.3, big_bank=(), large_every: int = 0) -> dict | None:
    """Case ``i`` (its arrays cropped to the lesions' box with CONTEXT), or None when its mask is too small.
    Its mask comes from ``ms_bank`` when ``i % ms_every == ms_every - 1`` (and ``ms_bank`` is not empty), else
    from ``big_bank`` when ``i % large_every == 0`` (and ``big_bank`` is not empty).
    ``model``: the fill model, or ``{contrast: model}`` with ``contrasts`` (one drawn per case; T1w brains mapped
    to it, real scans of it, as :func:`usb_prep.train.diffusion.load_brains` reads them, for ``p_native`` of its
    cases). The case records its contrast and the blend weights (patch, nlm) of its model's settings. A patient
    brain's own lesions (``lesion``, dilated by 2 voxels as the model's training keeps them) are left out of the
    mask: their truth is a lesion, not tissue."""
    from .diffusion import place_bank_mask

    rng = np.random.default_rng(10_000 + i)
    c = contrasts[rng.integers(len(contrasts))] if len(contrasts) > 1 else contrasts[0]
    native = [b for b in brains if b.get("contrast") == c != "t1w"]
    if native and rng.random() < p_native:
        b = native[rng.integers(len(native))]
    else:
        t1w = [b for b in brains if b.get("contrast", "t1w") == "t1w"]
        b = t1w[rng.integers(len(t1w))]
    truth, brain, aff = b["image"], b["brain"], b["affine"]
    if c != b.get("contrast", "t1w"):
        from ..data.contrast import random_map

        vals = truth[brain & (truth > 0)]
        truth = random_map(c, rng, rng.choice(vals, min(20000, vals.size), replace=False))(truth)
    model = model[c] if isinstance(model, dict) else model
    pool = bank
    if ms_every and i % ms_every == ms_every - 1 and len(ms_bank):
        pool = ms_bank
    elif large_every and i % large_every == 0 and len(big_bank):
        pool = big_bank
    mm, box, e = place_bank_mask(pool, rng)  # as the fill model's training places them
    m = np.zeros(truth.shape, bool)
    crops.paste(m, box, mm, np.ones(truth.shape, bool))
    m &= brain
    if b.get("lesion") is not None:  # a patient's own lesions (and a shell) are no healthy truth: never a target
        from scipy import ndimage

        m &= ~ndimage.binary_dilation(b["lesion"], iterations=2)
    if m.sum() < min_voxels:
        return None
    img = paint_t1w(truth, brain, m, rng, contrast=c)
    u, pf, nf = fill_parts(model, img, m, aff)
    sl = crops.bbox(m, CONTEXT)  # the lesions' box with CONTEXT known voxels, as refine_fill crops
    s = model.fill_settings
    return dict(truth=truth[sl], img=img[sl], mask=m[sl], u=u[sl], pf=pf[sl], nf=nf[sl],
                brain_name=b["name"], mask_name=e["name"], contrast=c,
                blend=np.array([s.patch_weight, s.nlm_weight], np.float32))


def generate(cfg: RefinerConfig, shard: tuple[int, int] = (0, 1), minutes: float | None = None) -> int:
    """Write the cases ``k, k + n, ...`` (shard ``(k, n)``) missing from ``OUT/cases``; returns how many."""
    from ..data.contrast import parse_contrasts
    from ..weights import fill_role, load_model
    from .diffusion import load_brains

    torch.set_num_threads(1)
    out = Path(cfg.out) / "cases"
    out.mkdir(parents=True, exist_ok=True)
    contrasts = parse_contrasts(cfg.contrast)
    brains = load_brains(cfg.brains, exclude=tuple(cfg.exclude_brains), contrasts=contrasts)
    bank, ms_bank = _banks(cfg, brains[0])
    big = large_bank(bank, cfg.large_ml) if cfg.large_every else []
    if cfg.large_every and not big:
        raise ValueError(f"large_every: no training mask of {cfg.large_ml} ml or more within max_ml {cfg.max_ml}")
    models = {c: load_model(cfg.fill_weights, fill_role(c), "cpu")[0] for c in contrasts}
    t_end = time.time() + 60 * (cfg.gen_minutes if minutes is None else minutes)
    k, n = shard
    made = 0
    for i in range(k, cfg.cases, n):
        if time.time() > t_end:
            break
        f = out / f"{i:04d}.npz"
        if f.exists():
            continue
        t0 = time.time()
        case = make_case(i, brains, bank, models, cfg.min_voxels, ms_bank, cfg.ms_every, contrasts, cfg.p_native,
                         big, cfg.large_every)
        if case is None:
            continue
        tmp = f.with_name(f.stem + ".tmp.npz")
        np.savez_compressed(tmp, **case)
        os.replace(tmp, f)
        made += 1
        log.info("case %d: %s (%s) x %s, %.1f ml, %.0f s", i, case["brain_name"], case["contrast"],
                 case["mask_name"], case["mask"].sum() / 1000, time.time() - t0)
    return made


def load_cases(files) -> list[tuple[np.ndarray, ...]]:
    """(inputs, base blend, truth, mask) of each case file, padded to the training window."""
    cases = []
    for f in files:
        with np.load(f) as z:
            m = z["mask"]
            wp, wn = z["blend"] if "blend" in z else (0.2, 0.8)  # cases before the blend was recorded: the T1w's
            blend = wp * z["pf"] + wn * z["nf"]
            if round(1 - wp - wn, 6) > 0:  # the model's own share
                blend = blend + (1 - wp - wn) * z["u"]
            x, base = refiner_inputs(z["img"], m, z["u"], z["pf"], z["nf"], blend)
            cases.append(tuple(pad_to_window(a) for a in (x, base, z["truth"].astype(np.float32), m)))
    return cases


def base_mse(case) -> float:
    """A loaded case's in-mask MSE of the base blend (what the refiner starts from)."""
    _, base, t, m = case
    return float(np.mean((base[m] - t[m]) ** 2))


def sample_window(case, rng) -> list[np.ndarray]:
    """One training window of a loaded case around a random lesion voxel, randomly flipped and permuted."""
    x, base, t, m = case
    idx = np.argwhere(m)
    lo = np.clip(idx[rng.integers(len(idx))] - PATCH // 2 + rng.integers(-8, 9, 3), 0, np.array(m.shape) - PATCH)
    sl = tuple(slice(a, a + PATCH) for a in lo)
    arrs = [x[(slice(None),) + sl], base[sl][None], t[sl][None], m[sl][None].astype(np.float32)]
    for ax in range(3):
        if rng.random() < 0.5:
            arrs = [np.flip(a, ax + 1) for a in arrs]
    perm = rng.permutation(3) + 1
    return [np.ascontiguousarray(a.transpose(0, *perm)) for a in arrs]


def _case_files(cfg):
    return sorted(f for f in glob.glob(str(Path(cfg.out) / "cases" / "*.npz")) if not f.endswith(".tmp.npz"))


def train_refiner(cfg: RefinerConfig, *, progress: bool = True) -> Path:
    """Train a refiner on ``OUT/cases`` (re-read every ``reload_every`` iterations) for ``cfg.minutes`` or
    ``cfg.iterations``; the EMA weights go to ``OUT/refine.pt`` at every log and at the end."""
    from tqdm.auto import tqdm

    torch.set_num_threads(cfg.threads)
    files = _case_files(cfg)
    if not files:
        raise FileNotFoundError(f"no refiner cases in {Path(cfg.out) / 'cases'}")
    cases = load_cases(files)
    ref = [base_mse(c) for c in cases]  # case_relative's denominators
    torch.manual_seed(cfg.seed)
    net, ema = Refiner(cfg.channels), Refiner(cfg.channels)
    if cfg.init:  # fine-tune, e.g. after the fill's parts changed a little
        from ..weights import load_refiner_state

        net.load_state_dict(load_refiner_state(cfg.init).state_dict())
    ema.load_state_dict(net.state_dict())
    opt = torch.optim.AdamW(net.parameters(), cfg.lr, weight_decay=1e-4)
    rng, t0, it, gains = np.random.default_rng(cfg.seed), time.time(), 0, []
    path = Path(cfg.out) / "refine.pt"
    bar = tqdm(desc="refiner", unit="it", disable=not progress)
    while time.time() - t0 < cfg.minutes * 60 and it < (cfg.iterations or float("inf")):
        ks, batch = [], []
        for _ in range(cfg.batch_size):
            ks.append(int(rng.integers(len(cases))))
            batch.append(sample_window(cases[ks[-1]], rng))
        x, base, t, m = (torch.from_numpy(np.stack([b[j] for b in batch])) for j in range(4))
        n = m.sum((1, 2, 3, 4)).clamp(min=1)
        mse = ((base + m * net(x) - t) ** 2 * m).sum((1, 2, 3, 4)) / n
        mse0 = ((base - t) ** 2 * m).sum((1, 2, 3, 4)) / n
        if cfg.loss == "case_relative":  # ~ the change of log(case MSE): the mean in-mask PSNR over cases
            loss = (mse / torch.tensor([ref[k] + 1e-5 for k in ks])).mean()
        else:  # mean log MSE of the windows
            loss = torch.log(mse + 1e-5).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        it += 1
        bar.update()
        with torch.no_grad():
            for p, q in zip(ema.parameters(), net.parameters()):
                p.mul_(cfg.ema).add_(q, alpha=1 - cfg.ema)
        gains.append(float((torch.log(mse0 + 1e-5) - torch.log(mse.detach() + 1e-5)).mean()) * 10 / np.log(10))
        if it % cfg.reload_every == 0:  # cases still being generated
            new = sorted(set(_case_files(cfg)) - set(files))
            files += new
            cases += load_cases(new)
            ref += [base_mse(c) for c in cases[len(ref):]]
        if it % cfg.log_every == 0:
            log.info("it %d, %.0f s, %d cases, training gain %.3f dB", it, time.time() - t0, len(cases),
                     np.mean(gains[-cfg.log_every:]))
            torch.save(ema.state_dict(), path)
    bar.close()
    torch.save(ema.state_dict(), path)
    return path


def _gen_worker(cfg, k, n):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    generate(cfg, (k, n))


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def run(cfg: RefinerConfig, *, progress: bool = True) -> Path:
    """Generate cases in ``cfg.workers`` processes and train beside them after ``start_after`` minutes.
    When training ends, is stopped (Ctrl-C, SIGTERM) or fails, it stops the generating processes too: left running,
    they would hold the cores and keep writing cases (and a SIGTERM while waiting for them left both waiting)."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_gen_worker, args=(cfg, k, cfg.workers)) for k in range(cfg.workers)]
    for p in procs:
        p.start()
    main = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread only
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main else None
    try:
        t_start = time.time() + 60 * cfg.start_after
        while time.time() < t_start and any(p.is_alive() for p in procs):
            time.sleep(1)
        while not _case_files(cfg) and any(p.is_alive() for p in procs):
            time.sleep(1)
        if any(p.exitcode not in (0, None) for p in procs):
            raise RuntimeError("a case-generating process failed; see its log above")
        return train_refiner(cfg, progress=progress)
    finally:  # training over (done, stopped or failed): generating on would only hold the cores; the cases
        # written so far stay, and the same command makes the missing ones
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
