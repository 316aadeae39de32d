"""The fill's refiner (usb_prep.fill.refiner): identity at init, residual inside the mask only, its weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from usb_prep import api
from usb_prep.config import preset
from usb_prep.diffusion.model import USBModel
from usb_prep.fill.refiner import Refiner, refine_fill
from usb_prep.weights import WeightsError, load_model, save_model

torch.set_num_threads(1)


def _parts(shape=(30, 34, 28), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.uniform(0.2, 1.0, shape).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[2:7, 10:16, 3:9] = True  # near the edge: its crop reaches outside the image
    mask[18:25, 20:27, 15:22] = True  # a second lesion
    fills = [np.where(mask, rng.uniform(0, 1, shape), img).astype(np.float32) for _ in range(3)]
    blend = np.where(mask, 0.2 * fills[1] + 0.8 * fills[2], img).astype(np.float32)
    return img, mask, fills, blend


def _biased(bias: float) -> Refiner:
    net = Refiner().eval()
    with torch.no_grad():
        net.out.bias.fill_(bias)
    return net


def test_untrained_refiner_returns_the_blend():
    img, mask, fills, blend = _parts()
    out = refine_fill(Refiner().eval(), img, mask, *fills, blend)
    assert out.shape == (mask.sum(),)
    assert np.allclose(out, blend[mask], atol=1e-6)


def test_refiner_residual_lands_inside_every_lesion():
    img, mask, fills, blend = _parts()
    out = refine_fill(_biased(0.1), img, mask, *fills, blend)
    assert np.allclose(out, blend[mask] + 0.1, atol=1e-5)  # both lesions, the edge one included


def test_refiner_weights_round_trip_and_checksum(tmp_path):
    torch.manual_seed(0)
    m = USBModel(preset("tiny")).eval()
    m.refiner = _biased(0.05)
    folder = save_model(tmp_path / "w", {"fill": m, "generate": m})
    man = json.loads((folder / "usb.json").read_text())
    assert man["refiner"]["file"] == "refine.safetensors" and man["refiner"]["channels"] == [16, 32, 48]
    from safetensors.torch import load_file

    assert not any(k.startswith("refiner.") for k in load_file(str(folder / man["models"]["fill"]["file"])))
    fill, info = load_model(folder, "fill")
    gen, gen_info = load_model(folder, "generate")
    assert gen.refiner is None and "refiner_sha256" not in gen_info
    assert info["refiner_sha256"] == man["refiner"]["sha256"]
    sd0, sd1 = m.refiner.state_dict(), fill.refiner.state_dict()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    f = folder / "refine.safetensors"
    f.write_bytes(f.read_bytes()[:-4] + b"abcd")
    with pytest.raises(WeightsError, match="checksum"):
        load_model(folder, "fill")


def test_fill_array_applies_the_models_refiner():
    from conftest import phantom

    torch.manual_seed(0)
    model = USBModel(preset("tiny")).eval()
    img, les, _, aff = phantom()
    v, m = (img / img.max()).astype(np.float32), les.astype(bool)
    kw = dict(model=model, steps=2, device="cpu", affine=aff, seed=3, patch_weight=0.2, nlm_weight=0.8)
    plain = api.fill_array(v, m, **kw)
    model.refiner = _biased(0.1)
    refined = api.fill_array(v, m, **kw)
    assert np.allclose(refined[m], plain[m] + 0.1, atol=1e-5)
    assert np.array_equal(refined[~m], v[~m])
    assert np.array_equal(api.fill_array(v, m, refine=False, **kw), plain)
    # it reads both patch fills: they are computed even where the blend gives one no weight (never skipped silently)
    no_patch = {**kw, "patch_weight": 0.0}
    assert np.allclose(api.fill_array(v, m, **no_patch)[m], api.fill_array(v, m, refine=False, **no_patch)[m] + 0.1,
                       atol=1e-5)


def _tiny_cohort(root):
    import nibabel as nib

    n = 32
    aff = np.eye(4)
    aff[:3, 3] = -(n - 1) / 2
    ijk = np.indices((n, n, n)).transpose(1, 2, 3, 0)

    def ball(c, r):
        return np.sqrt(((ijk - np.asarray(c)) ** 2).sum(-1)) <= r

    brains, masks = root / "brains", root / "masks" / "soop"
    brains.mkdir(parents=True)
    masks.mkdir(parents=True)
    rng = np.random.default_rng(0)
    brain = ball((15.5, 15.5, 15.5), 13)
    img = np.where(brain, 0.8 + 0.05 * rng.standard_normal((n, n, n)), 0).astype(np.float32)
    img[ball((15.5, 15.5, 15.5), 4)] = 0.3
    nib.Nifti1Image(img, aff).to_filename(str(brains / "alpha_T1w.nii.gz"))
    nib.Nifti1Image(brain.astype(np.uint8), aff).to_filename(str(brains / "alpha_brainmask.nii.gz"))
    for i, c in enumerate([(10, 12, 14), (20, 18, 15), (12, 20, 18), (18, 10, 12), (14, 14, 20)]):
        nib.Nifti1Image(ball(c, 3.5).astype(np.uint8), aff).to_filename(str(masks / f"sub-{i:02d}_lesion.nii.gz"))
    (root / "masks" / "ms").mkdir()
    for i in (1, 2, 3):  # thin elongated "MS" lesions
        ms = np.zeros((n, n, n), np.uint8)
        ms[7 + 4 * i:10 + 4 * i, 10:22, 13:17] = 1
        nib.Nifti1Image(ms, aff).to_filename(str(root / "masks" / "ms" / f"ms_patient0{i}_mask_MNI.nii.gz"))
    torch.manual_seed(0)
    m = USBModel(preset("tiny")).eval()
    weights = save_model(root / "w", {"fill": m, "generate": m})
    return brains, root / "masks", weights


def test_refiner_stage_makes_cases_and_trains(tmp_path):
    from usb_prep.train.refiner import RefinerConfig, generate, load_cases, train_refiner

    brains, masks, weights = _tiny_cohort(tmp_path)
    cfg = RefinerConfig(brains=str(brains), masks=str(masks), out=str(tmp_path / "run"), fill_weights=str(weights),
                        cases=3, min_ml=0.05, min_voxels=20, workers=0, iterations=4, log_every=2, batch_size=2)
    assert generate(cfg) == 3
    files = sorted((tmp_path / "run" / "cases").glob("*.npz"))
    assert [f.name for f in files] == ["0000.npz", "0001.npz", "0002.npz"]
    with np.load(files[0]) as z:
        m, img, truth = z["mask"], z["img"], z["truth"]
        assert m.any() and (~m).any()  # the crop keeps known voxels around the lesion
        assert np.array_equal(img[~m], truth[~m]) and not np.allclose(img[m], truth[m])  # painted in the mask only
        for key in ("u", "pf", "nf"):
            assert np.isfinite(z[key]).all() and np.array_equal(z[key][~m], img[~m])
    again = tmp_path / "again"
    generate(RefinerConfig(**{**cfg.to_dict(), "out": str(again), "cases": 1}))
    with np.load(files[0]) as a, np.load(again / "cases" / "0000.npz") as b:
        assert np.array_equal(a["img"], b["img"]) and np.array_equal(a["nf"], b["nf"])  # case i from its seed alone
    from usb_prep.train.refiner import _banks, make_case
    from usb_prep.train.diffusion import load_brains

    cohort = load_brains(brains)
    bank, ms_bank = _banks(cfg, cohort[0])
    assert ms_bank and {e["name"] for e in ms_bank} < {e["name"] for e in bank}
    model = load_model(weights, "fill", "cpu")[0]
    names = [make_case(i, cohort, bank, model, 20, ms_bank, 2)["mask_name"] for i in (0, 1, 3)]
    assert [str(v).startswith("ms_") for v in names] == [False, True, True]  # every 2nd case: an MS mask
    from usb_prep.train.refiner import large_bank

    cut = float(np.median([e["ml"] for e in bank]))
    assert large_bank(bank, cut) and all(e["ml"] >= cut for e in large_bank(bank, cut))
    one = [bank[0]]  # a pool of one mask: every large case draws it
    drawn = [make_case(i, cohort, bank, model, 1, ms_bank, 2, big_bank=one, large_every=3)["mask_name"]
             for i in (0, 6, 12)]  # i % 3 == 0 and not an MS case (i % 2 == 1)
    assert drawn == [bank[0]["name"]] * 3
    x, base, t, mk = load_cases(files[:1])[0]
    assert x.shape[0] == 5 and min(x.shape[1:]) >= 32 and base.shape == t.shape == mk.shape == x.shape[1:]
    path = train_refiner(cfg, progress=False)
    net = Refiner()
    net.load_state_dict(torch.load(path))
    assert net.out.weight.abs().sum() > 0  # it learnt something: the zero-initialised last layer moved
    start, net0 = tmp_path / "start.pt", _biased(0.1)
    torch.save(net0.state_dict(), start)
    tuned = train_refiner(RefinerConfig(**{**cfg.to_dict(), "init": str(start), "lr": 0.0, "iterations": 1}),
                          progress=False)
    sd, sd0 = torch.load(tuned), net0.state_dict()
    assert sd.keys() == sd0.keys() and all(torch.allclose(sd[k], sd0[k], atol=1e-6) for k in sd)  # lr 0: the start


def test_refiner_case_relative_loss(tmp_path):
    """case_relative weighs each window by its case's error before refining: another objective than the windows'
    log MSE (the trained weights differ), each case's denominator its base blend's in-mask MSE."""
    from usb_prep.train.refiner import RefinerConfig, base_mse, generate, load_cases, train_refiner

    with pytest.raises(ValueError, match="loss"):
        RefinerConfig(loss="l1")
    brains, masks, weights = _tiny_cohort(tmp_path)
    cfg = RefinerConfig(brains=str(brains), masks=str(masks), out=str(tmp_path / "run"), fill_weights=str(weights),
                        cases=3, min_ml=0.05, min_voxels=20, workers=0, iterations=3, log_every=10, batch_size=3,
                        lr=1e-2)
    generate(cfg)
    case = load_cases(sorted((tmp_path / "run" / "cases").glob("*.npz"))[:1])[0]
    _, base, t, m = case
    assert base_mse(case) == pytest.approx(float(((base - t)[m] ** 2).mean())) and base_mse(case) > 0
    a = torch.load(train_refiner(cfg, progress=False))
    b = torch.load(train_refiner(RefinerConfig(**{**cfg.to_dict(), "loss": "case_relative"}), progress=False))
    assert any(not torch.allclose(a[k], b[k]) for k in a)

def test_load_refiner_state_packaged_and_file(tmp_path):
    from usb_prep.weights import load_refiner_state

    packaged = load_refiner_state("packaged")
    shipped = load_model(None, "fill", "cpu")[0].refiner
    assert all(torch.equal(a, b) for a, b in zip(packaged.state_dict().values(), shipped.state_dict().values()))
    net = _biased(0.2)
    torch.save(net.state_dict(), tmp_path / "r.pt")
    back = load_refiner_state(tmp_path / "r.pt")
    assert torch.equal(back.out.bias, net.out.bias) and not back.training
    from safetensors.torch import save_file

    save_file(net.state_dict(), str(tmp_path / "refine.safetensors"))  # a checkpoint's bundled refiner
    assert torch.equal(load_refiner_state(tmp_path / "refine.safetensors").out.bias, net.out.bias)


def test_usb_train_refiner_stage_cli(tmp_path):
    from click.testing import CliRunner

    from usb_prep.cli.train import main

    brains, masks, weights = _tiny_cohort(tmp_path)
    cfg = tmp_path / "refiner.json"
    cfg.write_text(json.dumps({"stage": "refiner", "cases": 2, "min_ml": 0.05, "min_voxels": 20, "workers": 1,
                               "start_after": 0, "iterations": 2, "batch_size": 1}))
    res = CliRunner().invoke(main, ["--config", str(cfg), "--brains", str(brains), "--masks", str(masks),
                                    "--fill-weights", str(weights), "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "refine.pt").exists() and "refiner:" in res.output
    assert len(list((tmp_path / "run" / "cases").glob("*.npz"))) == 2
    bad = CliRunner().invoke(main, ["--config", str(cfg), "--brains", str(brains), "--masks", str(masks),
                                    "--iterations", "3", "--patch", "8"])
    assert bad.exit_code != 0 and "refiner stage" in bad.output


def test_refiner_flip_averaging_is_the_mean_over_flipped_inputs():
    from usb_prep.fill.refiner import FLIPS, _flip_mean

    torch.manual_seed(0)
    net = Refiner().eval()
    torch.nn.init.normal_(net.out.weight, std=0.1)  # not the zero start: a non-trivial residual
    x = torch.rand(1, 5, 32, 32, 32)
    with torch.no_grad():
        want = (net(x) + torch.flip(net(torch.flip(x, (2,))), (2,))) / 2
        assert torch.allclose(_flip_mean(net, FLIPS[:2])(x), want, atol=1e-6)
        assert not torch.allclose(want, net(x), atol=1e-4)  # the flip changed something
    img, mask, fills, blend = _parts()
    one, four = (refine_fill(net, img, mask, *fills, blend, flips=k) for k in (1, 4))
    assert one.shape == four.shape == (mask.sum(),) and not np.allclose(one, four)


def test_refiner_skips_windows_without_lesion_voxels_same_result(monkeypatch):
    """Scattered lesions: windows of the bounding box without mask voxels are not computed; the fill is the same."""
    from usb_prep.fill import refiner as R

    torch.manual_seed(0)
    net = R.Refiner().eval()
    torch.nn.init.normal_(net.out.weight, std=0.1)  # a refiner that changes the blend
    shape = (64, 64, 64)
    rng = np.random.default_rng(0)
    img = rng.random(shape).astype(np.float32)
    m = np.zeros(shape, bool)
    m[14:18, 14:18, 14:18] = m[38:42, 38:42, 38:42] = True  # diagonal lesions: one box, empty corners
    parts = [np.where(m, rng.random(shape), img).astype(np.float32) for _ in range(4)]
    calls = []
    net.register_forward_hook(lambda mod, i, o: calls.append(i[0].shape[0]))
    got = R.refine_fill(net, img, m, *parts)
    skipped = sum(calls)
    calls.clear()
    monkeypatch.setattr(R, "_only_lesion_windows", lambda predict: predict)  # every window, as MONAI alone does
    want = R.refine_fill(net, img, m, *parts)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(want, parts[3][m], atol=1e-3)  # the refiner did change the blend
    assert skipped < sum(calls)  # the empty middle of the box was not computed


def test_refiner_cases_of_other_contrasts_use_that_contrasts_model_and_blend(tmp_path):
    """contrast "T2w": the T1w brain mapped to T2w (CSF brighter than tissue), the lesion painted bright, the parts
    made by the fill_t2w model, whose blend (patch / nlm / model share) the case records and load_cases uses."""
    from usb_prep.fill.settings import MODEL_ONLY
    from usb_prep.train.refiner import RefinerConfig, generate, load_cases

    brains, masks, _ = _tiny_cohort(tmp_path)
    torch.manual_seed(1)
    m1, m2 = USBModel(preset("tiny")).eval(), USBModel(preset("tiny")).eval()
    weights = save_model(tmp_path / "w2", {"fill": m1, "fill_t2w": m2, "generate": m1},
                         extra={"contrast_settings": {"t2w": {**MODEL_ONLY, "patch_weight": 0.4, "nlm_weight": 0.5}}})
    cfg = RefinerConfig(brains=str(brains), masks=str(masks), out=str(tmp_path / "run"), fill_weights=str(weights),
                        cases=2, min_ml=0.05, min_voxels=20, workers=0, contrast="T2w")
    assert generate(cfg) == 2
    files = sorted((tmp_path / "run" / "cases").glob("*.npz"))
    with np.load(files[0]) as z:
        assert str(z["contrast"]) == "t2w" and np.allclose(z["blend"], [0.4, 0.5])
        m, img, truth = z["mask"], z["img"], z["truth"]
        tissue = truth[(truth > 0) & ~m]
        assert tissue.max() > 1.5 * np.median(tissue)  # the ventricle: CSF bright on T2w
        assert img[m].mean() > truth[m].mean()  # bright lesion
        want = 0.4 * z["pf"] + 0.5 * z["nf"] + 0.1 * z["u"]
    x, base, t, mk = load_cases(files[:1])[0]
    sl = tuple(slice(0, s) for s in want.shape)
    assert np.allclose(base[sl][m], want[m], atol=1e-5)


def test_refiner_cases_never_target_a_patients_own_lesion(tmp_path):
    """A patient brain's real lesion (and a 2-voxel shell) is no healthy truth: the placed masks leave it out."""
    from usb_prep.train.diffusion import load_brains
    from usb_prep.train.refiner import RefinerConfig, _banks, make_case

    brains, masks, weights = _tiny_cohort(tmp_path)
    cohort = load_brains(brains)
    cfg = RefinerConfig(brains=str(brains), masks=str(masks), min_ml=0.05)
    bank, _ = _banks(cfg, cohort[0])
    model = load_model(weights, "fill", "cpu")[0]
    free = [make_case(i, cohort, bank, model, 1) for i in range(4)]
    assert max(c["mask"].sum() for c in free if c is not None) > 27
    lesion = cohort[0]["brain"].copy()
    lesion[12:19, 12:19, 12:19] = False  # all but a 7^3 box is lesion: 3^3 voxels stay free of it and its shell
    cohort[0]["lesion"] = lesion
    cases = [make_case(i, cohort, bank, model, 1) for i in range(4)]
    assert all(c is None or c["mask"].sum() <= 27 for c in cases)


