"""Probability calibration, sklearn style: ``fit(p, y)`` returns ``self``, fitted attributes end
in ``_``, ``predict(p)`` maps probabilities to calibrated probabilities in [0, 1].

The single-method calibrators (temperature, Platt, isotonic, identity) learn one map from all
the values they are given (any shape; the output keeps the input's shape). `PerLabelCalibrator`
fits one map per label column and picks each label's method by cross-fitted log-loss.

Every calibrator exports to a JSON-serialisable dict (floats and lists only, no pickle):
``to_dict()`` / ``Calibrator.from_dict()``; ``CALIBRATORS`` maps method names to classes.

On the data it was fitted on, a calibrator never has a worse Brier score than its input (up to
the clipping of probabilities to [EPS, 1 - EPS]): isotonic regression minimises squared error
over monotone maps, which include the identity; the parametric maps are shrunk toward the
identity along a line in parameter space when their log-loss optimum would raise the Brier
score (log-loss is convex in those parameters, so it stays no worse than the identity's).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression

from ecgtune.ensembles.evaluate.scores import EPS, brier, log_loss

__all__ = [
    "CALIBRATORS",
    "EPS",
    "Calibrator",
    "IdentityCalibrator",
    "IsotonicCalibrator",
    "PerLabelCalibrator",
    "PlattCalibrator",
    "TemperatureCalibrator",
]
# Shrink factors tried, largest first, when a parametric fit would raise the Brier score.
_SHRINK = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0)


def _clip(p: np.ndarray) -> np.ndarray:
    return np.clip(p, EPS, 1.0 - EPS)


def _logit(p: np.ndarray) -> np.ndarray:
    p = _clip(p)
    return np.log(p) - np.log1p(-p)


def _fit_inputs(p: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=np.float64).ravel()
    y = np.asarray(y).ravel()
    if p.shape != y.shape:
        raise ValueError(f"probabilities ({p.size}) and labels ({y.size}) differ in size")
    if p.size == 0:
        raise ValueError("cannot calibrate on empty data")
    if not np.isfinite(p).all():
        raise ValueError("probabilities must be finite")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be binary (0/1)")
    return p, y.astype(bool)


def _shrink_to_identity(
    params: np.ndarray, identity: np.ndarray, apply: Any, p: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """Largest step from the identity toward ``params`` whose Brier score on (p, y) is no
    worse than the identity's (step 0, the identity itself, always qualifies)."""
    base = brier(y, apply(identity, p))
    for s in _SHRINK:
        cand = identity + s * (params - identity)
        if brier(y, apply(cand, p)) <= base:
            return cand
    return identity


