"""BIDS helpers for the ``usb-prep`` app: inputs, derivative names, sidecars.

Plain ``pathlib`` globbing, so the app works without pybids (pybids parses
``label`` only with ``config=['bids', 'derivatives']``; we do not need it).
No Nipype here.

Inputs
------
* Anatomical images: ``sub-<l>[/ses-<l>]/anat/*_T1w.nii[.gz]`` (``_T2w``, ``_FLAIR`` when asked for).
* Masks (1 = lesion/artifact): ``sub-<l>[_ses-<l>]_label-lesion_roi.nii.gz``
  in ``anat/`` (fMRIPrep's convention), or, in a derivatives folder,
  ``sub-<l>[_ses-<l>]_..._label-lesion_..._mask.nii.gz``.  With
  ``mask_kind="artifact"``: ``label-artifact`` or ``desc-artifact``.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from .io import atomic_write, sidecar_path

MASK_KINDS = ("lesion", "artifact")
#: ``desc`` of the filled T1w per mask kind.
FILLED_DESC = {"lesion": "lesionfilled", "artifact": "artifactfilled"}
#: BIDS ``Type`` of the mask derivative per mask kind.
MASK_TYPE = {"lesion": "Lesion", "artifact": "ROI"}

_ENTITY_ORDER = (
    "sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo", "part",
    "hemi", "space", "res", "den", "label", "desc",
)
_ENTITY_RE = re.compile(r"([a-zA-Z]+)-([a-zA-Z0-9]+)")


def strip_label(label: str, prefix: str) -> str:
    """``'sub-01'`` -> ``'01'`` (the prefix is optional on the command line)."""
    label = str(label)
    return label[len(prefix) + 1:] if label.startswith(prefix + "-") else label


def parse_entities(path) -> dict:
    """Entities of a BIDS file name (``sub``, ``ses``, ``acq``, ..., ``suffix``)."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii", ".json", ".mgz"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    parts = name.split("_")
    ents = {}
    for part in parts[:-1]:
        m = _ENTITY_RE.fullmatch(part)
        if m:
            ents[m.group(1)] = m.group(2)
    ents["suffix"] = parts[-1]
    return ents


def build_name(entities: Mapping, suffix: str, extension: str = ".nii.gz") -> str:
    """Compose a BIDS file name with entities in the specification's order."""
    keys = [k for k in _ENTITY_ORDER if entities.get(k)]
    keys += [k for k in entities if k not in _ENTITY_ORDER and k != "suffix" and entities.get(k)]
    return "_".join([f"{k}-{entities[k]}" for k in keys] + [suffix]) + extension


#: BIDS suffixes of the anatomical images the app fills, and the fill's contrast for each.
SUFFIX_CONTRAST = {"T1w": "t1w", "T2w": "t2w", "FLAIR": "flair"}
#: pybids entity names a ``--bids-filter-file`` may use -> the file-name keys (fMRIPrep's filter file format).
FILTER_ENTITIES = {"subject": "sub", "session": "ses", "acquisition": "acq", "ceagent": "ce", "reconstruction": "rec",
                   "run": "run", "part": "part", "echo": "echo", "inversion": "inv", "space": "space"}


