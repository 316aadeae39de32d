"""Weights format: a folder with ``usb.json`` and safetensors files, checked by sha256.

``usb.json`` maps a *role* to a model::

    {"format": 1,
     "models": {"fill":     {"file": "fill.safetensors", "sha256": "...", "config": {...}},
                "generate": {"file": "generate.safetensors", "sha256": "...", "config": {...}}},
     "refiner": {"file": "refine.safetensors", "sha256": "...", "channels": [16, 32, 48]},
     "fill_settings": {"steps": 1, "margin": 0, ...}}

``fill`` runs the editing tasks (known-mask filling, healing, embedding) on T1w images, ``fill_t2w`` and
``fill_flair`` (optional) fill T2w and FLAIR images (their own fill settings under ``contrast_settings``;
the one refiner serves every fill whose settings say ``refine``, unless ``contrast_refiners`` has one for that
contrast: ``{"t2w": {"file": "refine_t2w.safetensors", ...}}``), and ``generate`` runs the generation tasks;
the optional ``refiner`` (:mod:`usb_prep.fill.refiner`) is the known-mask fill's last stage, attached to the fill
model as ``model.refiner``, and ``fill_settings`` (:class:`usb_prep.fill.FillSettings`) the fill's defaults, as
``model.fill_settings``. A folder may hold one model under several roles (the converted ``paper`` model does).
Folders are resolved in one order: the explicit argument, then ``$USB_PREP_WEIGHTS``, then the packaged default.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from .config import ModelConfig
from .fill.settings import CONTRASTS, from_manifest
from .runtime import warn_if_slow

log = logging.getLogger(__name__)

ENV_VAR = "USB_PREP_WEIGHTS"
MANIFEST = "usb.json"
ROLES = ("fill", "fill_t2w", "fill_flair", "generate")
REFINER_FILE = "refine.safetensors"


def fill_role(contrast: str = "t1w") -> str:
    """The manifest role that fills images of ``contrast`` (t1w, t2w, flair)."""
    from .data.contrast import parse_contrasts

    cs = parse_contrasts(contrast)
    if len(cs) != 1:
        raise ValueError(f"one contrast per image, got {contrast!r}")
    c = cs[0]
    return "fill" if c == "t1w" else f"fill_{c}"


def _contrast_of(role: str) -> str | None:
    """The contrast a fill role fills (``None`` for other roles)."""
    return "t1w" if role == "fill" else role[5:] if role.startswith("fill_") else None


def packaged_weights_dir() -> Path:
    return Path(__file__).resolve().parent / "weights" / "default"


class WeightsError(RuntimeError):
    """Weights missing, unreadable or failing their checksum."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _places(explicit) -> list[tuple[str, Path | None]]:
    env = os.environ.get(ENV_VAR)
    return [
        ("--weights / weights= argument", Path(explicit) if explicit else None),
        (f"${ENV_VAR}", Path(env) if env else None),
        ("packaged default", packaged_weights_dir()),
    ]


def resolve_weights(explicit: str | os.PathLike | None = None) -> Path:
    """The weights folder to use: explicit path, then ``$USB_PREP_WEIGHTS``, then the packaged default.

    The first place that is *given* is used; if it has no valid manifest the
    error names all three places.
    """
    places = _places(explicit)
    for _, p in places:
        if p is None:
            continue
        folder = p.parent if p.is_file() and p.name == MANIFEST else p
        if (folder / MANIFEST).is_file():
            return folder
        break
    given = next(((what, p) for what, p in places if p is not None), None)
    order = "; ".join(f"{what}: {p if p is not None else '(not set)'}" for what, p in places)
    raise WeightsError(f"no usable weights: {given[1] if given else 'nothing'} has no usb.json (the first place "
                       f"given is used: {order}; fix or unset it)")


def read_manifest(folder: Path) -> dict:
    try:
        with open(folder / MANIFEST) as f:
            man = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"cannot read {folder / MANIFEST}: {e}") from e
    if "models" not in man:
        raise WeightsError(f"{folder / MANIFEST} has no 'models' entry")
    return man


