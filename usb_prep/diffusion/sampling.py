"""The four USB tasks and known-mask filling, in model space.

Each task is a progressive generator yielding a :class:`Step` after every
reverse step (for progress bars and inspection); the plain function of the
same name without ``_progressive`` drains it and returns the result.  All
randomness comes from the ``generator`` argument (a CPU ``torch.Generator``),
so the same seed gives the same output on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from .guidance import acg_gamma, acg_weight, blend, lcg_weight
from .model import USBModel
from .schedule import step_pairs


@dataclass
class Step:
    index: int  # 0-based step counter
    total: int
    t: int
    y: torch.Tensor | None = None  # brain chain state
    y0_hat: torch.Tensor | None = None
    x: torch.Tensor | None = None  # lesion chain state
    x0_hat: torch.Tensor | None = None
    y0_pred: torch.Tensor | None = None  # the network's own y0 estimate, before any guidance


def randn(shape, generator: torch.Generator | None, like: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """Gaussian noise drawn on the CPU (device-independent draws), then moved."""
    dev = like.device if like is not None else (device or "cpu")
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(dev)


def _drain(gen: Iterator[Step]) -> Step:
    last = None
    for last in gen:
        pass
    if last is None:
        raise RuntimeError("sampling produced no step")
    return last


def _as_cond(model: USBModel, x0_hat: torch.Tensor) -> torch.Tensor:
    # pixel masks live in [-1, 1]; keep the condition in the range seen in training
    return x0_hat.clamp(-1, 1) if model.autoencoder is None else x0_hat


# --- (a) unconditional paired generation --------------------------------------
@torch.no_grad()
def generate_pair_progressive(model: USBModel, shape, *, steps: int, generator=None, device="cpu") -> Iterator[Step]:
    """Lesion chain sees the noisy brain; brain chain sees the one-step lesion estimate."""
    sch = model.schedule
    x = randn((1, model.cfg.lesion_net.in_channels, *shape), generator, device=device)
    y = randn((1, model.cfg.brain_net.in_channels, *shape), generator, device=device)
    pairs = step_pairs(sch.timesteps(steps))
    for i, (t, tp) in enumerate(pairs):
        tt = torch.full((1,), t, device=x.device)
        eps_x, x0_hat = model.predict_lesion(x, y, tt)
        eps_y, y0_hat = model.predict_brain(y, model.brain_cond(_as_cond(model, x0_hat)), tt)
        x, y = sch.step_from(eps_x, x0_hat, tp), sch.step_from(eps_y, y0_hat, tp)
        yield Step(i, len(pairs), t, y=y, y0_hat=y0_hat, x=x, x0_hat=x0_hat)


def generate_pair(model, shape, *, steps, generator=None, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(lesion, brain)`` in model space."""
    s = _drain(generate_pair_progressive(model, shape, steps=steps, generator=generator, device=device))
    return s.x, s.y


# --- (b) conditional generation from a mask --------------------------------------
@torch.no_grad()
def generate_from_mask_progressive(model: USBModel, lesion_code: torch.Tensor, *, steps: int,
                                   generator=None) -> Iterator[Step]:
    """Only the brain chain, conditioned on the given (encoded) mask."""
    sch = model.schedule
    y = randn((1, model.cfg.brain_net.in_channels, *lesion_code.shape[2:]), generator, like=lesion_code)
    cond = model.brain_cond(lesion_code)
    pairs = step_pairs(sch.timesteps(steps))
    for i, (t, tp) in enumerate(pairs):
        tt = torch.full((1,), t, device=y.device)
        eps, y0_hat = model.predict_brain(y, cond, tt)
        y = sch.step_from(eps, y0_hat, tp)
        yield Step(i, len(pairs), t, y=y, y0_hat=y0_hat)


def generate_from_mask(model, lesion_code, *, steps, generator=None) -> torch.Tensor:
    return _drain(generate_from_mask_progressive(model, lesion_code, steps=steps, generator=generator)).y


