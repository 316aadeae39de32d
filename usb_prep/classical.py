"""Classical lesion fillers, the baselines the diffusion filler is compared with.

Two methods, both on plain numpy arrays (mask value 1 = lesion voxel to fill):

* :func:`fill_wmstats` -- "white-matter statistics" filling in the manner of
  FSL ``lesion_filling`` and ANTs ``LesionFilling``: every lesion voxel gets a
  random draw from the intensity distribution of the normal-appearing white
  matter that surrounds its lesion. Fast; no texture, no anatomy.
* :func:`fill_patch` -- non-local, patch-based inward filling in the manner of
  NiftySeg ``seg_FillLesions`` (Prados et al. 2016): the lesion is filled
  from its boundary inward, each voxel copying the centre of the best matching
  known patch in a local search window.

Guarantees shared by both: voxels outside the mask are returned bit-identical
(the output dtype is ``result_type(image.dtype, float32)``, which represents
every input value exactly for the usual MRI dtypes), every mask voxel gets a
finite value, and the result depends only on the inputs and the given
``numpy.random.Generator``.

:func:`fill_image` wraps both for nibabel images.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .crops import bbox

__all__ = ["fill_wmstats", "fill_patch", "fill_image", "kmeans_1d"]

_CONN26 = np.ones((3, 3, 3), dtype=bool)


def _prepare(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return a float copy of ``image`` (exact for the input values) and a bool mask."""
    image = np.asarray(image)
    mask = np.asarray(mask).astype(bool)
    if image.ndim != 3 or mask.shape != image.shape:
        raise ValueError(f"need 3D image and same-shape mask, got {image.shape} and {mask.shape}")
    out = np.array(image, dtype=np.result_type(image.dtype, np.float32), copy=True)
    if not np.all(np.isfinite(out[~mask])):
        # Non-finite known voxels would poison statistics and patch distances.
        raise ValueError("image has non-finite values outside the mask")
    return out, mask


