"""Consistency guidance weights (usb_prep.diffusion.guidance)."""

from __future__ import annotations

import math

import pytest
import torch

from usb_prep.diffusion.guidance import acg_gamma, acg_weight, blend, lcg_weight, soft_lesion_map

torch.set_num_threads(1)


def test_acg_weight_one_where_equal_zero_where_far():
    y0 = torch.zeros(1, 1, 4, 4, 4)
    y0_hat = torch.zeros_like(y0)
    y0_hat[..., 2:, :, :] = 1.0  # half the volume differs by 1
    w = acg_weight(y0, y0_hat, gamma=20.0)
    assert w.shape == (1, 1, 4, 4, 4)
    assert torch.all(w[..., :2, :, :] == 1.0)
    assert torch.all(w[..., 2:, :, :] < 1e-8)
    assert torch.allclose(w[..., 2:, :, :], torch.full((1, 1, 2, 4, 4), math.exp(-20.0)))


def test_acg_weight_is_exp_minus_gamma_abs_diff_and_channel_mean():
    y0 = torch.zeros(1, 3, 2, 2, 2)
    y0_hat = torch.zeros_like(y0)
    y0_hat[:, 0] = 0.3  # channel mean |diff| = 0.1
    w = acg_weight(y0, y0_hat, gamma=5.0)
    assert w.shape == (1, 1, 2, 2, 2)
    assert torch.allclose(w, torch.full_like(w, math.exp(-0.5)))
    # symmetric in the sign of the difference
    assert torch.allclose(acg_weight(y0, -y0_hat, 5.0), w)


@pytest.mark.parametrize("gamma0,k,n", [(20.0, 0.5, 10), (5.0, 1.0, 342), (1.0, 0.0, 3)])
def test_acg_gamma_schedule(gamma0, k, n):
    for i in range(n):
        assert acg_gamma(i, n, gamma0, k) == pytest.approx(gamma0 * math.exp(-k * i / n))
    assert acg_gamma(0, n, gamma0, k) == pytest.approx(gamma0)
    if k > 0:  # decreasing in the remaining-step index
        assert acg_gamma(n - 1, n, gamma0, k) < acg_gamma(0, n, gamma0, k)


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 1.0])
def test_lcg_weight_exact(lam):
    m = torch.tensor([0.0, 0.1, 0.5, 0.75, 1.0]).reshape(1, 1, 5, 1, 1)
    w = lcg_weight(m, lam)
    assert torch.equal(w, 1.0 - lam * m)
    assert w.flatten()[0].item() == 1.0
    assert w.flatten()[-1].item() == pytest.approx(1.0 - lam)


def test_soft_lesion_map_range_and_support():
    m = torch.zeros(1, 1, 9, 9, 9)
    m[..., 3:6, 3:6, 3:6] = 1
    s = soft_lesion_map(m)
    assert s.shape == m.shape
    assert s.min().item() >= 0.0 and s.max().item() <= 1.0
    assert s[0, 0, 4, 4, 4].item() == pytest.approx(1.0)  # deep inside
    assert 0 < s[0, 0, 2, 4, 4].item() < 1  # soft edge just outside
    assert s[0, 0, 0, 0, 0].item() == 0.0  # far away
    # a full mask stays 1 at the borders (no zero padding counted)
    full = soft_lesion_map(torch.ones(1, 1, 4, 4, 4))
    assert torch.allclose(full, torch.ones_like(full))


def test_blend():
    a, b = torch.zeros(3), torch.ones(3)
    w = torch.tensor([0.0, 0.5, 1.0])
    assert torch.equal(blend(a, b, w), w)
