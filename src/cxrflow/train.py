"""Training the paper's four models (section 4.1).

- Adam (lr, beta_1, beta_2), categorical cross-entropy, early stopping on the validation loss
  (``patience``, best weights restored) and learning rate x``reduce_lr_factor`` after
  ``reduce_lr_patience`` epochs without improvement.
- ``init`` is ``scratch`` (one ``full`` phase), ``imagenet`` or the key of another trained
  model (a transfer, e.g. Model_2 from ``model_0``). Pretrained models train in two phases:
  ``head`` (only the new classifier trainable, at ``learning_rate``) then ``finetune`` at
  ``fine_tune_learning_rate``, unfrozen as the architecture says (Model_2: whole network;
  Model_3: the last ``unfreeze_last`` layers of the ResNet-50 backbone).
- With a ``checkpoint_dir``, the training state is saved after every epoch, so that a process
  killed mid-run (a preempted node) and started again with the same directory resumes after the
  last completed epoch, in the phase it was in (see :class:`_CheckpointStore`). Epoch counts,
  stopping and the learning-rate schedule match an uninterrupted run; the values are not
  bitwise identical, as the shuffling and dropout random streams restart from the seed.
- What depends on the architecture lives in :mod:`cxrflow.models`, not here.
Tracking is attached through ``callbacks``; this module never imports mlflow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrflow.config import ModelSpec, TrainParams
from cxrflow.datasets import DiskImages, ImageArray, class_weights, make_tf_dataset
from cxrflow.jsonio import write_json_atomic
from cxrflow.models import (
    freeze_all_but_classifier,
    get_architecture,
    replace_classifier,
    reseed_random_layers,
)

__all__ = [
    "CHECKPOINT_STATE",
    "CallbackFactory",
    "TrainResult",
    "freeze_all_but_classifier",
    "replace_classifier",
    "set_seed",
    "train_model",
    "unfreeze",
]

log = logging.getLogger(__name__)

CallbackFactory = Callable[[str, int], Sequence[Any]]
"""``(phase, epoch_offset) -> extra Keras callbacks`` (e.g. the MLflow epoch logger).

``epoch_offset`` is the number of epochs of the earlier phases, so ``epoch_offset + epoch`` (the
``epoch`` Keras passes to ``on_epoch_end``, 0-based and counted from the phase's start even when
a resumed phase starts mid-way) is the global 0-based epoch. A phase an earlier process already
completed is not trained again and gets no callbacks.
"""

CHECKPOINT_STATE = "state.json"
"""The file in ``checkpoint_dir`` that says which phases and epochs are done."""
_CHECKPOINT_FORMAT = 1


@dataclass
class TrainResult:
    """A trained model and what happened while training it.

    Attributes:
        model: The trained Keras model (best weights of the last phase).
        history: Per-epoch metrics of all phases concatenated, plus ``phase`` (phase index).
        phases: One summary per phase (``phase``, ``learning_rate``, ``epochs``,
            ``trainable_params``, ``resumed_epochs``).
        pretrained: What the weights started from (``model_0``, a weights file, ``none``).
        resumed_from_epoch: Epochs (all phases, global count) restored from ``checkpoint_dir``
            instead of trained by this call; 0 = started from scratch. The first epoch this
            call trained is global epoch ``resumed_from_epoch + 1`` (1-based).
    """

    model: Any
    history: dict[str, list[float]] = field(default_factory=dict)
    phases: list[dict[str, Any]] = field(default_factory=list)
    pretrained: str = "n/a"
    resumed_from_epoch: int = 0


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow."""
    import keras

    keras.utils.set_random_seed(seed)


def _compile(model: Any, lr: float, p: TrainParams) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr, beta_1=p.beta_1, beta_2=p.beta_2),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )


# --------------------------------------------------------------------------- checkpoints


