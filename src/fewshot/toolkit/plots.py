"""PNG plot of accuracy vs k: one panel per task, one line per (model, method), seed std as bars."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt  # noqa: E402

_STYLES = {"generate": "o-", "rank": "s--", "classifier": "^:"}
_COLORS = {"generate": "C0", "rank": "C2", "classifier": "C3"}


def plot_accuracy(
    summary: Sequence[dict[str, Any]],
    ks: Sequence[int],
    path: str | Path,
    title: str = "Few-shot accuracy vs k",
) -> Path:
    """Write the plot to `path` and return it. The x axis is categorical (k values in order)."""
    path = Path(path)
    tasks = sorted({r["task"] for r in summary})
    cols = min(3, max(1, len(tasks)))
    rows = math.ceil(len(tasks) / cols) if tasks else 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    xpos = {k: i for i, k in enumerate(sorted(ks))}
    one_model = len({r["model"] for r in summary if r["method"] != "classifier"}) <= 1
    for ax, task in zip(axes.flat, tasks, strict=False):
        lines: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in summary:
            if r["task"] == task and r["k"] in xpos:
                lines[(r["model"], r["method"])].append(r)
        for (model, method), pts in sorted(lines.items()):
            pts.sort(key=lambda r: r["k"])
            ax.errorbar(
                [xpos[p["k"]] for p in pts],
                [p["accuracy"] for p in pts],
                yerr=[p["std"] for p in pts],
                fmt=_STYLES.get(method, "o-"),
                capsize=3,
                color=_COLORS.get(method) if one_model else None,
                label=f"{method} ({model})" if method != "classifier" else "embedding classifier",
            )
        ax.set_title(task)
        ax.set_xticks(list(xpos.values()), [str(k) for k in xpos])
        ax.set_xlabel("k (examples in the prompt)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
