"""The calibration section: reliability diagram, ECE and accuracy at coverage of every confidence the
run measured on expert-labeled items, and the confidence spread of the machine labels."""

from __future__ import annotations

import json

from distillery.evaluate import COVERAGES, calibration
from distillery.report.kit import Raw, esc, figure, fmt, not_run, note, plain, png, table
from distillery.report.lineage import Run
from distillery.spec import ClassificationOutput, TaskSpec

COLORS = ("#d62728", "#1f77b4", "#2ca02c")  # one per calibrated source, in the plot and its histogram


def _calibration_sets(spec: TaskSpec, run: Run) -> list[tuple[str, list[float], list[bool], str]]:
    """(name, confidence, correct, what the confidence is) for every held-out evaluation that has one."""
    out = []
    le = run.table("label", "label_eval")
    if le is not None and len(le) and "confidence" in le:
        out.append(("machine labels (teacher, label path)", list(le["confidence"]), list(le["top1"]),
                    "the confidence the machine labels carry, on the expert held-out items"))
    te = run.table("teacher", "teacher_eval")
    if te is not None and "confidence" in te:
        t = te[te["model"] == "teacher"]
        if len(t):
            out.append(("teacher (held-out eval)", list(t["confidence"]), list(t["top1"]),
                        "the teacher stage's own held-out evaluation, answering as the labeling stage does"))
    se = run.table("student", "student_eval")
    if se is not None and "model" in se:
        se = se[se["model"] == "student"]  # the baseline's rows beside it are another model
    if se is not None and len(se) and "probs" in se:
        conf = [max(json.loads(p)) if isinstance(p, str) and p.startswith("[") else 0.0 for p in se["probs"]]
        out.append(("student", conf, list(se["top1"]),
                    "probability of the top label over the label set (what bulk labels carry)"))
    return out


def _plot_reliability(ax, cals: list[tuple[str, dict, str]]) -> None:
    ax.plot([0, 1], [0, 1], color="#999", ls="--", lw=1, label="perfect calibration")
    for (name, cal, _), color in zip(cals, COLORS):
        xs = [b["confidence"] for b in cal["bins"]]
        ys = [b["accuracy"] for b in cal["bins"]]
        sizes = [20 + 180 * b["n"] / cal["n"] for b in cal["bins"]]
        ax.plot(xs, ys, color=color, lw=1, alpha=0.7)
        ax.scatter(xs, ys, s=sizes, color=color, alpha=0.8,
                   label=plain(f"{name}: ECE {cal['ece']:.3f} (n={cal['n']})"))
    ax.set_ylabel("accuracy (top-1)")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("reliability: mean confidence vs accuracy per bin (marker area ∝ items)", fontsize=9)


def _plot_histograms(ax, sets: list[tuple], labels) -> None:
    edges = [i / 10 for i in range(11)]
    hist = [(name, c) for name, c, _, _ in sets]
    if labels is not None and "confidence" in labels and len(labels):
        hist.append((f"machine labels (n={len(labels)}, no expert label)", list(labels["confidence"].fillna(0))))
    for (name, c), color in zip(hist, [*COLORS[:len(sets)], "#7f7f7f"]):
        ax.hist(c, bins=edges, histtype="step", density=True, lw=1.5, color=color, label=plain(name))
    ax.set_xlabel("confidence")
    ax.set_ylabel("density")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7, loc="upper left")


def _calibration_figure(sets: list[tuple], cals: list[tuple[str, dict, str]], labels):
    fig = figure(7, 5.4)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1.3], sharex=True)
    _plot_reliability(top, cals)
    _plot_histograms(bottom, sets, labels)
    return fig


def _calibration_table(cals: list[tuple[str, dict, str]]) -> Raw:
    rows = [[name, cal["n"], cal["ece"], *[cal["acc_at_coverage"][str(c)] for c in COVERAGES],
             sum(b["confidence"] * b["n"] for b in cal["bins"]) / cal["n"], what] for name, cal, what in cals]
    return table(["scored by", "items", "ECE", "acc @ 50% coverage", "acc @ 80%", "acc @ 100%", "mean confidence",
                  "confidence is"], rows)


