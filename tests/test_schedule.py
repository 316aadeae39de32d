"""Noise schedule and DDIM stepping (usb_prep.diffusion.schedule)."""

from __future__ import annotations

import pytest
import torch

from usb_prep.diffusion.schedule import NoiseSchedule, step_pairs

torch.set_num_threads(1)


def test_linear_betas_and_float64_buffers():
    s = NoiseSchedule(1024, 1e-4, 0.02)
    assert s.betas.shape == (1024,)
    assert s.betas.dtype == torch.float64 and s.alphas_cumprod.dtype == torch.float64
    assert s.betas[0].item() == pytest.approx(1e-4, abs=1e-12)
    assert s.betas[-1].item() == pytest.approx(0.02, abs=1e-12)
    diffs = s.betas[1:] - s.betas[:-1]
    assert torch.allclose(diffs, torch.full_like(diffs, (0.02 - 1e-4) / 1023), atol=1e-12)
    expected = torch.cumprod(1 - s.betas, 0)
    assert torch.equal(s.alphas_cumprod, expected)
    # buffers follow .to() but are not saved in a state dict (rebuilt from the config)
    names = {n for n, _ in s.named_buffers()}
    assert {"betas", "alphas_cumprod"} <= names
    assert "betas" not in s.state_dict() and "alphas_cumprod" not in s.state_dict()
    s2 = s.to(torch.device("meta"))
    assert s2.betas.device.type == "meta" and s2.betas.dtype == torch.float64


@pytest.mark.parametrize("n", [1, 2, 20, 50, 300, 342, 1024])
@pytest.mark.parametrize("t_start", [None, 300, 1023])
def test_ddim_timesteps(n, t_start):
    s = NoiseSchedule(1024)
    ts = s.timesteps(n, t_start)
    first = 1023 if t_start is None else t_start
    assert ts[0] == first
    assert all(isinstance(t, int) for t in ts)
    assert all(0 <= t <= 1023 for t in ts)
    assert all(a > b for a, b in zip(ts, ts[1:])), "timesteps must strictly decrease"
    if n == 1:
        assert ts == [first]
        return
    assert ts[-1] == 0
    # n steps exactly while there are enough distinct timesteps; never more
    if n <= first + 1:
        assert len(ts) == n
    else:
        assert len(ts) == first + 1


def test_timesteps_rejects_bad_arguments():
    s = NoiseSchedule(1024)
    with pytest.raises(ValueError):
        s.timesteps(0)
    with pytest.raises(ValueError):
        s.timesteps(10, 1024)
    with pytest.raises(ValueError):
        s.timesteps(10, -1)


def test_step_pairs_end_at_clean():
    assert step_pairs([9, 5, 0]) == [(9, 5), (5, 0), (0, -1)]


@pytest.mark.parametrize("t,t_prev", [(1023, 700), (500, 0), (300, 150), (10, 9)])
def test_ddim_step_with_true_noise_recovers_x0(t, t_prev):
    s = NoiseSchedule(1024)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 1, 4, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = s.add_noise(x0, eps, t)
    x_prev, x0_hat = s.ddim_step(eps, t, x_t, t_prev)
    assert torch.allclose(x0_hat, x0, atol=1e-9)
    # deterministic DDIM with the true noise lands exactly on the forward process at t_prev
    assert torch.allclose(x_prev, s.add_noise(x0, eps, t_prev), atol=1e-9)
    # to the clean image
    x_clean, x0_hat2 = s.ddim_step(eps, t, x_t, -1)
    assert torch.allclose(x_clean, x0_hat2, atol=0)
    assert torch.allclose(x_clean, x0, atol=1e-9)


def test_add_noise_per_sample_timesteps():
    s = NoiseSchedule(1024)
    x0 = torch.ones(2, 1, 2, 2, 2)
    eps = torch.zeros_like(x0)
    t = torch.tensor([0, 1023])
    x_t = s.add_noise(x0, eps, t)
    assert x_t.dtype == torch.float32
    a = s.alphas_cumprod
    assert x_t[0].flatten()[0].item() == pytest.approx(a[0].sqrt().item(), rel=1e-6)
    assert x_t[1].flatten()[0].item() == pytest.approx(a[1023].sqrt().item(), rel=1e-5)
    assert s.abar(-1).item() == 1.0


def test_full_chain_with_true_noise_is_exact():
    """Every step of a 50-step DDIM chain with the true noise keeps x0 fixed."""
    s = NoiseSchedule(1024)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(1, 1, 3, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    ts = s.timesteps(50)
    x = s.add_noise(x0, eps, ts[0])
    for t, tp in step_pairs(ts):
        x, x0_hat = s.ddim_step(eps, t, x, tp)
        assert torch.allclose(x0_hat, x0, atol=1e-8)
    assert torch.allclose(x, x0, atol=1e-8)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("t", [0, 500, 1023])
def test_split_inverts_target(prediction, t):
    """The training target, split back, gives the true noise and x0 (both parameterisations)."""
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 1, 4, 4, 4, generator=g), torch.randn(2, 1, 4, 4, 4, generator=g)
    x_t = s.add_noise(x0, noise, t)
    eps, x0_hat = s.split(s.target(x0, noise, t, prediction), x_t, t, prediction)
    tol = 1e-3 if (prediction == "epsilon" and t == 1023) else 1e-5  # eps amplifies by 1/sqrt(abar_T)
    torch.testing.assert_close(eps, noise, atol=tol, rtol=0)
    torch.testing.assert_close(x0_hat, x0, atol=tol, rtol=0)
    torch.testing.assert_close(s.step_from(eps, x0_hat, -1), x0_hat)


def test_split_rejects_unknown_prediction():
    s = NoiseSchedule()
    with pytest.raises(ValueError):
        s.split(torch.zeros(1), torch.zeros(1), 3, "sample")