def _describe(obj: Any) -> Any:
    """A JSON-able description of a spec or params object (pydantic model or dataclass)."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return repr(obj)


def _fingerprint(
    spec: Any,
    params: TrainParams,
    classes: Sequence[str],
    data: Sequence[ImageArray],
    base_model: Any | None,
) -> str:
    """Digest of everything that makes a checkpoint resumable: config, data and base weights."""
    h = hashlib.sha256()
    head = {"spec": _describe(spec), "params": _describe(params), "classes": list(classes)}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    arrays = list(data) + ([] if base_model is None else list(base_model.get_weights()))
    for a in arrays:
        if isinstance(a, DiskImages):  # its content digest, taken as it was written
            h.update(f"disk{a.dtype}{a.shape}{a.digest}".encode())
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


class _CheckpointStore:
    """The files of one training's ``checkpoint_dir``.

    ``state.json`` (written atomically, last) is the only thing read on resume; it names the
    weight files that belong to it, so a process killed while writing leaves the previous
    consistent state. Layout::

        state.json          {format, fingerprint, completed: [{summary, history}],
                             boundary: weights after the last completed phase,
                             current: the phase in progress or null}
        w-p<i>-e<n>.npz     model + optimizer variables after epoch n of phase i
        w-p<i>-best-e<n>.npz  model weights of phase i's best epoch (early stopping's)
        w-p<i>-end.npz      model weights at the end of phase i (best weights restored)

    A state written for another configuration, data set or base model (fingerprint differs) is
    ignored and its files are removed on the next save: training starts over.
    """

    def __init__(self, root: Path, fingerprint: str) -> None:
        self.root = root
        self.fingerprint = fingerprint
        root.mkdir(parents=True, exist_ok=True)
        self.state = self._load()

    def _fresh(self) -> dict[str, Any]:
        return {
            "format": _CHECKPOINT_FORMAT,
            "fingerprint": self.fingerprint,
            "completed": [],
            "boundary": None,
            "current": None,
        }

    def _load(self) -> dict[str, Any]:
        path = self.root / CHECKPOINT_STATE
        if not path.exists():
            return self._fresh()
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("unreadable checkpoint %s (%s): training starts over", path, exc)
            return self._fresh()
        if state.get("format") != _CHECKPOINT_FORMAT or state.get("fingerprint") != (
            self.fingerprint
        ):
            log.warning(
                "checkpoint in %s belongs to another training (configuration, data or base "
                "model differ): training starts over",
                self.root,
            )
            return self._fresh()
        return dict(state)

    @property
    def completed(self) -> list[dict[str, Any]]:
        """``{summary, history}`` of each phase finished by an earlier process, in order."""
        return list(self.state["completed"])

    def current(self, index: int) -> dict[str, Any] | None:
        """The saved in-progress state of phase ``index``, if that is the phase in progress."""
        cur = self.state["current"]
        return dict(cur) if cur is not None and cur["index"] == index else None

    def write_arrays(self, stem: str, groups: Mapping[str, Sequence[Any]]) -> str:
        """Save named lists of arrays to ``<stem>.npz`` (atomically); returns the file name."""
        name = f"{stem}.npz"
        tmp = self.root / f".{name}.tmp"
        arrays = {
            f"{g}_{i:05d}": np.asarray(a) for g, seq in groups.items() for i, a in enumerate(seq)
        }
        with tmp.open("wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.root / name)
        return name

    def read_arrays(self, name: str) -> dict[str, list[np.ndarray]]:
        """The lists of arrays :meth:`write_arrays` saved in ``name``."""
        out: dict[str, list[np.ndarray]] = {}
        with np.load(self.root / name) as z:
            for key in sorted(z.files):
                group = key.rsplit("_", 1)[0]
                out.setdefault(group, []).append(z[key])
        return out

    def commit(self) -> None:
        """Write ``state.json``, then remove the files it no longer names."""
        write_json_atomic(self.root / CHECKPOINT_STATE, self.state)
        keep = {self.state["boundary"]}
        cur = self.state["current"]
        if cur is not None:
            keep |= {cur["weights"], cur["best_weights"]}
        for path in self.root.iterdir():
            stale_weights = path.name.startswith("w-") and path.name not in keep
            if stale_weights or (path.name.startswith(".") and path.name.endswith(".tmp")):
                path.unlink(missing_ok=True)

    def complete_phase(
        self, index: int, model: Any, summary: dict[str, Any], history: dict[str, list[float]]
    ) -> None:
        """Record phase ``index`` as done, with the model's weights at its end."""
        self.state["boundary"] = self.write_arrays(f"w-p{index}-end", {"model": model.weights})
        self.state["completed"].append({"summary": summary, "history": history})
        self.state["current"] = None
        self.commit()

    def restore_boundary(self, model: Any) -> None:
        """Load the weights saved at the end of the last completed phase into ``model``."""
        if self.state["boundary"] is not None:
            model.set_weights(self.read_arrays(self.state["boundary"])["model"])


