"""A network's units as points in 3-D, coloured by activity or importance, with their strongest
connections drawn as lines (see lifelab.learners.space for the layout and the wiring cost).

Takes plain arrays or tensors (no learner import: analysis stands on the platform only), so any
learner's positions and `nn.Linear` weights can be drawn:

    from lifelab.analysis.space_plot import plot_units_in_space
    from lifelab.learners.space import unit_importances
    weights = [m.weight for m in model if isinstance(m, torch.nn.Linear)]
    plot_units_in_space(positions, weights, unit_importances(weights), path="space.png")

Like lifelab.analysis.plots: an Agg-canvas Figure, pyplot never touched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lifelab.analysis.plots import figure

SIGN_COLORS = {1: "tab:red", -1: "tab:blue"}


def strongest_connections(weights, top_k: int) -> list[tuple[int, int, int, float]]:
    """The `top_k` largest-|w| connections of each layer, as (layer, out unit, in unit, w),
    strongest first within each layer; layer l joins positions[l] to positions[l + 1]."""
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (connections per layer), got {top_k!r}")
    out = []
    for layer, w in enumerate(weights):
        w = _array(w, f"weights[{layer}]", ndim=2)
        k = min(top_k, w.size)
        flat = np.abs(w).ravel()
        picked = np.argpartition(-flat, k - 1)[:k] if k else np.array([], int)
        picked = picked[np.argsort(-flat[picked], kind="stable")]
        rows, cols = np.unravel_index(picked, w.shape)
        out += [(layer, int(i), int(j), float(w[i, j])) for i, j in zip(rows, cols, strict=True)]
    return out


def plot_units_in_space(positions, weights, values=None, path: str | Path | None = None,
                        top_k: int = 100, title: str | None = None, label: str = "importance"):
    """Draw every unit at its position and each layer's `top_k` strongest connections (red
    positive, blue negative; opacity and width grow with |w|). `values` (one array per layer, e.g.
    `unit_importances(weights)` or mean activations) colours the units, scaled to [0, 1] within
    each layer since layers differ in scale; None draws them grey. Writes a PNG to `path` if given;
    returns the Figure."""
    pos = [_array(p, f"positions[{layer}]", ndim=2) for layer, p in enumerate(positions)]
    if any(p.shape[1] != 3 for p in pos):
        raise ValueError("positions must be (n, 3) coordinates per layer (use place_units)")
    if len(pos) != len(weights) + 1:
        raise ValueError(f"{len(weights)} weight matrices need {len(weights) + 1} position arrays "
                         f"(input layer included), got {len(pos)}")
    for layer, w in enumerate(weights):
        if tuple(np.shape(_array(w, f"weights[{layer}]", ndim=2))) != (len(pos[layer + 1]),
                                                                        len(pos[layer])):
            raise ValueError(f"weights[{layer}] must be (out, in) = ({len(pos[layer + 1])}, "
                             f"{len(pos[layer])}) to match the positions")
    if values is not None and (len(values) != len(pos) or any(
            len(_array(v, "values", ndim=1)) != len(p) for v, p in zip(values, pos, strict=False))):
        raise ValueError("values must hold one array per layer, one value per unit")

    from matplotlib import colormaps
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    fig = figure(7.5, 6.5)
    ax = fig.add_subplot(projection="3d")
    links = strongest_connections(weights, top_k)
    if links:
        strength = np.array([abs(w) for *_, w in links])
        strength = strength / (strength.max() or 1.0)
        segments = [(pos[layer + 1][i], pos[layer][j]) for layer, i, j, _ in links]
        colors = [(*_rgb(SIGN_COLORS[1 if w >= 0 else -1]), 0.15 + 0.75 * s)
                  for (*_, w), s in zip(links, strength, strict=True)]
        ax.add_collection3d(Line3DCollection(segments, colors=colors,
                                             linewidths=0.3 + 1.7 * strength))
    cmap = colormaps["viridis"]
    for layer, p in enumerate(pos):
        size = 4 if len(p) > 200 else 18
        if values is None:
            ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=size, color="0.45", depthshade=False)
            continue
        v = np.abs(_array(values[layer], "values", ndim=1))
        ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=size, c=v / (v.max() or 1.0), cmap=cmap,
                   vmin=0, vmax=1, depthshade=False)
    if values is not None:
        from matplotlib.cm import ScalarMappable
        fig.colorbar(ScalarMappable(cmap=cmap), ax=ax, shrink=0.6,
                     label=f"{label} (relative, within layer)")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("layer (z)")
    ax.set_zticks(range(len(pos)))
    ax.view_init(elev=18, azim=-60)
    ax.set_title(title or f"units in space: {top_k} strongest connections per layer", fontsize=10)
    if path is not None:
        fig.savefig(path, format="png")
    return fig


def _array(t, name: str, ndim: int) -> np.ndarray:
    if hasattr(t, "detach"):                       # a torch tensor, without importing torch
        t = t.detach().cpu()
    a = np.asarray(t, dtype=float)
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return a


def _rgb(name: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb
    return to_rgb(name)
