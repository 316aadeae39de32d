"""The outline prior (issue 41): a mask that reaches past a skull-stripped brain keeps the registered template's
background; masks inside the brain never run it."""

from __future__ import annotations

import numpy as np
import pytest

from usb_prep import api
from usb_prep.fill import prior

pytest.importorskip("ants")


@pytest.fixture(scope="module")
def stripped_brain():
    """A skull-stripped brain that is not the template itself: MNI152 (2 mm) shifted by 4 mm and scaled, brain
    only, normalised; a spherical mask at its right surface, half of it outside the brain, voided (0)."""
    from nilearn import datasets
    from scipy import ndimage

    t = datasets.load_mni152_template(resolution=2)
    b = np.asarray(datasets.load_mni152_brain_mask(resolution=2).dataobj) > 0.5
    x = np.asarray(t.dataobj, np.float32) * b
    x = ndimage.shift(ndimage.zoom(x, 1.05, order=1)[:99, :117, :95], (2, -1, 0), order=1)
    x = np.where(x > 0.05 * x.max(), x, 0).astype(np.float32)
    x /= np.percentile(x[x > 0], 99.5)
    brain = x > 0
    ii, jj, kk = np.indices(x.shape)
    edge_i = np.nonzero(brain[:, 60, 50])[0].min()  # the brain's surface on one left-right line
    mask = (ii - edge_i) ** 2 + (jj - 60) ** 2 + (kk - 50) ** 2 <= 8 ** 2
    deep = (ii - 50) ** 2 + (jj - 60) ** 2 + (kk - 45) ** 2 <= 4 ** 2
    return {"image": x, "brain": brain, "mask": mask, "deep": deep, "affine": t.affine}


def test_needs_prior_only_where_the_mask_meets_the_empty_space(stripped_brain):
    x, mask, deep = stripped_brain["image"], stripped_brain["mask"], stripped_brain["deep"]
    voided = np.where(mask, 0, x)
    assert prior.needs_prior(voided, mask) and prior.skull_stripped(voided, mask)
    assert not prior.needs_prior(np.where(deep, 0, x), deep)  # a deep lesion, even a black one
    noisy_head = x + 0.05 * np.random.default_rng(0).random(x.shape).astype(np.float32)
    assert not prior.skull_stripped(noisy_head, mask)  # a head image: noise, not zeros, around the brain


def test_outline_prior_keeps_the_background_past_the_brain(stripped_brain, tiny_weights):
    from usb_prep.weights import load_model

    x, mask, brain = stripped_brain["image"], stripped_brain["mask"], stripped_brain["brain"]
    voided = np.where(mask, 0, x).astype(np.float32)
    model, _ = load_model(tiny_weights, "fill")
    kw = dict(model=model, affine=stripped_brain["affine"], voxel_size=(2.0, 2.0, 2.0), device="cpu", steps=1,
              keep_background=False)
    without = api.fill_parts(voided, mask, **kw, outline_prior=False)
    with_ = api.fill_parts(voided, mask, **kw, outline_prior=True)
    assert without.prior is None and with_.prior is not None and with_.prior["used"], with_.prior
    assert with_.prior["quality"] > 0.5
    from scipy import ndimage

    far_out = mask & ~ndimage.binary_dilation(brain, iterations=2)  # well outside the true brain
    deep_in = mask & ndimage.binary_erosion(brain, iterations=2)
    assert far_out.sum() > 50 and deep_in.sum() > 50
    assert (without.final[far_out] > 0).mean() > 0.5  # the fill paints tissue there without the prior
    assert (with_.final[far_out] == 0).mean() > 0.8
    assert (with_.final[deep_in] > 0).mean() > 0.8  # the brain inside the mask is still filled
    assert np.array_equal(with_.final[~mask], voided[~mask])
    # a deep mask never runs it
    deep = stripped_brain["deep"]
    assert api.fill_parts(np.where(deep, 0, x), deep, **kw, outline_prior=True).prior is None


def test_edge_offset_moves_the_template_to_the_image_edge():
    """A registered brain 2 voxels smaller than the image's own (a wider skull strip): the offset is +2, and the
    mask voxels of that strip are not emptied."""
    shape = (40, 40, 40)
    ii = np.indices(shape) - 20
    r = np.sqrt((ii ** 2).sum(0))
    image = np.where(r <= 14, 1.0, 0.0).astype(np.float32)
    template = prior.Prior(brain=(r <= 12).astype(np.float32), quality=0.9, seconds=0.0)
    mask = (np.abs(ii[0] - 14) <= 4) & (np.abs(ii[1]) <= 4) & (np.abs(ii[2]) <= 4)  # across the edge
    assert prior.edge_offset(template, image, mask) == 2
    assert prior.signed_distance(r <= 12)[20, 20, 20 + 12] == 0  # the outermost layer is 0
    out = prior.outside_brain(template, mask, offset=2)
    plain = prior.outside_brain(template, mask)
    emptied, emptied_plain = int((out & (r <= 14)).sum()), int((plain & (r <= 14)).sum())
    assert emptied_plain > 100 and emptied < 0.1 * emptied_plain  # the strip's brain is kept
    assert (out & (r > 15.5)).sum() == (mask & (r > 15.5)).sum()  # what lies outside still goes


