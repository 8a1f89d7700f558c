"""Drawing a :class:`~flwr_tempered.topology.base.Topology` with matplotlib.

Uses :class:`matplotlib.figure.Figure` directly (never ``pyplot``), so it works headless
under the Agg backend and does not leak figures into a global state.
"""

from __future__ import annotations

from os import PathLike
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from flwr_tempered.topology.base import Topology

HONEST_COLOR = "tab:blue"
BYZANTINE_COLOR = "tab:red"


def plot_topology(
    topology: Topology,
    ax: Axes | None = None,
    path: str | PathLike[str] | None = None,
    *,
    seed: int = 0,
) -> Figure:
    """Draw ``topology``: honest nodes in blue, Byzantine nodes in red, edge width ~ weight.

    Draws on ``ax`` when given (and returns its figure), otherwise on a new figure. The
    spring layout is seeded so the same topology is always drawn the same way. Saves a PNG
    to ``path`` when given.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if ax is None:
        fig = Figure(figsize=(6.0, 6.0))
        ax = fig.add_subplot()
    else:
        parent: Any = ax.figure
        # A SubFigure's ``.figure`` is its root Figure, the one that can be saved.
        fig = parent if isinstance(parent, Figure) else parent.figure
    graph = topology.graph
    pos = nx.spring_layout(graph, seed=seed)
    W = topology.mixing
    edges = list(graph.edges())
    weights = np.array([max(W[i, j], W[j, i]) for i, j in edges], dtype=float)
    widths = 0.5 + 3.0 * weights / weights.max() if len(edges) and weights.max() > 0 else 1.0
    nx.draw_networkx_edges(graph, pos, edgelist=edges, ax=ax, width=widths, alpha=0.5)
    nx.draw_networkx_nodes(
        graph, pos, nodelist=topology.honest, node_color=HONEST_COLOR, node_size=180, ax=ax
    )
    nx.draw_networkx_nodes(
        graph,
        pos,
        nodelist=sorted(topology.byzantine),
        node_color=BYZANTINE_COLOR,
        node_shape="s",
        node_size=180,
        ax=ax,
    )
    if topology.n <= 40:
        nx.draw_networkx_labels(graph, pos, ax=ax, font_size=7, font_color="white")
    ax.legend(
        handles=[
            Line2D([], [], marker="o", ls="", color=HONEST_COLOR, label="honest"),
            Line2D([], [], marker="s", ls="", color=BYZANTINE_COLOR, label="Byzantine"),
        ],
        loc="best",
    )
    ax.set_title(
        f"{topology.name} (n={topology.n}, f={topology.f}, gap={topology.spectral_gap:.4f})"
    )
    ax.set_axis_off()
    if path is not None:
        fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
    return fig
