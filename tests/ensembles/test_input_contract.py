"""The model input contract where stored data or a caller's array meets a bundle
(`InputSpec.check_data`, `InputSpec.signals_from`): data prepared at another rate, length,
gain, units, leads or label map is refused in one line by `evaluate`, its threshold refit and
`export --check-data`; the pyfunc model refuses a wrong shape or float input with one message
(HTTP 400 over REST)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from testkit import saved_pyfunc_model

from ecgtune.ensembles import ModelInputError
from ecgtune.ensembles.ship.input_spec import InputSpec

SPEC = InputSpec(fs=500, seconds=10.0, n_samples=5000, gain=1000.0,
                 norm_mean=(0.0,) * 12, norm_std=(0.25,) * 12)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[tuple[int, float], Path]:
    """The same 12 synthetic records prepared at the bundle's 500 Hz / 10 s and at two other
    settings with the same or twice the sample count."""
    from ecgtune.data_prep import prepare, synthesize

    root = tmp_path_factory.mktemp("input-contract")
    synthesize(root / "raw", 12, seed=7)
    out = {}
    for fs, seconds in ((500, 10.0), (250, 20.0), (500, 20.0)):
        out[fs, seconds] = root / f"p{fs}x{seconds:g}"
        prepare(root / "raw", out[fs, seconds], fs=fs, seconds=seconds, workers=1,
                progress=False)
    return out


# ---------------------------------------------------------------------------------------------
# The commands


@pytest.mark.parametrize(("fs", "seconds"), [(250, 20.0), (500, 20.0)])
def test_evaluate_refuses_data_prepared_for_another_input(tiny_bundle, prepared, tmp_path,
                                                          capsys, fs, seconds):
    from ecgtune.ensembles.cli import main

    data = prepared[fs, seconds]
    out = tmp_path / "report"
    code = main(["evaluate", "--bundle", str(tiny_bundle), "--data", str(data), "--all",
                 "--output", str(out), "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err == (f"ecgtune evaluate: error: data {data} prepared at {fs} Hz, {seconds:g} s; "
                   f"bundle {tiny_bundle} expects 500 Hz, 10 s: re-run `ecgtune prep` with "
                   "--fs 500 --seconds 10")
    assert not out.exists()


def test_data_prepared_by_prep_for_the_bundle_passes(tiny_bundle, prepared):
    from ecgtune.data_prep import read_manifest
    from ecgtune.ensembles.ship.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    bundle.inputs.check_data(read_manifest(prepared[500, 10.0]), data="d", model="b",
                             label_names=bundle.label_names, label_map=bundle.label_map)


def test_export_check_data_refuses_before_tracing(tiny_bundle, prepared, tmp_path, capsys):
    from ecgtune.ensembles.cli import main

    data = prepared[250, 20.0]
    onnx = tmp_path / "m.onnx"
    assert main(["export", "--bundle", str(tiny_bundle), "--output", str(onnx),
                 "--check-data", str(data)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"ecgtune export: error: data {data} prepared at 250 Hz, 20 s; ")
    assert not list(tmp_path.glob("m.onnx*"))


def test_refit_thresholds_checks_the_data_it_fits_on(tiny_bundle, prepared, tmp_path):
    from ecgtune.ensembles import EvaluateOptions, load_bundle
    from ecgtune.ensembles.evaluate.refit import refit_thresholds

    opts = EvaluateOptions(bundle=str(tiny_bundle), data=prepared[500, 20.0],
                           output=tmp_path / "r", refit_thresholds="f1", on_folds=(0,),
                           refit_output=tmp_path / "new", folds=(9,), progress=False)
    with pytest.raises(ModelInputError, match=r"prepared at 500 Hz, 20 s; bundle .* expects "
                       r"500 Hz, 10 s"):
        refit_thresholds(opts, load_bundle(tiny_bundle), [9], "")


# ---------------------------------------------------------------------------------------------
# InputSpec.check_data on manifests


def _manifest(**prep: Any) -> dict[str, Any]:
    from ecgtune.data_prep import get_label_map, preprocessing_spec

    label_map = get_label_map("seed20")
    block = {**preprocessing_spec(500, 10.0, 1000.0), **prep}
    return {"preprocessing": {k: v for k, v in block.items() if v is not None},
            "label_map": label_map.name, "labels": label_map.to_manifest()}


def _names() -> list[str]:
    from ecgtune.data_prep import get_label_map

    return list(get_label_map("seed20").names)


def _check(manifest: dict[str, Any], **kwargs: Any) -> None:
    SPEC.check_data(manifest, data="d", model="b", label_names=_names(), label_map="seed20",
                    **kwargs)


def test_data_prepared_for_the_bundle_passes():
    _check(_manifest())
    SPEC.check_data(_manifest(), data="d", model="b")  # labels not asked: export's check


@pytest.mark.parametrize(("prep", "expected"), [
    ({"fs": 250, "seconds": 20.0, "n_samples": 5000}, "prepared at 250 Hz, 20 s; bundle b "
     "expects 500 Hz, 10 s: re-run `ecgtune prep` with --fs 500 --seconds 10"),
    ({"n_samples": 4096}, "prepared at 500 Hz, 10 s, 4096 samples; bundle b expects 500 Hz, "
     "10 s, 5000 samples"),
    ({"gain": 200.0}, "prepared at 200 units/mV; bundle b expects 1000 units/mV"),
    ({"units": "uV"}, 'prepared at units "uV"; bundle b expects units mV'),
    ({"leads": ["II", "I", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]},
     "prepared at leads II I III"),
    ({"fs": "500"}, 'prepared at "500" Hz, 10 s; bundle b expects 500 Hz, 10 s'),
])
def test_another_input_is_refused_naming_what_differs(prep, expected):
    with pytest.raises(ModelInputError) as info:
        _check(_manifest(**prep))
    assert str(info.value).startswith("data d ")
    assert expected in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_a_manifest_without_preprocessing_is_refused():
    with pytest.raises(ModelInputError, match=r"data d: manifest\.json has no preprocessing"):
        _check({"labels": []})


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda m: m["labels"].pop(0), "differs from the bundle's (seed20, 20 labels): missing AFIB"),
    (lambda m: m["labels"].reverse(), "same labels, another order"),
    (lambda m: m.__setitem__("label_map", "seed20-rbbb"),
     "its label map seed20-rbbb differs from the bundle's (seed20): same label names, other "
     "SNOMED codes; prepare the data with `ecgtune prep --labels seed20`"),
])
def test_another_label_map_is_refused(edit, expected):
    manifest = copy.deepcopy(_manifest())
    edit(manifest)
    with pytest.raises(ModelInputError) as info:
        _check(manifest)
    assert expected in str(info.value)


# ---------------------------------------------------------------------------------------------
# Arrays: InputSpec.signals_from and the pyfunc model


def test_signals_from_takes_records_one_record_and_json_integers():
    x = np.arange(2 * 12 * 5000, dtype=np.int64).reshape(2, 12, 5000) % 2000 - 1000
    out = SPEC.signals_from(x)
    assert out.dtype == np.int16 and out.shape == (2, 12, 5000) and np.array_equal(out, x)
    assert SPEC.signals_from(x[0].tolist()).shape == (1, 12, 5000)
    stored = x.astype(np.int16)
    assert SPEC.signals_from(stored) is stored  # what prep stores goes through as it is


@pytest.mark.parametrize(("values", "expected"), [
    (np.zeros((2, 12, 5000)) + 0.12, "got float64 values (samples are integers at the gain, "
     "not mV)"),
    (np.zeros((2, 12, 4000), np.int16), "got shape (2, 12, 4000)"),
    (np.zeros((2, 11, 5000), np.int16), "got shape (2, 11, 5000)"),
    (np.zeros((5000,), np.int16), "got shape (5000,)"),
    (np.full((1, 12, 5000), 40000, np.int32), "got values outside int16 (40000..40000)"),
    (np.zeros((1, 12, 5000), bool), "got bool values"),
    ([[[0] * 5000] * 12, [[0] * 10] * 12], "got input numpy cannot read as an array"),
])
def test_signals_from_refuses_with_one_message(values, expected):
    with pytest.raises(ModelInputError) as info:
        SPEC.signals_from(values)
    message = str(info.value)
    assert message.startswith("expected int16 records (N, 12, 5000) or one record (12, 5000) "
                              "at 500 Hz, 10 s, 1000 units/mV, as `ecgtune prep` stores them")
    assert expected in message and len(message.splitlines()) == 1


@pytest.fixture(scope="module")
def pyfunc_model(tiny_bundle, tmp_path_factory) -> Any:
    """The tiny bundle saved as the pyfunc model `ecgtune ensemble` logs (same code file and
    signature; no tracking server, no requirement inference)."""
    return saved_pyfunc_model(tiny_bundle, tmp_path_factory.mktemp("pyfunc") / "model")


def _rest(model: Any, values: Any) -> tuple[int, Any]:
    """What `mlflow models serve` answers to POST /invocations {"inputs": values}."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    body = json.dumps({"inputs": values})
    try:
        response = scoring_server.invocations(body, "application/json", model,
                                              model.metadata.get_input_schema())
    except MlflowException as exc:
        return exc.get_http_status_code(), exc.message
    return response.status, json.loads(response.response)