def kmeans_1d(values: np.ndarray, n_classes: int = 3, n_iter: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic 1-D k-means (Lloyd), initialised at evenly spaced quantiles.

    Parameters
    ----------
    values : ndarray
        1-D sample.
    n_classes : int
        Number of clusters.
    n_iter : int
        Maximum Lloyd iterations.

    Returns
    -------
    centres : ndarray, shape (k,)
        Cluster means sorted ascending (empty clusters are dropped, so k may be
        smaller than ``n_classes``).
    labels : ndarray of int
        Index into ``centres`` for every value.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    q = (np.arange(n_classes) + 0.5) / n_classes
    centres = np.unique(np.quantile(v, q))
    for _ in range(n_iter):
        # 1-D: nearest centre = bin by midpoints between sorted centres.
        labels = np.searchsorted((centres[1:] + centres[:-1]) / 2, v)
        counts = np.bincount(labels, minlength=centres.size)
        sums = np.bincount(labels, weights=v, minlength=centres.size)
        keep = counts > 0
        new = sums[keep] / counts[keep]
        if new.size == centres.size and np.allclose(new, centres, rtol=0, atol=1e-12):
            break
        centres = np.sort(new)
    labels = np.searchsorted((centres[1:] + centres[:-1]) / 2, v)
    return centres, labels


def fill_wmstats(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    brain: np.ndarray | None = None,
    shell_mm: tuple[float, float] = (1.0, 6.0),
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0),
    n_classes: int = 3,
    wm_class: int = -1,
    min_voxels: int = 50,
) -> np.ndarray:
    """Fill lesions with random draws from the statistics of surrounding white matter.

    For every lesion (26-connected component of ``mask``):

    1. take the *shell* of brain voxels outside all lesions whose distance
       (mm, Euclidean) to this lesion lies in ``(shell_mm[0], shell_mm[1]]``;
       the first millimetre is skipped because of partial volume with the
       lesion. If the shell holds fewer than ``min_voxels`` voxels its outer
       radius is doubled (up to 4 times); after that all non-lesion brain
       voxels are used;
    2. split the shell intensities into ``n_classes`` tissue classes with
       1-D k-means and keep class ``wm_class`` of the classes sorted by mean
       (-1 = brightest = WM on T1w; use 1 of 3 for FLAIR/T2-like contrasts
       where WM lies between CSF and GM only if that fits your data);
    3. fill the lesion with ``N(mean, std)`` draws of that class, clipped to
       the class's observed [min, max] so no impossible values appear.

    Parameters
    ----------
    image : ndarray, 3D
        Intensities (any real dtype).
    mask : ndarray, 3D
        Lesion mask, nonzero = fill.
    rng : numpy.random.Generator
        Source of the random draws.
    brain : ndarray, optional
        Brain mask; shell voxels must lie in it. Default: ``image != 0`` or mask.
    shell_mm : (float, float)
        Inner (exclusive) and outer (inclusive) shell radius in mm.
    voxel_size : 3 floats
        Voxel spacing in mm, for the distance transform.
    n_classes : int
        k-means classes on the shell (2 or 3 are sensible).
    wm_class : int
        Which class (index into classes sorted by mean) is white matter.
    min_voxels : int
        Minimum shell size before it is grown.

    Returns
    -------
    ndarray
        Filled copy, dtype ``result_type(image.dtype, float32)``; bit-identical
        to ``image`` outside ``mask``.
    """
    out, mask = _prepare(image, mask)
    if not mask.any():
        return out
    if brain is None:
        brain = (out != 0) | mask
    brain = np.asarray(brain).astype(bool)
    vox = np.asarray(voxel_size, dtype=float)
    lo, hi = float(shell_mm[0]), float(shell_mm[1])
    labels, n = ndimage.label(mask, structure=_CONN26)
    objects = ndimage.find_objects(labels)
    source = brain & ~mask
    for lab in range(1, n + 1):
        comp_full_slice = objects[lab - 1]
        sample = None
        outer = hi
        for _ in range(5):
            margin = tuple(int(np.ceil(outer / v)) + 1 for v in vox)
            sl = tuple(
                slice(max(s.start - m, 0), min(s.stop + m, size))
                for s, m, size in zip(comp_full_slice, margin, mask.shape)
            )
            comp = labels[sl] == lab
            dist = ndimage.distance_transform_edt(~comp, sampling=vox)
            shell = (dist > lo) & (dist <= outer) & source[sl]
            if shell.sum() >= min_voxels:
                sample = out[sl][shell]
                break
            outer *= 2
        if sample is None:
            sample = out[source] if source.any() else out[~mask]
        if sample.size == 0:
            raise ValueError("no known voxels to estimate white-matter statistics from")
        centres, cls = kmeans_1d(sample, n_classes)
        k = wm_class if -centres.size <= wm_class < centres.size else -1
        wm = sample[cls == (k % centres.size)].astype(np.float64)
        mu, sd = float(wm.mean()), float(wm.std())
        # index inside the component's own box: a full-volume `labels == lab`
        # per component is what makes many-lesion (MS) masks slow
        where = labels[comp_full_slice] == lab
        draws = rng.normal(mu, sd, size=int(where.sum()))
        out[comp_full_slice][where] = np.clip(draws, wm.min(), wm.max())
    return out


def _patch_offsets(radius: int, strides: tuple[int, ...]) -> np.ndarray:
    """Flat-index offsets of a (2r+1)^3 cube, C order, for an array with ``strides`` (elements)."""
    r = np.arange(-radius, radius + 1)
    gz, gy, gx = np.meshgrid(r, r, r, indexing="ij")
    return (gz * strides[0] + gy * strides[1] + gx * strides[2]).ravel()


