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
