"""The USB denoiser: a 3D U-Net conditioned by channel concatenation.

Module names and forward semantics follow the authors' ``LDM_3D`` so that
their checkpoints load by stripping ``module.`` (see ``usb_prep.authors``):
sinusoidal embedding with cos before sin, scale-and-shift time conditioning in
every residual block, single-projection-free attention, MONAI/diffusers-style
skip bookkeeping.  Spatial sizes must be divisible by ``2 ** (levels - 1)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import NetConfig


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding, ``cat([cos(t f), sin(t f)])`` with f = exp(-ln(1e4) i / half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(emb_dim, 2 * cout)
        self.out_layers = nn.Sequential(
            nn.GroupNorm(groups, cout, eps=eps), nn.SiLU(), nn.Dropout(0.0), nn.Conv3d(cout, cout, 3, padding=1)
        )
        self.skip_connection = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.time_emb_proj(F.silu(emb))[:, :, None, None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift  # FiLM
        h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over voxels; as the authors', no output projection is applied."""

    def __init__(self, channels: int, head_channels: int, groups: int, eps: float):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *sp = x.shape
        h = self.norm(x).reshape(b, c, -1).transpose(1, 2)  # (b, n, c)
        q, k, v = (f(h).reshape(b, -1, self.heads, c // self.heads).transpose(1, 2)
                   for f in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        out = out.transpose(1, 2).reshape(b, -1, c).transpose(1, 2).reshape(b, c, *sp)
        return x + out


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.op = nn.Conv3d(c, c, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv3d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    def __init__(self, cin, cout, n_res, attn, emb_dim, cfg: NetConfig, down: bool):
        super().__init__()
        g, e = cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, emb_dim, g, e) for i in range(n_res))
        self.attentions = (nn.ModuleList(AttentionBlock(cout, cfg.num_head_channels, g, e) for _ in range(n_res))
                           if attn else None)
        self.downsampler = Downsample(cout) if down else None

    def forward(self, h, emb, skips):
        for i, res in enumerate(self.resnets):
            h = res(h, emb)
            if self.attentions is not None:
                h = self.attentions[i](h)
            skips.append(h)
        if self.downsampler is not None:
            h = self.downsampler(h)
            skips.append(h)
        return h


class UpBlock(nn.Module):
    def __init__(self, cin, cout, skip_chs, attn, emb_dim, cfg: NetConfig, up: bool):
        super().__init__()
        g, e = cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.ModuleList(
            ResnetBlock((cin if i == 0 else cout) + s, cout, emb_dim, g, e) for i, s in enumerate(skip_chs)
        )
        self.attentions = (nn.ModuleList(AttentionBlock(cout, cfg.num_head_channels, g, e) for _ in skip_chs)
                           if attn else None)
        self.upsampler = Upsample(cout) if up else None

    def forward(self, h, emb, skips):
        for i, res in enumerate(self.resnets):
            h = res(torch.cat([h, skips.pop()], dim=1), emb)
            if self.attentions is not None:
                h = self.attentions[i](h)
        if self.upsampler is not None:
            h = self.upsampler(h)
        return h


class MiddleBlock(nn.Module):
    def __init__(self, c, attn, emb_dim, cfg: NetConfig):
        super().__init__()
        g, e = cfg.norm_num_groups, cfg.norm_eps
        self.resnet_1 = ResnetBlock(c, c, emb_dim, g, e)
        self.attention = AttentionBlock(c, cfg.num_head_channels, g, e) if attn else None
        self.resnet_2 = ResnetBlock(c, c, emb_dim, g, e)

    def forward(self, h, emb):
        h = self.resnet_1(h, emb)
        if self.attention is not None:
            h = self.attention(h)
        return self.resnet_2(h, emb)


class UNet3D(nn.Module):
    """``eps = net(x, cond, t)``: predicts the noise in ``x`` given ``cond`` (concatenated) and step ``t``."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        emb_dim = 4 * ch[0]
        self.conv_in = nn.Conv3d(cfg.in_channels + cfg.cond_channels, ch[0], 3, padding=1)
        self.time_embed = nn.Sequential(nn.Linear(ch[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        n = len(ch)
        self.down_blocks = nn.ModuleList()
        skip_chs = [ch[0]]
        cin = ch[0]
        for i in range(n):
            last = i == n - 1
            self.down_blocks.append(DownBlock(cin, ch[i], cfg.num_res_blocks, cfg.attention_levels[i], emb_dim, cfg,
                                              not last))
            skip_chs += [ch[i]] * cfg.num_res_blocks + ([] if last else [ch[i]])
            cin = ch[i]
        self.middle_block = MiddleBlock(ch[-1], cfg.attention_levels[-1], emb_dim, cfg)
        self.up_blocks = nn.ModuleList()
        cin = ch[-1]
        for j, i in enumerate(reversed(range(n))):
            skips = [skip_chs.pop() for _ in range(cfg.num_res_blocks + 1)]
            self.up_blocks.append(UpBlock(cin, ch[i], skips, cfg.attention_levels[i], emb_dim, cfg, i > 0))
            cin = ch[i]
        self.out = nn.Sequential(
            nn.GroupNorm(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps), nn.SiLU(),
            nn.Conv3d(ch[0], cfg.out_channels, 3, padding=1)
        )

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.cfg.channels) - 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
        if cond is not None and cond.shape[1]:
            x_in = torch.cat([x, cond.to(x.dtype)], dim=1)
        else:
            x_in = x
        if x_in.shape[1] != self.conv_in.in_channels:
            raise ValueError(f"expected {self.conv_in.in_channels} input channels (noisy + condition), "
                             f"got {x_in.shape[1]}")
        if any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must be divisible by {self.divisor}")
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.cfg.channels[0]).to(x.dtype))
        h = self.conv_in(x_in)
        skips = [h]
        for blk in self.down_blocks:
            h = blk(h, emb, skips)
        h = self.middle_block(h, emb)
        for blk in self.up_blocks:
            h = blk(h, emb, skips)
        return self.out(h)
