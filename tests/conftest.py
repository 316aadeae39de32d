"""Shared fixtures: tiny synthetic volumes, tiny weights, markers."""

from __future__ import annotations

import json
import os
import stat
import sys

import numpy as np
import nibabel as nb
import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "gpu: needs a CUDA device")
    # tiny volumes gain nothing from threads, and OpenMP threads oversubscribed with other work
    # (nipype workers, ITK, a busy machine) slow torch down by an order of magnitude
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def _affine(shape, zooms=(1.0, 1.0, 1.0), origin=None):
    aff = np.diag(list(zooms) + [1.0])
    if origin is None:
        origin = -(np.asarray(shape[:3]) - 1) / 2 * np.asarray(zooms)
    aff[:3, 3] = origin
    return aff


def phantom(shape=(24, 28, 24), *, lesion_centre=(-4.0, 0.0, 2.0), lesion_radius=3.0, seed=0):
    """A brain-like phantom in RAS world mm: WM core, GM shell, ventricle, lesion.

    Returns ``(image, lesion, dseg, affine)``; ``lesion_centre`` in world mm
    (x < 0 is the left hemisphere).
    """
    rng = np.random.default_rng(seed)
    aff = _affine(shape)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    xyz = ijk @ aff[:3, :3].T + aff[:3, 3]
    radii = np.asarray(shape) / 2.0 - 2.0
    r = np.sqrt(((xyz / radii) ** 2).sum(-1))
    dseg = np.zeros(shape, np.uint8)
    dseg[r < 1.0] = 2          # GM
    dseg[r < 0.75] = 3         # WM
    vent = (np.abs(xyz[..., 0]) < 1.5) & (np.sqrt(xyz[..., 1] ** 2 + xyz[..., 2] ** 2) < 3.0)
    dseg[vent] = 1             # CSF
    img = np.select([dseg == 3, dseg == 2, dseg == 1], [100.0, 60.0, 20.0], 0.0)
    lesion = np.sqrt(((xyz - np.asarray(lesion_centre)) ** 2).sum(-1)) <= lesion_radius
    img[lesion] = 35.0
    img = img + rng.normal(0, 2.0, shape) * (dseg > 0)
    return img.astype(np.float32), lesion.astype(np.uint8), dseg, aff


@pytest.fixture
def make_nifti(tmp_path):
    """Factory: ``make_nifti(data, name, affine=None, zooms=...)`` -> path."""

    def _make(data, name="img.nii.gz", affine=None, zooms=(1.0, 1.0, 1.0), dtype=None):
        data = np.asarray(data)
        if dtype is not None:
            data = data.astype(dtype)
        aff = _affine(data.shape, zooms) if affine is None else affine
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        img = nb.Nifti1Image(data, aff)
        img.header.set_xyzt_units("mm", "sec")
        img.to_filename(str(path))
        return path

    return _make


@pytest.fixture
def lesion_case(make_nifti):
    """Paths of a phantom T1w, its lesion mask (left hemisphere) and a tissue dseg."""
    img, lesion, dseg, aff = phantom()
    return {
        "t1w": make_nifti(img, "t1w.nii.gz", affine=aff),
        "mask": make_nifti(lesion, "lesion.nii.gz", affine=aff),
        "dseg": make_nifti(dseg, "dseg.nii.gz", affine=aff),
        "affine": aff,
        "lesion": lesion,
    }


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """A weights folder with the ``tiny`` preset under both roles (random init)."""
    import torch

    from usb_prep.config import preset
    from usb_prep.diffusion.model import USBModel
    from usb_prep.weights import save_model

    import dataclasses

    torch.manual_seed(0)
    fill = USBModel(preset("tiny"))
    base = preset("cpu-gen")
    small = dict(channels=(8, 8), attention_levels=(False, False), norm_num_groups=4, num_head_channels=8)
    gen_cfg = base.replace(
        name="tiny-gen", grid=(16, 16, 16), voxel_mm=1.5,
        lesion_net=dataclasses.replace(base.lesion_net, **small),
        brain_net=dataclasses.replace(base.brain_net, **small),
    )
    gen = USBModel(gen_cfg)
    return str(save_model(tmp_path_factory.mktemp("weights"), {"fill": fill, "generate": gen}))