def _machine_label_notes(spec: TaskSpec, run: Run, labels) -> list[Raw]:
    parts = []
    constrained = isinstance(spec.output, ClassificationOutput) and not spec.teacher.reasoning
    if run.get("label") and (run.table("label", "label_eval") is None) and constrained:
        parts.append(note("The machine labels' confidence is the top label's probability over the label set; the "
                          "runs older than the label_eval output carry another confidence, so their ECE is a proxy. "
                          "A label stage that writes label_eval measures the labels' own confidence."))
    if labels is None:
        parts.append(not_run("label stage (no machine labels)"))
    else:
        status = ", ".join(f"{k} {int(v)}" for k, v in labels["parse_status"].value_counts().items())
        parts.append(note(f"Machine labels: {len(labels)}, mean confidence {labels['confidence'].mean():.3f}, "
                          f"parse status {status}."))
    return parts


def _prior_table(spec: TaskSpec, run: Run) -> list[Raw]:
    """The seeds' class mix beside the corpus's estimated one, and the held-out top-1 under each."""
    label = run.get("label")
    prior = label.metrics.get("prior") if label else None
    if not prior:
        return []
    heldout = label.metrics.get("heldout", {})
    labels = list(prior["corpus"])
    rows = [["seeds (train split: the teacher's prior)", *[prior["seeds"].get(c) for c in labels],
             heldout.get("top1_seed_mix")],
            [f"corpus (EM estimate over {prior['documents']} labeled documents)",
             *[prior["corpus"][c] for c in labels], heldout.get("top1_corpus_mix")]]
    applied = "re-ranked under the corpus's prior" if prior.get("applied") else \
        "the teacher's own (label.prior_correction: false)"
    return [table(["class mix", *labels, "held-out top-1 under it"], rows),
            note(f"Machine labels: {applied}. The corpus estimate is only as good as the teacher's probabilities "
                 "(calibrated by one temperature on the validation seeds): a teacher that answers one class for "
                 "everything makes that class look like the whole corpus, and the corpus-mix top-1 follows it.")]


def _scope_table(run: Run) -> list[Raw]:
    """Out of scope and needs review: the shares of machine labels, and on the held-out seeds the
    share flagged and the top-1 of the labels that need review beside the rest."""
    label = run.get("label")
    sc = label.metrics.get("scope") if label else None
    if not sc:
        return []
    held = sc.get("heldout", {})
    rows = [["machine labels", sc["labels"], sc["out_of_scope"], sc["needs_review"], None, None]]
    if held:
        review, rest = held["review"], held["rest"]
        rows.append(["expert held-out seeds", held["n"], held["out_of_scope"],
                     review["n"] / held["n"] if held["n"] else None, review["top1"], rest["top1"]])
    threshold = "never" if sc["threshold"] is None else f"under {sc['threshold']:.3f}"
    return [table(["labels", "n", "out of scope", "needs review", "top-1 needing review", "top-1 of the rest"], rows),
            note(f"Out of scope: an in-scope share {threshold} (the smaller of the shares of the {sc['reference']} "
                 f"in-scope documents, seeds and labeled ones, as dissimilar in TF-IDF to their {sc['neighbours']} "
                 f"nearest, and as far out in length), the threshold that flags {sc['flag_share']:.0%} of them "
                 f"leave-one-out; a flagged label's confidence is capped at its in-scope share. Needs review: out of "
                 f"scope, or confidence under {sc['review_below']}. `distillery review SPEC --n 40` queues the ones "
                 "an expert label would help most.")]


def section_calibration(spec: TaskSpec, run: Run) -> Raw:
    sets = _calibration_sets(spec, run)
    labels = run.table("label", "machine_labels")
    if not sets:
        return not_run("teacher and student evaluations (no confidence on expert-labeled items)")
    cals = [(name, calibration(c, k), what) for name, c, k, what in sets]
    fig = _calibration_figure(sets, cals, labels)
    primary = cals[0]
    parts = [Raw(f'<p class="headline">ECE ({esc(primary[0])}, 10 equal-width bins): '
                 f'<b>{esc(fmt(primary[1]["ece"]))}</b> on {primary[1]["n"]} expert held-out items.</p>'),
             png(fig, "reliability diagram"), _calibration_table(cals),
             note("Accuracy at coverage c: top-1 accuracy over the c share of items with the highest confidence; "
                  "a useful confidence makes it fall as coverage grows.")]
    return Raw("".join(parts + _machine_label_notes(spec, run, labels) + _scope_table(run) + _prior_table(spec, run)))
