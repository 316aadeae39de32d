"""Loading the authors' checkpoints (usb_prep.authors, usb-convert-authors).

The fixtures are written in the authors' exact containers, with key lists built
here from their construction rules (``LDM_3D``, ``AutoencoderKLAD``) rather than
from our classes, at reduced widths; random weights.  Outputs are compared with a
functional reference of the authors' forward written here from their code's
semantics (cos-first embedding, FiLM scale/shift, attention without output
projection, skip bookkeeping), independent of ``usb_prep.diffusion.nets``.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from usb_prep import authors
from usb_prep.config import NetConfig, preset

torch.set_num_threads(1)

# --- the authors' key lists ------------------------------------------------
SMALL = dict(channels=(32, 64, 64), attention=(False, False, True), num_res_blocks=1, in_channels=3, out_channels=3)
SMALL_HEAD = 32  # 2 heads at 64 channels (the authors: 256 -> 1 head)
SMALL2 = dict(channels=(32, 32, 64), attention=(True, False, True), num_res_blocks=2, in_channels=2, out_channels=2)
AE_SMALL = dict(channels=(8, 16, 16, 16), latent=3, num_res_blocks=2)
AE_KW = dict(spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 16, 16, 16), latent_channels=3,
             num_res_blocks=2, norm_num_groups=8, norm_eps=1e-6, attention_levels=(False,) * 4,
             with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)


def ldm_keys(channels, attention, num_res_blocks, in_channels, out_channels, cond_dim=1280):
    """(key, shape, used) of ``LDM_3D`` as the authors build it (without the ``module.`` prefix)."""
    keys = []
    emb = 4 * channels[0]

    def lin(p, o, i, used=True):
        keys.extend([(f"{p}.weight", (o, i), used), (f"{p}.bias", (o,), used)])

    def conv(p, o, i, k=3):
        keys.extend([(f"{p}.weight", (o, i, k, k, k), True), (f"{p}.bias", (o,), True)])

    def norm(p, c):
        keys.extend([(f"{p}.weight", (c,), True), (f"{p}.bias", (c,), True)])

    def res(p, cin, cout):
        norm(f"{p}.norm1", cin)
        conv(f"{p}.conv1", cout, cin)
        lin(f"{p}.time_emb_proj", 2 * cout, emb)
        lin(f"{p}.cond_emb_proj", 2 * cout, cond_dim, used=False)
        norm(f"{p}.out_layers.0", cout)
        conv(f"{p}.out_layers.3", cout, cout)
        if cin != cout:
            conv(f"{p}.skip_connection", cout, cin, k=1)

    def attn(p, c):
        norm(f"{p}.norm", c)
        for q in ("to_q", "to_k", "to_v"):
            lin(f"{p}.{q}", c, c)
        lin(f"{p}.proj_attn", c, c, used=False)

    conv("conv_in", channels[0], 2 * in_channels)
    lin("time_embed.0", emb, channels[0])
    lin("time_embed.2", emb, emb)
    n = len(channels)
    out_ch = channels[0]
    for i in range(n):
        in_ch, out_ch = out_ch, channels[i]
        for j in range(num_res_blocks):
            res(f"down_blocks.{i}.resnets.{j}", in_ch if j == 0 else out_ch, out_ch)
            if attention[i]:
                attn(f"down_blocks.{i}.attentions.{j}", out_ch)
        if i < n - 1:
            conv(f"down_blocks.{i}.downsampler.op", out_ch, out_ch)
    res("middle_block.resnet_1", channels[-1], channels[-1])
    attn("middle_block.attention", channels[-1])
    res("middle_block.resnet_2", channels[-1], channels[-1])
    rev = list(reversed(channels))
    out_ch = rev[0]
    for i in range(n):
        prev, out_ch = out_ch, rev[i]
        in_ch = rev[min(i + 1, n - 1)]
        nr = num_res_blocks + 1
        for j in range(nr):
            skip = in_ch if j == nr - 1 else out_ch
            res(f"up_blocks.{i}.resnets.{j}", (prev if j == 0 else out_ch) + skip, out_ch)
            if attention[n - 1 - i]:
                attn(f"up_blocks.{i}.attentions.{j}", out_ch)
        if i < n - 1:
            conv(f"up_blocks.{i}.upsampler.conv", out_ch, out_ch)
    norm("out.0", channels[0])
    conv("out.2", out_channels, channels[0])
    return keys


def vae_keys(channels, latent, num_res_blocks, in_channels=1):
    """(key, shape) of ``AutoencoderKLAD``'s encoder/decoder/quant convs as in vae.ckpt."""
    keys = []

    def conv(p, o, i, k=3):
        keys.extend([(f"{p}.weight", (o, i, k, k, k)), (f"{p}.bias", (o,))])

    def norm(p, c):
        keys.extend([(f"{p}.weight", (c,)), (f"{p}.bias", (c,))])

    def res(p, cin, cout):
        norm(f"{p}.norm1", cin)
        conv(f"{p}.conv1", cout, cin)
        norm(f"{p}.norm2", cout)
        conv(f"{p}.conv2", cout, cout)
        if cin != cout:
            conv(f"{p}.nin_shortcut", cout, cin, k=1)

    b = 0
    conv(f"encoders.0.blocks.{b}", channels[0], in_channels)
    c = channels[0]
    for i, ch in enumerate(channels):
        for _ in range(num_res_blocks):
            b += 1
            res(f"encoders.0.blocks.{b}", c, ch)
            c = ch
        if i < len(channels) - 1:
            b += 1
            conv(f"encoders.0.blocks.{b}.conv", c, c)
    norm(f"encoders.0.blocks.{b + 1}", c)
    conv(f"encoders.0.blocks.{b + 2}", latent, c)
    b = 0
    rev = list(reversed(channels))
    c = rev[0]
    conv(f"decoders.0.blocks.{b}", c, latent)
    for i, ch in enumerate(rev):
        for _ in range(num_res_blocks):
            b += 1
            res(f"decoders.0.blocks.{b}", c, ch)
            c = ch
        if i < len(rev) - 1:
            b += 1
            conv(f"decoders.0.blocks.{b}.conv", c, c)
    norm(f"decoders.0.blocks.{b + 1}", c)
    conv(f"decoders.0.blocks.{b + 2}", in_channels, c)
    for q in ("quant_conv_mu", "quant_conv_log_sigma", "post_quant_conv"):
        conv(q, latent, latent, k=1)
    return keys


