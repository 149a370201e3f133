"""docs/bench.png: one run's headline numbers as bar charts, each bar labelled with its value
and its speed-up over the baseline, and the cost curves (tokens/s against concurrent clients,
time to first token against prompt length) as line charts, one row per model that has them.
matplotlib is imported only when drawing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BARS = (  # metric, title, higher is better
    ("serving", "few-shot serving, requests/s (higher is better)", True),
    ("decode", "batch-1 decode, ms/token (lower is better)", False),
    ("throughput", "throughput, best tokens/s (higher is better)", True),
)
CURVE_PANELS = (  # result key, points key, value key, scale to the plotted unit, y label, title
    ("scaling", "levels", "tokens_per_s", 1.0, "generated tokens/s",
     "generated tokens/s against concurrent clients (higher is better)"),
    ("prompt_length", "lengths", "ttft_s", 1e3, "time to first token, ms",
     "time to first token against prompt length (lower is better)"),
)  # fmt: skip
LOG_RANGE = 30.0  # a panel whose values span more than this uses a log y axis


def bar_value(engine: dict[str, Any], metric: str) -> float | None:
    """The number a bar panel shows for one engine (None where not measured)."""
    if metric == "serving":
        return (engine.get("serving") or {}).get("requests_per_s")
    if metric == "decode":
        s = engine if engine.get("kind") == "peer" else (engine.get("single") or {})
        v = s.get("decode_s_per_token")
        return None if v is None else 1e3 * v
    levels = (engine.get("throughput") or {}).get("levels") or {}
    best = [v.get("tokens_per_s") for v in levels.values() if v.get("tokens_per_s")]
    return max(best) if best else None


def short(value: float) -> str:
    """A value in three significant digits, without exponent: 0.654, 3.04, 50.6, 1,203."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value >= 1 else f"{value:.2g}"


def bar_label(value: float, base: float | None, higher_is_better: bool, is_base: bool) -> str:
    """A bar's label: its value and, unless it is the baseline, its speed-up over it."""
    if is_base or not base:
        return short(value)
    speedup = value / base if higher_is_better else base / value
    return f"{short(value)}\n{speedup:.1f}x" if speedup >= 1 else f"{short(value)}\n{speedup:.2f}x"


def curve_points(
    engine: dict[str, Any], key: str, points: str, value: str, scale: float
) -> list[tuple[int, float]]:
    """(x, y) of one engine's curve, sorted by x; empty where it did not run."""
    got = ((engine.get(key) or {}).get(points)) or {}
    pairs = [(int(k), p.get(value)) for k, p in got.items() if p.get(value)]
    return [(xv, scale * yv) for xv, yv in sorted(pairs)]


def _scale_y(ax: Any, values: list[float], headroom: bool) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = min(values), max(values)
    if hi / lo > LOG_RANGE:
        ax.set_yscale("log")
        ax.set_ylim(lo / 2, hi * (6 if headroom else 2))
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_ylim(0, hi * (1.3 if headroom else 1.1))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _bars(
    ax: Any,
    results: dict[str, Any],
    models: list[str],
    keys: list[str],
    spec: tuple[str, str, bool],
    colors: dict[str, Any],
) -> None:
    metric, title, higher = spec
    width = 0.8 / max(1, len(keys))
    crowded = len(models) * len(keys) > 8
    values: list[float] = []
    for i, k in enumerate(keys):
        xs, ys, texts = [], [], []
        for j, n in enumerate(models):
            engines = results["models"][n]["engines"]
            v = bar_value(engines.get(k) or {}, metric)
            if not v:
                continue
            base = bar_value(engines.get("baseline") or {}, metric)
            xs.append(j + i * width)
            ys.append(v)
            texts.append(bar_label(v, base, higher, k == "baseline"))
        if ys:
            bars = ax.bar(xs, ys, width, label=k, color=colors[k])
            if crowded:
                texts = [t.replace("\n", "  ") for t in texts]
            ax.bar_label(bars, texts, padding=2, fontsize=8, rotation=90 if crowded else 0)
            values += ys
    ticks = [j + 0.4 - width / 2 for j in range(len(models))]
    if len(models) > 2:  # long model names side by side would run into each other
        ax.set_xticks(ticks, models, fontsize=9, rotation=20, ha="right")
    else:
        ax.set_xticks(ticks, models, fontsize=9)
    ax.set_title(title, fontsize=10)
    if values:
        _scale_y(ax, values, headroom=True)


def _curve(
    ax: Any,
    model: str,
    engines: dict[str, Any],
    spec: tuple[str, str, str, float, str, str],
    colors: dict[str, Any],
    labels: dict[str, str],
) -> None:
    key, points, value, scale, ylabel, title = spec
    xs_all: set[int] = set()
    ys_all: list[float] = []
    for k, e in engines.items():
        pts = curve_points(e, key, points, value, scale)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", color=colors[k], label=labels[k])
            xs_all |= {p[0] for p in pts}
            ys_all += [p[1] for p in pts]
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(xs_all), [str(v) for v in sorted(xs_all)], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("concurrent clients" if key == "scaling" else "prompt tokens", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(f"{model}: {title}", fontsize=10)
    ax.grid(True, alpha=0.3)
    if ys_all:
        _scale_y(ax, ys_all, headroom=False)
        ax.legend(fontsize=8)


def plot(results: dict[str, Any], path: Path) -> Path:
    """The bar panels, then a row of two curve panels per model that ran the curves."""
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
    with_curves = [
        n
        for n in models
        if any(e.get(c[0]) for e in results["models"][n]["engines"].values() for c in CURVE_PANELS)
    ]
    palette = plt.get_cmap("tab10")
    colors = {k: palette(i % 10) for i, k in enumerate(keys)}
    height = 5.6 + 4.4 * len(with_curves)
    fig = plt.figure(figsize=(16, height))
    grid = fig.add_gridspec(
        1 + len(with_curves), 6, height_ratios=[1.25] + [1.0] * len(with_curves),
        hspace=0.4, top=1 - 0.8 / height,
    )  # fmt: skip
    bar_axes = [fig.add_subplot(grid[0, 2 * i : 2 * i + 2]) for i in range(len(BARS))]
    for ax, bar_spec in zip(bar_axes, BARS, strict=True):
        _bars(ax, results, models, keys, bar_spec, colors)
    shown = {nm for ax in bar_axes for nm in ax.get_legend_handles_labels()[1]}
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[k]) for k in keys if k in shown]
    bar_axes[1].legend(
        handles, [labels[k] for k in keys if k in shown], loc="upper center",
        bbox_to_anchor=(0.5, -0.16 if len(models) > 2 else -0.1), ncol=min(4, max(1, len(handles))),
        fontsize=8,
    )  # fmt: skip
    for row, n in enumerate(with_curves, start=1):
        for col, spec in enumerate(CURVE_PANELS):
            ax = fig.add_subplot(grid[row, 3 * col : 3 * col + 3])
            _curve(ax, n, results["models"][n]["engines"], spec, colors, labels)
    threads = results.get("meta", {}).get("threads")
    cpu = results.get("machine", {}).get("cpu_model")
    fig.suptitle(
        f"fewshot bench: {cpu}, {threads} threads (medians; bars: value and speed-up over the "
        "baseline)",
        fontsize=11,
        y=1 - 0.3 / height,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
