"""Input validation and output handling (usb_prep.io): clear InputErrors, nothing written."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from usb_prep import io
from usb_prep.io import InputError, check_output, load_image, mask_array, save_image, sidecar_path, write_sidecar


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_text_file_rejected(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    with pytest.raises(InputError, match="not a NIfTI or MGZ"):
        load_image(p)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "nope.nii.gz")


def test_garbage_nii_gz_rejected(tmp_path):
    p = tmp_path / "garbage.nii.gz"
    p.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    with pytest.raises(InputError, match=str(p.name)):
        load_image(p)
    p2 = tmp_path / "plain_garbage.nii.gz"
    p2.write_bytes(b"\x00\x01not gzip at all")
    with pytest.raises(InputError, match="cannot be read|truncated|corrupt"):
        load_image(p2)


def test_truncated_nii_gz_rejected(tmp_path, make_nifti):
    p = make_nifti(np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), "full.nii.gz")
    data = p.read_bytes()
    t = tmp_path / "trunc.nii.gz"
    t.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="trunc"):
        load_image(t)


def test_4d_rejected_but_trailing_one_accepted(make_nifti):
    p4 = make_nifti(np.zeros((4, 4, 4, 2), np.float32), "four.nii.gz")
    with pytest.raises(InputError, match="3D"):
        load_image(p4)
    p1 = make_nifti(np.ones((4, 4, 4, 1), np.float32), "four1.nii.gz")
    img = load_image(p1)
    assert io.get_data(img).shape == (4, 4, 4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_rejected(make_nifti, bad):
    a = np.ones((4, 4, 4), np.float32)
    a[1, 2, 3] = bad
    p = make_nifti(a, "bad.nii.gz")
    with pytest.raises(InputError, match="NaN or Inf"):
        load_image(p)


def test_grid_mismatch_mentions_resample_mask(make_nifti):
    img = load_image(make_nifti(np.ones((6, 6, 6), np.float32), "i.nii.gz"))
    other_shape = load_image(make_nifti(np.ones((6, 6, 5), np.uint8), "m1.nii.gz"))
    with pytest.raises(InputError, match="--resample-mask"):
        mask_array(other_shape, img)
    aff = img.affine.copy()
    aff[0, 3] += 2.0  # same shape, shifted by 2 mm
    shifted = load_image(make_nifti(np.ones((6, 6, 6), np.uint8), "m2.nii.gz", affine=aff))
    with pytest.raises(InputError, match="--resample-mask"):
        mask_array(shifted, img)
    msgs = []
    m = mask_array(shifted, img, resample_mask=True, messages=msgs)
    assert m.shape == (6, 6, 6) and msgs
    assert not m[:2].any() and m[3:].any()  # shifted +2 mm along x: the first 2 columns lie outside the mask


def test_output_exists_without_overwrite(tmp_path):
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"old")
    with pytest.raises(InputError, match="--overwrite"):
        check_output(out)
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    with pytest.raises(InputError):
        save_image(img, out)
    assert out.read_bytes() == b"old"
    assert _files(tmp_path) == ["out.nii.gz"]
    save_image(img, out, overwrite=True)
    assert nib.load(str(out)).shape == (2, 2, 2)
    assert _files(tmp_path) == ["out.nii.gz"], "no temporary files left behind"


def test_output_needs_image_suffix_and_existing_folder(tmp_path):
    with pytest.raises(InputError, match="must end in"):
        check_output(tmp_path / "out.txt")
    with pytest.raises(InputError, match="does not exist"):
        check_output(tmp_path / "missing" / "out.nii.gz")


def test_unwritable_output_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user (root?) who can write to a 0o500 folder")
        with pytest.raises(InputError, match="not writable"):
            check_output(ro / "out.nii.gz")
        img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
        with pytest.raises(InputError):
            save_image(img, ro / "out.nii.gz")
        assert _files(ro) == []
    finally:
        ro.chmod(0o700)


def test_cli_bad_inputs_write_nothing(tmp_path, make_nifti):
    """Every bad input stops usb-fill with exit code 2 and a one-line message, before any output."""
    from click.testing import CliRunner

    from usb_prep.cli.fill import main

    good = make_nifti(np.ones((6, 6, 6), np.float32), "good.nii.gz")
    a = np.ones((6, 6, 6), np.float32)
    a[0, 0, 0] = np.nan
    nan = make_nifti(a, "nan.nii.gz")
    txt = tmp_path / "x.txt"
    txt.write_text("x")
    mask_other = make_nifti(np.ones((5, 6, 6), np.uint8), "mask_other.nii.gz")
    outdir = tmp_path / "outs"
    outdir.mkdir()
    runner = CliRunner()
    for args, needle in [
        ([str(txt), str(good)], "not a NIfTI"),
        ([str(nan), str(good)], "NaN"),
        ([str(good), str(mask_other)], "--resample-mask"),
    ]:
        r = runner.invoke(main, [*args, "-o", str(outdir / "o.nii.gz"), "--quiet", "--device", "cpu",
                                 "--weights", str(tmp_path / "no_weights_needed")])
        assert r.exit_code == 2, (args, r.output)
        assert needle in r.output
        assert _files(outdir) == []


def test_mgz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.random((8, 9, 10)).astype(np.float32)
    aff = np.array([[-1, 0, 0, 4], [0, 0, 1, -5], [0, -1, 0, 6], [0, 0, 0, 1]], float)
    p = tmp_path / "in.mgz"
    nib.MGHImage(data, aff).to_filename(str(p))
    img = load_image(p)
    assert isinstance(img, nib.MGHImage)
    where = np.zeros(data.shape, bool)
    where[2:4, 2:4, 2:4] = True
    out = io.like_input(io.get_data(img) + 1.0, img, where=where)
    q = save_image(out, tmp_path / "out.mgz")
    back = nib.load(str(q))
    assert isinstance(back, nib.MGHImage)
    assert np.array_equal(back.affine, img.affine)
    b = np.asanyarray(back.dataobj)
    assert np.array_equal(b[~where], data[~where])
    assert np.allclose(b[where], data[where] + 1.0)


def test_sidecar_path_and_write(tmp_path):
    assert sidecar_path(tmp_path / "a.nii.gz") == tmp_path / "a.json"
    assert sidecar_path(tmp_path / "b.mgz") == tmp_path / "b.json"
    assert sidecar_path(tmp_path / "c.nii") == tmp_path / "c.json"
    assert sidecar_path(tmp_path / "sub-01.html") == tmp_path / "sub-01.json"  # reports: their one extension
    p = write_sidecar(tmp_path / "a.json", {"seed": 1, "path": tmp_path})
    import json

    assert json.loads(p.read_text())["seed"] == 1
    with pytest.raises(InputError):
        write_sidecar(p, {}, overwrite=False)


def test_like_input_integer_clipping():
    raw = np.full((3, 3, 3), 5, np.uint8)
    ref = nib.Nifti1Image(raw, np.eye(4))
    out = io.like_input(np.full((3, 3, 3), 1000.0), ref)
    assert np.asarray(out.dataobj).dtype == np.uint8
    assert (np.asarray(out.dataobj) == 255).all()


def test_unwritable_output_folder_reported_even_as_root(tmp_path, monkeypatch):
    """The check itself, independent of who runs the tests (root can write to 0o500 folders)."""
    real_access = os.access
    monkeypatch.setattr(io.os, "access", lambda p, mode: False if mode == os.W_OK else real_access(p, mode))
    with pytest.raises(InputError, match="not writable"):
        check_output(tmp_path / "out.nii.gz")
