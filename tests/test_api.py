"""The image API (usb_prep.api) with tiny random weights and real NIfTI files."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from usb_prep import api
from usb_prep.io import InputError, save_image

torch.set_num_threads(1)

STEPS = 2


def _raw(path_or_img):
    img = nib.load(str(path_or_img)) if not isinstance(path_or_img, nib.spatialimages.SpatialImage) else path_or_img
    dobj = img.dataobj
    return np.asanyarray(dobj.get_unscaled()) if hasattr(dobj, "get_unscaled") else np.asanyarray(dobj)


def _roundtrip(res_img, tmp_path, name="out.nii.gz"):
    p = save_image(res_img, tmp_path / name)
    return nib.load(str(p))


def _fill(case_paths, tiny_weights, **kw):
    if kw.get("method", "usb") == "usb":
        kw.setdefault("steps", STEPS)
    return api.fill_lesion(str(case_paths[0]), None if case_paths[1] is None else str(case_paths[1]),
                           weights=tiny_weights, device="cpu", num_threads=1, **kw)


def test_fill_keeps_outside_and_header(lesion_case, tiny_weights, tmp_path):
    res = _fill((lesion_case["t1w"], lesion_case["mask"]), tiny_weights, seed=0)
    inp = nib.load(str(lesion_case["t1w"]))
    out = _roundtrip(res.image, tmp_path)
    m = lesion_case["lesion"].astype(bool)
    assert out.shape == inp.shape
    assert out.get_data_dtype() == inp.get_data_dtype()
    assert np.array_equal(out.affine, inp.affine)
    assert out.header.get_zooms() == inp.header.get_zooms()
    assert out.header.get_xyzt_units() == inp.header.get_xyzt_units()
    raw_in, raw_out = _raw(inp), _raw(out)
    assert np.array_equal(raw_out[~m], raw_in[~m]), "voxels outside the mask must be bit-identical"
    assert not np.array_equal(raw_out[m], raw_in[m]), "the lesion was not filled"
    assert np.isfinite(raw_out).all()
    # the mask image comes back on the input grid, 1 = lesion
    assert np.array_equal(np.asarray(res.mask.dataobj).astype(bool), m)
    assert res.settings["weights"]["sha256"]
    assert res.settings["seed"] == 0 and res.settings["steps"] == STEPS
    assert res.settings["mask_voxels"] == int(m.sum())


def test_fill_same_seed_same_output_other_seed_differs(lesion_case, tiny_weights):
    paths = (lesion_case["t1w"], lesion_case["mask"])
    a = np.asarray(_fill(paths, tiny_weights, seed=3).image.dataobj)
    b = np.asarray(_fill(paths, tiny_weights, seed=3).image.dataobj)
    c = np.asarray(_fill(paths, tiny_weights, seed=4).image.dataobj)
    assert np.array_equal(a, b)
    m = lesion_case["lesion"].astype(bool)
    assert not np.array_equal(a[m], c[m])


def test_fill_int16_with_scaling_keeps_raw_values(tiny_weights, tmp_path):
    from conftest import phantom

    img, lesion, _, aff = phantom()
    raw = np.round(img).astype(np.int16)
    im = nib.Nifti1Image(raw, aff)
    im.header.set_slope_inter(2.0, 10.0)
    im.header.set_xyzt_units("mm", "sec")
    p = tmp_path / "int16.nii.gz"
    im.to_filename(str(p))
    loaded = nib.load(str(p))
    assert loaded.dataobj.slope == 2.0 and loaded.dataobj.inter == 10.0  # the fixture is what we think
    mp = tmp_path / "m.nii.gz"
    nib.Nifti1Image(lesion, aff).to_filename(str(mp))
    res = api.fill_lesion(str(p), str(mp), weights=tiny_weights, steps=STEPS, device="cpu", num_threads=1)
    out = _roundtrip(res.image, tmp_path)
    assert out.get_data_dtype() == np.int16
    assert out.dataobj.slope == 2.0 and out.dataobj.inter == 10.0
    m = lesion.astype(bool)
    ro, ri = _raw(out), _raw(loaded)
    assert np.array_equal(ro[~m], ri[~m])
    assert not np.array_equal(ro[m], ri[m])
    # the stored scaling still applies to every voxel (scaled = raw * 2 + 10)
    assert np.array_equal(np.asanyarray(out.dataobj), ro.astype(np.float64) * 2 + 10)


def test_empty_mask_copies_input_with_message(lesion_case, make_nifti, tiny_weights, tmp_path):
    empty = make_nifti(np.zeros(lesion_case["lesion"].shape, np.uint8), "empty.nii.gz", affine=lesion_case["affine"])
    res = _fill((lesion_case["t1w"], empty), tiny_weights)
    out = _roundtrip(res.image, tmp_path)
    assert np.array_equal(_raw(out), _raw(lesion_case["t1w"]))
    assert any("empty" in msg for msg in res.messages), res.messages


def test_mask_polarity_only_ones_change(lesion_case, make_nifti, tiny_weights, tmp_path):
    """An inverted mask (0 at the lesion, 1 elsewhere) fills the 1s and keeps the 0s: polarity is 1 = fill."""
    les = lesion_case["lesion"].astype(bool)
    inverted = make_nifti((~les).astype(np.uint8), "inv.nii.gz", affine=lesion_case["affine"])
    res = _fill((lesion_case["t1w"], inverted), tiny_weights)
    raw_in, raw_out = _raw(lesion_case["t1w"]), _raw(_roundtrip(res.image, tmp_path))
    assert np.array_equal(raw_out[les], raw_in[les]), "voxels with mask 0 must not change"
    assert (raw_out[~les] != raw_in[~les]).any()


def test_non_binary_mask_thresholded(lesion_case, make_nifti, tiny_weights, tmp_path):
    les = lesion_case["lesion"].astype(bool)
    soft = np.zeros(les.shape, np.float32)
    soft[les] = 0.7
    halo = ndimage.binary_dilation(les) & ~les
    soft[halo] = 0.3
    mp = make_nifti(soft, "soft.nii.gz", affine=lesion_case["affine"])
    res = _fill((lesion_case["t1w"], mp), tiny_weights)
    assert any("thresholded at 0.5" in msg for msg in res.messages), res.messages
    raw_in, raw_out = _raw(lesion_case["t1w"]), _raw(_roundtrip(res.image, tmp_path))
    assert np.array_equal(raw_out[~les], raw_in[~les]), "voxels at 0.3 are below the threshold"
    assert np.array_equal(np.asarray(res.mask.dataobj).astype(bool), les)


def test_mask_on_other_grid_needs_resample_mask(lesion_case, tiny_weights, tmp_path):
    les = lesion_case["lesion"]
    aff = lesion_case["affine"].copy()
    # the same lesion on a 2 mm grid
    les2 = les[::2, ::2, ::2]
    aff2 = aff.copy()
    aff2[:3, :3] *= 2
    mp = tmp_path / "mask_2mm.nii.gz"
    nib.Nifti1Image(les2.astype(np.uint8), aff2).to_filename(str(mp))
    with pytest.raises(InputError, match="--resample-mask"):
        _fill((lesion_case["t1w"], mp), tiny_weights)
    res = _fill((lesion_case["t1w"], mp), tiny_weights, resample_mask=True)
    assert any("resampled" in msg for msg in res.messages), res.messages
    m = np.asarray(res.mask.dataobj).astype(bool)
    assert m.shape == les.shape and m.any()
    raw_in, raw_out = _raw(lesion_case["t1w"]), np.asarray(res.image.dataobj)
    assert np.array_equal(raw_out[~m], raw_in[~m])


def test_mask_free_healing(lesion_case, tiny_weights):
    res = _fill((lesion_case["t1w"], None), tiny_weights)
    assert isinstance(res.image, nib.spatialimages.SpatialImage)
    assert res.image.shape == nib.load(str(lesion_case["t1w"])).shape
    assert res.messages and "no mask given" in res.messages[0]
    assert res.settings["mask_given"] is False
    found = np.asarray(res.mask.dataobj).astype(bool)
    raw_in, raw_out = _raw(lesion_case["t1w"]), np.asarray(res.image.dataobj)
    assert np.array_equal(raw_out[~found], raw_in[~found])


def test_classical_method_needs_mask(lesion_case, tiny_weights):
    with pytest.raises(ValueError, match="needs a mask"):
        _fill((lesion_case["t1w"], None), tiny_weights, method="wmstats")
    with pytest.raises(ValueError):
        _fill((lesion_case["t1w"], lesion_case["mask"]), tiny_weights, method="nope")


def test_embed_lesion_changes_only_dilated_mask(lesion_case, tiny_weights, tmp_path):
    from conftest import phantom

    healthy, les, _, aff = phantom(lesion_radius=0.0)  # radius 0: only the centre voxel -> nearly healthy
    hp = tmp_path / "healthy.nii.gz"
    nib.Nifti1Image(healthy, aff).to_filename(str(hp))
    res = api.embed_lesion(str(hp), str(lesion_case["mask"]), weights=tiny_weights, steps=STEPS, seed=0, device="cpu",
                           num_threads=1)
    m = lesion_case["lesion"].astype(bool)
    region = ndimage.binary_dilation(m, iterations=2)
    raw_in, raw_out = _raw(hp), np.asarray(res.image.dataobj)
    assert np.array_equal(raw_out[~region], raw_in[~region])
    assert not np.array_equal(raw_out[m], raw_in[m])
    assert res.image.shape == raw_in.shape and np.array_equal(res.image.affine, aff)
    assert res.settings["task"] == "embed" and res.settings["weights"]["sha256"]


def test_embed_lesion_normalises_as_filling_does(lesion_case, tiny_weights, tmp_path):
    """A z-scored image (negative background) is embedded as its unshifted original is, mapped back to its own
    intensities: the same model input, so the same lesion up to the z-scoring."""
    from conftest import phantom

    healthy, _, _, aff = phantom(lesion_radius=0.0)
    mu, sd = float(healthy.mean()), float(healthy.std())
    outs = {}
    for name, data in (("raw", healthy), ("z", (healthy - mu) / sd)):
        path = tmp_path / f"{name}.nii.gz"
        nib.Nifti1Image(data.astype(np.float32), aff).to_filename(str(path))
        outs[name] = api.embed_lesion(str(path), str(lesion_case["mask"]), weights=tiny_weights, steps=STEPS, seed=0,
                                      device="cpu", num_threads=1)
    z = outs["z"]
    assert z.settings["intensity_offset"] < 0 and any("negative intensities" in msg for msg in z.messages)
    m = lesion_case["lesion"].astype(bool)
    got, want = np.asarray(z.image.dataobj), (np.asarray(outs["raw"].image.dataobj) - mu) / sd
    assert np.allclose(got[m], want[m], atol=1e-3 * (want.max() - want.min()))


def test_generate_pair_on_model_grid(tiny_weights):
    brain, lesion = api.generate_pair(weights=tiny_weights, steps=STEPS, seed=0, device="cpu", num_threads=1)
    assert brain.shape == (16, 16, 16) and lesion.shape == (16, 16, 16)
    assert lesion.get_data_dtype() == np.uint8
    lv = np.asarray(lesion.dataobj)
    assert set(np.unique(lv)) <= {0, 1}
    bv = np.asarray(brain.dataobj)
    assert np.isfinite(bv).all() and bv.min() >= 0
    assert np.allclose(np.diag(brain.affine)[:3], 1.5)
    assert np.array_equal(brain.affine, lesion.affine)
    b2, _ = api.generate_pair(weights=tiny_weights, steps=STEPS, seed=0, device="cpu", num_threads=1)
    assert np.array_equal(np.asarray(b2.dataobj), bv)


def test_generate_from_mask(tiny_weights, tmp_path):
    m = np.zeros((20, 20, 20), np.uint8)
    m[8:12, 8:12, 8:12] = 1
    p = tmp_path / "m.nii.gz"
    nib.Nifti1Image(m, np.diag([1.2, 1.2, 1.2, 1]) @ np.array(
        [[1, 0, 0, -9.5], [0, 1, 0, -9.5], [0, 0, 1, -9.5], [0, 0, 0, 1]], float)).to_filename(str(p))
    brain = api.generate_from_mask(str(p), weights=tiny_weights, steps=STEPS, seed=0, device="cpu", num_threads=1)
    assert brain.shape == (16, 16, 16)
    assert np.isfinite(np.asarray(brain.dataobj)).all()


def test_generate_needs_a_generation_model(tiny_weights, tmp_path):
    from usb_prep.weights import load_model

    model, _ = load_model(tiny_weights, "fill")
    with pytest.raises(ValueError, match="grid"):
        api.generate_pair_array(model=model, steps=1)


def test_fill_array_keeps_outside_exactly():
    from conftest import phantom

    from usb_prep.config import preset
    from usb_prep.diffusion.model import USBModel

    torch.manual_seed(0)
    model = USBModel(preset("tiny")).eval()
    img, les, _, aff = phantom()
    v = img / img.max()
    out = api.fill_array(v, les.astype(bool), model=model, steps=STEPS, device="cpu", affine=aff)
    m = les.astype(bool)
    assert out.dtype == np.float32 and out.shape == v.shape
    assert np.array_equal(out[~m], v[~m].astype(np.float32))
    assert np.isfinite(out).all()
    assert not np.array_equal(out[m], v[m])


def _tiny_case():
    """An untrained tiny model (seed 0) and the phantom: (model, image, mask, affine, fill keywords)."""
    from conftest import phantom

    from usb_prep.config import preset
    from usb_prep.diffusion.model import USBModel

    torch.manual_seed(0)
    model = USBModel(preset("tiny")).eval()
    img, les, _, aff = phantom()
    v, m = (img / img.max()).astype(np.float32), les.astype(bool)
    return model, v, m, aff, dict(model=model, steps=STEPS, device="cpu", affine=aff, seed=3)


def test_patch_weight_averages_model_and_classical_fills():
    """patch_weight w: (1 - w) model fill + w patch fill in the mask; w = 1 is the patch filler itself."""
    from scipy import ndimage

    from usb_prep.fill.patchmatch import coarse_guide, fill_nlm, fill_patch
    from usb_prep.mirror import mirror_lr

    model, v, m, aff, kw = _tiny_case()
    alone = api.fill_array(v, m, patch_weight=0.0, **kw)
    classic = fill_patch(v, m, np.random.default_rng(3), brain=v > 0)
    assert np.allclose(api.fill_array(v, m, patch_weight=1.0, **kw)[m], classic[m], atol=1e-6)
    half = api.fill_array(v, m, patch_weight=0.5, **kw)
    assert np.allclose(half[m], 0.5 * alone[m] + 0.5 * classic[m], atol=1e-6)
    assert np.array_equal(half[~m], v[~m])
    assert not np.allclose(alone[m], classic[m])
    assert api.FillSettings.model_only().patch_weight == 0.0
    assert np.array_equal(api.fill_array(v, m, stages=("model",), **kw), alone)  # stage selection, not weights
    nlm = fill_nlm(v, m, brain=v > 0, guide=alone, search=15)  # guided by the model's fill
    assert np.allclose(api.fill_array(v, m, patch_weight=0.0, nlm_weight=1.0, **kw)[m], nlm[m], atol=1e-6)
    mix = api.fill_array(v, m, patch_weight=0.2, nlm_weight=0.5, **kw)
    assert np.allclose(mix[m], 0.3 * alone[m] + 0.2 * classic[m] + 0.5 * nlm[m], atol=1e-5)
    assert not np.allclose(nlm[m], classic[m])
    with pytest.raises(ValueError, match=r"patch_weight \+ nlm_weight"):
        api.fill_array(v, m, patch_weight=0.6, nlm_weight=0.6, **kw)
    # nlm_passes: the second pass is guided by the first pass's fill; nlm_coarse: the first by a coarse fill too
    opts = api.FillSettings.model_only()
    assert (opts.nlm_passes, opts.nlm_coarse, opts.smooth) == (1, False, 0.0)
    first = v.copy()
    first[m] = 0.2 * classic[m] + 0.8 * fill_nlm(v, m, brain=v > 0, guide=alone, search=15)[m]
    second = 0.2 * classic[m] + 0.8 * fill_nlm(v, m, brain=v > 0, guide=first, search=15)[m]
    two = api.fill_array(v, m, patch_weight=0.2, nlm_weight=0.8, nlm_passes=2, **kw)
    assert np.allclose(two[m], second, atol=1e-5) and not np.allclose(two[m], first[m], atol=1e-3)
    assert np.array_equal(two[~m], v[~m])
    guide = 0.5 * alone + 0.5 * coarse_guide(v, m, brain=v > 0, search=15)
    coarse = api.fill_array(v, m, patch_weight=0.0, nlm_weight=1.0, nlm_coarse=True, **kw)
    assert np.allclose(coarse[m], fill_nlm(v, m, brain=v > 0, guide=guide, search=15)[m], atol=1e-5)
    # nlm_mirror: candidates also from the brain mirrored across the midline (the affine's L-R axis)
    assert api.FillSettings.model_only().nlm_mirror is False
    mirrored = mirror_lr(v, aff, exclude=m)
    mir = api.fill_array(v, m, patch_weight=0.0, nlm_weight=1.0, nlm_mirror=True, **kw)
    assert np.allclose(mir[m], fill_nlm(v, m, brain=v > 0, guide=alone, extra=mirrored, search=15)[m], atol=1e-5)
    assert not np.allclose(mir[m], nlm[m], atol=1e-3) and np.array_equal(mir[~m], v[~m])
    # patch_mirror: the patch fill's candidates too (each mirror setting acts on its own fill only)
    assert api.FillSettings.model_only().patch_mirror is False
    pmir = api.fill_array(v, m, patch_weight=0.5, nlm_weight=0.5, patch_mirror=True, **kw)
    classic_mir = fill_patch(v, m, np.random.default_rng(3), brain=v > 0, extra=mirrored)
    assert np.allclose(pmir[m], 0.5 * classic_mir[m] + 0.5 * nlm[m], atol=1e-5)
    assert not np.allclose(classic_mir[m], classic[m], atol=1e-3) and np.array_equal(pmir[~m], v[~m])
    # smooth: a Gaussian over the filled image, normalised over the brain, written back in the mask only
    sm = api.fill_array(v, m, patch_weight=0.0, smooth=1.0, **kw)
    w = ((v > 0) | m).astype(np.float32)
    ref = ndimage.gaussian_filter(alone * w, 1.0) / np.maximum(ndimage.gaussian_filter(w, 1.0), 1e-6)
    assert np.allclose(sm[m], ref[m], atol=1e-4) and np.array_equal(sm[~m], v[~m])
    assert alone[m].std() > sm[m].std()
    with pytest.raises(ValueError, match="smooth"):
        api.fill_array(v, m, smooth=-1.0, **kw)


def test_ring_bias_measures_the_prediction_offset_in_the_ring():
    """The calibration field inside the lesion equals the model's offset seen in the known ring."""
    import numpy as np

    from usb_prep.fill.model_fill import ring_bias as _ring_bias

    truth = np.full((20, 20, 20), 0.9, np.float32)
    pred = truth - 0.15  # a model that fills 0.15 too dark
    mask = np.zeros(truth.shape, bool)
    mask[7:13, 7:13, 7:13] = True
    field = _ring_bias(truth, pred, mask, margin=2)
    np.testing.assert_allclose(field[mask], 0.15, atol=1e-5)
    assert np.all(field[~mask] == 0)
    assert not _ring_bias(truth, pred, np.zeros_like(mask), margin=2).any()


