"""PNG plots of a results table (matplotlib, Agg backend: no display needed).

A cell whose answer is wrong (a correctness failure) is never drawn as a speedup, a time or a bandwidth: it is
left out, and the speedup plot marks its place "wrong answer".

    >>> import pandas as pd
    >>> speedup_figure(pd.DataFrame(columns=["workload", "size", "mode", "metric", "value"]), "small") is None
    True
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: reports are written on headless machines and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

SIZE_ORDER = ["small", "medium", "large"]


def _metric(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows of ``metric`` with a value, without the cells whose answer is wrong."""
    if "value" not in df:
        return df.iloc[0:0]
    d = df[(df.metric == metric) & df.value.notna()]
    wrong = _wrong_cells(df)
    if not wrong:
        return d
    keep = [(w, s, m) not in wrong for w, s, m in zip(d.workload, d["size"], d["mode"])]
    return d[keep]


def _wrong_cells(df: pd.DataFrame) -> set[tuple[str, str, str]]:
    """(workload, size, mode) of cells with a correctness failure (``compare.harness.failed_cells``)."""
    if "status" not in df:
        return set()
    from compare.harness import failed_cells
    return failed_cells(df)


def speedup_figure(df: pd.DataFrame, size: str):
    """Horizontal bars: speedup over eager (log scale) per workload, one bar per mode."""
    d = _metric(df, "speedup_vs_eager")
    d = d[(d["size"] == size) & (d["mode"] != "eager")]
    wrong = sorted((w, m) for w, s, m in _wrong_cells(df) if s == size and m != "eager")
    if d.empty and not wrong:
        return None
    table = d.pivot_table(index="workload", columns="mode", values="value", sort=False)
    for w, m in wrong:  # a row and a column for each wrong cell, so its place can be marked
        if m not in table.columns:
            table[m] = np.nan
        if w not in table.index:
            table.loc[w] = np.nan
    workloads, modes = list(table.index), list(table.columns)
    fig, ax = plt.subplots(figsize=(10.5, 0.12 * len(workloads) * len(modes) + 1.8))
    height = 0.8 / len(modes)
    for j, mode in enumerate(modes):
        y = np.arange(len(workloads)) + j * height
        ax.barh(y, table[mode].to_numpy(), height=height, label=mode, color=f"C{j % 10}")
        for w, m in wrong:
            if m == mode:
                ax.text(1.0, workloads.index(w) + j * height, " wrong answer: not drawn", va="center", fontsize=6,
                        color=f"C{j % 10}")
    ax.set_yticks(np.arange(len(workloads)) + (len(modes) - 1) * height / 2, workloads)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("speedup over eager (x, log scale; right of the line is faster; cells with a wrong answer are "
                  "left out)")
    ax.set_title(f"Speedup vs eager, size {size}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a bar
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def scaling_figure(df: pd.DataFrame):
    """Per workload: median time per call against size, one line per mode (needs two or more sizes)."""
    d = _metric(df, "time")
    sizes = [s for s in SIZE_ORDER if s in set(d["size"])]
    if len(sizes) < 2:
        return None
    workloads = list(dict.fromkeys(d.workload))
    colors = {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(d["mode"]))}  # one colour per mode everywhere
    cols = min(4, len(workloads))
    rows = (len(workloads) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, wl in zip(axes.flat, workloads):
        w = d[d.workload == wl]
        for mode, m in w.groupby("mode", sort=False):
            m = m.set_index("size").reindex(sizes)
            ax.plot(sizes, m.value.to_numpy() * 1e3, marker="o", label=mode, color=colors[mode])
        ax.set_yscale("log")
        ax.set_title(wl, fontsize=9)
        ax.set_ylabel("ms per call", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(workloads):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=c, marker="o") for c in colors.values()]
    labels = list(colors)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 9), fontsize=8)
    fig.suptitle("Time per call vs size")
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return fig


def roofline_figure(df: pd.DataFrame, copy_gbps: float | None):
    """Effective GB/s of memory-bound workloads against the device's measured copy bandwidth (GPU runs)."""
    d = _metric(df, "gbps")
    if d.empty or not copy_gbps:
        return None
    d = d[d.workload.isin(["tanh_gelu", "layer_norm", "softmax", "adam_update", "custom_sigmoid"])]
    if d.empty:  # none of the memory-bound workloads ran (or each gave a wrong answer)
        return None
    size = [s for s in SIZE_ORDER if s in set(d["size"])][-1]
    table = d[d["size"] == size].pivot_table(index="workload", columns="mode", values="value", sort=False)
    fig, ax = plt.subplots(figsize=(11, 4))
    table.plot.bar(ax=ax, rot=0)
    ax.axhline(copy_gbps, color="red", linestyle="--", label=f"measured copy bandwidth {copy_gbps:.0f} GB/s")
    ax.set_ylabel("effective GB/s (bytes in + out / time)")
    ax.set_title(f"Memory-bound workloads vs the roofline, size {size}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the bars, never over them
    fig.tight_layout()
    return fig


def write_plots(df: pd.DataFrame, out_dir: Path, copy_gbps: float | None = None) -> list[Path]:
    """Write every plot that the data supports; returns the PNG paths."""
    figures = {f"speedup_{s}.png": speedup_figure(df, s) for s in SIZE_ORDER if s in set(df.get("size", []))}
    figures["scaling.png"] = scaling_figure(df)
    figures["roofline.png"] = roofline_figure(df, copy_gbps)
    paths = []
    for name, fig in figures.items():
        if fig is None:
            continue
        path = out_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