def _set_values(variables: Sequence[Any], values: Sequence[np.ndarray], what: str) -> None:
    if len(variables) != len(values):
        raise ValueError(
            f"checkpoint {what} has {len(values)} variables, the model {len(variables)}: the "
            "checkpoint comes from other code; delete the checkpoint directory to start over"
        )
    for var, val in zip(variables, values, strict=True):
        var.assign(val)


class _PhaseCheckpoint:
    """Saves and restores one phase's progress through a :class:`_CheckpointStore`.

    Besides the weights, it persists what the callbacks of :func:`_fit` remember (early
    stopping's best value, epoch, weights and wait count; the plateau schedule's best value,
    wait and cooldown; the optimizer's moments, step and learning rate), so that a resumed
    phase stops and lowers the learning rate exactly where an uninterrupted one would.
    """

    def __init__(self, store: _CheckpointStore, index: int, phase: str) -> None:
        self.store, self.index, self.phase = store, index, phase
        self.saved = store.current(index)
        self.history: dict[str, list[float]] = dict(self.saved["history"]) if self.saved else {}

    @property
    def epochs_done(self) -> int:
        """Epochs of this phase an earlier process completed (0 = none)."""
        return int(self.saved["epochs_done"]) if self.saved else 0

    @property
    def finished(self) -> bool:
        """The earlier process ended this phase (stopped early or ran out of epochs)."""
        return bool(self.saved and self.saved["finished"])

    def restore(self, model: Any) -> None:
        """Load the saved model and optimizer variables into the compiled ``model``."""
        if not self.saved:
            return
        arrays = self.store.read_arrays(self.saved["weights"])
        _set_values(model.weights, arrays["model"], "model")
        model.optimizer.build(model.trainable_variables)
        _set_values(model.optimizer.variables, arrays["optimizer"], "optimizer")

    def restore_best(self, model: Any) -> None:
        """Set ``model`` to the phase's best weights, as early stopping does at train end."""
        if self.saved and self.saved["best_weights"]:
            model.set_weights(self.store.read_arrays(self.saved["best_weights"])["model"])

    def callback(self, early: Any, plateau: Any, epochs: int) -> Any:
        """The Keras callback that restores the callbacks' state and saves every epoch.

        It must come after ``early`` and ``plateau`` in the callback list: their
        ``on_train_begin`` resets the state this one then restores, and their ``on_epoch_end``
        updates the state this one then saves.
        """
        import keras

        ckpt = self

        class _Save(keras.callbacks.Callback):  # type: ignore[misc]
            def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
                saved = ckpt.saved
                if not saved:
                    return
                es, rl = saved["early_stopping"], saved["reduce_lr"]
                early.wait, early.best, early.best_epoch = es["wait"], es["best"], es["epoch"]
                if saved["best_weights"]:
                    best = ckpt.store.read_arrays(saved["best_weights"])["model"]
                    early.best_weights = best
                plateau.wait, plateau.best = rl["wait"], rl["best"]
                plateau.cooldown_counter = rl["cooldown"]

            def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
                for key, value in (logs or {}).items():
                    ckpt.history.setdefault(key, []).append(float(value))
                ckpt.save(self.model, epoch, early, plateau, epochs)

        return _Save()

    def save(self, model: Any, epoch: int, early: Any, plateau: Any, epochs: int) -> None:
        """Persist the state after (0-based) ``epoch`` of this phase."""
        stem = f"w-p{self.index}"
        best_name = self.saved["best_weights"] if self.saved else None
        if early.best_epoch == epoch and early.best_weights is not None:
            best_name = self.store.write_arrays(
                f"{stem}-best-e{epoch + 1:04d}", {"model": early.best_weights}
            )
        weights = self.store.write_arrays(
            f"{stem}-e{epoch + 1:04d}",
            {"model": model.weights, "optimizer": model.optimizer.variables},
        )
        self.saved = {
            "index": self.index,
            "phase": self.phase,
            "epochs_done": epoch + 1,
            "finished": bool(model.stop_training) or epoch + 1 >= epochs,
            "history": self.history,
            "weights": weights,
            "best_weights": best_name,
            "early_stopping": {
                "wait": int(early.wait),
                "best": None if early.best is None else float(early.best),
                "epoch": int(early.best_epoch),
            },
            "reduce_lr": {
                "wait": int(plateau.wait),
                "best": None if plateau.best is None else float(plateau.best),
                "cooldown": int(plateau.cooldown_counter),
            },
        }
        self.store.state["current"] = self.saved
        self.store.commit()


