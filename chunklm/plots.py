"""Figures for PNG files, drawn with matplotlib's object API: no pyplot, so no global backend or figure registry
(safe in threads and in processes without a display), and nothing to close. `save` writes one to a local path or a
gs:// URL."""

from __future__ import annotations

import io
import os

from matplotlib.figure import Figure

from chunklm.storage.paths import location


def figure(*grid: int, figsize: tuple[float, float], squeeze: bool = True):
  """(figure, axes) as `pyplot.subplots(*grid, figsize=..., squeeze=...)` returns them; write them with `save`."""
  fig = Figure(figsize=figsize)
  return fig, fig.subplots(*grid, squeeze=squeeze) if grid else fig.subplots()


def save(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> None:
  """Writes `fig` as a PNG to `path` (local, or in object storage: one write of the whole file)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  location(path).write_bytes(buf.getvalue())
