"""The patch engine behind the fill's "patch" and "nlm" stages (and the benchmark's patch baselines).

:func:`fill_patch` fills a mask from its border inward, layer by layer, each voxel copying the centre of a
near-best matching known patch (NiftySeg ``seg_FillLesions``-like texture) or, with ``k_mean`` > 1, the mean
of the best ones (:func:`fill_nlm`, non-local means). :func:`coarse_guide` runs the latter on a coarser copy.
All work on plain numpy arrays; voxels outside the mask come back bit-identical.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..crops import bbox

CONN26 = np.ones((3, 3, 3), dtype=bool)
NLM_K = 16  # candidates the nlm fill averages (chosen on the validation masks, benchmarks/validation.py)


def prepare(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    aux: np.ndarray | None = None,
    aux_weight: float = 1.0,
    aux_extra: np.ndarray | None = None,
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
    aux : ndarray, optional
        Another contrast of the same head on the same grid, known everywhere (its lesion already filled),
        e.g. the filled T1w when filling a FLAIR: patch distances add its own (NiftySeg's multi-channel
        patches), weighted by ``aux_weight``, so that deep in the lesion, where the image's patches see
        nothing, candidates still match the other contrast's anatomy. Only the image's values are copied.
    aux_weight : float
        Weight of the ``aux`` distance (each channel's is a mean over its patch, normalised by its own
        1st-99th percentile range).
    aux_extra : ndarray, optional
        ``aux`` as ``extra`` sees it (e.g. mirrored the same way); needed with both ``aux`` and ``extra``.

    Returns
    -------
    ndarray
        Filled copy, dtype ``result_type(image.dtype, float32)``; bit-identical
        to ``image`` outside ``mask``.
    """
    if patch % 2 != 1 or search % 2 != 1 or patch < 1 or search < 3:
        raise ValueError("patch and search must be odd (patch >= 1, search >= 3)")
    out, mask = prepare(image, mask)
    if not mask.any():
        return out
    known = ~mask  # context: voxels whose values the patches may see
    if brain is None:
        brain = (out != 0) | mask
    else:
        known = known & np.asarray(brain, bool)
    brain = np.asarray(brain).astype(bool)
    for name, a in (("extra", extra), ("aux", aux), ("aux_extra", aux_extra)):
        if a is not None and np.shape(a) != mask.shape:
            raise ValueError(f"{name} has shape {np.shape(a)}, need {mask.shape}")
    if aux is not None and extra is not None and aux_extra is None:
        raise ValueError("aux with extra needs aux_extra (the other contrast as the extra source sees it)")
    w = _Work.build(out, mask, known, brain, patch // 2 + search // 2, guide, guide_weight, extra)
    if aux is not None:
        w.add_aux(aux, aux_weight, aux_extra if extra is not None else None)
    geo = _Geometry.of(w.img.shape, patch, search)
    choose = {"rng": rng, "tol": tol, "k_mean": k_mean, "soft": soft}
    while w.todo.any():
        near = ndimage.binary_dilation(w.valid, structure=CONN26) & w.todo
        if not near.any():  # isolated region with no valid voxel at all
            break
        vox = np.flatnonzero(near)
        new_vals = np.empty(vox.size, dtype=np.float32)
        for c0 in range(0, vox.size, chunk):
            v = vox[c0:c0 + chunk]
            new_vals[c0:c0 + v.size] = _layer_values(w, geo, v, min_overlap, choose)
        w.write(vox, new_vals)
    if w.todo.any():  # unreachable voxels (cannot happen unless the mask is everything)
        w.img[w.todo] = float(np.mean(out[known])) if known.any() else 0.0
    rad = w.rad
    crop = w.img[rad:-rad, rad:-rad, rad:-rad]
    region = out[w.sl]
    region[mask[w.sl]] = crop[mask[w.sl]].astype(out.dtype)
    return out


def _padc(a: np.ndarray, rad: int) -> np.ndarray:
    # C order matters: the layer loop writes through flat views (ravel).
    return np.ascontiguousarray(np.pad(a, [(rad, rad)] * 3))


@dataclass
class _Work:
    """One fill's working arrays: the lesion's bounding box plus the context radius ``rad``, zero-padded so every
    context window is in range (padding is invalid)."""

    sl: tuple  # the box in the image
    rad: int
    todo: np.ndarray  # lesion voxels not filled yet
    valid: np.ndarray  # voxels with a trusted value
    img: np.ndarray  # raw-scale values to copy from
    work: np.ndarray  # the values patch distances see, normalised (float32 keeps the conv fast)
    weight: np.ndarray  # per-voxel weight in patch distances
    src_ok: np.ndarray  # allowed candidate centres
    brain: np.ndarray
    lo: np.float32
    scale: np.float32
    extra: tuple | None  # the second source, flat: (validity, normalised values, raw values)
    aux: tuple | None = None  # another contrast, flat: (validity, normalised values[, same for extra]), weight

    @classmethod
    def build(cls, out, mask, known, brain, rad, guide, guide_weight, extra) -> _Work:
        sl = bbox(mask, rad)
        todo = _padc(mask[sl], rad)
        valid = _padc(known[sl], rad)  # padding -> False
        img = _padc(out[sl].astype(np.float32), rad)
        img[todo] = 0.0  # lesion values must never leak into the fill
        weight = valid.astype(np.float32)
        seen = img.copy()  # known values, the guide's in the unfilled lesion
        if guide is not None:
            seen[todo] = _padc(np.asarray(guide, np.float32)[sl], rad)[todo]
            weight[todo] = guide_weight
        brain_pad = _padc(brain[sl], rad)
        # Normalise intensities for the distance (float32 precision, scale-free tol).
        lo_v, hi_v = np.percentile(img[valid], [1, 99]) if valid.any() else (0.0, 1.0)
        lo_v = np.float32(lo_v)
        scale = np.float32(hi_v - lo_v) if hi_v > lo_v else np.float32(1.0)
        work = ((seen - lo_v) / scale).astype(np.float32)
        flat_extra = None
        if extra is not None:
            extra_raw = _padc(np.nan_to_num(np.asarray(extra, np.float32))[sl], rad)
            extra_ok = (extra_raw != 0) & brain_pad  # never filled: its validity is fixed
            extra_w = np.where(extra_ok, (extra_raw - lo_v) / scale, 0).astype(np.float32)
            flat_extra = (extra_ok.ravel(), extra_w.ravel(), extra_raw.ravel())
        return cls(sl, rad, todo, valid, img, work, weight, brain_pad & valid, brain_pad, lo_v, scale, flat_extra)

    def add_aux(self, aux, weight: float, aux_extra=None) -> None:
        """Another contrast in the patch distances (see :func:`fill_patch`): valid in the brain and the lesion."""
        ok = self.brain | self.todo
        raw = _padc(np.nan_to_num(np.asarray(aux, np.float32))[self.sl], self.rad)
        lo, hi = np.percentile(raw[ok], [1, 99]) if ok.any() else (0.0, 1.0)
        scale = hi - lo if hi > lo else 1.0
        chans = [ok.ravel(), np.where(ok, (raw - lo) / scale, 0).astype(np.float32).ravel()]
        if aux_extra is not None:  # valid where it holds tissue, as the extra source
            raw_e = _padc(np.nan_to_num(np.asarray(aux_extra, np.float32))[self.sl], self.rad)
            ok_e = (raw_e != 0) & self.brain
            chans += [ok_e.ravel(), np.where(ok_e, (raw_e - lo) / scale, 0).astype(np.float32).ravel()]
        self.aux = (tuple(chans), np.float32(weight))

    def write(self, vox: np.ndarray, values: np.ndarray) -> None:
        """Jacobi update: write the whole layer, then mark it valid."""
        self.img.ravel()[vox] = values
        self.work.ravel()[vox] = (values - self.lo) / self.scale
        self.valid.ravel()[vox] = True
        self.weight.ravel()[vox] = 1.0
        self.src_ok.ravel()[vox] = self.brain.ravel()[vox]
        self.todo.ravel()[vox] = False


@dataclass
class _Geometry:
    """Flat-index geometry of the context window around a voxel."""

    patch: int
    ctx_off: np.ndarray  # (ctx^3,) offsets of the context cube
    sub: np.ndarray  # the target patch: the central patch^3 sub-block of the context
    cen: np.ndarray  # candidate centres (d) inside the context, per conv output index
    centre_idx: int  # d = 0, never a candidate (unfilled)

    @classmethod
    def of(cls, shape, patch: int, search: int) -> _Geometry:
        h, s = patch // 2, search // 2
        ctx = 2 * (h + s) + 1
        strides = tuple(int(np.prod(shape[i + 1:])) for i in range(3))
        sub = np.zeros((ctx,) * 3, dtype=bool)
        sub[s:s + patch, s:s + patch, s:s + patch] = True
        cen = np.zeros((ctx,) * 3, dtype=bool)
        cen[h:h + search, h:h + search, h:h + search] = True
        return cls(patch, _patch_offsets(h + s, strides), sub.ravel(), cen.ravel(), (search ** 3) // 2)


def _layer_values(w: _Work, geo: _Geometry, v: np.ndarray, min_overlap: float, choose: dict) -> np.ndarray:
    """New values of the layer voxels ``v`` (flat indices), matched against the state before the layer."""
    idx = geo.ctx_off[:, None] + v[None, :]  # (ctx^3, n): voxels are columns, as _match wants
    Vs = w.weight.ravel()[idx]
    S = w.work.ravel()[idx] * (Vs > 0)  # unseen values are arbitrary; zero them
    T, W = S[geo.sub], Vs[geo.sub]
    need = np.maximum(min_overlap * W.sum(0), 1.0)
    centre_ok = w.src_ok.ravel()[idx[geo.cen]]
    centre_ok[geo.centre_idx] = False
    dist = _match(S, Vs, W, T, need, centre_ok, geo.patch)
    cand = w.img.ravel()[idx[geo.cen]].T  # (n, search^3) candidate centre values
    if w.aux is not None:  # the other contrast's distance, the same candidates
        (a_ok, a_v, *a_extra), a_w = w.aux
        Va = a_ok[idx].astype(np.float32)
        A = a_v[idx]
        Ta, Wa = A[geo.sub], Va[geo.sub]
        need_a = np.maximum(min_overlap * Wa.sum(0), 1.0)
        dist = dist + a_w * _match(A, Va, Wa, Ta, need_a, centre_ok, geo.patch)
    if w.extra is not None:  # same window in the second source, its centre included
        e_ok, e_w, e_raw = w.extra
        e_cen = e_ok[idx[geo.cen]]
        e_dist = _match(e_w[idx], e_ok[idx].astype(np.float32), W, T, need, e_cen, geo.patch)
        if w.aux is not None:  # the other contrast as the second source sees it
            e_dist = e_dist + a_w * _match(a_extra[1][idx], a_extra[0][idx].astype(np.float32), Wa, Ta, need_a,
                                           e_cen, geo.patch)
        dist = np.concatenate([dist, e_dist], 1)
        cand = np.concatenate([cand, e_raw[idx[geo.cen]].T], 1)
    best = dist.min(1, keepdims=True)
    vals = _choose(dist, cand, best, **choose)
    none = ~np.isfinite(best[:, 0])
    if none.any():  # fallback: mean of the valid voxels in the patch
        known = w.valid.ravel()[idx[geo.sub][:, none]].T  # guide voxels have no raw value yet
        raw_t = w.img.ravel()[idx[geo.sub][:, none]].T * known
        vals[none] = raw_t.sum(1) / np.maximum(known.sum(1), 1.0)
    return vals


def _choose(dist, cand, best, *, rng, tol, k_mean, soft) -> np.ndarray:
    """Each row's value from its candidates: one near-best at random (``k_mean`` 1) or the (soft-)weighted mean
    of the ``k_mean`` best."""
    if k_mean > 1:  # mean of the k best candidates' centres: a lower-variance estimate
        kk = min(k_mean, dist.shape[1])
        part = np.argpartition(dist, kk - 1, axis=1)[:, :kk]
        dk = np.take_along_axis(dist, part, 1)
        wk = np.isfinite(dk).astype(np.float32)
        if soft > 0:  # relative distance weights; the best candidate weighs 1
            b = np.where(np.isfinite(best), best, 0.0)  # rows without candidates: fallback in the caller
            rel = (np.where(wk > 0, dk, b) - b) / (soft * np.maximum(b, 1e-6))
            wk *= np.exp(-rel).astype(np.float32)
        vals = ((np.take_along_axis(cand, part, 1) * wk).sum(1) / np.maximum(wk.sum(1), 1.0))
        return vals.astype(np.float32)
    # Uniform choice among near-best candidates: argmax of random keys.
    near_best = np.isfinite(dist) & (dist <= best * (1.0 + tol) + 1e-9)
    keys = rng.random(near_best.shape, dtype=np.float32)
    keys[~near_best] = -1.0
    return cand[np.arange(dist.shape[0]), keys.argmax(1)]


def coarse_guide(image: np.ndarray, mask: np.ndarray, brain: np.ndarray | None = None, factor: int = 2,
                 **kwargs) -> np.ndarray:
    """A layout estimate for the lesion: the non-local-means fill of a ``factor`` times coarser copy, upsampled.

    At the coarse scale the same patches and search window span ``factor`` times more tissue, so deep
    inside big lesions the fill still matches structure from the border. Coarse voxels are the block
    means of their known voxels; a block with fewer than half known voxels is filled. Returns ``image``
    with the upsampled fill in ``mask`` (a guide for :func:`fill_nlm`). ``kwargs`` go to the coarse
    :func:`fill_nlm`.
    """
    out, mask = prepare(image, mask)
    if not mask.any():
        return out
    if brain is None:
        brain = (out != 0) | mask
    ctx = (kwargs["search"] // 2 + kwargs.get("patch", 5) // 2 + 2) * factor
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


def fill_nlm(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None, *, search: int,
             **kwargs) -> np.ndarray:
    """Non-local-means patch filling: :func:`fill_patch` copying the mean of the ``NLM_K`` best of a
    ``search``^3 window (the fill setting ``nlm_search``: the caller passes the weights' value) instead of one
    near-best patch (smoother, lower error; ``rng`` unused)."""
    kwargs.setdefault("k_mean", NLM_K)
    return fill_patch(image, mask, rng if rng is not None else np.random.default_rng(0), search=search, **kwargs)
