"""One publication style for every q4core figure, and a byte-stable, atomic ``save_figure``.

Style: ``q4core/q4core.mplstyle`` (DejaVu Sans 8 pt, TrueType fonts embedded in PDF - ``pdf.fonttype 42`` -,
the Okabe-Ito colour-blind-safe palette :data:`PALETTE`, single-column :data:`SINGLE_COLUMN` = 3.4 in and
double-column :data:`DOUBLE_COLUMN` = 7.0 in widths).  Figures are made with :func:`new_figure`, which builds a
plain :class:`matplotlib.figure.Figure` (Agg canvas, no pyplot state, nothing shown by accident), so a notebook
shows exactly the PNG that was saved (:func:`show`).

:func:`save_figure` writes ``name.pdf``, ``name.png`` and, when ``data`` or ``caption`` is given, ``name.json``
(the numbers the figure shows).  Every file is written to a temporary file in the target directory
(``.NAME.EXT.<pid>-XXXXXXXX.tmp``, the pid of the writing process, so a later run can remove the temporaries of a
process that died - :func:`remove_stale_temporaries`) and then ``os.replace``-d, so a run that dies half way leaves
the previous good version in place.  Only regular files are ever replaced: a destination that exists and is
anything else (a folder, a device, a symlink, a FIFO) is refused before anything is written.  The bytes do not
depend on when or where the figure was made: PDF ``CreationDate``/``Producer`` and PNG ``Software`` metadata are
dropped, ``svg.hashsalt`` is fixed, ``SOURCE_DATE_EPOCH`` is pinned while saving.

The JSON is written at the precision its numbers carry, so it is byte-identical across machines: every float is
rounded to :data:`JSON_SIGNIFICANT_DIGITS` (6) significant digits (``float(f"{x:.6g}")``), which hides the
last-bit differences that float32 BLAS reductions give on different CPUs (AVX2 vs AVX-512 summation order) - except
for a value that falls on a rounding boundary, which is rare - and is still finer than any figure can show; integers
and booleans are written exactly, non-finite floats as strings.

Figure names start with the number of the notebook that makes them (``01_levels``): the batch runner
(:mod:`q4core.reproduce`) uses that prefix to know which notebook owns which figure.
"""
import json
import math
import numbers
import os
import re
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.figure import Figure

from ._io import check_replaceable, remove_stale_temporaries, write_atomic  # noqa: F401 (re-exported)

STYLE_PATH = Path(__file__).with_name("q4core.mplstyle")
SINGLE_COLUMN = 3.4   # inches
DOUBLE_COLUMN = 7.0   # inches
#: Okabe & Ito (2008) colours, safe for the common colour-vision deficiencies.
PALETTE = {
    "orange": "#E69F00", "sky_blue": "#56B4E9", "green": "#009E73", "yellow": "#F0E442",
    "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7", "black": "#000000",
}
#: the palette in plotting order, without yellow (too light on white for lines, dots and text)
COLORS = [c for name, c in PALETTE.items() if name != "yellow"]

_SAVE_RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.hashsalt": "q4core", "svg.fonttype": "path"}
_PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": "q4core"}
_PNG_METADATA = {"Software": None}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: significant digits of every float in a figure's JSON (see the module docstring)
JSON_SIGNIFICANT_DIGITS = 6


def use_style():
    """Apply the q4core style globally (``matplotlib.style.use``); returns the style file's path."""
    matplotlib.style.use(str(STYLE_PATH))
    return STYLE_PATH


@contextmanager
def style():
    """Context manager: the q4core style inside the block only."""
    with matplotlib.style.context(str(STYLE_PATH)):
        yield


