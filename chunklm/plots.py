"""Figures for PNG files, drawn with matplotlib's object API: no pyplot, so no global backend or figure registry
(safe in threads and in processes without a display), and nothing to close."""

from __future__ import annotations

from matplotlib.figure import Figure


def figure(*grid: int, figsize: tuple[float, float], squeeze: bool = True):
  """(figure, axes) as `pyplot.subplots(*grid, figsize=..., squeeze=...)` returns them; save with fig.savefig."""
  fig = Figure(figsize=figsize)
  return fig, fig.subplots(*grid, squeeze=squeeze) if grid else fig.subplots()
