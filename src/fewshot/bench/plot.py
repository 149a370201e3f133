"""docs/bench.png: one run's headline ratios as bar charts (matplotlib, imported when drawn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(results: dict[str, Any], path: Path) -> Path:
    """Three panels (serving requests/s, decode ms/token, throughput tokens/s) per model/engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [n for n, m in results.get("models", {}).items() if "error" not in m]
    keys: list[str] = []
    labels: dict[str, str] = {}
    for n in models:
        for k, e in results["models"][n]["engines"].items():
            if k not in keys:
                keys.append(k)
                labels[k] = e.get("label", k)

    def value(m: dict[str, Any], k: str, metric: str) -> float | None:
        e = m["engines"].get(k) or {}
        if metric == "serving":
            return (e.get("serving") or {}).get("requests_per_s")
        if metric == "decode":
            s = e if e.get("kind") == "peer" else (e.get("single") or {})
            v = s.get("decode_s_per_token")
            return None if v is None else 1e3 * v
        levels = (e.get("throughput") or {}).get("levels") or {}
        best = [v.get("tokens_per_s") for v in levels.values() if v.get("tokens_per_s")]
        return max(best) if best else None

    panels = [
        ("serving", "few-shot serving, requests/s (higher is better)"),
        ("decode", "batch-1 decode, ms/token (lower is better)"),
        ("throughput", "throughput, best tokens/s (higher is better)"),
    ]
    palette = plt.get_cmap("tab10")
    colors = {k: palette(i % 10) for i, k in enumerate(keys)}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    width = 0.8 / max(1, len(keys))
    for ax, (metric, title) in zip(axes, panels, strict=True):
        for i, k in enumerate(keys):
            xs, ys = [], []
            for j, n in enumerate(models):
                v = value(results["models"][n], k, metric)
                if v:
                    xs.append(j + i * width)
                    ys.append(v)
            if ys:
                ax.bar(xs, ys, width, label=labels[k], color=colors[k])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(models))], models)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
    handles, names = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, nm in zip(*ax.get_legend_handles_labels(), strict=True):
            if nm not in names:
                handles.append(h)
                names.append(nm)
    fig.legend(handles, names, loc="lower center", ncol=min(4, max(1, len(names))), fontsize=8)
    threads = results.get("meta", {}).get("threads")
    cpu = results.get("machine", {}).get("cpu_model")
    fig.suptitle(f"fewshot bench: {cpu}, {threads} threads (medians; log scale)", fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
