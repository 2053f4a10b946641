"""components.images: the environment wins, then the image record by digest, then the tag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.images import image_notice, record_path, resolve_image

TAGS = {"cpu": "reg.example/cxrflow:0.1.0", "gpu": "reg.example/cxrflow:0.1.0-gpu"}

DIGEST = "sha256:" + "ab" * 32
GPU_DIGEST = "sha256:" + "cd" * 32
# A fresh interpreter per compile: the components bind the images when they are written.
COMPILE = (
    "import sys; from pipelines.compile import compile_pipeline; "
    "from cxrflow.config import load_params; "
    "compile_pipeline(load_params('params.yaml', 'smoke'), sys.argv[1])"
)


def choices(env: dict[str, str]) -> list:
    return [resolve_image(v, TAGS[v], env) for v in ("cpu", "gpu")]


def write_record(path: Path, variants: dict[str, str]) -> Path:
    images = {
        v: {"repository": "localhost/cxrflow", "digest": d, "tags": [f"localhost/cxrflow:{v}"]}
        for v, d in variants.items()
    }
    path.write_text(json.dumps({"images": images}))
    return path


def test_record_gives_the_digest(tmp_path: Path) -> None:
    env = {"CXRFLOW_IMAGE_RECORD": str(write_record(tmp_path / "i.json", {"cpu": DIGEST}))}
    cpu = resolve_image("cpu", TAGS["cpu"], env)
    assert (cpu.image, cpu.source) == (f"localhost/cxrflow@{DIGEST}", "record")
    gpu = resolve_image("gpu", TAGS["gpu"], env)
    assert (gpu.image, gpu.source) == (TAGS["gpu"], "tag")
    notice = image_notice(choices(env))
    assert notice is not None and "\n" not in notice
    assert "gpu steps use the tag" in notice and "cpu steps" not in notice


def test_environment_wins_over_the_record(tmp_path: Path) -> None:
    record = write_record(tmp_path / "i.json", {"cpu": DIGEST, "gpu": GPU_DIGEST})
    env = {"CXRFLOW_IMAGE_RECORD": str(record), "CXRFLOW_IMAGE": "reg.example/x:1"}
    assert resolve_image("cpu", TAGS["cpu"], env).image == "reg.example/x:1"
    assert resolve_image("gpu", TAGS["gpu"], env).image == f"localhost/cxrflow@{GPU_DIGEST}"
    assert image_notice(choices(env)) is None


@pytest.mark.parametrize(
    "text", ["", "{", '{"images": {"cpu": {"repository": "r", "digest": "latest"}}}']
)
def test_bad_or_missing_record_falls_back_to_the_tag(tmp_path: Path, text: str) -> None:
    path = tmp_path / "i.json"
    if text:
        path.write_text(text)
    env = {"CXRFLOW_IMAGE_RECORD": str(path)}
    choice = resolve_image("cpu", TAGS["cpu"], env)
    assert (choice.image, choice.source) == (TAGS["cpu"], "tag")
    notice = image_notice(choices(env))
    assert notice is not None and notice.count("\n") == 0 and str(path) in notice


def test_default_record_path() -> None:
    assert record_path({}) == Path("build/image.json")


def test_compile_names_the_image_by_digest(tmp_path: Path) -> None:
    """A fresh interpreter (the images are bound when the components are written)."""
    record = write_record(tmp_path / "i.json", {"cpu": DIGEST, "gpu": GPU_DIGEST})
    out = tmp_path / "p.yaml"
    env = {**os.environ, "CXRFLOW_IMAGE_RECORD": str(record)}
    for name in ("CXRFLOW_IMAGE", "CXRFLOW_GPU_IMAGE"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", COMPILE, str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    text = out.read_text()
    assert f"image: localhost/cxrflow@{DIGEST}" in text
    assert f"image: localhost/cxrflow@{GPU_DIGEST}" in text
    assert "ghcr.io/cxrflow" not in text
    assert "not pinned by digest" not in done.stderr


def test_compile_says_so_in_one_line_without_a_record(tmp_path: Path) -> None:
    out = tmp_path / "p.yaml"
    env = {**os.environ, "CXRFLOW_IMAGE_RECORD": str(tmp_path / "none.json")}
    for name in ("CXRFLOW_IMAGE", "CXRFLOW_GPU_IMAGE"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", COMPILE, str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [line for line in done.stderr.splitlines() if "pinned by digest" in line]
    assert len(lines) == 1, done.stderr
    assert "none.json" in lines[0] and "ghcr.io/cxrflow/cxrflow:0.1.0" in lines[0]
    assert "image: ghcr.io/cxrflow/cxrflow:0.1.0\n" in out.read_text()