# --- (c, d) editing with consistency guidance ------------------------------------
@torch.no_grad()
def edit_progressive(
    model: USBModel,
    y0: torch.Tensor,
    lesion_code: torch.Tensor,
    *,
    steps: int,
    t_start: int,
    generator=None,
    acg: bool = True,
    gamma0: float = 20.0,
    k: float = 0.5,
    acg_where: torch.Tensor | None = None,
    lcg_map: torch.Tensor | None = None,
    lam: float = 1.0,
    known: torch.Tensor | None = None,
    mirror: torch.Tensor | None = None,
    target: str = "noised",
) -> Iterator[Step]:
    """Edit ``y0`` (model space) towards the condition ``lesion_code``.

    - ACG: blend towards the original with ``w = exp(-gamma_t |y0 - y0_hat|)``
      (only where ``acg_where`` is 1, if given; elsewhere w = 0: free).
    - LCG: ``w *= 1 - lam * lcg_map`` (healthy-to-pathology).
    - ``known`` (1 = keep): RePaint-style merge, w = 1 there, and the known
      image is also given to the network as context when the model has
      context channels.
    - ``target``: "noised" blends towards the original noised to step t-1
      with the model's own noise estimate (the paper's reading); "clean"
      towards the clean original (the authors' code).  The known region
      always uses "noised", so the network never sees clean and noisy
      voxels side by side.
    """
    if target not in ("noised", "clean"):
        raise ValueError("target must be 'noised' or 'clean'")
    sch = model.schedule
    noise = randn(y0.shape, generator, like=y0)
    y = sch.add_noise(y0, noise, t_start)
    cond = model.brain_cond(lesion_code, y0, known, mirror)
    hole = None if known is None else 1 - known  # where windowed models must predict
    pairs = step_pairs(sch.timesteps(steps, t_start))
    n = len(pairs)
    for i, (t, tp) in enumerate(pairs):
        tt = torch.full((1,), t, device=y.device)
        eps, y0_hat = model.predict_brain(y, cond, tt, where=hole)
        y0_pred = y0_hat
        y_prev = sch.step_from(eps, y0_hat, tp)
        if acg:
            w = acg_weight(y0, y0_hat, acg_gamma(n - 1 - i, n, gamma0, k))
            if acg_where is not None:
                w = w * acg_where
        else:
            w = torch.zeros_like(y0_hat[:, :1])
        if lcg_map is not None:
            w = w * lcg_weight(lcg_map, lam)
        noised_target = sch.add_noise(y0, eps, tp)  # sqrt(a_prev) y0 + sqrt(1 - a_prev) eps_hat
        y_new = blend(y_prev, noised_target if target == "noised" else y0, w)
        y0_hat = blend(y0_hat, y0, w)
        if known is not None:
            y_new = torch.where(known.bool(), noised_target, y_new)
            y0_hat = torch.where(known.bool(), y0, y0_hat)
        y = y_new
        yield Step(i, n, t, y=y, y0_hat=y0_hat, y0_pred=y0_pred)


def edit(model, y0, lesion_code, **kw) -> torch.Tensor:
    return _drain(edit_progressive(model, y0, lesion_code, **kw)).y


def dilate(mask01: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation by a (2r+1)^3 cube."""
    if radius <= 0:
        return mask01.float()
    return F.max_pool3d(mask01.float(), 2 * radius + 1, stride=1, padding=radius)


def fill_progressive(
    model: USBModel,
    y0: torch.Tensor,
    mask01: torch.Tensor,
    *,
    steps: int,
    t_start: int | None = None,
    generator=None,
    margin: int = 2,
    acg_region: str = "ring",
    gamma0: float = 20.0,
    k: float = 0.5,
    target: str = "noised",
    mirror: torch.Tensor | None = None,
) -> Iterator[Step]:
    """Known-mask filling (pathology-to-healthy with the lesion given); model space.

    ``mask01`` (1 = lesion) on the model grid.  Voxels outside the mask
    dilated by ``margin`` are kept (RePaint merge, and context for the
    network); ACG acts on ``acg_region``: "ring" (the margin around the
    lesion, so the fill blends into its border), "all" (ring and lesion), or
    "none".  The caller pastes the result back inside the mask only.
    """
    region = dilate(mask01, margin)
    known = 1.0 - region
    acg_where = {"ring": region - mask01.float(), "all": region, "none": None}[acg_region]
    return edit_progressive(
        model, y0, model.empty_mask(y0), steps=steps,
        t_start=model.cfg.num_train_timesteps - 1 if t_start is None else t_start,
        generator=generator, acg=acg_region != "none", gamma0=gamma0, k=k, acg_where=acg_where,
        known=known, mirror=mirror, target=target,
    )


def fill(model, y0, mask01, **kw) -> torch.Tensor:
    return _drain(fill_progressive(model, y0, mask01, **kw)).y


@torch.no_grad()
def detect_lesion_progressive(model: USBModel, y0: torch.Tensor, *, steps: int, t_start: int,
                              generator=None) -> Iterator[Step]:
    """Lesion chain run against the (noised) image: USB_lesion's estimate of the image's own mask.

    Used for mask-free healing with the CPU model: detect, then fill.
    """
    sch = model.schedule
    x = randn((1, model.cfg.lesion_net.in_channels, *y0.shape[2:]), generator, like=y0)
    noise_y = randn(y0.shape, generator, like=y0)
    pairs = step_pairs(sch.timesteps(steps, t_start))
    for i, (t, tp) in enumerate(pairs):
        tt = torch.full((1,), t, device=y0.device)
        y_t = sch.add_noise(y0, noise_y, t)
        eps, x0_hat = model.predict_lesion(x, y_t, tt)
        x = sch.step_from(eps, x0_hat, tp)
        yield Step(i, len(pairs), t, x=x, x0_hat=x0_hat)


def detect_lesion(model, y0, **kw) -> torch.Tensor:
    return _drain(detect_lesion_progressive(model, y0, **kw)).x
