"""The reward-curve section: the teacher's GRPO reward per step and the validation reward that picked its checkpoint."""

from __future__ import annotations

from distillery.graders import component_names
from distillery.report.kit import Raw, figure, is_missing, not_run, note, png, table
from distillery.report.lineage import Run
from distillery.spec import TaskSpec


def _component_columns(train, spec: TaskSpec) -> list[str]:
    """The step-metric columns of a multi grader's components (`rewards/<name>/mean`), in order."""
    columns = [f"rewards/{name}/mean" for name in component_names(spec.grader)]
    return [c for c in columns if c in train and train[c].notna().any()]


def _plot_train(ax, train, spec: TaskSpec) -> None:
    if "reward" in train and train["reward"].notna().any():
        ax.plot(train["step"], train["reward"], color="#1f77b4", label="train reward (group mean)")
        if "reward_std" in train:
            ax.fill_between(train["step"], (train["reward"] - train["reward_std"]).clip(0, 1),
                            (train["reward"] + train["reward_std"]).clip(0, 1), color="#1f77b4", alpha=0.15,
                            label="± group std")
    for column in _component_columns(train, spec):  # a multi grader: each component's reward, logged only
        ax.plot(train["step"], train[column], "--", lw=1, label=column.split("/")[1] + " (component)")


def _best_validation(val):
    """The validation row of the checkpoint the teacher kept (the first maximum), or None."""
    if "mean_reward" in val and val["mean_reward"].notna().any():
        return val.loc[val["mean_reward"].idxmax()]
    return None


def _reward_figure(train, val, best, spec: TaskSpec):
    from matplotlib.ticker import MaxNLocator

    fig = figure(7, 3.6)
    ax = fig.add_subplot()
    _plot_train(ax, train, spec)
    if best is not None:
        ax.plot(val["step"], val["mean_reward"], "o-", color="#d62728", label="validation mean reward")
        ax.axvline(best["step"], color="#888", ls=":", label=f"kept checkpoint (step {int(best['step'])})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward")
    ax.set_ylim(-0.02, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def section_reward_curve(spec: TaskSpec, run: Run) -> Raw:
    if not run.get("teacher"):
        return not_run("teacher stage")
    steps = run.table("teacher", "teacher_metrics")
    if steps is None or steps.empty or "split" not in steps:
        return not_run(f"GRPO (teacher.grpo.steps = {spec.teacher.grpo.steps}; no step metrics recorded)")
    train = steps[steps["split"] == "train"].sort_values("step")
    val = steps[steps["split"] == "validation"].sort_values("step")
    best = _best_validation(val)
    parts = [png(_reward_figure(train, val, best, spec), "teacher GRPO reward per step")]
    if best is not None:
        rows = [[int(r["step"]), r.get("mean_reward"), r.get("top1"), None if is_missing(r.get("n")) else int(r["n"])]
                for _, r in val.iterrows()]
        parts.append(table(["step", "validation mean reward", "validation top-1", "items"], rows))
        parts.append(note(f"The LLM (the teacher, or its committee member) is the checkpoint of step {int(best['step'])} "
                          f"(validation reward {best['mean_reward']:.3f}); step 0 is the SFT warm start."))
    kept = run.get("teacher").metrics.get("kept") or {}
    if kept.get("why"):
        parts.append(note(f"Kept: {kept['why']}."))
    return Raw("".join(parts))
