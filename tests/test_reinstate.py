"""Core mask inverse mapping (usb_prep.reinstate): grids, transforms, labels."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from usb_prep import reinstate as rs


def _conformed(shape_n, centre_ras):
    """A FreeSurfer-like conformed LIA vox2ras of size n^3 at 1 mm."""
    m = np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])
    aff = np.eye(4)
    aff[:3, :3] = m
    aff[:3, 3] = np.asarray(centre_ras) - m @ (np.full(3, shape_n / 2.0))
    return aff


def test_resample_to_conformed_keeps_world_position(lesion_case):
    mask = nb.load(lesion_case["mask"])
    orig = nb.MGHImage(np.zeros((32, 32, 32), np.uint8), _conformed(32, (0, 0, 0)))
    out = rs.resample_to(mask, orig)
    assert isinstance(out, nb.MGHImage)
    src_c = nb.affines.apply_affine(mask.affine, np.argwhere(mask.get_fdata() > 0).mean(0))
    dst_c = nb.affines.apply_affine(orig.affine, np.argwhere(out.get_fdata() > 0).mean(0))
    np.testing.assert_allclose(src_c, dst_c, atol=0.6)
    assert abs(int(out.get_fdata().sum()) - int(mask.get_fdata().sum())) <= 0.1 * mask.get_fdata().sum()


def test_linear_threshold_vs_nearest(lesion_case):
    mask = nb.load(lesion_case["mask"])
    target = nb.Nifti1Image(np.zeros((12, 14, 12), np.float32), np.diag([2.0, 2, 2, 1]) @ np.eye(4))
    target.affine[:3, 3] = mask.affine[:3, 3]
    near = rs.resample_to(mask, target, interpolation="nearest").get_fdata()
    lin = rs.resample_to(mask, target, interpolation="linear", threshold=0.5).get_fdata()
    assert near.sum() > 0 and lin.sum() > 0
    assert set(np.unique(lin)) <= {0, 1}
    with pytest.raises(ValueError):
        rs.resample_to(mask, target, interpolation="cubic")


def test_hemisphere_label_from_neighbours():
    labels = np.zeros((10, 10, 10), np.int32)
    labels[:5] = 2      # Left-Cerebral-White-Matter on low i
    labels[5:] = 41     # Right-Cerebral-White-Matter
    mask = np.zeros_like(labels, bool)
    mask[1:3, 4:6, 4:6] = True
    mask[7:9, 4:6, 4:6] = True
    out = rs.hemisphere_labels(mask, labels, np.eye(4))
    assert set(out[1:3, 4:6, 4:6].ravel()) == {25}
    assert set(out[7:9, 4:6, 4:6].ravel()) == {57}
    assert (out[~mask] == 0).all()


def test_hemisphere_label_from_ras_sign_without_lateral_labels():
    labels = np.zeros((10, 10, 10), np.int32)
    aff = np.diag([-1.0, 1, 1, 1])  # LIA-like x axis: voxel i grows to the left
    aff[0, 3] = 4.5
    mask = np.zeros_like(labels, bool)
    mask[8, 5, 5] = True   # x = -3.5 -> left
    mask[1, 5, 5] = True   # x = +3.5 -> right
    out = rs.hemisphere_labels(mask, labels, aff)
    assert out[8, 5, 5] == 25 and out[1, 5, 5] == 57


def test_write_label_fixed_and_dtype(lesion_case):
    dseg = nb.load(lesion_case["dseg"])
    out = rs.write_label(dseg, lesion_case["mask"], 7)
    data = np.asanyarray(out.dataobj)
    assert data.dtype == np.uint8
    assert (data[lesion_case["lesion"] > 0] == 7).all()
    np.testing.assert_array_equal(data[lesion_case["lesion"] == 0],
                                  np.asanyarray(dseg.dataobj)[lesion_case["lesion"] == 0])
    big = rs.write_label(dseg, lesion_case["mask"], 1000)
    assert np.asanyarray(big.dataobj).max() == 1000


def test_niftyreg_affine_matches_shift(lesion_case, tmp_path):
    """A NiftyReg affine maps reference world -> floating world."""
    mask = nb.load(lesion_case["mask"])
    shift = np.eye(4)
    shift[0, 3] = 3.0  # floating = reference + 3 mm in x
    aff_file = tmp_path / "aff.txt"
    np.savetxt(aff_file, shift)
    out = rs.apply_niftyreg_transform(mask, mask, aff_file).get_fdata()
    src = np.argwhere(mask.get_fdata() > 0).mean(0)
    dst = np.argwhere(out > 0).mean(0)
    np.testing.assert_allclose(dst - src, [-3, 0, 0], atol=0.5)


def test_ants_identity_transform(lesion_case, tmp_path):
    ants = pytest.importorskip("ants")
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    path = str(tmp_path / "identity.mat")
    ants.write_transform(tx, path)
    out = rs.apply_ants_transforms(lesion_case["mask"], lesion_case["t1w"], [path]).get_fdata()
    np.testing.assert_array_equal(out > 0, lesion_case["lesion"] > 0)


def test_reinstate_lesion_freesurfer_hemi(lesion_case):
    mask = nb.load(lesion_case["mask"])
    orig_aff = _conformed(32, (0, 0, 0))
    xyz = nb.affines.apply_affine(orig_aff, np.indices((32,) * 3).reshape(3, -1).T).reshape(32, 32, 32, 3)
    aseg = np.where(xyz[..., 0] < 0, 2, 41).astype(np.int32)
    res = rs.reinstate_lesion(mask, nb.MGHImage(aseg, orig_aff),
                              orig=nb.MGHImage(np.zeros((32,) * 3, np.uint8), orig_aff),
                              rawavg=nb.MGHImage(np.zeros(mask.shape, np.uint8), mask.affine), label="hemi")
    data = np.asanyarray(res.label_image.dataobj)
    lesion = np.asanyarray(res.mask.dataobj) > 0
    assert lesion.any() and (data[lesion] == 25).all()  # the phantom lesion is at x = -4 (left)
    assert any("FreeSurfer" in m for m in res.messages)


def test_cost_function_mask_inverts(lesion_case):
    out = np.asanyarray(rs.cost_function_mask(lesion_case["mask"]).dataobj)
    np.testing.assert_array_equal(out, 1 - lesion_case["lesion"])


def test_core_modules_import_without_nipype():
    import subprocess
    import sys

    code = ("import sys; sys.modules['nipype'] = None; "
            "import usb_prep.reinstate, usb_prep.reports, usb_prep.bids")
    subprocess.run([sys.executable, "-c", code], check=True)