def test_stopping_a_refiner_run_stops_its_case_generators(tmp_path):
    """SIGTERM to ``usb-train --stage refiner`` ends the generating processes too: no case is written after it."""
    import signal
    import subprocess
    import sys
    import time

    brains, masks, weights = _tiny_cohort(tmp_path)
    cfg = tmp_path / "refiner.json"
    cfg.write_text(json.dumps({"stage": "refiner", "cases": 100000, "min_ml": 0.05, "min_voxels": 20, "workers": 1,
                               "gen_minutes": 10, "start_after": 10}))
    cases = tmp_path / "run" / "cases"
    proc = subprocess.Popen([sys.executable, "-c", "from usb_prep.cli.train import main; main()", "--config", str(cfg),
                             "--brains", str(brains), "--masks", str(masks), "--fill-weights", str(weights),
                             "--out", str(tmp_path / "run"), "--quiet"])
    try:
        t0 = time.time()
        while len(list(cases.glob("*.npz"))) < 2 and time.time() - t0 < 240:
            time.sleep(0.5)
        assert len(list(cases.glob("*.npz"))) >= 2, "no cases were generated"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) != 0
        n = len(list(cases.glob("*.npz")))
        time.sleep(4)
        assert len(list(cases.glob("*.npz"))) == n
    finally:
        proc.kill()