def test_ring_bias_follows_local_offsets_of_thin_lesions():
    """Fine scales carry each side's own offset into a thin lesion; margin 0 uses the first known layer."""
    import numpy as np

    from usb_prep.fill.model_fill import ring_bias as _ring_bias

    truth = np.full((40, 20, 20), 0.9, np.float32)
    pred = truth.copy()
    pred[:20] -= 0.2  # too dark on one side, right on the other
    mask = np.zeros(truth.shape, bool)
    mask[4:36, 9:11, 9:11] = True  # a thin, long lesion
    field = _ring_bias(truth, pred, mask, margin=0)
    assert field[6, 9, 9] > 0.15 and abs(field[33, 9, 9]) < 0.05
    assert np.all(field[~mask] == 0)


def test_stages_share_one_protocol_and_run_alone():
    """Every stage is stage(ctx, parts, settings) -> whole image; PIPELINE lists them in STAGES' order; one stage
    runs alone on hand-made parts."""
    from types import SimpleNamespace

    from usb_prep.fill import STAGES, FillSettings
    from usb_prep.fill.blend import blend_stage
    from usb_prep.fill.context import FillContext
    from usb_prep.fill.patches import patch_stage
    from usb_prep.fill.pipeline import PIPELINE

    assert tuple(name for name, _ in PIPELINE) == STAGES
    img = np.zeros((12, 12, 12), np.float32)
    img[2:10, 2:10, 2:10] = 0.5
    mask = np.zeros(img.shape, bool)
    mask[5:7, 5:7, 5:7] = True
    ctx = FillContext(img, mask)
    parts = SimpleNamespace(model=np.where(mask, 1.0, img).astype(np.float32), patch=np.where(mask, 0.2, img),
                            nlm=np.where(mask, 0.4, img))
    out = blend_stage(ctx, parts, FillSettings.model_only(patch_weight=0.25, nlm_weight=0.5))
    assert out.shape == img.shape and np.array_equal(out[~mask], img[~mask])
    assert np.allclose(out[mask], 0.25 * 1.0 + 0.25 * 0.2 + 0.5 * 0.4)
    patch = patch_stage(ctx, parts, FillSettings.model_only())  # copies the known tissue (all 0.5) inwards
    assert np.array_equal(patch[~mask], img[~mask]) and np.allclose(patch[mask], 0.5)


