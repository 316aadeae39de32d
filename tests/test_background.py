"""Masks that spill out of the head (usb_prep.fill.background, the keep_background fill setting)."""
import numpy as np
from scipy import ndimage

from usb_prep import api
from usb_prep.fill.background import TOLERANCE, outside_head


def _spill():
    """The phantom, padded by 6 voxels of background, with a mask over its left surface that reaches 5 voxels
    into the background."""
    from test_api import _tiny_case

    _, v, m, aff, kw = _tiny_case()
    pad = 6
    v = np.pad(v, pad)
    aff = aff.copy()
    aff[:3, 3] -= pad * np.diag(aff)[:3]
    kw = {**kw, "affine": aff}
    head = v > 0
    left = int(np.argwhere(head.any((1, 2)))[0, 0])  # the head's leftmost voxel column
    ijk = np.indices(v.shape)
    c = np.array([left + 1, v.shape[1] // 2, v.shape[2] // 2])
    cap = np.sqrt(((ijk - c[:, None, None, None]) ** 2).sum(0)) <= 6
    spill = cap & ~ndimage.binary_erosion(head, iterations=2)  # the surface and the background beyond it
    assert (spill & head).sum() > 20 and (spill & ~head).sum() > 20
    return v, spill, head, kw


def _far(spill, head):
    """The spill's voxels farther than TOLERANCE + 1 from the head: what the mirror tells (one voxel of slack for the
    midline of a 24-voxel phantom)."""
    return spill & (ndimage.distance_transform_edt(~head) > TOLERANCE + 1)


def test_outside_head_finds_the_background_the_mask_reaches():
    v, spill, head, kw = _spill()
    far = _far(spill, head)
    assert far.sum() > 20
    out = outside_head(np.where(spill & head, 0.3, v), spill, kw["affine"])  # a lesion painted in the brain part
    assert (out & far).sum() > 0.9 * far.sum() and not (out & head).any()
    voided = outside_head(np.where(spill, 0, v), spill, kw["affine"])  # the whole mask zeroed: the mirror decides
    assert (voided & far).sum() > 0.9 * far.sum() and (voided & head).sum() <= 0.1 * voided.sum()


def test_a_cavity_the_skull_stripping_cut_away_is_filled():
    v, spill, head, kw = _spill()
    cavity = spill & head  # zero in the image, but the mirror holds brain there
    assert not (outside_head(np.where(cavity, 0, v), cavity, kw["affine"]) & cavity).any()


def test_keep_background_leaves_the_spill_as_background_and_fills_the_rest():
    v, spill, head, kw = _spill()
    img = np.where(spill & head, 0.3, v)
    kept = api.fill_parts(img, spill, patch_weight=1.0, **kw)  # the patch filler: tissue wherever it fills
    plain = api.fill_parts(img, spill, patch_weight=1.0, keep_background=False, **kw)
    bg = outside_head(img, spill, kw["affine"])
    assert plain.background_voxels == 0 and kept.background_voxels == bg.sum() > 0 and not (bg & head).any()
    assert np.all(kept.final[bg] == 0) and np.abs(plain.final[bg]).max() > 0.05  # off: tissue in the background
    assert np.array_equal(kept.final[~bg], plain.final[~bg])  # the rest of the fill is the same


def test_fill_lesion_records_and_says_the_background(lesion_case, make_nifti, tiny_weights):
    from usb_prep.io import get_data, load_image

    data = get_data(load_image(lesion_case["t1w"])).astype(np.float32)
    m = ndimage.binary_dilation(lesion_case["lesion"] > 0, iterations=12) & (np.indices(data.shape)[0] < 8)
    m |= lesion_case["lesion"] > 0
    if not (m & (data <= 0)).any():  # the phantom's edge must be inside the grown mask
        raise AssertionError("test mask does not reach the background")
    mask = make_nifti(m.astype(np.uint8), "spill_mask.nii.gz", affine=lesion_case["affine"])
    res = api.fill_lesion(lesion_case["t1w"], mask, weights=tiny_weights, steps=2, device="cpu")
    assert res.settings["keep_background"] is True and res.settings["background_voxels"] > 0
    assert any("outside the head" in s for s in res.messages)
    out = get_data(res.image)
    far = _far(m, data > 0)
    assert far.sum() > 50 and (out[far] == 0).mean() > 0.9
    assert far.sum() <= res.settings["background_voxels"] <= (m & (data <= 0)).sum()  # none of the head
