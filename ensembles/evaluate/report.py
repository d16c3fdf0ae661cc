"""The test-fold report: one row per model (ensemble and comparators), the members, calibration
before and after, how the ensemble was chosen, written as JSON + Markdown + one self-contained
HTML page. The test fold is only ever evaluated here.

Rendering is built from data: the report is first a `Document` (title, tables, paragraphs,
figures, bullet lists, each a value), and `render_markdown` / `render_html` turn the same
document into each format, so the two always say the same thing. The HTML page carries its
figures inside (base64 PNG) and loads nothing: it reads the same from a disk, an e-mail or an
MLflow artifact view with no network; the Markdown links the PNG files beside it.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecgtune.ensembles.evaluate.metrics import (
    ASSESSABLE,
    CI_METRICS,
    ece,
    evaluate_assessable,
    evaluate_with_ci,
)
from ecgtune.ensembles.evaluate.plots import save_report_figures
from ecgtune.ensembles.evaluate.scores import brier
from ecgtune.search import metric_keys as K

__all__ = [
    "CalibrationSummary",
    "Document",
    "Figure",
    "MemberRow",
    "ReportRow",
    "Section",
    "calibration_summary",
    "fixed",
    "internal_external_section",
    "jsonable",
    "members_section",
    "operating_point_section",
    "operating_points",
    "referral_section",
    "render_html",
    "render_markdown",
    "source_section",
    "write_ensemble_report",
    "write_report",
]

REPORT_STEM = "report"
NOT_ASSESSABLE = "not assessable"  # the cell of a label `evaluate_assessable` left out

_TITLES = {
    K.AUROC: "AUROC",
    K.AUPRC: "AUPRC",
    K.F1: "F1",
    K.PRECISION: "PPV",
    K.RECALL: "Recall",
    K.SPECIFICITY: "Specificity",
    K.NPV: "NPV",
    K.KAPPA: "Kappa",
    K.ECE: "ECE",
    K.BRIER: "Brier",
    K.HAMMING: "Hamming loss",
}


# ---------------------------------------------------------------------------------------------
# The document model and its two renderings.


@dataclass(frozen=True)
class Figure:
    """A PNG figure: ``file`` is its name beside the report (the Markdown links it), ``png``
    its bytes (the HTML page embeds them)."""

    file: str
    caption: str
    png: bytes = field(default=b"", repr=False)

    @classmethod
    def read(cls, path: str | Path, caption: str) -> Figure:
        path = Path(path)
        return cls(path.name, caption, path.read_bytes())


@dataclass(frozen=True)
class Section:
    """One heading with, in this order, paragraphs, a table (header + body), figures and
    bullets."""

    heading: str
    paragraphs: tuple[str, ...] = ()
    header: tuple[str, ...] = ()
    body: tuple[tuple[str, ...], ...] = ()
    bullets: tuple[str, ...] = ()
    figures: tuple[Figure, ...] = ()


@dataclass(frozen=True)
class Document:
    title: str
    sections: tuple[Section, ...] = field(default_factory=tuple)


def render_markdown(doc: Document) -> str:
    lines = [f"# {doc.title}", ""]
    for s in doc.sections:
        lines += [f"## {s.heading}", ""]
        for paragraph in s.paragraphs:
            lines += [paragraph, ""]
        if s.header:
            lines.append("| " + " | ".join(s.header) + " |")
            lines.append("|" + "|".join("---" for _ in s.header) + "|")
            lines += ["| " + " | ".join(cells) + " |" for cells in s.body]
            lines.append("")
        for figure in s.figures:
            lines += [f"![{figure.caption}]({figure.file})", ""]
        if s.bullets:
            lines += [f"- {item}" for item in s.bullets] + [""]
    return "\n".join(lines)


_STYLE = (
    "<style>body{font-family:sans-serif;margin:2em}"
    "table{border-collapse:collapse;margin-bottom:2em;font-size:0.9em}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th:first-child,td:first-child{text-align:left}"
    "tr:nth-child(even){background:#f6f6f6}"
    "figure{margin:0 0 2em 0}img{max-width:100%;height:auto;border:1px solid #eee}"
    "figcaption{font-size:0.9em;color:#444}</style>"
)


def _figure_html(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    caption = html.escape(figure.caption)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{caption}" '
            f'title="{html.escape(figure.file)}"><figcaption>{caption}</figcaption></figure>')


def render_html(doc: Document) -> str:
    """A standalone page (inline style, figures embedded, no external resources)."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(doc.title)}</title>", _STYLE, f"</head><body><h1>{esc(doc.title)}</h1>"]
    for s in doc.sections:
        parts.append(f"<h2>{esc(s.heading)}</h2>")
        parts += [f"<p>{esc(paragraph)}</p>" for paragraph in s.paragraphs]
        if s.header:
            parts.append("<table>")
            parts.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in s.header) + "</tr>")
            for cells in s.body:
                parts.append("<tr>" + "".join(f"<td>{esc(x)}</td>" for x in cells) + "</tr>")
            parts.append("</table>")
        parts += [_figure_html(figure) for figure in s.figures]
        if s.bullets:
            parts.append("<ul>" + "".join(f"<li>{esc(b)}</li>" for b in s.bullets) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Metric tables from `evaluate_with_ci` rows.


def fixed(x: float, digits: int = 3) -> str:
    """``x`` with ``digits`` decimals; a value that rounds to zero is "0.000", never
    "-0.000" (a kappa of -0.0001 is no worse than chance in any way a reader can use)."""
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _cell(row: Mapping[str, Any], metric: str, label: str | None = None) -> str:
    """'0.912 [0.901, 0.923]' (CI when the row has one), '–' when undefined."""
    if label is None:
        value = row["macro"].get(metric)
        ci = row.get("ci", {}).get("macro", {}).get(metric)
    else:
        if row["per_label"][label].get(ASSESSABLE) is False:
            return NOT_ASSESSABLE
        value = row["per_label"][label].get(metric)
        ci = row.get("ci", {}).get("per_label", {}).get(label, {}).get(metric)
    if value is None:
        return "–"
    text = fixed(value)
    if ci and ci.get("low") is not None and ci.get("high") is not None:
        text += f" [{fixed(ci['low'])}, {fixed(ci['high'])}]"
    return text


# Metrics that depend on the thresholds: their columns name each row's operating point.
_AT_THRESHOLDS = frozenset({K.F1, K.PRECISION, K.RECALL, K.SPECIFICITY, K.NPV, K.KAPPA,
                            K.HAMMING})


def metric_sections(
    rows: Mapping[str, Mapping[str, Any]], label_names: Sequence[str],
    operating_points: Mapping[str, str] | None = None,
) -> list[Section]:
    """The summary table (macro metrics per row) and per-label AUPRC, AUROC, F1 and kappa.
    ``operating_points`` (row name -> how its thresholds were chosen, e.g. "sensitivity:0.95,
    ensemble fold") add a "thresholds" column to the summary and label the per-label F1 and
    kappa columns with it: those numbers are only comparable at one operating point."""
    first = next(iter(rows.values()))
    ci = first.get("ci", {})
    note = (f" ({1 - ci.get('alpha', 0.05):.0%} {ci.get('method', 'bootstrap')} CI)"
            if any("ci" in r for r in rows.values()) else "")
    points = dict(operating_points or {})
    summary_header: tuple[str, ...] = ("", *(_TITLES[m] for m in CI_METRICS))
    summary_body = tuple((name, *(_cell(r, m) for m in CI_METRICS)) for name, r in rows.items())
    paragraphs: tuple[str, ...] = ()
    if points:
        summary_header += ("thresholds by",)
        summary_body = tuple((*cells, points.get(name, "–"))
                             for cells, name in zip(summary_body, rows, strict=True))
        paragraphs = ("AUROC and AUPRC rank records and need no threshold; the other columns "
                      "are measured at each row's own thresholds, chosen as its last column "
                      "says.",)
    sections = [Section(f"Summary{note}", paragraphs=paragraphs, header=summary_header,
                        body=summary_body)]
    for metric in (K.AUPRC, K.AUROC, K.F1, K.KAPPA):
        body = tuple(
            (label, str(first["per_label"][label][K.SUPPORT]),
             *(_cell(r, metric, label) for r in rows.values()))
            for label in label_names
        )
        columns = tuple(f"{name} [{points[name]}]" if metric in _AT_THRESHOLDS and name in points
                        else name for name in rows)
        sections.append(Section(f"Per-label {_TITLES[metric]}{note}",
                                header=("label", "support", *columns), body=body))
    return sections


def jsonable(x: Any) -> Any:
    """``x`` with numpy values as Python ones and non-finite floats as None (JSON-ready)."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(float(x)) else None
    return x


def write_report(
    rows: Mapping[str, Mapping[str, Any]],
    path_stem: str | Path,
    label_names: Sequence[str],
    title: str = "Ensemble evaluation",
    extra_sections: Sequence[Section] = (),
    lead_sections: Sequence[Section] = (),
    operating_points: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.html`` comparing report rows.

    ``rows`` maps a row name (e.g. "ensemble", "best single trial") to an `evaluate` result,
    optionally with its `bootstrap_ci` under ``"ci"`` (`evaluate_with_ci`). Tables: macro
    metrics per row (with CI), then ``lead_sections`` (members, figures), per-label AUPRC,
    AUROC, F1 and kappa with one column per row, then ``extra_sections``;
    ``operating_points`` label each row's thresholds (`metric_sections`). JSON holds every
    number (NaN as null).
    """
    if not rows:
        raise ValueError("need at least one report row")
    label_names = [str(x) for x in label_names]
    for name, row in rows.items():
        missing = set(label_names) - set(row["per_label"])
        if missing:
            raise ValueError(f"row {name!r} lacks labels {sorted(missing)}")
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    summary, *per_label = metric_sections(rows, label_names, operating_points)
    doc = Document(title, (summary, *lead_sections, *per_label, *extra_sections))
    paths = {
        "json": stem.with_name(stem.name + ".json"),
        "markdown": stem.with_name(stem.name + ".md"),
        "html": stem.with_name(stem.name + ".html"),
    }
    payload = {"title": title, "labels": label_names, "rows": jsonable(dict(rows))}
    paths["json"].write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    paths["markdown"].write_text(render_markdown(doc))
    paths["html"].write_text(render_html(doc))
    return paths


# ---------------------------------------------------------------------------------------------
# Operating points: each label's threshold policy, its target and what was achieved.

MET, UNCERTAIN, BELOW = "met", "CI includes target", "BELOW TARGET"
FALLBACK = "FELL BACK"  # a stated confidence the fitting fold could not show


def _fallback_text(policy: Any, bound: Mapping[str, Any]) -> str:
    what = "positives" if policy.kind == "sensitivity" else "negatives"
    if not bound.get("fitted", True):
        return (f"{FALLBACK} to the fixed threshold: {bound['n']} {what} on the fitting "
                "fold, fewer than --min-positives")
    return (f"{FALLBACK} to {policy.plain}: {bound['n']} {what} cannot show "
            f"{policy.value:g} at {policy.confidence:g} confidence")


def _point(row: Mapping[str, Any], label: str, policy: Any, min_positives: int,
           bound: Mapping[str, Any] | None = None) -> dict[str, Any]:
    entry = row["per_label"][label]
    support, n = int(entry[K.SUPPORT]), int(row["n_samples"])
    metric = policy.target_metric or K.F1
    target = float(policy.value) if policy.target_metric else None
    out: dict[str, Any] = {"label": label, "policy": str(policy), "support": support,
                           "threshold": entry[K.THRESHOLD], "metric": metric, "target": target,
                           "estimate": None, "low": None, "high": None}
    if getattr(policy, "confidence", None) is not None:
        # What the threshold showed where it was fitted: the bound the policy asked for.
        bound = dict(bound or {})
        out.update(confidence=policy.confidence, fitted_bound=bound.get("bound"),
                   fitted_rate=bound.get("rate"), fitted_n=bound.get("n"),
                   fallback=bool(bound.get("fallback")) or not bound.get("fitted", True))
    if (entry.get(ASSESSABLE) is False or support < max(min_positives, 1)
            or (metric == K.SPECIFICITY and support >= n)):
        status = NOT_ASSESSABLE
        if out.get("fallback"):
            status = f"{_fallback_text(policy, bound or {})}; {status}"
        return {**out, "status": status}
    ci = row.get("ci", {}).get("per_label", {}).get(label, {}).get(metric, {})
    out.update(estimate=entry.get(metric), low=ci.get("low"), high=ci.get("high"))
    status = ""
    if target is not None and out["low"] is not None and out["high"] is not None:
        status = MET if out["low"] >= target else BELOW if out["high"] < target else UNCERTAIN
    if out.get("fallback"):
        status = f"{_fallback_text(policy, bound or {})}; {status}"
    return {**out, "status": status}


def operating_points(row: Mapping[str, Any], policies: Sequence[Any],
                     label_names: Sequence[str], min_positives: int = 1,
                     bounds: Mapping[str, Mapping[str, Any]] | None = None,
                     ) -> list[dict[str, Any]]:
    """Per label: its policy (`ensembles.build.policies.ThresholdPolicy`), the target rate and the
    achieved value with its CI in ``row`` (an `evaluate_with_ci` result), and a status:
    met (CI above the target), BELOW TARGET (CI below it), CI includes target, or not
    assessable (fewer than ``min_positives`` positives). Score policies report F1, no target.
    A policy with a stated confidence adds it, the Clopper-Pearson bound its threshold reached
    on the fold it was fitted on (``bounds``: `policies.confidence_bounds`), and a status
    starting FELL BACK when that fold had too few records to show it."""
    bounds = bounds or {}
    return [_point(row, label, policy, min_positives, bounds.get(label))
            for label, policy in zip(label_names, policies, strict=True)]


def _num(x: float | None) -> str:
    return "–" if x is None else fixed(x)


def operating_point_section(points: Sequence[Mapping[str, Any]], row_name: str) -> Section:
    names = {K.RECALL: "sensitivity", K.SPECIFICITY: "specificity", K.F1: "F1"}
    stated = any(p.get("confidence") is not None for p in points)
    body = []
    for p in points:
        achieved = "–" if p["estimate"] is None else (
            f"{names[p['metric']]} {fixed(p['estimate'])} [{_num(p['low'])}, "
            f"{_num(p['high'])}]")
        target = "–" if p["target"] is None else f"{names[p['metric']]} >= {p['target']:g}"
        row = [p["label"], str(p["support"]), p["policy"], f"{p['threshold']:.4f}", target]
        if stated:
            row += ["–" if p.get("confidence") is None else f"{p['confidence']:g}",
                    "–" if p.get("fitted_bound") is None else
                    f"{fixed(p['fitted_bound'])} ({fixed(p['fitted_rate'])} of "
                    f"{p['fitted_n']})"]
        body.append((*row, achieved, p["status"]))
    below = [p["label"] for p in points if p["status"] == BELOW]
    bullets: tuple[str, ...] = (
        (f"Below target (the whole CI under it): {', '.join(below)}",) if below else ())
    fell_back = [p["label"] for p in points if p.get("fallback")]
    if fell_back:
        bullets += (f"Too few records on the fitting fold for the stated confidence (plain "
                    f"target used): {', '.join(fell_back)}",)
    paragraphs = ["Each label's threshold was fitted by its policy on the ensemble fold "
                  "(or the folds of a refit); 'achieved' is on these records with its 95% "
                  "BCa CI. A label is flagged BELOW TARGET when its whole CI lies under its "
                  "target."]
    if stated:
        paragraphs.append("A policy S@C chose the threshold whose one-sided lower bound at "
                          "confidence C (exact binomial, Clopper-Pearson) on the fitting fold "
                          "is >= S; 'bound at fit' is that bound (the rate and count behind "
                          "it in brackets).")
    header = ("label", "support", "policy", "threshold", "target",
              *(("confidence", "bound at fit (rate of n)") if stated else ()),
              "achieved [CI]", "status")
    return Section(
        f"Operating points of the {row_name} (thresholds by policy)",
        paragraphs=tuple(paragraphs), header=header, body=tuple(body), bullets=bullets)


def internal_external_section(rows: Mapping[str, tuple[Mapping[str, Any],
                                                      Mapping[str, Any] | None]],
                              internal: str, external: str) -> Section:
    """Each model's macro metrics (with CIs) on the internal test fold beside the external
    fold (held-out sources, never fitted on), and the drop from one to the other. ``rows``:
    model -> (test-fold row, external row or None when nothing there is assessable)."""
    metrics = (K.AUROC, K.AUPRC, K.F1)
    body = []
    for name, (inside, outside) in rows.items():
        for where, row in (("internal", inside), ("external", outside)):
            if row is None:
                body.append((name, where, *(NOT_ASSESSABLE for _ in metrics), "–"))
                continue
            drop = "–"
            if where == "external" and row["macro"].get(K.AUPRC) is not None:
                drop = fixed(row["macro"][K.AUPRC] - inside["macro"][K.AUPRC])
            body.append((name, where, *(_cell(row, m) for m in metrics), drop))
    return Section(
        "Internal vs external (95% CI)",
        paragraphs=(f"Internal: {internal}. External: {external}: sources held out whole by "
                    "`ecgtune prep --holdout-source`, never trained, validated or calibrated "
                    "on. The last column is external minus internal macro AUPRC.",),
        header=("model", "fold", *(_TITLES[m] for m in metrics), "AUPRC change"),
        body=tuple(body))


def _share(s: Mapping[str, Any]) -> str:
    if s.get("value") is None:
        return "–"
    count = f" ({s['count']} of {s['n']})" if "count" in s else f" ({s['n']} records)"
    return f"{fixed(s['value'])} [{fixed(s['low'])}, {fixed(s['high'])}]{count}"


def referral_section(summaries: Mapping[str, Mapping[str, Any]], rate: float,
                     threshold: float) -> Section:
    """Coverage and decision error rates with and without referral, per fold (``summaries``:
    fold description -> `referral.referral_summary`)."""
    body = tuple((where, _share(s["coverage"]), _share(s["error_kept"]),
                  _share(s["error_referred"]), _share(s["error_all"]),
                  _share(s["any_wrong_kept"]))
                 for where, s in summaries.items())
    return Section(
        "Referral (95% CI)",
        paragraphs=(f"A record is referred to a human when its uncertainty (over its labels, "
                    f"the members' logit spread minus the calibrated probability's logit "
                    f"distance to the threshold) is >= {threshold:.4g}, the cut that referred "
                    f"{rate:g} of the ensemble fold. Coverage: the share of records kept "
                    "(exact interval). Error: labels decided wrong per record (Hamming loss; "
                    "bootstrap interval over records) among the kept, the referred and all "
                    "records; the last column is the share of kept records with any label "
                    "wrong (exact interval).",),
        header=("fold", "coverage", "error among kept", "error among referred",
                "error without referral", "kept with any label wrong"),
        body=body)


def source_section(by_source: Mapping[str, Mapping[str, Any] | None],
                   counts: Mapping[str, int]) -> Section:
    """Macro metrics (with CIs) per source database; each source's own not-assessable labels
    are left out of its means and counted."""
    metrics = (K.AUROC, K.AUPRC, K.F1, K.RECALL, K.SPECIFICITY, K.ECE)
    body = []
    for source, row in by_source.items():
        if row is None:
            body.append((source, str(counts[source]), "0", *(NOT_ASSESSABLE for _ in metrics)))
            continue
        assessed = row["n_labels"] - len(row.get("not_assessable", []))
        body.append((source, str(counts[source]), str(assessed),
                     *(_cell(row, m) for m in metrics)))
    return Section("By source database (macro over each source's assessable labels, 95% CI)",
                   header=("source", "records", "labels assessed",
                           *(_TITLES[m] for m in metrics)), body=tuple(body))


# ---------------------------------------------------------------------------------------------
# The ensemble report.


@dataclass(frozen=True)
class ReportRow:
    """A model's test-fold probabilities and the thresholds it is judged at;
    ``thresholds_by`` says how those were chosen (its operating point, e.g. "f1, validation
    fold"), which the report prints beside every threshold-dependent number."""

    name: str
    key: str  # short slug for MLflow metric prefixes
    probs: np.ndarray
    thresholds: np.ndarray
    note: str = ""
    thresholds_by: str = ""


@dataclass(frozen=True)
class MemberRow:
    """One candidate member of an ensemble, as the report's members table shows it."""

    name: str
    run_name: str  # its trial's MLflow run
    weight: float  # 0: not selected
    picks: int
    val_score: float  # the search objective on the validation fold
    ensemble_fold_score: float  # the selection metric on the ensemble fold
    config: str  # what the trial searched, in words (`config_summary`)
    gflops: float | None = None  # forward GFLOP per 10 s record, from its trial
    cpu_ms: float | None = None  # CPU ms per record, as measured in its trial
    seed_style: bool = False


def config_summary(config: Mapping[str, Any]) -> str:
    """A trial's flat config in a few words: ``concat fusion, 2 branches, depths 4-3,
    width 32, focal loss, lr 0.0031``."""
    def text(value: Any) -> str:
        return "-".join(map(str, value)) if isinstance(value, list | tuple) else str(value)

    parts = []
    if "fusion" in config:
        parts.append(f"{config['fusion']} fusion")
    if "n_branches" in config:
        n = int(config["n_branches"])
        parts.append("one branch per label group" if n == 0 else
                     f"{n} branch{'es' if n != 1 else ''}")
    for key, word in (("branch.depths", "depths"), ("branch.width", "width"),
                      ("train.crop_len", "crop")):
        if key in config:
            parts.append(f"{word} {text(config[key])}")
    if "train.loss" in config:
        parts.append(f"{config['train.loss']} loss")
    if isinstance(config.get("train.lr"), int | float):
        parts.append(f"lr {float(config['train.lr']):.2g}")
    overrides = sorted(k.split(".")[1] for k in config if str(k).startswith("branches."))
    if overrides:
        parts.append(f"own settings for {', '.join(dict.fromkeys(overrides))}")
    return ", ".join(parts) or "–"


def members_section(members: Sequence[MemberRow], metric: str) -> Section:
    """The candidates with their weights (0: not selected), trials, configs, scores and
    costs; the ensemble's cost is the sum over the members it uses."""
    def cost(x: float | None, digits: int) -> str:
        return "–" if x is None else f"{x:.{digits}f}"

    body = tuple(
        (m.name, m.run_name, fixed(m.weight), str(m.picks), fixed(m.val_score, 4),
         fixed(m.ensemble_fold_score, 4), cost(m.gflops, 3), cost(m.cpu_ms, 1),
         m.config + (" (seed-style)" if m.seed_style else ""))
        for m in members)
    used = [m for m in members if m.weight > 0]
    total = []
    if used and all(m.gflops is not None for m in used):
        total.append(f"{sum(m.gflops or 0.0 for m in used):.3f} GFLOP")
    if used and all(m.cpu_ms is not None for m in used):
        total.append(f"{sum(m.cpu_ms or 0.0 for m in used):.1f} CPU ms")
    paragraphs = [f"{len(used)} of {len(members)} candidates carry weight. Scores: the search "
                  f"objective on the validation fold, and {metric} on the ensemble fold."]
    if total:
        paragraphs.append(f"The ensemble costs {' and '.join(total)} per 10 s record (the sum "
                          "over the members it uses, each measured in its trial).")
    return Section("Members", paragraphs=tuple(paragraphs),
                   header=("member", "trial run", "weight", "picks", "val AUPRC",
                           f"ensemble-fold {metric}", "GFLOP", "CPU ms", "config"),
                   body=body)


@dataclass(frozen=True)
class CalibrationSummary:
    """Macro ECE / Brier of the ensemble before and after calibration on one fold."""

    role: str  # "ensemble" (calibration fitted there), "test" (held out) or "evaluation"
    fold: int | str  # the fold number, or a description of evaluated folds ("all folds")
    ece_before: float
    ece_after: float
    brier_before: float
    brier_after: float

    def to_dict(self) -> dict[str, float | int | str]:
        return {"role": self.role, "fold": self.fold, "ece_before": self.ece_before,
                "ece_after": self.ece_after, "brier_before": self.brier_before,
                "brier_after": self.brier_after}


def calibration_summary(
    role: str, fold: int | str, y: np.ndarray, before: np.ndarray, after: np.ndarray
) -> CalibrationSummary:
    return CalibrationSummary(role, fold, float(ece(y, before)), float(ece(y, after)),
                              float(brier(y, before)), float(brier(y, after)))


def calibration_section(summaries: Sequence[CalibrationSummary], methods: Sequence[str],
                        label_names: Sequence[str]) -> Section:
    what = {"ensemble": "fitted", "test": "held out"}
    body = tuple(
        (f"{s.role} fold ({s.fold}, {what.get(s.role, s.role)})" if isinstance(s.fold, int)
         else f"{s.role} data ({s.fold})", f"{s.ece_before:.4f}",
         f"{s.ece_after:.4f}", f"{s.brier_before:.4f}", f"{s.brier_after:.4f}")
        for s in summaries
    )
    methods_line = "Calibration method per label: " + ", ".join(
        f"{n}: {m}" for n, m in zip(label_names, methods, strict=True))
    return Section("Ensemble calibration (macro over labels)", paragraphs=(methods_line,),
                   header=("fold", "ECE before", "ECE after", "Brier before", "Brier after"),
                   body=body)


def _evaluate_row(y: np.ndarray, row: ReportRow, label_names: Sequence[str], n_boot: int,
                  seed: int, min_positives: int | None) -> dict[str, Any]:
    if min_positives is None:
        return evaluate_with_ci(y, row.probs, row.thresholds, label_names, n_boot=n_boot,
                                seed=seed)
    result = evaluate_assessable(y, row.probs, row.thresholds, label_names, min_positives,
                                 n_boot=n_boot, seed=seed)
    if result is None:
        raise ValueError(f"no label has {min_positives} or more positives (and a negative) in "
                         "these records: nothing can be assessed")
    return result


def write_ensemble_report(
    out_dir: str | Path,
    y: np.ndarray,
    rows: Sequence[ReportRow],
    uncalibrated: np.ndarray,
    label_names: Sequence[str],
    calibration: Sequence[CalibrationSummary],
    calibration_methods: Sequence[str],
    title: str,
    notes: Sequence[str] = (),
    summary: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    calibrated_row: str = "ensemble",
    policies: Sequence[Any] | None = None,
    min_positives: int | None = None,
    extra_sections: Sequence[Section] = (),
    bounds: Mapping[str, Mapping[str, Any]] | None = None,
    members: Sequence[MemberRow] = (),
    member_metric: str = "macro_auprc",
    extra_figures: Sequence[Figure] = (),
) -> tuple[dict[str, dict[str, Any]], list[Path]]:
    """Evaluate every row on the test fold (bootstrap CIs), write the figures,
    ``report.{json,md,html}`` and ``summary.json`` into ``out_dir``; returns (results by row
    name, files). The page leads with the summary, the ``members`` table and the figures
    (reliability of ``uncalibrated`` against the ``calibrated_row``, PR curves, per-label
    F1, then ``extra_figures``, e.g. the budget's quality-cost view), embedded. ``notes``
    become the report's closing list (e.g. how the ensemble was chosen); ``policies`` (one
    `ThresholdPolicy` per label) add its operating points (section and summary.json). With
    ``min_positives`` labels with fewer positives are not assessable (`evaluate_assessable`);
    without it every label is evaluated (the build's test fold). ``extra_sections`` follow
    the calibration section. ``bounds``: the confidence bounds the thresholds reached where
    they were fitted (`policies.confidence_bounds`), for the operating points."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {row.name: _evaluate_row(y, row, label_names, n_boot, seed, min_positives)
               for row in rows}
    figures = save_report_figures(
        out, y, uncalibrated, {row.name: row.probs for row in rows}, results, label_names,
        calibrated_row=calibrated_row,
    )
    lead = [members_section(members, member_metric)] if members else []
    lead.append(Section("Figures", figures=(
        *(Figure.read(path, caption) for path, caption in
          zip(figures, _figure_captions(calibrated_row), strict=True)),
        *extra_figures)))
    extra = [calibration_section(calibration, calibration_methods, label_names),
             *extra_sections]
    points = None
    if policies is not None:
        points = operating_points(results[calibrated_row], policies, label_names,
                                  min_positives or 1, bounds)
        extra.insert(0, operating_point_section(points, calibrated_row))
    if notes:
        extra.append(Section("Notes", bullets=tuple(notes)))
    thresholds_by = {row.name: row.thresholds_by for row in rows if row.thresholds_by}
    paths = write_report(results, out / REPORT_STEM, label_names, title=title,
                         extra_sections=extra, lead_sections=lead,
                         operating_points=thresholds_by)
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps({
        **dict(summary or {}),
        "rows": {row.name: {"key": row.key, "note": row.note,
                            "thresholds_by": row.thresholds_by} for row in rows},
        "calibration": [s.to_dict() for s in calibration],
        "calibration_methods": dict(zip(label_names, calibration_methods, strict=True)),
        "notes": list(notes),
        **({"operating_points": points} if points is not None else {}),
    }, indent=2, default=float) + "\n")
    return results, [*paths.values(), *figures, summary_path]


def _figure_captions(calibrated_row: str) -> tuple[str, str, str]:
    """Captions of `save_report_figures`' three figures, in its order."""
    return (f"Reliability of the {calibrated_row} before and after calibration (all labels "
            "pooled, then per label; ECE in each legend)",
            "Precision-recall curves per label, one line per model (AP in the legend; dotted: "
            "the label's prevalence)",
            "Per-label F1 of each model at its own thresholds (macro mean in the legend)")
