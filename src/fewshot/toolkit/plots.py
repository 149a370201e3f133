"""PNG plot of accuracy vs k: one panel per task, one line per (method, calibration, selection,
model), the 95% intervals as error bars. Colour: method; hollow markers and solid lines:
random examples; filled markers and dashed lines: similar examples."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt  # noqa: E402

_COLORS = {"generate": "C0", "rank": "C2", "rank + calibration": "C1", "classifier": "C3"}
_MARKERS = {"generate": "o", "rank": "s", "rank + calibration": "D", "classifier": "^"}
_LINES = {"random": "-", "similar": "--"}


def _label(method: str, select: str, model: str, one_model: bool) -> str:
    who = "embedding classifier" if method == "classifier" else method
    if not one_model and method != "classifier":
        who += f" ({model})"
    return f"{who}, {select}"


def plot_accuracy(
    results: Sequence[dict[str, Any]],
    path: str | Path,
    title: str = "Few-shot accuracy vs k (95% intervals)",
) -> Path:
    """Write the plot to `path` and return it. The x axis is categorical (k values in order)."""
    path = Path(path)
    tasks = sorted({r["task"] for r in results})
    ks = sorted({r["k"] for r in results})
    cols = min(3, max(1, len(tasks)))
    rows = math.ceil(len(tasks) / cols) if tasks else 1
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.9 * rows), squeeze=False)
    xpos = {k: i for i, k in enumerate(ks)}
    one_model = len({r["model"] for r in results if r["method"] != "classifier"}) <= 1
    n_lines = max(1, len({(r["method"], r["calibrated"], r["select"]) for r in results}))
    for ax, task in zip(axes.flat, tasks, strict=False):
        lines: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in results:
            if r["task"] == task:
                method = r["method"] + (" + calibration" if r["calibrated"] else "")
                lines[(method, r["select"], r["model"])].append(r)
        for n, ((method, select, model), pts) in enumerate(sorted(lines.items())):
            pts.sort(key=lambda r: r["k"])
            shift = (n - (n_lines - 1) / 2) * 0.3 / n_lines  # keep overlapping error bars apart
            ax.errorbar(
                [xpos[p["k"]] + shift for p in pts],
                [p["accuracy"] for p in pts],
                yerr=[
                    [max(0.0, p["accuracy"] - p["ci_low"]) for p in pts],
                    [max(0.0, p["ci_high"] - p["accuracy"]) for p in pts],
                ],
                fmt=_MARKERS.get(method, "o"),
                linestyle=_LINES.get(select, "-"),
                capsize=2.5,
                markersize=4.5,
                markerfacecolor="white" if select == "random" else None,
                color=_COLORS.get(method) if one_model else None,
                label=_label(method, select, model, one_model),
            )
        n_max = max(p["n"] for ps in lines.values() for p in ps)
        ax.set_title(f"{task} (n = {n_max})")
        ax.set_xticks(list(xpos.values()), [str(k) for k in xpos])
        ax.set_xlim(-0.5, len(xpos) - 0.5)
        ax.set_xlabel("k (examples in the prompt)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
