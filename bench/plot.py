"""The results chart: each throughput ratio's median and spread, against its target."""

from __future__ import annotations

from pathlib import Path


def ratios_png(path: Path, cases: list[tuple[str, list[float], float]]) -> None:
    """Write a bar chart of ``(case, ratios of the rounds, target)`` to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import statistics

    import matplotlib.pyplot as plt

    cases = [c for c in cases if c[1]]
    names = [c for c, _, _ in cases]
    medians = [statistics.median(r) for _, r, _ in cases]
    errors = [
        [m - min(r) for m, (_, r, _) in zip(medians, cases, strict=True)],
        [max(r) - m for m, (_, r, _) in zip(medians, cases, strict=True)],
    ]
    figure, axes = plt.subplots(figsize=(8, 3.8))
    axes.bar(names, medians, yerr=errors, capsize=4, color="#4C72B0")
    for index, (median, (_, _, target)) in enumerate(zip(medians, cases, strict=True)):
        axes.hlines(target, index - 0.4, index + 0.4, colors="#C44E52", linestyles="dashed")
        axes.text(index + 0.05, median, f"{median:.2f}", ha="left", va="bottom")
    axes.set_ylabel("throughput ratio (same rounds)")
    axes.set_title("Dispatcher vs baselines: median, min-max (dashed: target)")
    top = max([1.0, *medians, *(t for _, _, t in cases), *(max(r) for _, r, _ in cases)])
    axes.set_ylim(0, top * 1.15)
    axes.tick_params(axis="x", labelsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
