"""The committee: its members' calibrated probability rows, weighted by what the seeds say each is worth.

Stacking in its simplest honest form (Wolpert 1992; the linear opinion pool):
1. Every member (`members.py`) predicts every seed it was not fitted on. The k-fold members
   (`tfidf`, `encoder`) are fitted k times (stratified folds over all seeds); the `llm`, too costly to
   train k times on a CPU, is trained once on the seed train split and predicts the validation and
   held-out seeds (validation picked its checkpoint, so its figure there leans slightly optimistic).
2. Each member gets a temperature (fitted by log-likelihood on every seed it predicted), and the
   members a weight on the simplex (a grid, step 0.05, maximising the top-1 of the weighted mean over
   all seeds, ties broken by its log-likelihood; on a seed the LLM trained on, the others' weights
   renormalised, so the LLM's weight is judged on its own seeds only): a useless member gets weight
   0, and a member at weight 0 is never run again (it costs no labeling time); the LLM, the costly
   member, keeps its weight only if the nested committee (3.) beats the one without it on the seeds
   it did not train on, else it gets 0 and the others are reweighted. Top-1 first because
   it is what a user is scored on: on texlive_dev, log-likelihood alone let the sharper encoder take
   0.95 of the weight and the committee's out-of-fold top-1 fell from 0.738 to 0.688 (the
   log-likelihood tiebreak still sends a member that never changes an answer to 0).
3. The committee's own seed figure is nested: the weights used for a fold are fitted on the other
   folds' out-of-fold rows only (on the LLM's train seeds it is the committee without the LLM, the
   only honest figure there). Each figure has a 95% bootstrap interval.
4. The k-fold members are refitted on all the seeds; the committee answers with
   sum_m w_m * p_m(x)^(1/T_m) (each row renormalised).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from distillery.evaluate import gold_label, paired_difference
from distillery.members import Member
from distillery.prior import fit_temperature, temperature

STEP = 0.05  # weight grid
NAME = "committee"


def assign_folds(gold: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """A fold id per item: stratified when every class has at least 2 items, else plain k-fold."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(gold)
    counts = np.bincount(gold) if n else np.zeros(1, int)
    smallest = int(counts[counts > 0].min()) if n else 0
    k = max(2, min(k, n))
    splitter = StratifiedKFold(min(k, smallest), shuffle=True, random_state=seed) if smallest >= 2 \
        else KFold(k, shuffle=True, random_state=seed)
    folds = np.zeros(n, dtype=int)
    for f, (_, test) in enumerate(splitter.split(np.zeros(n), gold)):
        folds[test] = f
    return folds


def out_of_fold(make: Callable[[], Member], items: list[dict], folds: np.ndarray, n_labels: int) -> np.ndarray:
    """Each item's probability row from a member fitted on the other folds only."""
    probs = np.full((len(items), n_labels), np.nan)
    texts = [it["text"] for it in items]
    for f in np.unique(folds):
        train = [it for it, g in zip(items, folds) if g != f]
        test = np.flatnonzero(folds == f)
        probs[test] = make().fit(train).probabilities([texts[i] for i in test])
    return probs


def _covered(probs: dict[str, np.ndarray]) -> np.ndarray:
    """Rows where every member has an out-of-fold prediction."""
    return np.all([np.isfinite(p).all(axis=1) for p in probs.values()], axis=0)


def _nll(p: np.ndarray, gold: np.ndarray) -> float:
    return float(-np.log(np.clip(p[np.arange(len(gold)), gold], 1e-12, None)).mean())


def _simplex(n: int, step: float = STEP):
    ticks = round(1 / step)
    for point in itertools.product(range(ticks + 1), repeat=n - 1):
        if sum(point) <= ticks:
            yield np.array([*point, ticks - sum(point)]) / ticks


def _calibrated(probs: dict[str, np.ndarray], temps: dict[str, float]) -> dict[str, np.ndarray]:
    """Each member's rows at its temperature (NaN stays NaN: a seed it could not predict honestly)."""
    out = {}
    for m, p in probs.items():
        ok = np.isfinite(p).all(axis=1)
        out[m] = np.full(p.shape, np.nan)
        out[m][ok] = temperature(p[ok], temps[m])
    return out


def _mix(calibrated: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """The weighted mean of calibrated rows; on a row a member lacks (the LLM on the seeds it trained
    on), the other members' weights renormalised; NaN where no weighted member has the row."""
    shape = next(iter(calibrated.values())).shape
    total, norm = np.zeros(shape), np.zeros(shape[0])
    for m, w in weights.items():
        if w > 0:
            ok = np.isfinite(calibrated[m]).all(axis=1)
            total[ok] += w * calibrated[m][ok]
            norm += w * ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm[:, None] > 0, total / norm[:, None], np.nan)


