#!/usr/bin/env bash
# Regenerate docs/reproduction.md and docs/reproduction.html from the real sample data:
#   bash docs/reproduce.sh      (about two hours on 2 CPU cores; run it again to continue a run
#                                that was cut: training resumes from its last saved epoch)
# 1. The sample data (../shared/data, see its PROVENANCE.md) is snapshotted once into a DVC data
#    registry as data-v1 (runs/data-registry; its DVC remote is the folder runs/dvc-remote here,
#    an S3 bucket on a cluster: CXRFLOW_DATA_REMOTE), and the run is pinned to that version.
# 2. One `cxrflow pipeline run --local` of this commit with the `sample` profile (params.yaml)
#    trains and evaluates every model; 3. `cxrflow report` writes the report from that run;
# 4. bench/int8_trained.py checks int8 against fp32 on its trained ResNet-50 (model_5).
# MLflow: ./runs/reproduction/mlruns.db unless MLFLOW_TRACKING_URI is set.
set -euo pipefail
cd "$(dirname "$0")/.."
make venv >/dev/null
D=${CXRFLOW_SHARED_DATA:-../shared/data}
OUT=runs/reproduction
REG=${CXRFLOW_DATA_REGISTRY:-$PWD/runs/data-registry}
VERSION=data-v1
mkdir -p "$OUT"
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/$OUT/mlruns.db}
export CXRFLOW_ARTIFACT_ROOT=${CXRFLOW_ARTIFACT_ROOT:-file://$PWD/$OUT/mlartifacts}
ROOTS=(kermany cohen-2020-06-22 cohen-supplement-2020-08)
SOURCES="data.sources={kermany: [raw/kermany], cohen: [raw/cohen-2020-06-22, raw/cohen-supplement-2020-08]}"

if ! git -C "$REG" rev-parse -q --verify "refs/tags/$VERSION" >/dev/null 2>&1; then
  .venv/bin/cxrflow data init --remote "${CXRFLOW_DATA_REMOTE:-$PWD/runs/dvc-remote}" "$REG"
  mkdir -p "$REG/raw"
  for root in "${ROOTS[@]}"; do
    [ -d "$REG/raw/$root" ] || cp -r "$D/$root" "$REG/raw/$root"
  done
  .venv/bin/cxrflow --set "$SOURCES" data snapshot --registry "$REG" --tag "$VERSION" \
    -m "The real sample data of ../shared/data (PROVENANCE.md): Kermany, Cohen 2020-06-22, supplement"
fi

SETTINGS=(
  --profile sample   # params.yaml: the reduced settings, the ResNet-50 pair, the mixed variant
  --set "$SOURCES"
  --set "data.registry=$REG"
  --set "data.version=$VERSION"
  --set "train.checkpoint_root=$PWD/$OUT/checkpoints"   # a cut run resumes from these
)
LOG=$OUT/pipeline.log
RESUME=()
if [ -f "$LOG" ]; then  # the last run in the log, unless it finished: continue it
  id=$(awk '/pipeline run id /{id=$4; sub(/;$/, "", id); done=0}
            /cxrflow pipeline finished/{done=1} END{if (!done) print id}' "$LOG")
  if [ -n "$id" ]; then
    RESUME=(--resume "$id")
  fi
fi
start=$(date +%s)
.venv/bin/cxrflow "${SETTINGS[@]}" pipeline run --local --pipeline-root "$OUT/kfp" \
  "${RESUME[@]}" 2>&1 | tee -a "$LOG"
echo "$(( $(date +%s) - start ))" >> "$OUT/seconds"   # one line per start (a resumed run: several)
rm -rf "$OUT/checkpoints"   # the run finished: its models are in its outputs and in MLflow
run_dir=$(ls -d "$OUT"/kfp/cxrflow-* | tail -1)
total=0
while read -r s; do total=$(( total + s )); done < "$OUT/seconds"
elapsed="$(( total / 60 )) min"
# --no-patient-images: the committed report must not carry the patients' X-rays (Grad-CAM
# overlays stay in the run's outputs and in MLflow)
.venv/bin/cxrflow "${SETTINGS[@]}" report --run-dir "$run_dir" --out docs --elapsed "$elapsed" \
  --no-patient-images
# the int8 check on the trained ImageNet-free ResNet-50 (bench/int8_trained.py), into the
# performance table (docs/performance.md)
.venv/bin/python bench/int8_trained.py --run-dir "$run_dir" --model model_5
.venv/bin/python bench/report.py
