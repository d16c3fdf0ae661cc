"""MLflow "models from code" entry point of an exported ensemble bundle.

`mlflow.pyfunc.log_model(python_model=<this file>, artifacts={"bundle": DIR})` stores this
source file next to the bundle; loading the model executes it, and `load_context` rebuilds the
ensemble with `ensembles.bundle.load_bundle` (checksums verified). No Python object is pickled.

Input: int16 array (N, 12, n_samples), records preprocessed as `ecgtune prep` stores them
(500 Hz, 10 s, gain 1000/mV for the default manifest). Output: a DataFrame with one calibrated
probability column per label, in label-map order. Over REST (``mlflow models serve``)::

    POST /invocations  {"inputs": [[[...n_samples ints...] x 12 leads] x N records]}
    -> {"predictions": [{"AFIB": 0.01, ..., "WPW": 0.002}, ...]}
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd


class EnsembleBundleModel(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    """Pyfunc wrapper around a bundle's `EnsemblePredictor`."""

    def load_context(self, context: Any) -> None:
        from ecgtune.ensembles.bundle import load_bundle

        self.bundle = load_bundle(context.artifacts["bundle"], device="auto")

    # np.ndarray is a hint MLflow does not turn into its own schema: the logged tensor
    # signature is what validates shape and dtype.
    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        signals = np.asarray(model_input)
        if signals.ndim == 2:  # one record
            signals = signals[None]
        probs = self.bundle.predict_signals(signals)  # checks shape and dtype (int16)
        return pd.DataFrame(probs, columns=self.bundle.label_names)


mlflow.models.set_model(EnsembleBundleModel())
