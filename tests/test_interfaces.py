"""Nipype interfaces run on tiny synthetic volumes."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest

from usb_prep.interfaces import (
    DerivativesSink,
    GenerateLesionPair,
    LesionEmbed,
    LesionFill,
    LesionReport,
    ReinstateLesion,
)


def _cwd(path):
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _data(path):
    return np.asanyarray(nb.load(str(path)).dataobj)


def test_lesion_fill_wmstats(lesion_case, tmp_path):
    res = LesionFill(in_file=str(lesion_case["t1w"]), mask_file=str(lesion_case["mask"]),
                     method="wmstats").run(cwd=str(tmp_path))
    out, src = _data(res.outputs.out_file), _data(lesion_case["t1w"])
    lesion = lesion_case["lesion"] > 0
    np.testing.assert_array_equal(out[~lesion], src[~lesion])
    assert out[lesion].mean() > src[lesion].mean() + 20  # lesion (35) filled towards WM (100)
    assert json.loads(open(res.outputs.out_settings).read())["method"] == "wmstats"
    assert res.outputs.settings["method"] == "wmstats"


def test_lesion_fill_usb_tiny(lesion_case, tiny_weights, tmp_path):
    res = LesionFill(in_file=str(lesion_case["t1w"]), mask_file=str(lesion_case["mask"]),
                     weights=tiny_weights, steps=2, num_threads=1).run(cwd=str(tmp_path))
    out, src = _data(res.outputs.out_file), _data(lesion_case["t1w"])
    lesion = lesion_case["lesion"] > 0
    np.testing.assert_array_equal(out[~lesion], src[~lesion])
    assert out.dtype == src.dtype and out.shape == src.shape
    np.testing.assert_array_equal(_data(res.outputs.out_mask) > 0, lesion)


def test_lesion_fill_settings_pass_through(lesion_case, tiny_weights, tmp_path):
    from usb_prep.fill.settings import FillSettings
    from usb_prep.weights import load_model

    names = FillSettings.names()
    assert set(names) <= set(LesionFill.input_spec().trait_names())  # every core setting reachable
    kw = dict(in_file=str(lesion_case["t1w"]), mask_file=str(lesion_case["mask"]), weights=tiny_weights, steps=1,
              num_threads=1)
    default = LesionFill(**kw).run(cwd=_cwd(tmp_path / "default")).outputs
    want = load_model(tiny_weights, "fill", "cpu")[0].fill_settings.replace(steps=1).to_dict()
    assert {k: default.settings[k] for k in names} == want  # unset traits leave the weights' defaults
    other = dict(patch_weight=0.0, nlm_weight=0.5, patch_mirror=not want["patch_mirror"], refine=False)
    assert other["nlm_weight"] != want["nlm_weight"]
    given = LesionFill(**kw, **other).run(cwd=_cwd(tmp_path / "given")).outputs
    assert {k: given.settings[k] for k in other} == other
    lesion = lesion_case["lesion"] > 0
    assert not np.array_equal(_data(default.out_file)[lesion], _data(given.out_file)[lesion])


def test_execution_knobs_do_not_change_hash(lesion_case):
    a = LesionFill(in_file=str(lesion_case["t1w"]), use_gpu=False, num_threads=1)
    b = LesionFill(in_file=str(lesion_case["t1w"]), use_gpu=True, num_threads=4)
    assert a.inputs.get_hashval()[1] == b.inputs.get_hashval()[1]
    c = LesionFill(in_file=str(lesion_case["t1w"]), seed=1)
    assert a.inputs.get_hashval()[1] != c.inputs.get_hashval()[1]


def test_lesion_embed_and_generate(lesion_case, tiny_weights, tmp_path):
    emb = LesionEmbed(in_file=str(lesion_case["t1w"]), mask_file=str(lesion_case["mask"]),
                      weights=tiny_weights, steps=2).run(cwd=_cwd(tmp_path / "embed"))
    from scipy import ndimage

    out, src = _data(emb.outputs.out_file), _data(lesion_case["t1w"])
    rim = ndimage.binary_dilation(lesion_case["lesion"] > 0, iterations=2)
    np.testing.assert_array_equal(out[~rim], src[~rim])
    gen = GenerateLesionPair(mask_file=str(lesion_case["mask"]), weights=tiny_weights,
                             steps=2).run(cwd=_cwd(tmp_path / "gen"))
    assert np.isfinite(_data(gen.outputs.out_file)).all()


def test_reinstate_lesion_interface_dseg(lesion_case, tmp_path):
    res = ReinstateLesion(mask_file=str(lesion_case["mask"]), in_file=str(lesion_case["dseg"]),
                          label="7").run(cwd=str(tmp_path))
    out = _data(res.outputs.out_file)
    assert res.outputs.out_file.endswith("dseg_lesion.nii.gz")
    assert (out[lesion_case["lesion"] > 0] == 7).all()
    np.testing.assert_array_equal(_data(res.outputs.out_mask) > 0, lesion_case["lesion"] > 0)


def test_reinstate_lesion_interface_mgz_hemi(lesion_case, tmp_path):
    aff = lesion_case["affine"]
    shape = lesion_case["lesion"].shape
    xyz = nb.affines.apply_affine(aff, np.indices(shape).reshape(3, -1).T).reshape(shape + (3,))
    aseg = tmp_path / "aseg.mgz"
    nb.MGHImage(np.where(xyz[..., 0] < 0, 2, 41).astype(np.int32), aff).to_filename(str(aseg))
    res = ReinstateLesion(mask_file=str(lesion_case["mask"]), in_file=str(aseg), orig_file=str(aseg),
                          label="hemi").run(cwd=_cwd(tmp_path / "wd"))
    assert res.outputs.out_file.endswith("aseg_lesion.mgz")
    out = _data(res.outputs.out_file)
    assert (out[lesion_case["lesion"] > 0] == 25).all()


def test_report_and_sink(lesion_case, tmp_path):
    rep = LesionReport(before=str(lesion_case["t1w"]), after=str(lesion_case["t1w"]),
                       mask_file=str(lesion_case["mask"]), title="sub-01").run(cwd=_cwd(tmp_path / "r"))
    html = open(rep.outputs.out_report).read()
    assert html.startswith("<!DOCTYPE html>") and html.count("data:image/png;base64,") == 3
    dst = tmp_path / "out" / "sub-01" / "anat" / "sub-01_desc-x_T1w.nii.gz"
    DerivativesSink(in_file=str(lesion_case["t1w"]), base_directory=str(tmp_path / "out"),
                    out_name="sub-01/anat/sub-01_desc-x_T1w.nii.gz",
                    metadata={"Sources": ["bids:raw:x"]}).run(cwd=_cwd(tmp_path / "s"))
    assert dst.exists()
    assert json.loads((dst.parent / "sub-01_desc-x_T1w.json").read_text())["Sources"] == ["bids:raw:x"]


@pytest.mark.parametrize("kind", ["usb", "wmstats", "patch", "nlm"])
def test_method_enum_accepts(kind, lesion_case):
    LesionFill(in_file=str(lesion_case["t1w"]), method=kind)
