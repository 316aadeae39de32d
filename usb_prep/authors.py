"""Load the USB authors' released checkpoints (jhuldr/USB, MIT licence) into our classes.

Three files make the authors' model (their README links a Google Drive folder):

- ``usb_lesion.pth`` and ``usb_brain.pth``: ``torch.save([state_dict, optimizer_state, epoch])``
  of ``DataParallel(LDM_3D(...))``; every key starts with ``module.``.  Our
  :class:`usb_prep.diffusion.nets.UNet3D` uses their module names and forward semantics,
  so the weights load by stripping ``module.`` and dropping the tensors their
  forward never uses (``cond_emb_proj.*``, ``proj_attn.*``).
- ``vae.ckpt``: a PyTorch Lightning checkpoint of their ``AutoencoderKLAD``;
  the encoder, decoder and quantisation convolutions map one to one onto
  MONAI's ``AutoencoderKL`` (MONAI wraps each ``Conv3d`` in a ``Convolution``,
  which adds ``.conv`` to the key; the decoder's upsampling conv is
  ``postconv.conv``).  The GAN discriminator and perceptual-loss tensors are
  training-only and dropped.

:func:`convert` writes all three as one ``paper`` model in our weights format
(see :mod:`usb_prep.weights`).  The layouts are described in
``docs/readme_authors.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from .config import ModelConfig, NetConfig, preset
from .io import first_line
from .runtime import CPU_TIME_NOTE, cpu_time_note, warn_if_slow  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

UNUSED_DENOISER = (".cond_emb_proj.", ".proj_attn.")  # defined in LDM_3D, never used by its forward
VAE_KEEP = ("encoders.0.", "decoders.0.", "quant_conv_mu.", "quant_conv_log_sigma.", "post_quant_conv.")
VAE_DROP = ("discriminator.", "perceptual_loss.")  # training losses only
AUTHORS_HEAD_CHANNELS = 256
AUTHORS_NORM_GROUPS = 32


# --- reading ---------------------------------------------------------------
def _torch_load(path) -> object:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors all mean "not a checkpoint we can read"
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({first_line(e)})") from e


def _mismatches(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], limit: int = 5) -> list[str]:
    """Human-readable differences between two state dicts (missing, unexpected, wrong shape)."""
    out = [f"missing {k}" for k in expected if k not in given]
    out += [f"unexpected {k}" for k in given if k not in expected]
    out += [
        f"{k}: shape {tuple(given[k].shape)}, expected {tuple(expected[k].shape)}"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def _load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    bad = _mismatches(module.state_dict(), state)
    if bad:
        raise ValueError(f"{what} does not match the expected architecture: " + "; ".join(bad))
    module.load_state_dict(state, strict=True)


def _drop(state: dict, is_unused, what: str) -> dict:
    dropped = [k for k in state if is_unused(k)]
    if dropped:
        n = sum(state[k].numel() for k in dropped)
        log.info("%s: dropped %d unused tensors (%d parameters), e.g. %s", what, len(dropped), n, dropped[0])
    return {k: v for k, v in state.items() if not is_unused(k)}


# --- denoisers -------------------------------------------------------------
def read_denoiser_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], int | None]:
    """The used tensors of an authors' ``LDM_3D`` file, ``module.`` stripped, and its epoch.

    Raises
    ------
    ValueError
        The file is not a checkpoint, or not the authors' ``[state_dict, optimizer_state, epoch]`` list.
    """
    obj = _torch_load(path)
    if isinstance(obj, Mapping):
        hint = " (a Lightning checkpoint: is this the VAE file?)" if "state_dict" in obj else ""
        raise ValueError(
            f"{path} is not the authors' denoiser container: expected a list [state_dict, optimizer_state, epoch], "
            f"got a dict with keys {sorted(map(str, obj))[:5]}{hint}"
        )
    if not isinstance(obj, (list, tuple)) or len(obj) != 3 or not isinstance(obj[0], Mapping):
        raise ValueError(
            f"{path} is not the authors' denoiser container: expected a list [state_dict, optimizer_state, epoch], "
            f"got {type(obj).__name__}" + (f" of length {len(obj)}" if isinstance(obj, (list, tuple)) else "")
        )
    state = {}
    for k, v in obj[0].items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        state[k[len("module."):] if k.startswith("module.") else k] = v
    epoch = obj[2] if isinstance(obj[2], int) else None
    return _drop(state, lambda k: any(u in "." + k for u in UNUSED_DENOISER), str(path)), epoch


def _indices(state: Mapping, prefix: str) -> list[int]:
    return sorted({int(k[len(prefix):].split(".", 1)[0]) for k in state if k.startswith(prefix)})


def infer_net_config(state: Mapping[str, torch.Tensor], *, num_head_channels: int = AUTHORS_HEAD_CHANNELS,
                     norm_num_groups: int = AUTHORS_NORM_GROUPS) -> NetConfig:
    """Rebuild an ``LDM_3D``'s widths from its (stripped) state dict.

    Head size and GroupNorm groups leave no trace in the weights: they default
    to the authors' (256 and 32).  If 32 does not divide every width (reduced
    test models), the largest divisor of all widths below it is used.
    """
    try:
        w_in, w_out = state["conv_in.weight"], state["out.2.weight"]
        levels = _indices(state, "down_blocks.")
        channels = tuple(int(state[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in levels)
    except KeyError as e:
        raise ValueError(f"not an LDM_3D state dict: no {e.args[0]}") from None
    if not levels or levels != list(range(len(levels))):
        raise ValueError(f"not an LDM_3D state dict: down block indices {levels}")
    if w_in.shape[1] % 2:
        raise ValueError(f"conv_in has {w_in.shape[1]} input channels; LDM_3D concatenates two equal halves")
    groups = norm_num_groups
    widths = set(channels)
    while groups > 1 and any(c % groups for c in widths):
        groups -= 1
    if groups != norm_num_groups:
        log.info("norm groups %d do not divide the widths %s; using %d", norm_num_groups, channels, groups)
    return NetConfig(
        in_channels=int(w_in.shape[1]) // 2,
        cond_channels=int(w_in.shape[1]) // 2,
        out_channels=int(w_out.shape[0]),
        channels=channels,
        attention_levels=tuple(any(k.startswith(f"down_blocks.{i}.attentions.") for k in state) for i in levels),
        num_res_blocks=len(_indices(state, "down_blocks.0.resnets.")),
        num_head_channels=num_head_channels,
        norm_num_groups=groups,
    )


def load_denoiser(path: str | os.PathLike, *, net_config: NetConfig | None = None,
                  num_head_channels: int = AUTHORS_HEAD_CHANNELS):
    """Load ``usb_lesion.pth`` or ``usb_brain.pth`` into a :class:`usb_prep.diffusion.nets.UNet3D`.

    Parameters
    ----------
    path
        The authors' file: a list ``[state_dict ('module.' keys), optimizer_state, epoch]``.
    net_config
        Widths to build; ``None`` infers them from the tensor shapes (see :func:`infer_net_config`).
    num_head_channels
        Channels per attention head when inferring (the authors': 256).

    Returns
    -------
    UNet3D
        In eval mode, on the CPU; every used tensor of the file loaded.

    Raises
    ------
    ValueError
        Not a checkpoint, not the authors' container, or keys/shapes that do not
        match (the message names the first few).
    """
    from .diffusion.nets import UNet3D

    state, epoch = read_denoiser_state(path)
    cfg = net_config or infer_net_config(state, num_head_channels=num_head_channels)
    net = UNet3D(cfg)
    _load_strict(net, state, str(path))
    log.info("loaded %s (epoch %s): %s", path, epoch, cfg)
    return net.eval()


# --- autoencoder -----------------------------------------------------------
def read_vae_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The encoder/decoder/quant-conv tensors of the authors' ``vae.ckpt`` (Lightning) file."""
    obj = _torch_load(path)
    if not isinstance(obj, Mapping) or not isinstance(obj.get("state_dict"), Mapping):
        got = f"a dict with keys {sorted(map(str, obj))[:5]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{path} is not a Lightning checkpoint with a 'state_dict' (got {got})")
    state = _drop(dict(obj["state_dict"]), lambda k: k.startswith(VAE_DROP), str(path))
    other = [k for k in state if not k.startswith(VAE_KEEP)]
    if other:
        raise ValueError(f"{path}: unexpected tensors for the authors' AutoencoderKLAD: {other[:5]}")
    return state


