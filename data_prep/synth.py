"""Synthetic 12-lead ECG records in the ecg-arrhythmia layout (`ecgtune synth`).

Each record is drawn in two steps from generators seeded by (seed, record index), so output is
byte-for-byte reproducible and independent of the number of workers:

1. `draw_spec`: labels with realistic imbalance and co-occurrence (rhythm labels exclusive,
   LAFB usually with LAD, no P-wave findings with AFIB, ...), the SNOMED codes that express them
   (weighted by the real record counts), age and sex.
2. `render_mv`: a cardiac dipole (3-D, sum of Gaussian waves per beat: P, septal q, R, S, T and
   the label-specific extra waves) placed along a rhythm-specific beat series, projected onto
   nine electrodes (RA, LA, LL, V1-V6) with noise and baseline wander added per electrode, then
   combined into the 12 leads, so Einthoven and Goldberger relations hold (III = II - I exactly
   in the stored integers).

Sources (`synthesize(..., sources=N)`, `ecgtune synth --sources N`): records from N simulated
sites (`SITES`), record i from site (i - 1) mod N. Each site records at its own sampling rate
(`prep` resamples it, as it does other databases), with its own electrode noise and baseline
wander levels, an amplifier gain error (the header says 1000 units/mV; the true gain is off by
the site's fraction), its front-end filter (high-pass and low-pass, zero-phase Butterworth) and
its own label prevalence (rhythm mix, ST/T changes, first-degree AV block). The header's
`#Source: NAME` comment names the site; `prep` stores it in the shards' `source` column.

Label features a small CNN can see in a 4,096-sample crop: heart rate (SB < 60, GSVT > 100 bpm),
irregular RR without P waves plus fibrillatory or flutter baseline (AFIB), P waves dissociated
from slow QRS (CAVB), PR interval (1AVB long, WPW short with a delta wave), premature beats
(APB with abnormal P; VPB wide without P), QRS width and lead-specific shape (RSR' in V1 for
CRBBB, broad notched R in I/V6 with QS in V1 for CLBBB), frontal axis (LAD/RAD; LAFB with small
q in I/aVL), voltage (LQV low everywhere, LVH/RVH tall in their precordial leads), pacing spikes
(PACE), deep Q waves (QWA) and ST/T changes (STTA).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import REASON_CODES, WARNING_CODES
from .labels import get_label_map
from .provenance import SYNTHETIC_COMMENT
from .reader import STANDARD_LEADS

__all__ = [
    "FAULT_KINDS",
    "SITES",
    "RecordSpec",
    "SiteProfile",
    "SynthResult",
    "draw_spec",
    "make_record",
    "record_relpath",
    "render_mv",
    "site_of",
    "synthesize",
    "write_faulty_record",
    "write_record",
]

# Unlabeled codes (not targets in seed20) with their record counts in ecg-arrhythmia.
_UNLABELED: dict[str, int] = {
    "698252002": 771, "61721007": 653, "59118001": 649, "365413008": 638, "111975006": 394,
    "6374002": 385, "428417006": 366, "713426002": 246, "251223006": 215, "106068003": 215,
}
_JUNCTIONAL = "426664006"  # accelerated junctional rhythm
_ATRIAL_RHYTHM = "106068003"  # atrial rhythm (ectopic)
_NBBB = "59118001"  # nonspecific BBB: scored as CRBBB by the seed20-rbbb map
_IDC = "698252002"  # nonspecific intraventricular conduction delay

# Rhythm label probabilities; None: no target rhythm (junctional or ectopic atrial rhythm).
_RHYTHMS: tuple[tuple[str | None, float], ...] = (
    ("AFIB", 0.18), ("CAVB", 0.03), ("GSVT", 0.16), ("SB", 0.30), ("SR", 0.26), (None, 0.07),
)
# How each code of a rhythm or STTA label is drawn.
_RHYTHM_KIND = {
    "164889003": "afib", "164890007": "flutter", "27885002": "cavb", "427084000": "sinus_tachy",
    "713422000": "atrial_tachy", "426761007": "svt", "233897008": "svt",
    "195101003": "atrial_tachy", "426177001": "sinus_brady", "426783006": "sinus",
    "427393009": "sinus_irregular",
}
_STT_KIND = {
    "429622005": "st_dep", "164931005": "st_elev", "164930006": "st_dep", "428750005": "st_t",
    "55930002": "st_t", "164934002": "t_flat", "59931005": "t_inv",
}

# Electrode directions (x: patient's left, y: inferior, z: anterior). Limb electrodes follow
# the Einthoven triangle (lead I at 0°, II at 60°, aVF at 90°); chest electrodes lie in the
# horizontal plane from V1 (right of the sternum) to V6 (left mid-axillary), larger because
# they sit closer to the heart.
_LIMB = 0.75 * np.array([[-0.866, -0.5, 0.0], [0.866, -0.5, 0.0], [0.0, 1.0, 0.0]])
_CHEST_DEG = np.array([120.0, 95.0, 75.0, 55.0, 30.0, 5.0])
_CHEST_GAIN = np.array([1.8, 3.0, 3.4, 3.2, 2.6, 2.0])
_CHEST = np.stack(
    [np.cos(np.radians(_CHEST_DEG)), np.full(6, 0.1), np.sin(np.radians(_CHEST_DEG))], axis=1
) * _CHEST_GAIN[:, None]
_ELECTRODES = np.concatenate([_LIMB, _CHEST])  # (9, 3): RA, LA, LL, V1..V6


def _unit(*v: float) -> np.ndarray:
    a = np.array(v, dtype=np.float64)
    return a / np.linalg.norm(a)


@dataclass(frozen=True)
class RecordSpec:
    """What a synthetic record shows: target labels, codes, demographics, rendering choices."""

    index: int
    labels: frozenset[str]
    dx_codes: tuple[str, ...]
    age: int | None
    sex: str
    rhythm: str  # rendering kind, e.g. "sinus", "afib", "flutter", "cavb", "junctional"
    stt: str | None  # ST/T pattern when STTA
    q_territory: str | None  # "inferior" | "anterior" | "lateral" when QWA
    nbbb: bool
    idc: bool


@dataclass(frozen=True)
class SiteProfile:
    """How one simulated site records: what `--sources` varies between sites."""

    name: str
    fs: float  # Hz: the site's recorders; prep resamples to its --fs
    noise: float  # electrode noise, times the base level (0.002-0.01 mV per electrode)
    wander: float  # baseline wander amplitude, times the base level (up to 0.1 mV)
    gain_error: float  # true gain / stated gain - 1: every amplitude is off by this fraction
    highpass_hz: float | None  # front-end high-pass corner (None: DC-coupled)
    lowpass_hz: float | None  # front-end low-pass corner (None: up to Nyquist)
    rhythms: tuple[float, ...]  # weights of _RHYTHMS (AFIB, CAVB, GSVT, SB, SR, other)
    stta: float = 1.0  # ST/T change prevalence, times the base
    avb1: float = 1.0  # first-degree AV block prevalence, times the base


# Spread like the databases of the CinC 2021 challenge (257 to 1000 Hz; monitoring-grade 40 Hz
# low-pass beside diagnostic 150 Hz; rhythm mixes from a cardiology ward to a general clinic).
SITES: tuple[SiteProfile, ...] = (
    SiteProfile("site-a", 500, noise=1.0, wander=1.0, gain_error=0.0, highpass_hz=None,
                lowpass_hz=150, rhythms=(0.18, 0.03, 0.16, 0.30, 0.26, 0.07)),
    SiteProfile("site-b", 250, noise=5.0, wander=0.5, gain_error=0.15, highpass_hz=0.5,
                lowpass_hz=40, rhythms=(0.34, 0.04, 0.10, 0.18, 0.26, 0.08), stta=1.6),
    SiteProfile("site-c", 1000, noise=0.5, wander=3.0, gain_error=-0.15, highpass_hz=None,
                lowpass_hz=100, rhythms=(0.08, 0.02, 0.12, 0.28, 0.44, 0.06), stta=0.6,
                avb1=2.0),
    SiteProfile("site-d", 360, noise=2.0, wander=1.5, gain_error=0.06, highpass_hz=0.67,
                lowpass_hz=150, rhythms=(0.14, 0.03, 0.30, 0.22, 0.24, 0.07)),
    SiteProfile("site-e", 257, noise=3.0, wander=2.0, gain_error=-0.08, highpass_hz=0.5,
                lowpass_hz=60, rhythms=(0.22, 0.05, 0.14, 0.26, 0.26, 0.07), stta=1.3),
    SiteProfile("site-f", 400, noise=1.5, wander=0.8, gain_error=0.1, highpass_hz=0.05,
                lowpass_hz=120, rhythms=(0.12, 0.02, 0.20, 0.36, 0.24, 0.06), avb1=0.5),
)


def site_of(index: int, sources: int) -> SiteProfile | None:
    """The site of record `index` (1-based) among `sources` sites; None without sources."""
    if sources <= 0:
        return None
    if sources > len(SITES):
        raise ValueError(f"--sources {sources}: at most {len(SITES)} simulated sites")
    return SITES[(index - 1) % sources]


@dataclass(frozen=True)
class SynthResult:
    output_dir: Path
    n: int
    seed: int
    label_counts: dict[str, int]
    # With sources: site -> records, and site -> label -> positives.
    source_counts: dict[str, int] | None = None
    source_label_counts: dict[str, dict[str, int]] | None = None


def _pick_code(rng: np.random.Generator, label: str) -> str:
    lm = get_label_map("seed20")
    codes = lm.labels[lm.names.index(label)].codes
    w = np.array([lm.code_counts.get(c, 1) for c in codes], dtype=np.float64)
    return str(codes[rng.choice(len(codes), p=w / w.sum())])


def draw_spec(seed: int, index: int, site: SiteProfile | None = None) -> RecordSpec:
    """Labels, codes and demographics of record `index` (cheap: no signal); `site` changes
    the prevalences (the draws stay the same, so without a site the bytes do too)."""
    # Reads better whole: one draw after another from one seeded stream, whose order fixes
    # the bytes of every synthetic record (splitting it would hide that order).
    rng = np.random.default_rng([seed, index, 0])
    names = [r for r, _ in _RHYTHMS]
    weights = np.array(site.rhythms, np.float64) if site is not None else None
    rhythm_label = names[rng.choice(len(names), p=[p for _, p in _RHYTHMS] if weights is None
                                    else weights / weights.sum())]
    stta, avb1 = (1.0, 1.0) if site is None else (site.stta, site.avb1)
    labels: set[str] = set()
    codes: list[str] = []

    def add(label: str, code: str | None = None) -> str:
        labels.add(label)
        code = code or _pick_code(rng, label)
        codes.append(code)
        return code

    if rhythm_label is None:
        rhythm = "junctional" if rng.random() < 0.5 else "ectopic_atrial"
        codes.append(_JUNCTIONAL if rhythm == "junctional" else _ATRIAL_RHYTHM)
    else:
        rhythm = _RHYTHM_KIND[add(rhythm_label)]
    sinus_like = rhythm_label in ("SR", "SB")
    u = rng.random(16)  # one uniform per decision keeps the stream layout fixed
    if sinus_like and u[0] < 0.07 * avb1:
        add("1AVB")
    if rhythm_label in ("SR", "SB", "GSVT") and u[1] < 0.05:
        add("APB")
    if u[2] < 0.04:
        add("VPB")
    if u[3] < 0.03:
        add("PACE")
    elif u[4] < 0.03:
        add("CLBBB")
    elif u[4] < 0.065:
        add("CRBBB")
    blocks = labels & {"1AVB", "PACE", "CLBBB", "CRBBB"}
    if sinus_like and not blocks and u[5] < 0.06:
        add("WPW")
    if u[6] < 0.03:
        add("LAFB")
        if u[7] < 0.8:
            add("LAD")
    elif u[7] < 0.035:
        add("LAD")
    elif u[7] < 0.065:
        add("RAD")
    if u[8] < 0.03:
        add("LQV")
    elif u[9] < 0.12:
        add("LVH")
    elif u[9] < 0.15:
        add("RVH")
        if "LAD" not in labels and "RAD" not in labels and u[10] < 0.5:
            add("RAD")
    q_territory = None
    if u[11] < 0.035:
        add("QWA")
        q_territory = ("inferior", "anterior", "lateral")[int(rng.integers(3))]
    stt = None
    if u[12] < (0.5 if "LVH" in labels else 0.28) * stta:
        stt = _STT_KIND[add("STTA")]
        if rng.random() < 0.3:  # real headers often list two ST/T codes
            extra = _pick_code(rng, "STTA")
            if extra not in codes:
                codes.append(extra)
    conduction_free = not (labels & {"PACE", "CLBBB", "CRBBB", "WPW"})
    nbbb = conduction_free and u[13] < 0.02
    idc = conduction_free and not nbbb and u[14] < 0.02
    if nbbb:
        codes.append(_NBBB)
    if idc:
        codes.append(_IDC)
    if u[15] < 0.05:
        pool = [c for c in _UNLABELED if c not in (_NBBB, _IDC, _ATRIAL_RHYTHM)]
        w = np.array([_UNLABELED[c] for c in pool], dtype=np.float64)
        codes.append(pool[rng.choice(len(pool), p=w / w.sum())])
    age = None if rng.random() < 0.01 else int(np.clip(rng.normal(60, 16), 18, 95))
    sex = "Male" if rng.random() < 0.56 else "Female"
    return RecordSpec(
        index=index, labels=frozenset(labels), dx_codes=tuple(dict.fromkeys(codes)), age=age,
        sex=sex, rhythm=rhythm, stt=stt, q_territory=q_territory, nbbb=nbbb, idc=idc,
    )


# ----------------------------------------------------------------------------- rendering


@dataclass
class _Wave:
    t: float  # centre, s, relative to QRS onset (P template: relative to P centre)
    sd: float  # s (left side; right side for asymmetric waves below)
    vec: np.ndarray  # (3,) mV
    sd_right: float | None = None


def _template(waves: list[_Wave], fs: float, lo: float, hi: float) -> tuple[np.ndarray, int]:
    """Sum of Gaussian waves sampled on [lo, hi) s; returns ((3, W), index of time 0)."""
    i0 = math.ceil(-lo * fs)
    tau = (np.arange(math.ceil((hi - lo) * fs)) - i0) / fs
    out = np.zeros((3, tau.size))
    for w in waves:
        sd = np.where(tau < w.t, w.sd, w.sd_right or w.sd)
        out += w.vec[:, None] * np.exp(-0.5 * ((tau - w.t) / sd) ** 2)[None, :]
    return out, i0


def _place(dst: np.ndarray, tmpl: np.ndarray, i0: int, centre: float, fs: float, k: float) -> None:
    """Add k * template with its time 0 at `centre` seconds (clipped at the edges)."""
    start = round(centre * fs) - i0
    a, b = max(start, 0), min(start + tmpl.shape[1], dst.shape[1])
    if a < b:
        dst[:, a:b] += k * tmpl[:, a - start : b - start]


def _beats(rng: np.random.Generator, spec: RecordSpec, duration: float):
    """Beat series: QRS onsets, their kinds ('N', 'A', 'V'), P centres and kinds, mean RR."""
    # Reads better whole: one draw after another from one seeded stream, whose order fixes
    # the bytes of every synthetic record (splitting it would hide that order).
    r = spec.rhythm
    t0, t1 = -1.2, duration + 0.3
    rr_mean = {
        "sinus": 60 / rng.uniform(62, 95), "sinus_irregular": 60 / rng.uniform(60, 95),
        "sinus_brady": 60 / rng.uniform(38, 56), "sinus_tachy": 60 / rng.uniform(105, 150),
        "atrial_tachy": 60 / rng.uniform(110, 170), "svt": 60 / rng.uniform(150, 210),
        "afib": 60 / rng.uniform(70, 130), "flutter": 0.0, "cavb": 60 / rng.uniform(30, 45),
        "junctional": 60 / rng.uniform(45, 75), "ectopic_atrial": 60 / rng.uniform(55, 90),
    }[r]
    p_times: list[float] = []
    p_kinds: list[str] = []
    if r == "flutter":
        cycle = 60 / rng.uniform(250, 330)
        t, qrs = t0 + rng.uniform(0, cycle), []
        while t < t1:
            qrs.append(t + 0.18)
            t += cycle * rng.choice([2, 3, 4], p=[0.5, 0.3, 0.2])
        onsets = np.array(qrs)
        rr_mean = float(np.mean(np.diff(onsets))) if onsets.size > 1 else 0.8
    elif r == "afib":
        n = int((t1 - t0) / rr_mean * 1.6) + 4
        rr = np.clip(rr_mean * rng.lognormal(0, 0.22, n), 0.3, 1.8)
        onsets = t0 + rng.uniform(0, rr_mean) + np.concatenate([[0], np.cumsum(rr)])
    else:
        n = int((t1 - t0) / rr_mean) + 4
        cv = {"sinus_irregular": 0.09, "cavb": 0.02}.get(r, 0.025)
        phase = rng.uniform(0, 2 * np.pi)
        resp = 1 + 0.6 * cv * np.sin(phase + 2 * np.pi * np.arange(n) * rr_mean / 4.0)
        rr = rr_mean * resp * (1 + cv * 0.8 * rng.standard_normal(n))
        rr = np.clip(rr, 0.25, 2.5)
        onsets = t0 + rng.uniform(0, rr_mean) + np.concatenate([[0], np.cumsum(rr)])
    onsets = onsets[onsets < t1]
    kinds = ["N"] * onsets.size
    has_p = r in ("sinus", "sinus_irregular", "sinus_brady", "sinus_tachy", "atrial_tachy",
                  "ectopic_atrial")
    if "1AVB" in spec.labels:
        pr = rng.uniform(0.24, 0.36)
    elif "WPW" in spec.labels:
        pr = rng.uniform(0.07, 0.10)
    else:
        pr = rng.uniform(0.13, 0.19)
    inner = [i for i in range(2, onsets.size - 1) if 0 < onsets[i] < duration]
    if "APB" in spec.labels and inner:
        # Early beats with an abnormal P; the sinus node resets (non-compensatory pause).
        picks = rng.choice(inner, size=min(len(inner), int(rng.integers(1, 4))), replace=False)
        for i in sorted(picks):
            if kinds[i] != "N" or kinds[i - 1] != "N":
                continue
            shift = (onsets[i] - onsets[i - 1]) * rng.uniform(0.25, 0.4)
            onsets[i:] -= shift
            kinds[i] = "A"
    if "VPB" in spec.labels and inner:
        count = len(inner) // 2 if rng.random() < 0.15 else int(rng.integers(1, 4))
        if count > 3:  # bigeminy: every other beat
            picks = np.asarray(inner[::2][:count])
        else:
            picks = rng.choice(inner, size=min(len(inner), count), replace=False)
        for i in sorted(picks):
            if kinds[i] != "N" or kinds[i - 1] == "V":
                continue
            # Early wide beat; the next sinus beat keeps its time (compensatory pause).
            onsets[i] = onsets[i - 1] + (onsets[i] - onsets[i - 1]) * rng.uniform(0.5, 0.68)
            kinds[i] = "V"
    if r == "cavb":
        # Atria keep their own sinus rate, unrelated to the slow escape rhythm.
        prr = 60 / rng.uniform(65, 100)
        p_times = list(np.arange(t0 + rng.uniform(0, prr), t1, prr))
        p_kinds = ["N"] * len(p_times)
    elif has_p:
        pk = "A" if r in ("atrial_tachy", "ectopic_atrial") else "N"
        for t, k in zip(onsets, kinds, strict=True):
            if k == "V":
                continue
            p_times.append(t - pr + 0.05 if k == "N" else t - pr * 0.8 + 0.05)
            p_kinds.append("A" if k == "A" else pk)
    return onsets, kinds, np.array(p_times), p_kinds, rr_mean


def render_mv(spec: RecordSpec, seed: int, fs: float = 500, seconds: float = 10,
              site: SiteProfile | None = None) -> np.ndarray:
    """The record's 12 leads in mV, float64 (12, round(fs*seconds)), standard lead order.
    `site`: its noise, wander, front-end filter and gain error (at `fs`: pass the site's)."""
    # Reads better whole: one draw after another from one seeded stream, whose order fixes
    # the bytes of every synthetic record (splitting it would hide that order).
    rng = np.random.default_rng([seed, spec.index, 1])
    n = round(fs * seconds)
    labels = spec.labels
    onsets, kinds, p_times, p_kinds, rr_mean = _beats(rng, spec, n / fs)

    # --- QRS-T of conducted beats
    d = rng.uniform(0.08, 0.10)
    axis = rng.uniform(10, 75)
    if "LAFB" in labels:
        axis = rng.uniform(-80, -45)
    elif "LAD" in labels:
        axis = rng.uniform(-75, -35)
    elif "RAD" in labels:
        axis = rng.uniform(100, 150)
    amp = rng.uniform(0.7, 1.1)
    z = rng.uniform(-0.5, -0.2)
    if "LVH" in labels:
        amp *= rng.uniform(2.0, 2.6)
        z -= 0.15
    if "RVH" in labels:
        amp *= 0.7
    if spec.idc:
        d = rng.uniform(0.11, 0.12)
    if "LAFB" in labels:
        d = rng.uniform(0.09, 0.11)
    th = math.radians(axis)
    c = math.sqrt(1 - z * z)
    main = np.array([c * math.cos(th), c * math.sin(th), z])
    waves: list[_Wave] = []
    t_vec = _unit(0.6, 0.6, 0.4) * rng.uniform(0.2, 0.35)
    rbbb = "CRBBB" in labels or spec.nbbb
    if "CLBBB" in labels or "PACE" in labels:
        d = rng.uniform(0.14, 0.18) if "PACE" in labels else rng.uniform(0.13, 0.17)
        lv = _unit(0.6, -0.5, -0.6) if "PACE" in labels else _unit(0.75, 0.15, -0.65)
        a = amp * 1.2
        waves += [
            _Wave(0.15 * d, 0.08 * d, 0.12 * a * _unit(0.7, 0.0, -0.6)),
            _Wave(0.36 * d, 0.14 * d, 0.65 * a * lv),
            _Wave(0.70 * d, 0.14 * d, 0.65 * a * lv),
        ]
        t_vec = -0.45 * a * lv  # discordant repolarisation
        if "PACE" in labels:
            # Pacing artefact: a 1-2 sample spike just before the paced QRS.
            spike = _unit(*rng.normal(0, 1, 3)) * rng.uniform(2.0, 4.0)
            waves.append(_Wave(-0.012, 0.6 / fs, spike))
    else:
        if rbbb:
            d = rng.uniform(0.13, 0.16) if "CRBBB" in labels else rng.uniform(0.11, 0.125)
        if "WPW" in labels:
            d += rng.uniform(0.02, 0.035)
        septal = 0.12 * amp * _unit(-0.6, 0.2, 0.75)
        if "LAFB" in labels:
            septal = 0.3 * amp * _unit(-0.35, 0.9, 0.1)  # small q in I/aVL, r in inferior leads
        waves += [
            _Wave(0.12 * d, 0.06 * d, septal),
            _Wave(0.42 * d if not rbbb else 0.32 * d, 0.11 * d, amp * main),
        ]
        if rbbb:
            # Late rightward-anterior activation of the RV: R' in V1, wide S in I and V6.
            rprime = rng.uniform(0.5, 0.9) * (1.0 if "CRBBB" in labels else 0.6)
            waves.append(_Wave(0.76 * d, 0.12 * d, rprime * _unit(-0.55, 0.05, 0.8)))
            t_vec = _unit(0.6, 0.3, -0.6) * rng.uniform(0.15, 0.3)
        else:
            waves.append(_Wave(0.78 * d, 0.09 * d, 0.3 * amp * _unit(-0.5, -0.3, -0.6)))
        if "WPW" in labels:
            # Delta wave: early slurred upstroke from pre-excitation.
            waves.append(_Wave(0.03, 0.03, rng.uniform(0.25, 0.4) * main, sd_right=0.02))
    if "RVH" in labels:
        waves.append(_Wave(0.5 * d, 0.1 * d, rng.uniform(0.7, 1.1) * _unit(-0.35, 0.25, 0.9)))
        t_vec = t_vec * 0.5 + 0.12 * _unit(0.3, 0.2, -0.9)
    if "QWA" in labels:
        away = {"inferior": (0, -1, 0), "anterior": (0, 0, -1), "lateral": (-1, 0, 0.2)}
        q_dir = _unit(*away[spec.q_territory or "inferior"])
        waves.append(_Wave(0.022, 0.016, rng.uniform(0.35, 0.6) * q_dir))
    if "LQV" in labels:
        low = rng.uniform(0.22, 0.32)
        for w in waves:
            w.vec = w.vec * low
        t_vec = t_vec * low
    qt = rng.uniform(0.38, 0.44) * math.sqrt(max(rr_mean, 0.3)) + max(d - 0.1, 0)
    t_peak = qt - 0.08
    if spec.stt is not None:
        lateral = _unit(0.8, 0.5, -0.1)
        if spec.stt in ("st_dep", "st_t"):
            waves.append(_Wave(d + 0.08, 0.05, -rng.uniform(0.1, 0.2) * lateral, sd_right=0.04))
        if spec.stt == "st_elev":
            waves.append(_Wave(d + 0.08, 0.05, rng.uniform(0.15, 0.3) * _unit(-0.1, 0.2, 0.9)))
        if spec.stt in ("t_inv", "st_t") or ("LVH" in labels and spec.stt == "st_dep"):
            t_vec = -t_vec * rng.uniform(0.6, 1.0)
        elif spec.stt == "t_flat":
            t_vec = t_vec * rng.uniform(0.0, 0.2) - 0.05 * lateral
    waves.append(_Wave(t_peak, 0.055, t_vec, sd_right=0.035))
    normal, n0 = _template(waves, fs, -0.1, qt + 0.25)

    # --- ectopic ventricular beats: wide, no P, discordant T
    vdir = _unit(*rng.normal(0, 1, 3))
    dv = rng.uniform(0.14, 0.18)
    va = rng.uniform(1.3, 2.0) * (0.4 if "LQV" in labels else 1.0)
    vwaves = [_Wave(0.35 * dv, 0.16 * dv, va * vdir), _Wave(0.7 * dv, 0.14 * dv, 0.5 * va * vdir),
              _Wave(dv + 0.18, 0.07, -0.35 * va * vdir, sd_right=0.05)]
    ventricular, v0 = _template(vwaves, fs, -0.1, dv + 0.45)

    # --- P waves
    p_amp = rng.uniform(0.15, 0.25)
    p_normal, p0 = _template([_Wave(0.0, 0.022, p_amp * _unit(0.45, 0.8, 0.35))], fs, -0.08, 0.08)
    p_abn, _ = _template([_Wave(0.0, 0.02, p_amp * _unit(-0.2, -0.9, 0.3))], fs, -0.08, 0.08)

    # --- assemble the dipole
    dip = np.zeros((3, n))
    resp = rng.uniform(0.03, 0.08)
    resp_phase = rng.uniform(0, 2 * np.pi)
    for t, k in zip(onsets, kinds, strict=True):
        gain = 1 + resp * math.sin(resp_phase + 2 * math.pi * t / 4.0)
        if k == "V":
            _place(dip, ventricular, v0, t, fs, gain)
        else:
            _place(dip, normal, n0, t, fs, gain)
    for t, k in zip(p_times, p_kinds, strict=True):
        _place(dip, p_normal if k == "N" else p_abn, p0, t, fs, 1.0)
    tt = np.arange(n) / fs
    if spec.rhythm == "afib":
        f_amp = rng.uniform(0.06, 0.15)
        fib = np.zeros(n)
        for _ in range(3):
            f = rng.uniform(4.5, 8.0)
            fib += rng.uniform(0.3, 1) * np.sin(2 * np.pi * f * tt + rng.uniform(0, 2 * np.pi))
        dip += (f_amp / 1.5) * _unit(0.2, 0.6, 0.75)[:, None] * fib[None, :]
    elif spec.rhythm == "flutter":
        f = rng.uniform(250, 330) / 60
        # Sawtooth F waves (slow descent, quick return), negative in II/III/aVF.
        ph = (tt * f + rng.uniform(0, 1)) % 1.0
        saw = np.where(ph < 0.75, 1 - ph / 0.375, -1 + (ph - 0.75) / 0.125)
        dip += rng.uniform(0.12, 0.22) * _unit(0.1, 0.9, 0.4)[:, None] * saw[None, :]

    # --- electrodes, noise, leads
    noise, wander_k = (1.0, 1.0) if site is None else (site.noise, site.wander)
    phi = _ELECTRODES @ dip  # (9, n)
    phi += rng.normal(0, rng.uniform(0.002, 0.01) * noise, size=(9, n))
    wander_f = rng.uniform(0.05, 0.4, size=(9, 1))
    wander = wander_k * rng.uniform(0.0, 0.1, size=(9, 1)) * np.sin(
        2 * np.pi * wander_f * tt[None, :] + rng.uniform(0, 2 * np.pi, size=(9, 1))
    )
    phi += wander
    if rng.random() < 0.3:
        phi += rng.uniform(0.003, 0.015) * np.sin(2 * np.pi * 50 * tt + rng.uniform(0, 6.3))
    ra, la, ll = phi[0], phi[1], phi[2]
    wct = (ra + la + ll) / 3
    lead_i, lead_ii = la - ra, ll - ra
    out = np.empty((12, n))
    out[0], out[1], out[2] = lead_i, lead_ii, lead_ii - lead_i
    out[3], out[4], out[5] = -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2, lead_ii - lead_i / 2
    out[6:] = phi[3:] - wct
    return out if site is None else _front_end(out, fs, site)


def _front_end(mv: np.ndarray, fs: float, site: SiteProfile) -> np.ndarray:
    """The site's recorder: its filter, then its gain error (both linear and the same on
    every lead, so the limb-lead identities still hold)."""
    from scipy.signal import butter, sosfiltfilt

    out = mv
    nyquist = fs / 2
    if site.highpass_hz is not None:
        out = sosfiltfilt(butter(2, site.highpass_hz / nyquist, "highpass", output="sos"),
                          out, axis=-1)
    if site.lowpass_hz is not None and site.lowpass_hz < 0.95 * nyquist:
        out = sosfiltfilt(butter(4, site.lowpass_hz / nyquist, "lowpass", output="sos"),
                          out, axis=-1)
    return out * (1.0 + site.gain_error)


def to_digital(mv: np.ndarray, gain: float = 1000) -> np.ndarray:
    """mV -> int16 at `gain`, deriving III and the augmented leads from the rounded I and II so
    the limb-lead identities hold in the stored integers."""
    di = np.rint(mv[0] * gain)
    dii = np.rint(mv[1] * gain)
    out = np.empty(mv.shape)
    out[0], out[1], out[2] = di, dii, dii - di
    out[3], out[4], out[5] = np.rint(-(di + dii) / 2), np.rint(di - dii / 2), np.rint(dii - di / 2)
    out[6:] = np.rint(mv[6:] * gain)
    return np.clip(out, -32767, 32767).astype(np.int16)


def make_record(
    seed: int, index: int, fs: float = 500, seconds: float = 10,
    site: SiteProfile | None = None,
) -> tuple[RecordSpec, np.ndarray]:
    """(spec, int16 (12, n) at gain 1000) for record `index`; with `site`, at its rate."""
    spec = draw_spec(seed, index, site)
    fs = fs if site is None else site.fs
    return spec, to_digital(render_mv(spec, seed, fs, seconds, site))


def _checksum(column: np.ndarray) -> int:
    c = int(column.astype(np.int64).sum()) % 65536
    return c - 65536 if c > 32767 else c


def write_record(
    directory: str | os.PathLike[str],
    name: str,
    digital: np.ndarray,
    fs: float = 500,
    *,
    dx_codes: Sequence[str] = (),
    age: int | str | None = None,
    sex: str | None = None,
    gain: float | Sequence[float] = 1000,
    baseline: int | Sequence[int] = 0,
    lead_names: Sequence[str] = STANDARD_LEADS,
    fmt: str = "mat",
    comment_prefix: str = "#",
    source: str | None = None,
) -> Path:
    """Write a record as `name.hea` + `name.mat` (MATLAB v4, as in ecg-arrhythmia) or, with
    fmt="dat", through `wfdb.wrsamp` (format 16 `.dat`). `digital` is (n_leads, n) integers.
    `source`: the site named by a `#Source:` comment. Returns the header path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    digital = np.asarray(digital)
    n_sig, n = digital.shape
    gains = np.broadcast_to(np.asarray(gain, dtype=np.float64), (n_sig,))
    bases = np.broadcast_to(np.asarray(baseline, dtype=np.int64), (n_sig,))
    age_text = "NaN" if age is None else str(age)
    comments = [f"Age: {age_text}", f"Sex: {sex or 'Unknown'}", f"Dx: {','.join(dx_codes)}",
                "Rx: Unknown", "Hx: Unknown", "Sx: Unknown", SYNTHETIC_COMMENT]
    if source is not None:
        comments.append(f"Source: {source}")
    if fmt == "dat":
        import wfdb

        wfdb.wrsamp(
            name, fs=fs, units=["mV"] * n_sig, sig_name=list(lead_names),
            d_signal=np.ascontiguousarray(digital.T).astype(np.int64), fmt=["16"] * n_sig,
            adc_gain=[float(g) for g in gains], baseline=[int(b) for b in bases],
            comments=comments, write_dir=str(directory),
        )
        return directory / f"{name}.hea"
    if fmt != "mat":
        raise ValueError(f"fmt must be 'mat' or 'dat', got {fmt!r}")
    fs_text = f"{fs:g}"
    lines = [f"{name} {n_sig} {fs_text} {n}"]
    for i in range(n_sig):
        first = int(digital[i, 0]) if n else 0
        lines.append(
            f"{name}.mat 16x1+24 {gains[i]:.1f}({bases[i]})/mV 16 0 {first} "
            f"{_checksum(digital[i])} 0 {lead_names[i]}"
        )
    lines += [f"{comment_prefix}{c}" for c in comments]
    # MATLAB v4: type 30 = little-endian int16 full matrix; the data is column-major, i.e.
    # one frame of all leads after another, which is WFDB format 16 at byte offset 24.
    mat = struct.pack("<5i", 30, n_sig, n, 0, 4) + b"val\x00"
    mat += np.ascontiguousarray(digital.T).astype("<i2").tobytes()
    (directory / f"{name}.mat").write_bytes(mat)
    (directory / f"{name}.hea").write_text("\n".join(lines) + "\n", "utf-8")
    return directory / f"{name}.hea"


# Every way a record can be refused or flagged (data_prep.quality.QUALITY_RULES), for tests and
# for trying the quality gates on a folder of one's own.
FAULT_KINDS: tuple[str, ...] = (*REASON_CODES, *WARNING_CODES)


def _put_mat(path: Path, matrix: np.ndarray) -> None:
    """`matrix` (rows x cols) as MATLAB v4 writes it: header, name, values column-major."""
    codes = {"f8": 0, "f4": 1, "i4": 2, "i2": 3, "u2": 4, "u1": 5}
    kind = matrix.dtype.str[1:]
    head = struct.pack("<5i", codes[kind] * 10, *matrix.shape, 0, 4) + b"val\x00"
    path.write_bytes(head + np.asarray(matrix, dtype="<" + kind).tobytes(order="F"))


def write_faulty_record(root: str | os.PathLike[str], kind: str, index: int) -> Path:
    """Write synthetic record `BAD{index:03d}` under root/bad/<kind>/, broken the way the
    reason or warning code `kind` (one of FAULT_KINDS) names, or `kind="transposed"`: a good
    record whose matrix is stored samples x leads. Returns its header path; the signal is
    `make_record(11, index)`'s."""
    if kind not in (*FAULT_KINDS, "transposed"):
        raise ValueError(f"unknown fault kind {kind!r}; choose from {', '.join(FAULT_KINDS)}")
    root = Path(root)
    spec, digital = make_record(11, index)
    name = f"BAD{index:03d}"
    folder = root / "bad" / kind
    leads = list(STANDARD_LEADS)
    gain: list[float] = [1000.0] * 12
    if kind == "wrong_lead_set":
        leads[11] = "V7"
    elif kind == "bad_gain":
        gain[1] = 0.0  # WFDB's "uncalibrated", once read as 200/mV: 5x the real amplitude
    elif kind == "flat_lead":
        digital[7] = 0
    elif kind == "all_flat":
        digital[:] = 0
    elif kind == "saturated_lead":
        digital[3, ::3] = 32767
    elif kind == "invalid_samples":
        digital[5, 100:110] = -32768
    elif kind == "too_short":
        digital = digital[:, :1]
    elif kind == "short":  # 6 s of a 10 s window: kept, padded, windows on real signal only
        digital = digital[:, :3000]
    dx_codes = spec.dx_codes
    if kind in ("no_scored_label", "dropped_unlabelled"):  # only codes outside the label map
        dx_codes = ("698252002", "61721007") if kind == "dropped_unlabelled" else ()
    elif kind == "no_samples":
        digital = digital[:, :0]
    hea = write_record(folder, name, digital, dx_codes=dx_codes, age=spec.age,
                       sex=spec.sex, lead_names=leads, gain=gain)
    mat = hea.with_suffix(".mat")
    if kind == "missing_signal":
        mat.unlink()
    elif kind == "truncated_signal":
        mat.write_bytes(mat.read_bytes()[: 24 + 12 * 2 * 2500])
    elif kind == "unparsable_header":
        hea.write_text("this is not\na WFDB header\n")
    elif kind == "missing_fs":  # `NAME 12` and nothing else on the record line
        first, rest = hea.read_text().split("\n", 1)
        hea.write_text(" ".join(first.split()[:2]) + "\n" + rest)
    elif kind == "bad_dx":  # codes separated by spaces, not commas
        lines = hea.read_text().splitlines()
        hea.write_text("\n".join("#Dx: 164889003 59118001" if line.startswith("#Dx:") else line
                                 for line in lines) + "\n")
    elif kind == "bad_units":
        hea.write_text(hea.read_text().replace("/mV 16 0", "/mmHg 16 0", 1))
    elif kind == "bad_mat_header":  # saved by MATLAB without -v4
        text = b"MATLAB 5.0 MAT-file, Platform: GLNXA64"
        mat.write_bytes(text + mat.read_bytes()[len(text):])
    elif kind == "shape_mismatch":
        _put_mat(mat, digital[:11])
    elif kind == "sample_count_mismatch":
        _put_mat(mat, digital[:, :4000])
    elif kind == "dtype_mismatch":  # mV saved as double, not digital units
        _put_mat(mat, digital / 1000.0)
    elif kind == "non_finite":
        values = digital.astype(np.float64)
        values[4, 200:220] = np.nan
        _put_mat(mat, values)
    elif kind == "transposed":
        _put_mat(mat, digital.T)
    elif kind == "duplicate_record":
        # the same record name again in another folder
        write_record(root / "bad" / "dup2", name, digital, dx_codes=spec.dx_codes)
    elif kind == "unreadable":
        # a WFDB format we read through wfdb, with a data file wfdb cannot decode
        hea.write_text(hea.read_text().replace(f"{name}.mat 16x1+24", f"{name}.dat 508"))
        (folder / f"{name}.dat").write_bytes(b"\x00" * 1000)
    return hea


def record_relpath(index: int) -> str:
    """ecg-arrhythmia layout: record i (1-based) in WFDBRecords/NN/NNN/, 100 per folder."""
    sub = f"{10 + (index - 1) // 100:03d}"
    return f"WFDBRecords/{sub[:2]}/{sub}/JS{index:05d}"


def _write_range(args: tuple[str, int, int, int, float, float, int]
                 ) -> dict[str, dict[str, int]]:
    """Records start..stop-1; returns source ("" without sources) -> label -> positives, with
    the records counted under the key ""."""
    out, seed, start, stop, fs, seconds, sources = args
    counts: dict[str, dict[str, int]] = {}
    for index in range(start, stop):
        site = site_of(index, sources)
        spec, digital = make_record(seed, index, fs, seconds, site)
        rel = record_relpath(index)
        write_record(
            Path(out) / rel.rsplit("/", 1)[0], rel.rsplit("/", 1)[1], digital,
            fs if site is None else site.fs, dx_codes=spec.dx_codes, age=spec.age,
            sex=spec.sex, source=None if site is None else site.name,
        )
        mine = counts.setdefault("" if site is None else site.name, {})
        for label in (*spec.labels, ""):
            mine[label] = mine.get(label, 0) + 1
    return counts


def synthesize(
    output_dir: str | os.PathLike[str],
    n: int,
    seed: int = 0,
    *,
    fs: float = 500,
    seconds: float = 10,
    workers: int = 1,
    progress: bool = False,
    sources: int = 0,
) -> SynthResult:
    """Write records JS00001..JS{n} under output_dir/WFDBRecords/ (same bytes for a seed).
    `sources`: from that many simulated sites (`SITES`), each at its own rate (not `fs`)."""
    if n < 0:
        raise ValueError("n must be >= 0")
    if sources:
        site_of(1, sources)  # refuses too many
        if fs != 500:
            raise ValueError("--fs with --sources: each source records at its own rate")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    chunk = 250
    jobs = [(str(out), seed, s, min(s + chunk, n + 1), fs, seconds, sources)
            for s in range(1, n + 1, chunk)]
    counts: dict[str, dict[str, int]] = {}
    from tqdm import tqdm

    bar = tqdm(total=n, unit="rec", desc="synth", disable=not progress)
    try:
        if workers > 1 and len(jobs) > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context("forkserver")
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
                results = pool.map(_write_range, jobs)
                for job, c in zip(jobs, results, strict=True):
                    _merge(counts, c)
                    bar.update(job[3] - job[2])
        else:
            for job in jobs:
                _merge(counts, _write_range(job))
                bar.update(job[3] - job[2])
    finally:
        bar.close()
    names = get_label_map("seed20").names
    overall: dict[str, int] = {}
    for part in counts.values():
        for k, v in part.items():
            overall[k] = overall.get(k, 0) + v
    if not sources:
        return SynthResult(out, n, seed, {k: overall.get(k, 0) for k in names})
    sites = [s.name for s in SITES[:sources]]
    return SynthResult(
        out, n, seed, {k: overall.get(k, 0) for k in names},
        source_counts={s: counts.get(s, {}).get("", 0) for s in sites},
        source_label_counts={s: {k: counts.get(s, {}).get(k, 0) for k in names} for s in sites})


def _merge(total: dict[str, dict[str, int]], part: dict[str, dict[str, int]]) -> None:
    for source, labels in part.items():
        mine = total.setdefault(source, {})
        for k, v in labels.items():
            mine[k] = mine.get(k, 0) + v
