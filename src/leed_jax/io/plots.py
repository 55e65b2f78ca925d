"""Learning curves (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

PANELS = (("return", "episodic return (mean per agent)"), ("mean_travel_time", "mean travel time, all vehicles (s)"))


def plot_learning_curves(
    runs: dict[str, list[dict]],
    path: str | pathlib.Path,
    title: str = "",
    references: dict[str, dict[str, float]] | None = None,
) -> pathlib.Path:
    """Plot return (and mean travel time, when logged) against env steps.

    runs: label -> metrics.jsonl records; with several seeds (``<key>_seeds`` lists) the band
    is the min..max over seeds. references: label -> {key: value} drawn as horizontal lines
    (e.g. the demonstrations).
    """
    keys = [(k, lab) for k, lab in PANELS if any(r.get(k) is not None for rs in runs.values() for r in rs)]
    keys = keys or [PANELS[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.8), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys):
        for name, records in runs.items():
            rows = [r for r in records if r.get(key) is not None]
            if not rows:
                continue
            x = np.array([r["env_steps"] for r in rows], float)
            y = np.array([r[key] for r in rows], float)
            (line,) = ax.plot(x, y, label=name)
            band = [r.get(f"{key}_seeds") for r in rows]
            if all(b is not None and len(b) > 1 for b in band):
                arr = np.array([[np.nan if v is None else v for v in b] for b in band], float)
                seen = ~np.isnan(arr).all(1)  # no episode ended in that chunk for any seed
                ax.fill_between(
                    x[seen], np.nanmin(arr[seen], 1), np.nanmax(arr[seen], 1),
                    color=line.get_color(), alpha=0.2,
                )
        for name, ref in (references or {}).items():
            if ref.get(key) is not None:
                ax.axhline(ref[key], ls="--", color="gray", label=name)
        ax.set_xlabel("env steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
