"""Threshold policies: how each label's decision threshold is chosen (its operating point).

A policy is written ``KIND`` or ``KIND:VALUE``:

- ``f1`` (the default): maximise F1; ``fbeta:B``: maximise F-beta (B > 0);
- ``challenge``: the challenge-style score of all labels jointly;
- ``sensitivity:S``: the highest threshold whose sensitivity on the fitting fold is >= S;
- ``specificity:S``: the lowest threshold whose specificity there is >= S (S in (0, 1]);
- ``sensitivity:S@C`` / ``specificity:S@C``: the same with a stated confidence C in (0, 1):
  the one-sided lower bound at C of the rate on the fitting fold (exact binomial,
  Clopper-Pearson) must be >= S. A label with too few positives (negatives) for any threshold
  to reach that bound falls back to the plain ``sensitivity:S`` cut, and `confidence_bounds`
  says so (the report names it).

`PolicySet` is one default plus per-label overrides (``AFIB=sensitivity:0.98``). The fitting
itself is `ecgtune.search.thresholds.fit_thresholds`; this module only parses, checks and
records. Importing it imports nothing heavy (argument parsing uses it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "POLICY_KINDS",
    "PolicySet",
    "ThresholdPolicy",
    "confidence_bounds",
    "fit_policy_thresholds",
    "override_problem",
    "policy_problem",
]

# kind -> what its value is (None: the kind takes no value).
POLICY_KINDS: dict[str, str | None] = {
    "f1": None,
    "fbeta": "B > 0",
    "challenge": None,
    "sensitivity": "S in (0, 1]",
    "specificity": "S in (0, 1]",
}
# Policies with a target rate, and the report metric (`metric_keys`) that measures it.
TARGET_METRICS = {"sensitivity": "recall", "specificity": "specificity"}


@dataclass(frozen=True)
class ThresholdPolicy:
    kind: str = "f1"
    value: float | None = None
    confidence: float | None = None  # target-rate kinds only: the bound's confidence

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"unknown threshold policy {self.kind!r}; valid: "
                             f"{', '.join(_forms())}")
        wants = POLICY_KINDS[self.kind]
        if wants is None and self.value is not None:
            raise ValueError(f"threshold policy {self.kind!r} takes no value")
        if wants is not None:
            v = self.value
            ok = v is not None and (v > 0 if self.kind == "fbeta" else 0 < v <= 1)
            if not ok:
                raise ValueError(f"threshold policy {self.kind!r} needs {self.kind}:{wants}, "
                                 f"got {self}")
        if self.confidence is not None:
            if self.kind not in TARGET_METRICS:
                raise ValueError(f"threshold policy {self.kind!r} takes no confidence (@C is "
                                 "for sensitivity:S@C and specificity:S@C)")
            if not 0 < self.confidence < 1:
                raise ValueError(f"threshold policy {self.kind!r} needs a confidence C in "
                                 f"(0, 1) ({self.kind}:S@C), got {self.confidence:g}")

    @classmethod
    def parse(cls, text: str) -> ThresholdPolicy:
        """``"sensitivity:0.95"`` -> ThresholdPolicy("sensitivity", 0.95), and
        ``"sensitivity:0.95@0.9"`` with confidence 0.9; ValueError naming the text
        otherwise."""
        kind, sep, raw = str(text).strip().partition(":")
        value = confidence = None
        if sep:
            raw, at, raw_confidence = raw.partition("@")
            try:
                value = float(raw)
                confidence = float(raw_confidence) if at else None
            except ValueError:
                bad = raw_confidence if at and _is_number(raw) else raw
                raise ValueError(f"threshold policy {text!r}: {bad!r} is not a number") from None
        try:
            return cls(kind.strip().lower(), value, confidence)
        except ValueError as exc:
            raise ValueError(f"threshold policy {text!r}: {exc}") from None

    def __str__(self) -> str:
        if self.value is None:
            return self.kind
        at = "" if self.confidence is None else f"@{self.confidence:g}"
        return f"{self.kind}:{self.value:g}{at}"

    @property
    def plain(self) -> ThresholdPolicy:
        """The policy without its confidence (what a label falls back to)."""
        return ThresholdPolicy(self.kind, self.value)

    @property
    def target_metric(self) -> str | None:
        """The metric key a target-rate policy is judged by (None for score policies)."""
        return TARGET_METRICS.get(self.kind)

    def fit_kwargs(self) -> dict[str, Any]:
        """Keywords of `fit_thresholds` for this policy."""
        if self.kind == "fbeta":
            return {"objective": "fbeta", "beta": float(self.value or 1.0)}
        if self.kind in TARGET_METRICS:
            extra = {} if self.confidence is None else {"confidence": self.confidence}
            return {"objective": self.kind, "target": self.value, **extra}
        return {"objective": self.kind}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _forms() -> list[str]:
    forms = [k if v is None else f"{k}:{v.split()[0]}" for k, v in POLICY_KINDS.items()]
    return [*forms, *(f"{k}:S@C" for k in TARGET_METRICS)]


def policy_problem(text: str, flag: str = "--threshold-policy") -> str | None:
    """What is wrong with a policy text (None when it parses): for option validation."""
    try:
        ThresholdPolicy.parse(text)
    except ValueError as exc:
        return f"{flag}: {exc}"
    return None


def _split_override(text: str) -> tuple[str, ThresholdPolicy]:
    label, sep, policy = str(text).partition("=")
    if not sep or not label.strip():
        raise ValueError(f"--threshold-policy-for {text!r}: expected LABEL=POLICY, e.g. "
                         "AFIB=sensitivity:0.98")
    try:
        return label.strip(), ThresholdPolicy.parse(policy)
    except ValueError as exc:
        raise ValueError(f"--threshold-policy-for {text!r}: {exc}") from None


def override_problem(items: Sequence[str]) -> str | None:
    """Syntax problems of ``LABEL=POLICY`` overrides (labels are checked against the data)."""
    seen: set[str] = set()
    for item in items:
        try:
            label, _ = _split_override(item)
        except ValueError as exc:
            return str(exc)
        if label in seen:
            return f"--threshold-policy-for names {label} twice"
        seen.add(label)
    return None


@dataclass(frozen=True)
class PolicySet:
    """A default policy and per-label overrides (label name -> policy)."""

    default: ThresholdPolicy = ThresholdPolicy()
    overrides: tuple[tuple[str, ThresholdPolicy], ...] = ()

    @classmethod
    def parse(cls, default: str = "f1", overrides: Sequence[str] = ()) -> PolicySet:
        problem = override_problem(overrides)
        if problem:
            raise ValueError(problem)
        return cls(ThresholdPolicy.parse(default),
                   tuple(_split_override(item) for item in overrides))

    def check_labels(self, label_names: Sequence[str]) -> None:
        """ValueError naming every override label the label map does not have."""
        unknown = [label for label, _ in self.overrides if label not in set(label_names)]
        if unknown:
            raise ValueError(f"--threshold-policy-for names unknown label(s) "
                             f"{', '.join(unknown)}; labels: {', '.join(label_names)}")

    def for_labels(self, label_names: Sequence[str]) -> list[ThresholdPolicy]:
        self.check_labels(label_names)
        chosen = dict(self.overrides)
        return [chosen.get(name, self.default) for name in label_names]


def fit_policy_thresholds(
    y: Any,
    p: Any,
    policies: Sequence[ThresholdPolicy],
    *,
    min_positives: int = 5,
    fallback: Any = 0.5,
    groups: Sequence[Any] | None = None,
) -> Any:
    """(C,) thresholds, each label by its own policy: `fit_thresholds` once per distinct
    policy, its labels' columns kept. A label under ``challenge`` takes its column of the
    joint fit of all labels (the other labels' thresholds in that fit are the challenge
    ones, whatever their own policy). Labels with fewer than ``min_positives`` positives
    keep ``fallback`` (a float or one value per label)."""
    import numpy as np

    from ecgtune.search.thresholds import fit_thresholds

    y = np.asarray(y)
    # ``fallback``: one value, or one per label (a refit keeps a bundle's own thresholds).
    thresholds = np.array(np.broadcast_to(np.asarray(fallback, np.float64), (y.shape[1],)))
    for policy in dict.fromkeys(policies):
        cols = [j for j, q in enumerate(policies) if q == policy]
        kwargs = policy.fit_kwargs()
        if policy.kind == "challenge" and groups:
            kwargs["groups"] = list(groups)
        fitted = fit_thresholds(y, p, min_positives=min_positives, fallback=fallback, **kwargs)
        thresholds[cols] = fitted[cols]
    return thresholds


def confidence_bounds(y: Any, p: Any, thresholds: Any, policies: Sequence[ThresholdPolicy],
                      label_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """For each label whose policy states a confidence: what its threshold reached on the
    records it was fitted on (``y``, ``p``: that fold's labels and probabilities), as
    ``{label: {target, confidence, rate, count, n, bound, needed, fallback}}``. ``bound`` is
    the one-sided Clopper-Pearson lower bound at the confidence of the achieved rate
    (``count`` of ``n`` positives for sensitivity, negatives for specificity); ``needed`` the
    count the bound needs (None: more than ``n``), and ``fallback`` True when the label had
    too few records for it and took the plain target's cut instead."""
    import numpy as np

    from ecgtune.search.thresholds import clopper_pearson_lower, required_count

    y = np.asarray(y).astype(bool)
    hits = np.asarray(p) >= np.asarray(thresholds, np.float64)[None, :]
    out: dict[str, dict[str, Any]] = {}
    for j, (name, policy) in enumerate(zip(label_names, policies, strict=True)):
        if policy.confidence is None or policy.value is None:
            continue
        if policy.kind == "sensitivity":
            n, count = int(y[:, j].sum()), int((hits[:, j] & y[:, j]).sum())
        else:
            n, count = int((~y[:, j]).sum()), int((~hits[:, j] & ~y[:, j]).sum())
        needed = required_count(n, policy.value, policy.confidence)
        out[name] = {
            "target": policy.value, "confidence": policy.confidence,
            "rate": count / n if n else None, "count": count, "n": n,
            "bound": float(clopper_pearson_lower(count, n, policy.confidence)) if n else None,
            "needed": needed, "fallback": needed is None,
        }
    return out


def policy_record(policies: Sequence[ThresholdPolicy], label_names: Sequence[str],
                  default: ThresholdPolicy) -> dict[str, Any]:
    """bundle.json ``fit.thresholds`` keys naming the policies (default + one per label)."""
    return {"policy": str(default),
            "policies": {name: str(q) for name, q in zip(label_names, policies, strict=True)}}


def policies_from_record(record: Mapping[str, Any] | None,
                         label_names: Sequence[str]) -> list[ThresholdPolicy]:
    """Each label's policy from a bundle's ``fit.thresholds``; a bundle written before
    policies existed records ``objective`` (+ ``beta``) for all labels."""
    record = record or {}
    per_label = record.get("policies")
    if isinstance(per_label, Mapping):
        return [ThresholdPolicy.parse(per_label.get(n, record.get("policy", "f1")))
                for n in label_names]
    objective = str(record.get("objective", "f1"))
    if objective == "fbeta":
        default = ThresholdPolicy("fbeta", float(record.get("beta", 1.0)))
    else:
        default = ThresholdPolicy(objective if objective in POLICY_KINDS else "f1")
    return [default] * len(label_names)