def read_bids_filters(path) -> dict[str, dict]:
    """A ``--bids-filter-file`` (JSON, fMRIPrep's format: ``{"t1w": {"session": "01", "acquisition": null}}``)
    as ``{suffix: {key: [values] or None}}`` for the suffixes of :data:`SUFFIX_CONTRAST`.

    Queries for other data (``bold``, ``fmap``...) are ignored; ``datatype`` must be ``anat`` and ``suffix``
    the query's own; a value is a label, a list of labels (any matches) or null (the entity must be absent).
    Anything else (regular expressions, unknown entities) raises ``ValueError``: silently ignoring a filter
    would process data the user excluded.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read the BIDS filter file {path}: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a BIDS filter file is a JSON object of queries (t1w, t2w, flair...)")
    by_query = {s.lower(): s for s in SUFFIX_CONTRAST}
    out = {}
    for query, flt in raw.items():
        suffix = by_query.get(str(query).lower())
        if suffix is None:
            continue
        if not isinstance(flt, dict):
            raise ValueError(f"{path}: query {query!r} must be an object of entities")
        rules = {}
        for key, value in flt.items():
            if key == "datatype":
                if value not in ("anat", ["anat"]):
                    raise ValueError(f"{path}: {query}.datatype must be 'anat' (got {value!r})")
                continue
            if key == "suffix":
                if value not in (suffix, [suffix]):
                    raise ValueError(f"{path}: {query}.suffix must be {suffix!r} (got {value!r})")
                continue
            short = FILTER_ENTITIES.get(key, key if key in FILTER_ENTITIES.values() else None)
            if short is None:
                raise ValueError(f"{path}: {query}: unsupported entity {key!r} (use: {', '.join(FILTER_ENTITIES)})")
            values = [value] if isinstance(value, (str, int)) else value
            if values is not None and not (isinstance(values, list) and all(isinstance(v, (str, int))
                                                                            for v in values)):
                raise ValueError(f"{path}: {query}.{key} must be a label, a list of labels or null (got {value!r})")
            rules[short] = None if values is None else [strip_label(str(v), short) for v in values]
        out[suffix] = rules
    return out


def passes_filter(entities: Mapping, rules: Mapping | None) -> bool:
    """Whether a file's entities (:func:`parse_entities`) satisfy one query's rules (:func:`read_bids_filters`)."""
    def norm(key, v):  # run and echo are indices: run-01 is run 1
        return (v.lstrip("0") or "0") if key in ("run", "echo") else v

    for key, values in (rules or {}).items():
        have = entities.get(key)
        if values is None:
            if have is not None:
                return False
        elif have is None or norm(key, have) not in {norm(key, v) for v in values}:
            return False
    return True


@dataclass
class AnatInput:
    """One anatomical image (T1w, T2w or FLAIR) to fill and its mask (``mask`` None when not found)."""

    subject: str
    session: str | None
    image: Path
    mask: Path | None
    entities: dict = field(default_factory=dict)

    @property
    def suffix(self) -> str:
        """The image's BIDS suffix (T1w, T2w, FLAIR)."""
        return self.entities.get("suffix", "T1w")

    @property
    def contrast(self) -> str:
        """The fill's contrast name for the image (t1w, t2w, flair)."""
        return SUFFIX_CONTRAST[self.suffix]

    @property
    def key(self) -> str:
        """``sub-01[_ses-1][_acq-x][_run-1][_FLAIR]``: unique, used for node names (T1w, the usual image,
        has no suffix in its key)."""
        key = build_name({k: v for k, v in self.entities.items() if k != "suffix"}, "", "").rstrip("_")
        return key if self.suffix == "T1w" else f"{key}_{self.suffix}"

    @property
    def anat_dir(self) -> str:
        """Relative output folder: ``sub-01[/ses-1]/anat``."""
        parts = [f"sub-{self.subject}"] + ([f"ses-{self.session}"] if self.session else []) + ["anat"]
        return "/".join(parts)


def t1w_guides(entries: Iterable[AnatInput]) -> dict[str, str]:
    """``{key of a T2w/FLAIR entry: key of the T1w entry that guides its fill}``: the session's one T1w with the
    same mask file (its filled image then holds healthy tissue where the other image's mask is)."""
    entries = list(entries)
    out = {}
    for e in entries:
        if e.suffix == "T1w" or e.mask is None:
            continue
        same = (e.subject, e.session, e.mask)
        t1 = [t for t in entries if t.suffix == "T1w" and (t.subject, t.session, t.mask) == same]
        if len(t1) == 1:
            out[e.key] = t1[0].key
    return out


def _mask_matches(name: str, kind: str, derivatives: bool) -> bool:
    if derivatives:
        return (f"_label-{kind}" in name or f"_desc-{kind}" in name) and name.endswith(("_mask.nii.gz", "_mask.nii"))
    return f"_label-{kind}_roi.nii" in name


