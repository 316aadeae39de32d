"""Benchmark cases, shared by the benchmark scripts: held-out brains, held-out masks, two painting families,
the real NiftySeg (cached), metrics.

The commands import it as ``from .cases import ...`` (``python -m benchmarks COMMAND``).

Held-out brains (never in any training of the packaged weights, see the model card):
- ``otsu_head``: healthy adult T1w (niivue), prepared to MNI 1 mm by ``prepare_data.py``.
- ``ms07``: MS patient 07's T1w (open_ms_data, MNI 1 mm, skull-stripped); its own lesions (dilated by
  3 voxels) are left out of every painted mask, so the truth under a painted mask is its own healthy-appearing
  tissue.
Masks: the held-out split of ``usb_prep.data.splits`` (sha1 of the name mod 5 == 0).
"""
from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"
CATEGORIES = {  # name: (cohorts, min ml, max ml)
    "stroke_small": (("soop", "neglect"), 1.0, 10.0),
    "stroke_medium": (("soop", "neglect"), 10.0, 40.0),
    "stroke_large": (("soop", "neglect"), 40.0, 150.0),
    "ms": (("ms",), 0.5, 1e9),
}
# validation only (the benchmark's cases stay those of CATEGORIES): strokes larger than any benchmark case, as
# large as a tumour's inpainting region (the BraTS case's is 298 ml)
EXTRA_CATEGORIES = {"stroke_xl": (("soop", "neglect"), 150.0, 500.0)}
ALL_CATEGORIES = {**CATEGORIES, **EXTRA_CATEGORIES}
FAMILIES = ("train", "rim")  # lesion painting: the training synthesis; a CSF-like core whose rim leaves the mask


@dataclass
class Brain:
    name: str
    image: np.ndarray  # float32, brain / p99.5, background 0
    brain: np.ndarray  # bool
    affine: np.ndarray
    avoid: np.ndarray  # bool: real lesions (dilated) that painted masks must not cover
    source: str


@dataclass
class Case:
    brain: str
    category: str
    family: str
    mask_name: str
    image: np.ndarray  # painted input
    mask: np.ndarray  # what the fillers are given
    truth: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray
    results: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.brain}/{self.family}/{self.category}/{self.mask_name}"

    @property
    def volume_ml(self) -> float:
        return float(self.mask.sum() * abs(np.linalg.det(self.affine[:3, :3])) / 1000)

    @property
    def lesions(self) -> int:
        return int(ndimage.label(self.mask, np.ones((3, 3, 3)))[1])


def _normalised(data, brain):
    data = np.where(brain, data, 0).astype(np.float32)
    return data / np.float32(np.percentile(data[brain], 99.5))


def patient_brain(name: str, image_path: Path, lesion_path: Path, source: str) -> Brain:
    """A skull-stripped patient scan: brain = its non-zero voxels (holes filled) and its lesion; its own lesion,
    dilated by 3 voxels, is what painted masks must avoid."""
    img = nib.load(str(image_path))
    data = img.get_fdata(dtype=np.float32)
    les = np.asanyarray(nib.load(str(lesion_path)).dataobj) > 0.5
    brain = ndimage.binary_fill_holes(data > 0) | les
    avoid = ndimage.binary_dilation(les, iterations=3)
    return Brain(name, _normalised(data, brain), brain, img.affine, avoid, source)


def load_brain(name: str, data_dir: Path, brains_dir: Path) -> Brain:
    if name == "ms07":
        p = data_dir / "patients" / "ms07"
        return patient_brain(name, p / "T1w.nii.gz", p / "lesion_mask.nii.gz", f"{p}/T1w.nii.gz (held-out patient)")
    t1, bm = brains_dir / f"{name}_T1w.nii.gz", brains_dir / f"{name}_brainmask.nii.gz"
    if not (t1.exists() and bm.exists()):
        raise SystemExit(f"{t1} missing: run python -m benchmarks prepare --out {brains_dir}")
    img = nib.load(str(t1))
    brain = np.asanyarray(nib.load(str(bm)).dataobj) > 0.5
    return Brain(name, _normalised(img.get_fdata(dtype=np.float32), brain), brain, img.affine,
                 np.zeros(brain.shape, bool), f"{t1} (held-out healthy)")


