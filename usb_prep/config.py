"""Model configuration: one frozen dataclass, saved as JSON beside the weights.

Every setting needed to rebuild the networks and run them lives here, so a
weights folder is self-describing (no training flags to repeat at sampling).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

CONTRASTS = ("t1w", "t2w", "flair")  # the image contrasts usb_prep knows: every front end's choices come from here


# Model-config keys of weights written before the settings had their own block (``default_<name>``).
LEGACY_KEYS = {f"default_{n}": n for n in ("margin", "samples", "patch_weight", "nlm_weight", "nlm_passes",
                                            "nlm_coarse", "nlm_mirror", "patch_mirror", "smooth")}
DROPPED_KEYS = ("default_t_start", "gamma0", "k", "lam")  # never read; dropped from old configs


@dataclass(frozen=True)
class NetConfig:
    """Shape of one denoiser (a 3D U-Net conditioned by channel concatenation)."""

    in_channels: int = 1  # channels of the noisy variable
    cond_channels: int = 1  # channels concatenated as the condition
    out_channels: int = 1
    channels: tuple[int, ...] = (16, 32, 32)
    attention_levels: tuple[bool, ...] = (False, False, False)
    num_res_blocks: int = 1
    num_head_channels: int = 32
    norm_num_groups: int = 8
    norm_eps: float = 1e-6

    def __post_init__(self):
        if len(self.channels) != len(self.attention_levels):
            raise ValueError("channels and attention_levels must have the same length")
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "attention_levels", tuple(bool(a) for a in self.attention_levels))


@dataclass(frozen=True)
class ModelConfig:
    """Everything about a USB model pair and how to run it.

    ``mode`` is ``"pixel"`` (the denoisers see 1 mm voxels directly; the CPU
    presets) or ``"latent"`` (a KL autoencoder maps images and masks to a
    latent grid; the ``paper`` preset).

    ``context`` adds two condition channels to USB_brain: the known image
    outside the region to edit, and the indicator of that known region.  They
    let one small network both generate (context empty) and fill (context
    given); the paper's model has no such channels.

    ``mirror`` adds one more: the image mirrored across the brain's
    left-right midline (lesion voxels of the mirror zeroed), a strong prior
    for unilateral lesions such as strokes.

    ``prediction`` "v" (CPU presets) keeps the one-step estimate usable at
    t ~ T, where eps-prediction amplifies errors by 1/sqrt(abar_T) ~ 150;
    that is what lets a small model fill well in a few steps.

    ``grid`` is the fixed whole-brain grid of a generation model (voxels of
    ``voxel_mm``), or ``None`` for a patch model that runs on crops of any size.
    """

    name: str = "cpu"
    mode: str = "pixel"
    lesion_net: NetConfig = field(default_factory=NetConfig)
    brain_net: NetConfig = field(default_factory=lambda: NetConfig(cond_channels=3))
    context: bool = True
    mirror: bool = False
    prediction: str = "epsilon"  # what the denoisers output: "epsilon" (paper) or "v"
    num_train_timesteps: int = 1024
    beta_start: float = 1e-4
    beta_end: float = 0.02
    grid: tuple[int, int, int] | None = None
    voxel_mm: float = 1.0
    # intensities: image / percentile(foreground, norm_percentile) -> [0, 1], then * 2 - 1
    norm_percentile: float = 99.5
    latent_scale: float = 0.18215
    autoencoder: dict | None = None  # MONAI AutoencoderKL kwargs in latent mode
    default_steps: int = 20  # sampling steps of the generation and embedding tasks
    window: int | None = None  # patch models: run USB_brain in windows of this edge (the training patch)
    training: dict = field(default_factory=dict)  # summary of how the weights were made

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        for old in (*LEGACY_KEYS, *DROPPED_KEYS):  # older weights; fill settings now have their own block
            d.pop(old, None)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        for key in ("lesion_net", "brain_net"):
            if key in d and isinstance(d[key], dict):
                d[key] = NetConfig(**d[key])
        if d.get("grid") is not None:
            d["grid"] = tuple(d["grid"])
        if d.get("autoencoder") is not None:  # JSON turns tuples into lists
            d["autoencoder"] = {k: tuple(v) if isinstance(v, list) else v for k, v in d["autoencoder"].items()}
        return cls(**d)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _pixel(name, channels, attention, *, lesion_channels=None, context=True, mirror=False, grid=None, voxel_mm=1.0,
           groups=8, heads=32):
    ctx = (2 if context else 0) + (1 if mirror else 0)
    return ModelConfig(
        name=name,
        mode="pixel",
        lesion_net=NetConfig(1, 1, 1, lesion_channels or channels, attention, 1, heads, groups),
        brain_net=NetConfig(1, 1 + ctx, 1, channels, attention, 1, heads, groups),
        context=context,
        mirror=mirror,
        prediction="v",
        grid=grid,
        voxel_mm=voxel_mm,
    )


PRESETS: dict[str, ModelConfig] = {
    # The authors' sizes: latent diffusion on a 3 x 20^3 latent of a 160^3 grid.
    "paper": ModelConfig(
        name="paper",
        mode="latent",
        lesion_net=NetConfig(3, 3, 3, (128, 256, 256), (False, False, True), 1, 256, 32),
        brain_net=NetConfig(3, 3, 3, (128, 256, 256), (False, False, True), 1, 256, 32),
        context=False,
        grid=(160, 160, 160),
        voxel_mm=1.0,
        norm_percentile=100.0,  # the authors min-max normalise
        autoencoder=dict(
            spatial_dims=3, in_channels=1, out_channels=1, channels=(64, 128, 128, 128),
            latent_channels=3, num_res_blocks=2, norm_num_groups=32, norm_eps=1e-6,
            attention_levels=(False, False, False, False),
            with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False,
        ),
        default_steps=342,
    ),
    # CPU filling model: native 1 mm crops around each lesion, context channels.
    # Sizes measured on 2 CPU cores (benchmarks/README.md): fwd+bwd of a batch of 4 x 32^3 ~1.9 s.
    "cpu": _pixel("cpu", (8, 16, 32, 64), (False, False, False, False), lesion_channels=(8, 16, 16, 32),
                  mirror=True),
    # CPU generation model: whole brain on a coarse 4 mm MNI grid.
    "cpu-gen": _pixel("cpu-gen", (16, 32, 48, 64), (False, False, False, True), lesion_channels=(8, 16, 32, 32),
                      context=False,
                      grid=(48, 56, 48), voxel_mm=4.0),
    # Test size: seconds on 16^3.
    "tiny": _pixel("tiny", (8, 8), (False, False), mirror=True, groups=4, heads=8),
}


def preset(name: str, **changes) -> ModelConfig:
    """Return a named preset, optionally with fields replaced."""
    try:
        cfg = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None
    return cfg.replace(**changes) if changes else cfg