def new_figure(width="single", aspect=0.7, nrows=1, ncols=1, **subplot_kw):
    """A styled figure and its axes: ``width`` is ``"single"`` (3.4 in), ``"double"`` (7.0 in) or inches;
    height = width * ``aspect``.  Applies the style globally first (:func:`use_style`).  Returns ``(fig, axes)``
    like ``plt.subplots`` (``squeeze=True``)."""
    if isinstance(width, str):
        if width not in ("single", "double"):
            raise ValueError(f"width must be 'single', 'double' or a number of inches, got {width!r}")
        inches = SINGLE_COLUMN if width == "single" else DOUBLE_COLUMN
    elif isinstance(width, numbers.Real) and 0 < width < 100:
        inches = float(width)
    else:
        raise ValueError(f"width must be 'single', 'double' or a positive number of inches, got {width!r}")
    if not (isinstance(aspect, numbers.Real) and 0 < aspect < 10):
        raise ValueError(f"aspect must be a positive number, got {aspect!r}")
    use_style()   # globally: artists added later (ax.plot, ...) read rcParams when they are created
    fig = Figure(figsize=(inches, inches * aspect))
    axes = fig.subplots(nrows, ncols, **subplot_kw)
    return fig, axes


def seed_intervals(ax, groups, *, colors=None, reference=None, reference_label=None, ylabel=None,
                   confidence=0.95, horizontal=False, jitter=0.12, seed=0):
    """Dots for seeds and a mean with its Student-t interval per group, on an axis that is not truncated to make
    differences look large (a reviewer's objection to bars on cut axes).

    ``groups``: ``{label: values}`` (``None`` = a diverged run, shown as a cross at the axis edge and left out of
    the interval).  ``reference``: a number drawn as a dashed line (e.g. the 1-point aim or the float32 mean).
    ``horizontal=True`` puts the groups on the y axis (long labels).  Dots are offset deterministically
    (``seed``) so that equal values stay visible.  Returns ``{label: interval dict}`` from
    :func:`q4core.stats.paired_interval` (the one-sample interval of the values)."""
    from . import stats
    colors = colors or COLORS
    rng = np.random.default_rng(seed)
    out = {}
    for i, (label, values) in enumerate(groups.items()):
        vals = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        iv = stats.paired_interval(finite, confidence)
        out[label] = iv
        c = colors[i % len(colors)]
        off = rng.uniform(-jitter, jitter, finite.size)
        pos = np.full(finite.size, float(i)) + off
        xy = (finite, pos) if horizontal else (pos, finite)
        ax.plot(*xy, "o", ms=3, mfc="none", mec=c, mew=0.8, zorder=3)
        if iv["mean"] is not None:
            lo, hi = iv["low"], iv["high"]
            err = None if not np.isfinite(lo) else [[iv["mean"] - lo], [hi - iv["mean"]]]
            if horizontal:
                ax.errorbar(iv["mean"], i + 0.3, xerr=err, fmt="D", ms=4, color=c, capsize=2, lw=1.0, zorder=4)
            else:
                ax.errorbar(i + 0.3, iv["mean"], yerr=err, fmt="D", ms=4, color=c, capsize=2, lw=1.0, zorder=4)
        n_div = int(np.sum(~np.isfinite(vals)))
        if n_div:
            ax.annotate(f"{n_div} diverged", (i, 0) if not horizontal else (0, i), xycoords=(
                ("data", "axes fraction") if not horizontal else ("axes fraction", "data")),
                fontsize=6, color=c, ha="center" if not horizontal else "left", va="bottom")
    if reference is not None:
        line = ax.axvline if horizontal else ax.axhline
        line(reference, color="0.35", ls="--", lw=0.8, label=reference_label, zorder=1)
    ticks = (ax.set_yticks if horizontal else ax.set_xticks)
    ticks(range(len(groups)), list(groups))
    if horizontal:
        ax.set_ylim(len(groups) - 0.5, -0.5)
    else:
        ax.set_xlim(-0.5, len(groups) - 0.5)
    if ylabel:
        (ax.set_xlabel if horizontal else ax.set_ylabel)(ylabel)
    return out


def seed_points(ax, x, values, color, *, floor=None):
    """At ``x``: one open circle per seed (``None`` and NaN left out) and a diamond at their mean with its 95%
    Student-t interval (:func:`q4core.stats.paired_interval`; a bare diamond when the interval is unbounded: one
    value, or all equal).  ``floor``: values below it are drawn at it and the interval is cut there (a log axis).
    Returns the interval dict.  The many-groups-per-axis twin of :func:`seed_intervals` (format x rounding
    studies)."""
    from . import stats
    vals = [float(v) for v in values if v is not None and v == v]
    if floor is not None:
        vals = [max(v, floor) for v in vals]
    ax.plot(np.full(len(vals), x), vals, "o", ms=2.5, mfc="none", mec=color, mew=0.7)
    iv = stats.paired_interval(vals)
    if iv["n"] > 1 and np.isfinite(iv["low"]):
        low = iv["low"] if floor is None else max(iv["low"], floor)
        ax.errorbar(x, iv["mean"], yerr=[[iv["mean"] - low], [iv["high"] - iv["mean"]]], fmt="D", ms=3,
                    color=color, capsize=1.5, lw=0.8)
    elif iv["mean"] is not None:
        ax.plot(x, iv["mean"], "D", ms=3, color=color)
    return iv


