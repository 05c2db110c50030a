"""NIL answers: "none of these" when the right entity is not in the KB.

The decision is a threshold on the best entity's overall score S, or on its margin over the runner-up
(S_1 - S_2): below it, the answer is NIL. `calibrate` chooses the feature and the threshold on a dev
split: a share of the dev mentions have their gold entity removed from the KB (they should be NIL),
the rest keep it (they should link to it), and the threshold that maximises accuracy over both wins.
"""
import random

import numpy as np

FEATURES = ("score", "margin")


def feature_value(scores: list, feature: str) -> float:
    """scores: the top entities' S, best first."""
    if not scores:
        return float("-inf")
    if feature == "score":
        return scores[0]
    return scores[0] - scores[1] if len(scores) > 1 else float("inf")


def is_nil(scores: list, rule: dict) -> bool:
    """rule: {"feature", "threshold"} as calibrate returns it; no rule means never NIL."""
    if not rule or not scores:
        return not scores
    return feature_value(scores, rule["feature"]) < rule["threshold"]


def best_threshold(values_in: np.ndarray, correct_in: np.ndarray, values_out: np.ndarray) -> tuple:
    """The threshold maximising accuracy: a linked mention counts if its top-1 is right and its value
    >= threshold; a mention whose gold was removed counts if its value < threshold."""
    candidates = np.unique(np.concatenate([values_in, values_out, [np.inf, -np.inf]]))
    best = (-1.0, 0.0)
    total = len(values_in) + len(values_out)
    for t in candidates:
        accuracy = (np.sum(correct_in & (values_in >= t)) + np.sum(values_out < t)) / total
        if accuracy > best[0]:
            best = (float(accuracy), float(t))
    return best


def calibrate(top_lists: list, gold: list, share: float = 0.5, seed: int = 43) -> dict:
    """top_lists[i]: the exhaustive top (index, S) pairs of mention i, at least 3, best first.
    Returns the rule with its dev accuracy, and the accuracy of each feature."""
    if not 0 < share < 1:
        raise ValueError("share must be between 0 and 1 (exclusive)")
    n = len(top_lists)
    if n < 2:
        raise ValueError("calibration needs at least two dev mentions")
    removed = set(random.Random(seed).sample(range(n), max(1, round(n * share))))
    report = {"count": n, "removed": len(removed), "share": share, "seed": seed, "features": {}}
    best = None
    for feature in FEATURES:
        values_in, correct_in, values_out = [], [], []
        for i, (top, g) in enumerate(zip(top_lists, gold)):
            if i in removed:
                rest = [s for index, s in top if index != g]
                values_out.append(feature_value(rest, feature))
            else:
                values_in.append(feature_value([s for _, s in top], feature))
                correct_in.append(top[0][0] == g)
        accuracy, threshold = best_threshold(np.array(values_in), np.array(correct_in, dtype=bool),
                                             np.array(values_out))
        report["features"][feature] = {"threshold": threshold, "accuracy": accuracy}
        if best is None or accuracy > best[0]:
            best = (accuracy, feature, threshold)
    report.update(accuracy=best[0], feature=best[1], threshold=best[2])
    # without NIL at all, only the kept mentions with a right top-1 would count
    report["accuracy_without_nil"] = float(sum(top_lists[i][0][0] == gold[i] for i in range(n) if i not in removed) / n)
    return report
