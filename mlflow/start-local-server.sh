#!/usr/bin/env bash
# Start a local MLflow tracking server (UI + REST API) on 127.0.0.1 over the same store the
# project uses without any server: sqlite:///<repo>/mlruns.db and <repo>/mlartifacts.
#
#   mlflow/start-local-server.sh                 # http://127.0.0.1:5000
#   MLFLOW_PORT=5001 mlflow/start-local-server.sh --workers 1
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000   # then runs go through the server
#
# Extra arguments are passed to `mlflow server`. It binds to loopback only: the server has no
# authentication. Use the Kubernetes manifests (infra/k8s) for a shared server.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
port="${MLFLOW_PORT:-5000}"
backend="${CXRFLOW_LOCAL_BACKEND_STORE_URI:-sqlite:///${root}/mlruns.db}"
artifacts="${CXRFLOW_LOCAL_ARTIFACTS_DESTINATION:-${root}/mlartifacts}"

if [[ -n "${MLFLOW_BIN:-}" ]]; then
  mlflow_bin="${MLFLOW_BIN}"
elif [[ -x "${root}/.venv/bin/mlflow" ]]; then
  mlflow_bin="${root}/.venv/bin/mlflow"
elif command -v mlflow >/dev/null 2>&1; then
  mlflow_bin="$(command -v mlflow)"
else
  echo "mlflow not found: run 'make venv' (or set MLFLOW_BIN)" >&2
  exit 1
fi

echo "MLflow UI: http://127.0.0.1:${port}  backend: ${backend}  artifacts: ${artifacts}" >&2
exec "${mlflow_bin}" server \
  --host 127.0.0.1 \
  --port "${port}" \
  --backend-store-uri "${backend}" \
  --artifacts-destination "${artifacts}" \
  "$@"
