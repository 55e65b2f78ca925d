"""Learning curves (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

# (key, label): the held-out greedy evaluations first; the training batches' (stochastic)
# figures when a run has no evaluations.
EVAL_PANELS = (
    ("eval_return", "greedy return on held-out episodes (per agent)"),
    ("eval_mean_travel_time", "held-out mean travel time, all vehicles (s)"),
)
TRAIN_PANELS = (
    ("return", "training return (mean per agent)"),
    ("mean_travel_time", "training mean travel time, all vehicles (s)"),
)
PANELS = TRAIN_PANELS  # kept for callers of the old name


def band95(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of the 95 % confidence interval of the mean over seeds (Student t),
    per row of ``samples [points, seeds]`` (NaN ignored; half-width 0 with one seed)."""
    from scipy.stats import t as student_t

    mean = np.nanmean(samples, 1)
    k = np.isfinite(samples).sum(1)
    sd = np.nanstd(samples, 1, ddof=1) if samples.shape[1] > 1 else np.zeros(len(samples))
    with np.errstate(invalid="ignore", divide="ignore"):
        half = np.where(k > 1, student_t.ppf(0.975, np.maximum(k - 1, 1)) * sd / np.sqrt(k), 0.0)
    return mean, np.nan_to_num(half)


def _series(records: list[dict], key: str, x_key: str, x_offset: float):
    rows = [r for r in records if r.get(key) is not None and r.get(x_key) is not None]
    x = np.array([r[x_key] for r in rows], float) + x_offset
    seeds = [r.get(f"{key}_seeds") for r in rows]
    if rows and all(s is not None and len(s) > 1 for s in seeds):
        arr = np.array([[np.nan if v is None else v for v in s] for s in seeds], float)
        seen = ~np.isnan(arr).all(1)  # no episode ended in that chunk for any seed
        mean, half = band95(arr[seen])
        return x[seen], mean, half
    y = np.array([r[key] for r in rows], float)
    return x, y, None


def plot_learning_curves(
    runs: dict[str, list[dict]],
    path: str | pathlib.Path,
    title: str = "",
    references: dict[str, dict[str, float]] | None = None,
    time_offsets: dict[str, float] | None = None,
) -> pathlib.Path:
    """Plot the learning curves of ``runs`` (label -> metrics.jsonl records).

    With periodic evaluations (``eval_return``) the panels are the greedy held-out return
    against env steps and against wall-clock seconds (``time_offsets[label]`` added, e.g. the
    DG time of LEED's demonstrations), plus the held-out mean travel time when logged;
    without, the training return (and travel time) against env steps. With several seeds
    (``<key>_seeds`` lists) the line is the mean over seeds and the band its 95 % confidence
    interval (Student t). references: label -> {key: value} drawn as horizontal lines (e.g.
    the demonstrations; the training keys ``return``/``mean_travel_time`` also serve the
    evaluation panels)."""
    have = lambda k: any(r.get(k) is not None for rs in runs.values() for r in rs)  # noqa: E731
    if have("eval_return"):
        panels = [("eval_return", EVAL_PANELS[0][1], "env_steps"),
                  ("eval_return", EVAL_PANELS[0][1], "wall_s")]
        if have("eval_mean_travel_time"):
            panels.append(("eval_mean_travel_time", EVAL_PANELS[1][1], "env_steps"))
    else:
        panels = [(k, lab, "env_steps") for k, lab in TRAIN_PANELS if have(k)] or [
            (TRAIN_PANELS[0][0], TRAIN_PANELS[0][1], "env_steps")]
    offsets = time_offsets or {}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (key, label, x_key) in zip(axes[0], panels):
        for name, records in runs.items():
            off = offsets.get(name, 0.0) if x_key == "wall_s" else 0.0
            x, y, half = _series(records, key, x_key, off)
            if not len(x):
                continue
            (line,) = ax.plot(x, y, label=name)
            if half is not None:
                ax.fill_between(x, y - half, y + half, color=line.get_color(), alpha=0.2)
        ref_key = key.removeprefix("eval_")
        for name, ref in (references or {}).items():
            value = ref.get(key, ref.get(ref_key))
            if value is not None:
                ax.axhline(value, ls="--", color="gray", label=name)
        ax.set_xlabel("env steps" if x_key == "env_steps" else "wall-clock s (DG included)")
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
