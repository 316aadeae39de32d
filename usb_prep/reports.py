"""Visual reports a lab can QC a study with: one HTML page per image, one page per dataset.

A subject's page: a summary (inputs, contrast and how it was decided, lesion volume and pieces, the largest
lesions, method, weights, seconds, notes), panels zoomed on the largest lesions (three planes through each,
before and after side by side with the mask outline), the whole-brain strip (before/after flicker on hover, CSS
only), the fill-against-surroundings check, the settings as a table and a methods paragraph to paste into a paper.
A failed subject's page gives its one-line cause and crash file. The dataset page (``usb_prep.html``) has a row
per image linking its page. Figures are PNG data URIs: every page is one self-contained file, readable without
JavaScript. Pure core: matplotlib (Agg), nibabel, scipy; no Nipype.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Mapping

import nibabel as nb
import numpy as np

LOGGER = logging.getLogger(__name__)

_VIEWS = ("sagittal", "coronal", "axial")


def _canonical(img):
    """An image's data in RAS-canonical voxel order, float32 (arrays, taken to be canonical already, pass)."""
    if isinstance(img, np.ndarray):
        return img.astype(np.float32, copy=False)
    img = nb.load(os.fspath(img)) if isinstance(img, (str, os.PathLike)) else img
    img = nb.as_closest_canonical(img)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    if data.ndim > 3:
        data = data[..., 0]
    return data


