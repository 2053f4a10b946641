#!/usr/bin/env bash
# Regenerate docs/reproduction.md and docs/reproduction.html from the real sample data:
#   bash docs/reproduce.sh            (not yet timed with the sample profile's six models: the
#                                      four-model settings took 57 min on 2 CPU cores)
# The paper's own settings (224 px, up to 500 epochs) are params.yaml's defaults; the sample
# profile reduces them to what one 2-core machine can finish and adds model_4 / model_5.
# Data: ../shared/data (see its PROVENANCE.md). MLflow: ./runs/reproduction/mlruns.db unless MLFLOW_TRACKING_URI is set.
set -euo pipefail
cd "$(dirname "$0")/.."
make venv >/dev/null
D=${CXRFLOW_SHARED_DATA:-../shared/data}
OUT=runs/reproduction
mkdir -p "$OUT"
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/$OUT/mlruns.db}
export CXRFLOW_ARTIFACT_ROOT=${CXRFLOW_ARTIFACT_ROOT:-file://$PWD/$OUT/mlartifacts}
SETTINGS=(
  --profile sample   # params.yaml: the reduced settings and the ImageNet-free ResNet-50 pair
  --set "data.sources={kermany: [$D/kermany], cohen: [$D/cohen-2020-06-22, $D/cohen-supplement-2020-08]}"
)
start=$(date +%s)
.venv/bin/cxrflow "${SETTINGS[@]}" pipeline run --local --pipeline-root "$OUT/kfp"
run_dir=$(ls -d "$OUT"/kfp/cxrflow-* | tail -1)
elapsed="$(( ($(date +%s) - start) / 60 )) min"
# --no-patient-images: the committed report must not carry the patients' X-rays (Grad-CAM
# overlays stay in the run's outputs and in MLflow)
.venv/bin/cxrflow "${SETTINGS[@]}" report --run-dir "$run_dir" --out docs --elapsed "$elapsed" \
  --no-patient-images