class Calibrator(ABC):
    """Interface of all calibrators (contract tests run over ``CALIBRATORS``)."""

    name: ClassVar[str]

    @abstractmethod
    def fit(self, p: Any, y: Any) -> Calibrator:
        """Learn the map from probabilities ``p`` to labels ``y`` (same size); returns self."""

    @abstractmethod
    def _predict(self, p: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _params(self) -> dict[str, Any]: ...

    @abstractmethod
    def _set_params(self, params: dict[str, Any]) -> None: ...

    @abstractmethod
    def _is_fitted(self) -> bool: ...

    def predict(self, p: Any) -> np.ndarray:
        """Calibrated probabilities, same shape as ``p``."""
        if not self._is_fitted():
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")
        p = np.asarray(p, dtype=np.float64)
        return self._predict(p)

    def fit_predict(self, p: Any, y: Any) -> np.ndarray:
        return self.fit(p, y).predict(p)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: ``{"method": name, "params": {...}}``."""
        if not self._is_fitted():
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")
        return {"method": self.name, "params": self._params()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        """Rebuild a fitted calibrator from `to_dict` output; called on `Calibrator` it picks
        the class from ``data["method"]``."""
        method = data.get("method")
        if method not in CALIBRATORS:
            raise ValueError(f"unknown calibrator {method!r}; valid: {sorted(CALIBRATORS)}")
        klass = CALIBRATORS[method]
        if not issubclass(klass, cls):
            raise ValueError(f"{method!r} is not a {cls.__name__}")
        obj = klass.__new__(klass)
        obj._set_params(data["params"])
        return obj

    def __repr__(self) -> str:
        state = self._params() if self._is_fitted() else "unfitted"
        return f"{type(self).__name__}({state})"


class IdentityCalibrator(Calibrator):
    """Leaves probabilities unchanged (clipped to [0, 1]); the do-nothing baseline."""

    name = "identity"

    def fit(self, p: Any, y: Any) -> IdentityCalibrator:
        _fit_inputs(p, y)
        self.fitted_ = True
        return self

    def _predict(self, p: np.ndarray) -> np.ndarray:
        return np.clip(p, 0.0, 1.0)

    def _params(self) -> dict[str, Any]:
        return {}

    def _set_params(self, params: dict[str, Any]) -> None:
        self.fitted_ = True

    def _is_fitted(self) -> bool:
        return getattr(self, "fitted_", False)


class TemperatureCalibrator(Calibrator):
    """``sigmoid(logit(p) / T)`` with one temperature ``temperature_`` in [t_min, t_max],
    fitted by minimising log-loss (bounded scalar search over log T)."""

    name = "temperature"

    def __init__(self, t_min: float = 0.05, t_max: float = 20.0) -> None:
        self.t_min = t_min
        self.t_max = t_max

    @staticmethod
    def _apply(inv_t: np.ndarray, p: np.ndarray) -> np.ndarray:
        return _clip(expit(_logit(p) * inv_t[0]))

    def fit(self, p: Any, y: Any) -> TemperatureCalibrator:
        p, y = _fit_inputs(p, y)
        z = _logit(p)

        def loss(log_t: float) -> float:
            u = z * np.exp(-log_t)
            return float(np.mean(np.logaddexp(0.0, u) - y * u))

        res = minimize_scalar(
            loss,
            bounds=(np.log(self.t_min), np.log(self.t_max)),
            method="bounded",
            options={"xatol": 1e-5},
        )
        # Work with 1/T: log-loss is convex in it, which the Brier safeguard relies on.
        inv_t = np.array([np.exp(-res.x)]) if res.fun <= loss(0.0) else np.array([1.0])
        inv_t = _shrink_to_identity(inv_t, np.array([1.0]), self._apply, p, y)
        self.temperature_ = float(1.0 / inv_t[0])
        return self

    def _predict(self, p: np.ndarray) -> np.ndarray:
        return self._apply(np.array([1.0 / self.temperature_]), p)

    def _params(self) -> dict[str, Any]:
        return {"temperature": self.temperature_, "t_min": self.t_min, "t_max": self.t_max}

    def _set_params(self, params: dict[str, Any]) -> None:
        self.t_min = float(params.get("t_min", 0.05))
        self.t_max = float(params.get("t_max", 20.0))
        self.temperature_ = float(params["temperature"])

    def _is_fitted(self) -> bool:
        return hasattr(self, "temperature_")


def _platt_newton(z: np.ndarray, t: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """Minimise the cross-entropy of ``sigmoid(a z + b)`` against soft targets ``t`` by
    Newton's method with backtracking (Lin, Lin & Weng 2007), starting from the identity."""

    def loss(ab: np.ndarray) -> float:
        u = ab[0] * z + ab[1]
        # log(1 + e^u) - t u, written stably.
        return float(np.mean(np.logaddexp(0.0, u) - t * u))

    ab = np.array([1.0, 0.0])
    f = loss(ab)
    for _ in range(max_iter):
        q = expit(ab[0] * z + ab[1])
        r = q - t
        grad = np.array([np.mean(r * z), np.mean(r)])
        if np.abs(grad).max() < 1e-10:
            break
        h = q * (1.0 - q)
        hzz, hz, h1 = np.mean(h * z * z), np.mean(h * z), np.mean(h)
        hess = np.array([[hzz, hz], [hz, h1]]) + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        lr = 1.0
        while lr > 1e-10:
            cand = ab - lr * step
            fc = loss(cand)
            if fc <= f - 1e-4 * lr * float(grad @ step):
                break
            lr *= 0.5
        else:
            break
        converged = f - fc < 1e-14
        ab, f = cand, fc
        if converged:
            break
    return ab


class PlattCalibrator(Calibrator):
    """``sigmoid(a_ * logit(p) + b_)`` (Platt 1999 on logits), fitted by Newton's method on
    log-loss with Platt's smoothed targets ((P + 1) / (P + 2) for positives, 1 / (N + 2) for
    negatives), which keep the fit finite on separable data. ``a_`` is kept >= 0 so that the
    map is monotone; on anti-correlated data it degenerates to a constant."""

    name = "platt"

    @staticmethod
    def _apply(ab: np.ndarray, p: np.ndarray) -> np.ndarray:
        return _clip(expit(ab[0] * _logit(p) + ab[1]))

    def fit(self, p: Any, y: Any) -> PlattCalibrator:
        p, y = _fit_inputs(p, y)
        n_pos = int(y.sum())
        n_neg = y.size - n_pos
        t = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
        ab = _platt_newton(_logit(p), t)
        if ab[0] < 0:
            # Best constant under the smoothed targets.
            ab = np.array([0.0, float(_logit(np.array(t.mean())))])
        ab = _shrink_to_identity(ab, np.array([1.0, 0.0]), self._apply, p, y)
        self.a_, self.b_ = float(ab[0]), float(ab[1])
        return self

    def _predict(self, p: np.ndarray) -> np.ndarray:
        return self._apply(np.array([self.a_, self.b_]), p)

    def _params(self) -> dict[str, Any]:
        return {"a": self.a_, "b": self.b_}

    def _set_params(self, params: dict[str, Any]) -> None:
        self.a_ = float(params["a"])
        self.b_ = float(params["b"])

    def _is_fitted(self) -> bool:
        return hasattr(self, "a_")


class IsotonicCalibrator(Calibrator):
    """Monotone step-linear map fitted by sklearn's ``IsotonicRegression`` and stored as the
    plain arrays ``x_thresholds_`` / ``y_thresholds_``; applied with ``np.interp`` (constant
    beyond the fitted range) and clipped to [EPS, 1 - EPS] so that log-loss stays finite."""

    name = "isotonic"

    def fit(self, p: Any, y: Any) -> IsotonicCalibrator:
        p, y = _fit_inputs(p, y)
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(p, y.astype(np.float64))
        self.x_thresholds_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.y_thresholds_ = np.asarray(iso.y_thresholds_, dtype=np.float64)
        return self

    def _predict(self, p: np.ndarray) -> np.ndarray:
        return _clip(np.interp(p, self.x_thresholds_, self.y_thresholds_))

    def _params(self) -> dict[str, Any]:
        return {"x": self.x_thresholds_.tolist(), "y": self.y_thresholds_.tolist()}

    def _set_params(self, params: dict[str, Any]) -> None:
        self.x_thresholds_ = np.asarray(params["x"], dtype=np.float64)
        self.y_thresholds_ = np.asarray(params["y"], dtype=np.float64)

    def _is_fitted(self) -> bool:
        return hasattr(self, "x_thresholds_")


def _stratified_folds(y: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold id per sample: positives and negatives each shuffled and dealt round-robin."""
    folds = np.empty(len(y), dtype=np.int64)
    for cls in (True, False):
        idx = rng.permutation(np.flatnonzero(y == cls))
        folds[idx] = np.arange(len(idx)) % n_folds
    return folds


class PerLabelCalibrator(Calibrator):
    """One calibrator per label column, each label's method chosen by cross-fitted log-loss.

    For each label, every method in ``methods`` is fitted on ``cv - 1`` stratified folds
    (shuffled with ``seed``) and scored by log-loss on the held-out fold; the method with the
    lowest out-of-fold log-loss (the earlier one in ``methods`` on ties) is refitted on all the
    label's data.

    Fallback: a label with fewer than ``cv`` positives or fewer than ``cv`` negatives cannot be
    cross-fitted. It gets a temperature (one parameter: hard to overfit) fitted on all its data
    when it has at least one positive and one negative, and the identity otherwise (a single
    class carries no calibration information). A single candidate method is fitted directly.

    With ``rule`` worst-source / mean-source and the records' ``sources`` given to `fit`, a
    method's out-of-fold log-loss is the worst / mean over the sources instead of the loss of
    all records together: a method that suits one site and fails another loses.

    Fitted attributes: ``calibrators_`` (one per label), ``methods_`` (chosen names),
    ``cv_log_loss_`` (C, len(methods)), NaN where a label was not cross-fitted, ``n_labels_``.
    """

    name = "per_label"

    def __init__(
        self,
        methods: Sequence[str] = ("temperature", "platt", "isotonic"),
        cv: int = 5,
        seed: int = 0,
        rule: str = "all",
    ) -> None:
        self.methods = tuple(methods)
        self.cv = cv
        self.seed = seed
        self.rule = rule

    def _validate(self) -> None:
        if not self.methods:
            raise ValueError("need at least one calibration method")
        for m in self.methods:
            if m not in CALIBRATORS or m == self.name:
                valid = sorted(k for k in CALIBRATORS if k != self.name)
                raise ValueError(f"unknown calibration method {m!r}; valid: {valid}")
        if self.cv < 2:
            raise ValueError("cv must be at least 2")

    def _oof_loss(self, y: np.ndarray, oof: np.ndarray, sources: np.ndarray | None) -> float:
        if sources is None or self.rule == "all":
            return float(log_loss(y, oof))
        losses = [float(log_loss(y[sources == s], oof[sources == s]))
                  for s in np.unique(sources)]
        return max(losses) if self.rule == "worst-source" else float(np.mean(losses))

    def fit(self, p: Any, y: Any, sources: Any = None) -> PerLabelCalibrator:
        self._validate()
        sources = None if sources is None else np.asarray(sources).astype(str)
        p = np.asarray(p, dtype=np.float64)
        y = np.asarray(y)
        if p.ndim != 2 or p.shape != y.shape:
            raise ValueError(
                f"need probabilities and labels of shape (N, C), got {p.shape}, {y.shape}"
            )
        _fit_inputs(p, y)
        y = y.astype(bool)
        n_labels = p.shape[1]
        cv_loss = np.full((n_labels, len(self.methods)), np.nan)
        calibrators: list[Calibrator] = []
        chosen: list[str] = []
        for c in range(n_labels):
            pc, yc = p[:, c], y[:, c]
            n_pos = int(yc.sum())
            n_neg = len(yc) - n_pos
            if len(self.methods) == 1:
                method = self.methods[0] if min(n_pos, n_neg) > 0 else "identity"
            elif min(n_pos, n_neg) >= self.cv:
                rng = np.random.default_rng([self.seed, c])
                folds = _stratified_folds(yc, self.cv, rng)
                for j, m in enumerate(self.methods):
                    oof = np.empty(len(pc))
                    for k in range(self.cv):
                        test = folds == k
                        cal = CALIBRATORS[m]().fit(pc[~test], yc[~test])
                        oof[test] = cal.predict(pc[test])
                    cv_loss[c, j] = self._oof_loss(yc, oof, sources)
                method = self.methods[int(np.argmin(cv_loss[c]))]
            else:
                method = "temperature" if min(n_pos, n_neg) > 0 else "identity"
            calibrators.append(CALIBRATORS[method]().fit(pc, yc))
            chosen.append(method)
        self.calibrators_ = calibrators
        self.methods_ = chosen
        self.cv_log_loss_ = cv_loss
        self.n_labels_ = n_labels
        return self

    def _predict(self, p: np.ndarray) -> np.ndarray:
        if p.ndim != 2 or p.shape[1] != self.n_labels_:
            raise ValueError(f"expected (N, {self.n_labels_}) probabilities, got {p.shape}")
        return np.stack([cal.predict(p[:, c]) for c, cal in enumerate(self.calibrators_)], axis=1)

    def _params(self) -> dict[str, Any]:
        return {
            "methods": list(self.methods),
            "cv": self.cv,
            "seed": self.seed,
            "rule": self.rule,
            "calibrators": [cal.to_dict() for cal in self.calibrators_],
            # Diagnostics only; NaN (not cross-fitted) becomes None to stay valid JSON.
            "cv_log_loss": [
                [None if np.isnan(v) else float(v) for v in row] for row in self.cv_log_loss_
            ],
        }

    def _set_params(self, params: dict[str, Any]) -> None:
        self.methods = tuple(params["methods"])
        self.cv = int(params["cv"])
        self.seed = int(params["seed"])
        self.rule = str(params.get("rule", "all"))
        self.calibrators_ = [Calibrator.from_dict(d) for d in params["calibrators"]]
        self.methods_ = [d["method"] for d in params["calibrators"]]
        self.n_labels_ = len(self.calibrators_)
        loss = params.get("cv_log_loss")
        self.cv_log_loss_ = (
            np.array([[np.nan if v is None else v for v in row] for row in loss], dtype=float)
            if loss is not None
            else np.full((self.n_labels_, len(self.methods)), np.nan)
        )

    def _is_fitted(self) -> bool:
        return hasattr(self, "calibrators_")


CALIBRATORS: dict[str, type[Calibrator]] = {
    IdentityCalibrator.name: IdentityCalibrator,
    TemperatureCalibrator.name: TemperatureCalibrator,
    PlattCalibrator.name: PlattCalibrator,
    IsotonicCalibrator.name: IsotonicCalibrator,
    PerLabelCalibrator.name: PerLabelCalibrator,
}