def _match(S, Vs, W, T, need, centre_ok, patch):
    """Mean squared patch distance of every window offset for each target voxel (a column of the inputs);
    inf where the overlap is below ``need`` or ``centre_ok`` is false. Returns ``(n, search^3)``.

    ``S``/``Vs``: context values/validity ``(ctx^3, n)``; ``T``/``W``: target patch values/validity
    ``(patch^3, n)``. The three correlations of :func:`fill_patch` and the overlap count are one
    depthwise conv3d over ``4 n`` channels in channels-last layout: oneDNN's depthwise kernel, about
    3x faster on a CPU than a grouped conv with 3 input channels per group.
    """
    import torch  # lazy: only the patch fillers need it

    n, ctx = S.shape[1], round(S.shape[0] ** (1 / 3))
    inp = np.empty(S.shape + (4,), np.float32)  # (ctx^3, n, 4): channel = 4 * voxel + term
    np.multiply(Vs, S, out=inp[..., 1])
    np.multiply(inp[..., 1], S, out=inp[..., 0])
    inp[..., 2] = Vs
    inp[..., 3] = Vs
    ker = np.stack([W, -2.0 * W * T, W * T * T, W], axis=-1).reshape(patch ** 3, 4 * n).T
    x = torch.from_numpy(inp).reshape(1, ctx, ctx, ctx, 4 * n).permute(0, 4, 1, 2, 3)  # a channels-last view
    k = torch.from_numpy(np.ascontiguousarray(ker)).reshape(4 * n, 1, patch, patch, patch)
    with torch.no_grad():
        o = torch.nn.functional.conv3d(x, k, groups=4 * n)[0].permute(1, 2, 3, 0).reshape(-1, n, 4)  # (s^3, n, 4)
        num, cnt = o[..., :3].sum(-1).clamp_min_(0.0), o[..., 3]
        ok = (cnt >= torch.from_numpy(need) - 1e-3) & torch.from_numpy(centre_ok)
        dist = torch.where(ok, num / cnt.clamp_min(1.0), torch.tensor(np.inf)).T.contiguous()
    return dist.numpy()


