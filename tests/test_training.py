"""Training loop (usb_prep.train.diffusion) on a tiny synthetic cohort: runs, saves, resumes; DDP under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from usb_prep.data.splits import is_heldout_mask, list_masks
from usb_prep.train.diffusion import PairedLoss, TrainConfig, _decay, train
from usb_prep.weights import load_model

torch.set_num_threads(1)

N = 32


def _affine():
    aff = np.eye(4)
    aff[:3, 3] = -(N - 1) / 2
    return aff


def _ball(centre, radius):
    ijk = np.indices((N, N, N)).transpose(1, 2, 3, 0)
    return np.sqrt(((ijk - np.asarray(centre)) ** 2).sum(-1)) <= radius


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    brains, masks = root / "brains", root / "masks"
    (masks / "soop").mkdir(parents=True)
    brains.mkdir()
    aff = _affine()
    rng = np.random.default_rng(0)
    for i, name in enumerate(["alpha", "beta"]):
        brain = _ball((15.5, 15.5, 15.5), 13 - i)
        img = np.where(brain, 0.8 + 0.05 * rng.standard_normal((N, N, N)), 0).astype(np.float32)
        img[_ball((15.5, 15.5, 15.5), 4)] = 0.3  # a "ventricle"
        nib.Nifti1Image(img, aff).to_filename(str(brains / f"{name}_T1w.nii.gz"))
        nib.Nifti1Image(brain.astype(np.uint8), aff).to_filename(str(brains / f"{name}_brainmask.nii.gz"))
    names = [f"sub-{i:02d}_lesion.nii.gz" for i in range(8)]
    centres = [(10, 12, 14), (20, 18, 15), (12, 20, 18), (18, 10, 12), (14, 14, 20), (22, 16, 10), (9, 16, 16),
               (16, 22, 14)]
    for name, c in zip(names, centres):
        nib.Nifti1Image(_ball(c, 3.5).astype(np.uint8), aff).to_filename(str(masks / "soop" / name))
    train_masks = list_masks(masks, split="train")
    assert len(train_masks) >= 3, "the fixture needs training masks after the 20 % hold-out"
    assert len(train_masks) == sum(not is_heldout_mask(n) for n in names)
    return brains, masks


def _cfg(cohort, out, iterations, **kw):
    brains, masks = cohort
    return TrainConfig(preset="tiny", brains=str(brains), masks=str(masks), out=str(out), iterations=iterations,
                       batch_size=2, patch=16, threads=1, log_every=1, device="cpu", min_ml=0.05, **kw)


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]


def test_train_writes_checkpoint_log_weights_and_resumes(cohort, tmp_path):
    out = tmp_path / "run"
    w = train(_cfg(cohort, out, 3), progress=False)
    assert (out / "ckpt.pt").is_file()
    assert w == out / "weights" and (w / "usb.json").is_file()
    recs = _log(out)
    assert [r["iteration"] for r in recs] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in recs)
    assert {"lesion", "brain"} <= set(recs[0])
    model, info = load_model(w, "fill")
    assert model.cfg.name == "tiny"
    assert model.cfg.training["iterations_done"] == 3
    ck = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=False)
    assert ck["iteration"] == 3
    sha3 = info["sha256"]

    # resume: continues from iteration 3 to 5
    train(_cfg(cohort, out, 5), progress=False)
    assert [r["iteration"] for r in _log(out)] == [1, 2, 3, 4, 5]
    ck = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=False)
    assert ck["iteration"] == 5
    model5, info5 = load_model(w, "fill")
    assert model5.cfg.training["iterations_done"] == 5
    assert info5["sha256"] != sha3


def test_train_is_reproducible(cohort, tmp_path):
    """Same TrainConfig (same seed), same losses and weights, whatever the global torch RNG state."""
    torch.manual_seed(123)
    a = train(_cfg(cohort, tmp_path / "a", 2), progress=False)
    torch.manual_seed(456)
    b = train(_cfg(cohort, tmp_path / "b", 2), progress=False)
    la, lb = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    ma, _ = load_model(a, "fill")
    mb, _ = load_model(b, "fill")
    assert all(torch.equal(x, y) for x, y in zip(ma.state_dict().values(), mb.state_dict().values()))


def test_train_from_init_weights(cohort, tmp_path):
    """--init-weights starts from given weights (e.g. the packaged model) instead of random ones."""
    a = train(_cfg(cohort, tmp_path / "a", 2), progress=False)
    init, _ = load_model(a, "fill")
    out = tmp_path / "b"
    train(_cfg(cohort, out, 1, init_weights=str(a), lr=0.0, ema=1.0), progress=False)
    got, _ = load_model(out / "weights", "fill")
    # lr 0 and EMA 1: the exported weights are exactly the initial ones
    assert all(torch.equal(x, y) for x, y in zip(init.state_dict().values(), got.state_dict().values()))
    fresh = train(_cfg(cohort, tmp_path / "c", 1, lr=0.0, ema=1.0, seed=7), progress=False)
    other, _ = load_model(fresh, "fill")
    assert not all(torch.equal(x, y) for x, y in zip(init.state_dict().values(), other.state_dict().values()))


def test_hole_margins_per_sample():
    M = torch.zeros(3, 1, 9, 9, 9)
    M[:, :, 4, 4, 4] = 1
    h = PairedLoss.hole(M, torch.tensor([0, 1, 2]))
    assert [int(h[i].sum()) for i in range(3)] == [1, 27, 125]
    assert torch.equal(PairedLoss.hole(M, None), h[2:].expand(3, -1, -1, -1, -1))


def test_lr_decay_schedule():
    cfg = TrainConfig(iterations=1000)
    f = [_decay(i, cfg, 0.0) for i in range(0, 1001, 100)]
    assert f[0] == pytest.approx(0.01) and f[-1] == pytest.approx(0.1) and max(f) > 0.9
    assert all(a > b for a, b in zip(f[1:], f[2:]))  # decays after the warm-up
    # a minutes budget ends the schedule early
    assert _decay(200, TrainConfig(iterations=1000, minutes=1.0), 60.0) == pytest.approx(0.1)


def test_train_one_step_focus_margins_and_decay(cohort, tmp_path):
    """p_tmax, random hole margins and lr decay: runs, is reproducible, and the lr ends decayed."""
    kw = dict(p_tmax=1.0, p_fill=1.0, margins=(0, 1, 2), lr_decay=True, lr=1e-3, healthy_context=True)
    train(_cfg(cohort, tmp_path / "a", 3, **kw), progress=False)
    train(_cfg(cohort, tmp_path / "b", 3, **kw), progress=False)
    la, lb = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    train(_cfg(cohort, tmp_path / "c", 3, p_fill=1.0, lr=1e-3), progress=False)  # the plain objective differs
    assert [r["loss"] for r in la] != [r["loss"] for r in _log(tmp_path / "c")]
    ck = torch.load(tmp_path / "a" / "ckpt.pt", map_location="cpu", weights_only=False)
    assert ck["opt"]["param_groups"][0]["lr"] < 1e-3


def test_train_without_brains_fails_clearly(cohort, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = _cfg(cohort, tmp_path / "run", 1)
    cfg = TrainConfig(**{**cfg.to_dict(), "brains": str(empty)})
    with pytest.raises(FileNotFoundError, match="_T1w"):
        train(cfg, progress=False)


@pytest.mark.slow
def test_ddp_torchrun_two_processes(cohort, tmp_path):
    brains, masks = cohort
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           "-m", "usb_prep.cli.train", "--preset", "tiny", "--brains", str(brains), "--masks", str(masks),
           "--out", str(out), "--iterations", "2", "--batch-size", "2", "--patch", "16", "--threads", "1",
           "--device", "cpu", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=540, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (out / "weights" / "usb.json").is_file()
    model, _ = load_model(out / "weights", "fill")
    assert model.cfg.training["iterations"] == 2
    ck = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=False)
    assert ck["iteration"] == 2


def test_patient_brain_lesions_are_avoided_and_warps_keep_shapes(cohort, tmp_path):
    """A brain with NAME_lesionmask: synthetic holes stay off its lesion, which is marked invalid."""
    from usb_prep.config import preset
    from usb_prep.train.diffusion import PatchSampler, load_bank, load_brains

    brains_dir, masks = cohort
    folder = tmp_path / "brains"
    folder.mkdir()
    for suffix in ("T1w", "brainmask"):
        src = brains_dir / f"alpha_{suffix}.nii.gz"
        (folder / f"pat_{suffix}.nii.gz").write_bytes(src.read_bytes())
    lesion = _ball((15.5, 15.5, 15.5), 9)  # most of the brain: synthetic lesions overlap it often
    nib.Nifti1Image(lesion.astype(np.uint8), _affine()).to_filename(str(folder / "pat_lesionmask.nii.gz"))
    cfg = _cfg((folder, masks), tmp_path / "o", 1, p_spatial=1.0, p_empty=0.0)
    brains = load_brains(folder)
    assert brains[0]["lesion"].sum() == lesion.sum()
    sampler = PatchSampler(brains, load_bank(cfg, (N, N, N), _affine()), cfg, preset("tiny"))
    rng = np.random.default_rng(0)
    seen_invalid = seen_mask = 0
    for _ in range(20):
        s = sampler.sample(rng)
        assert set(s) == {"healthy", "patho", "mask", "mirror", "valid"}
        assert all(v.shape == (16, 16, 16) for v in s.values())
        assert not np.any((s["mask"] > 0) & (s["valid"] == 0))
        seen_invalid += int((s["valid"] == 0).any())
        seen_mask += int(s["mask"].any())
    assert seen_invalid and seen_mask
    from usb_prep.train.diffusion import GridSampler

    gcfg = preset("tiny", grid=(8, 8, 8), voxel_mm=4.0, context=False, mirror=False)
    with pytest.raises(RuntimeError, match="without lesions"):  # whole brains: patients are skipped
        GridSampler(brains, [], cfg, gcfg)


def test_loss_ignores_invalid_voxels():
    """Voxels where ``valid`` is 0 (real lesions of patient brains) carry no loss, lesion or brain."""
    from usb_prep.config import preset
    from usb_prep.diffusion.model import USBModel

    torch.manual_seed(0)
    loss = PairedLoss(USBModel(preset("tiny")), TrainConfig(preset="tiny"))
    g = torch.Generator().manual_seed(0)
    shape = (2, 1, 16, 16, 16)
    batch = {k: torch.rand(shape, generator=g) for k in ("healthy", "patho", "mirror")}
    batch["mask"] = (torch.rand(shape, generator=g) > 0.8).float()
    args = (torch.tensor([5, 900]), torch.randn(shape, generator=g), torch.randn(shape, generator=g),
            torch.tensor([1, 0]))
    total, parts = loss(dict(batch, valid=torch.ones(shape)), *args)
    assert parts["lesion"] > 0 and parts["brain"] > 0
    assert torch.allclose(total, loss(batch, *args)[0])  # all valid == no mask given
    half = torch.ones(shape)
    half[..., :8] = 0
    assert not torch.allclose(total, loss(dict(batch, valid=half), *args)[0])
    none, parts = loss(dict(batch, valid=torch.zeros(shape)), *args)
    assert none.item() == 0 and parts["lesion"].item() == 0 and parts["brain"].item() == 0


def test_sampler_synthesises_t2w_and_flair_with_bright_lesions(cohort, tmp_path):
    """contrast "T2w,FLAIR": both contrasts drawn, the ventricle brighter than tissue on T2w and darker on
    FLAIR, lesions painted brighter than the tissue they replace; generation models refuse it."""
    from usb_prep.config import preset
    from usb_prep.train.diffusion import GridSampler, PatchSampler, load_bank, load_brains

    brains_dir, masks = cohort
    cfg = _cfg(cohort, tmp_path / "o", 1, contrast="T2w,FLAIR", p_empty=0.0, p_spatial=0.0)
    brains = load_brains(brains_dir)
    sampler = PatchSampler(brains, load_bank(cfg, (N, N, N), _affine()), cfg, preset("tiny"))
    rng = np.random.default_rng(0)
    brighter = darker = bright_lesions = lesions = 0
    for _ in range(30):
        s = sampler.sample(rng)
        h, p, m = s["healthy"], s["patho"], s["mask"] > 0.5
        assert np.isfinite(h).all() and np.isfinite(p).all()
        vals = h[h > 0.05]
        if vals.size > 50:
            lo, hi = np.percentile(vals, (5, 95))
            brighter += int(hi > 1.5 * np.median(vals))  # T2w: CSF well above tissue
            darker += int(lo < 0.6 * np.median(vals))
        if m.sum() > 10:
            lesions += 1
            bright_lesions += int(p[m].mean() > h[m].mean())
    assert brighter and darker
    assert lesions and bright_lesions >= 0.8 * lesions
    with pytest.raises(ValueError, match="T1w only"):
        GridSampler(brains, [], cfg, preset("tiny", grid=(8, 8, 8), voxel_mm=4.0, context=False, mirror=False))


def test_real_t2w_scans_train_their_own_contrast_only(cohort, tmp_path):
    """A prepared NAME_T2w.nii.gz is read only for T2w runs and cut as it is (its lesion invalid), for
    p_native of the T2w samples; T1w brains serve every contrast."""
    from usb_prep.config import preset
    from usb_prep.train.diffusion import PatchSampler, load_bank, load_brains

    brains_dir, masks = cohort
    folder = tmp_path / "brains"
    folder.mkdir()
    for suffix in ("T1w", "brainmask"):
        (folder / f"alpha_{suffix}.nii.gz").write_bytes((brains_dir / f"alpha_{suffix}.nii.gz").read_bytes())
        (folder / f"pat_{suffix if suffix != 'T1w' else 'T2w'}.nii.gz").write_bytes(
            (brains_dir / f"beta_{suffix}.nii.gz").read_bytes())
    nib.Nifti1Image(_ball((15.5, 15.5, 15.5), 9).astype(np.uint8), _affine()).to_filename(
        str(folder / "pat_lesionmask.nii.gz"))
    assert [b["name"] for b in load_brains(folder)] == ["alpha"]
    assert [b["name"] for b in load_brains(folder, contrasts=("flair",))] == ["alpha"]
    brains = load_brains(folder, contrasts=("t2w",))
    assert [(b["name"], b["contrast"]) for b in brains] == [("alpha", "t1w"), ("pat", "t2w")]
    assert brains[1]["lesion"] is not None
    for p_native, expect_invalid in ((1.0, True), (0.0, False)):
        cfg = _cfg((folder, masks), tmp_path / "o", 1, contrast="T2w", p_native=p_native, p_empty=0.0)
        sampler = PatchSampler(brains, load_bank(cfg, (N, N, N), _affine()), cfg, preset("tiny"))
        rng = np.random.default_rng(0)
        invalid = [bool((sampler.sample(rng)["valid"] == 0).any()) for _ in range(8)]
        assert all(invalid) if expect_invalid else not any(invalid)