def test_fill_parts_and_explicit_stages():
    """run_fill returns every part; stages are chosen explicitly or follow from the settings."""
    from usb_prep.fill.refiner import Refiner

    model, v, m, aff, kw = _tiny_case()
    parts = api.fill_parts(v, m, patch_weight=0.2, nlm_weight=0.8, **kw)
    from usb_prep.fill.patchmatch import fill_nlm

    for search in (5, 15):  # nlm_search is the nlm fill's search window
        nlm = api.fill_parts(v, m, patch_weight=0.2, nlm_weight=0.8, nlm_search=search, **kw).nlm
        assert np.array_equal(nlm, fill_nlm(v, m, brain=v > 0, guide=parts.model, search=search))
    assert parts.stages == ("model", "patch", "nlm", "blend") and parts.refine is None
    for part in (parts.model, parts.patch, parts.nlm, parts.blend):  # whole images, the input outside the mask
        assert part.shape == v.shape and np.array_equal(part[~m], v[~m])
    assert np.array_equal(parts.final, parts.blend) and np.array_equal(parts.final[~m], v[~m])
    assert set(parts.seconds) == set(parts.stages)
    model_only = api.fill_parts(v, m, stages=("model",), patch_weight=0.2, nlm_weight=0.8, **kw)
    assert model_only.patch is None and np.array_equal(model_only.final, parts.model)
    with pytest.raises(ValueError, match="unknown fill stages"):
        api.fill_array(v, m, stages=("model", "magic"), **kw)
    with pytest.raises(ValueError, match="'model' stage"):
        api.fill_array(v, m, stages=("patch",), **kw)
    # refine: an error without a refiner, never a silent no-op; with one, it reads patch and nlm even at weight 0
    with pytest.raises(ValueError, match="no refiner"):
        api.fill_array(v, m, refine=True, **kw)
    model.refiner = Refiner().eval()  # zero-initialised last layer: returns the blend
    out = api.fill_parts(v, m, refine=True, patch_weight=0.0, nlm_weight=0.0, **kw)
    assert out.stages == ("model", "patch", "nlm", "blend", "refine")
    assert np.allclose(out.final[m], out.model[m], atol=1e-6)
    with pytest.raises(ValueError, match="reads the patch"):
        api.fill_array(v, m, refine=True, stages=("model", "refine"), **kw)
    with pytest.raises(ValueError, match="t_start"):
        api.fill_array(v, m, t_start=99999, **kw)