def _numel(shape):
    return math.prod(shape)


def test_key_lists_match_the_documented_paper_sizes():
    """The generators reproduce the documented counts of the real files (204 tensors, 54,118,531 parameters)."""
    k = ldm_keys((128, 256, 256), (False, False, True), 1, 3, 3)
    assert len(k) == 204 and sum(_numel(s) for _, s, _ in k) == 54_118_531
    unused = [(n, s) for n, s, used in k if not used]
    assert len(unused) == 30 and sum(_numel(s) for _, s in unused) == 6_493_952
    v = vae_keys((64, 128, 128, 128), 3, 2)
    enc = [s for n, s in v if n.startswith("encoders.")]
    dec = [s for n, s in v if n.startswith("decoders.")]
    assert (len(enc), sum(map(_numel, enc))) == (78, 6_551_235)
    assert (len(dec), sum(map(_numel, dec))) == (78, 7_214_977)
    assert len(v) == 162 and sum(_numel(s) for _, s in v) == 13_766_248


def _random(shape, gen, name):
    if len(shape) == 1 and (".norm" in name or "out_layers.0" in name or name.startswith("out.0")
                            or ".blocks." in name and "conv" not in name):
        if name.endswith("weight"):
            return 1 + 0.1 * torch.randn(shape, generator=gen)
        return 0.1 * torch.randn(shape, generator=gen)
    fan_in = _numel(shape[1:]) if len(shape) > 1 else 1
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)


def make_ldm_file(path, seed=0, *, spec=SMALL, epoch=7):
    """An authors' denoiser file: [DataParallel state dict, Adam state, epoch]."""
    gen = torch.Generator().manual_seed(seed)
    state = OrderedDict((f"module.{n}", _random(s, gen, n)) for n, s, _ in ldm_keys(**spec))
    opt = {"state": {i: {"step": torch.tensor(3.0), "exp_avg": torch.zeros_like(v), "exp_avg_sq": torch.zeros_like(v)}
                     for i, v in enumerate(state.values())},
           "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "amsgrad": False,
                             "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
                             "fused": None, "params": list(range(len(state)))}]}
    torch.save([state, opt, epoch], path)
    return state