def test_refiner_run_ends_its_case_generators_when_training_ends(tmp_path):
    """Training over (its iterations done), ``usb-train --stage refiner`` returns at once: it does not wait out the
    generators' ``gen_minutes``, and no case is written after it."""
    import subprocess
    import sys
    import time

    brains, masks, weights = _tiny_cohort(tmp_path)
    cfg = tmp_path / "refiner.json"
    cfg.write_text(json.dumps({"stage": "refiner", "cases": 100000, "min_ml": 0.05, "min_voxels": 20, "workers": 1,
                               "gen_minutes": 10, "start_after": 0, "iterations": 2, "batch_size": 1}))
    cases = tmp_path / "run" / "cases"
    proc = subprocess.Popen([sys.executable, "-c", "from usb_prep.cli.train import main; main()", "--config", str(cfg),
                             "--brains", str(brains), "--masks", str(masks), "--fill-weights", str(weights),
                             "--out", str(tmp_path / "run"), "--quiet"])
    try:
        assert proc.wait(timeout=240) == 0
        assert (tmp_path / "run" / "refine.pt").exists()
        n = len(list(cases.glob("*.npz")))
        time.sleep(4)
        assert n >= 1 and len(list(cases.glob("*.npz"))) == n
    finally:
        proc.kill()
