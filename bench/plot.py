"""The results chart: each case's median ratio to its raw baseline, against its target."""

from __future__ import annotations

from pathlib import Path


def ratios_png(path: Path, cases: list[tuple[str, float, float]]) -> None:
    """Write a bar chart of ``(case, ratio, target)`` to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c for c, _, _ in cases]
    figure, axes = plt.subplots(figsize=(7, 3.5))
    bars = axes.bar(names, [r for _, r, _ in cases], color="#4C72B0")
    for index, (_, ratio, target) in enumerate(cases):
        axes.hlines(target, index - 0.4, index + 0.4, colors="#C44E52", linestyles="dashed")
        axes.text(index, ratio, f"{ratio:.2f}", ha="center", va="bottom")
    axes.set_ylabel("throughput / raw confluent-kafka")
    axes.set_title("Dispatcher vs raw loop, same run (dashed: target)")
    axes.set_ylim(0, max(1.0, *(r for _, r, _ in cases)) * 1.15)
    del bars
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