def _find_mask(image_ents: dict, folders: Iterable[Path], kind: str, derivatives: bool) -> Path | None:
    """Best mask for an image: same sub/ses, then the most shared entities."""
    best, best_score = None, -1
    for folder in folders:
        if not folder.is_dir():
            continue
        for cand in sorted(folder.glob("sub-*")):
            if not _mask_matches(cand.name, kind, derivatives):
                continue
            ents = parse_entities(cand)
            if ents.get("sub") != image_ents.get("sub") or ents.get("ses") != image_ents.get("ses"):
                continue
            if ents.get("space") not in (None, "T1w", "orig"):
                continue
            clash = [k for k in ("acq", "run", "rec", "ce") if k in ents and ents[k] != image_ents.get(k)]
            if clash:
                continue
            score = sum(1 for k in ("acq", "run", "rec", "ce") if k in ents)
            if score > best_score:
                best, best_score = cand, score
    return best


def collect_anat(
    bids_dir,
    *,
    participant_labels: Iterable[str] | None = None,
    session_labels: Iterable[str] | None = None,
    mask_kind: str = "lesion",
    masks_dir=None,
    suffixes: Iterable[str] = ("T1w",),
    bids_filters: Mapping[str, Mapping] | None = None,
) -> tuple[list[AnatInput], list[str]]:
    """Find anatomical images (``suffixes``: T1w, T2w, FLAIR) and their masks.

    Parameters
    ----------
    bids_dir : path
        BIDS root.
    participant_labels, session_labels : iterable of str, optional
        Restrict to these (``sub-``/``ses-`` prefixes optional).
    mask_kind : {"lesion", "artifact"}
        Which masks to read.
    masks_dir : path, optional
        Derivatives folder holding ``_label-<kind>_..._mask`` files; searched
        before ``anat/``.
    suffixes : iterable of str
        Which images to fill (keys of :data:`SUFFIX_CONTRAST`); each uses the mask found for it.
    bids_filters : mapping, optional
        ``{suffix: rules}`` from :func:`read_bids_filters`: images of that suffix must pass its rules.

    Returns
    -------
    inputs : list of AnatInput
        One entry per image (``mask`` None when none was found).
    problems : list of str
        Subjects asked for but not found, or without any such image.
    """
    if mask_kind not in MASK_KINDS:
        raise ValueError(f"mask_kind must be one of {MASK_KINDS}")
    suffixes = list(dict.fromkeys(suffixes))
    bad = [s for s in suffixes if s not in SUFFIX_CONTRAST]
    if bad or not suffixes:
        raise ValueError(f"suffixes must be among {', '.join(SUFFIX_CONTRAST)}, got {bad or suffixes}")
    bids_dir = Path(bids_dir)
    subjects = sorted(p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir())
    problems = []
    if participant_labels:
        wanted = [strip_label(s, "sub") for s in participant_labels]
        problems += [f"sub-{s}: not found in {bids_dir}" for s in wanted if s not in subjects]
        subjects = [s for s in subjects if s in wanted]
    sessions_wanted = [strip_label(s, "ses") for s in session_labels] if session_labels else None
    inputs = []
    for sub in subjects:
        sdir = bids_dir / f"sub-{sub}"
        anat_dirs = [sdir / "anat"] + sorted(p / "anat" for p in sdir.glob("ses-*"))
        found = False
        for adir in anat_dirs:
            ses = adir.parent.name[4:] if adir.parent.name.startswith("ses-") else None
            if sessions_wanted is not None and ses not in sessions_wanted:
                continue
            for image in [p for sfx in suffixes for ext in (".nii.gz", ".nii")
                          for p in sorted(adir.glob(f"sub-*_{sfx}{ext}"))]:
                ents = parse_entities(image)
                if bids_filters and not passes_filter(ents, bids_filters.get(ents["suffix"])):
                    continue
                found = True
                folders = []
                if masks_dir is not None:
                    mdir = Path(masks_dir) / f"sub-{sub}"
                    folders += [mdir / f"ses-{ses}" / "anat", mdir / "anat"] if ses else [mdir / "anat"]
                    folders.append(Path(masks_dir))
                mask = _find_mask(ents, folders, mask_kind, derivatives=True) if folders else None
                if mask is None:
                    mask = _find_mask(ents, [adir], mask_kind, derivatives=False)
                inputs.append(AnatInput(sub, ses, image.absolute(), mask.absolute() if mask else None, ents))
        if not found:
            problems.append(f"sub-{sub}: no {' or '.join(suffixes)} image"
                            + (" passing the BIDS filter file" if bids_filters else ""))
    return inputs, problems


