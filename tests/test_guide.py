"""Multi-contrast sessions: another contrast of the head, already filled, guides the patch fills."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import phantom
from usb_prep.bids import AnatInput, t1w_guides
from usb_prep.fill.patchmatch import fill_nlm, fill_patch

USB = ["--steps", "2", "--device", "cpu", "--quiet", "--no-refine", "--patch-weight", "0.3", "--nlm-weight", "0.7"]


def _stripes(shape=(36, 36, 36), seed=0):
    """Two contrasts of one layout (stripes 4 voxels thick, tissue order swapped) and a cube hiding 5 stripes."""
    rng = np.random.default_rng(seed)
    lab = ((np.indices(shape)[0] // 4) % 2).astype(np.float32)
    t1 = 0.4 + 0.5 * lab + 0.02 * rng.standard_normal(shape).astype(np.float32)
    flair = 0.9 - 0.5 * lab + 0.02 * rng.standard_normal(shape).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[8:28, 8:28, 8:28] = True
    return t1, flair, mask


def _rmse(a, b, m):
    return float(np.sqrt(np.mean((a[m] - b[m]) ** 2)))


def test_patch_engine_matches_the_guide_contrast():
    """Deep in a cube 20 voxels wide the image's own patches see nothing: the other contrast's stripes tell
    which tissue goes where; without it the nlm fill blurs them."""
    t1, flair, mask = _stripes()
    plain = fill_nlm(flair, mask, search=15)
    guided = fill_nlm(flair, mask, aux=t1, aux_weight=1.0, search=15)
    assert _rmse(guided, flair, mask) < 0.5 * _rmse(plain, flair, mask)
    assert np.array_equal(guided[~mask], flair[~mask])
    # with a second source of candidates (the mirror) the guide needs its mirrored twin
    mirrored, t1_mirrored = flair[::-1].copy(), t1[::-1].copy()
    mirrored[mask[::-1]] = 0
    both = fill_nlm(flair, mask, extra=mirrored, aux=t1, aux_extra=t1_mirrored, search=15)
    assert _rmse(both, flair, mask) < 0.5 * _rmse(plain, flair, mask)
    with pytest.raises(ValueError, match="aux_extra"):
        fill_nlm(flair, mask, extra=mirrored, aux=t1, search=15)
    with pytest.raises(ValueError, match="aux has shape"):
        fill_patch(flair, mask, np.random.default_rng(0), aux=t1[1:])


def _session(make_nifti):
    """A phantom T1w with its lesion, the same head as a FLAIR-like image (bright lesion), the T1w's healthy
    truth (its lesion's tissue: WM) and the mask."""
    img, lesion, dseg, aff = phantom()
    m = lesion > 0
    healthy = img.copy()
    healthy[m] = 100.0  # the phantom's lesion sits in its WM
    flair = np.select([dseg == 3, dseg == 2, dseg == 1], [50.0, 70.0, 15.0], 0.0).astype(np.float32)
    flair[m] = 110.0
    return {"flair": make_nifti(flair, "sub-01_FLAIR.nii.gz", affine=aff),
            "t1_filled": make_nifti(healthy, "sub-01_desc-filled_T1w.nii.gz", affine=aff),
            "mask": make_nifti(lesion, "sub-01_label-lesion_roi.nii.gz", affine=aff), "affine": aff, "lesion": m,
            "flair_data": flair}


def test_fill_lesion_uses_the_guide(make_nifti, contrast_weights):
    from usb_prep.api import fill_lesion

    s = _session(make_nifti)
    kw = dict(weights=contrast_weights, device="cpu", steps=2, refine=False, patch_weight=0.3, nlm_weight=0.7)
    plain = fill_lesion(s["flair"], s["mask"], contrast="auto", **kw)
    guided = fill_lesion(s["flair"], s["mask"], contrast="auto", guide=s["t1_filled"], **kw)
    a, b = (np.asarray(r.image.dataobj) for r in (plain, guided))
    assert not np.array_equal(a, b)  # the guide changed the patch fills
    assert np.array_equal(b[~s["lesion"]], s["flair_data"][~s["lesion"]])
    assert guided.settings["guide"] == str(s["t1_filled"]) and "guide" not in plain.settings
    # guide_weight 0: the guide is read but has no say
    off = fill_lesion(s["flair"], s["mask"], contrast="auto", guide=s["t1_filled"], guide_weight=0.0, **kw)
    assert np.array_equal(np.asarray(off.image.dataobj), a)
    # a guide on another grid of the same world is resampled onto the image's, and says so
    g = nib.load(str(s["t1_filled"]))
    moved = make_nifti(np.asarray(g.dataobj)[:, :, 1:], "t1_cropped.nii.gz",
                       affine=g.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]]))
    res = fill_lesion(s["flair"], s["mask"], contrast="auto", guide=moved, **kw)
    assert any("guide resampled" in msg for msg in res.messages)
    with pytest.raises(ValueError, match="method 'usb' with a mask"):
        fill_lesion(s["flair"], s["mask"], method="patch", guide=s["t1_filled"])
    bad = np.asarray(g.dataobj, np.float32).copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        fill_lesion(s["flair"], s["mask"], contrast="auto", guide=make_nifti(bad, "nan.nii.gz", affine=g.affine), **kw)