def _jsonable(value):
    """numpy scalars/arrays and tuples -> plain JSON types; non-finite floats -> strings ('inf', 'nan')."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            return repr(value)
        return float(f"{value:.{JSON_SIGNIFICANT_DIGITS}g}")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"data holds a value JSON cannot store: {type(value).__name__}")


def default_figures_dir():
    """``$Q4CORE_FIGURES_DIR`` if set, else ``figures/`` in the current directory."""
    return Path(os.environ.get("Q4CORE_FIGURES_DIR", "figures"))


def save_figure(fig, name, figures_dir=None, data=None, caption=None, dpi=300):
    """Write ``fig`` as ``figures_dir/name.pdf`` and ``name.png`` (+ ``name.json`` with ``data``/``caption``).

    Byte-stable and atomic (see the module docstring); floats in the JSON carry
    :data:`JSON_SIGNIFICANT_DIGITS` significant digits.  A destination that exists and is not a regular file
    raises ``ValueError`` before anything is written.  ``name``: letters, digits, ``_ . -``, no directory
    part, no extension.  Returns a dict ``{"pdf": Path, "png": Path[, "json": Path]}``.
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.endswith((".pdf", ".png", ".json")):
        raise ValueError(f"name must be a bare file stem like '01_levels' (no folder, no extension), got {name!r}")
    if caption is not None and not isinstance(caption, str):
        raise TypeError(f"caption must be a string, got {type(caption).__name__}")
    folder = Path(figures_dir) if figures_dir is not None else default_figures_dir()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"figures_dir {os.fspath(folder)} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    payload = None
    if data is not None or caption is not None:   # convert before writing anything: a bad value writes nothing
        doc = {"name": name, "caption": caption, "data": _jsonable(data if data is not None else {})}
        if os.environ.get("Q4CORE_DIRTY_TREE"):   # q4-reproduce --allow-dirty: say the tree was not committed
            doc["dirty_tree"] = os.environ["Q4CORE_DIRTY_TREE"]
        payload = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n"
    paths = {"pdf": folder / f"{name}.pdf", "png": folder / f"{name}.png"}
    for path in [*paths.values(), *([folder / f"{name}.json"] if payload is not None else [])]:
        check_replaceable(path, "figure file")   # before anything is written
    old_epoch = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = "0"
    try:
        with matplotlib.rc_context(_SAVE_RC):
            write_atomic(paths["pdf"], lambda p: fig.savefig(p, format="pdf", metadata=_PDF_METADATA))
            write_atomic(paths["png"], lambda p: fig.savefig(p, format="png", dpi=dpi, metadata=_PNG_METADATA))
    finally:
        if old_epoch is None:
            os.environ.pop("SOURCE_DATE_EPOCH", None)
        else:
            os.environ["SOURCE_DATE_EPOCH"] = old_epoch
    if payload is not None:
        paths["json"] = folder / f"{name}.json"

        def write_json(p):
            with open(p, "w", encoding="utf-8") as fh:
                fh.write(payload)
        write_atomic(paths["json"], write_json)
    return paths


def show(paths, width=None):
    """Display a saved figure's PNG in a notebook (the exact file on disk); returns the IPython object."""
    from IPython.display import Image, display
    png = paths["png"] if isinstance(paths, dict) else Path(paths)
    if width is None:   # show at about 150 px per inch whatever dpi it was saved at (PNG IHDR width, bytes 16-20)
        with open(png, "rb") as fh:
            head = fh.read(24)
        width = max(1, int.from_bytes(head[16:20], "big") // 2)
    image = Image(filename=str(png), width=width)
    display(image)
    return None