def _rename_vae(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Authors' key -> MONAI key: ``encoders.0.`` -> ``encoder.``, plus MONAI's ``Convolution`` wrappers."""
    out: dict[str, torch.Tensor] = {}
    for key, v in state.items():
        base = key.replace("encoders.0.", "encoder.", 1).replace("decoders.0.", "decoder.", 1)
        mod, leaf = base.rsplit(".", 1)
        candidates = [base, f"{mod}.conv.{leaf}"]  # as is; Conv3d wrapped in Convolution
        if mod.endswith(".conv"):
            candidates.append(f"{mod[:-5]}.postconv.conv.{leaf}")  # decoder Upsample(post_conv=Convolution)
        new = next((c for c in candidates if c in target and c not in out), base)
        out[new] = v
    return out


def infer_ae_kwargs(state: Mapping[str, torch.Tensor]) -> dict:
    """MONAI ``AutoencoderKL`` kwargs from the authors' encoder tensors (groups/eps: the paper's)."""
    try:
        n = _indices(state, "encoders.0.blocks.")
        kinds, widths = [], []
        for i in n:
            p = f"encoders.0.blocks.{i}."
            if p + "conv1.weight" in state:
                kinds.append("res")
                widths.append(int(state[p + "conv1.weight"].shape[0]))
            elif p + "conv.weight" in state:
                kinds.append("down")
            else:
                kinds.append("other")
        levels = "".join("r" if k == "res" else "|" if k == "down" else "" for k in kinds).split("|")
        chans, j = [], 0
        for lv in levels:
            chans.append(widths[j + len(lv) - 1])
            j += len(lv)
        kw = dict(preset("paper").autoencoder)
        kw.update(
            in_channels=int(state["encoders.0.blocks.0.weight"].shape[1]),
            out_channels=int(state[f"decoders.0.blocks.{_indices(state, 'decoders.0.blocks.')[-1]}.weight"].shape[0]),
            channels=tuple(chans),
            latent_channels=int(state["quant_conv_mu.weight"].shape[0]),
            num_res_blocks=len(levels[0]),
            attention_levels=(False,) * len(chans),
        )
    except (KeyError, IndexError) as e:
        raise ValueError(f"not the authors' AutoencoderKLAD state dict ({e!r})") from None
    return kw


def load_autoencoder(path: str | os.PathLike, *, ae_kwargs: dict | None = None):
    """Load the authors' ``vae.ckpt`` into MONAI's ``AutoencoderKL``.

    ``encode(x)`` returns ``(z_mu, z_sigma)`` with log-variance clamped to
    [-30, 20] as the authors'; their inference takes the mean ``z_mu`` (so does
    :meth:`usb_prep.diffusion.model.USBModel.encode_image`).  ``decode(z)`` is
    ``post_quant_conv`` then the decoder, no output activation.

    Parameters
    ----------
    path
        The Lightning checkpoint (a dict with ``state_dict``).
    ae_kwargs
        ``AutoencoderKL`` kwargs; ``None`` infers widths from the file, other
        settings from the ``paper`` preset.  Given keys override inferred ones.

    Raises
    ------
    ValueError
        Not a checkpoint, no ``state_dict``, or tensors that do not match.
    """
    from monai.networks.nets import AutoencoderKL

    state = read_vae_state(path)
    kw = {**infer_ae_kwargs(state), **(ae_kwargs or {})}
    ae = AutoencoderKL(**kw)
    _load_strict(ae, _rename_vae(state, ae.state_dict()), str(path))
    log.info("loaded %s: AutoencoderKL(%s)", path, kw)
    return ae.eval()


# --- conversion ------------------------------------------------------------
def convert(lesion_pth: str | os.PathLike, brain_pth: str | os.PathLike, vae_ckpt: str | os.PathLike,
            out_dir: str | os.PathLike, *, model_config: ModelConfig | None = None, overwrite: bool = False) -> Path:
    """Convert the authors' three files into one weights folder (roles ``fill`` and ``generate``).

    Parameters
    ----------
    lesion_pth, brain_pth
        ``usb_lesion.pth`` (USB_lesion, eps_x) and ``usb_brain.pth`` (USB_brain, eps_y).
        Both have the same shapes: the order cannot be checked, keep it.
    vae_ckpt
        ``vae.ckpt`` (Lightning).
    out_dir
        Folder to write (``usb.json`` + ``fill.safetensors``).
    model_config
        The model to fill; default ``preset("paper")`` (tests pass reduced widths).
    overwrite
        Replace an existing ``usb.json`` in ``out_dir``.

    Returns
    -------
    Path
        ``out_dir``.  The manifest records each source file's name, sha256 and epoch.
    """
    from .diffusion.model import USBModel
    from .weights import MANIFEST, save_model, sha256_file

    cfg = model_config or preset("paper")
    if cfg.mode != "latent":
        raise ValueError(f"the authors' model is a latent model; config {cfg.name!r} is {cfg.mode!r}")
    out = Path(out_dir)
    if (out / MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{out / MANIFEST} exists (use overwrite / --overwrite)")
    sources = {"lesion": Path(lesion_pth), "brain": Path(brain_pth), "vae": Path(vae_ckpt)}
    digests = {role: sha256_file(p) if p.is_file() else None for role, p in sources.items()}
    if digests["lesion"] is not None and digests["lesion"] == digests["brain"]:
        raise ValueError(f"--lesion and --brain are the same file ({sources['lesion']}, {sources['brain']})")
    states, epochs = {}, {}
    for role in ("lesion", "brain"):
        states[role], epochs[role] = read_denoiser_state(sources[role])
    vae = read_vae_state(sources["vae"])
    model = USBModel(cfg)
    _load_strict(model.lesion_net, states.pop("lesion"), str(sources["lesion"]))
    _load_strict(model.brain_net, states.pop("brain"), str(sources["brain"]))
    _load_strict(model.autoencoder, _rename_vae(vae, model.autoencoder.state_dict()), str(sources["vae"]))
    model.eval()
    files = {
        role: {"name": p.name, "sha256": digests[role], **({"epoch": epochs[role]} if role in epochs else {})}
        for role, p in sources.items()
    }
    if not cfg.training:
        model.cfg = cfg.replace(training={"source": "authors' release (jhuldr/USB), converted by usb-convert-authors",
                                          "files": {r: f["name"] for r, f in files.items()}})
    save_model(out, {"fill": model, "generate": model}, extra={"converted_from": {"project": "jhuldr/USB",
                                                                                  "files": files}})
    log.info("wrote %s", out)
    note = cpu_time_note(cfg, "cpu")
    if note:
        log.warning("%s", note)
    return out