def fill_patch(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    patch: int = 5,
    search: int = 11,
    brain: np.ndarray | None = None,
    tol: float = 0.1,
    min_overlap: float = 0.5,
    chunk: int = 512,
    k_mean: int = 1,
    guide: np.ndarray | None = None,
    guide_weight: float = 0.3,
    soft: float = 0.0,
    extra: np.ndarray | None = None,
) -> np.ndarray:
    """Non-local patch-based inward ("onion peeling") lesion filling.

    Algorithm (after NiftySeg ``seg_FillLesions``, a 3-D Efros-Leung texture
    synthesis restricted to the lesion):

    * ``valid`` = voxels with a trusted value: everything outside the mask.
    * Repeat until the mask is filled: the *layer* is the set of unfilled
      lesion voxels with at least one valid 26-neighbour.
      For every layer voxel ``v`` and every candidate offset ``d`` in the
      ``search``^3 window, compute the mean squared difference between the
      ``patch``^3 patch around ``v`` and the one around ``v + d``, over voxels
      valid in *both* patches. A candidate must have a valid brain voxel at its
      centre and an overlap of at least ``min_overlap`` times the number of
      valid voxels in the target patch. Among the candidates within
      ``(1 + tol)`` of the best distance one is drawn at random (``rng``) and
      its centre value is copied to ``v``. Voxels with no candidate take the
      mean of the valid voxels in their patch.
    * The whole layer is written at once (matched against the state before the
      layer) and becomes valid; the next layer then uses these filled values,
      so texture propagates inward.

    Vectorisation: per layer (in chunks of ``chunk`` voxels) the
    ``(search + patch - 1)``^3 context of each voxel is gathered, and the
    distances for all offsets are computed as 3-D correlations (one depthwise
    ``torch.nn.functional.conv3d``, four channels per voxel, see :func:`_match`),
    using
    ``sum W Vs (T - S)^2 = corr(Vs S^2, W) - 2 corr(Vs S, W T) + corr(Vs, W T^2)``
    with ``T`` the target patch, ``W`` its validity, ``S``/``Vs`` the context
    values/validity. Cost is about ``4 * volume * search^3 * patch^3``
    multiply-adds (twice that with ``extra``).

    Parameters
    ----------
    image : ndarray, 3D
        Intensities.
    mask : ndarray, 3D
        Lesion mask, nonzero = fill.
    rng : numpy.random.Generator
        Breaks near-ties between candidate patches.
    patch : int
        Patch edge length in voxels (odd).
    search : int
        Search-window edge length in voxels (odd).
    brain : ndarray, optional
        Tissue. Candidate centres must lie in it, and the voxels outside it (background, voided regions)
        are no context: they count neither in patch distances nor as the known border the layers grow
        from, so a lesion touching the background is filled from tissue, not from zeros. Default: centres
        in ``image != 0`` or mask, and every voxel outside the mask is context.
    tol : float
        Relative tolerance defining near-best candidates (0 = always the best).
    min_overlap : float
        Minimum fraction of the target's valid voxels a candidate must share.
    chunk : int
        Voxels per vectorised batch (memory ~ chunk * search^3 * 16 bytes).
    k_mean : int
        1 (default): copy one near-best candidate, as NiftySeg does. Above 1:
        copy the mean of the ``k_mean`` best candidates' centres instead (a
        non-local-means estimate: smoother, lower error, no ``rng`` needed).
    guide : ndarray, optional
        An estimate of the lesion's content on the same grid (e.g. the USB
        model's fill). Unfilled lesion voxels then take part in the patch
        distances with the guide's values, weighted by ``guide_weight``, so
        candidates must match the guide's structure as well as the known
        border; the values copied still come from outside the lesion.
    guide_weight : float
        Weight of guide voxels in the distance (known voxels weigh 1).
    soft : float
        0 (default): the ``k_mean`` best candidates count equally. Above 0:
        candidate ``i`` weighs ``exp(-(d_i - d_best) / (soft * d_best))``, so
        candidates much worse than the best one count little (relative, hence
        free of the image's noise level).
    extra : ndarray, optional
        A second source of candidates on the same grid, searched in the same
        window around each voxel (its centre included), e.g. the brain mirrored
        across the midline (:func:`usb_prep.mirror.mirror_lr`): a unilateral
        lesion then also matches its healthy counterpart. Zero = no value. Its
        values are copied like the image's own; it is never filled.

    Returns
    -------
    ndarray
        Filled copy, dtype ``result_type(image.dtype, float32)``; bit-identical
        to ``image`` outside ``mask``.
    """
    if patch % 2 != 1 or search % 2 != 1 or patch < 1 or search < 3:
        raise ValueError("patch and search must be odd (patch >= 1, search >= 3)")
    out, mask = _prepare(image, mask)
    if not mask.any():
        return out
    known = ~mask  # context: voxels whose values the patches may see
    if brain is None:
        brain = (out != 0) | mask
    else:
        known = known & np.asarray(brain, bool)
    brain = np.asarray(brain).astype(bool)

    h, s = patch // 2, search // 2
    rad = h + s  # context radius
    ctx = 2 * rad + 1
    # Work on the lesion bounding box plus context, zero-padded so every
    # context window is in range; padding is invalid.
    sl = bbox(mask, rad)
    pad = [(rad, rad)] * 3
    # C order matters: the layer loop writes through flat views (ravel).
    def _padc(a):
        return np.ascontiguousarray(np.pad(a, pad))

    todo = _padc(mask[sl])
    valid = _padc(known[sl])  # padding -> False
    img = _padc(out[sl].astype(np.float32))
    img[todo] = 0.0  # lesion values must never leak into the fill
    weight = valid.astype(np.float32)  # per-voxel weight in patch distances
    seen = img.copy()  # values patch distances see: known ones, the guide's in the unfilled lesion
    if guide is not None:
        seen[todo] = _padc(np.asarray(guide, np.float32)[sl])[todo]
        weight[todo] = guide_weight
    brain_pad = _padc(brain[sl])
    src_ok = brain_pad & valid  # allowed candidate centres
    # Normalise intensities for the distance (float32 precision, scale-free tol).
    lo_v, hi_v = np.percentile(img[valid], [1, 99]) if valid.any() else (0.0, 1.0)
    lo_v = np.float32(lo_v)
    scale = np.float32(hi_v - lo_v) if hi_v > lo_v else np.float32(1.0)
    work = ((seen - lo_v) / scale).astype(np.float32)  # float32 keeps the conv fast
    if extra is not None:
        if np.shape(extra) != mask.shape:
            raise ValueError(f"extra has shape {np.shape(extra)}, need {mask.shape}")
        extra_raw = _padc(np.nan_to_num(np.asarray(extra, np.float32))[sl])
        extra_ok = (extra_raw != 0) & brain_pad  # never filled: its validity is fixed
        extra_w = np.where(extra_ok, (extra_raw - lo_v) / scale, 0).astype(np.float32)
        flat_e_ok, flat_e_w, flat_e_raw = extra_ok.ravel(), extra_w.ravel(), extra_raw.ravel()

    shape = work.shape
    strides = tuple(int(np.prod(shape[i + 1:])) for i in range(3))
    ctx_off = _patch_offsets(rad, strides)  # (ctx^3,)
    # Target patch = central patch^3 sub-block of the context.
    sub = np.zeros((ctx,) * 3, dtype=bool)
    sub[s:s + patch, s:s + patch, s:s + patch] = True
    sub = sub.ravel()
    # Candidate-centre position (d) inside the context, per conv output index.
    cen = np.zeros((ctx,) * 3, dtype=bool)
    cen[h:h + search, h:h + search, h:h + search] = True
    cen = cen.ravel()
    centre_idx = (search ** 3) // 2  # d = 0, never a candidate (unfilled)

    filled_vals = img  # raw-scale values to copy from
    while todo.any():
        near = ndimage.binary_dilation(valid, structure=_CONN26) & todo
        if not near.any():  # isolated region with no valid voxel at all
            break
        vox = np.flatnonzero(near)
        new_vals = np.empty(vox.size, dtype=np.float32)
        flat_w, flat_v, flat_ok = work.ravel(), weight.ravel(), src_ok.ravel()
        flat_raw = filled_vals.ravel()
        for c0 in range(0, vox.size, chunk):
            v = vox[c0:c0 + chunk]
            n = v.size
            idx = ctx_off[:, None] + v[None, :]  # (ctx^3, n): voxels are columns, as _match wants
            Vs = flat_v[idx]
            S = flat_w[idx] * (Vs > 0)  # unseen values are arbitrary; zero them
            T, W = S[sub], Vs[sub]
            need = np.maximum(min_overlap * W.sum(0), 1.0)
            centre_ok = flat_ok[idx[cen]]
            centre_ok[centre_idx] = False
            dist = _match(S, Vs, W, T, need, centre_ok, patch)
            cand = flat_raw[idx[cen]].T  # (n, search^3) candidate centre values
            if extra is not None:  # same window in the second source, its centre included
                dist = np.concatenate([dist, _match(flat_e_w[idx], flat_e_ok[idx].astype(np.float32), W, T, need,
                                                    flat_e_ok[idx[cen]], patch)], 1)
                cand = np.concatenate([cand, flat_e_raw[idx[cen]].T], 1)
            best = dist.min(1, keepdims=True)
            if k_mean > 1:  # mean of the k best candidates' centres: a lower-variance estimate
                kk = min(k_mean, dist.shape[1])
                part = np.argpartition(dist, kk - 1, axis=1)[:, :kk]
                dk = np.take_along_axis(dist, part, 1)
                wk = np.isfinite(dk).astype(np.float32)
                if soft > 0:  # relative distance weights; the best candidate weighs 1
                    b = np.where(np.isfinite(best), best, 0.0)  # rows without candidates: fallback below
                    rel = (np.where(wk > 0, dk, b) - b) / (soft * np.maximum(b, 1e-6))
                    wk *= np.exp(-rel).astype(np.float32)
                vals = ((np.take_along_axis(cand, part, 1) * wk).sum(1) / np.maximum(wk.sum(1), 1.0))
                vals = vals.astype(np.float32)
            else:
                # Uniform choice among near-best candidates: argmax of random keys.
                near_best = np.isfinite(dist) & (dist <= best * (1.0 + tol) + 1e-9)
                keys = rng.random(near_best.shape, dtype=np.float32)
                keys[~near_best] = -1.0
                vals = cand[np.arange(n), keys.argmax(1)]
            none = ~np.isfinite(best[:, 0])
            if none.any():  # fallback: mean of the valid voxels in the patch
                known = valid.ravel()[idx[sub][:, none]].T  # guide voxels have no raw value yet
                raw_t = flat_raw[idx[sub][:, none]].T * known
                vals[none] = raw_t.sum(1) / np.maximum(known.sum(1), 1.0)
            new_vals[c0:c0 + n] = vals
        # Jacobi update: write the whole layer, then mark it valid.
        img.ravel()[vox] = new_vals
        work.ravel()[vox] = (new_vals - lo_v) / scale
        valid.ravel()[vox] = True
        weight.ravel()[vox] = 1.0
        src_ok.ravel()[vox] = brain_pad.ravel()[vox]
        todo.ravel()[vox] = False
    if todo.any():  # unreachable voxels (cannot happen unless the mask is everything)
        fill = float(np.mean(out[known])) if known.any() else 0.0
        img[todo] = fill
    crop = img[rad:-rad, rad:-rad, rad:-rad]
    region = out[sl]
    region[mask[sl]] = crop[mask[sl]].astype(out.dtype)
    return out