# ------------------------------------------------------------------------------ training


def _fit(
    model: Any,
    phase: str,
    lr: float,
    p: TrainParams,
    train_ds: Any,
    val_ds: Any,
    weights: dict[int, float] | None,
    epoch_offset: int,
    extra_callbacks: CallbackFactory | None,
    verbose: int,
    checkpoint: _PhaseCheckpoint | None = None,
) -> dict[str, list[float]]:
    import keras

    _compile(model, lr, p)
    if checkpoint is not None:
        checkpoint.restore(model)
        if checkpoint.finished:
            # The earlier process ended this phase but died before recording it as complete.
            checkpoint.restore_best(model)
            return checkpoint.history
    early = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=p.patience, restore_best_weights=True
    )
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", factor=p.reduce_lr_factor, patience=p.reduce_lr_patience
    )
    callbacks: list[Any] = [early, plateau]
    if extra_callbacks is not None:
        callbacks.extend(extra_callbacks(phase, epoch_offset))
    initial_epoch = 0
    if checkpoint is not None:
        # Last: it saves what every other callback did in the epoch (a kill between an extra
        # callback's log and the save re-runs that epoch rather than losing it).
        callbacks.append(checkpoint.callback(early, plateau, p.epochs))
        initial_epoch = checkpoint.epochs_done
    log.info(
        "phase %s: lr=%g, up to %d epochs%s",
        phase,
        lr,
        p.epochs,
        f", resuming after epoch {initial_epoch}" if initial_epoch else "",
    )
    hist = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=p.epochs,
        initial_epoch=initial_epoch,
        callbacks=callbacks,
        class_weight=weights,
        shuffle=False,  # the tf.data pipeline already reshuffles every epoch
        verbose=verbose,
    )
    if checkpoint is not None:
        return checkpoint.history
    return {k: [float(v) for v in vals] for k, vals in hist.history.items()}


def unfreeze(model: Any, spec: ModelSpec) -> int:
    """Unfreeze ``model`` for fine-tuning as its architecture says; returns the layers unfrozen.

    See :meth:`cxrflow.models.base.Architecture.unfreeze` (e.g. ``resnet50`` keeps BatchNorm
    frozen; ``small_cnn`` unfreezes the whole net or its last ``unfreeze_last`` layers).
    """
    return get_architecture(spec.architecture).unfreeze(model, spec.unfreeze_last)


def _merge(history: dict[str, list[float]], h: Mapping[str, Sequence[float]], index: int) -> None:
    n_epochs = len(h.get("loss", []))
    for key, vals in h.items():
        history.setdefault(key, []).extend(float(v) for v in vals)
    history.setdefault("phase", []).extend([float(index)] * n_epochs)


