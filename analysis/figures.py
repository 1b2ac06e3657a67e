"""Plotly figure builders shared by the dashboard pages (pure functions: arrays in, figures out)."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go


def image_figure(image: np.ndarray, title: str = "", height: int = 300) -> go.Figure:
    fig = go.Figure(go.Image(z=image))
    return _square(fig, title, height)


def heatmap_figure(values: np.ndarray, title: str = "", height: int = 300, zmin=None, zmax=None,
                   colorscale: str = "Viridis") -> go.Figure:
    """A map over the patch grid; row 0 at the top, like the image."""
    fig = go.Figure(go.Heatmap(z=values, zmin=zmin, zmax=zmax, colorscale=colorscale,
                               hovertemplate="row %{y}, col %{x}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _square(fig, title, height)


def _square(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10))
    fig.update_xaxes(showticklabels=False, scaleanchor="y", constrain="domain")
    fig.update_yaxes(showticklabels=False, constrain="domain")
    return fig


def overlay(image: np.ndarray, values: np.ndarray, colour=(255, 40, 40), alpha: float = 0.55) -> np.ndarray:
    """Blend a [0, 1] map (any square size, nearest-upsampled) over an RGB image: where the map is 1, the colour."""
    size = image.shape[0]
    v = np.asarray(values, dtype=np.float64)
    idx = (np.arange(size) * v.shape[0] / size).astype(int)
    v = v[np.ix_(idx, idx)]
    span = v.max() - v.min()
    v = (v - v.min()) / span if span > 0 else np.zeros_like(v)
    out = image.astype(np.float64) * (1 - alpha * v[..., None]) + np.array(colour) * alpha * v[..., None]
    return out.clip(0, 255).astype(np.uint8)


def upscale(image: np.ndarray, size: int = 256) -> np.ndarray:
    """Nearest-neighbour enlargement so small ShapeWorld images show at a readable size without blur."""
    f = max(1, size // image.shape[0])
    return np.kron(image, np.ones((f, f, 1), dtype=image.dtype)) if image.ndim == 3 else np.kron(image, np.ones((f, f)))


def patch_picker_figure(image: np.ndarray, grid: int, selected: int | None = None, neighbours=None,
                        height: int = 460) -> go.Figure:
    """The image with one near-transparent square marker per patch, so a click selects a patch (plotly returns no
    selection for heatmap or image clicks); the selected patch and its neighbours are drawn on top."""
    size = image.shape[0]
    cell = size / grid
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    fig = go.Figure(go.Image(z=image, hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=(cols + 0.5) * cell, y=(rows + 0.5) * cell, mode="markers", name="patches",
        marker=dict(symbol="square", size=max(4, height / grid * 0.8), opacity=0.02, color="white"),
        customdata=np.stack([rows, cols], 1), hovertemplate="patch %{pointNumber} (row %{customdata[0]}, "
                                                            "col %{customdata[1]})<extra></extra>"))
    if neighbours is not None and selected is not None and len(neighbours):
        sr, sc = divmod(selected, grid)
        w = neighbours["weight"].to_numpy()
        scale = 8 + 22 * (w - w.min()) / (np.ptp(w) + 1e-12)
        for (_, n), s in zip(neighbours.iterrows(), scale):
            fig.add_trace(go.Scatter(x=[(sc + 0.5) * cell, (n.col + 0.5) * cell], y=[(sr + 0.5) * cell, (n.row + 0.5) * cell],
                                     mode="lines", line=dict(color="rgba(255,230,0,0.7)", width=1 + s / 10),
                                     hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(
            x=(neighbours["col"] + 0.5) * cell, y=(neighbours["row"] + 0.5) * cell, mode="markers", name="neighbours",
            marker=dict(size=scale, color="rgba(255,230,0,0.9)", line=dict(color="black", width=1)),
            customdata=np.stack([neighbours["patch"], w, neighbours["distance"]], 1),
            hovertemplate="patch %{customdata[0]:.0f}: weight %{customdata[1]:.4f}, distance %{customdata[2]:.1f}"
                          "<extra></extra>"))
        fig.add_trace(go.Scatter(x=[(sc + 0.5) * cell], y=[(sr + 0.5) * cell], mode="markers", name="selected",
                                 marker=dict(symbol="square-open", size=max(10, height / grid), color="red",
                                             line=dict(width=3)), hoverinfo="skip"))
    fig.update_layout(clickmode="event+select", height=height, margin=dict(l=0, r=0, t=10, b=0), showlegend=False,
                      dragmode=False)
    fig.update_xaxes(showticklabels=False, range=[0, size], constrain="domain")
    fig.update_yaxes(showticklabels=False, range=[size, 0], scaleanchor="x", constrain="domain")
    return fig


def lines_figure(frame, x: str, y: str, colour: str | None = None, title: str = "", log_y: bool = False,
                 height: int = 320) -> go.Figure:
    fig = go.Figure()
    groups = frame.groupby(colour, sort=False) if colour else [(y, frame)]
    for name, part in groups:
        fig.add_trace(go.Scatter(x=part[x], y=part[y], mode="lines+markers", name=str(name)))
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10), xaxis_title=x, yaxis_title=y)
    if log_y:
        fig.update_yaxes(type="log")
    return fig
