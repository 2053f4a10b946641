"""``mlflow-runs.png`` and ``mlflow-model.png``: the MLflow UI over the run's tracking store.

``mlflow server`` runs on 127.0.0.1 (a free port, no telemetry) over the run folder's
``mlruns.db`` and ``mlartifacts/``, and is stopped at the end, also on error. The runs page shows
the experiment with the latest pipeline run expanded and its headline columns; the model page
the registered model's versions with their aliases and tags.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finished_run import Tracked, latest_run, registered_model, tracked_run
from headless_browser import VIEWPORT, new_page

from cxrflow import names


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def mlflow_server(run_dir: Path, tmp: Path, timeout: float = 120.0) -> Iterator[str]:
    """``mlflow server`` on the run's store, on 127.0.0.1; yields its URL, stops it after."""
    port = free_port()
    db, artifacts = (run_dir / "mlruns.db").resolve(), (run_dir / "mlartifacts").resolve()
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--default-artifact-root",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = (tmp / "mlflow-server.log").open("wb")
    # no usage reports leave the machine (MLflow 3 sends them unless told not to)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{url}/health", proc, timeout, tmp / "mlflow-server.log")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn workers
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _wait_for(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mlflow server exited: {log.read_text(errors='replace')[-800:]}")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(url, timeout=2) as answer,
        ):
            if answer.status == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"mlflow server did not answer {url} within {timeout:.0f} s")


RUN_COLUMNS = ("test_accuracy", "test_f1_macro", names.TAG_AUDIT_PASSED)
"""The runs table's extra columns: each model's headline metrics and the audit's verdict."""
HIDDEN_COLUMNS = ("Dataset",)
UI_TIMEOUT_MS = 90_000


def _toggle_column(page: Any, title: str) -> None:
    """Tick (or untick) one column in the runs table's column selector, which must be open."""
    page.fill('input[placeholder="Search columns"]', title)
    exact = page.locator(".du-bois-light-tree-title", has_text=re.compile(f"^{re.escape(title)}$"))
    node = page.locator(".du-bois-light-tree-treenode").filter(has=exact)
    node.locator(".du-bois-light-tree-checkbox").first.click()


def _runs_page(page: Any, url: str, tracked: Tracked) -> None:
    """The experiment's runs table with the pipeline run expanded and the headline columns."""
    # MLflow 3.17 picks GenAI or model-training pages from this parameter (default GenAI),
    # not from the experiment's mlflow.experimentKind tag
    page.goto(
        f"{url}/#/experiments/{tracked.experiment_id}/runs?workflowType=machine_learning",
        wait_until="load",
    )
    page.wait_for_selector(f"text={tracked.run_name}", timeout=UI_TIMEOUT_MS)
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():  # the assistant panel, and the side bar, take width the table needs
        close.first.click()
    page.click('[data-component-id="mlflow_header.toggle_sidebar_button"]')
    parent = page.locator(".ag-row").filter(has_text=tracked.run_name)
    parent.locator('button[data-component-id$="runnamecellrenderer.tsx_46"]').first.click()
    page.wait_for_function(
        "document.querySelectorAll('.ag-center-cols-container .ag-row').length > 1",
        timeout=UI_TIMEOUT_MS,
    )
    page.click('[data-component-id$="experimentviewrunscolumnselector.tsx_315"]')
    for title in (*HIDDEN_COLUMNS, *RUN_COLUMNS):
        _toggle_column(page, title)
    page.keyboard.press("Escape")
    # the run names in full: AG Grid sizes a column to its content on a double click of its
    # resize handle (only this one: wider columns would push the verdict out of the window)
    name_header = page.locator(".ag-header-cell").filter(has_text="Run Name")
    name_header.locator(".ag-header-cell-resize").first.dblclick()
    page.wait_for_timeout(1_500)


def _shoot(page: Any, target: Path, bottom_of: str | None = None, margin: int = 24) -> Path:
    """A screenshot of the window, cut below the element ``bottom_of`` where given."""
    clip = None
    if bottom_of:
        box = page.locator(bottom_of).first.bounding_box()
        if box:
            height = min(VIEWPORT["height"], int(box["y"] + box["height"]) + margin)
            clip = {"x": 0, "y": 0, "width": VIEWPORT["width"], "height": height}
    page.screenshot(path=str(target), clip=clip)
    return target


def _dismiss_overlays(page: Any) -> None:
    """Close MLflow's announcement dialog and its assistant panel where they show."""
    if page.locator(".du-bois-light-modal-wrap").count():
        page.keyboard.press("Escape")
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count() and close.first.is_visible():
        close.first.click()


def _model_page(page: Any, url: str, model: str) -> None:
    """The registered model's versions with their aliases and tags."""
    page.goto(f"{url}/#/models/{model}?workflowType=machine_learning", wait_until="load")
    page.wait_for_selector('[data-testid="model-version-table"]', timeout=UI_TIMEOUT_MS)
    page.wait_for_selector("text=@", timeout=UI_TIMEOUT_MS)  # an alias: the versions are in
    _dismiss_overlays(page)
    for title in ("Description", "Tags"):  # the model's own: the versions table is the point
        page.locator(".du-bois-light-collapse-header").filter(has_text=title).first.click()
    page.wait_for_timeout(1_000)


def mlflow_pictures(browser: Any, run_dir: Path, out: Path, tmp: Path) -> list[Path]:
    """``mlflow-runs.png`` and ``mlflow-model.png`` from the MLflow UI over the run's store."""
    db = run_dir / "mlruns.db"
    run = latest_run(run_dir)
    tracked = tracked_run(db, run.started_at if run else None)
    model = registered_model(db, tracked.run_id)
    written = []
    with mlflow_server(run_dir, tmp) as url, new_page(browser) as page:
        _runs_page(page, url, tracked)
        written.append(_shoot(page, out / "mlflow-runs.png", ".ag-center-cols-container"))
        if model:
            _model_page(page, url, model)
            written.append(
                _shoot(page, out / "mlflow-model.png", '[data-testid="model-version-table"]')
            )
    return written
