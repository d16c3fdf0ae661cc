"""Evaluating a bundle: metrics with bootstrap confidence intervals, proper scoring rules, the
challenge-style score, the report and its plots (`evaluate_bundle`, the `ecgtune evaluate`
logic), and refitting thresholds without a rebuild."""
