"""Image-quality, overlap and distribution metrics for lesion filling.

Conventions: intensities are compared on a common [0, 1] scale (see
:func:`scale01`); ``mask`` arguments select the voxels that count.

* In-mask metrics (:func:`masked_mae`, :func:`masked_psnr`,
  :func:`masked_ssim`) follow the BraTS 2023 local-synthesis (inpainting)
  challenge: MSE/MAE over the inpainted voxels, SSIM = mean of the full 3-D
  SSIM map over the inpainted voxels.
* Whole-image metrics (:func:`l1`, :func:`psnr`, :func:`ssim`) are the same
  computations over all voxels (or a brain mask), as in the USB paper's
  Table 2.
* :func:`mmd`, :func:`frechet_distance` compare two *sets* of feature vectors
  (e.g. from :func:`image_features`) for generation quality.
"""
from __future__ import annotations

import numpy as np
from scipy import linalg, ndimage

__all__ = [
    "scale01", "masked_mae", "masked_psnr", "masked_ssim", "ssim_map",
    "l1", "psnr", "ssim", "dice", "mmd", "frechet_distance", "image_features",
]

_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5  # radius int(3.5 * 1.5 + 0.5) = 5 -> 11-voxel window, as Wang et al.


def scale01(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linearly map ``[lo, hi]`` to ``[0, 1]`` and clip (float64).

    Use the *same* ``lo, hi`` (e.g. from the reference image) for prediction
    and reference so the comparison is on one scale.
    """
    if not hi > lo:
        raise ValueError(f"need hi > lo, got lo={lo}, hi={hi}")
    return np.clip((np.asarray(a, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)


def _sel(pred, ref, mask):
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch {pred.shape} vs {ref.shape}")
    if mask is None:
        return pred.ravel(), ref.ravel()
    mask = np.asarray(mask).astype(bool)
    if not mask.any():
        raise ValueError("empty mask")
    return pred[mask], ref[mask]


def masked_mae(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None) -> float:
    """Mean absolute error over mask voxels (all voxels if ``mask`` is None)."""
    p, r = _sel(pred, ref, mask)
    return float(np.mean(np.abs(p - r)))


def masked_psnr(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None, data_range: float = 1.0) -> float:
    """PSNR (dB) = ``10 log10(data_range^2 / MSE)`` with MSE over mask voxels.

    Returns ``inf`` for identical inputs.
    """
    p, r = _sel(pred, ref, mask)
    mse = float(np.mean((p - r) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range ** 2 / mse))


def ssim_map(pred: np.ndarray, ref: np.ndarray, data_range: float = 1.0,
             sigma: float = _SSIM_SIGMA, k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Full n-D SSIM map with a Gaussian window (Wang et al. 2004).

    Gaussian weights with ``sigma`` (truncated at 3.5 sigma), population
    (not sample) covariances, constants ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``;
    borders use reflection (as ``skimage.metrics.structural_similarity`` with
    ``gaussian_weights=True, use_sample_covariance=False``).
    """
    x = np.asarray(pred, dtype=np.float64)
    y = np.asarray(ref, dtype=np.float64)

    def g(a):
        return ndimage.gaussian_filter(a, sigma, truncate=_SSIM_TRUNCATE, mode="reflect")

    mx, my = g(x), g(y)
    vx = g(x * x) - mx * mx
    vy = g(y * y) - my * my
    cxy = g(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def masked_ssim(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None, data_range: float = 1.0) -> float:
    """Mean of the 3-D SSIM map over mask voxels (all voxels if ``mask`` is None).

    The map is computed on the mask's bounding box plus the window radius,
    which gives the same values as on the full volume but is much faster for
    small masks.
    """
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch {pred.shape} vs {ref.shape}")
    if mask is None:
        return float(ssim_map(pred, ref, data_range).mean())
    mask = np.asarray(mask).astype(bool)
    if not mask.any():
        raise ValueError("empty mask")
    # Crop with a margin of two window radii: the SSIM value at a voxel only
    # depends on voxels within one radius, so mask voxels see no crop edge.
    r = 2 * int(_SSIM_TRUNCATE * _SSIM_SIGMA + 0.5)
    idx = np.nonzero(mask)
    sl = tuple(slice(max(int(i.min()) - r, 0), min(int(i.max()) + r + 1, n)) for i, n in zip(idx, mask.shape))
    smap = ssim_map(pred[sl], ref[sl], data_range)
    return float(smap[mask[sl]].mean())


def l1(pred: np.ndarray, ref: np.ndarray, brain: np.ndarray | None = None) -> float:
    """Whole-image mean absolute error (over ``brain`` when given)."""
    return masked_mae(pred, ref, brain)


def psnr(pred: np.ndarray, ref: np.ndarray, brain: np.ndarray | None = None, data_range: float = 1.0) -> float:
    """Whole-image PSNR in dB (MSE over ``brain`` when given)."""
    return masked_psnr(pred, ref, brain, data_range)


def ssim(pred: np.ndarray, ref: np.ndarray, brain: np.ndarray | None = None, data_range: float = 1.0) -> float:
    """Whole-image SSIM: mean of the SSIM map over all voxels (or ``brain``).

    Where ``pred`` and ``ref`` agree on a whole window the map is exactly 1,
    so the map is only computed on the bounding box of the differing voxels
    (plus two window radii); the rest counts as 1. Same value as the full map
    (to rounding), much faster when a filler changed only a lesion.
    """
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch {pred.shape} vs {ref.shape}")
    sel = np.ones(pred.shape, bool) if brain is None else np.asarray(brain).astype(bool)
    n = int(sel.sum())
    if n == 0:
        raise ValueError("empty mask")
    diff = pred != ref
    if not diff.any():
        return 1.0
    r = 2 * int(_SSIM_TRUNCATE * _SSIM_SIGMA + 0.5)
    idx = np.nonzero(diff)
    sl = tuple(slice(max(int(i.min()) - r, 0), min(int(i.max()) + r + 1, k)) for i, k in zip(idx, pred.shape))
    smap = ssim_map(pred[sl], ref[sl], data_range)
    inside = sel[sl]
    total = float(smap[inside].sum()) + float(n - inside.sum())
    return total / n


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap ``2|A & B| / (|A| + |B|)`` of two binary arrays (1.0 if both empty)."""
    a = np.asarray(a).astype(bool)
    b = np.asarray(b).astype(bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else float(2.0 * np.logical_and(a, b).sum() / s)


def _as2d(f):
    f = np.asarray(f, dtype=np.float64)
    return f[:, None] if f.ndim == 1 else f


def mmd(feats_a: np.ndarray, feats_b: np.ndarray, sigma: float | None = None, unbiased: bool = False) -> float:
    """Squared maximum mean discrepancy with a Gaussian (RBF) kernel.

    ``k(x, y) = exp(-|x - y|^2 / (2 sigma^2))``; ``sigma`` defaults to the
    median heuristic: the median pairwise Euclidean distance in the pooled
    sample. The default (biased, V-statistic) estimate is >= 0 and exactly 0
    for identical sets; ``unbiased=True`` drops the diagonal terms.

    Parameters
    ----------
    feats_a, feats_b : ndarray, shape (n, d) and (m, d)
        Feature vectors, one row per sample.
    """
    a, b = _as2d(feats_a), _as2d(feats_b)
    z = np.concatenate([a, b])
    d2 = np.maximum(np.sum(z * z, 1)[:, None] + np.sum(z * z, 1)[None, :] - 2 * z @ z.T, 0.0)
    if sigma is None:
        off = d2[np.triu_indices(len(z), 1)]
        off = off[off > 0]
        sigma = float(np.sqrt(np.median(off))) if off.size else 1.0
    k = np.exp(-d2 / (2.0 * sigma ** 2))
    n = len(a)
    kaa, kbb, kab = k[:n, :n], k[n:, n:], k[:n, n:]
    if unbiased:
        m = len(b)
        if n < 2 or m < 2:
            raise ValueError("unbiased MMD needs at least 2 samples per set")
        saa = (kaa.sum() - np.trace(kaa)) / (n * (n - 1))
        sbb = (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
        return float(saa + sbb - 2 * kab.mean())
    return float(max(kaa.mean() + kbb.mean() - 2 * kab.mean(), 0.0))


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID formula).

    ``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^{1/2})``; ``eps`` is added
    to the covariance diagonals when their product is near singular (few
    samples, many features).
    """
    a, b = _as2d(feats_a), _as2d(feats_b)
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca = np.atleast_2d(np.cov(a, rowvar=False))
    cb = np.atleast_2d(np.cov(b, rowvar=False))
    covmean, _ = linalg.sqrtm(ca @ cb, disp=False)
    if not np.all(np.isfinite(covmean)):
        off = np.eye(ca.shape[0]) * eps
        covmean = linalg.sqrtm((ca + off) @ (cb + off))
    covmean = np.real(covmean)
    fd = float(np.sum((mu_a - mu_b) ** 2) + np.trace(ca) + np.trace(cb) - 2 * np.trace(covmean))
    return max(fd, 0.0)


_FEAT_GRID = 48
_FEAT_CHANNELS = (8, 16, 32)
_FEAT_BINS = 16
_feat_weights: list | None = None


def _feature_weights():
    """Fixed random conv weights (numpy seed 0, He-normal), built once."""
    global _feat_weights
    if _feat_weights is None:
        rng = np.random.default_rng(0)
        ws, cin = [], 1
        for cout in _FEAT_CHANNELS:
            w = rng.normal(0.0, np.sqrt(2.0 / (cin * 27)), size=(cout, cin, 3, 3, 3)).astype(np.float32)
            b = rng.normal(0.0, 0.1, size=cout).astype(np.float32)
            ws.append((w, b))
            cin = cout
        _feat_weights = ws
    return _feat_weights


def image_features(volume: np.ndarray, brain: np.ndarray | None = None) -> np.ndarray:
    """Deterministic feature vector of a 3-D image, for MMD / Fréchet distances.

    What it is (fixed, no training, so numbers are reproducible anywhere):

    1. intensities are assumed on [0, 1] (use :func:`scale01`) and clipped;
       voxels outside ``brain`` (if given) are set to 0;
    2. the volume is resampled (trilinear, ``scipy.ndimage.zoom``) to a fixed
       48^3 grid, so images on different grids are comparable;
    3. a 3-layer random 3-D CNN -- conv 3^3 stride 2 with 8, 16, 32 channels,
       ReLU, weights He-normal from ``numpy.random.default_rng(0)`` -- is run
       with torch; from each layer the global mean and global max of every
       channel are kept (2 x 56 = 112 values);
    4. a 16-bin intensity histogram on (0, 1] of the brain voxels (density,
       sums to 1) plus their mean, std and 5/25/50/75/95th percentiles
       (23 values).

    Returns
    -------
    ndarray, shape (135,), float64
    """
    import torch  # lazy

    v = np.clip(np.asarray(volume, dtype=np.float64), 0.0, 1.0)
    if brain is not None:
        brain = np.asarray(brain).astype(bool)
        v = np.where(brain, v, 0.0)
        vals = v[brain]
    else:
        vals = v[v > 0]
    if vals.size == 0:
        vals = np.zeros(1)
    small = ndimage.zoom(v, [_FEAT_GRID / s for s in v.shape], order=1, grid_mode=False)
    small = small[:_FEAT_GRID, :_FEAT_GRID, :_FEAT_GRID]
    x = torch.from_numpy(np.ascontiguousarray(small, dtype=np.float32))[None, None]
    feats = []
    with torch.no_grad():
        for w, b in _feature_weights():
            x = torch.relu(torch.nn.functional.conv3d(x, torch.from_numpy(w), torch.from_numpy(b), stride=2, padding=1))
            feats.append(x.mean(dim=(2, 3, 4)).flatten().double().numpy())
            feats.append(x.amax(dim=(2, 3, 4)).flatten().double().numpy())
    hist, _ = np.histogram(vals, bins=_FEAT_BINS, range=(0.0, 1.0))
    hist = hist / max(hist.sum(), 1)
    stats = [vals.mean(), vals.std(), *np.percentile(vals, [5, 25, 50, 75, 95])]
    return np.concatenate(feats + [hist, np.asarray(stats, dtype=np.float64)])
