"""A filled raw BIDS dataset for the next BIDS app (``usb-prep --filled-dataset DIR``).

DIR is the input's tree with each filled image in place of its original, so fMRIPrep, sMRIPrep or FastSurfer
take it unchanged. It must never hand the next tool a lesioned brain labelled as filled, so DIR keeps its own
record (:data:`RECORD`: the input it was written from, and which run filled which image with what, by sha256):

* a rerun that does not run a subject keeps that subject's fill as the last successful run left it (checked by
  its sha256; a file changed since is replaced by its original and loses its claim, and the caller names it);
* a subject that fails in a run loses its fill and its claim (the original, its own sidecar, its own ROI);
* DIR written from another input is refused, as is DIR equal to or inside the output or work folder.

Sidecars of filled images say how (``LesionFilling``: the derivative sidecar's settings, weights and refiner
sha256, version, run); ``DatasetLinks`` names the unfilled input (``bids:unfilled:``; ``raw`` means DIR itself
inside fMRIPrep). ROIs are copies, never links shared with the derivatives. No Nipype here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Mapping

from .bids import AnatInput, build_name, copy_derivative, write_json
from .io import atomic_write, sidecar_path

SKIP = ("derivatives",)  # top-level folders of the input not carried over (BIDS apps ignore them)
RECORD = "code/usb_prep/filled.json"  # DIR's own record (BIDS keeps code/ out of validation and of the apps)
LINK = "unfilled"  # the DatasetLinks name of the input


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_record(out_dir) -> dict | None:
    """DIR's record, or None when DIR has none (new, or not written by usb_prep)."""
    try:
        return json.loads((Path(out_dir) / RECORD).read_text())
    except (OSError, ValueError):
        return None


def check_dir(out_dir, bids_dir, *, forbidden: Mapping[str, Path] | None = None) -> None:
    """Refuse (``ValueError``) a DIR that is the input, lies inside it (but for its ``derivatives/``), holds it,
    equals or lies inside one of ``forbidden`` (``{"output folder": path, ...}``), holds files usb_prep did not
    write, or was written from another input."""
    out, src = Path(out_dir).absolute(), Path(bids_dir).absolute()
    if out == src or src in out.parents and out.relative_to(src).parts[0] not in SKIP or out in src.parents:
        raise ValueError(f"--filled-dataset {out_dir}: must lie outside the input dataset {bids_dir} "
                         "(or in its derivatives/ folder)")
    for what, path in (forbidden or {}).items():
        path = Path(path).absolute()
        if out == path or path in out.parents or out in path.parents:
            raise ValueError(f"--filled-dataset {out_dir}: must lie outside the {what} {path} (raw and derivative "
                             "files would mix); choose another folder")
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--filled-dataset {out_dir}: exists and is not a folder")
    if not any(out.iterdir()):
        return
    record = read_record(out)
    if record is None and _generated_by_usb_prep(out):
        raise ValueError(f"--filled-dataset {out_dir}: was written by an older usb_prep, without the record "
                         f"({RECORD}) that says which run filled which image, so its fills cannot be checked; "
                         "choose a new folder (or remove this one to write it anew)")
    if record is None:
        raise ValueError(f"--filled-dataset {out_dir}: exists and was not written by usb_prep; choose an empty or "
                         "new folder")
    if record.get("source") != src.as_uri():
        raise ValueError(f"--filled-dataset {out_dir}: was written from another input ({record.get('source')}), "
                         f"not {src.as_uri()}; choose another folder")


def _generated_by_usb_prep(out: Path) -> bool:
    """Whether DIR's ``dataset_description.json`` names usb_prep among its generators."""
    try:
        desc = json.loads((out / "dataset_description.json").read_text())
    except (OSError, ValueError):
        return False
    gens = desc.get("GeneratedBy") if isinstance(desc, dict) else None
    return isinstance(gens, list) and any(isinstance(g, dict) and g.get("Name") == "usb_prep" for g in gens)


def roi_name(entry: AnatInput, mask_kind: str = "lesion") -> str:
    """Where DIR keeps ``entry``'s mask: ``<anat>/sub-X[_ses-Y][...]_label-<kind>_roi.nii.gz``."""
    ents = {k: v for k, v in entry.entities.items() if k != "suffix"}
    ents["label"] = mask_kind
    return f"{entry.anat_dir}/{build_name(ents, 'roi')}"


def _link(src: Path, dst: Path) -> bool:
    """A hard link to an input file (no space, safe in containers, unlike symlinks), a copy across file systems.
    False when ``dst`` is that file already (nothing written)."""
    try:
        if os.path.samefile(src, dst):
            return False
    except OSError:
        pass
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return True


def _restore(src: Path, out: Path, rel: str) -> None:
    """``rel`` in DIR as it is in the input (removed where the input has no such file)."""
    if (src / rel).exists():
        _link(src / rel, out / rel)
    elif (out / rel).exists():
        (out / rel).unlink()