def cut_indices(mask: np.ndarray | None, shape: tuple, n_per_view: int = 3) -> dict:
    """Slice indices per view: spread over the lesion's extent, else the middle.

    Parameters
    ----------
    mask : 3D array or None
        Lesion mask in RAS-canonical voxel order.
    shape : tuple
        Volume shape.
    n_per_view : int
        Number of slices per view.

    Returns
    -------
    dict
        ``{"sagittal": [...], "coronal": [...], "axial": [...]}``.
    """
    cuts = {}
    for axis, view in enumerate(_VIEWS):
        size = shape[axis]
        if mask is not None and np.any(mask > 0):
            idx = np.nonzero(np.any(mask > 0, axis=tuple(a for a in range(3) if a != axis)))[0]
            lo, hi = int(idx.min()), int(idx.max())
        else:
            lo, hi = size // 4, (3 * size) // 4
        vals = np.unique(np.linspace(lo, hi, n_per_view + 2)[1:-1].round().astype(int))
        cuts[view] = [int(np.clip(v, 0, size - 1)) for v in vals] or [size // 2]
    return cuts


def _take(data, view, index):
    axis = _VIEWS.index(view)
    sl = np.take(data, index, axis=axis)
    return np.rot90(sl)  # RAS canonical -> radiological-free display (superior/anterior up)


def plot_panel(
    image,
    mask=None,
    *,
    cuts: dict | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    fmt: str = "png",
    title: str | None = None,
    outline_color: str = "#ff3030",
) -> str:
    """Draw a row of slices with the mask outline; return a data URI.

    Parameters
    ----------
    image : path or nibabel image
        Image to show.
    mask : path or nibabel image, optional
        Outline drawn on top (1 = lesion).
    cuts : dict, optional
        Slices per view (see :func:`cut_indices`).
    vmin, vmax : float, optional
        Intensity window (share it between before and after).
    fmt : {"png", "svg"}
        Figure format.
    title : str, optional
        Title drawn on the left.
    outline_color : str
        Contour colour.

    Returns
    -------
    str
        ``data:image/...;base64,...``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    data = _canonical(image)
    mdata = _canonical(mask) if mask is not None else None
    cuts = cuts or cut_indices(mdata, data.shape)
    if vmin is None or vmax is None:
        lo, hi = np.percentile(data[np.isfinite(data)], [1, 99.5]) if data.size else (0, 1)
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    panels = [(v, i) for v in _VIEWS for i in cuts[v]]
    fig = Figure(figsize=(1.6 * len(panels), 1.9), facecolor="black")
    for k, (view, index) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.imshow(_take(data, view, index), cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        if mdata is not None:
            msl = _take(mdata, view, index)
            if np.any(msl > 0) and np.any(msl <= 0):
                ax.contour(msl > 0, levels=[0.5], colors=outline_color, linewidths=0.8)
        ax.set_title(f"{view[0].upper()} {index}", color="white", fontsize=7)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, color="white", fontsize=8, x=0.01, ha="left")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.82, wspace=0.03)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, facecolor="black", dpi=110)
    mime = "image/svg+xml" if fmt == "svg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def before_after(before, after, mask=None, *, fmt: str = "png") -> tuple[str, str]:
    """Before/after panels sharing slices and intensity window.

    Parameters
    ----------
    before, after : path or nibabel image
        Input and filled images.
    mask : path or nibabel image, optional
        Lesion mask outlined on both.
    fmt : {"png", "svg"}
        Figure format.

    Returns
    -------
    tuple of str
        Two data URIs.
    """
    bdata = _canonical(before)
    mdata = _canonical(mask) if mask is not None else None
    cuts = cut_indices(mdata, bdata.shape)
    finite = bdata[np.isfinite(bdata)]
    vmin, vmax = (np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 1.0))
    kw = dict(cuts=cuts, vmin=float(vmin), vmax=float(vmax), fmt=fmt)
    return (
        plot_panel(before, mask, title="before", **kw),
        plot_panel(after, mask, title="after", **kw),
    )


# ----------------------------------------------------------------------------------------------- numbers
FILL_CHECK_TOLERANCE = 0.25  # fill median this far (relative) from the surrounding tissue's is flagged
CITATIONS = {
    "usb": "Wang and Liu. USB: Unified Synthetic Brain Framework for Bidirectional Pathology-Healthy Generation and "
           "Editing. Code: https://github.com/jhuldr/USB",
    "niftyseg": "Prados F, Cardoso MJ, Kanber B, et al. A multi-time-point modality-agnostic patch-based method for "
                "lesion filling in multiple sclerosis. NeuroImage 139:376-384, 2016",
    "usb_prep": "usb_prep: lesion filling for brain MRI with a paired diffusion model (MIT licence)",
    "mni152": "Fonov V, Evans AC, Botteron K, et al. Unbiased average age-appropriate atlases for pediatric studies. "
              "NeuroImage 54(1):313-327, 2011",
    "ants": "Avants BB, Epstein CL, Grossman M, Gee JC. Symmetric diffeomorphic image registration with "
            "cross-correlation. Medical Image Analysis 12(1):26-41, 2008",
}


def _load(img):
    return nb.load(os.fspath(img)) if isinstance(img, (str, os.PathLike)) else img


def lesion_summary(mask, top: int = 3) -> dict:
    """Volume (ml), number of pieces (26-connected) and the ``top`` largest pieces (ml, centre in voxels of the
    RAS-canonical grid and in world mm) of a mask image."""
    from scipy import ndimage

    img = nb.as_closest_canonical(_load(mask))
    m = np.asanyarray(img.dataobj) > 0.5
    m = m[..., 0] if m.ndim > 3 else m
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    labels, n = ndimage.label(m, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    largest = []
    for lab in np.argsort(sizes)[::-1][:top]:
        centre = np.round(ndimage.center_of_mass(labels == lab + 1)).astype(int)
        world = img.affine[:3, :3] @ centre + img.affine[:3, 3]
        largest.append({"ml": round(float(sizes[lab]) * voxel_ml, 2), "voxels": int(sizes[lab]),
                        "centre_voxel": [int(c) for c in centre], "centre_mm": [round(float(w), 1) for w in world]})
    return {"ml": round(float(m.sum()) * voxel_ml, 2), "voxels": int(m.sum()), "components": int(n),
            "largest": largest}


def fill_check(after, mask) -> dict:
    """The fill against the tissue around it (as the benchmark's real-patient table): the median of the filled
    voxels over the median of a ring 2-4 voxels outside the mask (brain voxels only). ``flag`` when they differ by
    more than :data:`FILL_CHECK_TOLERANCE`: a fill much darker or brighter than its surroundings."""
    from scipy import ndimage

    a = _canonical(after)
    m = _canonical(mask) > 0.5
    if not m.any():
        return {"fill_median": None, "ring_median": None, "ratio": None, "flag": False}
    ring = ndimage.binary_dilation(m, iterations=4) & ~ndimage.binary_dilation(m, iterations=1) & (a > 0)
    if ring.sum() < 10:
        return {"fill_median": None, "ring_median": None, "ratio": None, "flag": False}
    fill, around = float(np.median(a[m])), float(np.median(a[ring]))
    ratio = fill / around if around else None
    flag = ratio is not None and abs(ratio - 1) > FILL_CHECK_TOLERANCE
    return {"fill_median": round(fill, 3), "ring_median": round(around, 3),
            "ratio": None if ratio is None else round(ratio, 3), "flag": bool(flag)}


# ----------------------------------------------------------------------------------------------- figures
def zoom_panel(before, after, mask, centre, *, half: int = 24, fmt: str = "png") -> str:
    """One lesion up close: three planes through ``centre`` (RAS-canonical voxels), ``half`` voxels each way,
    before (top) and after (bottom), the mask outlined; a data URI."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    b, a, m = _canonical(before), _canonical(after), _canonical(mask) > 0.5
    lo, hi = np.percentile(b[b > 0], [1, 99.5]) if (b > 0).any() else (0.0, 1.0)
    fig = Figure(figsize=(6.6, 4.6), facecolor="black")
    for row, (name, data) in enumerate((("before", b), ("after", a))):
        for col, view in enumerate(_VIEWS):
            axis = _VIEWS.index(view)
            others = [k for k in range(3) if k != axis]
            box = [slice(max(centre[k] - half, 0), centre[k] + half) for k in others]
            sl = np.take(data, centre[axis], axis=axis)[box[0], box[1]]
            msl = np.take(m, centre[axis], axis=axis)[box[0], box[1]]
            ax = fig.add_subplot(2, 3, row * 3 + col + 1)
            ax.imshow(np.rot90(sl), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            if msl.any() and not msl.all():
                ax.contour(np.rot90(msl), levels=[0.5], colors="#ff3030", linewidths=0.9)
            ax.set_title(f"{name}, {view} {centre[axis]}", color="white", fontsize=7)
            ax.set_axis_off()
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.94, wspace=0.03, hspace=0.12)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, facecolor="black", dpi=90)
    mime = "image/svg+xml" if fmt == "svg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


# ----------------------------------------------------------------------------------------------- text
def _describe(settings: Mapping) -> str:
    method = settings.get("method", "usb")
    if method == "wmstats":
        return ("random draws from the intensity distribution of the normal-appearing white matter around each lesion "
                "(as FSL's lesion_filling and ANTs' LesionFilling)")
    if method in ("patch", "nlm"):
        return ("tissue copied from the image itself, patch by patch from the lesion's border inwards (a "
                "NiftySeg-like patch-based fill; Prados et al. 2016)")
    stages = ["the diffusion model's fill"]
    if settings.get("patch_weight") or settings.get("refine"):
        stages.append("a patch-based fill copying the image's own tissue (NiftySeg-like; Prados et al. 2016)")
    if settings.get("nlm_weight") or settings.get("refine"):
        stages.append("a non-local-means fill guided by the model's fill")
    text = ", ".join(stages[:-1]) + (" and " if len(stages) > 1 else "") + stages[-1]
    if len(stages) > 1:
        text += f", blended ({settings.get('patch_weight', 0)} patch, {settings.get('nlm_weight', 0)} non-local means)"
    if settings.get("refine"):
        text += " and corrected by a small refiner network"
    return text


def methods_text(settings: Mapping, *, lesion_ml: float | None = None, defaults: Mapping | None = None) -> str:
    """A methods paragraph for a paper, generated from what ran (fMRIPrep's "boilerplate"): version, weights,
    stages, the settings that differ from the weights' own, and what to cite."""
    method = settings.get("method", "usb")
    version = settings.get("usb_prep_version", "")
    weights = settings.get("weights") or {}
    contrast = {"t1w": "T1-weighted", "t2w": "T2-weighted", "flair": "FLAIR"}.get(settings.get("contrast"), "")
    parts = [f"Lesions were filled with usb_prep {version}".rstrip()
             + (", which builds on the USB paired diffusion model of lesions and brains (Wang and Liu)"
                if method == "usb" else "") + "."]
    where = f"the {contrast} image's lesion mask" if contrast else "the lesion mask"
    parts.append(f"The voxels of {where}" + (f" ({lesion_ml:.1f} ml)" if lesion_ml is not None else "")
                 + f" were replaced by {_describe(settings)}; every voxel outside the mask was left unchanged.")
    if method == "usb" and weights:
        parts.append(f"The model was usb_prep's {weights.get('weights', 'weights')} (fill model sha256 "
                     f"{str(weights.get('sha256', ''))[:12]}"
                     + (f", refiner {str(weights['refiner_sha256'])[:12]}" if weights.get("refiner_sha256") else "")
                     + f"), {settings.get('steps')} sampling step(s), seed {settings.get('seed')}.")
    prior = settings.get("prior_run") or {}
    if prior.get("used"):
        uses = [u for u, ran in (("mix its tissue maps, in the image's own tissue levels, into the depth of the fill "
                                  f"(weight up to {prior.get('tissue_weight')})", prior.get("tissue_weight")),
                                 ("keep as background the mask voxels it puts outside the brain",
                                  prior.get("outline"))) if ran]
        parts.append("The MNI152 2009 template (Fonov et al. 2011) was registered to the image with ANTs (affine and "
                     "SyN at 3 mm, the mask excluded; Avants et al. 2008) to " + " and to ".join(uses) + ".")
    if defaults:
        changed = [f"{k} = {settings[k]}" for k in sorted(defaults) if k in settings and settings[k] != defaults[k]]
        if changed:
            parts.append("Settings that differ from the weights' defaults: " + "; ".join(changed) + ".")
    cites = ["usb_prep", "usb"] if method == "usb" else ["usb_prep"]
    if method in ("patch", "nlm") or (method == "usb" and (settings.get("patch_weight") or settings.get("refine"))):
        cites.append("niftyseg")
    if prior.get("used"):
        cites += ["mni152", "ants"]
    return " ".join(parts) + "\n\nCite: " + " | ".join(CITATIONS[c] for c in cites)


def _defaults_for(settings: Mapping) -> dict | None:
    """The packaged weights' settings for the contrast that ran (None for other weights: unknown here)."""
    weights = settings.get("weights") or {}
    if settings.get("method") != "usb" or weights.get("weights") != "packaged default":
        return None
    try:
        from .weights import fill_settings_of

        return fill_settings_of(None, {}, settings.get("contrast") or "t1w").to_dict()
    except Exception:  # noqa: BLE001 -- the paragraph then lists no differences
        return None


# ----------------------------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:sans-serif;margin:1.5em;max-width:1250px;color:#222}
h1{font-size:1.5em} h2{font-size:1.15em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f0f0f0} .flag{background:#fde2e2} .ok{background:#e4f6e4} .skip{background:#f4f0d8}
.flicker{position:relative;display:inline-block}
.flicker img{display:block;max-width:100%}
.flicker img.after{position:absolute;top:0;left:0;opacity:0}
.flicker:hover img.after{opacity:1}
.zoom{display:inline-block;margin:0 1em 1em 0;vertical-align:top}
.zoom img{max-width:600px;width:100%}
pre,.methods{background:#f4f4f4;padding:.6em;white-space:pre-wrap}
.note{color:#a33}
"""


def _write_page(path, text: str) -> str:
    """Write a page atomically, with the usual mode; its absolute path."""
    from .io import atomic_write

    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return str(path)


def _page(title: str, body: list[str]) -> str:
    return "\n".join(["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
                      f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
                      f"<h1>{html.escape(title)}</h1>", *body, "</body></html>"])


def _table(rows: Iterable[tuple], head: tuple | None = None, cls: Iterable[str] | None = None) -> str:
    esc = html.escape
    out = ["<table>"]
    if head:
        out.append("<tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in head) + "</tr>")
    classes = list(cls or [])
    for i, row in enumerate(rows):
        c = f" class='{classes[i]}'" if i < len(classes) and classes[i] else ""
        out.append(f"<tr{c}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def render_html(*, title: str, figures: Iterable[tuple[str, str, str]] = (), settings: Mapping | None = None,
                messages: Iterable[str] = (), extra: Mapping[str, str] | None = None,
                summary: Mapping | None = None, zooms: Iterable[tuple[str, str]] = (), check: Mapping | None = None,
                methods: str | None = None) -> str:
    """A subject's page (see the module's docstring); every section is optional."""
    esc = html.escape
    settings = dict(settings or {})
    body = []
    if summary is not None:
        rows = [(esc(k), esc(str(v))) for k, v in summary.items()]
        body += ["<h2 id='summary'>Summary</h2>", _table(rows)]
    if check is not None and check.get("ratio") is not None:
        verdict = ("<b>check</b>: the fill is much " + ("darker" if check["ratio"] < 1 else "brighter")
                   + " than the tissue around it") if check["flag"] else "within range"
        body += ["<h2 id='check'>Fill against its surroundings</h2>",
                 _table([("fill median", check["fill_median"]), ("median of a ring 2-4 voxels outside the mask",
                                                                 check["ring_median"]),
                         ("ratio", f"{check['ratio']} ({verdict})")], cls=["", "", "flag" if check["flag"] else "ok"])]
    messages = list(messages)
    if messages:
        body += ["<h2 id='notes'>Notes</h2><ul>", *[f"<li class='note'>{esc(m)}</li>" for m in messages], "</ul>"]
    zooms = list(zooms)
    if zooms:
        body.append("<h2 id='lesions'>The largest lesions up close</h2><p>Three planes through each lesion's centre: "
                    "before (top) and after (bottom); the mask outlined in red.</p>")
        body += [f"<div class='zoom'><p>{esc(cap)}</p><img alt='{esc(cap)}' src='{uri}'></div>" for cap, uri in zooms]
    for caption, before_uri, after_uri in figures:
        body += [f"<h2 id='strip'>{esc(caption)}</h2>",
                 "<p>Lesion outline in red. Hover over the panel to see the result (after); away from it shows the "
                 "input (before).</p>", "<div class='flicker'>",
                 f"<img class='before' alt='before' src='{before_uri}'>",
                 f"<img class='after' alt='after' src='{after_uri}'>", "</div>"]
    for heading, text in (extra or {}).items():
        body += [f"<h2>{esc(heading)}</h2>", f"<pre>{esc(text)}</pre>"]
    if methods:
        body += ["<h2 id='methods'>Methods (to paste into a paper)</h2>", f"<div class='methods'>{esc(methods)}</div>"]
    if settings:
        flat = {k: (json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else v)
                for k, v in sorted(settings.items()) if k != "messages"}
        body += ["<h2 id='settings'>Settings</h2>", _table([(esc(k), esc(str(v))) for k, v in flat.items()],
                                                            head=("setting", "value"))]
    return _page(title, body)


def report_parts(before, after, mask, settings: Mapping | None = None, *, fmt: str = "png", top: int = 3) -> dict:
    """Everything a subject's page shows, computed once: ``summary`` (a dict of lines), ``lesions``
    (:func:`lesion_summary`), ``check`` (:func:`fill_check`), ``zooms`` [(caption, uri)], ``methods``."""
    settings = dict(settings or {})
    out = {"summary": {}, "lesions": None, "check": None, "zooms": [], "methods": None}
    if mask is not None:
        b, a, m = _canonical(before), _canonical(after), _canonical(mask)  # read once for every panel
        les = lesion_summary(mask, top=top)
        out["lesions"], out["check"] = les, fill_check(a, m)
        for k, piece in enumerate(les["largest"], 1):
            cap = f"lesion {k}: {piece['ml']} ml at ({', '.join(str(c) for c in piece['centre_mm'])}) mm"
            out["zooms"].append((cap, zoom_panel(b, a, m, piece["centre_voxel"], fmt=fmt)))
    weights = settings.get("weights") or {}
    les = out["lesions"]
    source = settings.get("contrast_source")
    lines = {
        "input": settings.get("input") or (str(before) if isinstance(before, (str, os.PathLike)) else "image"),
        "contrast": f"{settings.get('contrast')} (decided by: {source})" if source else settings.get("contrast"),
        "lesion volume": f"{les['ml']} ml in {les['components']} piece(s)" if les else "no mask",
        "largest lesions": "; ".join(f"{p['ml']} ml" for p in les["largest"]) if les else "",
        "method": settings.get("method"),
        "weights": f"{weights.get('weights', '')} (fill {str(weights.get('sha256', ''))[:16]}"
                   + (f", refiner {str(weights.get('refiner_sha256'))[:16]}" if weights.get("refiner_sha256") else "")
                   + ")" if weights else "",
        "seconds": settings.get("seconds"),
        "fill check": ("FLAG: " if out["check"]["flag"] else "ok: ") + f"fill/surroundings {out['check']['ratio']}"
                      if out["check"] and out["check"]["ratio"] is not None else "",
    }
    out["summary"] = {k: v for k, v in lines.items() if v not in (None, "")}
    if settings:
        out["methods"] = methods_text(settings, lesion_ml=les["ml"] if les else None, defaults=_defaults_for(settings))
    return out


def write_report(path, *, before, after, mask=None, title: str = "usb_prep report", caption: str = "Lesion filling",
                 settings: Mapping | None = None, messages: Iterable[str] = (), fmt: str = "png") -> str:
    """Write a subject's page (summary, zoomed lesions, the whole-brain strip, the fill check, methods, settings);
    returns its path."""
    parts = report_parts(before, after, mask, settings, fmt=fmt)
    b_uri, a_uri = before_after(before, after, mask, fmt=fmt)
    text = render_html(title=title, figures=[(f"{caption}: whole brain", b_uri, a_uri)], settings=settings,
                       messages=messages, summary=parts["summary"], zooms=parts["zooms"], check=parts["check"],
                       methods=parts["methods"])
    return _write_page(path, text)


def write_failed_report(path, *, title: str, cause: str, crash_file=None) -> str:
    """A failed subject's page: its one-line cause and its crash file."""
    rows = [("status", "<b>failed</b>"), ("cause", html.escape(cause)),
            ("crash file", html.escape(str(crash_file)) if crash_file else "-")]
    text = _page(title, ["<h2 id='summary'>Summary</h2>", _table(rows, cls=["flag", "", ""])])
    return _write_page(path, text)


def write_dataset_page(path, rows: Iterable[Mapping], *, title: str = "usb_prep: lesion filling") -> str:
    """The dataset's page: one row an image (``key``, ``status`` ok/failed/skipped, ``report`` link relative to the
    page, ``ml``, ``pieces``, ``seconds``, ``flags``, ``cause``), failed and skipped ones with their cause. No
    figures, so a page of hundreds of subjects opens at once."""
    esc = html.escape
    rows = list(rows)
    counts = {s: sum(r.get("status") == s for r in rows) for s in ("ok", "failed", "skipped")}
    table, classes = [], []
    for r in rows:
        link = f"<a href='{esc(r['report'])}'>{esc(r['key'])}</a>" if r.get("report") else esc(r["key"])
        table.append((link, esc(r.get("status", "")), r.get("ml", "") if r.get("ml") is not None else "",
                      r.get("pieces", "") if r.get("pieces") is not None else "",
                      r.get("seconds", "") if r.get("seconds") is not None else "",
                      esc("; ".join(r.get("flags") or [])), esc(r.get("cause") or "")))
        classes.append({"ok": "flag" if r.get("flags") else "ok", "failed": "flag", "skipped": "skip"}.get(
            r.get("status"), ""))
    body = [f"<p>{counts['ok']} filled, {counts['failed']} failed, {counts['skipped']} skipped. Each name links its "
            "report; flagged rows need a look.</p>",
            _table(table, head=("image", "status", "lesion ml", "pieces", "seconds", "flags", "cause"), cls=classes)]
    text = _page(title, body)
    return _write_page(path, text)


def image_row(key: str, filled, mask, report: str | None = None) -> dict:
    """A dataset page's row for a filled image: lesion ml and pieces (from the mask), seconds and notes (from the
    filled image's sidecar, ``LesionFilling``), flags (the fill check; warnings; a guide left out)."""
    from .io import sidecar_path

    row = {"key": key, "status": "ok", "report": report, "flags": []}
    try:
        side = json.loads(sidecar_path(filled).read_text()).get("LesionFilling", {})
    except (OSError, ValueError):
        side = {}
    row["seconds"] = side.get("seconds")
    if mask is not None and Path(mask).exists():
        les = lesion_summary(mask, top=0)
        row["ml"], row["pieces"] = les["ml"], les["components"]
        check = fill_check(filled, mask)
        if check["flag"]:
            row["flags"].append(f"fill {'darker' if check['ratio'] < 1 else 'brighter'} than its surroundings "
                                f"(x{check['ratio']})")
    row["flags"] += [m for m in side.get("Messages", []) if m.startswith("warning:")]
    if side.get("guide_unused"):
        row["flags"].append("guide left out")
    return row


def write_citation(path, settings: Mapping, *, lesion_ml: float | None = None) -> str:
    """``CITATION.md``: the methods paragraph of a run (:func:`methods_text`) and what to cite."""
    text = ("# Methods and citations\n\nGenerated by usb_prep from what ran; edit as needed.\n\n"
            + methods_text(settings, lesion_ml=lesion_ml, defaults=_defaults_for(settings)).replace(
                "\n\nCite: ", "\n\n## Cite\n\n- ").replace(" | ", "\n- ") + "\n")
    return _write_page(path, text)