def mask_on(path: Path, b: Brain) -> np.ndarray:
    from nibabel.processing import resample_from_to

    img = nib.load(str(path))
    img = nib.Nifti1Image((np.asanyarray(img.dataobj) > 0.5).astype(np.uint8), img.affine)
    m = np.asanyarray(resample_from_to(img, (b.image.shape, b.affine), order=0).dataobj) > 0
    return m & b.brain & ~b.avoid


def choose_masks(data_dir: Path, b: Brain, per_cat: int, skip: int = 0, categories: dict = CATEGORIES) -> dict:
    """Held-out masks per category of ``categories`` (sorted by name) whose volume on ``b`` fits; the first
    ``skip`` fitting ones of each category are passed over (the validation set takes masks after the benchmark's)."""
    from usb_prep.data.splits import list_masks

    vox_ml = abs(np.linalg.det(b.affine[:3, :3])) / 1000
    chosen = {c: [] for c in categories}
    seen = {c: 0 for c in categories}
    for path in list_masks(data_dir / "lesion_masks", split="heldout"):
        cats = [c for c, (coh, _, _) in categories.items() if path.parent.name in coh and len(chosen[c]) < per_cat]
        if not cats:
            continue
        m = mask_on(path, b)
        v = m.sum() * vox_ml
        for c in cats:
            if categories[c][1] <= v <= categories[c][2]:
                seen[c] += 1
                if seen[c] > skip:
                    chosen[c].append((path.name.split(".nii")[0], m))
                break
        if all(len(x) >= per_cat for x in chosen.values()):
            break
    return chosen


def paint(family: str, image, brain, mask, rng) -> np.ndarray:
    """A lesion painted into ``image`` under ``mask``.

    ``train``: :func:`usb_prep.data.synthesis.paint_lesion` (the training synthesis), confined to the mask.
    ``rim``: a family the model never saw: a CSF-like core (the 2nd percentile of the brain, with noise), and
    a partial-volume rim one voxel beyond the mask (half way to the core), as real masks often miss it.
    """
    if family == "train":
        from usb_prep.data.synthesis import paint_lesion

        out = paint_lesion(image, brain, mask, rng, contrast="T1w")
        out = out[0] if isinstance(out, tuple) else out
        return np.where(mask, out, image).astype(np.float32)
    csf = float(np.percentile(image[brain], 2))
    core = csf * (1 + 0.1 * rng.standard_normal(image.shape))
    rim = ndimage.binary_dilation(mask, iterations=1) & ~mask & brain
    out = np.where(mask, core, image)
    out = np.where(rim, 0.5 * (image + csf), out)
    return np.maximum(out, 0).astype(np.float32)


def make_cases(brains, data_dir: Path, per_cat: int, families=FAMILIES, seed0: int = 0, skip: int = 0, log=print,
               categories: dict = CATEGORIES):
    out = []
    for b in brains:
        chosen = choose_masks(data_dir, b, per_cat, skip, categories)
        for fam in families:
            for i, (cat, name, m) in enumerate((c, n, m) for c, v in chosen.items() for n, m in v):
                img = paint(fam, b.image, b.brain, m, np.random.default_rng(seed0 + i))
                out.append(Case(b.name, cat, fam, name, img, m, b.image, b.brain, b.affine))
        log(f"{b.name}: {sum(len(v) for v in chosen.values())} masks x {len(families)} families")
    return out


# ----------------------------------------------------------------------------- the real NiftySeg
def niftyseg_binary() -> str | None:
    """``seg_FillLesions`` built by ``../shared/tools/niftyseg/build.sh`` (or on PATH)."""
    for p in (os.environ.get("SEG_FILLLESIONS"), str(Path.home() / ".cache/niftyseg/bin/seg_FillLesions"),
              shutil.which("seg_FillLesions")):
        if p and os.access(p, os.X_OK):
            return p
    return None


