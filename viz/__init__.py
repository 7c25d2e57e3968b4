"""Plotting for hgadapter runs: only reads arrays and files that runs saved, never trains.

- :func:`plot_node_tsne`: the paper's t-SNE of text nodes before and after adaptation, from a
  run directory (``python -m viz tsne RUN --out FIG.png``; see docs/viz.md).
- :func:`compute_tsne`: seeded, reproducible 2-D t-SNE of any (n, d) array.
- :func:`load_run_nodes`: a run's node features, class names and metrics.
"""

from viz.tsne import compute_tsne, load_run_nodes, plot_node_tsne

__all__ = ["compute_tsne", "load_run_nodes", "plot_node_tsne"]
