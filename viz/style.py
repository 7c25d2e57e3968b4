"""The look of every figure in :mod:`viz`: palette, markers, sizes, fonts, and how files are saved.

Figures are meant for a paper: a single column is about 3.5 in wide, the full text width about
7.2 in. Figures are drawn at the size they will be printed, so a font size in points here is the
size on paper (8 pt text, 7 pt ticks and legends; no smaller than 6 pt anywhere).

Generic series take the Okabe-Ito palette (Okabe and Ito, "Color Universal Design", 2008): eight
colours that stay distinct under the common forms of colour blindness and in greyscale print;
beyond eight, markers and line styles tell them apart. The registered methods (twenty and more)
and the classes of a t-SNE need more different colours than any colour-blind-safe palette has, so
they take matplotlib's twenty tab20 colours (and a few of tab20b), each method its own, with
markers and bar hatches as a second cue; a method looks the same in every figure.

PNG files are ``width * dpi`` by ``height * dpi`` pixels exactly: figures use matplotlib's
constrained layout to fit their text and are saved without ``bbox_inches="tight"``, which would
crop the canvas to an unpredictable size.
"""

from __future__ import annotations

import contextlib
import functools
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hgadapter._io import atomic_write  # imports no torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "OKABE_ITO",
    "PALETTE",
    "MARKERS",
    "LINESTYLES",
    "HATCHES",
    "COLUMN_WIDTH",
    "TEXT_WIDTH",
    "DPI",
    "FONT_SIZE",
    "SMALL_FONT_SIZE",
    "TITLE_FONT_SIZE",
    "FIGURE_FORMATS",
    "DEFAULT_FORMATS",
    "series_style",
    "class_style",
    "CLASS_PALETTE",
    "CLASS_MARKERS",
    "method_style",
    "method_label",
    "method_order",
    "method_family",
    "METHOD_FAMILIES",
    "REFERENCE_METHODS",
    "style_context",
    "new_figure",
    "output_paths",
    "save_figure",
    "atomic_write",  # re-exported from hgadapter._io
]

# Okabe-Ito, by name. Hex strings so that tests and users can compare colours exactly.
OKABE_ITO: dict[str, str] = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}
# The order series take their colours in: the darker, high-contrast colours first; yellow, the
# hardest to see on white, last.
PALETTE: tuple[str, ...] = tuple(
    OKABE_ITO[name]
    for name in ("blue", "vermillion", "bluish_green", "orange", "reddish_purple", "sky_blue", "black", "yellow")
)
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES: tuple[str, ...] = ("-", "--", "-.", ":")
HATCHES: tuple[str, ...] = ("", "//", "\\\\", "xx", "..", "++", "oo", "--")

# Twenty colours that differ from each other, for the classes of a t-SNE and the methods of a
# bar chart: matplotlib's tab20 (ten hues, each dark and light), reordered so that the first ten
# are the ten dark hues. Beyond eight series they are not all safe under colour blindness, so
# markers (and bar hatches) differ too.
CLASS_PALETTE: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)
# Fifteen filled markers; 15 and 20 are coprime to 3 and 4, so (colour, marker) repeats only after 60 series.
CLASS_MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "p", "<", ">", "d", "H", "8")

COLUMN_WIDTH = 3.5  # inches: one column of a two-column paper
TEXT_WIDTH = 7.2  # inches: the full text width
DPI = 300  # dots per inch of PNG files: print quality
FONT_SIZE = 8.0  # points, as printed: labels and text
SMALL_FONT_SIZE = 7.0  # points: ticks, legends, point labels
TITLE_FONT_SIZE = 9.0  # points: panel and figure titles

FIGURE_FORMATS: tuple[str, ...] = ("png", "pdf", "svg")
DEFAULT_FORMATS: tuple[str, ...] = ("png", "pdf")

_RC: dict[str, Any] = {
    "font.size": FONT_SIZE,
    "axes.titlesize": TITLE_FONT_SIZE,
    "axes.labelsize": FONT_SIZE,
    "xtick.labelsize": SMALL_FONT_SIZE,
    "ytick.labelsize": SMALL_FONT_SIZE,
    "legend.fontsize": SMALL_FONT_SIZE,
    "figure.titlesize": TITLE_FONT_SIZE,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 4.0,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.4,
    "legend.frameon": False,
    "pdf.fonttype": 42,  # TrueType in PDFs: text stays text, as journals ask
    "svg.fonttype": "none",
}

