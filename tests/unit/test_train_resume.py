"""Training survives a kill: checkpoints every epoch, resume after the last completed one.

The slow tests kill a real training process with SIGTERM (what a preempted node gets) and start
it again with the same checkpoint directory. This module doubles as that process: run as a
script it trains as :func:`run_training` says and prints one line per event on stdout::

    CALLBACKS <phase> <offset>      the callback factory was called
    BEGIN <phase> <global epoch>    an epoch starts (1-based, all phases)
    EPOCH <phase> <global epoch> <loss>
    PAUSED                          it waits here to be killed
    RESULT <json>                   train_model returned

The fast tests interrupt training in-process (an exception from a callback) to check what the
checkpoint restores: early stopping's and the plateau schedule's state, a phase that ended
just before the kill, a finished training, and a checkpoint of another configuration.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest

from cxrflow.config import ModelSpec, TrainParams

CLASSES = ("normal", "bacterial", "covid")
SIZE = 32


def _data(n: int = 60, n_val: int = 15) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    y = (np.arange(n + n_val) % 3).astype(np.int32)
    x = rng.integers(0, 80, (n + n_val, SIZE, SIZE, 1)).astype(np.uint8)
    x[y == 1, : SIZE // 2] += 120  # some signal, so the losses move
    x[y == 2, SIZE // 2 :] += 120
    return x[:n], y[:n], x[n:], y[n:]


def _params(epochs: int) -> TrainParams:
    # patience larger than epochs: every run trains exactly `epochs` epochs per phase
    return TrainParams(
        image_size=SIZE, batch_size=16, epochs=epochs, patience=100, reduce_lr_patience=100
    )


def _spec(mode: str) -> ModelSpec:
    init = "scratch" if mode == "full" else "model_0"
    return ModelSpec(dataset="dataset_1", architecture="small_cnn", init=init)


def run_training(cfg: dict[str, Any], say: Callable[..., None]) -> Any:
    """Train a tiny small_cnn as ``cfg`` says, reporting events through ``say``.

    ``cfg``: ``mode`` (``full`` = scratch, ``transfer`` = head + finetune from the model saved
    at ``base``), ``epochs`` per phase, ``checkpoint_dir``, and ``pause``: ``[phase, epoch]``
    (epoch 1-based within the phase) at whose start the process waits to be killed, or null.
    """
    import keras

    from cxrflow.train import train_model

    base = keras.models.load_model(cfg["base"]) if cfg.get("base") else None
    pause = tuple(cfg["pause"]) if cfg.get("pause") else None

    class _Report(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self, phase: str, offset: int) -> None:
            super().__init__()
            self.phase, self.offset = phase, offset

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            say("BEGIN", self.phase, self.offset + epoch + 1)
            if pause == (self.phase, epoch + 1):
                say("PAUSED")
                time.sleep(600)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            say("EPOCH", self.phase, self.offset + epoch + 1, repr(float(logs["loss"])))

    def factory(phase: str, offset: int) -> list[Any]:
        say("CALLBACKS", phase, offset)
        return [_Report(phase, offset)]

    return train_model(
        _spec(cfg["mode"]),
        _params(cfg["epochs"]),
        CLASSES,
        _data(),
        base_model=base,
        callbacks=factory,
        verbose=0,
        checkpoint_dir=cfg["checkpoint_dir"],
    )


def _print(*words: Any) -> None:
    print(*words, flush=True)


def _main() -> None:
    result = run_training(json.loads(sys.argv[1]), _print)
    summary = {
        "history": result.history,
        "phases": result.phases,
        "resumed_from_epoch": result.resumed_from_epoch,
    }
    _print("RESULT", json.dumps(summary))


# --------------------------------------------------------------------- kill a real process


def _start(cfg: dict[str, Any], log: IO[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen(
        [sys.executable, __file__, json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )


def _lines_until_paused(proc: subprocess.Popen[str]) -> list[list[str]]:
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        words = line.split()
        lines.append(words)
        if words == ["PAUSED"]:
            return lines
    raise AssertionError(f"process ended (rc={proc.wait()}) before pausing: {lines}")


def _kill_then_resume(cfg: dict[str, Any], tmp: Path) -> tuple[list, list, dict[str, Any]]:
    """Run ``cfg`` until it pauses, SIGTERM it, run it again; returns both outputs + result."""
    with (tmp / "first.log").open("w") as log:
        first = _start(cfg, log)
        try:
            before = _lines_until_paused(first)
        finally:
            first.send_signal(signal.SIGTERM)
            rc = first.wait(timeout=60)
            assert first.stdout is not None
            first.stdout.close()
    assert rc == -signal.SIGTERM
    with (tmp / "second.log").open("w") as log:
        second = _start({**cfg, "pause": None}, log)
        out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, (tmp / "second.log").read_text()[-3000:]
    after = [line.split() for line in out.splitlines()]
    result = json.loads(next(" ".join(w[1:]) for w in after if w[:1] == ["RESULT"]))
    return before, after, result


def _epochs(lines: list[list[str]]) -> list[int]:
    return [int(w[2]) for w in lines if w[:1] == ["EPOCH"]]


def _uninterrupted(cfg: dict[str, Any], tmp: Path) -> Any:
    return run_training({**cfg, "pause": None, "checkpoint_dir": str(tmp / "straight")}, _quiet)


def _quiet(*words: Any) -> None:
    pass


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_scratch_training_resumes_at_the_next_epoch(tmp_path: Path) -> None:
    epochs = 6
    cfg = {
        "mode": "full",
        "epochs": epochs,
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "pause": ["full", 3],  # waits at the start of epoch 3: epochs 1-2 are checkpointed
    }
    before, after, result = _kill_then_resume(cfg, tmp_path)
    assert _epochs(before) == [1, 2]
    assert next(w for w in after if w[0] == "BEGIN") == ["BEGIN", "full", "3"]
    assert _epochs(after) == [3, 4, 5, 6]
    assert ["CALLBACKS", "full", "0"] in after
    assert result["resumed_from_epoch"] == 2

    history = result["history"]
    straight = _uninterrupted(cfg, tmp_path)
    assert len(history["loss"]) == len(straight.history["loss"]) == epochs
    assert sorted(history) == sorted(straight.history)
    assert all(len(v) == epochs for v in history.values())
    # the first epochs are the killed process's own, not re-trained ones
    first_losses = [float(w[3]) for w in before if w[0] == "EPOCH"]
    assert history["loss"][:2] == first_losses
    assert result["phases"][0]["epochs"] == epochs
    assert result["phases"][0]["resumed_epochs"] == 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_transfer_resumes_in_finetune_without_redoing_head(tmp_path: Path) -> None:
    import keras

    from cxrflow.models import build_model

    keras.utils.set_random_seed(0)
    base = tmp_path / "model_0.keras"
    build_model("small_cnn", SIZE, len(CLASSES)).save(base)
    epochs = 3  # per phase: head 1-3, finetune 4-6
    cfg = {
        "mode": "transfer",
        "epochs": epochs,
        "base": str(base),
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "pause": ["finetune", 2],  # head done, finetune epoch 1 (global 4) checkpointed
    }
    before, after, result = _kill_then_resume(cfg, tmp_path)
    assert _epochs(before) == [1, 2, 3, 4]
    assert ["CALLBACKS", "head", "0"] in before
    assert ["CALLBACKS", "finetune", "3"] in before
    # the second process trains neither head nor finetune's first epoch again, and its
    # callbacks get the global offset, so epoch numbers (MLflow steps) continue
    assert not any(w[:2] == ["CALLBACKS", "head"] for w in after)
    assert ["CALLBACKS", "finetune", "3"] in after
    assert next(w for w in after if w[0] == "BEGIN") == ["BEGIN", "finetune", "5"]
    assert _epochs(after) == [5, 6]
    assert result["resumed_from_epoch"] == 4

    history = result["history"]
    straight = _uninterrupted(cfg, tmp_path)
    assert len(history["loss"]) == len(straight.history["loss"]) == 2 * epochs
    assert history["phase"] == straight.history["phase"] == [0.0] * 3 + [1.0] * 3
    first_losses = [float(w[3]) for w in before if w[0] == "EPOCH"]
    assert history["loss"][:4] == first_losses
    assert [(p["phase"], p["epochs"], p["resumed_epochs"]) for p in result["phases"]] == [
        ("head", 3, 3),
        ("finetune", 3, 1),
    ]
    assert [p["trainable_params"] for p in result["phases"]] == [
        p["trainable_params"] for p in straight.phases
    ]


# ------------------------------------------------------------------ in-process interruptions

keras = pytest.importorskip("keras")

from cxrflow.train import CHECKPOINT_STATE, train_model  # noqa: E402


class _Interrupted(Exception):
    pass


def _interrupt_at(epoch: int | None = None, at_train_end: bool = False) -> Any:
    """A callback factory whose callback raises at the start of (0-based) ``epoch``."""

    class _Raise(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_begin(self, e: int, logs: Any = None) -> None:
            if e == epoch:
                raise _Interrupted

        def on_train_end(self, logs: Any = None) -> None:
            if at_train_end:
                raise _Interrupted

    return lambda phase, offset: [_Raise()]


def _plateau() -> tuple[ModelSpec, TrainParams, tuple[np.ndarray, ...]]:
    """Labels all 0 in training, all 1 in validation: val_loss rises from the second epoch."""
    x = np.random.default_rng(0).integers(0, 255, (24, SIZE, SIZE, 1)).astype(np.uint8)
    params = TrainParams(
        image_size=SIZE,
        batch_size=8,
        epochs=20,
        patience=4,
        reduce_lr_factor=0.5,
        reduce_lr_patience=2,
    )
    data = (x, np.zeros(24, np.int32), x, np.ones(24, np.int32))
    return _spec("full"), params, data


def test_resume_keeps_early_stopping_and_plateau_state(tmp_path: Path) -> None:
    """Interrupted with both callbacks mid-count, the resumed run stops and decays on time."""
    spec, params, data = _plateau()
    straight = train_model(spec, params, CLASSES, data, verbose=0)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Interrupted):
        train_model(
            spec, params, CLASSES, data, callbacks=_interrupt_at(2), verbose=0, checkpoint_dir=ckpt
        )
    resumed = train_model(spec, params, CLASSES, data, verbose=0, checkpoint_dir=ckpt)
    assert resumed.resumed_from_epoch == 2
    # early stopping's wait count and best value survived: it stops where the straight run did
    assert len(resumed.history["loss"]) == len(straight.history["loss"]) == params.patience + 1
    # the plateau schedule's wait count and the optimizer's rate survived
    assert resumed.history["learning_rate"] == pytest.approx(straight.history["learning_rate"])
    assert resumed.history["learning_rate"][-1] == pytest.approx(params.learning_rate / 2)
    # best weights (epoch 1, saved before the interruption) were restored at the end
    probs = np.asarray(resumed.model.predict(data[2].astype("float32"), verbose=0))
    restored = float(np.mean(-np.log(probs[:, 1])))
    assert restored == pytest.approx(resumed.history["val_loss"][0], rel=1e-4)


def test_a_kill_after_the_last_epoch_does_not_train_again(tmp_path: Path) -> None:
    """Killed after early stopping ended the phase but before it was recorded as complete."""
    spec, params, data = _plateau()
    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Interrupted):
        train_model(
            spec,
            params,
            CLASSES,
            data,
            callbacks=_interrupt_at(at_train_end=True),
            verbose=0,
            checkpoint_dir=ckpt,
        )
    calls: list[tuple[str, int]] = []
    again = train_model(
        spec,
        params,
        CLASSES,
        data,
        callbacks=lambda phase, offset: calls.append((phase, offset)) or [],
        verbose=0,
        checkpoint_dir=ckpt,
    )
    assert calls == []
    assert again.resumed_from_epoch == len(again.history["loss"]) == params.patience + 1
    probs = np.asarray(again.model.predict(data[2].astype("float32"), verbose=0))
    assert float(np.mean(-np.log(probs[:, 1]))) == pytest.approx(
        again.history["val_loss"][0], rel=1e-4
    )


def test_finished_checkpoint_returns_the_model_and_other_config_starts_over(
    tmp_path: Path,
) -> None:
    spec, params, data = _plateau()
    params = params.model_copy(update={"epochs": 2})
    ckpt = tmp_path / "ckpt"
    first = train_model(spec, params, CLASSES, data, verbose=0, checkpoint_dir=ckpt)
    assert first.resumed_from_epoch == 0
    state = json.loads((ckpt / CHECKPOINT_STATE).read_text())
    assert state["current"] is None and len(state["completed"]) == 1
    assert sorted(p.name for p in ckpt.iterdir()) == [CHECKPOINT_STATE, "w-p0-end.npz"]

    calls: list[str] = []
    again = train_model(
        spec,
        params,
        CLASSES,
        data,
        callbacks=lambda p, o: calls.append(p) or [],
        checkpoint_dir=ckpt,
    )
    assert calls == [] and again.resumed_from_epoch == 2
    assert again.history == first.history
    x = data[0][:4].astype("float32")
    np.testing.assert_allclose(
        np.asarray(again.model(x, training=False)), np.asarray(first.model(x, training=False))
    )

    other = params.model_copy(update={"seed": params.seed + 1})
    fresh = train_model(spec, other, CLASSES, data, verbose=0, checkpoint_dir=ckpt)
    assert fresh.resumed_from_epoch == 0
    assert len(fresh.history["loss"]) == 2


if __name__ == "__main__":
    _main()


def test_a_finished_checkpoint_stays_only_under_a_chosen_checkpoint_root(tmp_path: Path) -> None:
    """Under ``train.checkpoint_root`` a finished model's checkpoint stays, so that a resumed
    pipeline run (``--resume``) restores it instead of training it again; in the step's
    output or on the cluster's volume it is removed (it must not fill either)."""
    from cxrflow.config import load_params
    from cxrflow.steps.train import _after_training

    root = Path(__file__).resolve().parents[2] / "params.yaml"
    for chosen, kept in ((str(tmp_path / "root"), True), (None, False)):
        ckpt = tmp_path / "ckpt"
        ckpt.mkdir(exist_ok=True)
        (ckpt / CHECKPOINT_STATE).write_text("{}")
        override = [f"train.checkpoint_root={chosen}"] if chosen else []
        _after_training(load_params(root, "smoke", override), ckpt)
        assert ckpt.exists() == kept, chosen