def test_ring_treats_the_masks_surroundings_as_unknown_and_writes_only_the_mask():
    """ring r: every stage fills the mask grown by r voxels (a dark rim the mask missed is not copied inwards);
    only the mask's own voxels change."""
    from scipy import ndimage

    model, v, m, aff, kw = _tiny_case()
    dark = v.copy()
    rim = ndimage.binary_dilation(m) & ~m
    dark[rim] = 0.05  # the lesion's rim, outside the mask
    settings = dict(patch_weight=0.0, nlm_weight=1.0)
    plain = api.fill_parts(dark, m, **settings, **kw)
    ringed = api.fill_parts(dark, m, ring=1, **settings, **kw)
    assert np.array_equal(ringed.mask, ndimage.binary_dilation(m) & ((dark > 0) | m)) and plain.mask.sum() == m.sum()
    assert np.array_equal(ringed.final[~m], dark[~m])  # outside the mask: the input, bit for bit
    assert ringed.final[m].mean() > plain.final[m].mean() + 0.05  # brighter: the dark rim was not copied in


def test_fill_settings_validate_every_value():
    from usb_prep.fill.settings import FillSettings

    s = FillSettings.model_only()
    assert s.replace(steps=None) is s and s.replace(steps=3).steps == 3
    for bad in ({"steps": 0}, {"samples": 0}, {"margin": -1}, {"nlm_passes": 9}, {"smooth": -1.0},
                {"patch_weight": 1.5}, {"refine": "yes"}, {"steps": 2.5}, {"t_start": -1}, {"nlm_search": 8},
                {"nlm_search": 1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            s.replace(**bad)
    with pytest.raises(ValueError, match="unknown fill settings: nlm_wieght"):
        s.replace(nlm_wieght=0.5)
    assert FillSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="apply to method 'usb' only"):
        api.fill_lesion("unused.nii.gz", "unused.nii.gz", method="wmstats", margin=1)


def test_every_fill_setting_reaches_every_front_end():
    """One field in FillSettings is enough: usb-fill options, LesionFill traits, usb-prep options, sidecar."""
    from click.testing import CliRunner

    from usb_prep.cli.bids_app import get_parser
    from usb_prep.cli.fill import main
    from usb_prep.fill.settings import FillSettings
    from usb_prep.interfaces.fill import LesionFill

    helptext = CliRunner().invoke(main, ["--help"]).output
    traits = LesionFill.input_spec().trait_names()
    bids = get_parser().format_help()
    for name in FillSettings.names():
        opt = "--" + name.replace("_", "-")
        assert opt in helptext and opt in bids and name in traits, name
    assert "[packaged weights: 0.8]" in helptext  # the real default, not "the model's"