def test_usb_fill_guide_option(make_nifti, contrast_weights, tmp_path):
    from usb_prep.cli.fill import main

    s = _session(make_nifti)
    out = tmp_path / "f.nii.gz"
    r = CliRunner().invoke(main, [str(s["flair"]), str(s["mask"]), "-o", str(out), "--guide", str(s["t1_filled"]),
                                  "--weights", contrast_weights, *USB])
    assert r.exit_code == 0, r.output
    side = json.loads((tmp_path / "f.json").read_text())
    assert side["guide"] == str(s["t1_filled"]) and side["guide_weight"] == 1.0
    r = CliRunner().invoke(main, [str(s["flair"]), str(s["mask"]), "-o", str(tmp_path / "g.nii.gz"),
                                  "--guide", str(tmp_path / "missing.nii.gz"), "--weights", contrast_weights, *USB])
    assert r.exit_code == 2 and "missing.nii.gz" in r.output


def test_t1w_guides_pair_a_session_by_its_mask(tmp_path):
    def entry(suffix, mask, session=None, run=None):
        ents = {"sub": "01", **({"ses": session} if session else {}), **({"run": run} if run else {}),
                "suffix": suffix}
        return AnatInput("01", session, tmp_path / f"{suffix}.nii.gz", mask, ents)

    roi, other = tmp_path / "roi.nii.gz", tmp_path / "flair_roi.nii.gz"
    t1, flair, t2 = entry("T1w", roi), entry("FLAIR", roi), entry("T2w", other)
    assert t1w_guides([t1, flair, t2]) == {flair.key: t1.key}  # the T2w's mask is not the T1w's
    assert t1w_guides([flair, entry("T1w", roi, session="2")]) == {}  # another session
    assert t1w_guides([t1, entry("T1w", roi, run="2"), flair]) == {}  # two T1w: which one is unclear


def test_usb_prep_guides_flair_with_the_filled_t1w(tmp_path, contrast_weights):
    """--contrast t1w flair --method usb: the FLAIR node reads the T1w node's filled image (its sidecar names it);
    --no-t1w-guide: it does not."""
    from usb_prep.cli.bids_app import main as prep

    root = tmp_path / "bids"
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.10.0"}))
    img, lesion, dseg, aff = phantom()
    flair = np.select([dseg == 3, dseg == 2, dseg == 1], [50.0, 70.0, 15.0], 0.0).astype(np.float32)
    flair[lesion > 0] = 110.0
    for name, data in (("sub-01_T1w", img), ("sub-01_FLAIR", flair), ("sub-01_label-lesion_roi", lesion)):
        nib.Nifti1Image(data, aff).to_filename(str(anat / f"{name}.nii.gz"))
    (tmp_path / "plugin.yml").write_text("plugin: Linear\nplugin_args: {}\n")
    common = ["participant", "--contrast", "t1w", "flair", "--weights", contrast_weights, "--steps", "2",
              "--no-refine", "--patch-weight", "0.3", "--nlm-weight", "0.7", "--use-plugin", str(tmp_path / "plugin.yml")]
    side = "sub-01/anat/sub-01_desc-lesionfilled_FLAIR.json"
    assert prep([str(root), str(tmp_path / "out"), *common, "-w", str(tmp_path / "work")]) == 0
    guide = json.loads((tmp_path / "out" / side).read_text())["LesionFilling"]["guide"]
    assert guide.endswith("filled.nii.gz") and "sub_01" in guide  # the T1w subject workflow's fill
    assert prep([str(root), str(tmp_path / "out2"), *common, "-w", str(tmp_path / "work2"), "--no-t1w-guide"]) == 0
    assert "guide" not in json.loads((tmp_path / "out2" / side).read_text())["LesionFilling"]
