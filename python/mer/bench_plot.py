"""The plot of a bench sweep: decode tokens/s and hit rate against the RAM budget.

matplotlib is an optional dependency, installed with `pip install "mer[plot]"`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import MerError

INSTALL_HINT = 'pip install "mer[plot]"'


def load_pyplot() -> Any:
    """Return matplotlib.pyplot with the Agg backend, which writes files without a display.
    Raises MerError with the install command when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise MerError(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def plot_sweep(report: dict[str, Any], out: str, llamacpp: dict[int, float]) -> None:
    """Draw the sweep in `report` (from `mer.bench.run_bench`, every run with a RAM budget) into
    the image file `out`. One panel has MER's decode tokens/s, the bound and llama.cpp's tokens/s
    (`llamacpp` maps a budget in bytes to tokens/s and may be empty), the other MER's hit rate."""
    pyplot = load_pyplot()
    runs = sorted(report["runs"], key=lambda run: run["ram_budget_bytes"])
    largest = max([run["ram_budget_bytes"] for run in runs] + list(llamacpp))
    unit, scale = ("GiB", 1 << 30) if largest >= 1 << 30 else ("MiB", 1 << 20)
    x = [run["ram_budget_bytes"] / scale for run in runs]

    figure, (speed, hits) = pyplot.subplots(2, 1, sharex=True, figsize=(7, 6))
    speed.plot(x, [run["decode_tokens_per_s"] for run in runs], "o-", label="MER")
    speed.plot(x, [run["bound_tokens_per_s"] for run in runs], "s--", label="bound (disk and memory bandwidth)")
    if llamacpp:
        points = sorted(llamacpp.items())
        speed.plot([b / scale for b, _ in points], [t for _, t in points], "^-", label="llama.cpp")
    speed.set_ylabel("decode tokens/s")
    speed.set_ylim(bottom=0)
    speed.legend()
    speed.grid(True, alpha=0.3)

    hits.plot(x, [run["hit_rate"] for run in runs], "o-", label="MER hit rate")
    hits.set_ylabel("decode hit rate")
    hits.set_ylim(0, 1.05)
    hits.set_xlabel(f"RAM budget ({unit})")
    hits.grid(True, alpha=0.3)

    temperature = "cold" if runs[0]["cold"] else "warm"
    title = f"{Path(report['model']).name}: {report['tokens']} decode tokens, {runs[0]['threads']} threads"
    speed.set_title(f"{title}, {temperature}")
    figure.tight_layout()
    figure.savefig(out)
    pyplot.close(figure)