def make_vae_file(path, seed=1, *, spec=AE_SMALL):
    """An authors' Lightning checkpoint, with the training-only discriminator and perceptual tensors."""
    gen = torch.Generator().manual_seed(seed)
    sd = OrderedDict((n, _random(s, gen, n)) for n, s in vae_keys(**spec))
    sd["discriminator.main.0.weight"] = torch.randn(4, 1, 4, 4, 4, generator=gen)
    sd["discriminator.main.0.bias"] = torch.zeros(4)
    sd["discriminator.main.3.weight"] = torch.ones(8)
    sd["discriminator.main.3.running_mean"] = torch.zeros(8)
    sd["discriminator.main.3.running_var"] = torch.ones(8)
    sd["discriminator.main.3.num_batches_tracked"] = torch.tensor(5, dtype=torch.int64)
    sd["perceptual_loss.perceptual_function.scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    sd["perceptual_loss.perceptual_function.net.slice1.0.weight"] = torch.randn(4, 3, 3, 3, generator=gen)
    sd["perceptual_loss.perceptual_function.lins.0.model.1.weight"] = torch.randn(1, 4, 1, 1, generator=gen)
    ckpt = {"epoch": 11, "global_step": 1234, "pytorch-lightning_version": "2.2.3", "state_dict": sd,
            "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": [], "hparams_name": "kwargs",
            "hyper_parameters": {"model_name": "AutoencoderKLAD", "cfg": "cfgs/trainer/vae/vae.yaml",
                                 "input_dim": [(160, 160, 160)], "z_dim": None}}
    torch.save(ckpt, path)
    return sd


# --- reference forward of the authors' LDM_3D (from their code) ------------
def ref_ldm(sd, x, cond, t, *, head_channels, groups, eps=1e-6):
    p = {k.removeprefix("module."): v for k, v in sd.items()}
    c0 = p["conv_in.weight"].shape[0]
    half = c0 // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    temb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # cos first
    emb = F.linear(F.silu(F.linear(temb, p["time_embed.0.weight"], p["time_embed.0.bias"])),
                   p["time_embed.2.weight"], p["time_embed.2.bias"])

    def gn(h, q):
        return F.group_norm(h, groups, p[q + ".weight"], p[q + ".bias"], eps)

    def conv(h, q, **kw):
        return F.conv3d(h, p[q + ".weight"], p[q + ".bias"], **kw)

    def res(h, q):
        a = conv(F.silu(gn(h, q + ".norm1")), q + ".conv1", padding=1)
        ss = F.linear(F.silu(emb), p[q + ".time_emb_proj.weight"], p[q + ".time_emb_proj.bias"])[..., None, None, None]
        scale, shift = torch.chunk(ss, 2, dim=1)
        a = gn(a, q + ".out_layers.0") * (1 + scale) + shift
        a = conv(F.silu(a), q + ".out_layers.3", padding=1)
        skip = conv(h, q + ".skip_connection") if q + ".skip_connection.weight" in p else h
        return skip + a

    def attn(h, q):
        b, c, *sp = h.shape
        heads = c // head_channels
        z = gn(h, q + ".norm").view(b, c, -1).transpose(1, 2)
        qkv = [F.linear(z, p[f"{q}.{n}.weight"], p[f"{q}.{n}.bias"]) for n in ("to_q", "to_k", "to_v")]
        qq, kk, vv = [u.reshape(b, -1, heads, c // heads).permute(0, 2, 1, 3) for u in qkv]
        w = torch.softmax(qq @ kk.transpose(-1, -2) / math.sqrt(c / heads), dim=-1)
        o = (w @ vv).permute(0, 2, 1, 3).reshape(b, -1, c)
        return o.transpose(-1, -2).reshape(b, c, *sp) + h  # no proj_attn

    def count(prefix):
        return len({k[len(prefix):].split(".")[0] for k in p if k.startswith(prefix)})

    h = conv(torch.cat([x, cond], dim=1), "conv_in", padding=1)
    saved = [h]
    for i in range(count("down_blocks.")):
        for j in range(count(f"down_blocks.{i}.resnets.")):
            h = res(h, f"down_blocks.{i}.resnets.{j}")
            if f"down_blocks.{i}.attentions.{j}.norm.weight" in p:
                h = attn(h, f"down_blocks.{i}.attentions.{j}")
            saved.append(h)
        if f"down_blocks.{i}.downsampler.op.weight" in p:
            h = conv(h, f"down_blocks.{i}.downsampler.op", stride=2, padding=1)
            saved.append(h)
    h = res(h, "middle_block.resnet_1")
    h = attn(h, "middle_block.attention")
    h = res(h, "middle_block.resnet_2")
    for i in range(count("up_blocks.")):
        n = count(f"up_blocks.{i}.resnets.")
        block, saved = saved[-n:], saved[:-n]
        for j in range(n):
            h = res(torch.cat([h, block.pop()], dim=1), f"up_blocks.{i}.resnets.{j}")
            if f"up_blocks.{i}.attentions.{j}.norm.weight" in p:
                h = attn(h, f"up_blocks.{i}.attentions.{j}")
        if f"up_blocks.{i}.upsampler.conv.weight" in p:
            h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), f"up_blocks.{i}.upsampler.conv", padding=1)
    return conv(F.silu(gn(h, "out.0")), "out.2", padding=1)


# --- reference encode/decode of the authors' AutoencoderKLAD --------------
def _ref_blocks(p, prefix, h, groups, eps=1e-6):
    idx = sorted({int(k[len(prefix):].split(".")[0]) for k in p if k.startswith(prefix)})
    for i in idx:
        q = f"{prefix}{i}"
        if q + ".conv1.weight" in p:
            a = F.conv3d(F.silu(F.group_norm(h, groups, p[q + ".norm1.weight"], p[q + ".norm1.bias"], eps)),
                         p[q + ".conv1.weight"], p[q + ".conv1.bias"], padding=1)
            a = F.conv3d(F.silu(F.group_norm(a, groups, p[q + ".norm2.weight"], p[q + ".norm2.bias"], eps)),
                         p[q + ".conv2.weight"], p[q + ".conv2.bias"], padding=1)
            if q + ".nin_shortcut.weight" in p:
                h = F.conv3d(h, p[q + ".nin_shortcut.weight"], p[q + ".nin_shortcut.bias"])
            h = h + a
        elif q + ".conv.weight" in p and prefix.startswith("encoders"):  # Downsample: pad (0,1)^3, stride 2
            h = F.conv3d(F.pad(h, (0, 1, 0, 1, 0, 1)), p[q + ".conv.weight"], p[q + ".conv.bias"], stride=2)
        elif q + ".conv.weight" in p:  # Upsample: nearest x2, conv
            h = F.conv3d(F.interpolate(h, scale_factor=2.0, mode="nearest"), p[q + ".conv.weight"],
                         p[q + ".conv.bias"], padding=1)
        elif p[q + ".weight"].ndim == 1:  # final GroupNorm (no SiLU after it)
            h = F.group_norm(h, groups, p[q + ".weight"], p[q + ".bias"], eps)
        else:
            h = F.conv3d(h, p[q + ".weight"], p[q + ".bias"], padding=1)
    return h


def ref_encode_mean(p, x, groups):
    h = _ref_blocks(p, "encoders.0.blocks.", x, groups)
    return F.conv3d(h, p["quant_conv_mu.weight"], p["quant_conv_mu.bias"])


def ref_decode(p, z, groups):
    z = F.conv3d(z, p["post_quant_conv.weight"], p["post_quant_conv.bias"])
    return _ref_blocks(p, "decoders.0.blocks.", z, groups)


# --- tests: denoiser -------------------------------------------------------
@pytest.mark.parametrize("spec", [SMALL, SMALL2], ids=["paper-layout", "two-res-blocks"])
def test_denoiser_matches_reference_forward(tmp_path, caplog, spec):
    path = tmp_path / "usb_lesion.pth"
    sd = make_ldm_file(path, spec=spec)
    with caplog.at_level(logging.INFO, logger="usb_prep.authors"):
        net = authors.load_denoiser(path, num_head_channels=SMALL_HEAD)
    assert any("dropped" in r.getMessage() for r in caplog.records)
    cfg = net.cfg
    assert cfg.channels == spec["channels"] and cfg.attention_levels == spec["attention"]
    assert cfg.num_res_blocks == spec["num_res_blocks"]
    assert (cfg.in_channels, cfg.cond_channels, cfg.out_channels) == (spec["in_channels"],) * 2 + (spec["out_channels"],)
    assert cfg.norm_num_groups == 32
    # every tensor consumed or deliberately dropped
    used = {n for n, _, u in ldm_keys(**spec) if u}
    assert set(net.state_dict()) == used
    for k, v in net.state_dict().items():
        assert torch.equal(v, sd["module." + k])

    gen = torch.Generator().manual_seed(3)
    c = spec["in_channels"]
    x = torch.randn(2, c, 8, 8, 8, generator=gen)
    cond = torch.randn(2, c, 8, 8, 8, generator=gen)
    for t in (torch.tensor([5, 900]), torch.tensor([5.0, 900.0]), torch.tensor([250.5, 1023.0])):
        with torch.no_grad():
            out = net(x, cond, t)
            ref = ref_ldm(sd, x, cond, t, head_channels=SMALL_HEAD, groups=32)
        assert out.shape == (2, spec["out_channels"], 8, 8, 8)
        assert torch.isfinite(out).all() and out.abs().max() > 1e-3
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # int64 and float32 steps give the same output (the authors cast with .float())
        torch.testing.assert_close(net(x, cond, torch.tensor([7, 7])), net(x, cond, torch.tensor([7.0, 7.0])))


def test_denoiser_with_given_config(tmp_path):
    path = tmp_path / "usb_brain.pth"
    make_ldm_file(path)
    cfg = NetConfig(3, 3, 3, (32, 64, 64), (False, False, True), 1, SMALL_HEAD, 32)
    assert authors.load_denoiser(path, net_config=cfg).cfg == cfg
    wrong = NetConfig(3, 3, 3, (32, 64, 64), (False, True, True), 1, SMALL_HEAD, 32)
    with pytest.raises(ValueError, match="missing down_blocks.1.attentions.0"):
        authors.load_denoiser(path, net_config=wrong)


def test_paper_preset_matches_documented_keys():
    """Our paper-size UNet3D has exactly the authors' used keys and shapes (no weights are built for this)."""
    from usb_prep.diffusion.nets import UNet3D

    with torch.device("meta"):
        net = UNet3D(preset("paper").lesion_net)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    theirs = {n: s for n, s, used in ldm_keys((128, 256, 256), (False, False, True), 1, 3, 3) if used}
    assert ours == theirs


def test_denoiser_errors(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        authors.load_denoiser(bad)
    with pytest.raises(ValueError, match="no such file"):
        authors.load_denoiser(tmp_path / "missing.pth")

    good = tmp_path / "good.pth"
    sd = make_ldm_file(good)
    as_dict = tmp_path / "dict.pth"
    torch.save({"state_dict": sd}, as_dict)
    with pytest.raises(ValueError, match="expected a list"):
        authors.load_denoiser(as_dict)

    missing = OrderedDict(sd)
    del missing["module.down_blocks.1.resnets.0.conv1.bias"]
    torch.save([missing, {}, 1], tmp_path / "missing_key.pth")
    with pytest.raises(ValueError, match="missing down_blocks.1.resnets.0.conv1.bias"):
        authors.load_denoiser(tmp_path / "missing_key.pth")

    reshaped = OrderedDict(sd)
    reshaped["module.time_embed.2.bias"] = torch.zeros(7)
    torch.save([reshaped, {}, 1], tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"time_embed.2.bias: shape \(7,\), expected \(128,\)"):
        authors.load_denoiser(tmp_path / "shape.pth")

    extra = OrderedDict(sd)
    extra["module.class_embedding.weight"] = torch.zeros(2, 128)
    torch.save([extra, {}, 1], tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="unexpected class_embedding.weight"):
        authors.load_denoiser(tmp_path / "extra.pth")


# --- tests: autoencoder ----------------------------------------------------
def test_autoencoder_matches_reference(tmp_path, caplog):
    path = tmp_path / "vae.ckpt"
    sd = make_vae_file(path)
    with caplog.at_level(logging.INFO, logger="usb_prep.authors"):
        ae = authors.load_autoencoder(path, ae_kwargs={"norm_num_groups": 8})
    msgs = " ".join(r.getMessage() for r in caplog.records)
    assert "dropped 9 unused tensors" in msgs
    assert len(ae.state_dict()) == len(vae_keys(**AE_SMALL))
    x = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mu, sigma = ae.encode(x)
        torch.testing.assert_close(mu, ref_encode_mean(sd, x, 8), rtol=1e-4, atol=1e-5)
        lv = F.conv3d(_ref_blocks(sd, "encoders.0.blocks.", x, 8), sd["quant_conv_log_sigma.weight"],
                      sd["quant_conv_log_sigma.bias"])
        torch.testing.assert_close(sigma, torch.exp(lv.clamp(-30, 20) / 2), rtol=1e-4, atol=1e-5)
        assert mu.shape == (1, 3, 2, 2, 2)
        torch.testing.assert_close(ae.decode(mu), ref_decode(sd, mu, 8), rtol=1e-4, atol=1e-5)


def test_paper_autoencoder_mapping():
    """Every tensor of the paper-size vae.ckpt maps onto MONAI's AutoencoderKL with its shape (meta tensors)."""
    from monai.networks.nets import AutoencoderKL

    with torch.device("meta"):
        ae = AutoencoderKL(**preset("paper").autoencoder)
        theirs = {n: torch.empty(s) for n, s in vae_keys((64, 128, 128, 128), 3, 2)}
    target = ae.state_dict()
    renamed = authors._rename_vae(theirs, target)
    assert {k: tuple(v.shape) for k, v in renamed.items()} == {k: tuple(v.shape) for k, v in target.items()}


def test_autoencoder_inferred_kwargs(tmp_path):
    path = tmp_path / "vae.ckpt"
    make_vae_file(path)
    kw = authors.infer_ae_kwargs(authors.read_vae_state(path))
    assert kw["channels"] == (8, 16, 16, 16) and kw["num_res_blocks"] == 2 and kw["latent_channels"] == 3
    assert kw["norm_num_groups"] == 32  # the paper's; 8-channel test widths need it given
    assert authors.infer_ae_kwargs({n: torch.empty(s) for n, s in vae_keys((64, 128, 128, 128), 3, 2)}) == \
        {**preset("paper").autoencoder}


def test_autoencoder_errors(tmp_path):
    as_list = tmp_path / "list.ckpt"
    torch.save([{}, {}, 1], as_list)
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        authors.load_autoencoder(as_list)
    path = tmp_path / "vae.ckpt"
    sd = make_vae_file(path)
    del sd["decoders.0.blocks.3.conv.bias"]
    torch.save({"state_dict": sd}, tmp_path / "broken.ckpt")
    with pytest.raises(ValueError, match=r"missing decoder.blocks.3.postconv.conv.bias"):
        authors.load_autoencoder(tmp_path / "broken.ckpt", ae_kwargs={"norm_num_groups": 8})


# --- tests: conversion and CLI --------------------------------------------
def small_paper_config():
    net = NetConfig(3, 3, 3, (32, 64, 64), (False, False, True), 1, SMALL_HEAD, 32)
    return preset("paper").replace(lesion_net=net, brain_net=net, autoencoder=AE_KW)


@pytest.fixture
def author_files(tmp_path):
    files = {"lesion": tmp_path / "usb_lesion.pth", "brain": tmp_path / "usb_brain.pth", "vae": tmp_path / "vae.ckpt"}
    sds = {"lesion": make_ldm_file(files["lesion"], seed=0, epoch=41),
           "brain": make_ldm_file(files["brain"], seed=1, epoch=42),
           "vae": make_vae_file(files["vae"])}
    return files, sds


def test_convert_then_load(tmp_path, author_files, caplog):
    from usb_prep.weights import MANIFEST, load_model, sha256_file

    files, sds = author_files
    out = tmp_path / "weights"
    cfg = small_paper_config()
    with caplog.at_level(logging.WARNING, logger="usb_prep.authors"):
        authors.convert(files["lesion"], files["brain"], files["vae"], out, model_config=cfg)
    assert any("GPU" in r.getMessage() for r in caplog.records)  # the CPU-time note
    man = json.loads((out / MANIFEST).read_text())
    assert man["models"]["fill"]["file"] == man["models"]["generate"]["file"] == "fill.safetensors"
    src = man["converted_from"]["files"]
    assert src["lesion"] == {"name": "usb_lesion.pth", "sha256": sha256_file(files["lesion"]), "epoch": 41}
    assert src["vae"]["sha256"] == sha256_file(files["vae"])

    for role in ("fill", "generate"):
        model, info = load_model(out, role)
        # (JSON turns the autoencoder kwargs' tuples into lists: compare the JSON forms)
        assert json.loads(model.cfg.replace(training={}).to_json()) == json.loads(cfg.to_json())
        assert model.cfg.mode == "latent" and model.cfg.training["files"]["vae"] == "vae.ckpt"
        assert model.cfg.latent_scale == 0.18215
    for k, v in model.lesion_net.state_dict().items():
        assert torch.equal(v, sds["lesion"]["module." + k])
    for k, v in model.brain_net.state_dict().items():
        assert torch.equal(v, sds["brain"]["module." + k])
    x = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), ref_encode_mean(sds["vae"], x, 8) * 0.18215,
                                   rtol=1e-4, atol=1e-5)
        y = torch.randn(1, 3, 8, 8, 8, generator=torch.Generator().manual_seed(1))
        t = torch.tensor([300.0])
        torch.testing.assert_close(model.brain_net(y, y, t),  # fp32 (eps_brain may autocast to bf16)
                                   ref_ldm(sds["brain"], y, y, t, head_channels=SMALL_HEAD, groups=32),
                                   rtol=1e-4, atol=1e-4)

    with pytest.raises(FileExistsError):
        authors.convert(files["lesion"], files["brain"], files["vae"], out, model_config=cfg)
    authors.convert(files["lesion"], files["brain"], files["vae"], out, model_config=cfg, overwrite=True)
    with pytest.raises(ValueError, match="same file"):
        authors.convert(files["lesion"], files["lesion"], files["vae"], tmp_path / "w2", model_config=cfg)
    with pytest.raises(ValueError, match="latent model"):
        authors.convert(files["lesion"], files["brain"], files["vae"], tmp_path / "w3", model_config=preset("tiny"))


