"""The four USB tasks and known-mask filling in model space, with a tiny random model."""

from __future__ import annotations

import pytest
import torch

from usb_prep.diffusion import sampling
from usb_prep.config import preset
from usb_prep.diffusion.guidance import soft_lesion_map
from usb_prep.diffusion.model import USBModel

torch.set_num_threads(1)

SHAPE = (16, 16, 16)
STEPS = 3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return USBModel(preset("tiny")).eval()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def case():
    g = torch.Generator().manual_seed(5)
    img01 = torch.rand(1, 1, *SHAPE, generator=g) * 0.2 + 0.6
    mask = torch.zeros(1, 1, *SHAPE)
    mask[..., 6:10, 6:10, 6:10] = 1
    return img01, mask


def _finite(t, shape):
    assert tuple(t.shape) == tuple(shape)
    assert torch.isfinite(t).all()


def test_generate_pair(model):
    x, y = sampling.generate_pair(model, SHAPE, steps=STEPS, generator=gen(0))
    _finite(x, (1, 1, *SHAPE))
    _finite(y, (1, 1, *SHAPE))
    x2, y2 = sampling.generate_pair(model, SHAPE, steps=STEPS, generator=gen(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, y3 = sampling.generate_pair(model, SHAPE, steps=STEPS, generator=gen(1))
    assert not torch.equal(y, y3) and not torch.equal(x, x3)


def test_generate_pair_progressive_yields_every_step(model):
    steps = list(sampling.generate_pair_progressive(model, SHAPE, steps=4, generator=gen(0)))
    assert [s.index for s in steps] == [0, 1, 2, 3]
    assert all(s.total == 4 for s in steps)
    assert steps[0].t == 1023 and steps[-1].t == 0


def test_generate_from_mask(model, case):
    _, mask = case
    code = model.encode_mask(mask)
    y = sampling.generate_from_mask(model, code, steps=STEPS, generator=gen(0))
    _finite(y, (1, 1, *SHAPE))
    assert torch.equal(y, sampling.generate_from_mask(model, code, steps=STEPS, generator=gen(0)))
    assert not torch.equal(y, sampling.generate_from_mask(model, code, steps=STEPS, generator=gen(2)))


def test_edit_pathology_to_healthy_acg(model, case):
    img01, _ = case
    y0 = model.encode_image(img01)
    kw = dict(steps=STEPS, t_start=300, acg=True, gamma0=20.0, k=0.5)
    y = sampling.edit(model, y0, model.empty_mask(y0), generator=gen(0), **kw)
    _finite(y, y0.shape)
    assert torch.equal(y, sampling.edit(model, y0, model.empty_mask(y0), generator=gen(0), **kw))
    assert not torch.equal(y, sampling.edit(model, y0, model.empty_mask(y0), generator=gen(1), **kw))


def test_acg_pulls_towards_the_original(model, case):
    """With a huge gamma everywhere ACG keeps the image; without ACG a random model drifts away."""
    img01, _ = case
    y0 = model.encode_image(img01)
    kw = dict(steps=STEPS, t_start=300, generator=None, target="clean")
    strong = sampling.edit(model, y0, model.empty_mask(y0), acg=True, gamma0=1e-6, k=0.0, **{**kw, "generator": gen(0)})
    free = sampling.edit(model, y0, model.empty_mask(y0), acg=False, **{**kw, "generator": gen(0)})
    # gamma ~ 0 -> w ~ 1 everywhere -> result is the original
    assert torch.allclose(strong, y0, atol=1e-4)
    assert (free - y0).abs().mean() > 1e-2


def test_edit_healthy_to_pathology_lcg(model, case):
    img01, mask = case
    y0 = model.encode_image(img01)
    region = sampling.dilate(mask, 2)
    y = sampling.edit(model, y0, model.encode_mask(mask), steps=STEPS, t_start=500, generator=gen(0),
                      lcg_map=soft_lesion_map(mask), lam=1.0, known=1 - region)
    _finite(y, y0.shape)
    # outside the dilated region the known image comes back exactly
    assert torch.equal(y[region == 0], y0[region == 0])
    assert not torch.equal(y[mask == 1], y0[mask == 1])


def test_fill_keeps_known_voxels(model, case):
    img01, mask = case
    y0 = model.encode_image(img01)
    mirror = torch.flip(img01, dims=[2])
    y = sampling.fill(model, y0, mask, steps=STEPS, generator=gen(0), margin=2, mirror=mirror)
    _finite(y, y0.shape)
    known = (1 - sampling.dilate(mask, 2)).bool()
    assert torch.equal(y[known], y0[known])
    assert not torch.equal(y[mask.bool()], y0[mask.bool()])
    y_same = sampling.fill(model, y0, mask, steps=STEPS, generator=gen(0), margin=2, mirror=mirror)
    assert torch.equal(y, y_same)
    y_other = sampling.fill(model, y0, mask, steps=STEPS, generator=gen(3), margin=2, mirror=mirror)
    assert not torch.equal(y[mask.bool()], y_other[mask.bool()])


@pytest.mark.parametrize("acg_region", ["ring", "all", "none"])
def test_fill_acg_regions(model, case, acg_region):
    img01, mask = case
    y0 = model.encode_image(img01)
    y = sampling.fill(model, y0, mask, steps=2, generator=gen(0), acg_region=acg_region, target="clean")
    _finite(y, y0.shape)


def test_edit_rejects_unknown_target(model, case):
    img01, _ = case
    y0 = model.encode_image(img01)
    with pytest.raises(ValueError):
        sampling.edit(model, y0, model.empty_mask(y0), steps=2, t_start=100, target="bogus")


def test_detect_lesion(model, case):
    img01, _ = case
    y0 = model.encode_image(img01)
    x = sampling.detect_lesion(model, y0, steps=STEPS, t_start=1023, generator=gen(0))
    _finite(x, (1, 1, *SHAPE))
    soft = model.decode_mask(x)
    assert soft.min() >= 0 and soft.max() <= 1


def test_windowed_blend_is_exact_for_local_ops_and_skips_outside_where():
    from usb_prep.diffusion.model import _starts, windowed

    assert _starts(32, 32) == [0] and _starts(20, 32) == [0]
    s = _starts(70, 32)
    assert s[0] == 0 and s[-1] == 38 and max(b - a for a, b in zip(s, s[1:])) <= 16
    a = torch.randn(1, 1, 40, 24, 70)
    b = torch.randn(1, 2, 40, 24, 70)
    seen = []

    def fn(x, y):
        seen.append(tuple(x.shape[2:]))
        return x * 2 + y[:, :1]

    out = windowed(fn, a, b, 32)
    assert torch.allclose(out, a * 2 + b[:, :1], atol=1e-5)
    assert all(sh == (32, 24, 32) for sh in seen)
    assert len(seen) == 1  # the 2 x 1 x 4 windows in one batched call
    seen.clear()
    assert torch.allclose(windowed(fn, a, b, 32, batch=3), out, atol=1e-6) and len(seen) == 3  # 3 + 3 + 2
    where = torch.zeros(1, 1, 40, 24, 70)
    where[..., 0:3, :, 0:3] = 1
    seen.clear()
    out = windowed(fn, a, b, 32, where)
    assert len(seen) == 1
    assert torch.allclose(out[..., :32, :, :32], (a * 2 + b[:, :1])[..., :32, :, :32], atol=1e-5)
    assert torch.all(out[..., 32:, :, :] == 0) and torch.all(out[..., :, :, 32:] == 0)


def test_batch_of_one_runs_as_two_on_the_cpu():
    """_batch2: a single CPU sample goes through the net as a batch of two copies (oneDNN's fast conv3d);
    the result is the single sample's, for tensor and scalar timesteps alike."""
    from usb_prep.diffusion.model import _batch2

    calls = []

    def net(x, c, t):
        calls.append((x.shape[0], c.shape[0], tuple(t.shape)))
        return x * t.reshape(-1, 1, 1, 1, 1) + c

    x, c = torch.randn(1, 1, 4, 4, 4), torch.randn(1, 1, 4, 4, 4)
    for t in (torch.tensor([3.0]), torch.tensor(3.0)):
        out = _batch2(net, x, c, t)
        assert out.shape == x.shape and torch.allclose(out, 3 * x + c)
    assert calls == [(2, 2, (2,)), (2, 2, (2,))]
    calls.clear()
    _batch2(net, torch.cat([x, x]), torch.cat([c, c]), torch.tensor([1.0, 2.0]))
    big = torch.zeros(1, 1, 33, 32, 32)  # above 32^3: oneDNN's path anyway, no copy
    _batch2(net, big, big, torch.tensor([1.0]))
    assert calls == [(2, 2, (2,)), (1, 1, (1,))]


def test_model_window_matches_training_patch_inputs():
    """With cfg.window, a large input runs as window-sized calls; a window-sized one as one call."""
    from usb_prep.config import preset
    from usb_prep.diffusion.model import USBModel

    torch.manual_seed(0)
    m = USBModel(preset("tiny", window=16), precision="fp32").eval()
    calls = []
    m.brain_net.register_forward_hook(lambda mod, inp, out: calls.append(tuple(inp[0].shape)))
    cond = m.brain_cond(torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 16, 16, 16),
                        torch.ones(1, 1, 16, 16, 16), None)
    y = torch.randn(1, 1, 16, 16, 16)
    t = torch.full((1,), 10)
    with torch.no_grad():
        one = m.brain_out(y, cond, t)
        assert calls == [(2, 1, 16, 16, 16)]  # one sample, run as two on the CPU (_batch2)
        big = m.brain_out(y.repeat(1, 1, 2, 1, 1), cond.repeat(1, 1, 2, 1, 1), t)
    assert calls[1:] == [(3, 1, 16, 16, 16)]  # windows at 0, 8, 16 along the long axis, one batch
    assert big.shape == (1, 1, 32, 16, 16)
    assert torch.allclose(big[:, :, :4], one[:, :, :4], atol=1e-5)  # covered by the first window only
