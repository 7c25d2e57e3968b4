"""t-SNE of heterograph node features before and after the adapter (the paper's Figure 3).

The paper (Sec. 4.3, "Visualization") shows that adaptation pulls each class's positive text node
away from its confusable neighbours: a 2-D t-SNE of the positive text nodes of 20 randomly chosen
classes of Food101, for the "Base" model (nodes from the frozen CLIP text encoder) beside the
same nodes after the heterogeneous graph adapter. :func:`plot_node_tsne` redraws that figure from
what ``hgadapter run`` saved in a run directory, without re-training:

- ``RUN/nodes.safetensors``: ``initial.{pos,neg,vis}`` (C, d), ``adapted.{ntype}`` (C, d) for the
  node types the variant adapts, optionally ``vis_bias`` (C, d);
- ``RUN/classes.json``: the C class names;
- ``RUN/metrics.json``: method, variant, shots, seed, accuracies and ``synthetic``.

A seeded random subset of the classes is drawn (:func:`select_classes`), every point labelled
with its class name. Both panels come from one t-SNE fitted on the stacked points of every panel
(of the chosen classes only), so they share coordinates and a point's move between the panels
is the adapter's doing, not t-SNE's.

:func:`add_tsne_arguments` and :func:`run_tsne_command` are the command line
(``hgadapter tsne --run DIR`` and ``python -m viz tsne DIR``).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from hgadapter._cli import output_path  # torch-free
from hgadapter.records import CLASSES_FILE, METRICS_FILE, NODES_FILE  # imports no torch
from viz import style

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "compute_tsne",
    "default_perplexity",
    "select_classes",
    "select_family_classes",
    "families_from_names",
    "nearest_class_cosine",
    "load_run_nodes",
    "plot_node_tsne",
    "add_tsne_arguments",
    "run_tsne_command",
    "NODES_FILE",
    "FIGURE_FORMATS",
    "DEFAULT_NUM_CLASSES",
]

FIGURE_FORMATS = tuple("." + f for f in style.FIGURE_FORMATS)
DEFAULT_NUM_CLASSES = 20  # the paper's Figure 3 draws 20 random classes
DEFAULT_FIGSIZE = (style.TEXT_WIDTH, 3.6)  # inches: two panels across the full text width

_NTYPE_NAMES = {"pos": "positive text", "neg": "negative text", "vis": "visual"}
_NTYPE_MARKERS = {"pos": "o", "neg": "X", "vis": "s"}
_MAX_LABELLED = 40  # up to this many classes every point gets its name; more get a few names
_NUM_ANNOTATED = 8  # names written when there are too many classes to name them all
_LABEL_CHARS = 16  # class names longer than this are shortened with an ellipsis
_LABEL_FONT_SIZE = 6.0  # points, as printed: the smallest text in any figure
_LABEL_GAP = 2.5  # points between a point and its label
_EDGE = "0.25"  # thin dark marker edges: keep the palette's yellow visible on white


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


def select_classes(total: int, num_classes: int | None = DEFAULT_NUM_CLASSES, *, class_seed: int = 0) -> np.ndarray:
    """A seeded random subset of ``num_classes`` class indices out of ``total``, in ascending order.

    Args:
        total: number of classes C in the run.
        num_classes: how many to draw; ``None``, or a number >= C, takes every class.
        class_seed: seed of the draw (numpy's ``default_rng``); the same seed always draws the
            same classes from the same C.

    Returns:
        (k,) int64 indices, k = min(num_classes, C).
    """
    if total < 1:
        raise ValueError(f"need at least one class to choose from, got {total}")
    if num_classes is None or num_classes >= total:
        return np.arange(total, dtype=np.int64)
    if isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"number of classes to draw must be >= 1 (or None for all), got {num_classes}")
    chosen = np.random.default_rng(class_seed).choice(total, size=num_classes, replace=False)  # (k,)
    return np.sort(chosen).astype(np.int64)


_FAMILY = re.compile(r"family[ _-]?(\d+)", re.I)


def families_from_names(classnames: Sequence[str]) -> np.ndarray | None:
    """(C,) family index per class when every class name names its family (the synthetic task's
    ``synthetic_family03_class2``); ``None`` otherwise."""
    found = [_FAMILY.search(name) for name in classnames]
    if not classnames or not all(found):
        return None
    return np.array([int(m.group(1)) for m in found], dtype=np.int64)  # (C,)


def select_family_classes(groups: np.ndarray, num_classes: int | None = DEFAULT_NUM_CLASSES, *, class_seed: int = 0) -> np.ndarray:
    """Whole families in a seeded random order until ``num_classes`` classes are drawn, ascending.

    Confusable classes are the members of one family, so the figure shows families whole (the
    synthetic task's 20 classes are 4 families of 5); a family larger than what is left is cut.
    """
    total = len(groups)
    if num_classes is None or num_classes >= total:
        return np.arange(total, dtype=np.int64)
    if isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"number of classes to draw must be >= 1 (or None for all), got {num_classes}")
    order = np.random.default_rng(class_seed).permutation(np.unique(groups))  # (F,)
    chosen: list[int] = []
    for family in order:
        members = np.flatnonzero(groups == family)
        chosen.extend(members[: num_classes - len(chosen)].tolist())
        if len(chosen) >= num_classes:
            break
    return np.sort(np.asarray(chosen, dtype=np.int64))


def nearest_class_cosine(features: np.ndarray) -> float:
    """Mean over classes of the cosine similarity to the nearest other class: (C, d) -> scalar.

    Computed on the original d-dimensional nodes, not on the t-SNE plane; lower means the
    classes lie further apart, which is what adaptation is meant to do to confusable classes.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need (C, d) features of at least 2 classes, got shape {x.shape}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # (C, d)
    sim = x @ x.T  # (C, C)
    np.fill_diagonal(sim, -np.inf)
    return float(sim.max(axis=1).mean())


def plot_node_tsne(
    run_dir: str | Path,
    out_path: str | Path,
    *,
    ntypes: Sequence[str] = ("pos",),
    stages: Sequence[str] = ("initial", "adapted"),
    num_classes: int | None = DEFAULT_NUM_CLASSES,
    class_seed: int = 0,
    seed: int = 0,
    families: Sequence[int] | None = None,
    perplexity: float | None = None,
    normalize: bool = True,
    dpi: int = style.DPI,
    figsize: tuple[float, float] = DEFAULT_FIGSIZE,
    formats: Sequence[str] | None = None,
) -> Path:
    """Draw one t-SNE panel per stage of a run's node features, side by side.

    ``num_classes`` classes are drawn at random (:func:`select_classes` with ``class_seed``); the
    points of those classes in every panel are stacked and embedded by one :func:`compute_tsne`
    call, so the panels share coordinates and axis limits. A class has the same colour (and,
    with one ntype, the same marker) in every panel, and each point is labelled with its class
    name; with ``families`` the colour shows the family instead. With several ntypes each ntype
    has its own marker.

    Besides the figure, ``<out stem>.tsne.json`` records the title, the settings, the chosen
    classes and every point's stage, ntype, class and coordinates, so the figure can be redrawn
    without t-SNE. Every file is written atomically (temp file, then ``os.replace``).

    Args:
        run_dir: a directory written by ``hgadapter run``.
        out_path: the figure; its suffix (.png, .pdf or .svg) picks the format.
        ntypes: node types to draw, e.g. ``("pos",)`` or ``("pos", "neg")``. A node type that a
            stage lacks (an ntype the variant does not adapt) is left out of that panel only.
        stages: one panel per stage, in order; a stage is a key prefix in ``nodes.safetensors``.
        num_classes: how many classes to draw (default 20, as in the paper); ``None`` for all.
        class_seed: seed of the class draw.
        seed: t-SNE seed (:func:`compute_tsne`).
        families: optional (C,) group index per class of the run; ``None`` reads them from the
            class names when every name has one (``family03``: the synthetic task), ``()``
            ignores them. With families, whole families are drawn (:func:`select_family_classes`),
            the colour shows the family and the marker the class within it.
        perplexity: t-SNE perplexity; ``None`` for :func:`compute_tsne`'s default.
        normalize: L2-normalise every node before t-SNE. The classifier compares nodes by cosine
            similarity, so direction is what adaptation changes; leaving norms in would let a
            stage's overall scale push the two panels' points apart.
        dpi: dots per inch; a PNG is ``figsize * dpi`` pixels.
        figsize: (width, height) in inches; the default fills the text width of a paper.
        formats: further formats to write beside ``out_path`` (``("png", "pdf")``); ``None``
            writes ``out_path`` alone.

    Returns:
        ``out_path`` as a Path (the siblings are ``out_path`` with the other suffixes).

    Raises:
        FileNotFoundError: the run directory or its node features are missing.
        ValueError: an unknown ntype or stage (the message lists the available ones), bad
            ``families``, an unsupported suffix or a bad size.
    """
    out = Path(out_path)
    style.output_paths(out, formats)  # checks suffix and formats before any work
    if not out.suffix:
        raise ValueError(f"figure path {out} needs a suffix, one of {list(FIGURE_FORMATS)}")
    if dpi <= 0 or len(figsize) != 2 or min(figsize) <= 0:
        raise ValueError(f"dpi and figsize must be positive, got dpi={dpi} figsize={tuple(figsize)}")
    ntypes, stages = list(ntypes), list(stages)
    if not ntypes or not stages:
        raise ValueError("plot_node_tsne needs at least one ntype and one stage")
    for name, values in (("ntypes", ntypes), ("stages", stages)):
        if len(set(values)) != len(values):
            raise ValueError(f"{name} must not repeat a name, got {values}")

    node_dict, classnames, metrics = load_run_nodes(run_dir)
    total = len(classnames)
    panels = _select_panels(node_dict, ntypes, stages, run_dir)
    groups = families_from_names(classnames) if families is None else _check_families(families, total) if len(families) else None
    if groups is None:
        chosen = select_classes(total, num_classes, class_seed=class_seed)  # (k,)
    else:
        chosen = select_family_classes(groups, num_classes, class_seed=class_seed)  # (k,)
    # how far apart the classes are, per panel, on every class of the run in the original space
    separation = {stage: nearest_class_cosine(node_dict[f"{stage}.{present[0]}"]) for stage, present in panels}

    blocks = [node_dict[f"{stage}.{ntype}"][chosen].astype(np.float64) for stage, present in panels for ntype in present]
    points = np.concatenate(blocks)  # (S * T * k, d), S stages, T ntypes (fewer where a stage lacks one)
    if normalize:
        norms = np.linalg.norm(points, axis=1, keepdims=True)  # (N, 1)
        points = points / np.where(norms > 0, norms, 1.0)
    coords = compute_tsne(points, seed=seed, perplexity=perplexity)  # (N, 2)

    point_stage = [stage for stage, present in panels for _ in present for _ in chosen]
    point_ntype = [ntype for _, present in panels for ntype in present for _ in chosen]
    point_class = np.tile(chosen, len(blocks))  # (N,) class index in the run
    title = _title(metrics, ntypes, Path(run_dir), len(chosen), total)

    with style.style_context():
        figure = _draw(
            coords, point_stage, point_ntype, point_class,
            panels=panels, ntypes=ntypes, chosen=chosen, classnames=classnames, groups=groups,
            metrics=metrics, title=title, dpi=dpi, figsize=figsize, separation=separation,
            dim=int(node_dict[f"{panels[0][0]}.{panels[0][1][0]}"].shape[1]),
        )
        style.save_figure(figure, out, formats=formats)

    record = {
        "title": title,
        "run_dir": str(run_dir),
        "figure": out.name,
        "seed": seed,
        "perplexity": perplexity if perplexity is not None else default_perplexity(len(coords)),
        "normalize": normalize,
        "ntypes": ntypes,
        "stages": stages,
        "num_classes": len(chosen),
        "class_seed": class_seed,
        "class_subset": chosen.tolist(),
        "classes": classnames,
        "families": None if groups is None else groups.tolist(),
        "nearest_class_cosine": separation,
        "points": {
            "stage": point_stage,
            "ntype": point_ntype,
            "class_index": point_class.tolist(),
            "x": coords[:, 0].tolist(),
            "y": coords[:, 1].tolist(),
        },
    }
    text = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
    style.atomic_write(_coordinates_path(out), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return out


def _coordinates_path(out: Path) -> Path:
    return out.with_name(out.stem + ".tsne.json")


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


def _title(metrics: dict[str, Any], ntypes: list[str], run: Path, shown: int, total: int) -> str:
    what = _NTYPE_NAMES.get(ntypes[0], ntypes[0]) if len(ntypes) == 1 else ", ".join(ntypes)
    parts = [f"t-SNE of {what} nodes"]
    if "variant" in metrics:
        parts.append(f"variant {metrics['variant']}")
    elif "method" not in metrics:
        parts.append(run.name)
    synthetic = bool(metrics.get("synthetic")) or metrics.get("dataset") == "synthetic"
    if metrics.get("dataset") and metrics["dataset"] != "synthetic":
        parts.append(str(metrics["dataset"]))
    if "shots" in metrics:
        parts.append(f"{metrics['shots']}-shot")
    if "seed" in metrics:
        parts.append(f"seed {metrics['seed']}")
    if isinstance(metrics.get("test_acc"), (int, float)):
        parts.append(f"test {metrics['test_acc']:.2f}%")
    head = parts.pop(0) + (f", {shown} of {total} classes" if shown < total else "")
    if synthetic:
        parts.append("synthetic task")  # once, whether the flag or the dataset's name says it
    return head + ("\n" + " · ".join(parts) if parts else "")  # two short lines fit a text-width figure


def _stage_title(stage: str, metrics: dict[str, Any]) -> str:
    """The paper's panel names: 'Base' before adaptation, the method's name after it."""
    if stage == "initial":
        return "Base (frozen CLIP)"
    if stage == "adapted":
        method = metrics.get("method")
        return f"{style.method_label(method)} (adapted)" if isinstance(method, str) else "after adaptation"
    return stage


def _drop_shared_words(names: list[str]) -> list[str]:
    """Names without the leading words all of them share ("synthetic family3 class4" -> "family3 class4").

    The shortened label must keep the part that tells classes apart; a prefix every name has
    tells nothing.
    """
    words = [" ".join(n.replace("_", " ").split()).split(" ") for n in names]
    if len(words) < 2:
        return names
    shared = 0
    while all(len(w) > shared + 1 for w in words) and len({w[shared] for w in words}) == 1:
        shared += 1
    return [" ".join(w[shared:]) for w in words] if shared else names


def short_label(name: str, max_chars: int = _LABEL_CHARS) -> str:
    """A class name fit for a point label: underscores as spaces, cut to ``max_chars`` with '…'."""
    text = " ".join(name.replace("_", " ").split())
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"


def _draw(
    coords: np.ndarray,
    point_stage: list[str],
    point_ntype: list[str],
    point_class: np.ndarray,
    *,
    panels: list[tuple[str, list[str]]],
    ntypes: list[str],
    chosen: np.ndarray,
    classnames: list[str],
    groups: np.ndarray | None,
    metrics: dict[str, Any],
    title: str,
    dpi: int,
    figsize: tuple[float, float],
    separation: dict[str, float],
    dim: int,
) -> Figure:
    from matplotlib.lines import Line2D

    looks = class_looks(chosen, groups)  # class -> {color, marker}: no two classes look alike
    ntype_markers = {t: _NTYPE_MARKERS.get(t, style.MARKERS[i % len(style.MARKERS)]) for i, t in enumerate(ntypes)}
    size = max(8.0, min(24.0, 1200.0 / len(coords)))  # points^2: smaller markers when crowded

    figure = style.new_figure(*figsize, dpi=dpi)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    pad = 0.08 * np.ptp(coords, axis=0) + 1e-6  # (2,)
    low, high = coords.min(axis=0) - pad, coords.max(axis=0) + pad  # (2,) each
    stage_arr, ntype_arr = np.asarray(point_stage), np.asarray(point_ntype)
    if len(chosen) <= _MAX_LABELLED:
        labelled = set(chosen.tolist())
    else:
        labelled = set(chosen[np.linspace(0, len(chosen) - 1, _NUM_ANNOTATED).round().astype(int)].tolist())

    for ax, (stage, present) in zip(axes, panels):
        for ntype in present:
            mask = (stage_arr == stage) & (ntype_arr == ntype)  # (N,)
            # one scatter per class, so that each class keeps its own colour and marker
            for c in point_class[mask]:
                one = mask & (point_class == c)
                marker = looks[int(c)]["marker"] if len(ntypes) == 1 else ntype_markers[ntype]
                ax.scatter(coords[one, 0], coords[one, 1], color=looks[int(c)]["color"], marker=marker,
                           s=size, alpha=0.9, edgecolors=_EDGE, linewidths=0.3, gid=f"{stage}|{ntype}|{int(c)}")
        label = _stage_title(stage, metrics)
        label = label if present == ntypes else f"{label} ({', '.join(present)})"
        ax.set_title(f"{label}\nnearest-class cosine {separation[stage]:.3f}")
        ax.set_xlim(low[0], high[0])
        ax.set_ylim(low[1], high[1])
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(True)

    handles = []
    if groups is not None:
        for family in dict.fromkeys(int(groups[c]) for c in chosen):
            colour = looks[int(next(c for c in chosen if int(groups[c]) == family))]["color"]
            handles.append(Line2D([], [], linestyle="", marker="s", color=colour, label=f"family {family}"))
    if len(ntypes) > 1:
        handles += [Line2D([], [], linestyle="", marker=ntype_markers[t], color="0.4", label=t) for t in ntypes]
    if handles:
        figure.legend(handles=handles, loc="outside right center")
    figure.suptitle(title)
    note = figure.supxlabel(
        f"nearest-class cosine: each class's cosine similarity to its nearest other class, averaged over all "
        f"{len(classnames)} classes, on the {dim}-d {_NTYPE_NAMES.get(panels[0][1][0], panels[0][1][0])} nodes "
        "(not the 2-D plane); lower = classes further apart",
        fontsize=_LABEL_FONT_SIZE, color="0.3",
    )
    note.set_wrap(True)

    # Label placement needs the final axes positions, which constrained layout fixes on a draw.
    figure.canvas.draw()
    for ax, (stage, present) in zip(axes, panels):
        anchor = (stage_arr == stage) & (ntype_arr == present[0])  # one point per class to label
        pts = coords[anchor]  # (k, 2)
        names = [short_label(n) for n in _drop_shared_words([classnames[c] for c in point_class[anchor]])]
        keep = [i for i, c in enumerate(point_class[anchor]) if int(c) in labelled]
        _place_labels(ax, pts, names, keep, dpi=dpi, others=coords[stage_arr == stage])
    return figure


def class_looks(chosen: np.ndarray, groups: np.ndarray | None = None) -> dict[int, dict[str, str]]:
    """Colour and marker of each chosen class; no two classes share both.

    Without families the j-th class takes :func:`viz.style.class_style` ``(j)``: 20 different
    colours, and markers that cycle with another period, so the pair is unique for 60 classes.
    With families, the colour is the family's (the i-th family shown takes the i-th colour) and
    the marker tells the classes of a family apart.
    """
    if groups is None:
        return {int(c): style.class_style(j) for j, c in enumerate(chosen)}
    families = list(dict.fromkeys(int(groups[c]) for c in chosen))
    looks, seen = {}, {f: 0 for f in families}
    for c in chosen:
        f = int(groups[c])
        colour = style.class_style(families.index(f))["color"]
        looks[int(c)] = {"color": colour, "marker": style.CLASS_MARKERS[seen[f] % len(style.CLASS_MARKERS)]}
        seen[f] += 1
    return looks


def _marker_only(look: dict[str, str]) -> dict[str, str]:
    return {"marker": look["marker"], "color": look["color"]}


# Candidate label positions around a point: (dx, dy) in units of the gap, and the alignment that
# keeps the text on that side. Tried in this order; the first one with the least overlap wins.
_CANDIDATES = (
    (1, 1, "left", "bottom"),
    (-1, 1, "right", "bottom"),
    (1, -1, "left", "top"),
    (-1, -1, "right", "top"),
    (0, 1.6, "center", "bottom"),
    (0, -1.6, "center", "top"),
    (1.6, 0, "left", "center"),
    (-1.6, 0, "right", "center"),
)


def _place_labels(ax: Axes, pts: np.ndarray, names: list[str], keep: list[int], *, dpi: int, others: np.ndarray | None = None) -> None:
    """Write ``names[i]`` beside ``pts[i]`` for ``i`` in ``keep``, avoiding earlier labels greedily.

    Each label tries the positions in ``_CANDIDATES`` at two distances and takes the one whose
    estimated text box overlaps least with the labels placed so far, every point of the panel
    (``others``, default ``pts``) and the outside of the axes; a label set off from its point
    gets a thin leader line to it, so it cannot be read as another point's.
    Text boxes are estimated from the character count (0.6 em per character), which is close
    enough for the short names used here and needs no renderer.
    """
    px_per_pt = dpi / 72.0
    display = ax.transData.transform(pts)  # (k, 2) pixels
    every = ax.transData.transform(others) if others is not None else display  # (n, 2) pixels
    frame = ax.get_window_extent()
    em = _LABEL_FONT_SIZE * px_per_pt
    dot = 0.6 * em  # half-width of the box a point occupies
    obstacles = [(x - dot, y - dot, x + dot, y + dot) for x, y in every]
    placed: list[tuple[float, float, float, float]] = []
    # Place the labels of crowded points first: they have the fewest good positions.
    crowd = [-sum(np.hypot(*(display[j] - display[i])) < 4 * em for j in range(len(display))) for i in keep]
    for _, i in sorted(zip(crowd, keep)):
        x, y = display[i]
        width, height = 0.6 * em * len(names[i]), 1.2 * em
        best, best_cost = None, np.inf
        for (dx, dy, ha, va), reach in ((c, r) for r in (_LABEL_GAP, 3 * _LABEL_GAP) for c in _CANDIDATES):
            gap = reach * px_per_pt
            ox, oy = x + dx * gap, y + dy * gap
            x0 = ox if ha == "left" else ox - width if ha == "right" else ox - width / 2
            y0 = oy if va == "bottom" else oy - height if va == "top" else oy - height / 2
            box = (x0, y0, x0 + width, y0 + height)
            cost = sum(_overlap(box, other) for other in placed)
            cost += 2.0 * sum(_overlap(box, other) for other in obstacles)  # text over a point hides it
            inside = _overlap(box, (frame.x0, frame.y0, frame.x1, frame.y1))
            cost += 4.0 * (width * height - inside)  # text leaving the panel is worst
            cost += 0.02 * width * height * (reach > _LABEL_GAP)  # near its point when that costs nothing
            if cost < best_cost - 1e-9:
                best, best_cost = (dx * reach, dy * reach, ha, va, box), cost
        if best is None:  # _CANDIDATES is not empty
            continue
        dx, dy, ha, va, box = best
        placed.append(box)
        leader = {"arrowstyle": "-", "color": "0.55", "linewidth": 0.4, "shrinkA": 0, "shrinkB": 2} if abs(dx) + abs(dy) > 2 * _LABEL_GAP else None
        text = ax.annotate(
            names[i], tuple(pts[i]), xytext=(dx, dy), textcoords="offset points",
            ha=ha, va=va, fontsize=_LABEL_FONT_SIZE, color="0.15", arrowprops=leader,
        )
        text.set_in_layout(False)  # labels must not move the panels that their positions rely on


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Area shared by two (x0, y0, x1, y1) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


# --- command line ---------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_tsne_arguments(parser: argparse.ArgumentParser, *, positional_run: bool = False) -> None:
    """Options of the t-SNE figure command (``hgadapter tsne`` and ``python -m viz tsne``).

    Args:
        parser: the (sub)parser to fill.
        positional_run: take the run directory as a positional ``RUN`` instead of ``--run DIR``
            (``python -m viz tsne RUN`` keeps its original form).
    """
    help_run = "run directory written by `hgadapter run` (holds nodes.safetensors)"
    if positional_run:
        parser.add_argument("run", metavar="RUN", help=help_run)
    else:  # `hgadapter tsne RUN` or `hgadapter tsne --run RUN`
        from hgadapter._cli import add_positional_or_option  # argparse only, no torch

        add_positional_or_option(parser, "run", "--run", metavar="RUN", help=help_run)
    parser.add_argument("--out", type=output_path, default=None, metavar="FIG",
                        help="figure path, .png/.pdf/.svg (default: DIR/tsne_<ntypes>.png); coordinates go to <stem>.tsne.json")
    parser.add_argument("--formats", nargs="+", default=list(style.DEFAULT_FORMATS), choices=style.FIGURE_FORMATS,
                        metavar="FMT", help="also write these formats beside --out (default: png pdf)")
    parser.add_argument("--classes", type=_positive_int, default=DEFAULT_NUM_CLASSES, metavar="N",
                        help=f"draw N random classes (default: {DEFAULT_NUM_CLASSES}, as in the paper; all if the run has fewer)")
    parser.add_argument("--all-classes", action="store_true", help="draw every class instead of --classes N")
    parser.add_argument("--class-seed", type=int, default=0, help="seed of the class draw (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="t-SNE seed (default: 0)")
    parser.add_argument("--ntypes", nargs="+", default=["pos"], metavar="NTYPE", help="node types to draw (default: pos)")
    parser.add_argument("--stages", nargs="+", default=["initial", "adapted"], metavar="STAGE",
                        help="one panel per stage (default: initial adapted)")
    parser.add_argument("--perplexity", type=float, default=None, help="t-SNE perplexity (default: min(30, (n - 1) / 3))")
    parser.add_argument("--families", default=None, metavar="JSON",
                        help="JSON file with one group index per class of the run; colours show groups")
    parser.add_argument("--no-normalize", dest="normalize", action="store_false", help="skip L2-normalising nodes before t-SNE")
    parser.add_argument("--dpi", type=int, default=style.DPI, help=f"dots per inch (default: {style.DPI})")
    parser.add_argument("--figsize", nargs=2, type=float, default=list(DEFAULT_FIGSIZE), metavar=("W", "H"),
                        help=f"inches (default: {DEFAULT_FIGSIZE[0]:g} {DEFAULT_FIGSIZE[1]:g}, the text width of a paper)")


def run_tsne_command(args: argparse.Namespace) -> int:
    """Draw the figure that :func:`add_tsne_arguments`' options describe; print what was written.

    Returns 0. Bad input raises ``ValueError`` or ``FileNotFoundError`` with a one-line message,
    for the caller to print.
    """
    from hgadapter._io import check_output_file  # torch-free

    run = Path(args.run)
    out = check_output_file(args.out if args.out else run / f"tsne_{'_'.join(args.ntypes)}.png", parents=True)
    families = None
    if args.families is not None:
        path = Path(args.families)
        try:
            families = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON ({exc})") from None
        if not isinstance(families, list):
            raise ValueError(f"{path}: should be a JSON list with one group index per class")
    out = plot_node_tsne(
        run, out, ntypes=args.ntypes, stages=args.stages, num_classes=None if args.all_classes else args.classes,
        class_seed=args.class_seed, seed=args.seed, families=families, perplexity=args.perplexity,
        normalize=args.normalize, dpi=args.dpi, figsize=tuple(args.figsize), formats=args.formats,
    )
    record = json.loads(_coordinates_path(out).read_text(encoding="utf-8"))
    written = ", ".join(str(p) for p in style.output_paths(out, args.formats))
    print(
        f"t-SNE of {', '.join(args.ntypes)} nodes ({' vs '.join(args.stages)}), {record['num_classes']} of "
        f"{len(record['classes'])} classes -> {written} (coordinates: {_coordinates_path(out).name})"
    )
    return 0
