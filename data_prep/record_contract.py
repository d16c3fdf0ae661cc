"""The record contract: what a WFDB header must say for its record to be read, written once.

`data_prep.reader` parses headers with these rules, so `prep` (quarantine.csv) and `predict`
(refusal, exit 3) apply the same grammar through `data_prep.validation.validate_record`. Each
field either parses as declared here or raises `RecordError` with a named reason; nothing is
guessed:

- **Sampling frequency** is required (`missing_fs`): WFDB reads a record line without one at
  250 Hz, which silently stretches a 500 Hz ECG two-fold.
- **Dx** is `#Dx: CODE[,CODE...]`, SNOMED CT identifiers (digits only), whitespace allowed
  around each code; `Unknown`, `NaN`, `None`, `n/a` or nothing at all mean "no diagnosis
  given". Anything else - spaces or semicolons between codes, `164889003.0`, an empty code
  between commas, a second Dx line - is `bad_dx` naming the token, because a misread separator
  would silently turn labelled records into negatives.
- **Leads** are matched by name, case-insensitively with surrounding whitespace ignored, in any
  order; other signals are ignored; a missing or repeated standard lead is `wrong_lead_set`.
- **Units** must be a known voltage unit (`bad_units` otherwise): an amplitude in unknown
  units cannot be stored in mV.
- **Gain and baseline**: a baseline is an integer (the ADC zero when absent); a gain of 0
  (WFDB: uncalibrated), a negative or a non-finite one is `bad_gain` (checked on the read
  record, `data_prep.quality`).
- **Source** (`#Source: NAME`, optional) names the site a record comes from: prep stores it in
  the shards' `source` column, and folds, objectives and reports group records by it. Only a
  name counts (`parse_source`); free text such as the synthetic-record note is not a site,
  so such a comment is ignored like any other comment the contract does not know, and the
  record's source is then its database (`data_prep.provenance.record_source`).

`HEADER_RULES` is the same contract as a table (the README prints it; a test keeps them equal).
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from .errors import RecordError

__all__ = [
    "HEADER_RULES",
    "NO_DIAGNOSIS",
    "SOURCE_NAME",
    "STANDARD_LEADS",
    "UNIT_TO_MV",
    "HeaderRule",
    "lead_index",
    "mv_per_unit",
    "parse_dx",
    "parse_fs",
    "parse_source",
]

STANDARD_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)
_LEAD_KEYS = {name.lower(): i for i, name in enumerate(STANDARD_LEADS)}

# Values of a Dx field that mean "no diagnosis given" (case-insensitive), as distinct from a
# list that failed to parse.
NO_DIAGNOSIS: frozenset[str] = frozenset({"", "unknown", "nan", "none", "n/a"})
# SNOMED CT identifiers are 6 to 18 digits; anything else in a code position is refused.
_SNOMED_ID = re.compile(r"[0-9]{6,18}")
# A site name: it becomes part of metric keys (`val/source_auprc/NAME`) and a command-line
# value (`prep --holdout-source NAME`), so no spaces or slashes.
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

UNIT_TO_MV: dict[str, float] = {
    "mv": 1.0, "millivolt": 1.0, "millivolts": 1.0,
    "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "microvolt": 1e-3, "microvolts": 1e-3,
    "v": 1e3, "volt": 1e3, "volts": 1e3,
}


class HeaderRule(NamedTuple):
    field: str
    accepted: str
    otherwise: str  # the reason code (refused) or warning (kept) when the rule is not met


HEADER_RULES: tuple[HeaderRule, ...] = (
    HeaderRule("record line", "`NAME NSIG FS [NSAMP ...]`; a single segment",
               "`unparsable_header`"),
    HeaderRule("sampling frequency", "present, finite, > 0 (`500` or `500/1000(0)`)",
               "`missing_fs` when absent (never WFDB's 250 Hz default); `unparsable_header` "
               "when not a positive number"),
    HeaderRule("leads", "the 12 standard names, any order, case and surrounding spaces "
               "ignored; other signals ignored", "`wrong_lead_set` (a lead missing or repeated)"),
    HeaderRule("units", "mV, uV/µV or V (and their spelled-out names), any case; none given: "
               "mV", "`bad_units`"),
    HeaderRule("gain, baseline", "gain finite and > 0; baseline an integer (ADC zero when "
               "absent)", "`bad_gain`; `unparsable_header`"),
    HeaderRule("`#Dx:`", "SNOMED CT codes (6-18 digits) separated by commas, spaces around "
               "codes allowed; `Unknown`, `NaN`, `None`, `n/a`, empty or no Dx line: no "
               "diagnosis", "`bad_dx` naming the token (other separators, decimals, empty "
               "codes, a second Dx line)"),
    HeaderRule("scored labels", "at least one code in the label map",
               "warning `no_scored_label` (kept); `dropped_unlabelled` with `prep "
               "--unlabelled drop`"),
    HeaderRule("`#Age:`, `#Sex:`", "a number 0-150; Male/Female/M/F", "unknown (not a refusal)"),
    HeaderRule("`#Source:`", "a site name (letters, digits, `.`, `_`, `-`; up to 64): the "
               "shards' `source` column", "free text (e.g. the synthetic-record note) is not a "
               "site and is ignored: the source is then the database (name prefix, "
               "`synthetic`, else `unknown`)"),
)


def parse_fs(field: str | None, lineno: int) -> float:
    """The record line's sampling frequency (`FS` or `FS/COUNTER(BASE)`), required."""
    if field is None:
        raise RecordError("missing_fs", f"line {lineno}: the record line gives no sampling "
                                        "frequency (WFDB would assume 250 Hz)")
    try:
        fs = float(field.split("/")[0])
    except ValueError:
        raise RecordError("unparsable_header",
                          f"line {lineno}: bad sampling frequency {field!r}") from None
    if not math.isfinite(fs) or fs <= 0:
        raise RecordError("unparsable_header",
                          f"line {lineno}: sampling frequency must be positive, got {field!r}")
    return fs


def parse_dx(value: str) -> tuple[str, ...]:
    """The codes of one Dx field's value (without `Dx:`), in order, duplicates removed."""
    text = value.strip()
    if text.lower() in NO_DIAGNOSIS:
        return ()
    codes: list[str] = []
    for token in text.split(","):
        code = token.strip()
        if not _SNOMED_ID.fullmatch(code):
            what = "an empty code" if not code else f"{code!r} is not a SNOMED CT code"
            raise RecordError("bad_dx", f"Dx {text!r}: {what} (expected comma-separated codes, "
                                        "e.g. 164889003,59118001)")
        codes.append(code)
    return tuple(dict.fromkeys(codes))


def parse_source(value: str) -> str | None:
    """The site name of one Source field's value (without `Source:`), or None when the value
    is not a name (free text is a note, not a site)."""
    text = value.strip()
    return text if SOURCE_NAME.fullmatch(text) else None


def lead_index(description: str) -> int | None:
    """Position of a signal among STANDARD_LEADS by its name, or None for another signal."""
    return _LEAD_KEYS.get(description.strip().lower())


def mv_per_unit(units: str) -> float:
    """mV per physical unit of a header's units field; unknown units raise `bad_units`."""
    factor = UNIT_TO_MV.get(units.strip().lower())
    if factor is None:
        known = "mV, uV, V"
        raise RecordError("bad_units", f"units {units!r} are not a voltage ({known})")
    return factor