def _key(*arrays) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def niftyseg_fill(image, mask, affine, cap_s: float = 600, threads: int = 2):
    """NiftySeg ``seg_FillLesions -i IMG -l MASK -o OUT`` (``threads`` OpenMP threads, killed after ``cap_s``).

    Returns ``(filled or None, info)``; ``info``: ``status`` ("ok", "did not finish", "failed"), ``seconds``
    (wall), ``cpu_s``. Cached by the inputs' bytes under ``cache/niftyseg/`` (its output never changes)."""
    binary = niftyseg_binary()
    if binary is None:
        return None, {"status": "not built (bash ../shared/tools/niftyseg/build.sh)", "seconds": None, "cpu_s": None}
    folder = CACHE / "niftyseg"
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / f"{_key(image, mask, affine)}.npz"
    if f.exists():
        with np.load(f, allow_pickle=False) as z:
            info = {"status": str(z["status"]), "seconds": float(z["seconds"]), "cpu_s": float(z["cpu_s"])}
            if info["status"] == "ok" or float(z["cap_s"]) >= cap_s:
                return (z["out"] if info["status"] == "ok" else None), info
    with tempfile.TemporaryDirectory() as tmp:
        ip, mp, op = (os.path.join(tmp, n) for n in ("img.nii.gz", "mask.nii.gz", "out.nii.gz"))
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), ip)
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), mp)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([binary, "-i", ip, "-l", mp, "-o", op], env=env, capture_output=True,
                                  timeout=cap_s)
            status = "ok" if proc.returncode == 0 and os.path.exists(op) else "failed"
        except subprocess.TimeoutExpired:
            status = "did not finish"
        sec = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        out = np.asarray(nib.load(op).dataobj, np.float32) if status == "ok" else np.zeros(1, np.float32)
    np.savez_compressed(f, out=out, status=status, seconds=sec, cpu_s=cpu, cap_s=cap_s)
    return (out if status == "ok" else None), {"status": status, "seconds": sec, "cpu_s": cpu}


# ----------------------------------------------------------------------------- metrics
def tissue_classes(truth, brain):
    """Three intensity classes (CSF / GM / WM) of the truth brain: the k-means thresholds."""
    from usb_prep.tissue import kmeans_1d

    centres, _ = kmeans_1d(truth[brain], 3)
    c = np.sort(centres)
    return (c[:-1] + c[1:]) / 2


def scores(out, case: Case, thresholds=None) -> dict:
    from usb_prep import metrics as M

    hi = float(case.truth[case.brain_mask].max())
    p, r = M.scale01(out, 0, hi), M.scale01(case.truth, 0, hi)
    res = {"psnr": M.masked_psnr(p, r, case.mask), "ssim": M.masked_ssim(p, r, case.mask),
           "mae": M.masked_mae(p, r, case.mask)}
    if thresholds is not None:
        a, b = (np.digitize(x[case.mask], thresholds) for x in (out, case.truth))
        res["tissue"] = float((a == b).mean())
    res["outside_identical"] = bool(np.allclose(out[~case.mask], case.image[~case.mask], atol=1e-4))
    return res


def laplace_fill(image, mask) -> np.ndarray:
    """Harmonic (Laplace) fill: each mask voxel the mean of its 6 neighbours, the known voxels fixed."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import cg

    out = np.array(image, np.float32, copy=True)
    idx = -np.ones(mask.shape, np.int64)
    pts = np.argwhere(mask)
    idx[mask] = np.arange(len(pts))
    rows, cols, rhs = [np.arange(len(pts))], [np.arange(len(pts))], np.zeros(len(pts))
    vals = [np.full(len(pts), 6.0)]
    for ax in range(3):
        for d in (-1, 1):
            q = pts.copy()
            q[:, ax] += d
            ok = (q[:, ax] >= 0) & (q[:, ax] < mask.shape[ax])
            qi = np.where(ok[:, None], q, 0)
            inside = ok & mask[tuple(qi.T)]
            known = ok & ~mask[tuple(qi.T)]
            rows.append(np.nonzero(inside)[0])
            cols.append(idx[tuple(qi[inside].T)])
            vals.append(-np.ones(inside.sum()))
            rhs[known] += image[tuple(qi[known].T)]
            rhs[~ok] += 0.0
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(len(pts), len(pts))).tocsr()
    x, _ = cg(a, rhs, x0=np.full(len(pts), float(image[~mask & (image > 0)].mean())), rtol=1e-6, maxiter=5000)
    out[mask] = x
    return out
