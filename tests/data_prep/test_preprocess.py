from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ecgtune.data_prep import RecordError, preprocess_record, preprocessing_spec, read_record
from ecgtune.data_prep.reader import STANDARD_LEADS, RawRecord


def _raw(digital: np.ndarray, fs: float = 500, gain: float = 1000, baseline: int = 0,
         units: str = "mV") -> RawRecord:
    return RawRecord(
        name="R", source="R.hea", fs=fs, digital=digital,
        gains=np.full(12, gain, np.float64), baselines=np.full(12, baseline, np.int64),
        units=(units,) * 12, adc_bits=16, age=None, sex=None, dx_codes=(), reader="fast",
    )


def _sines(fs: float, seconds: float, freq: float, amp_mv: float, gain: float) -> np.ndarray:
    t = np.arange(round(fs * seconds)) / fs
    lead = amp_mv * np.sin(2 * np.pi * freq * t)
    return np.rint(np.tile(lead, (12, 1)) * gain).astype(np.int32)


def test_real_records_are_bit_identical(real_dir: Path) -> None:
    for hea in sorted(real_dir.glob("*.hea")):
        raw = read_record(hea)
        sig, info = preprocess_record(raw, check=False)
        assert info.exact and info.resampled is None and (info.cropped, info.padded) == (0, 0)
        assert sig.dtype == np.int16 and sig.flags.c_contiguous
        np.testing.assert_array_equal(sig, raw.digital)


@pytest.mark.parametrize("fs_in", [257, 1000, 250.0, 360])
def test_resampling_keeps_amplitude_and_frequency(fs_in: float) -> None:
    raw = _raw(_sines(fs_in, 10, 7.0, 1.5, 200), fs=fs_in, gain=200)
    sig, info = preprocess_record(raw, check=False)
    assert sig.shape == (12, 5000) and info.resampled is not None
    x = sig[0, 250:-250] / 1000.0  # away from the filter's edge transients
    assert abs(np.abs(x).max() - 1.5) < 0.02
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    peak_hz = np.argmax(spectrum) * 500 / x.size
    assert abs(peak_hz - 7.0) < 0.15


def test_crop_is_centred_and_pad_is_zeros_at_the_end() -> None:
    long = np.arange(12 * 15000, dtype=np.int32).reshape(12, 15000) % 3000 - 1500
    sig, info = preprocess_record(_raw(long), check=False)
    np.testing.assert_array_equal(sig, long[:, 5000:10000])
    assert (info.cropped, info.padded, info.exact) == (10000, 0, True)

    short = _sines(500, 6, 3.0, 1.0, 1000)
    sig, info = preprocess_record(_raw(short), check=False)
    np.testing.assert_array_equal(sig[:, :3000], short)
    assert not sig[:, 3000:].any() and (info.cropped, info.padded) == (0, 2000)


def test_long_resampled_record_is_cropped_around_its_centre() -> None:
    # 30 s at 1000 Hz with a marker burst at the centre: it must land mid-window.
    x = np.zeros((12, 30000), np.int32)
    x[:, 14990:15010] = 2000
    sig, info = preprocess_record(_raw(x, fs=1000), check=False)
    assert info.resampled == "1/2"
    centre = np.argmax(sig[0])
    assert abs(centre - 2500) <= 5


@pytest.mark.parametrize(("gain", "baseline", "units", "scale"), [
    (200.0, 0, "mV", 1.0), (1000.0, 25, "mV", 1.0), (48.8, -10, "mV", 1.0), (1.0, 0, "uV", 1e-3),
])
def test_calibration_to_fixed_gain(gain: float, baseline: int, units: str, scale: float) -> None:
    rng = np.random.default_rng(0)
    d = rng.integers(-900, 900, size=(12, 5000)) + baseline
    sig, _ = preprocess_record(_raw(d, gain=gain, baseline=baseline, units=units), check=False)
    expected = np.rint((d - baseline) / gain * scale * 1000)
    np.testing.assert_array_equal(sig, expected)


def test_values_beyond_int16_are_quarantined_not_clipped() -> None:
    d = np.zeros((12, 5000), np.int32)
    d[4, 100] = 8000  # 40 mV at gain 200 -> 40,000 units at gain 1000
    with pytest.raises(RecordError) as err:
        preprocess_record(_raw(d, gain=200), check=False)
    assert err.value.code == "saturated_lead" and "aVL" in err.value.detail


def test_quality_gates_run_by_default(real_dir: Path) -> None:
    raw = read_record(real_dir / "JS20004.hea")
    _, info = preprocess_record(raw)
    assert info.flat_leads == ("V2", "V4", "V6")  # a warning: the other leads are read
    flat = replace(raw, digital=np.full_like(raw.digital, 3))  # a constant offset is flat
    with pytest.raises(RecordError) as err:
        preprocess_record(flat)
    assert err.value.code == "all_flat"
    assert preprocess_record(flat, check=False)[0].shape == (12, 5000)


def test_padding_does_not_hide_a_flat_lead() -> None:
    d = _sines(500, 6, 3.0, 1.0, 1000)
    d[2] = 400  # constant 0.4 mV: flat, though the zero padding would give it a 0.4 mV swing
    _, info = preprocess_record(_raw(d))
    assert info.padded == 2000 and info.flat_leads == ("III",)


def test_spec_describes_the_output() -> None:
    spec = preprocessing_spec(500, 10, 1000)
    assert spec["n_samples"] == 5000 and spec["gain"] == 1000 and spec["fs"] == 500
    assert spec["crop"] == "center" and spec["pad"] == "zeros at end"
    assert spec["leads"] == list(STANDARD_LEADS) and "resample_poly" in spec["resample"]