def test_pyfunc_model_over_rest_checks_shape_and_dtype(pyfunc_model, tiny_bundle):
    from ecgtune.ensembles.ship.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    x = np.random.default_rng(0).integers(-800, 800, (2, 12, 5000)).astype(np.int16)
    expected = bundle.predict_signals(x)
    status, payload = _rest(pyfunc_model, x.tolist())
    assert status == 200
    got = np.array([[row[n] for n in bundle.label_names] for row in payload["predictions"]])
    assert np.abs(got - expected).max() <= 1e-12
    status, payload = _rest(pyfunc_model, x[1].tolist())  # one record as (12, 5000)
    assert status == 200 and len(payload["predictions"]) == 1
    # mV floats: refused, where a declared int16 schema would have cast them to zeros.
    status, message = _rest(pyfunc_model, (x / 1000.0).tolist())
    assert status == 400 and "got float64 values (samples are integers at the gain" in message
    status, message = _rest(pyfunc_model, x[:, :, :4000].tolist())
    assert status == 400 and "expected int16 records (N, 12, 5000)" in message
    assert "got shape (2, 12, 4000)" in message


def test_pyfunc_model_in_python_refuses_floats_with_one_message(pyfunc_model):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as info:
        pyfunc_model.predict(np.zeros((1, 12, 5000)))
    assert str(info.value).startswith("expected int16 records (N, 12, 5000)")
    assert pyfunc_model.predict(np.zeros((12, 5000), np.int32)).shape == (1, 20)