def test_cpu_time_note():
    assert "GPU" in authors.cpu_time_note(preset("paper"), "cpu")
    assert authors.cpu_time_note(preset("paper"), "cuda") is None
    assert authors.cpu_time_note(preset("tiny"), "cpu") is None
    with pytest.warns(RuntimeWarning, match="10-25 minutes"):
        authors.warn_if_slow(preset("paper"), "cpu")


def test_cli(tmp_path, author_files, monkeypatch):
    from click.testing import CliRunner

    from usb_prep.cli.convert import main

    files, _ = author_files
    runner = CliRunner()
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0 and "--lesion" in res.output

    monkeypatch.setattr(authors, "preset", lambda name: small_paper_config())
    out = tmp_path / "w"
    args = ["--lesion", str(files["lesion"]), "--brain", str(files["brain"]), "--vae", str(files["vae"]), "-o", str(out)]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert (out / "usb.json").is_file()
    res = runner.invoke(main, args)
    assert res.exit_code == 2 and "exists" in res.output and len(res.output.strip().splitlines()) == 1
    assert runner.invoke(main, args + ["--overwrite"]).exit_code == 0

    swapped = ["--lesion", str(files["vae"]), "--brain", str(files["brain"]), "--vae", str(files["vae"]), "-o",
               str(tmp_path / "w2")]
    res = runner.invoke(main, swapped)
    assert res.exit_code == 2 and "Lightning checkpoint" in res.output
    res = runner.invoke(main, ["--lesion", str(tmp_path / "nope.pth")] + args[2:-1] + [str(tmp_path / "w3")])
    assert res.exit_code == 2 and "no such file" in res.output
