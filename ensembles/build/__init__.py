"""Building an ensemble from a search: the members (top-K finished trials and their fold
predictions), Caruana selection, per-label calibrators, threshold policies, the compute budget,
and `build_ensemble`, which fits all of it on the ensemble fold and reports the test fold."""
