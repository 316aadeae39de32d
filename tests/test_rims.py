"""Masks that miss a lesion's rim (usb_prep.fill.rims, the auto_ring fill setting)."""

import numpy as np
import pytest
from scipy import ndimage

from usb_prep import api
from usb_prep.fill.rims import missed_rims


def _slab(shape=(40, 40, 40), seed=0):
    rng = np.random.default_rng(seed)
    img = (0.8 + 0.02 * rng.standard_normal(shape)).astype(np.float32)
    return img, np.ones(shape, bool)


def _ball(shape, centre, r):
    z = np.indices(shape).transpose(1, 2, 3, 0) - np.asarray(centre)
    return np.sqrt((z ** 2).sum(-1)) <= r


@pytest.mark.parametrize("core", [0.1, 1.6])  # a dark (T1w) and a bright (T2w, FLAIR) lesion
def test_a_rim_outside_the_mask_is_found_per_lesion(core):
    img, brain = _slab()
    with_rim, without = _ball(img.shape, (12, 20, 20), 4), _ball(img.shape, (28, 20, 20), 4)
    mask = with_rim | without
    img[mask] = core
    rim = ndimage.binary_dilation(with_rim) & ~with_rim
    img[rim] = 0.5 * (0.8 + core)  # the partial-volume rim the mask misses
    found = missed_rims(img, mask, brain)
    assert np.array_equal(found, rim)  # that lesion's whole first ring, nothing around the other one


def test_no_rim_where_the_mask_holds_the_whole_lesion_or_the_lesion_meets_csf():
    img, brain = _slab()
    les = _ball(img.shape, (20, 20, 20), 5)
    img[les] = 0.1
    assert not missed_rims(img, les, brain).any()
    img[:, :, :20] = np.where(les[:, :, :20], 0.1, img[:, :, :20])
    img[:, :, 14:17] = 0.05  # a CSF-dark sulcus touching one side of the lesion: part of its ring only
    img[les] = 0.1
    assert not missed_rims(img, les, brain).any()
    flat = np.full(img.shape, 0.8, np.float32)  # no contrast between lesion and tissue: nothing to miss
    assert not missed_rims(flat, les, brain).any()


def test_auto_ring_fills_around_the_missed_rim_and_writes_only_the_mask():
    from test_api import _tiny_case

    _, v, m, _, kw = _tiny_case()
    dark = v.copy()
    dark[m] = 0.05
    rim = ndimage.binary_dilation(m) & ~m & (v > 0)
    dark[rim] = 0.5 * (v[rim] + 0.05)
    settings = {"patch_weight": 0.0, "nlm_weight": 1.0}
    plain = api.fill_parts(dark, m, **settings, **kw)
    auto = api.fill_parts(dark, m, auto_ring=True, **settings, **kw)
    assert plain.rim_voxels == 0 and auto.rim_voxels == int(rim.sum())
    assert np.array_equal(auto.mask, m | rim)
    assert np.array_equal(auto.final[~m], dark[~m])  # outside the mask: the input, bit for bit
    assert auto.final[m].mean() > plain.final[m].mean() + 0.05  # the dark rim was not copied in
    clean = api.fill_parts(v, m, auto_ring=True, **settings, **kw)  # a lesion inside its mask: no change
    assert clean.rim_voxels == 0 and np.array_equal(clean.final, api.fill_parts(v, m, **settings, **kw).final)


def test_fill_lesion_records_and_says_the_missed_rim(lesion_case, make_nifti, tiny_weights):
    from usb_prep.io import get_data, load_image

    data = get_data(load_image(lesion_case["t1w"])).astype(np.float32)
    m = lesion_case["lesion"] > 0
    rim = ndimage.binary_dilation(m) & ~m & (data > 0)
    data[rim] = data[m].mean()  # the mask is one voxel too tight
    path = make_nifti(data, "rimmed.nii.gz", affine=lesion_case["affine"])
    res = api.fill_lesion(path, lesion_case["mask"], weights=tiny_weights, steps=2, auto_ring=True, device="cpu")
    assert res.settings["auto_ring"] is True and res.settings["rim_voxels"] == int(rim.sum())
    assert any("rim" in msg for msg in res.messages), res.messages
    off = api.fill_lesion(path, lesion_case["mask"], weights=tiny_weights, steps=2, auto_ring=False, device="cpu")
    assert off.settings["rim_voxels"] == 0 and not any("rim" in msg for msg in off.messages)


def test_the_lesions_box_gives_the_whole_images_answer():
    """missed_rims works on the mask's bounding box plus what the ring depends on: same voxels as the whole image."""
    from usb_prep.fill.rims import _missed_rims

    img, brain = _slab((90, 70, 60), seed=1)
    rng = np.random.default_rng(2)
    img += 0.2 * ndimage.gaussian_filter(rng.standard_normal(img.shape), 2).astype(np.float32)  # tissue texture
    a, b = _ball(img.shape, (6, 10, 30), 4), _ball(img.shape, (40, 30, 30), 3)  # one at the image's edge
    img[a | b] = 0.1
    img[ndimage.binary_dilation(a) & ~a] = 0.45
    found = missed_rims(img, a | b, brain)
    assert found.any() and np.array_equal(found, _missed_rims(img, a | b, brain))
