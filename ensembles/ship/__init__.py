"""The model as it leaves: the pickle-free bundle and its schema, the model input contract
(`InputSpec`), member inference and the ensemble predictor, `predict` on raw WFDB records, the
MLflow pyfunc model and registry, and the ONNX export with its graph rewrites."""