def save_model(folder: str | os.PathLike, role_to_model: dict[str, "torch.nn.Module"], *, extra: dict | None = None,
               contrast_refiners: dict | None = None) -> Path:
    """Write models (each a :class:`usb_prep.diffusion.model.USBModel`) under their roles; the fill model's
    refiner and fill settings (where set) too. The T2w/FLAIR fills' settings go in ``extra["contrast_settings"]``
    (one model may serve several contrasts, each with its own settings; :func:`bundle` writes them), their own
    refiners (contrast -> :class:`usb_prep.fill.refiner.Refiner`) in ``contrast_refiners``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries: dict[str, dict] = {}
    written: dict[int, str] = {}
    refiner = settings = None
    for role, model in role_to_model.items():
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        fname = written.get(id(model))
        if fname is None:
            fname = f"{role}.safetensors"
            _save_state(model, folder / fname, skip="refiner.")  # the refiner gets its own file
            written[id(model)] = fname
        entries[role] = {"file": fname, "sha256": sha256_file(folder / fname), "config": model.cfg.to_dict()}
        if role == "fill":
            refiner = getattr(model, "refiner", None)
            settings = getattr(model, "fill_settings", None)
    manifest = {"format": 1, "models": entries, **(extra or {})}
    if settings is not None:
        manifest["fill_settings"] = settings.to_dict()
    if refiner is not None:
        manifest["refiner"] = {"file": REFINER_FILE, "sha256": _save_state(refiner, folder / REFINER_FILE),
                               "channels": list(refiner.channels)}
    shared: dict[int, list[str]] = {}  # one file per distinct refiner, named after the contrasts it serves
    for c, net in (contrast_refiners or {}).items():
        shared.setdefault(id(net), []).append(c)
    for cs in shared.values():
        net, fname = contrast_refiners[cs[0]], f"refine_{'_'.join(cs)}.safetensors"
        entry = {"file": fname, "sha256": _save_state(net, folder / fname), "channels": list(net.channels)}
        manifest.setdefault("contrast_refiners", {}).update({c: entry for c in cs})
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.replace(folder / MANIFEST)
    return folder


def _checked_state(folder: Path, entry: dict, what: str):
    """``(path, sha256, state dict)`` of a manifest entry's safetensors file, its checksum verified."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not isinstance(entry, dict) or "file" not in entry or "sha256" not in entry:
        raise WeightsError(f"{folder / MANIFEST}: the {what} entry needs 'file' and 'sha256'")
    path = folder / entry["file"]
    if not path.is_file():
        raise WeightsError(f"{what} missing: {path}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise WeightsError(f"checksum mismatch for {path}: expected {entry['sha256']}, got {digest} "
                           "(corrupt or replaced file)")
    try:
        return path, digest, load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"cannot read {path}: {e}") from e