def write(bids_dir, out_dir, filled: Mapping[Path, Path], entries: Iterable[AnatInput], *, version: str,
          run: str, mask_kind: str = "lesion", failed: Iterable[Path] = (), settings: Mapping | None = None,
          forbidden: Mapping[str, Path] | None = None) -> dict:
    """Write DIR (``out_dir``) from the input ``bids_dir``.

    ``filled``: raw image -> its filled derivative (this run's successes; the derivative's sidecar holds the
    fill's settings); ``entries``: their :class:`AnatInput` (``mask``: the mask used, on the image's grid);
    ``failed``: raw images whose fill failed in this run (an earlier fill of theirs is withdrawn).
    Returns counts (``filled``, ``masks``, ``linked``: other files written) and the raw names (relative to the
    input) of earlier fills ``kept`` and of claims ``withdrawn``.
    """
    src, out = Path(bids_dir).absolute(), Path(out_dir).absolute()
    check_dir(out, src, forbidden=forbidden)
    record = read_record(out) or {}
    images = dict(record.get("images", {}))
    filled = {Path(k).absolute().relative_to(src).as_posix(): Path(v) for k, v in filled.items()}
    entries = {e.image.absolute().relative_to(src).as_posix(): e for e in entries}
    failed = {Path(p).absolute().relative_to(src).as_posix() for p in failed}
    kept, withdrawn = [], []
    for rel, info in sorted(images.items()):  # earlier fills: keep those untouched since, withdraw the rest
        if rel in filled:
            continue
        target = out / rel
        intact = rel not in failed and (src / rel).exists() and target.exists() and sha256(target) == info["sha256"]
        if intact:
            kept.append(rel)
            continue
        withdrawn.append(rel)
        for name in (rel, sidecar_path(rel).as_posix(), info.get("roi")):
            if name:
                _restore(src, out, name)
        del images[rel]
    own = set()  # DIR's files this run writes or keeps: never linked over
    for rel in kept:
        own |= {rel, sidecar_path(rel).as_posix(), images[rel].get("roi") or ""}
    for rel in filled:
        own |= {rel, sidecar_path(rel).as_posix(), roi_name(entries[rel], mask_kind)}
    counts = {"filled": 0, "masks": 0, "linked": 0}
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if (rel.parts[0] in SKIP or rel.parts[0].startswith(".git") or path == out or out in path.parents
                or path.is_dir() or rel.as_posix() in own):
            continue
        if len(rel.parts) == 1 and rel.name in ("dataset_description.json", ".bidsignore"):
            continue
        counts["linked"] += _link(path, out / rel)
    rois = {}
    for rel, derivative in filled.items():
        entry = entries[rel]
        copy_derivative(derivative, out / rel)
        counts["filled"] += 1
        raw_side, derived_side = src / sidecar_path(rel), sidecar_path(derivative)
        data = json.loads(raw_side.read_text()) if raw_side.exists() else {}
        how = json.loads(derived_side.read_text()).get("LesionFilling", {}) if derived_side.exists() else {}
        data["LesionFilling"] = {
            **dict(settings or {}), **how, "GeneratedBy": f"usb_prep {version}", "Run": run,
            "Source": f"bids:{LINK}:{rel}",
            "Description": f"voxels of the {mask_kind} mask replaced by usb_prep's fill; every other voxel as in "
                           "the source"}
        write_json(out / sidecar_path(rel), data)
        images[rel] = {"run": run, "sha256": sha256(out / rel)}
        if entry.mask is not None:
            rois.setdefault(roi_name(entry, mask_kind), []).append((entry.suffix != "T1w", rel, entry.mask))
    for roi, users in rois.items():  # one roi per session: the T1w's mask wins
        _, _, mask = sorted(users)[0]
        copy_derivative(mask, out / roi)
        counts["masks"] += 1
        for _, rel, _ in users:
            images[rel]["roi"] = roi
    ignore = src / ".bidsignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    pattern = f"*_label-{mask_kind}_roi.nii*"
    ignore_text = "\n".join(lines + ([pattern] if pattern not in lines else [])) + "\n"
    atomic_write(out / ".bidsignore", lambda tmp: Path(tmp).write_text(ignore_text))
    runs = {**record.get("runs", {}), run: {"version": version, "settings": dict(settings or {})}}
    runs = {k: v for k, v in runs.items() if any(i["run"] == k for i in images.values())}
    write_json(out / RECORD, {"source": src.as_uri(), "images": images, "runs": runs})
    write_json(out / "dataset_description.json", description(src, version=version))
    return {**counts, "kept": kept, "withdrawn": withdrawn}


def description(bids_dir, *, version: str) -> dict:
    """DIR's ``dataset_description.json``: the input's, as a raw dataset generated by usb_prep, with
    ``DatasetLinks`` for the ``bids:unfilled:`` URIs its sidecars use."""
    src = Path(bids_dir)
    try:
        desc = json.loads((src / "dataset_description.json").read_text())
    except (OSError, ValueError):
        desc = {}
    name = desc.get("Name", src.name)
    desc.update({
        "Name": f"{name} (lesion-filled by usb_prep)",
        "BIDSVersion": desc.get("BIDSVersion", "1.10.0"),
        "DatasetType": "raw",
        "GeneratedBy": [*desc.get("GeneratedBy", []),
                        {"Name": "usb_prep", "Version": version,
                         "Description": "anatomical images with lesions filled; lesion masks as _roi files; "
                                        f"which run filled which image: {RECORD}"}],
        "SourceDatasets": [{"URL": src.absolute().as_uri()}],
        "DatasetLinks": {**desc.get("DatasetLinks", {}), LINK: src.absolute().as_uri()},
    })
    return desc
