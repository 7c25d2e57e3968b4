"""Plotting for hgadapter runs: only reads arrays and files that runs saved, never trains.

- :func:`plot_node_tsne`: the paper's Figure 3, t-SNE of the positive text nodes of 20 random
  classes before and after adaptation, from a run directory (``hgadapter tsne --run RUN`` or
  ``python -m viz tsne RUN``; see docs/viz.md).
- :func:`plot_accuracy_vs_shots`, :func:`plot_sensitivity`, :func:`plot_training_curves`: the
  paper's Figure 2, its Table 3 as curves, and per-epoch curves, from run records.
- :func:`plot_figures`: every figure a folder of runs supports (``hgadapter figures RUNS_DIR``).
- :func:`compute_tsne`: seeded, reproducible 2-D t-SNE of any (n, d) array.
- :func:`load_run_nodes`: a run's node features, class names and metrics.
- :mod:`viz.style`: palette, sizes and saving shared by every figure.

Nothing here imports torch; matplotlib and scikit-learn are imported when a figure is drawn.
"""

from viz.curves import plot_accuracy_vs_shots, plot_figures, plot_sensitivity, plot_training_curves
from viz.tsne import compute_tsne, load_run_nodes, plot_node_tsne, select_classes

__all__ = [
    "compute_tsne",
    "load_run_nodes",
    "plot_node_tsne",
    "select_classes",
    "plot_accuracy_vs_shots",
    "plot_sensitivity",
    "plot_training_curves",
    "plot_figures",
]
