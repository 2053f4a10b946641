#!/usr/bin/env bash
# Regenerate docs/reproduction.md and docs/reproduction.html from the real sample data:
#   bash docs/reproduce.sh            (about 1 h on 2 CPU cores; the settings below)
# The paper's own settings (224 px, up to 500 epochs) are params.yaml's defaults; these are
# reduced to what one 2-core machine finishes in about an hour. Data: ../shared/data (see its
# PROVENANCE.md). MLflow: ./runs/reproduction/mlruns.db unless MLFLOW_TRACKING_URI is set.
set -euo pipefail
cd "$(dirname "$0")/.."
make venv >/dev/null
D=${CXRFLOW_SHARED_DATA:-../shared/data}
OUT=runs/reproduction
mkdir -p "$OUT"
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/$OUT/mlruns.db}
export CXRFLOW_ARTIFACT_ROOT=${CXRFLOW_ARTIFACT_ROOT:-file://$PWD/$OUT/mlartifacts}
SETTINGS=(
  --profile paper
  --set "data.sources={kermany: [$D/kermany], cohen: [$D/cohen-2020-06-22, $D/cohen-supplement-2020-08]}"
  --set ingest.workers=2
  --set train.image_size=96 --set train.epochs=30 --set train.patience=6
  --set train.reduce_lr_patience=3 --set split.dataset_0_max_per_class=1000
  --set evaluate.latency_samples=20
  --set models.model_3.allow_random_init=true
)
start=$(date +%s)
.venv/bin/cxrflow "${SETTINGS[@]}" pipeline run --local --pipeline-root "$OUT/kfp"
run_dir=$(ls -d "$OUT"/kfp/cxrflow-* | tail -1)
elapsed="$(( ($(date +%s) - start) / 60 )) min"
# --no-patient-images: the committed report must not carry the patients' X-rays (Grad-CAM
# overlays stay in the run's outputs and in MLflow)
.venv/bin/cxrflow "${SETTINGS[@]}" report --run-dir "$run_dir" --out docs --elapsed "$elapsed" \
  --no-patient-images
