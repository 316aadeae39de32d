"""Noise schedule and a deterministic DDIM step (eta = 0).

We write our own DDIM rather than use MONAI's: MONAI 1.6.1 spaces timesteps with
``linspace(...).round()`` but steps with a fixed stride ``T // n``, which
disagree when ``T`` is not a multiple of ``n`` (e.g. 1024 and 300).  Here each
step goes from one listed timestep to the next one listed, so any count works.
"""

from __future__ import annotations

import torch
from torch import nn


class NoiseSchedule(nn.Module):
    """Linear beta schedule, kept in float64 buffers so ``.to()`` and state dicts carry it."""

    def __init__(self, num_train_timesteps: int = 1024, beta_start: float = 1e-4, beta_end: float = 0.02):
        super().__init__()
        self.num_train_timesteps = int(num_train_timesteps)
        betas = torch.linspace(beta_start, beta_end, self.num_train_timesteps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)

    def abar(self, t: torch.Tensor | int) -> torch.Tensor:
        """abar_t; t = -1 means "clean" (abar = 1), used as the target of the last step."""
        t = torch.as_tensor(t, device=self.alphas_cumprod.device).long()
        one = torch.ones((), dtype=torch.float64, device=self.alphas_cumprod.device)
        return torch.where(t < 0, one, self.alphas_cumprod[t.clamp(min=0)])

    def _bcast(self, a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        a = a.to(dtype=like.dtype, device=like.device)
        return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Forward process: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
        a = self._bcast(self.abar(t), x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """One-step denoising: x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        a = self._bcast(self.abar(t), x_t)
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()

    def split(self, out: torch.Tensor, x_t: torch.Tensor, t, prediction: str = "epsilon"):
        """Network output -> ``(eps_hat, x0_hat)`` for ``prediction`` "epsilon" or "v".

        v = sqrt(abar) eps - sqrt(1 - abar) x0  (Salimans & Ho 2022): x0 = sqrt(abar) x_t - sqrt(1 - abar) v,
        eps = sqrt(1 - abar) x_t + sqrt(abar) v.  Unlike eps, it stays well conditioned at t ~ T.
        """
        if prediction == "epsilon":
            return out, self.predict_x0(x_t, out, t)
        if prediction != "v":
            raise ValueError(f"unknown prediction type {prediction!r}")
        a = self._bcast(self.abar(t), x_t)
        return (1 - a).sqrt() * x_t + a.sqrt() * out, a.sqrt() * x_t - (1 - a).sqrt() * out

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t, prediction: str = "epsilon") -> torch.Tensor:
        """What the network is trained to output."""
        if prediction == "epsilon":
            return noise
        a = self._bcast(self.abar(t), x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def step_from(self, eps: torch.Tensor, x0_hat: torch.Tensor, t_prev: int) -> torch.Tensor:
        """DDIM (eta = 0) to t_prev given the two estimates: sqrt(a_prev) x0 + sqrt(1 - a_prev) eps."""
        a_prev = self._bcast(self.abar(t_prev), x0_hat)
        return a_prev.sqrt() * x0_hat + (1 - a_prev).sqrt() * eps

    def timesteps(self, num_steps: int, t_start: int | None = None) -> list[int]:
        """Strictly decreasing timesteps from ``t_start`` (default T-1) down to 0.

        Evenly spaced and rounded; duplicates (more steps than timesteps) are
        dropped, so the list may be shorter than ``num_steps`` but never
        visits an invalid step.
        """
        T = self.num_train_timesteps
        t_start = T - 1 if t_start is None else int(t_start)
        if not 0 <= t_start < T:
            raise ValueError(f"t_start must lie in [0, {T - 1}], got {t_start}")
        if num_steps < 1:
            raise ValueError("num_steps must be >= 1")
        if num_steps == 1:
            return [t_start]
        ts = torch.linspace(t_start, 0, num_steps, dtype=torch.float64).round().long().tolist()
        out: list[int] = []
        for t in ts:
            if not out or t < out[-1]:
                out.append(int(t))
        return out

    def ddim_step(self, eps: torch.Tensor, t: int, x_t: torch.Tensor, t_prev: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic DDIM from step t to t_prev (t_prev = -1: to the clean image).

        Returns ``(x_prev, x0_hat)``.
        """
        x0_hat = self.predict_x0(x_t, eps, t)  # x0 = (x_t - sqrt(1-a_t) eps) / sqrt(a_t)
        return self.step_from(eps, x0_hat, t_prev), x0_hat  # the samplers call step_from with their own x0_hat


def step_pairs(timesteps: list[int]) -> list[tuple[int, int]]:
    """(t, t_prev) for each step; the last goes to -1 (clean)."""
    return list(zip(timesteps, timesteps[1:] + [-1]))