def combine(probs: dict[str, np.ndarray], weights: dict[str, float], temps: dict[str, float]) -> np.ndarray:
    """The weighted mean of the members' rows, each at its temperature (members at weight 0 unread)."""
    used = {m: probs[m] for m, w in weights.items() if w > 0}
    return _mix(_calibrated(used, temps), weights)


def fit_combination(probs: dict[str, np.ndarray], gold: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    """(weights, temperatures): each member's temperature on every row it predicted out of fold; the
    weights on every row any member predicted, a member's weight counting on its own rows only (the
    mix renormalised where it has none). Top-1 first, then log-likelihood; then the earlier grid point."""
    names = list(probs)
    own = {m: np.isfinite(probs[m]).all(axis=1) for m in names}
    temps = {m: fit_temperature(probs[m][own[m]], gold[own[m]]) if own[m].any() else 1.0 for m in names}
    rows = np.any(list(own.values()), axis=0)
    if not rows.any():
        return {m: round(1 / len(names), 4) for m in names}, temps
    calibrated = {m: c[rows] for m, c in _calibrated(probs, temps).items()}
    uniform = 1 / next(iter(probs.values())).shape[1]  # a row no weighted member predicts: chance
    best, best_w = (np.inf, np.inf), None
    for w in _simplex(len(names)):
        mixed = np.nan_to_num(_mix(calibrated, dict(zip(names, w))), nan=uniform)
        loss = (-int((mixed.argmax(axis=1) == gold[rows]).sum()), _nll(mixed, gold[rows]))
        if loss[0] < best[0] or (loss[0] == best[0] and loss[1] < best[1] - 1e-12):
            best, best_w = loss, w
    return {m: round(float(w), 4) for m, w in zip(names, best_w)}, temps


def nested_out_of_fold(probs: dict[str, np.ndarray], gold: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """The committee's row for each seed, combined by weights fitted without the seed's fold."""
    rows = np.any([np.isfinite(p).all(axis=1) for p in probs.values()], axis=0)
    out = np.full(next(iter(probs.values())).shape, np.nan)
    for f in np.unique(folds[rows]):
        fit_rows = rows & (folds != f)
        weights, temps = fit_combination({m: p[fit_rows] for m, p in probs.items()}, gold[fit_rows])
        test = rows & (folds == f)
        out[test] = combine({m: p[test] for m, p in probs.items()}, weights, temps)
    return out


def accuracy(probs: np.ndarray, gold: np.ndarray, *, resamples: int = 2000, seed: int = 0) -> dict:
    """Top-1 on the rows that have a prediction, with a 95% percentile bootstrap interval."""
    rows = np.isfinite(probs).all(axis=1)
    hits = (probs[rows].argmax(axis=1) == gold[rows]).astype(float)
    if not len(hits):
        return {"top1": None, "ci95": None, "n": 0}
    boot = np.random.default_rng(seed).choice(hits, (resamples, len(hits))).mean(axis=1)
    return {"top1": float(hits.mean()), "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "n": int(len(hits))}


def paired_gain(a: np.ndarray, b: np.ndarray, gold: np.ndarray, *, resamples: int = 2000, seed: int = 0) -> dict:
    """Top-1 of a minus b on the rows both predict, with a paired 95% bootstrap interval."""
    rows = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    if not rows.any():
        return {"gain": None, "ci95": None, "n": 0}
    d = paired_difference(a[rows].argmax(1) == gold[rows], b[rows].argmax(1) == gold[rows], resamples=resamples,
                          seed=seed)
    return {"gain": d["diff"], "ci95": d["ci95"], "n": d["n"]}


@dataclass
class Committee:
    """Fitted members and their weights: the teacher that labels, behind the members' contract."""

    labels: list[str]
    members: dict[str, Member]
    weights: dict[str, float]
    temperatures: dict[str, float]
    name: str = NAME
    out_of_fold: dict = field(default_factory=dict)  # sha256 -> the committee's nested out-of-fold row

    def probabilities(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)))
        rows = {m: self.members[m].probabilities(texts) for m, w in self.weights.items() if w > 0}
        return combine(rows, self.weights, self.temperatures)


def gold_indices(items: list[dict], labels: list[str]) -> np.ndarray:
    return np.array([labels.index(gold_label(it["answer"])) for it in items])


def build(spec, items: list[dict], names: list[str], *, llm=None, encoder=None) -> tuple[Committee, dict]:
    """Fit the committee on every seed item (each with `split`): out-of-fold rows for each member
    (`llm`: a trained `LLMMember`, out of fold on the seeds outside its train split), weights and
    temperatures from them, the nested committee rows, then the k-fold members refitted on all items.

    Returns (committee, metrics); the committee keeps its nested out-of-fold rows by document hash."""
    from distillery.members import make_member

    labels = list(spec.output.labels)
    gold = gold_indices(items, labels)
    folds = assign_folds(gold, spec.teacher.folds, spec.seed)
    probs: dict[str, np.ndarray] = {}
    for name in names:
        if name == "llm":
            probs[name] = np.full((len(items), len(labels)), np.nan)
            outside = [i for i, it in enumerate(items) if it.get("split") != "train"]
            probs[name][outside] = llm.probabilities([items[i]["text"] for i in outside])
        else:
            probs[name] = out_of_fold(lambda: make_member(name, spec, encoder=encoder), items, folds, len(labels))
    weights, temps = fit_combination(probs, gold)
    nested = nested_out_of_fold(probs, gold, folds)
    gain = llm_gain(probs, nested, gold, folds)
    if gain is not None and weights["llm"] > 0 and not (gain["gain"] and gain["gain"] > 0):
        # the costly member earns its place out of fold or labels nothing: the others reweighted
        others = {m: p for m, p in probs.items() if m != "llm"}
        weights = {**fit_combination(others, gold)[0], "llm": 0.0}
        nested = nested_out_of_fold(others, gold, folds)
    fitted = {name: llm if name == "llm" else make_member(name, spec, encoder=encoder).fit(items) for name in names}
    committee = Committee(labels, fitted, weights, temps,
                          out_of_fold={it["sha256"]: row.tolist() for it, row in zip(items, nested)
                                       if np.isfinite(row).all()})
    return committee, seed_metrics(probs, nested, gold, weights, temps, folds, gain)


def seed_metrics(probs: dict[str, np.ndarray], nested: np.ndarray, gold: np.ndarray, weights: dict, temps: dict,
                 folds: np.ndarray, gain: dict | None = None) -> dict:
    """Each member's and the committee's out-of-fold top-1 (with intervals), weights, temperatures,
    paired gains against the best member and the TF-IDF baseline, and what the LLM added."""
    members = {m: {**accuracy(p, gold), "weight": weights[m], "temperature": round(temps[m], 4)}
               for m, p in probs.items()}
    covered = _covered(probs)
    best = max(probs, key=lambda m: members[m]["top1"] or 0)  # each on the seeds it predicted
    out = {"folds": int(len(np.unique(folds))), "seeds": int(len(gold)), "covered": int(covered.sum()),
           "members": members, NAME: accuracy(nested, gold), "best_member": best,
           "gain_vs_best_member": paired_gain(nested, probs[best], gold)}
    if "tfidf" in probs:
        out["gain_vs_baseline"] = paired_gain(nested, probs["tfidf"], gold)
    out["llm_added"] = llm_added(probs, weights, gain if gain is not None else llm_gain(probs, nested, gold, folds))
    return out


def llm_gain(probs: dict[str, np.ndarray], nested: np.ndarray, gold: np.ndarray, folds: np.ndarray) -> dict | None:
    """The nested committee's top-1 with the LLM minus without it, on the seeds the LLM did not train
    on (None without an LLM beside other members)."""
    others = {m: p for m, p in probs.items() if m != "llm"}
    if "llm" not in probs or not others:
        return None
    rows = _covered(probs)
    without = nested_out_of_fold({m: np.where(rows[:, None], p, np.nan) for m, p in others.items()}, gold, folds)
    return paired_gain(nested, without, gold)


def llm_added(probs: dict[str, np.ndarray], weights: dict, gain: dict | None) -> str:
    """One sentence: what the LLM member added to the committee on the seeds it never trained on."""
    if "llm" not in probs:
        return "no LLM member (teacher.members leaves it out)"
    if gain is None:
        return "the LLM is the only member"
    if weights["llm"] == 0 or not gain["gain"] or gain["gain"] <= 0:
        return (f"the LLM added nothing on the {gain['n']} seeds it did not train on (nested top-1 with it "
                f"{_pct(gain)}; weight {weights['llm']:.2f}, so labeling never runs it): a larger base model on a "
                f"GPU profile (models.base, e.g. Qwen/Qwen3-0.6B) is what could add knowledge the encoder and TF-IDF lack")
    return (f"the LLM added {_pct(gain)} top-1 on the {gain['n']} seeds it did not train on (weight "
            f"{weights['llm']:.2f}), 95% interval [{gain['ci95'][0]:+.3f}, {gain['ci95'][1]:+.3f}]")


def _pct(gain: dict) -> str:
    return f"{gain['gain']:+.3f}" if gain["gain"] is not None else "n/a"