# Fixed looks for the registered methods (hgadapter.methods.list_methods()): every method its own
# colour, hues by family so that related methods sit near each other (HeGraphAdapter and its
# ablation reds and oranges, zero-shot greys, training-free caches blues and cyans, linear probes
# greens, adapters purples, ...). Within a family the dark shade is the source method and the
# light shade its variant; the light shade also gets a dashed line (a hatched bar).
_METHOD_STYLES: dict[str, tuple[str, str, str]] = {
    "hegraphadapter": ("#d62728", "o", "-"),
    "hegraphadapter:t": ("#ff9896", "s", "--"),
    "hegraphadapter:t_p": ("#ff7f0e", "^", "-"),
    "hegraphadapter:t_n": ("#ffbb78", "v", "--"),
    "hegraphadapter:base": ("#c7c7c7", "X", "--"),
    "zero_shot": ("#7f7f7f", "*", ":"),
    "tip_adapter": ("#1f77b4", "D", "-"),
    "tip_adapter_f": ("#aec7e8", "P", "--"),
    "proker": ("#17becf", "d", "-"),
    "gda": ("#9edae5", "h", "--"),
    "ape": ("#393b79", ">", "-"),
    "ape_t": ("#9c9ede", "<", "--"),
    "linear_probe": ("#2ca02c", "o", ":"),
    "lp_plus_plus": ("#98df8a", "h", "--"),
    "clap": ("#637939", "p", "-."),
    "taskres": ("#8c564b", "D", "-."),
    "clip_adapter": ("#9467bd", "s", "-"),
    "graphadapter": ("#c5b0d5", "^", "--"),
    "proto_clip_f": ("#e377c2", "H", "-"),
    "proto_clip_f_q": ("#f7b6d2", "8", "--"),
    "timo": ("#bcbd22", "p", "-"),
    "timo_s": ("#dbdb8d", "*", "--"),
    "coop": ("#8c6d31", "v", "-"),
}


# Families of methods, for figures that would otherwise draw 16 lines in one panel: one panel per
# family, its members in colour and the others in grey (viz.curves). The two references, zero-shot
# CLIP and full HeGraphAdapter, are drawn in colour in every panel.
METHOD_FAMILIES: dict[str, tuple[str, ...]] = {
    "HeGraphAdapter and its ablation": ("hegraphadapter", "hegraphadapter:t", "hegraphadapter:t_p", "hegraphadapter:t_n", "hegraphadapter:base"),
    "training-free caches": ("tip_adapter", "tip_adapter_f", "proker", "gda", "ape", "ape_t"),
    "linear probes": ("linear_probe", "lp_plus_plus", "clap"),
    "prompt learning": ("coop",),
    "adapters and residuals": ("taskres", "clip_adapter", "graphadapter", "proto_clip_f", "proto_clip_f_q", "timo", "timo_s"),
}
REFERENCE_METHODS: tuple[str, ...] = ("zero_shot", "hegraphadapter")
OTHER_FAMILY = "other methods"


def method_family(method: str) -> str:
    """The family of :data:`METHOD_FAMILIES` a method belongs to; :data:`OTHER_FAMILY` if none."""
    return next((name for name, members in METHOD_FAMILIES.items() if method in members), OTHER_FAMILY)


