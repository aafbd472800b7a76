"""Drawing a job's timeline with matplotlib (the optional extra `deploy[plot]`).

One PolyCollection per status (and one for retried bars, one scatter for lost workers),
never an artist per task: a 1,000,000-task job draws as fast as a 100-task one, because
`timeline.build` has already cut it to a few thousand bars.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..jobdir.status import CANCELED, COMPLETED, FAILED
from .timeline import COLORS, Timeline

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INSTALL_HINT = "drawing a timeline needs matplotlib: pip install deploy[plot]"
BAR_HEIGHT = 0.8


def _matplotlib() -> Any:
    """matplotlib, or an ImportError that says how to get it."""
    try:
        import matplotlib
        import matplotlib.figure           # the object API: no pyplot, no GUI backend
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return matplotlib


def _rects(lanes, starts, widths, y0=None, height=None):
    """Rectangle vertices (n, 4, 2) for bars on lanes; `y0` and `height` are fractions of
    the bar's height (an aggregated bin split by status)."""
    import numpy as np
    lanes = np.asarray(lanes, dtype=float)
    y0 = np.zeros(len(lanes)) if y0 is None else np.asarray(y0, dtype=float)
    height = np.ones(len(lanes)) if height is None else np.asarray(height, dtype=float)
    y0 = lanes - BAR_HEIGHT / 2 + y0 * BAR_HEIGHT
    x0 = np.asarray(starts, dtype=float)
    x1 = x0 + np.maximum(np.asarray(widths, dtype=float), 0.0)
    y1 = y0 + height * BAR_HEIGHT
    return np.stack([np.stack([x0, y0], 1), np.stack([x0, y1], 1),
                     np.stack([x1, y1], 1), np.stack([x1, y0], 1)], 1)


def draw(timeline: Timeline, title: str | None = None) -> "Figure":
    """A figure: the timeline (lanes x time, bars by status, retries hatched, lost workers
    marked) and a histogram of run times beside it."""
    _matplotlib()
    import numpy as np
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.lines import Line2D

    n_lanes = max(len(timeline.lanes), 1)
    fig = Figure(figsize=(12, min(3 + 0.3 * n_lanes, 16)), layout="constrained")
    grid = fig.add_gridspec(1, 2, width_ratios=(3.2, 1))
    ax, hist_ax = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    bars = timeline.bars
    lanes = np.asarray(bars["lane"], dtype=float)
    widths = np.asarray(bars["width"], dtype=float)
    # a bar narrower than a pixel still shows: at least 1/2000 of the span wide
    shown = np.maximum(widths, timeline.span / 2000 if timeline.span else 0.0)
    status = np.asarray(bars["status"], dtype=object)
    verts = (_rects(lanes, bars["start"], shown, bars.get("y0"), bars.get("height"))
             if len(lanes) else np.zeros((0, 4, 2)))
    handles = []
    for name in (COMPLETED, CANCELED, FAILED):
        mask = status == name
        tasks = timeline.counts.get(name, 0)
        if mask.any():
            ax.add_collection(PolyCollection(
                verts[mask], facecolors=COLORS[name], label=name, linewidths=0.4,
                edgecolors="none" if timeline.aggregated else "white"))
        if tasks:
            handles.append(Patch(color=COLORS[name], label=f"{name} ({tasks:,})"))
    again = np.asarray(bars["retried"]) > 0 if len(lanes) else np.zeros(0, bool)
    if again.any():
        # one task: its whole bar hatched; a bin: a hatched strip along the lane's bottom
        marks = verts[again] if not timeline.aggregated else _rects(
            lanes[again], np.asarray(bars["start"])[again], shown[again],
            np.full(again.sum(), 1.02), np.full(again.sum(), 0.14))      # in the gap below
        ax.add_collection(PolyCollection(marks, facecolors="none", edgecolors="black",
                                         hatch="////", linewidths=0.5))
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="////",
                             label=f"ran again ({timeline.retried:,} tasks)"))
    losses = [x for x in timeline.losses if x["time"] is not None]
    if losses:
        ax.scatter([x["time"] for x in losses], [x["lane"] for x in losses], marker="X", s=80,
                   color="black", zorder=5)
        handles.append(Line2D([], [], marker="X", color="black", linestyle="none",
                              label=f"worker lost ({len(timeline.losses)})"))
    ax.set_xlim(-timeline.span * 0.01, timeline.span * 1.02 if timeline.span else 1)
    ax.set_ylim(n_lanes - 0.35, -0.5)        # room for the retried strip under the last lane
    ax.set_yticks(range(len(timeline.lanes)), timeline.lanes, fontsize=8)
    ax.set_xlabel("seconds since the first task started")
    ax.grid(axis="x", alpha=0.3)
    waiting = {k: v for k, v in timeline.untimed.items() if v}
    note = ", ".join(f"{k} {v:,}" for k, v in waiting.items())
    if timeline.lost_tasks:
        note += f" (WorkerLost {timeline.lost_tasks:,})"
    if note:
        handles.append(Patch(color="white", label=f"not run: {note}"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5),
                   fontsize=8, frameon=False)
    head = title or "timeline"
    how = (f"{timeline.bar_count:,} bars for {timeline.task_count:,} tasks, "
           f"bins of {timeline.bin_seconds:.3g} s" if timeline.aggregated
           else f"{timeline.task_count:,} tasks")
    ax.set_title(f"{head}: {how}", fontsize=10)

    edges = np.asarray(timeline.histogram.get("edges") or [], dtype=float)
    counts = np.asarray(timeline.histogram.get("counts") or [], dtype=float)
    if len(counts) and counts.sum():
        hist_ax.stairs(counts, edges, fill=True, color=COLORS[COMPLETED], alpha=0.8)
        if timeline.histogram.get("log"):
            hist_ax.set_xscale("log")
        hist_ax.set_yscale("log" if counts.max() > 50 * max(np.median(counts[counts > 0]), 1)
                           else "linear")
    else:
        hist_ax.text(0.5, 0.5, "no task has run yet", ha="center", va="center",
                     transform=hist_ax.transAxes)
    hist_ax.set_xlabel("run time (s)")
    hist_ax.set_ylabel("tasks")
    hist_ax.set_title("run times", fontsize=10)
    return fig


def _show_inline() -> None:
    """In IPython, let a Figure made without pyplot display as a PNG (as pyplot's do)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    from matplotlib.figure import Figure
    shell.display_formatter.formatters["image/png"].for_type(Figure, png_bytes)


def save(fig: "Figure", path: str | os.PathLike, dpi: int = 110) -> str:
    """Write the figure (format from the file's extension: png, svg, pdf)."""
    fig.savefig(os.fspath(path), dpi=dpi)
    return os.fspath(path)


def png_bytes(fig: "Figure", dpi: int = 100) -> bytes:
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def plot_job(job: Any, path: str | os.PathLike | None = None, max_bars: int | None = None) -> Any:
    """`job.plot()`: save the timeline to `path` and return the path; without a path, the
    figure (shown inline in a notebook)."""
    _matplotlib()
    from .timeline import MAX_BARS, job_timeline
    fig = draw(job_timeline(job, max_bars=max_bars or MAX_BARS), title=f"job {job.name}")
    if path is not None:
        return save(fig, path)
    _show_inline()
    return fig

