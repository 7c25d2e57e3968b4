"""t-SNE of heterograph node features before and after the adapter (the paper's t-SNE figure).

The paper shows that adaptation pulls each class's positive text node away from its confusable
neighbours: a t-SNE of the positive text nodes as initialised from the frozen CLIP text encoder,
beside the same nodes after the heterogeneous graph adapter. :func:`plot_node_tsne` redraws that
figure from what ``hgadapter run`` saved in a run directory, without re-training:

- ``RUN/nodes.safetensors``: ``initial.{pos,neg,vis}`` (C, d), ``adapted.{ntype}`` (C, d) for the
  node types the variant adapts, optionally ``vis_bias`` (C, d);
- ``RUN/classes.json``: the C class names;
- ``RUN/metrics.json``: variant, shots, seed, accuracies and ``synthetic``.

Both panels come from one t-SNE fitted on the stacked points of every panel, so they share
coordinates and a point's move between the panels is the adapter's doing, not t-SNE's.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["compute_tsne", "default_perplexity", "load_run_nodes", "plot_node_tsne", "NODES_FILE", "FIGURE_FORMATS"]

NODES_FILE = "nodes.safetensors"
CLASSES_FILE = "classes.json"
METRICS_FILE = "metrics.json"
FIGURE_FORMATS = (".png", ".pdf", ".svg")

_STAGE_TITLES = {"initial": "before adaptation", "adapted": "after adaptation"}
_NTYPE_NAMES = {"pos": "positive text", "neg": "negative text", "vis": "visual"}
_NTYPE_MARKERS = {"pos": "o", "neg": "X", "vis": "s"}
_SPARE_MARKERS = ("^", "D", "v", "P", "*")
_MAX_LEGEND_GROUPS = 10  # up to this many colours get a legend (tab10); more get a cyclic map
_NUM_ANNOTATED = 8  # class names written beside their points when there is no class legend


def compute_tsne(points: np.ndarray, *, seed: int = 0, perplexity: float | None = None) -> np.ndarray:
    """Embed ``points`` in 2-D with t-SNE (scikit-learn, Barnes-Hut, PCA initialisation).

    The initialisation is scikit-learn's ``init="pca"`` (the first two principal components,
    scaled so the first has standard deviation 1e-4) plus a seeded jitter of a tenth of that
    scale. Without the jitter the seed would change nothing, since a PCA start is deterministic;
    with it the seed picks one of the nearby layouts t-SNE can settle in, and the global layout
    still follows the principal components. Everything runs on one thread because threaded BLAS
    and a threaded Barnes-Hut gradient sum in an order that depends on scheduling: this way a
    seed gives the same coordinates on every run and every machine.

    Args:
        points: (n, d) finite array, n >= 3, d >= 2.
        seed: chooses the jitter and scikit-learn's ``random_state``.
        perplexity: effective number of neighbours, in (0, n). Defaults to ``min(30, (n - 1) / 3)``
            so that tiny inputs work.

    Returns:
        (n, 2) float32 coordinates.

    Raises:
        ValueError: on a wrong shape, fewer than 3 points, non-finite values or a perplexity
            outside (0, n).
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"t-SNE needs a 2-D (n, d) array of points, got shape {x.shape}")
    n, d = x.shape
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {n}")
    if d < 2:
        raise ValueError(f"t-SNE needs at least 2 feature dimensions for its PCA start, got {d}")
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ValueError(f"t-SNE input holds {bad} non-finite values (NaN or inf)")
    if perplexity is None:
        perplexity = default_perplexity(n)
    elif not 0 < perplexity < n:
        raise ValueError(f"perplexity must lie in (0, n={n}), got {perplexity}")

    # The SVD of the PCA start is inside the limit too: a threaded BLAS may sum in another order.
    with threadpool_limits(limits=1):
        init = _pca_init(x, seed=seed)
        tsne = TSNE(n_components=2, perplexity=perplexity, init=init, learning_rate="auto", random_state=seed)
        return tsne.fit_transform(x).astype(np.float32)


def default_perplexity(n: int) -> float:
    """``min(30, (n - 1) / 3)``: scikit-learn's default, shrunk so that it stays below n."""
    return min(30.0, (n - 1) / 3)


def _pca_init(x: np.ndarray, *, seed: int) -> np.ndarray:
    """scikit-learn's PCA start for t-SNE, plus a seeded jitter (see :func:`compute_tsne`)."""
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    # SVD signs are arbitrary; make each component's largest entry positive so they are not.
    vt *= np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])[:, None]
    coords = centred @ vt[:2].T  # (n, 2)
    scale = coords[:, 0].std()
    coords = coords / scale * 1e-4 if scale > 0 else np.zeros_like(coords)
    jitter = np.random.default_rng(seed).normal(scale=1e-5, size=coords.shape)  # (n, 2)
    return (coords + jitter).astype(np.float32)


