"""Figure of LinEAS training (``analysis.convergence`` frames): the training loss, the held-out
W2 ratio along each schedule, and where measured, toxicity and PPL at each schedule's end."""

from __future__ import annotations

import pandas as pd

from .base import figure, need_columns


def plot_convergence(curve: pd.DataFrame, points: pd.DataFrame, title: str | None = None):
    """Panels: loss per step (one line per schedule length); held-out W2 steered ÷ unsteered
    at the snapshots (end points filled); and, when ``points`` has ``mean_score``, the mean
    toxicity score and the PPL change at each schedule's end."""
    need_columns(curve, ["schedule", "step", "loss"], "plot_convergence", "lineas_curve")
    need_columns(points, ["schedule", "step", "end", "heldout_ratio"], "plot_convergence",
                 "lineas_checkpoints")
    ends = _with_run(points[points["end"].astype(bool)]).sort_values("schedule")
    evaluated = "mean_score" in points.columns and ends["mean_score"].notna().any()
    fig, axes = figure(1, 3 if evaluated else 2, size=(15.0 if evaluated else 10.5, 4.0))
    curve, points = _with_run(curve), _with_run(points)
    for i, (run, part) in enumerate(curve.groupby("run", sort=False)):
        dashed = "bf16" in run
        axes[0].plot(part["step"], part["loss"], lw=0.8, color=f"C{i}", label=run,
                     ls="--" if dashed else "-")
        snaps = points[points["run"] == run].sort_values("step")
        axes[1].plot(snaps["step"], snaps["heldout_ratio"], "o--" if dashed else "o-",
                     color=f"C{i}", mfc="white", label=run)
        end = snaps[snaps["end"].astype(bool)]
        axes[1].plot(end["step"], end["heldout_ratio"], "o", color=f"C{i}")
    axes[0].set(xlabel="training step", ylabel="training loss (mean W2² over units, sites)",
                yscale="log", title="loss")
    axes[1].axhline(1.0, color="black", lw=0.8)
    axes[1].set(xlabel="training step (snapshot)", xscale="log",
                ylabel="held-out W2², steered ÷ unsteered", title="held-out W2 (filled: end)")
    axes[0].legend(frameon=False)
    if evaluated:
        ax, twin = axes[2], axes[2].twinx()
        x = list(ends["run"])
        ax.errorbar(x, ends["mean_score"], yerr=ends.get("mean_score_se"), fmt="o", color="C3",
                    capsize=3, label="mean toxicity")
        twin.plot(x, 100 * ends["delta_ppl_rel"], "s", color="C7", label="PPL change")
        if "mean_score_unsteered" in ends.columns:
            ax.axhline(ends["mean_score_unsteered"].iloc[0], color="C3", ls="--", lw=0.8)
        ax.set(xlabel="schedule (steps)", ylabel="mean toxicity score (± SE; dashed: unsteered)",
               title="at the end of each schedule (λ = 1)")
        twin.set_ylabel("perplexity change (%)", color="C7")
    fig.suptitle(title or "LinEAS training: loss and held-out W2")
    return fig


def _with_run(frame: pd.DataFrame) -> pd.DataFrame:
    """A ``run`` label per row: "250 steps", and "250 steps, bf16" where a ``precision``
    column says the fit ran under bf16 autocast."""
    label = frame["schedule"].astype(int).astype(str) + " steps"
    if "precision" in frame.columns:
        label = label + frame["precision"].map(lambda p: ", bf16" if p == "bf16" else "")
    return frame.assign(run=label)