def train_model(
    spec: ModelSpec,
    params: TrainParams,
    classes: Sequence[str],
    data: tuple[ImageArray, np.ndarray, ImageArray, np.ndarray],
    base_model: Any | None = None,
    callbacks: CallbackFactory | None = None,
    verbose: int = 2,
    checkpoint_dir: str | Path | None = None,
    model_key: str | None = None,
    weights_file: str | Path | None = None,
) -> TrainResult:
    """Train one model as the paper describes.

    Args:
        spec: The model's spec (architecture, init, unfreeze_last, weights_path,
            allow_random_init).
        params: Training hyper-parameters.
        classes: Class names, in output order.
        data: ``(x_train, y_train, x_val, y_val)``; x uint8 ``(n, s, s, 1)``, in memory or
            decoded on disk (:func:`cxrflow.datasets.write_split_cache`: streamed a batch at
            a time, the same batches), y int indices.
        base_model: The trained model named by ``spec.init`` (a Keras model of the same
            architecture) when ``spec.init`` is neither ``scratch`` nor ``imagenet``.
        callbacks: Factory of extra callbacks per phase (see :data:`CallbackFactory`).
        verbose: Keras verbosity (2 = one line per epoch, 1 = progress bar).
        checkpoint_dir: Where to save the training state after every epoch and at every phase
            end; ``None`` = no checkpoints. Started again with the same directory (and the
            same spec, params, data and base model), training resumes after the last
            completed epoch instead of starting over; completed phases are not redone. The
            directory is kept afterwards (a call after a completed training returns the final
            model without training); delete it once the outputs are saved.
        model_key: The model's key in ``params.yaml``, for error messages.
        weights_file: The local copy of ``spec.weights_path`` to load (fetched and checked by
            :func:`cxrflow.weights.fetched_weights`); ``None`` = ``spec.weights_path`` itself.
            The spec keeps naming the configured location, so results and checkpoints do not
            depend on where the copy was put.

    Returns:
        The trained model, merged history (phases concatenated), phase summaries and how many
        epochs were resumed from ``checkpoint_dir``.

    Raises:
        ValueError: Empty split, unknown architecture, an init it does not support, a transfer
            without ``base_model`` or from a model of another architecture, an ``imagenet``
            init without ``weights_path`` and without ``allow_random_init`` (raised before any
            data is prepared), or a checkpoint whose variables do not fit the model.
    """
    x_tr, y_tr, x_va, y_va = data
    k = len(classes)
    if len(x_tr) == 0 or len(x_va) == 0:
        raise ValueError(f"empty split: {len(x_tr)} train / {len(x_va)} validation images")
    arch = get_architecture(spec.architecture)
    kind = arch.check_init(spec.init)
    if kind == "transfer" and base_model is None:
        raise ValueError(
            f"init={spec.init!r} transfers from the trained {spec.init!r} model: "
            "pass it as base_model"
        )
    arch.check_weights(spec.init, spec.weights_path, spec.allow_random_init, model_key)
    store = (
        None
        if checkpoint_dir is None
        else _CheckpointStore(
            Path(checkpoint_dir), _fingerprint(spec, params, classes, data, base_model)
        )
    )
    set_seed(params.seed)
    train_ds = make_tf_dataset(x_tr, y_tr, k, params.batch_size, True, params.seed)
    val_ds = make_tf_dataset(x_va, y_va, k, params.batch_size, False, params.seed)
    weights = class_weights(y_tr, k) if params.class_weights else None

    pretrained = "n/a"
    if kind == "transfer":
        model = arch.transfer(base_model, k)
        reseed_random_layers(model, params.seed)  # the base was loaded: its state is random
        pretrained = spec.init
    else:
        local = spec.weights_path if weights_file is None else str(weights_file)
        model = arch.build(params.image_size, k, spec.init, local)
        if kind == "imagenet":
            pretrained = spec.weights_path or "none"
    # Pretrained features (transfer, imagenet) first get a head fitted on frozen features, so
    # that the random classifier's large gradients do not wreck them, then a fine-tune.
    phases: list[tuple[str, float]] = (
        [("full", params.learning_rate)]
        if kind == "scratch"
        else [("head", params.learning_rate), ("finetune", params.fine_tune_learning_rate)]
    )

    history: dict[str, list[float]] = {}
    summaries: list[dict[str, Any]] = []
    offset = 0
    done = store.completed if store is not None else []
    if store is not None:
        store.restore_boundary(model)
    for index, (phase, lr) in enumerate(phases):
        if index < len(done):
            summary, h = dict(done[index]["summary"]), done[index]["history"]
            summary["resumed_epochs"] = summary["epochs"]
        else:
            if phase == "head":
                freeze_all_but_classifier(model)
            elif phase == "finetune":
                unfreeze(model, spec)
            trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
            ckpt = None if store is None else _PhaseCheckpoint(store, index, phase)
            resumed = ckpt.epochs_done if ckpt is not None else 0
            h = _fit(
                model,
                phase,
                lr,
                params,
                train_ds,
                val_ds,
                weights,
                offset,
                callbacks,
                verbose,
                ckpt,
            )
            summary = {
                "phase": phase,
                "learning_rate": lr,
                "epochs": len(h.get("loss", [])),
                "trainable_params": trainable,
                "resumed_epochs": resumed,
            }
            if store is not None:
                store.complete_phase(index, model, {**summary, "resumed_epochs": 0}, h)
        summaries.append(summary)
        _merge(history, h, index)
        offset += int(summary["epochs"])
    resumed_total = sum(int(s["resumed_epochs"]) for s in summaries)
    if resumed_total:
        log.info("resumed %d epoch(s) from %s", resumed_total, checkpoint_dir)
    return TrainResult(
        model=model,
        history=history,
        phases=summaries,
        pretrained=pretrained,
        resumed_from_epoch=resumed_total,
    )