@pytest.fixture(scope="session")
def contrast_weights(tiny_weights, tmp_path_factory):
    """The tiny weights with a FLAIR fill (a second random model) and no T2w fill."""
    import torch

    from usb_prep.config import preset
    from usb_prep.diffusion.model import USBModel
    from usb_prep.weights import bundle, save_model

    torch.manual_seed(1)
    flair = save_model(tmp_path_factory.mktemp("flair_run"), {"fill": USBModel(preset("tiny"))})
    return str(bundle(tmp_path_factory.mktemp("contrast_weights"), fill=tiny_weights, generate=tiny_weights,
                      contrasts={"flair": flair}, contrast_settings={"flair": {"steps": 2, "patch_weight": 0.5}}))


STUB = '''#!{python}
"""Stub recon-all: records its arguments, lays out mri/*.mgz as recon-all does."""
import json, os, sys
import numpy as np, nibabel as nb
from scipy import ndimage

args = sys.argv[1:]
def opt(flag):
    return [args[i + 1] for i, a in enumerate(args) if a == flag]
subj, sd, inputs = opt("-subjid")[0], (opt("-sd") or [os.environ.get("SUBJECTS_DIR", ".")])[0], opt("-i")
root = os.path.join(sd, subj)
os.makedirs(os.path.join(root, "mri"), exist_ok=True)
os.makedirs(os.path.join(root, "scripts"), exist_ok=True)
with open(os.environ["STUB_RECON_LOG"], "a") as fh:
    fh.write(json.dumps(args) + "\\n")
raw = nb.load(inputs[0])
n = int(os.environ.get("STUB_CONFORM_N", "256"))
# conformed: n^3, 1 mm, LIA, centred on the input's centre (c_ras)
c_ras = nb.affines.apply_affine(raw.affine, (np.array(raw.shape[:3]) - 1) / 2.0)
m = np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])
aff = np.eye(4); aff[:3, :3] = m; aff[:3, 3] = c_ras - m @ np.full(3, n / 2.0)
vox2vox = np.linalg.inv(raw.affine) @ aff
data = raw.get_fdata(dtype=np.float32)
conf = ndimage.affine_transform(data, vox2vox[:3, :3], offset=vox2vox[:3, 3], output_shape=(n,) * 3, order=1)
xyz = nb.affines.apply_affine(aff, np.indices((n,) * 3).reshape(3, -1).T).reshape((n,) * 3 + (3,))
brain = conf > 10
left = xyz[..., 0] < c_ras[0]
aseg = np.where(brain, np.where(left, 2, 41), 0).astype(np.int32)
aparc = aseg.copy()
gm = brain & (conf < 80)
aparc[gm & left] = 1001
aparc[gm & ~left] = 2001
mri = os.path.join(root, "mri")
nb.MGHImage(data, raw.affine).to_filename(os.path.join(mri, "rawavg.mgz"))
nb.MGHImage(conf.astype(np.uint8), aff).to_filename(os.path.join(mri, "orig.mgz"))
nb.MGHImage(aseg, aff).to_filename(os.path.join(mri, "aseg.mgz"))
nb.MGHImage(aparc, aff).to_filename(os.path.join(mri, "aparc+aseg.mgz"))
'''


@pytest.fixture
def stub_recon_all(tmp_path, monkeypatch):
    """Put a stub ``recon-all`` on PATH; returns the file where it logs its arguments."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "recon-all"
    exe.write_text(STUB.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "recon_all_calls.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STUB_RECON_LOG", str(log))
    monkeypatch.setenv("STUB_CONFORM_N", "40")  # 256 in real recon-all; small here for speed
    return log


# --- a BIDS dataset (test_bids_app, test_handoff) ----------------------------------------------------
def write_nifti(path, data, aff):
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.Nifti1Image(data, aff).to_filename(str(path))


@pytest.fixture
def bids_ds(tmp_path):
    """sub-01 (no session) and sub-02 (ses-1), each with a T1w and a lesion ROI; sub-03 without mask."""
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "synthetic", "BIDSVersion": "1.10.0"}))
    (root / ".bidsignore").write_text("*_roi.nii.gz\n")
    for sub, ses, seed in (("01", None, 0), ("02", "1", 1), ("03", None, 2)):
        img, lesion, _, aff = phantom(seed=seed)
        anat = root / f"sub-{sub}" / (f"ses-{ses}/anat" if ses else "anat")
        prefix = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        write_nifti(anat / f"{prefix}_T1w.nii.gz", img, aff)
        if sub != "03":
            write_nifti(anat / f"{prefix}_label-lesion_roi.nii.gz", lesion, aff)
    return root


@pytest.fixture
def linear_plugin(tmp_path):
    path = tmp_path / "plugin.yml"
    path.write_text("plugin: Linear\nplugin_args: {}\n")
    return path
