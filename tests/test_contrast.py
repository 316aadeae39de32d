"""T2w and FLAIR: contrast synthesis for training, per-contrast weights, contrast on the CLI and in usb-prep."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import phantom
from usb_prep.cli.fill import main
from usb_prep.data.contrast import parse_contrasts, synthesise
from usb_prep.io import image_contrast
from usb_prep.weights import WeightsError, bundle, fill_role, fill_settings_of, load_model, read_manifest

COMMON = ["--steps", "2", "--device", "cpu", "--quiet", "--no-refine", "--patch-weight", "0", "--nlm-weight", "0"]


def _tissue_means(image, dseg):
    return [float(image[dseg == k].mean()) for k in (1, 2, 3)]  # CSF, GM, WM


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthesised_contrasts_order_tissues_as_real_ones(seed):
    """T1w (CSF < GM < WM) becomes T2w (CSF > GM > WM) or FLAIR (CSF < WM < GM); background stays 0, brain ~[0, 1]."""
    img, _, dseg, _ = phantom()
    brain = dseg > 0
    t1 = img / np.percentile(img[brain], 99.5)
    rng = np.random.default_rng(seed)
    t2 = synthesise(t1, brain, "t2w", rng)
    csf, gm, wm = _tissue_means(t2, dseg)
    assert csf > gm > wm
    flair = synthesise(t1, brain, "flair", rng)
    csf, gm, wm = _tissue_means(flair, dseg)
    assert gm > wm > csf
    for out in (t2, flair):
        assert np.all(out[~brain] == 0)
        assert np.percentile(out[brain], 99.5) == pytest.approx(1.0, abs=0.05)


def test_contrast_names():
    assert parse_contrasts("T2w, FLAIR") == ("t2w", "flair")
    assert fill_role("T1w") == "fill" and fill_role("flair") == "fill_flair"
    with pytest.raises(ValueError, match="contrast"):
        parse_contrasts("PD")
    with pytest.raises(ValueError, match="one contrast"):
        fill_role("t2w,flair")


def test_image_contrast_from_name_and_sidecar(tmp_path):
    assert image_contrast("sub-01_ses-1_FLAIR.nii.gz") == "flair"
    assert image_contrast("/d/sub-01_acq-tse_T2w.nii") == "t2w"
    assert image_contrast("T1w.nii.gz") == "t1w" and image_contrast("orig.mgz") == "t1w"
    scan = tmp_path / "scan.nii.gz"
    assert image_contrast(scan) is None
    for desc, want in (("T2_FLAIR_3D", "flair"), ("t2_tse_tra", "t2w"), ("t1_mprage_sag", "t1w"), ("dwi", None)):
        (tmp_path / "scan.json").write_text(json.dumps({"SeriesDescription": desc}))
        assert image_contrast(scan) == want, desc


def test_weights_carry_a_model_per_contrast(contrast_weights, tmp_path):
    man = read_manifest(__import__("pathlib").Path(contrast_weights))
    assert set(man["models"]) == {"fill", "fill_flair", "generate"}
    assert man["models"]["fill_flair"]["sha256"] != man["models"]["fill"]["sha256"]
    model, info = load_model(contrast_weights, "fill_flair")
    assert info["role"] == "fill_flair" and info["sha256"] == man["models"]["fill_flair"]["sha256"]
    assert model.fill_settings.steps == 2 and model.fill_settings.patch_weight == 0.5
    assert not model.fill_settings.refine and getattr(model, "refiner", None) is None
    assert fill_settings_of(contrast_weights, contrast="flair").patch_weight == 0.5
    with pytest.raises(WeightsError, match="cannot fill t2w"):
        fill_settings_of(contrast_weights, contrast="t2w")
    # bundling again from this folder keeps its FLAIR fill
    again = read_manifest(bundle(tmp_path / "again", fill=contrast_weights, generate=contrast_weights))
    assert again["models"]["fill_flair"]["sha256"] == man["models"]["fill_flair"]["sha256"]
    assert again["contrast_settings"]["flair"]["patch_weight"] == 0.5


def test_usb_fill_picks_the_model_of_the_image_contrast(make_nifti, contrast_weights, tmp_path):
    img, lesion, _, aff = phantom()
    flair = make_nifti(img, "sub-01_FLAIR.nii.gz", affine=aff)
    mask = make_nifti(lesion, "sub-01_label-lesion_roi.nii.gz", affine=aff)
    out = tmp_path / "filled.nii.gz"
    r = CliRunner().invoke(main, [str(flair), str(mask), "-o", str(out), "--weights", contrast_weights, *COMMON])
    assert r.exit_code == 0, r.output
    side = json.loads((tmp_path / "filled.json").read_text())
    man = read_manifest(__import__("pathlib").Path(contrast_weights))
    assert side["contrast"] == "flair" and side["weights"]["sha256"] == man["models"]["fill_flair"]["sha256"]
    filled = np.asarray(nib.load(str(out)).dataobj)
    assert np.array_equal(filled[lesion == 0], img[lesion == 0])
    # --contrast overrides the name; weights without a T2w fill say so
    r = CliRunner().invoke(main, [str(flair), str(mask), "-o", str(tmp_path / "t2.nii.gz"), "--contrast", "t2w",
                                  "--weights", contrast_weights, *COMMON])
    assert r.exit_code == 2 and "cannot fill t2w" in r.output
    assert not (tmp_path / "t2.nii.gz").exists()


def test_usb_fill_needs_a_contrast_it_can_tell(make_nifti, tiny_weights, tmp_path):
    img, lesion, _, aff = phantom()
    scan = make_nifti(img, "scan.nii.gz", affine=aff)
    mask = make_nifti(lesion, "m.nii.gz", affine=aff)
    r = CliRunner().invoke(main, [str(scan), str(mask), "-o", str(tmp_path / "o.nii.gz"), "--weights", tiny_weights,
                                  *COMMON])
    assert r.exit_code == 2 and "cannot tell the contrast" in r.output and "--contrast" in r.output
    r = CliRunner().invoke(main, [str(scan), str(mask), "-o", str(tmp_path / "o.nii.gz"), "--weights", tiny_weights,
                                  "--contrast", "T1w", *COMMON])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o.json").read_text())["contrast"] == "t1w"
    # classical fillers need no contrast
    r = CliRunner().invoke(main, [str(scan), str(mask), "-o", str(tmp_path / "p.nii.gz"), "--method", "wmstats",
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    # mask-free healing reads T1w only
    r = CliRunner().invoke(main, [str(scan), "-o", str(tmp_path / "h.nii.gz"), "--contrast", "flair",
                                  "--weights", tiny_weights, *COMMON])
    assert r.exit_code == 2 and "T1w" in r.output


def test_usb_prep_fills_flair_next_to_t1w(tmp_path):
    """--contrast t1w flair: each image its own entry, derivative and mask names that do not clash, the FLAIR's
    sidecar with its contrast; the filled dataset holds both filled images and one roi (the T1w's)."""
    from usb_prep.cli.bids_app import main as prep

    root = tmp_path / "bids"
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.10.0"}))
    img, lesion, dseg, aff = phantom()
    t2like = np.where(dseg == 1, 120.0, np.where(dseg == 2, 70.0, np.where(dseg == 3, 50.0, 0.0))).astype(np.float32)
    t2like[lesion > 0] = 110.0
    for name, data in (("sub-01_T1w", img), ("sub-01_FLAIR", t2like), ("sub-01_label-lesion_roi", lesion)):
        nib.Nifti1Image(data, aff).to_filename(str(anat / f"{name}.nii.gz"))
    (tmp_path / "plugin.yml").write_text("plugin: Linear\nplugin_args: {}\n")
    out, ds = tmp_path / "out", tmp_path / "filled"
    code = prep([str(root), str(out), "participant", "-w", str(tmp_path / "work"), "--method", "patch",
                 "--contrast", "t1w", "flair", "--use-plugin", str(tmp_path / "plugin.yml"),
                 "--filled-dataset", str(ds)])
    assert code == 0
    d = out / "sub-01" / "anat"
    flair_out = d / "sub-01_desc-lesionfilled_FLAIR.nii.gz"
    assert (d / "sub-01_desc-lesionfilled_T1w.nii.gz").is_file() and flair_out.is_file()
    assert (d / "sub-01_label-lesion_mask.nii.gz").is_file() and (d / "sub-01_label-lesion_desc-FLAIR_mask.nii.gz").is_file()
    assert json.loads((d / "sub-01_desc-lesionfilled_FLAIR.json").read_text())["LesionFilling"]["contrast"] == "flair"
    filled = np.asarray(nib.load(str(flair_out)).dataobj)
    m = lesion > 0
    assert filled[m].mean() < 100  # normal-appearing tissue of this contrast, not the bright lesion
    assert np.array_equal(filled[~m], t2like[~m])
    assert (ds / "sub-01/anat/sub-01_FLAIR.nii.gz").read_bytes() == flair_out.read_bytes()
    assert (ds / "sub-01/anat/sub-01_label-lesion_roi.nii.gz").read_bytes() == (
        d / "sub-01_label-lesion_mask.nii.gz").read_bytes()
    # weights without a model for a contrast asked for: a usage error before any work
    assert prep([str(root), str(tmp_path / "o2"), "participant", "-w", str(tmp_path / "w2"), "--contrast", "t2w",
                 "--weights", str(_t1_only(tmp_path))]) == 2
    assert not (tmp_path / "o2").exists()


def _t1_only(tmp_path):
    """A weights folder with the packaged T1w fill only (its manifest, without other contrasts)."""
    from usb_prep.weights import packaged_weights_dir

    src = packaged_weights_dir()
    dst = tmp_path / "t1only"
    dst.mkdir()
    man = read_manifest(src)
    man["models"] = {k: v for k, v in man["models"].items() if k in ("fill", "generate")}
    man.pop("contrast_settings", None)
    man.pop("contrast_refiners", None)
    for entry in list(man["models"].values()) + [man["refiner"]]:
        (dst / entry["file"]).symlink_to(src / entry["file"])
    (dst / "usb.json").write_text(json.dumps(man))
    return dst


def test_lesion_fill_interface_takes_the_contrast(lesion_case, contrast_weights, tmp_path):
    """LesionFill's contrast input picks the model (here overriding the file name's t1w)."""
    from usb_prep.interfaces.fill import LesionFill

    node = LesionFill(in_file=str(lesion_case["t1w"]), mask_file=str(lesion_case["mask"]), weights=contrast_weights,
                      contrast="flair", steps=2, refine=False, patch_weight=0.0, nlm_weight=0.0)
    res = node.run(cwd=str(tmp_path))
    man = read_manifest(__import__("pathlib").Path(contrast_weights))
    assert res.outputs.settings["contrast"] == "flair"
    assert res.outputs.settings["weights"]["sha256"] == man["models"]["fill_flair"]["sha256"]


def test_packaged_weights_fill_every_contrast():
    from usb_prep.weights import packaged_weights_dir

    for contrast in ("t1w", "t2w", "flair"):
        s = fill_settings_of(None, contrast=contrast)
        assert s.patch_weight + s.nlm_weight <= 1
    man = read_manifest(packaged_weights_dir())
    assert {"fill", "fill_t2w", "fill_flair"} <= set(man["models"])
    for contrast in ("t2w", "flair"):  # their own refiner (trained on T2w/FLAIR cases), the T1w fill its own
        _, info = load_model(None, f"fill_{contrast}")
        assert info["refiner_sha256"] == man["contrast_refiners"][contrast]["sha256"] != man["refiner"]["sha256"]


def test_a_contrast_may_have_its_own_refiner(contrast_weights, tmp_path):
    """bundle(contrast_refiners=): the FLAIR fill loads its own refiner, the T1w fill the one refiner; both are
    sha256-checked entries, and bundling again keeps the contrast's."""
    import torch

    from usb_prep.fill.refiner import Refiner

    states = {}
    for name, seed in (("main", 0), ("flair", 1)):
        torch.manual_seed(seed)
        net = Refiner()
        torch.nn.init.normal_(net.out.weight)
        states[name] = tmp_path / f"{name}.pt"
        torch.save(net.state_dict(), states[name])
    w = bundle(tmp_path / "w", fill=contrast_weights, generate=contrast_weights, refiner=str(states["main"]),
               contrast_refiners={"flair": str(states["flair"])}, contrast_settings={"flair": {"refine": True}})
    man = read_manifest(w)
    assert set(man["contrast_refiners"]) == {"flair"}
    assert man["contrast_refiners"]["flair"]["sha256"] != man["refiner"]["sha256"]
    flair, info = load_model(w, "fill_flair")
    t1w, _ = load_model(w, "fill")
    want = torch.load(states["flair"])
    assert torch.equal(flair.refiner.out.weight, want["out.weight"])
    assert not torch.equal(t1w.refiner.out.weight, want["out.weight"])
    assert info["refiner_sha256"] == man["contrast_refiners"]["flair"]["sha256"]
    assert flair.fill_settings.refine and fill_settings_of(w, contrast="flair").refine
    again = read_manifest(bundle(tmp_path / "again", fill=w, generate=w))
    assert again["contrast_refiners"]["flair"]["sha256"] == man["contrast_refiners"]["flair"]["sha256"]
    with pytest.raises(ValueError, match="t2w"):  # a refiner for a contrast the weights do not fill
        bundle(tmp_path / "bad", fill=w, generate=w, contrast_refiners={"t2w": str(states["flair"])})
    both = read_manifest(bundle(tmp_path / "both", fill=w, generate=w, contrasts={"t2w": w}, contrast_refiners={
        "t2w": str(states["flair"]), "flair": str(states["flair"])}, contrast_settings={"t2w": {"refine": True}}))
    assert both["contrast_refiners"]["t2w"] == both["contrast_refiners"]["flair"]  # one refiner, one file
    assert len(list((tmp_path / "both").glob("refine_*.safetensors"))) == 1
    kept = read_manifest(bundle(tmp_path / "kept", fill=tmp_path / "both", generate=w))
    assert kept["contrast_refiners"]["t2w"] == both["contrast_refiners"]["t2w"]
    (w / man["contrast_refiners"]["flair"]["file"]).write_bytes(b"corrupt")
    with pytest.raises(WeightsError, match="checksum"):
        load_model(w, "fill_flair")


# --- the contrast from the image, when the name and sidecar are silent (issue 42) --------------------------
def _between_bands(x, brain):
    """``x`` with its grey matter moved until its tissue levels lie between the FLAIR and T1w bands."""
    from usb_prep.data.contrast import remap, tissue_levels
    from usb_prep.tissue import guess_contrast

    csf, gm, wm = tissue_levels(x[brain])
    for g in np.linspace(0.55, 0.8, 26):
        y = remap(x, np.array([0, csf, gm, wm, 1.2]), np.array([0.2, 0.2, g, 1.0, 1.03]))
        found, evidence = guess_contrast(y, None, (2.0, 2.0, 2.0))
        if found is None and "between" in evidence.get("reason", ""):
            return y
    raise AssertionError("no grey-matter level put the tissue levels between the bands")


@pytest.fixture(scope="module")
def mni_scans(tmp_path_factory):
    """nilearn's MNI152 (2 mm) as a T1w, and the same brain mapped to T2w, FLAIR and to tissue levels between the
    contrasts (ambiguous), under names that tell nothing; a mask in the white matter."""
    from nilearn import datasets

    d = tmp_path_factory.mktemp("mni")
    t = datasets.load_mni152_template(resolution=2)
    x = np.asarray(t.dataobj, np.float32)
    x = x / np.percentile(x[x > 0], 99.5)
    brain = x > 0
    mask = np.zeros(x.shape, np.uint8)
    mask[30:36, 55:62, 42:48] = 1
    scans = {"t1w": x, "t2w": synthesise(x, brain, "t2w", np.random.default_rng(0)),
             "flair": synthesise(x, brain, "flair", np.random.default_rng(0)),
             "ambiguous": _between_bands(x, brain)}
    out = {}
    for name, data in scans.items():
        out[name] = d / f"patient1_{name[:2]}x.nii.gz"
        nib.save(nib.Nifti1Image((data * 1000).astype(np.float32), t.affine), str(out[name]))
    nib.save(nib.Nifti1Image(mask, t.affine), str(d / "mask.nii.gz"))
    out["mask"] = d / "mask.nii.gz"
    out["dir"] = d
    return out


@pytest.mark.parametrize("contrast", ["t1w", "t2w", "flair"])
def test_contrast_is_read_from_the_image_when_the_name_is_silent(mni_scans, contrast):
    from usb_prep.api import fill_lesion
    from usb_prep.io import image_contrast

    assert image_contrast(mni_scans[contrast]) is None  # the name tells nothing
    res = fill_lesion(mni_scans[contrast], mni_scans["mask"], contrast="auto", method="wmstats")
    assert res.settings["contrast"] == contrast and res.settings["contrast_source"] == "image"
    assert any(m.startswith(f"contrast {contrast} told by the image") for m in res.messages), res.messages


def test_usb_fill_on_a_t1w_named_anything(mni_scans, tiny_weights, tmp_path):
    for name in ("mprage.nii.gz", "t1_mprage.nii.gz", "T1_N4_noneck_x_regtoMNI.nii.gz"):
        scan = tmp_path / name
        scan.write_bytes(mni_scans["t1w"].read_bytes())
        out = tmp_path / f"o_{name}"
        r = CliRunner().invoke(main, [str(scan), str(mni_scans["mask"]), "-o", str(out), "--weights", tiny_weights,
                                      *COMMON])
        assert r.exit_code == 0, r.output
        side = json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())
        assert side["contrast"] == "t1w" and side["contrast_source"] == "image"
        assert "told by the image" in r.output


