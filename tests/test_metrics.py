"""Tests of usb_prep.metrics on simple synthetic cases."""
import numpy as np
import pytest

from usb_prep import metrics as M


def vol(seed=0, shape=(20, 20, 20)):
    rng = np.random.default_rng(seed)
    from scipy.ndimage import gaussian_filter
    v = gaussian_filter(rng.random(shape), 2)
    return (v - v.min()) / (v.max() - v.min())


def test_scale01():
    a = np.array([-1.0, 0.0, 5.0, 10.0, 20.0])
    np.testing.assert_allclose(M.scale01(a, 0, 10), [0, 0, 0.5, 1, 1])
    with pytest.raises(ValueError):
        M.scale01(a, 1, 1)


def test_identical():
    v = vol()
    m = np.zeros(v.shape, bool)
    m[5:10, 5:10, 5:10] = True
    assert M.masked_psnr(v, v, m) == np.inf
    assert M.psnr(v, v) == np.inf
    assert M.masked_mae(v, v, m) == 0.0
    assert M.l1(v, v) == 0.0
    assert M.masked_ssim(v, v, m) == pytest.approx(1.0)
    assert M.ssim(v, v) == pytest.approx(1.0)


def test_known_values():
    ref = np.zeros((8, 8, 8))
    pred = ref + 0.1
    m = np.zeros(ref.shape, bool)
    m[2:4, 2:4, 2:4] = True
    assert M.masked_mae(pred, ref, m) == pytest.approx(0.1)
    assert M.masked_psnr(pred, ref, m) == pytest.approx(20.0)  # 10 log10(1 / 0.01)
    pred2 = ref.copy()
    pred2[m] = 0.5
    assert M.masked_mae(pred2, ref, m) == pytest.approx(0.5)
    assert M.l1(pred2, ref) == pytest.approx(0.5 * 8 / 512)
    assert M.psnr(pred, ref, data_range=2.0) == pytest.approx(10 * np.log10(4 / 0.01))


def test_ssim_noise_lower_and_matches_skimage():
    v = vol(1, (24, 24, 24))
    rng = np.random.default_rng(0)
    noisy = np.clip(v + rng.normal(0, 0.1, v.shape), 0, 1)
    m = np.zeros(v.shape, bool)
    m[6:18, 6:18, 6:18] = True
    s = M.masked_ssim(noisy, v, m)
    assert s < 0.9
    # cropping for the mask gives the same value as the full map
    assert s == pytest.approx(float(M.ssim_map(noisy, v)[m].mean()), abs=1e-12)
    skm = pytest.importorskip("skimage.metrics")
    _, full = skm.structural_similarity(noisy, v, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, full=True)
    np.testing.assert_allclose(M.ssim_map(noisy, v), full, atol=1e-6)


def test_dice():
    a = np.zeros((5, 5), bool)
    b = a.copy()
    assert M.dice(a, b) == 1.0
    a[0, :4] = True
    b[0, 2:] = True
    assert M.dice(a, b) == pytest.approx(2 * 2 / (4 + 3))


def test_mmd_frechet():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 3))
    assert M.mmd(a, a) == pytest.approx(0.0, abs=1e-12)
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    b = rng.normal(size=(40, 3))
    c = b + 2.0
    assert M.mmd(a, c) > 5 * M.mmd(a, b)
    assert M.frechet_distance(a, c) > 10.0  # mean shift of 2 in 3 dims -> ~12
    assert M.frechet_distance(a, c) > 5 * M.frechet_distance(a, b)
    assert M.mmd(a, c, unbiased=True) > M.mmd(a, b, unbiased=True)


def test_image_features_deterministic_and_sensitive():
    v = 0.05 + 0.9 * vol(2, (30, 26, 22))  # no zeros: brain=None uses v > 0
    f1 = M.image_features(v)
    f2 = M.image_features(v.copy())
    assert f1.shape == (135,)
    assert np.all(np.isfinite(f1))
    assert np.array_equal(f1, f2)
    f3 = M.image_features(np.clip(v * 0.5, 0, 1))
    assert not np.allclose(f1, f3)
    brain = np.ones(v.shape, bool)
    assert np.allclose(M.image_features(v, brain), f1)


def test_whole_ssim_crop_equals_full_map():
    v = vol(3, (30, 30, 30))
    p = v.copy()
    p[12:16, 10:14, 8:12] += 0.3
    p = np.clip(p, 0, 1)
    full = M.ssim_map(p, v)
    assert M.ssim(p, v) == pytest.approx(float(full.mean()), abs=1e-12)
    brain = np.zeros(v.shape, bool)
    brain[5:25, 5:25, 5:25] = True
    assert M.ssim(p, v, brain) == pytest.approx(float(full[brain].mean()), abs=1e-12)
