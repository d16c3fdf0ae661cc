#!/usr/bin/env bash
# The GPU measurement for the channels-last layout and the measured precision, in ONE call on a
# GPU machine (H100/H200: at most 7.5 min, plus the machine's start): `gpu_check` with every
# section the performance targets need first (layouts x precisions side by side, auto's pick,
# two trials per GPU), then the profile of the new layout, regional compile and the earlier checks, and a real
# search last, each started only while the budget lasts (the rest say "skipped").
#
#   bash tests/benchmarks/gpu_issue_check.sh [OUTDIR]      # from the repository root
#
# Writes OUTDIR/gpu-check.txt (the table, as printed), OUTDIR/gpu-check.json (rows, rewritten
# after every section: a run cut short keeps what it measured) and OUTDIR/gpu-choices.json
# (the rates `train.precision=auto` reads). OUTDIR: the argument, else $OUT, else `.`.
# GPU_CHECK_PY (default python3) must have a CUDA build of torch; ecgtune need not be
# installed: its four folders are put on the path as the `ecgtune` package. Wheels in .whl/
# (see BENCHMARKS.md "GPU check") are installed first, for packages the machine lacks.
set -uo pipefail
out_dir=${1:-${OUT:-.}}
py=${GPU_CHECK_PY:-python3}
budget=${GPU_CHECK_BUDGET_S:-300}    # no section starts after this many seconds
limit=${GPU_CHECK_LIMIT_S:-450}      # and the whole check ends by this one (timeout)
mkdir -p "$out_dir"
if compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d)/site
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl || echo "installing .whl/ failed: sections that need it skip"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$py" -c "import ecgtune.components" 2>/dev/null; then
  ns=$(mktemp -d)/ns
  mkdir -p "$ns/ecgtune"
  for pkg in data_prep components search ensembles; do ln -s "$PWD/$pkg" "$ns/ecgtune/$pkg"; done
  export PYTHONPATH="$ns${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
export ECGTUNE_GPU_CHOICES="$out_dir/gpu-choices.json"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout --signal=INT "$limit" "$py" -m ecgtune.ensembles.cli.gpu_check --quick --profile \
  --compile --search --budget-s "$budget" --json "$out_dir/gpu-check.json" \
  --choices "$ECGTUNE_GPU_CHOICES" 2>&1 | tee "$out_dir/gpu-check.txt"
status=${PIPESTATUS[0]}
[ "$status" = 0 ] || echo "gpu_check ended with status $status; the rows so far are in $out_dir/gpu-check.json"
exit "$status"