def _save_state(module, path: Path, skip: str | None = None) -> str:
    """Write ``module``'s state dict (keys starting with ``skip`` left out) as safetensors; its sha256."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()
             if skip is None or not k.startswith(skip)}
    save_file(state, str(path))
    return sha256_file(path)


def _no_role(folder: Path, man: dict, role: str) -> WeightsError:
    """The error for weights without a model for ``role`` (the same from :func:`load_model` and
    :func:`fill_settings_of`)."""
    msg = f"{folder / MANIFEST} has no model for role {role!r} (has {sorted(man['models'])})"
    if role.startswith("fill_"):
        msg += (f": these weights cannot fill {_contrast_of(role)} images (train a model with usb-train --contrast, "
                "or fill with --method patch)")
    return WeightsError(msg)


def load_model(weights: str | os.PathLike | None = None, role: str = "fill", device: str | torch.device = "cpu"):
    """Load the model for ``role`` from the resolved folder; checks its sha256.

    Returns ``(model, info)`` with ``info = {"weights", "file", "sha256", "role", "preset"}`` (``weights``:
    "packaged default" or the folder given).
    """
    from .diffusion.model import USBModel

    folder = resolve_weights(weights)
    man = read_manifest(folder)
    entry = man["models"].get(role)
    if entry is None:
        raise _no_role(folder, man, role)
    path, digest, state = _checked_state(folder, entry, "weights file")
    cfg = ModelConfig.from_dict(entry["config"])
    model = USBModel(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    refiner_entry = _refiner_entry(man, _contrast_of(role))
    if refiner_entry is not None:  # every fill may use it (its settings say)
        model.refiner = load_refiner(folder, refiner_entry)
    if _contrast_of(role) is not None:
        try:
            model.fill_settings = from_manifest(man, getattr(model, "refiner", None) is not None, _contrast_of(role))
        except ValueError as e:
            raise WeightsError(f"{folder / MANIFEST}: {e}") from e
    model.eval().requires_grad_(False).to(device)  # inference only: no autograd graph, no gradient memory
    if cfg.mode == "latent":
        warn_if_slow(cfg, device)
    packaged = folder.resolve() == packaged_weights_dir()
    info = {"weights": "packaged default" if packaged else str(folder), "file": path.name, "sha256": digest,
            "role": role, "preset": cfg.name}
    if getattr(model, "refiner", None) is not None:
        info["refiner_sha256"] = refiner_entry["sha256"]  # checked by load_refiner
    log.debug("loaded %s", info)
    return model, info


def fill_settings_of(weights: str | os.PathLike | None = None, overrides: dict | None = None, contrast: str = "t1w"):
    """The fill settings that will run with ``weights`` (resolved as :func:`load_model` does, read from its
    ``usb.json`` without loading a model) and the user's ``overrides``. Unknown names, bad values and bad
    combinations with the weights' own values (``patch_weight + nlm_weight > 1``) raise ``ValueError``: every
    front end calls this before any work. ``contrast``: the settings of the model that fills that contrast."""
    folder = resolve_weights(weights)
    man = read_manifest(folder)
    role = fill_role(contrast)
    if role not in man["models"]:
        raise _no_role(folder, man, role)
    try:
        settings = from_manifest(man, _refiner_entry(man, _contrast_of(role)) is not None, _contrast_of(role))
    except ValueError as e:
        raise WeightsError(f"{folder / MANIFEST}: {e}") from e
    return settings.replace(**(overrides or {}))


def fill_contrasts(weights: str | os.PathLike | None = None) -> tuple[str, ...]:
    """The contrasts ``weights`` fill (those with a fill role in their ``usb.json``)."""
    man = read_manifest(resolve_weights(weights))
    return tuple(c for c in CONTRASTS if fill_role(c) in man["models"])


def check_fill_settings(weights=None, overrides: dict | None = None, contrast: str = "auto") -> None:
    """:func:`fill_settings_of` for ``contrast``; for ``"auto"`` (told only when the image is read) for every
    contrast the weights fill, naming the one the settings do not suit."""
    if contrast != "auto":
        fill_settings_of(weights, overrides, contrast)
        return
    for c in fill_contrasts(weights):
        try:
            fill_settings_of(weights, overrides, c)
        except ValueError as e:
            raise type(e)(f"{e} (for {c} images: with contrast 'auto' any of {', '.join(fill_contrasts(weights))} "
                          "may run; give the contrast)") from None


def model_or_load(model, weights=None, role: str = "fill", device="cpu"):
    """``model`` when given, else :func:`load_model` of ``weights`` for ``role`` (the API's array functions)."""
    return model if model is not None else load_model(weights, role, device)[0]


def _refiner_entry(man: dict, contrast: str | None) -> dict | None:
    """The manifest entry of the refiner of the fill of ``contrast`` (None: not a fill role, or none): the
    contrast's own (``contrast_refiners``), else the one ``refiner``."""
    if contrast is None:
        return None
    return man.get("contrast_refiners", {}).get(contrast) or man.get("refiner")


def load_refiner(folder: Path, entry: dict):
    """The :class:`usb_prep.fill.refiner.Refiner` of a manifest's ``refiner`` entry, sha256-checked."""
    from .fill.refiner import Refiner

    path, _, state = _checked_state(Path(folder), entry, "refiner weights")
    net = Refiner(entry.get("channels", (16, 32, 48)))
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise WeightsError(f"cannot read {path}: {e}") from e
    if missing or unexpected:
        raise WeightsError(f"{path} does not match its channels: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return net.eval()


def load_refiner_state(spec: str | os.PathLike):
    """A refiner from ``spec``: ``"packaged"`` (the packaged weights' refiner, sha256-checked), a state dict
    saved by ``usb-train --stage refiner`` (``OUT/refine.pt``, default channels) or one in a ``.safetensors`` file
    (a bundled ``refine.safetensors``, e.g. a campaign checkpoint's)."""
    from .fill.refiner import Refiner

    if str(spec) == "packaged":
        folder = packaged_weights_dir()
        man = read_manifest(folder)
        if "refiner" not in man:
            raise WeightsError(f"the packaged weights ({folder}) have no refiner")
        return load_refiner(folder, man["refiner"])
    net = Refiner()
    if str(spec).endswith(".safetensors"):
        from safetensors.torch import load_file

        net.load_state_dict(load_file(str(spec)))
    else:
        net.load_state_dict(torch.load(spec, map_location="cpu", weights_only=True))
    return net.eval()


def _contrast_models(fill, contrasts, contrast_settings, t1w_settings, t1w_model=None) -> tuple[dict, dict]:
    """``({role: model}, {contrast: settings dict})`` of the non-T1w fills: those of the ``fill`` folder, replaced
    by ``contrasts`` (contrast -> a run's export or a bundled folder). One file per distinct model (sha256).
    Settings: ``contrast_settings``'s, else those the ``fill`` folder gives it, else ``t1w_settings`` without the
    refiner."""
    man = read_manifest(resolve_weights(fill))
    sources = {c: fill for c in ("t2w", "flair") if fill_role(c) in man["models"]}
    sources.update(contrasts or {})
    models, settings, by_sha = {}, {}, {}
    base = t1w_settings.replace(refine=False)
    if t1w_model is not None:  # a contrast filled by the T1w model shares its file
        by_sha[man["models"]["fill"]["sha256"]] = t1w_model
    for c, folder in sources.items():
        folder_man = read_manifest(resolve_weights(folder))
        role = fill_role(c) if fill_role(c) in folder_man["models"] else "fill"
        sha = folder_man["models"][role]["sha256"]
        if sha not in by_sha:
            by_sha[sha], _ = load_model(folder, role)
        models[fill_role(c)] = by_sha[sha]
        given = (contrast_settings or {}).get(c)
        kept = man.get("contrast_settings", {}).get(c) if folder == fill else None
        settings[c] = base.replace(**(given or kept or {})).to_dict()  # checked, complete
    return models, settings


def bundle(out: str | os.PathLike, *, fill: str | os.PathLike, generate: str | os.PathLike, extra: dict | None = None,
           fill_config: dict | None = None, fill_settings: dict | None = None, generate_steps: int | None = None,
           refiner: str | os.PathLike | None = None, contrasts: dict | None = None,
           contrast_settings: dict | None = None, contrast_refiners: dict | None = None) -> Path:
    """One weights folder from training runs' exports (``fill`` and ``generate`` roles).

    ``usb-train`` exports each run's EMA weights to ``RUN/weights``; the packaged default is
    ``bundle("usb_prep/weights/default", fill="runs/fill/weights", generate="runs/gen/weights")``;
    ``refiner``: a refiner state dict to attach to the fill (else the fill folder's own refiner, if any).
    ``contrasts``: the T2w / FLAIR fills (contrast -> folder; the ``fill`` folder's own are kept otherwise),
    ``contrast_settings`` their fill settings (contrast -> dict, changes to the T1w fill's settings without the
    refiner; default: kept); ``contrast_refiners`` their own refiners (contrast -> a state dict as ``refiner``;
    default: the ``fill`` folder's own for the contrasts it keeps, else the one refiner).
    """
    f, _ = load_model(fill, "fill")
    g, _ = load_model(generate, "generate")
    others, other_settings = _contrast_models(fill, contrasts, contrast_settings,
                                              f.fill_settings.replace(**(fill_settings or {})),
                                              None if fill_config else f)
    if refiner is not None:  # a state dict saved by torch.save (usb_prep.train.refiner: OUT/refine.pt)
        f.refiner = load_refiner_state(refiner)
    # the fill settings chosen by the benchmark travel in their own block, the generation steps in the config
    f.cfg = f.cfg.replace(**(fill_config or {}))
    f.fill_settings = f.fill_settings.replace(**(fill_settings or {}))
    if generate_steps:
        g.cfg = g.cfg.replace(default_steps=int(generate_steps))
    extra = {**(extra or {}), **({"contrast_settings": other_settings} if others else {})}
    folder = resolve_weights(fill)
    kept = {c: e for c, e in read_manifest(folder).get("contrast_refiners", {}).items()
            if c not in (contrasts or {}) and fill_role(c) in others}
    orphans = sorted(set(contrast_refiners or {}) - {c for c in ("t2w", "flair") if fill_role(c) in others})
    if orphans:
        raise ValueError(f"refiners given for {orphans}, which these weights do not fill (add them with contrasts=)")
    by_source: dict[str, object] = {}  # one refiner serving several contrasts: loaded once, saved as one file

    def once(key, load):
        if key not in by_source:
            by_source[key] = load()
        return by_source[key]

    nets = {c: once(e["file"], lambda e=e: load_refiner(folder, e)) for c, e in kept.items()}
    nets.update({c: once(f"state:{spec}", lambda spec=spec: load_refiner_state(spec))
                 for c, spec in (contrast_refiners or {}).items()})
    return save_model(out, {"fill": f, **others, "generate": g}, extra=extra, contrast_refiners=nets)
