"""A USB model: the two denoisers, their noise schedule and (latent mode) the autoencoder.

Values the networks see ("model space"):
- pixel mode: an image normalised to [0, 1] maps to ``2 v - 1``; a mask to ``2 m - 1``.
- latent mode: ``encode(2 v - 1 ...)``: the autoencoder mean latent times ``latent_scale``.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..config import ModelConfig
from .nets import UNet3D
from .schedule import NoiseSchedule


@functools.lru_cache(maxsize=8)
def _bf16_supported(device: str) -> bool:
    return bf16_supported(device)


def bf16_supported(device: torch.device | str = "cpu") -> bool:
    """bfloat16 autocast pays off: CUDA with bf16, or a CPU whose oneDNN has bf16 kernels (AVX512-BF16/AMX)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class USBModel(nn.Module):
    """``precision``: "fp32", "bf16" (autocast around the denoisers), or "auto" (bf16 for pixel models
    where the device supports it, fp32 otherwise).

    On CPUs with bf16 kernels this is 2-8x faster (measured; benchmarks/README.md).
    """

    def __init__(self, cfg: ModelConfig, precision: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.precision = precision
        self.lesion_net = UNet3D(cfg.lesion_net)  # eps_x(x_t, y_t, t)
        self.brain_net = UNet3D(cfg.brain_net)  # eps_y(y_t, [x0_hat, context...], t)
        self.schedule = NoiseSchedule(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end)
        self.refiner = None  # the fill's last stage (usb_prep.fill.refiner.Refiner), set by weights.load_model
        self.fill_settings = None  # the weights' usb_prep.fill.FillSettings, set by weights.load_model
        self.autoencoder = None
        if cfg.mode == "latent":
            from monai.networks.nets import AutoencoderKL

            self.autoencoder = AutoencoderKL(**cfg.autoencoder)
        elif cfg.mode != "pixel":
            raise ValueError(f"unknown mode {cfg.mode!r}")

    @property
    def divisor(self) -> int:
        """Spatial sizes in model space must be multiples of this."""
        return self.brain_net.divisor

    @property
    def downsample(self) -> int:
        """Voxels per model-space voxel along each axis (autoencoder factor in latent mode)."""
        if self.autoencoder is None:
            return 1
        return 2 ** (len(self.cfg.autoencoder["channels"]) - 1)

    # --- model space -------------------------------------------------------
    def encode_image(self, v: torch.Tensor) -> torch.Tensor:
        """[0, 1] image (N, 1, ...) -> model space."""
        if self.autoencoder is None:
            return v * 2 - 1
        # the authors encode [0, 1] images directly
        return self.autoencoder.encode(v)[0] * self.cfg.latent_scale

    def decode_image(self, y: torch.Tensor) -> torch.Tensor:
        if self.autoencoder is None:
            return (y + 1) / 2
        return self.autoencoder.decode(y / self.cfg.latent_scale)

    def encode_mask(self, m: torch.Tensor) -> torch.Tensor:
        if self.autoencoder is None:
            return m.float() * 2 - 1
        return self.autoencoder.encode(m.float())[0] * self.cfg.latent_scale

    def decode_mask(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> soft mask in [0, 1] (threshold at 0.5 for a label)."""
        if self.autoencoder is None:
            return ((x + 1) / 2).clamp(0, 1)
        return self.autoencoder.decode(x / self.cfg.latent_scale).clamp(0, 1)

    def empty_mask(self, like: torch.Tensor) -> torch.Tensor:
        """Model-space code of "no lesion" with ``like``'s shape (model space)."""
        if self.autoencoder is None:
            return torch.full_like(like[:, :1], -1.0)
        ref = torch.zeros(like.shape[0], 1, *[s * self.downsample for s in like.shape[2:]], device=like.device)
        return self.encode_mask(ref)

    # --- condition of USB_brain -------------------------------------------
    def brain_cond(self, lesion: torch.Tensor, context: torch.Tensor | None = None, known: torch.Tensor | None = None,
                   mirror: torch.Tensor | None = None) -> torch.Tensor:
        """[lesion] + [context * known, known] (context models) + [mirror] (mirror models).

        ``lesion`` is the (estimated or given) lesion in model space; ``context``
        the image in model space and ``known`` in {0, 1} where it may be used;
        ``mirror`` the image mirrored across the midline, in [0, 1] units
        (0 where unknown).  Missing parts are zeros ("not given").
        """
        parts = [lesion]
        z = torch.zeros_like(lesion[:, :1])
        if self.cfg.context:
            if context is None or known is None:
                parts += [z, z]
            else:
                known = known.to(lesion.dtype)
                parts += [context * known, known]
        if self.cfg.mirror:
            parts.append(z if mirror is None else mirror.to(lesion.dtype))
        return torch.cat(parts, dim=1)

    def _autocast(self, x: torch.Tensor):
        # "auto" keeps the authors' latent models in fp32 (their numbers were made so)
        auto = self.precision == "auto" and self.cfg.mode == "pixel" and _bf16_supported(str(x.device))
        use = self.precision == "bf16" or auto
        return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use)

    def lesion_out(self, x_t, y_t, t):
        """Raw USB_lesion output (eps or v, per ``cfg.prediction``)."""
        with self._autocast(x_t):
            return _batch2(self.lesion_net, x_t, y_t, t).float()

    def brain_out(self, y_t, cond, t, where: torch.Tensor | None = None):
        """Raw USB_brain output (eps or v, per ``cfg.prediction``).

        With ``cfg.window`` set, inputs larger than it run in overlapping windows of the
        training patch size (GroupNorm statistics and context then match training); only
        windows touching ``where`` (N=1, 1, ...; e.g. the hole) are computed, zeros elsewhere.
        """
        w = self.cfg.window
        if w is None or all(s <= w for s in y_t.shape[2:]):
            with self._autocast(y_t):
                return _batch2(self.brain_net, y_t, cond, t).float()
        if y_t.shape[0] == 1:  # windows go in batches (windowed): the one timestep repeated for each
            return windowed(lambda a, b: self.brain_out(a, b, t.reshape(-1)[:1].expand(a.shape[0])), y_t, cond, w,
                            where)
        return windowed(lambda a, b: self.brain_out(a, b, t), y_t, cond, w, where)  # window by window

    def predict_lesion(self, x_t, y_t, t):
        """``(eps_hat, x0_hat)`` of the lesion chain."""
        return self.schedule.split(self.lesion_out(x_t, y_t, t), x_t, t, self.cfg.prediction)

    def predict_brain(self, y_t, cond, t, where: torch.Tensor | None = None):
        """``(eps_hat, y0_hat)`` of the brain chain."""
        return self.schedule.split(self.brain_out(y_t, cond, t, where), y_t, t, self.cfg.prediction)


def _starts(size: int, w: int) -> list[int]:
    if size <= w:
        return [0]
    n = -(-(size - w) // (w // 2)) + 1  # stride <= w / 2
    return sorted({round(i * (size - w) / (n - 1)) for i in range(n)})


def _batch2(net, x, *args):
    """``net(x, *args)``; a small batch of one on the CPU runs as a batch of two (a copy), then the first
    is kept.

    PyTorch's CPU conv3d leaves oneDNN for a much slower kernel when N * C * D * H is small, e.g.
    one 32^3 sample with 16 channels: measured 17x slower per sample than a batch of two (AVX2).
    Inputs above 32^3 voxels (e.g. the 48x56x48 generation grid) keep most layers on oneDNN, and
    the copy would cost more than it saves there (measured: 3.2 s vs 1.7 s).
    """
    if x.shape[0] != 1 or x.device.type != "cpu" or x[0, 0].numel() > 32 ** 3:
        return net(x, *args)
    two = [torch.cat([a, a]) if torch.is_tensor(a) and a.ndim > 0 and a.shape[0] == 1 else a for a in (x, *args)]
    if torch.is_tensor(two[-1]) and two[-1].ndim == 0:  # a scalar timestep
        two[-1] = two[-1].expand(2)
    return net(*two)[:1]


def windowed(fn, a: torch.Tensor, b: torch.Tensor, w: int, where: torch.Tensor | None = None,
             batch: int = 8) -> torch.Tensor:
    """``fn(a_win, b_win)`` over overlapping ``w``-cubes, blended with tent weights.

    With a batch of one, up to ``batch`` windows go through ``fn`` at once (stacked along the batch
    axis: the same result, several times faster on the CPU); ``batch=1`` calls it window by window.
    """
    sizes = a.shape[2:]
    wins = [min(w, s) for s in sizes]
    ramp = [1.0 - 0.9 * torch.linspace(-1, 1, n, device=a.device).abs() for n in wins]
    weight = ramp[0][:, None, None] * ramp[1][None, :, None] * ramp[2][None, None, :]
    out = torch.zeros((a.shape[0], 1, *sizes), device=a.device)
    norm = torch.zeros((1, 1, *sizes), device=a.device)
    todo = []
    for i in _starts(sizes[0], w):
        for j in _starts(sizes[1], w):
            for k in _starts(sizes[2], w):
                sl = (slice(None), slice(None), slice(i, i + wins[0]), slice(j, j + wins[1]), slice(k, k + wins[2]))
                if where is None or bool(where[sl].any()):
                    todo.append(sl)
    step = batch if a.shape[0] == 1 else 1
    for c in range(0, len(todo), step):
        group = todo[c:c + step]
        res = fn(torch.cat([a[sl] for sl in group]), torch.cat([b[sl] for sl in group]))
        for n, sl in enumerate(group):
            out[sl] += res[n:n + 1] * weight
            norm[sl] += weight
    return out / norm.clamp(min=1e-6)
