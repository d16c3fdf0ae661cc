"""MLflow "models from code" entry point of an exported ensemble bundle.

`mlflow.pyfunc.log_model(python_model=<this file>, artifacts={"bundle": DIR})` stores this
source file next to the bundle; loading the model executes it, and `load_context` rebuilds the
ensemble with `ensembles.ship.bundle.load_bundle` (checksums verified). No Python object is pickled.

Input: int16 array (N, 12, n_samples), records preprocessed as `ecgtune prep` stores them
(500 Hz, 10 s, gain 1000/mV for the default manifest), or one record (12, n_samples); other
integer dtypes within int16's range are taken, floats and other shapes are refused with one
message (`InputSpec.signals_from`; HTTP 400 over REST); optional parameter `lengths` (one per
record: samples of real signal before prep's zero padding; default: all full length). Output: a
DataFrame with one calibrated probability column per label, in label-map order; a bundle built
with `--refer-rate` adds the bool column `refer` (the record's uncertainty calls for a human,
as `ecgtune predict` and the ONNX graph decide it); a model trained on synthetic records adds
the column `model_trained_on` (e.g. "synthetic:3000"), so that every answer it gives says so,
over REST too. Over REST (``mlflow models serve``)::

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
        from ecgtune.ensembles.ship.bundle import load_bundle

        self.bundle = load_bundle(context.artifacts["bundle"], device="auto")

    # np.ndarray is a hint MLflow does not turn into its own schema, and the logged signature
    # has no input schema (`registry.model_signature`): the bundle's `InputSpec` checks shape
    # and dtype here, in one message, instead of MLflow casting JSON floats to int16.
    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from ecgtune.ensembles.errors import ModelInputError

        try:
            signals = self.bundle.inputs.signals_from(model_input)  # (12, n) is one record
        except ModelInputError as exc:
            # The scoring server answers an MlflowException with HTTP 400 and its message.
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        # `lengths`: real samples per record for records shorter than the window (prep's
        # `length` column); their windows then cover real signal only, as in `predict`.
        lengths = (params or {}).get("lengths")
        try:
            probs, refer = self.bundle.predict_with_referral(
                signals, lengths=np.asarray(lengths) if lengths else None)
        except ValueError as exc:  # lengths that do not fit the records
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        frame = pd.DataFrame(probs, columns=self.bundle.label_names)
        if self.bundle.referral is not None:
            frame[REFER_COLUMN] = refer
        note = synthetic_note(self.bundle)
        if note is not None:
            frame[TRAINED_ON_COLUMN] = note
        return frame


def synthetic_note(bundle: Any) -> str | None:
    """``synthetic:3000`` for a bundle trained on synthetic records, else None."""
    from ecgtune.data_prep import is_synthetic
    from ecgtune.ensembles.ship.predict import trained_on_text

    trained_on = (bundle.metadata.get("fit") or {}).get("trained_on") or {}
    return trained_on_text(trained_on) if is_synthetic(trained_on) else None


TRAINED_ON_COLUMN = "model_trained_on"  # as ensembles.ship.predict's CSV column
REFER_COLUMN = "refer"  # as ensembles.ship.predict's CSV column


mlflow.models.set_model(EnsembleBundleModel())