NLM_K, NLM_SEARCH = 16, 15  # chosen on the validation masks (benchmarks/validation.py)


def coarse_guide(image: np.ndarray, mask: np.ndarray, brain: np.ndarray | None = None, factor: int = 2,
                 **kwargs) -> np.ndarray:
    """A layout estimate for the lesion: the non-local-means fill of a ``factor`` times coarser copy, upsampled.

    At the coarse scale the same patches and search window span ``factor`` times more tissue, so deep
    inside big lesions the fill still matches structure from the border. Coarse voxels are the block
    means of their known voxels; a block with fewer than half known voxels is filled. Returns ``image``
    with the upsampled fill in ``mask`` (a guide for :func:`fill_nlm`). ``kwargs`` go to the coarse
    :func:`fill_nlm`.
    """
    out, mask = _prepare(image, mask)
    if not mask.any():
        return out
    if brain is None:
        brain = (out != 0) | mask
    ctx = (kwargs.get("search", NLM_SEARCH) // 2 + kwargs.get("patch", 5) // 2 + 2) * factor
    sl = bbox(mask, ctx)
    m = mask[sl]
    pad = [(0, -n % factor) for n in m.shape]  # whole blocks; padding counts as unknown, not lesion
    known = np.pad(~m & np.asarray(brain, bool)[sl], pad).astype(np.float32)
    blocks = tuple(x for n in known.shape for x in (n // factor, factor))
    cnt = known.reshape(blocks).sum((1, 3, 5))
    coarse = (np.pad(out[sl], pad) * known).reshape(blocks).sum((1, 3, 5)) / np.maximum(cnt, 1)
    hole = (np.pad(m, pad).reshape(blocks).sum((1, 3, 5)) > 0) & (cnt < factor ** 3 / 2)
    coarse, cbrain = coarse.astype(np.float32), (cnt > 0) | hole
    filled = fill_nlm(coarse, hole, brain=cbrain, **kwargs)
    # grid_mode: a coarse voxel is the area of its block, so the upsampled grid lines up with the fine one
    up = ndimage.zoom(filled, factor, order=1, grid_mode=True, mode="nearest")[tuple(slice(0, n) for n in m.shape)]
    region = out[sl]
    region[mask[sl]] = up[mask[sl]]
    return out


def fill_nlm(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None, **kwargs) -> np.ndarray:
    """Non-local-means patch filling: :func:`fill_patch` copying the mean of the ``NLM_K`` best of an
    ``NLM_SEARCH``^3 search instead of one near-best patch (smoother, lower error; ``rng`` unused)."""
    kwargs.setdefault("k_mean", NLM_K)
    kwargs.setdefault("search", NLM_SEARCH)
    return fill_patch(image, mask, rng if rng is not None else np.random.default_rng(0), **kwargs)


FILLERS = {"wmstats": fill_wmstats, "patch": fill_patch, "nlm": fill_nlm}  # name -> filler(image, mask, rng)


def fill_image(img, mask_img, method: str = "wmstats", seed: int = 0, **kwargs):
    """Fill lesions in a nibabel image, keeping affine, header and data dtype.

    Parameters
    ----------
    img : nibabel.spatialimages.SpatialImage
        3-D image.
    mask_img : nibabel image
        Lesion mask on the same grid (values > 0.5 are filled).
    method : {"wmstats", "patch", "nlm"}
        Which filler.
    seed : int
        Seed of the ``numpy.random.default_rng`` passed to the filler.
    **kwargs
        Passed to the filler (``voxel_size`` defaults to the header zooms for
        ``wmstats``).

    Returns
    -------
    nibabel.Nifti1Image (same class as ``img``)
        Filled image, data cast back to the input's on-disk dtype (rounded and
        clipped for integer types).
    """
    data = np.asanyarray(img.dataobj)
    m = np.asanyarray(mask_img.dataobj)
    if m.shape != data.shape:
        raise ValueError(f"mask shape {m.shape} differs from image shape {data.shape}")
    m = m > 0.5
    rng = np.random.default_rng(seed)
    if method not in FILLERS:
        raise ValueError(f"unknown method {method!r}; use one of {sorted(FILLERS)}")
    if method == "wmstats":
        kwargs.setdefault("voxel_size", tuple(float(z) for z in img.header.get_zooms()[:3]))
    filled = FILLERS[method](data, m, rng, **kwargs)
    dtype = img.get_data_dtype()
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        filled = np.clip(np.rint(filled), info.min, info.max)
    out = img.__class__(filled.astype(dtype), img.affine, img.header)
    out.set_data_dtype(dtype)
    return out
