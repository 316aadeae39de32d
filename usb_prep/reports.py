"""Visual reports: before/after slices with the lesion outline, and HTML.

fMRIPrep style: the "before" and "after" panels are stacked and flicker on
hover, with the mask outline drawn on both.  Figures are PNG (or SVG)
embedded as base64 data URIs, so one HTML file per subject is all there is.
Pure core: matplotlib (Agg) and nibabel, no Nipype.
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


_CSS = """
body{font-family:sans-serif;margin:2em;max-width:1200px}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ccc}
.flicker{position:relative;display:inline-block}
.flicker img{display:block;max-width:100%}
.flicker img.after{position:absolute;top:0;left:0;opacity:0}
.flicker:hover img.after{opacity:1}
pre{background:#f4f4f4;padding:.5em;overflow-x:auto}
.note{color:#a33}
"""


def render_html(
    *,
    title: str,
    figures: Iterable[tuple[str, str, str]] = (),
    settings: Mapping | None = None,
    messages: Iterable[str] = (),
    extra: Mapping[str, str] | None = None,
) -> str:
    """Render a self-contained HTML report.

    Parameters
    ----------
    title : str
        Page title (e.g. ``sub-01``).
    figures : iterable of (caption, before_uri, after_uri)
        Flicker panels: "after" shows on hover.
    settings : mapping, optional
        Settings shown as JSON.
    messages : iterable of str
        Notes (warnings, skipped steps).
    extra : mapping, optional
        Additional ``{heading: text}`` sections.

    Returns
    -------
    str
        HTML document.
    """
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    for caption, before_uri, after_uri in figures:
        parts += [
            f"<h2>{esc(caption)}</h2>",
            "<p>Lesion outline in red. Hover over the panel to see the result (after); "
            "away from it shows the input (before).</p>",
            "<div class='flicker'>",
            f"<img class='before' alt='before' src='{before_uri}'>",
            f"<img class='after' alt='after' src='{after_uri}'>",
            "</div>",
        ]
    messages = list(messages)
    if messages:
        parts.append("<h2>Notes</h2><ul>")
        parts += [f"<li class='note'>{esc(m)}</li>" for m in messages]
        parts.append("</ul>")
    for heading, text in (extra or {}).items():
        parts += [f"<h2>{esc(heading)}</h2>", f"<pre>{esc(text)}</pre>"]
    if settings:
        parts += ["<h2>Settings</h2>", f"<pre>{esc(json.dumps(settings, indent=2, sort_keys=True, default=str))}</pre>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    path,
    *,
    before,
    after,
    mask=None,
    title: str = "usb_prep report",
    caption: str = "Lesion filling",
    settings: Mapping | None = None,
    messages: Iterable[str] = (),
    fmt: str = "png",
) -> str:
    """Write a one-file HTML report with a before/after flicker panel.

    Parameters
    ----------
    path : path
        Output ``.html``.
    before, after : path or nibabel image
        Input and filled images.
    mask : path or nibabel image, optional
        Lesion (or artifact) mask outlined on both.
    title, caption : str
        Page title and panel caption.
    settings : mapping, optional
        Settings echoed in the report.
    messages : iterable of str
        Notes.
    fmt : {"png", "svg"}
        Figure format.

    Returns
    -------
    str
        Absolute path of the report.
    """
    b_uri, a_uri = before_after(before, after, mask, fmt=fmt)
    text = render_html(title=title, figures=[(caption, b_uri, a_uri)], settings=settings, messages=messages)
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)
