"""``bench/gpu.sh`` / ``bench/gpu.py``: clean exit without a GPU, and the measuring code on a CPU.

CI has no GPU, so the GPU run itself is not tested here; what is: the script's two "no GPU"
paths (no ``nvidia-smi``; an ``nvidia-smi`` that lists a GPU TensorFlow cannot use) exit 0
and leave the results alone, and ``gpu.py --allow-cpu --quick`` runs the same measuring code
(fp32 and ``mixed_float16`` training and inference) and writes a JSON the report renders,
labelled with its device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_bench_report import report

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu.sh"


def _env(path: str) -> dict[str, str]:
    return {**os.environ, "PATH": path, "PYTHON": sys.executable, "TF_CPP_MIN_LOG_LEVEL": "3"}


def test_without_nvidia_smi_the_script_says_so_and_exits_0(tmp_path: Path) -> None:
    results = ROOT / "bench" / "results" / "gpu.json"
    before = results.read_bytes() if results.exists() else None
    proc = subprocess.run(
        ["bash", str(SCRIPT)], env=_env("/usr/bin:/bin"), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "no GPU here" in proc.stdout
    assert (results.read_bytes() if results.exists() else None) == before


@pytest.mark.slow
def test_a_gpu_tensorflow_cannot_use_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'case "$*" in *query-gpu*) echo "NVIDIA Test GPU, 999.1, 1024 MiB, 9.0";;'
        ' *) echo "GPU 0: NVIDIA Test GPU (UUID: GPU-0)";; esac\n'
    )
    smi.chmod(0o755)
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--out", str(out)],
        env={**_env(f"{fake}:/usr/bin:/bin"), "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "NVIDIA Test GPU" in proc.stdout
    assert "TensorFlow" in proc.stdout and "sees none" in proc.stdout
    assert not out.exists()


@pytest.mark.slow
def test_the_measuring_code_runs_on_a_cpu_and_the_report_labels_the_device(
    tmp_path: Path,
) -> None:
    out = tmp_path / "results" / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--allow-cpu", "--out", str(out)],
        env={**_env(os.environ["PATH"]), "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "gpu" and doc["device"] == "cpu" and doc["quick"] is True
    cnn = doc["models"]["small_cnn"]
    for policy in ("float32", "mixed_float16"):
        run = cnn["train"][f"{policy}_batch8"]
        assert run["policy"] == policy and run["images_per_s"] > 0
        assert run["final_loss_finite"] is True
        # the softmax stays float32 under the mixed policy (models/base.py)
        assert run["classifier_dtype"] == "float32"
        assert cnn["inference"][policy]["batch1_mean_ms"] > 0
    assert cnn["mixed_speedup_train"]["batch8"] > 0
    # the report puts it beside the CPU results, named by its device, not in the header
    (tmp_path / "results" / "overhead.json").write_text(
        json.dumps({"benchmark": "overhead", "machine": {"cpus": 2}, "verdict": {"x": 1.0}})
    )
    block = report.render(report.load_results(tmp_path / "results"))
    assert "small_cnn training img/s batch 8, fp32 / mixed precision on cpu" in block
    assert "small_cnn inference ms/image at batch 1 (batched), fp32 / mixed on cpu" in block
    assert "no result yet (`bench/results/gpu.json`" not in block
    assert block.startswith("Measured by `make bench` on 2 CPUs")