def derivative_name(entry: AnatInput, *, suffix: str, extension: str = ".nii.gz", **entities) -> str:
    """Relative derivative path for ``entry`` (e.g. ``desc="lesionfilled", suffix="T1w"``)."""
    ents = {k: v for k, v in entry.entities.items() if k != "suffix"}
    ents.update({k: v for k, v in entities.items() if v})
    return f"{entry.anat_dir}/{build_name(ents, suffix, extension)}"


def filled_name(entry: AnatInput, mask_kind: str = "lesion") -> str:
    """The filled image's derivative path: ``..._desc-lesionfilled_<suffix>.nii.gz``."""
    return derivative_name(entry, desc=FILLED_DESC[mask_kind], suffix=entry.suffix)


def mask_name(entry: AnatInput, mask_kind: str = "lesion", **entities) -> str:
    """The mask's derivative path: ``..._label-<kind>_mask.nii.gz`` (T1w); other images' masks say whose they
    are (``..._label-<kind>_desc-FLAIR_mask.nii.gz``), as one subject's T1w and FLAIR may both be filled."""
    desc = None if entry.suffix == "T1w" else entry.suffix
    return derivative_name(entry, label=mask_kind, suffix="mask", desc=desc, **entities)


def bids_uri(path, bids_dir, dataset: str = "raw") -> str:
    """``bids:<dataset>:<relative path>`` for a file of ``bids_dir``."""
    try:
        rel = Path(path).absolute().relative_to(Path(bids_dir).absolute())
    except ValueError:
        return Path(path).absolute().as_uri()
    return f"bids:{dataset}:{rel.as_posix()}"


def image_sidecar(sources: Iterable[str], *, skull_stripped: bool = False, settings: Mapping | None = None,
                  extra: Mapping | None = None) -> dict:
    """Sidecar for an image derivative (``Sources``, ``SkullStripped``, settings)."""
    out = {"Sources": list(sources), "SkullStripped": bool(skull_stripped)}
    if settings:
        out["LesionFilling"] = dict(settings)
    out.update(extra or {})
    return out


def mask_sidecar(sources: Iterable[str], *, mask_kind: str = "lesion", extra: Mapping | None = None) -> dict:
    """Sidecar for a mask derivative (``Type``, ``Sources``)."""
    out = {"Type": MASK_TYPE[mask_kind], "Sources": list(sources)}
    out.update(extra or {})
    return out


def dataset_description(*, version: str, bids_dir=None, code_url: str = "https://github.com/usb-prep/usb_prep",
                        name: str = "usb_prep", extra: Mapping | None = None) -> dict:
    """``dataset_description.json`` of the derivatives folder."""
    desc = {
        "Name": f"{name} - lesion filling outputs",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": name, "Version": version, "CodeURL": code_url}],
        "HowToAcknowledge": "Please cite usb_prep (unified lesion filling with a diffusion model).",
    }
    if bids_dir is not None:
        desc["DatasetLinks"] = {"raw": Path(bids_dir).absolute().as_uri()}
    desc.update(extra or {})
    return desc


def write_json(path, data: Mapping) -> str:
    """Write JSON atomically (temp file, then rename), with the usual mode (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return str(path.absolute())


def copy_derivative(src, dst, sidecar: Mapping | None = None) -> str:
    """Copy ``src`` to ``dst`` atomically (overwriting), with the usual mode, and write its sidecar."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
    if sidecar is not None:
        write_json(sidecar_path(dst), sidecar)
    return str(dst.absolute())