def test_the_mirror_keeps_a_cortical_mask_whose_other_side_is_brain():
    """With the mirror condition, a template that wrongly calls part of a mask outside the brain empties nothing
    where the other hemisphere has brain; where the mirror is background too, the call stands."""
    shape = (40, 40, 40)
    ii = np.indices(shape) - 20
    r = np.sqrt((ii ** 2).sum(0))
    image = np.where(r <= 14, 1.0, 0.0).astype(np.float32)
    mask = (np.abs(ii[0] - 13) <= 3) & (np.abs(ii[1]) <= 3) & (np.abs(ii[2]) <= 3)  # at the right surface
    wrong = prior.Prior(brain=(r <= 10).astype(np.float32), quality=0.9, seconds=0.0)  # too small a brain
    aff = np.eye(4)
    alone = prior.outside_brain(wrong, mask)
    both = prior.outside_brain(wrong, mask, mirror=prior.mirrored(image, mask, aff))
    assert (alone & (r <= 14)).sum() > 20 and not (both & (r <= 14)).any()
    spill = (np.abs(ii[0] - 16) <= 3) & (np.abs(ii[1]) <= 3) & (np.abs(ii[2]) <= 3)  # reaches past the brain
    voided = np.where(spill, 0, image).astype(np.float32)
    out = prior.outside_brain(wrong, spill, mirror=prior.mirrored(voided, spill, aff))
    assert (out & (r > 15.5)).sum() >= 0.8 * (spill & (r > 15.5)).sum()


def test_tissue_prior_gate_depth_blend_and_tissue_image():
    """The gate admits one thick lesion, not many small ones of the same volume; the blend's weight follows depth;
    the tissue image is the maps times the image's own levels, known inside the mask."""
    shape = (60, 60, 60)
    ii = np.indices(shape) - 30
    r = np.sqrt((ii ** 2).sum(0))
    ball = r <= 21  # ~39 ml at 1 mm, 21 voxels deep
    assert prior.thick(ball) and not prior.thick(ball, depth=25) and not prior.thick(r <= 8)
    many = np.all((ii + 30) % 4 < 3, axis=0)  # 3375 lesions of 3^3 voxels: 91 ml, none deep
    assert many.sum() >= 30_000 and not prior.thick(many)

    depth = prior.mask_depth(ball)
    fill, tissue = np.zeros(shape, np.float32), np.ones(shape, np.float32)
    out = prior.depth_blend(fill, tissue, ball, weight=0.6)
    assert np.all(out[~ball] == 0) and np.all(out[ball & (depth <= 2)] == 0)
    assert np.allclose(out[depth >= 8], 0.6) and np.all(np.diff([out[depth == d].mean() for d in range(2, 9)]) > 0)

    # three tissues in shells; the maps say which is where; the image's own levels come back inside the mask
    csf, gm, wm = (r > 20) & (r <= 26), (r > 12) & (r <= 20), r <= 12
    image = (0.2 * csf + 0.5 * gm + 0.9 * wm).astype(np.float32)
    mask = (np.abs(ii[0]) <= 6) & (np.abs(ii[1]) <= 6) & (ii[2] >= 5) & (ii[2] <= 23)  # across WM, GM and CSF
    voided = np.where(mask, 0, image).astype(np.float32)
    maps = np.stack([csf, gm, wm]).astype(np.float32)
    reg = prior.Prior(brain=(r <= 26).astype(np.float32), quality=0.9, seconds=0.0, tissues=maps)
    t = prior.tissue_image(reg, voided, mask)
    assert np.allclose(t[mask], image[mask], atol=1e-5)
    assert prior.tissue_image(prior.Prior(brain=reg.brain, quality=0.1, seconds=0.0, tissues=maps), voided,
                              mask) is None  # a poor registration gives no tissue image


def test_tissue_prior_runs_on_thick_masks_only(stripped_brain, tiny_weights):
    from scipy import ndimage

    from usb_prep.weights import load_model

    x, brain = stripped_brain["image"], stripped_brain["brain"]
    ii = np.indices(x.shape)
    thick = ((ii[0] - 62) ** 2 + (ii[1] - 60) ** 2 + (ii[2] - 45) ** 2 <= 11 ** 2) & brain  # 2 mm voxels: ~40 ml
    voided = np.where(thick, 0, x).astype(np.float32)
    model, _ = load_model(tiny_weights, "fill")
    kw = dict(model=model, affine=stripped_brain["affine"], voxel_size=(2.0, 2.0, 2.0), device="cpu", steps=1)
    without = api.fill_parts(voided, thick, **kw, tissue_prior=0.0)
    with_ = api.fill_parts(voided, thick, **kw, tissue_prior=0.6)
    assert without.prior is None and with_.prior["used"] and with_.prior["tissue_weight"] == 0.6
    assert not with_.prior["outline"] and "prior" in with_.seconds
    depth = prior.mask_depth(thick)
    changed = with_.final != without.final
    assert not changed[~thick].any() and not changed[thick & (depth <= 2)].any()
    assert changed[depth >= 4].mean() > 0.9
    assert any("tissue image" in m for m in api.prior_messages(with_))
    small = ndimage.binary_erosion(thick, iterations=8)  # a few ml: the gate keeps it out
    assert api.fill_parts(np.where(small, 0, x), small, **kw, tissue_prior=0.6).prior is None
