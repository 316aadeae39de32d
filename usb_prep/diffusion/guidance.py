"""Consistency guidance weights (USB paper section 3.3; usb-method.md section 5)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def acg_gamma(step_index: int, num_steps: int, gamma0: float = 20.0, k: float = 0.5) -> float:
    """gamma_t = gamma0 * exp(-k * i / N), with i the remaining-step index (N-1 .. 0).

    As in the authors' code, N is the number of sampling steps, so gamma grows
    from ``gamma0 * exp(-k)`` at the first step to ``gamma0`` at the last.
    """
    return gamma0 * math.exp(-k * step_index / max(num_steps, 1))


def acg_weight(y0: torch.Tensor, y0_hat: torch.Tensor, gamma: float) -> torch.Tensor:
    """Anatomy Consistency Guidance: w = exp(-gamma |y0 - y0_hat|).

    Near 1 where the estimate agrees with the original (keep it), near 0
    where it differs a lot (the lesion: free to edit).  Channels are averaged
    so latent channels share one weight.
    """
    return torch.exp(-gamma * (y0 - y0_hat).abs().mean(dim=1, keepdim=True))


def lcg_weight(soft_mask: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Lesion Consistency Guidance: w = 1 - lambda * m, with m a soft lesion map in [0, 1]."""
    return 1.0 - lam * soft_mask


def soft_lesion_map(mask01: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """The paper's soft map: the binary mask average-pooled (same size)."""
    return F.avg_pool3d(mask01.float(), kernel, stride=1, padding=kernel // 2, count_include_pad=False).clamp(0, 1)


def blend(current: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """current + w (target - current)."""
    return current + w * (target - current)