def series_style(index: int) -> dict[str, str]:
    """Colour, marker and line style of the ``index``-th series of a plot.

    Colour and marker cycle together through eight values, so the first eight series differ in
    both (a greyscale print still tells them apart); the next eight reuse them with a dashed line,
    and so on, so 32 series get 32 different looks.
    """
    if index < 0:
        raise ValueError(f"series index must be >= 0, got {index}")
    return {
        "color": PALETTE[index % len(PALETTE)],
        "marker": MARKERS[index % len(MARKERS)],
        "linestyle": LINESTYLES[(index // len(PALETTE)) % len(LINESTYLES)],
    }


def class_style(index: int) -> dict[str, str]:
    """Colour and marker of the ``index``-th class of a scatter plot: the first 20 classes get 20
    different colours, and no two of the first 60 share both colour and marker."""
    if index < 0:
        raise ValueError(f"class index must be >= 0, got {index}")
    return {"color": CLASS_PALETTE[index % len(CLASS_PALETTE)], "marker": CLASS_MARKERS[index % len(CLASS_MARKERS)]}


def method_style(method: str) -> dict[str, str]:
    """The look of a method in every figure: fixed for registered methods, else from its name.

    An unregistered name gets a look from a checksum of the name (not Python's ``hash``, which
    changes between processes), so it is stable too, though two such names may share a colour.
    """
    if method in _METHOD_STYLES:
        color, marker, linestyle = _METHOD_STYLES[method]
        return {"color": color, "marker": marker, "linestyle": linestyle}
    return series_style(zlib.crc32(method.encode("utf-8")) % (len(PALETTE) * len(LINESTYLES)))


def method_label(method: str) -> str:
    """A method's display name (``hegraphadapter:t`` -> ``HeGraphAdapter(T)``): the project's one
    list of them, ``methods`` in ``experiments/paper_results.yaml``, as every table uses; the id
    itself for a method it does not name."""
    return _display_names().get(method, method)


@functools.lru_cache(maxsize=1)
def _display_names() -> dict[str, str]:
    from hgadapter.paper_results import ReportError, load_paper_results  # imports no torch

    try:
        return dict(load_paper_results().get("methods", {}))
    except ReportError:  # no paper file (a bare install): ids are still readable
        return {}


def method_order(method: str) -> tuple[int, str]:
    """Sort key: registered methods in the order of the table above, then others by name."""
    order = list(_METHOD_STYLES)
    return (order.index(method), "") if method in order else (len(order), method)


@contextlib.contextmanager
def style_context() -> Iterator[None]:
    """Matplotlib settings of :mod:`viz` (fonts, lines, grid) for the figures built inside."""
    import matplotlib

    with matplotlib.rc_context(_RC):
        yield


def new_figure(width: float, height: float, *, dpi: int = DPI) -> Figure:
    """An empty constrained-layout figure of ``width`` x ``height`` inches on an Agg canvas.

    pyplot is never imported: no window can open and the caller's global backend is left alone.
    Build it inside :func:`style_context` so that its text takes the house font sizes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if dpi <= 0 or width <= 0 or height <= 0:
        raise ValueError(f"figure size and dpi must be positive, got {width} x {height} in at {dpi} dpi")
    figure = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def output_paths(out: str | Path, formats: Sequence[str] | None = None) -> list[Path]:
    """The files :func:`save_figure` writes for ``out``: ``out`` itself, then its other ``formats``.

    ``out`` names the figure with or without a suffix (``figs/acc.png`` or ``figs/acc``); each
    format in ``formats`` adds a sibling with that suffix (``figs/acc.pdf``). Formats are
    ``png``, ``pdf`` and ``svg``, with or without the dot.

    Raises:
        ValueError: an unsupported suffix or format, or nothing to write.
    """
    path = Path(out)
    wanted = [f.lower().lstrip(".") for f in (formats or ())]
    for fmt in wanted:
        if fmt not in FIGURE_FORMATS:
            raise ValueError(f"unsupported figure format '{fmt}'; use some of {list(FIGURE_FORMATS)}")
    suffix = path.suffix.lower().lstrip(".")
    paths = []
    if suffix:
        if suffix not in FIGURE_FORMATS:
            raise ValueError(f"unsupported figure format '{path.suffix}' for {path}; use one of {['.' + f for f in FIGURE_FORMATS]}")
        paths.append(path)
        stem = path.with_suffix("")
    else:
        stem = path
    for fmt in wanted:
        sibling = stem.with_name(f"{stem.name}.{fmt}")
        if sibling not in paths:
            paths.append(sibling)
    if not paths:
        raise ValueError(f"figure path {path} has no suffix and no formats were given; add .png or .pdf, or pass formats")
    return paths


def save_figure(figure: Figure, out: str | Path, *, formats: Sequence[str] | None = None) -> list[Path]:
    """Write ``figure`` to ``out`` and to a sibling per format in ``formats``, each atomically.

    The figure's own size and dpi are used: a PNG is ``width * dpi`` by ``height * dpi`` pixels.

    Returns:
        The written paths (:func:`output_paths`).
    """
    paths = output_paths(out, formats)
    for path in paths:
        fmt = path.suffix.lower().lstrip(".")
        atomic_write(path, lambda tmp, fmt=fmt: figure.savefig(tmp, format=fmt, dpi=figure.dpi))
    return paths