def test_told_contrast_the_image_contradicts_is_warned(mni_scans, tmp_path):
    flair_as_t1w = tmp_path / "sub-01_T1w.nii.gz"
    flair_as_t1w.write_bytes(mni_scans["flair"].read_bytes())
    from usb_prep.api import fill_lesion

    for told in ("auto", "t1w"):  # an option that agrees with the name: the name told it (as in the BIDS app)
        res = fill_lesion(flair_as_t1w, mni_scans["mask"], contrast=told, method="wmstats")
        assert res.settings["contrast"] == "t1w" and res.settings["contrast_source"] == "name"
    warn = [m for m in res.messages if m.startswith("warning:")]
    assert warn and "flair" in warn[0] and "t1w" in warn[0] and "name" in warn[0], res.messages
    res = fill_lesion(mni_scans["t1w"], mni_scans["mask"], contrast="flair", method="wmstats")
    assert res.settings["contrast_source"] == "option"
    assert any(m.startswith("warning:") and "looks like t1w" in m for m in res.messages), res.messages
    res = fill_lesion(mni_scans["t1w"], mni_scans["mask"], contrast="t1w", method="wmstats")
    assert not any(m.startswith("warning:") for m in res.messages)


def test_ambiguous_image_stops_with_exit_2(mni_scans, tiny_weights, tmp_path):
    out = tmp_path / "o.nii.gz"
    r = CliRunner().invoke(main, [str(mni_scans["ambiguous"]), str(mni_scans["mask"]), "-o", str(out), "--weights",
                                  tiny_weights, *COMMON])
    assert r.exit_code == 2 and "cannot tell the contrast" in r.output and "tissue levels" in r.output, r.output
    assert not out.exists()


def test_lesion_fill_interface_reads_the_contrast_from_the_image(mni_scans, tmp_path, monkeypatch):
    from usb_prep.interfaces.fill import LesionFill

    monkeypatch.chdir(tmp_path)
    res = LesionFill(in_file=str(mni_scans["flair"]), mask_file=str(mni_scans["mask"]), method="wmstats").run()
    settings = json.loads(open(res.outputs.out_settings).read())
    assert settings["contrast"] == "flair" and settings["contrast_source"] == "image"