def load_run_nodes(run_dir: str | Path) -> tuple[dict[str, np.ndarray], list[str], dict[str, Any]]:
    """Read a run directory's node features, class names and metrics.

    Args:
        run_dir: a directory written by ``hgadapter run``.

    Returns:
        ``(node_dict, classnames, metrics)``: every tensor of ``nodes.safetensors`` as a (C, d)
        array keyed as stored (``"initial.pos"``, ``"adapted.pos"``, ``"vis_bias"``, ...), the C
        class names (``"0"``, ``"1"``, ... when ``classes.json`` is missing) and the metrics
        record (``{}`` when ``metrics.json`` is missing).

    Raises:
        FileNotFoundError: the directory or its ``nodes.safetensors`` does not exist.
        ValueError: a file is unreadable, a tensor is not 2-D, or the class counts disagree.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory not found: {run}")
    nodes_path = run / NODES_FILE
    if not nodes_path.is_file():
        raise FileNotFoundError(f"{nodes_path}: no node features in this run directory (hgadapter run writes them)")
    try:
        node_dict = load_file(str(nodes_path))
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{nodes_path}: not a readable safetensors file ({exc})") from None
    if not node_dict:
        raise ValueError(f"{nodes_path}: holds no tensors")
    rows = {}
    for key, value in node_dict.items():
        if value.ndim != 2:
            raise ValueError(f"{nodes_path}: '{key}' should be (C, d), got shape {tuple(value.shape)}")
        rows[key] = value.shape[0]
    if len(set(rows.values())) != 1:
        raise ValueError(f"{nodes_path}: tensors disagree on the number of classes: {rows}")
    num_classes = next(iter(rows.values()))

    classes_path = run / CLASSES_FILE
    if classes_path.is_file():
        classnames = _read_json(classes_path)
        if not isinstance(classnames, list) or not all(isinstance(c, str) for c in classnames):
            raise ValueError(f"{classes_path}: should be a JSON list of class names")
        if len(classnames) != num_classes:
            raise ValueError(f"{classes_path}: lists {len(classnames)} classes but {NODES_FILE} has {num_classes}")
    else:
        classnames = [str(c) for c in range(num_classes)]

    metrics_path = run / METRICS_FILE
    metrics = _read_json(metrics_path) if metrics_path.is_file() else {}
    if not isinstance(metrics, dict):
        raise ValueError(f"{metrics_path}: should be a JSON object")
    return node_dict, classnames, metrics


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from None


def plot_node_tsne(
    run_dir: str | Path,
    out_path: str | Path,
    *,
    ntypes: Sequence[str] = ("pos",),
    stages: Sequence[str] = ("initial", "adapted"),
    seed: int = 0,
    families: Sequence[int] | None = None,
    perplexity: float | None = None,
    normalize: bool = True,
    dpi: int = 150,
    figsize: tuple[float, float] = (10, 5),
) -> Path:
    """Draw one t-SNE panel per stage of a run's node features, side by side.

    All points of all panels are stacked and embedded by one :func:`compute_tsne` call, so the
    panels share coordinates and axis limits. Points are coloured by class, or by family when
    ``families`` is given; up to 10 colours get a legend, more get a cyclic colour map and a
    few class names written beside their points. Each node type has its own marker.

    Besides the figure, ``<out stem>.tsne.json`` records the title, the settings and every
    point's stage, ntype, class and coordinates, so the figure can be redrawn without t-SNE.
    Both files are written atomically (temp file, then ``os.replace``).

    Args:
        run_dir: a directory written by ``hgadapter run``.
        out_path: the figure; its suffix (.png, .pdf or .svg) picks the format.
        ntypes: node types to draw, e.g. ``("pos",)`` or ``("pos", "neg")``. A node type that a
            stage lacks (an ntype the variant does not adapt) is left out of that panel only.
        stages: one panel per stage, in order; a stage is a key prefix in ``nodes.safetensors``.
        seed: t-SNE seed (:func:`compute_tsne`).
        families: optional (C,) group index per class; colours then show groups, not classes.
        perplexity: t-SNE perplexity; ``None`` for :func:`compute_tsne`'s default.
        normalize: L2-normalise every node before t-SNE. The classifier compares nodes by cosine
            similarity, so direction is what adaptation changes; leaving norms in would let a
            stage's overall scale push the two panels' points apart.
        dpi: dots per inch; the image is ``figsize * dpi`` pixels.
        figsize: (width, height) in inches.

    Returns:
        The figure's path.

    Raises:
        FileNotFoundError: the run directory or its node features are missing.
        ValueError: an unknown ntype or stage (the message lists the available ones), bad
            ``families``, an unsupported suffix or a bad size.
    """
    out = Path(out_path)
    fmt = out.suffix.lower()
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"unsupported figure format '{out.suffix}' for {out}; use one of {list(FIGURE_FORMATS)}")
    if dpi <= 0 or len(figsize) != 2 or min(figsize) <= 0:
        raise ValueError(f"dpi and figsize must be positive, got dpi={dpi} figsize={tuple(figsize)}")
    ntypes, stages = list(ntypes), list(stages)
    if not ntypes or not stages:
        raise ValueError("plot_node_tsne needs at least one ntype and one stage")
    for name, values in (("ntypes", ntypes), ("stages", stages)):
        if len(set(values)) != len(values):
            raise ValueError(f"{name} must not repeat a name, got {values}")

    node_dict, classnames, metrics = load_run_nodes(run_dir)
    num_classes = len(classnames)
    panels = _select_panels(node_dict, ntypes, stages, run_dir)
    groups = _check_families(families, num_classes)

    blocks = [node_dict[f"{stage}.{ntype}"].astype(np.float64) for stage, present in panels for ntype in present]
    points = np.concatenate(blocks)  # (S * T * C, d), S stages, T ntypes (fewer where a stage lacks one)
    if normalize:
        norms = np.linalg.norm(points, axis=1, keepdims=True)  # (N, 1)
        points = points / np.where(norms > 0, norms, 1.0)
    coords = compute_tsne(points, seed=seed, perplexity=perplexity)  # (N, 2)

    point_stage = [stage for stage, present in panels for _ in present for _ in range(num_classes)]
    point_ntype = [ntype for _, present in panels for ntype in present for _ in range(num_classes)]
    point_class = np.tile(np.arange(num_classes), len(blocks))  # (N,)
    title = _title(metrics, ntypes, Path(run_dir))

    figure = _draw(
        coords, point_stage, point_ntype, point_class,
        panels=panels, ntypes=ntypes, classnames=classnames, groups=groups, title=title, dpi=dpi, figsize=figsize,
    )
    _atomic_write(out, lambda tmp: figure.savefig(tmp, format=fmt[1:], dpi=dpi))

    record = {
        "title": title,
        "run_dir": str(run_dir),
        "figure": out.name,
        "seed": seed,
        "perplexity": perplexity if perplexity is not None else default_perplexity(len(coords)),
        "normalize": normalize,
        "ntypes": ntypes,
        "stages": stages,
        "classes": classnames,
        "families": None if groups is None else groups.tolist(),
        "points": {
            "stage": point_stage,
            "ntype": point_ntype,
            "class_index": point_class.tolist(),
            "x": coords[:, 0].tolist(),
            "y": coords[:, 1].tolist(),
        },
    }
    text = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
    _atomic_write(out.with_name(out.stem + ".tsne.json"), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return out


def _select_panels(
    node_dict: dict[str, np.ndarray], ntypes: list[str], stages: list[str], run_dir: str | Path
) -> list[tuple[str, list[str]]]:
    """``[(stage, ntypes present in that stage)]``; unknown names raise with the available ones."""
    stored = [key.split(".", 1) for key in node_dict if "." in key]
    available_stages = sorted({stage for stage, _ in stored})
    for stage in stages:
        if stage not in available_stages:
            raise ValueError(
                f"run {run_dir} has no '{stage}' node features (a variant without that stage?); "
                f"available stages: {available_stages}"
            )
    in_stages = sorted({ntype for stage, ntype in stored if stage in stages})
    for ntype in ntypes:
        if ntype not in in_stages:
            raise ValueError(f"unknown ntype '{ntype}' for stages {stages} of run {run_dir}; available: {in_stages}")
    panels = [(stage, [t for t in ntypes if f"{stage}.{t}" in node_dict]) for stage in stages]
    for stage, present in panels:
        if not present:
            raise ValueError(f"run {run_dir} has none of ntypes {ntypes} at stage '{stage}'")
    return panels


def _check_families(families: Sequence[int] | None, num_classes: int) -> np.ndarray | None:
    if families is None:
        return None
    values = list(families)
    if len(values) != num_classes or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"families must hold one non-negative integer per class ({num_classes}), got {values[:5]}...")
    return np.asarray(values, dtype=np.int64)  # (C,)


def _title(metrics: dict[str, Any], ntypes: list[str], run: Path) -> str:
    what = _NTYPE_NAMES.get(ntypes[0], ntypes[0]) if len(ntypes) == 1 else ", ".join(ntypes)
    parts = [f"t-SNE of {what} nodes", f"variant {metrics.get('variant', run.name)}"]
    if "shots" in metrics:
        parts.append(f"{metrics['shots']}-shot")
    if "seed" in metrics:
        parts.append(f"seed {metrics['seed']}")
    if isinstance(metrics.get("test_acc"), (int, float)):
        parts.append(f"test {metrics['test_acc']:.2f}%")
    title = " · ".join(parts)
    return title + " (synthetic task)" if metrics.get("synthetic") else title


def _draw(
    coords: np.ndarray,
    point_stage: list[str],
    point_ntype: list[str],
    point_class: np.ndarray,
    *,
    panels: list[tuple[str, list[str]]],
    ntypes: list[str],
    classnames: list[str],
    groups: np.ndarray | None,
    title: str,
    dpi: int,
    figsize: tuple[float, float],
) -> Figure:
    # An explicit Figure on an Agg canvas: pyplot is never imported, so no window can open and
    # the global backend the caller chose is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    num_classes = len(classnames)
    colour_of = point_class if groups is None else groups[point_class]  # (N,) colour index per point
    num_colours = num_classes if groups is None else int(groups.max()) + 1
    palette = _palette(num_colours)  # (num_colours, 4)
    with_legend = num_colours <= _MAX_LEGEND_GROUPS
    markers = {t: _NTYPE_MARKERS.get(t, _SPARE_MARKERS[i % len(_SPARE_MARKERS)]) for i, t in enumerate(ntypes)}
    size = max(8.0, min(40.0, 2400.0 / len(coords)))

    figure = Figure(figsize=tuple(figsize), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    pad = 0.05 * np.ptp(coords, axis=0) + 1e-6  # (2,)
    low, high = coords.min(axis=0) - pad, coords.max(axis=0) + pad  # (2,) each
    stage_arr, ntype_arr = np.asarray(point_stage), np.asarray(point_ntype)
    annotated = np.unique(np.linspace(0, num_classes - 1, min(_NUM_ANNOTATED, num_classes)).round().astype(int))

    for ax, (stage, present) in zip(axes, panels):
        for ntype in present:
            mask = (stage_arr == stage) & (ntype_arr == ntype)  # (N,)
            ax.scatter(
                coords[mask, 0], coords[mask, 1], c=palette[colour_of[mask]], marker=markers[ntype],
                s=size, alpha=0.85, linewidths=0,
            )
        if not with_legend or groups is not None:
            anchor = (stage_arr == stage) & (ntype_arr == present[0])  # one point per class to label
            middle = (low[0] + high[0]) / 2
            for c in annotated:
                x, y = coords[anchor & (point_class == c)][0]
                # labels point inwards so that they stay inside their panel
                left = x > middle
                ax.annotate(
                    classnames[c], (x, y), xytext=(-3 if left else 3, 3), textcoords="offset points",
                    ha="right" if left else "left", fontsize=7,
                )
        label = _STAGE_TITLES.get(stage, stage)
        ax.set_title(label if present == ntypes else f"{label} ({', '.join(present)})", fontsize=10)
        ax.set_xlim(low[0], high[0])
        ax.set_ylim(low[1], high[1])
        ax.set_xticks([])
        ax.set_yticks([])

    handles = []
    if with_legend:
        names = classnames if groups is None else [f"family {g}" for g in range(num_colours)]
        handles += [Line2D([], [], linestyle="", marker="o", color=palette[i], label=names[i]) for i in range(num_colours)]
    if len(ntypes) > 1:
        handles += [Line2D([], [], linestyle="", marker=markers[t], color="0.4", label=t) for t in ntypes]
    if handles:
        figure.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=11, wrap=True)
    return figure


def _palette(num_colours: int) -> np.ndarray:
    """(num_colours, 4) RGBA: tab10 when a legend can name every colour, else a cyclic map."""
    from matplotlib import colormaps

    if num_colours <= _MAX_LEGEND_GROUPS:
        return colormaps["tab10"](np.arange(num_colours))
    # hsv wraps around, so the first and last colours are as close as any neighbours.
    return colormaps["hsv"](np.arange(num_colours) / num_colours)


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` on a temp file beside ``path``, then rename it into place.

    Kept here rather than imported from ``hgadapter._io``, which imports torch: plotting a saved
    run should not need it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
