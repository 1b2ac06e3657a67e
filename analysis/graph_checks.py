"""Is the CASA graph semantic or merely spatial? Neighbour statistics of S_sym against a pure-distance graph.

For every patch: its top-k neighbours in S_sym (self excluded), their mean grid distance, and (when a segmentation
is known) the share lying in the patch's own segment ("purity"). The pure-distance graph links each patch to its k
nearest patches on the grid; a semantic graph has neighbours farther away yet purer.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import pandas as pd

from locatedit.graph import symmetrize


def grid_coordinates(n: int) -> np.ndarray:
    side = int(round(np.sqrt(n)))
    if side * side != n:
        raise ValueError(f"{n} nodes do not form a square grid")
    return np.stack(np.divmod(np.arange(n), side), axis=1).astype(float)  # (row, col)


def top_neighbours(weights: np.ndarray, k: int) -> np.ndarray:
    """Indices (N, k) of the k largest off-diagonal entries of each row, strongest first."""
    w = np.array(weights, dtype=np.float64, copy=True)
    np.fill_diagonal(w, -np.inf)
    idx = np.argpartition(-w, k, axis=1)[:, :k]
    order = np.take_along_axis(-w, idx, axis=1).argsort(axis=1)
    return np.take_along_axis(idx, order, axis=1)


def distance_neighbours(n: int, k: int) -> np.ndarray:
    coords = grid_coordinates(n)
    d = np.sqrt(((coords[:, None] - coords[None]) ** 2).sum(-1))
    return top_neighbours(-d, k)


def patch_neighbours(S: np.ndarray, patch: int, k: int = 8) -> pd.DataFrame:
    """One patch's strongest neighbours: index, row, column, weight, grid distance (for drawing on the image)."""
    W = symmetrize(np.asarray(S, dtype=np.float64))
    coords = grid_coordinates(len(W))
    nbrs = _row_top(W[patch], patch, k)
    dist = np.sqrt(((coords[nbrs] - coords[patch]) ** 2).sum(-1))
    return pd.DataFrame({"patch": nbrs, "row": coords[nbrs, 0].astype(int), "col": coords[nbrs, 1].astype(int),
                         "weight": W[patch, nbrs], "distance": dist})


def _row_top(row: np.ndarray, self_index: int, k: int) -> np.ndarray:
    r = row.astype(np.float64).copy()
    r[self_index] = -np.inf
    idx = np.argpartition(-r, k)[:k]
    return idx[np.argsort(-r[idx])]


@dataclass
class GraphReport:
    per_patch: pd.DataFrame  # one row per patch
    summary: dict[str, float]


def semantic_vs_spatial(S: np.ndarray, segments: np.ndarray | None = None, k: int = 8) -> GraphReport:
    """Neighbour distance and purity per patch for S_sym and for the pure-distance graph.

    ``segments``: an integer label per patch (e.g. 1 = object, 0 = background), or None.
    Scores: ``distance_ratio`` = mean neighbour distance / pure-distance graph's (1 = purely local);
    ``purity`` vs ``spatial_purity``; ``semantic_gain`` = purity - spatial_purity (> 0: the graph follows segments
    better than proximity alone would).
    """
    W = symmetrize(np.asarray(S, dtype=np.float64))
    n = len(W)
    coords = grid_coordinates(n)
    nbrs, near = top_neighbours(W, k), distance_neighbours(n, k)
    dist = np.sqrt(((coords[nbrs] - coords[:, None]) ** 2).sum(-1)).mean(1)
    base = np.sqrt(((coords[near] - coords[:, None]) ** 2).sum(-1)).mean(1)
    table = pd.DataFrame({"patch": np.arange(n), "row": coords[:, 0].astype(int), "col": coords[:, 1].astype(int),
                          "neighbour_distance": dist, "spatial_distance": base, "distance_ratio": dist / base})
    summary = {"k": float(k), "mean_distance_ratio": float(table.distance_ratio.mean())}
    if segments is not None:
        seg = np.asarray(segments).ravel()
        if seg.size != n:
            raise ValueError(f"segments has {seg.size} labels for {n} patches")
        table["segment"] = seg
        table["purity"] = (seg[nbrs] == seg[:, None]).mean(1)
        table["spatial_purity"] = (seg[near] == seg[:, None]).mean(1)
        table["semantic_gain"] = table.purity - table.spatial_purity
        summary |= {"purity": float(table.purity.mean()), "spatial_purity": float(table.spatial_purity.mean())}
        for label in np.unique(seg):
            part = table[table.segment == label]
            summary[f"purity_segment_{label}"] = float(part.purity.mean())
            summary[f"spatial_purity_segment_{label}"] = float(part.spatial_purity.mean())
        # The boundary is where the question is decided: patches with a different-segment patch within distance 2.
        boundary = np.array([(seg[near[i]] != seg[i]).any() for i in range(n)])
        if boundary.any():
            summary["purity_boundary"] = float(table.purity[boundary].mean())
            summary["spatial_purity_boundary"] = float(table.spatial_purity[boundary].mean())
        summary["semantic_gain"] = summary["purity"] - summary["spatial_purity"]
    return GraphReport(table, summary)


def to_networkx(S: np.ndarray, k: int | None = 8) -> nx.Graph:
    """S_sym as an undirected weighted graph (top-k per node, or dense when k is None), node positions attached."""
    W = symmetrize(np.asarray(S, dtype=np.float64))
    coords = grid_coordinates(len(W))
    g = nx.Graph()
    for i, (r, c) in enumerate(coords):
        g.add_node(int(i), row=int(r), col=int(c))
    if k is None:
        rows, cols = np.triu_indices(len(W), 1)
    else:
        nbrs = top_neighbours(W, k)
        rows, cols = np.repeat(np.arange(len(W)), k), nbrs.ravel()
    for i, j in zip(rows, cols):
        g.add_edge(int(i), int(j), weight=float(W[i, j]))
    return g


def graphml_bytes(S: np.ndarray, k: int | None = 8) -> bytes:
    import io

    buffer = io.BytesIO()
    nx.write_graphml(to_networkx(S, k), buffer)
    return buffer.getvalue()
