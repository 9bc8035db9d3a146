"""The training loop: shuffled mini-batches, per-epoch metrics and diagnostics, early stopping,
a target metric, a divergence guard, a cooperative stop hook, and exact checkpoint/resume."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .network import Network, walk
from .optimizers import OPTIMIZERS
from .schedules import LOWER_IS_BETTER, SCHEDULES, improved
from .spec import Field, SpecError, check_object, object_schema

EARLY_STOPPING_FIELDS = {
    "monitor": Field("str", default="val_loss", description="a metric name, e.g. val_loss or val_accuracy"),
    "patience": Field("int", minimum=0, default=10),
    "min_delta": Field("float", minimum=0, default=0.0),
    "restore_best_weights": Field("bool", default=True),
}
TARGET_FIELDS = {
    "metric": Field("str", default="accuracy"),
    "value": Field("float"),
}
TRAINING_FIELDS = {
    "optimizer": Field("object", default={"type": "sgd"}),
    "epochs": Field("int", minimum=1, default=10),
    "batch_size": Field("int", minimum=1, default=32),
    "seed": Field("int", minimum=0, default=0),
    "shuffle": Field("bool", default=True),
    "validation_split": Field("float", minimum=0, maximum=0.9, default=0.0),
    "lr_schedule": Field("object", default=None, nullable=True),
    "clip_norm": Field("float", minimum=0, exclusive_minimum=True, default=None, nullable=True,
                       description="clip the global gradient norm to this value"),
    "clip_value": Field("float", minimum=0, exclusive_minimum=True, default=None, nullable=True,
                        description="clip each gradient element to [-v, v]"),
    "early_stopping": Field("object", default=None, nullable=True),
    "target": Field("object", default=None, nullable=True,
                    description="stop once a metric reaches a value, e.g. {metric: val_accuracy, value: 0.95}"),
}


def _check_typed(obj, registry, path, errors) -> dict | None:
    if not isinstance(obj, dict):
        errors.append({"path": path, "message": "must be an object"})
        return None
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in registry:
        errors.append({"path": f"{path}.type", "message": f"must be one of {', '.join(sorted(registry))}"})
        return None
    checked = check_object(obj, {"type": Field("str"), **registry[kind].fields}, path, errors)
    return checked


def check_training_spec(spec: Any) -> dict[str, Any]:
    """Validate the `training` document with defaults applied; raises SpecError naming paths."""
    errors: list[dict[str, str]] = []
    out = check_object({} if spec is None else spec, TRAINING_FIELDS, "training", errors)
    if out.get("optimizer") is not None:
        out["optimizer"] = _check_typed(out["optimizer"], OPTIMIZERS, "training.optimizer", errors)
    if out.get("lr_schedule") is not None:
        out["lr_schedule"] = _check_typed(out["lr_schedule"], SCHEDULES, "training.lr_schedule", errors)
    if out.get("early_stopping") is not None:
        out["early_stopping"] = check_object(out["early_stopping"], EARLY_STOPPING_FIELDS,
                                             "training.early_stopping", errors)
    if out.get("target") is not None:
        out["target"] = check_object(out["target"], TARGET_FIELDS, "training.target", errors)
    opt, sched = out.get("optimizer") or {}, out.get("lr_schedule") or {}
    if sched.get("min_lr") is not None and opt.get("learning_rate") is not None \
            and sched["min_lr"] > opt["learning_rate"]:  # a schedule that decays upwards
        errors.append({"path": "training.lr_schedule.min_lr",
                       "message": f"must be at most the learning rate ({opt['learning_rate']:g})"})
    if errors:
        raise SpecError(errors)
    return out


def training_json_schema() -> dict:
    def typed(registry):
        return {"oneOf": [object_schema({"type": Field("choice", choices=(n,)), **c.fields},
                                        required=["type"]) for n, c in sorted(registry.items())]}
    return object_schema(TRAINING_FIELDS, extra={
        "optimizer": typed(OPTIMIZERS),
        "lr_schedule": {"anyOf": [typed(SCHEDULES), {"type": "null"}]},
        "early_stopping": {"anyOf": [object_schema(EARLY_STOPPING_FIELDS), {"type": "null"}]},
        "target": {"anyOf": [object_schema(TARGET_FIELDS), {"type": "null"}]},
    })


class TrainingDiverged(RuntimeError):
    """The loss or the weights became non-finite."""

    def __init__(self, epoch: int, what: str, largest_input: float = 0.0):
        self.epoch = epoch
        advice = "try a lower learning rate or gradient clipping"
        if largest_input > LARGE_INPUT:  # a square of such an input alone can overflow
            advice = f"scale the inputs (the largest |value| is {largest_input:.3g}), or {advice}"
        super().__init__(f"{what} became non-finite (NaN or inf) at epoch {epoch}; {advice}")


LARGE_INPUT = 1e6  # inputs beyond this are worth naming when training diverges


def _all_finite(a: np.ndarray) -> bool:
    return a.dtype.kind != "f" or bool(np.isfinite(a).all())


def check_finite(a: np.ndarray, what: str) -> None:
    """A NaN or inf in the data would show up as a diverged loss blamed on the learning rate:
    name the first one instead."""
    if not _all_finite(a):
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise ValueError(f"{what} hold a non-finite value ({a[index]}) at sample {index[0]}"
                         + (f", position {index[1:]}" if len(index) > 1 else ""))


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = "completed"  # completed, early_stopping, target_reached, cancelled
    best_epoch: int | None = None
    restored_epoch: int | None = None  # set when early stopping put back this epoch's weights


def validation_split(y: np.ndarray, training: dict[str, Any], classification: bool):
    """The (train, validation) indices a run with this training spec uses: a random stream of its
    own, seeded by the spec, so that the split does not depend on the training draws (and the
    API can check the split before the job is queued)."""
    rng = np.random.default_rng([training["seed"], 1])
    return stratified_split(y, training["validation_split"], rng, classification)


def stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator, classification: bool):
    """Indices (train, validation); classes keep their proportions in both parts."""
    n = len(y)
    if fraction <= 0:
        return np.arange(n), np.arange(0)
    labels = None
    if classification and y.ndim == 1:
        labels = y
    elif classification and y.ndim == 2 and y.shape[1] == 1:
        labels = y[:, 0]
    elif classification and y.ndim == 2 and y.dtype.kind == "f":  # one-hot rows
        labels = y.argmax(axis=1)
    if labels is None:  # regression or sequence targets (n, steps[, k]): a plain random split
        perm = rng.permutation(n)
        k = max(1, int(round(n * fraction)))
        return np.sort(perm[k:]), np.sort(perm[:k])
    classes, counts = np.unique(labels, return_counts=True)
    take = _validation_counts(counts, fraction)
    val = []
    for c, k in zip(classes, take, strict=True):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        val.append(idx[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.arange(0)
    mask = np.ones(n, bool)
    mask[val_idx] = False
    return np.flatnonzero(mask), val_idx


def _validation_counts(counts: np.ndarray, fraction: float) -> np.ndarray:
    """How many samples of each class go to validation: round(n * fraction) in all, shared in
    proportion to the classes' sizes (largest remainders first), every class keeping at least
    one sample for training. Rounding each class on its own could miss the fraction by far
    (ten classes of 2 at 0.2 gave no validation sample at all)."""
    share = counts * fraction
    room = np.maximum(counts - 1, 0)
    take = np.minimum(np.floor(share).astype(np.int64), room)
    left = min(int(round(counts.sum() * fraction)), int(room.sum())) - int(take.sum())
    by_remainder = np.argsort(-(share - np.floor(share)), kind="stable")
    while left > 0:
        for c in by_remainder:
            if left and take[c] < room[c]:
                take[c] += 1
                left -= 1
    return take


class _RegressionStats:
    """Accumulates MAE and R² over batches without keeping the predictions. The targets' spread
    is merged batch by batch from each batch's mean and squared deviations (Chan et al.):
    sum(y²) - sum(y)²/n cancels to nothing when the targets' mean is large against their
    spread (targets around 1e9 gave R² 0 for a fit of 0.99)."""

    def __init__(self):
        self.n = 0
        self.abs = self.sse = self.mean = self.m2 = 0.0

    def add(self, pred, y):
        d = pred - y
        m = len(y)
        self.abs += float(np.abs(d).sum())
        self.sse = self.sse + (d * d).reshape(m, -1).sum(axis=0).astype(np.float64)
        yy = y.reshape(m, -1).astype(np.float64)
        batch_mean = yy.mean(axis=0)
        delta = batch_mean - self.mean
        total = self.n + m
        self.m2 = self.m2 + ((yy - batch_mean) ** 2).sum(axis=0) + delta**2 * (self.n * m / total)
        self.mean = self.mean + delta * (m / total)
        self.n = total

    def result(self, outputs: int) -> dict[str, float]:
        sst = self.m2
        r2 = np.where(sst > 0, 1 - self.sse / np.where(sst > 0, sst, 1), 0.0)
        return {"mae": self.abs / (self.n * outputs), "r2": float(np.mean(r2))}


class Trainer:
    """Owns everything that changes during training, so that `state()` after any epoch and
    `load_state()` give back exactly the same run."""

    def __init__(self, net: Network, training: dict[str, Any]):
        if net.inference:
            raise ValueError("this network was built with inference=True (no gradients); "
                             "build it without that to train it")
        self.net = net
        self.cfg = check_training_spec(training)
        opt = self.cfg["optimizer"]
        self.optimizer = OPTIMIZERS[opt["type"]](opt)
        self.base_lr = opt["learning_rate"]
        sched = self.cfg["lr_schedule"] or {"type": "constant"}
        self.schedule = SCHEDULES[sched["type"]](sched, self.base_lr, self.cfg["epochs"])
        self.rng = np.random.default_rng(self.cfg["seed"])
        self.epoch = 0  # epochs finished
        self.history: list[dict[str, Any]] = []
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_weights: dict[str, np.ndarray] | None = None
        self.wait = 0
        self.stopped: str | None = None  # why the run ended early; kept in checkpoints
        for layer in walk(net.layers):
            if hasattr(layer, "stochastic"):
                layer.rng = self.rng

    # -- data -------------------------------------------------------------------------------
    def _prepare(self, x, y, sample_weight, validation_data):
        net = self.net
        x = net.as_input(x)
        y = net.loss.prepare_targets(y, net.output_shape, net.dtype)
        if len(x) != len(y):
            raise ValueError(f"{len(x)} samples of features but {len(y)} targets")
        self._given = x, y  # as given, for naming a NaN in them by its index (_diverged)
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=net.dtype).reshape(-1)
            if len(sample_weight) != len(x):
                raise ValueError("sample_weight must have one value per sample")
            if not np.isfinite(sample_weight).all() or (sample_weight < 0).any():
                raise ValueError("sample_weight must be finite and >= 0")
        if validation_data is not None:
            xv = net.as_input(validation_data[0])
            yv = net.loss.prepare_targets(validation_data[1], net.output_shape, net.dtype)
            check_finite(xv, "validation inputs")
            check_finite(yv, "validation targets")
            return x, y, sample_weight, xv, yv, None
        tr, va = validation_split(y, self.cfg, net.classification)
        if len(va) == 0:
            return x, y, sample_weight, None, None, None
        xv, yv = x[va], y[va]
        if not (_all_finite(xv) and _all_finite(yv)):  # a validation loss of NaN stops nothing: say so
            check_finite(x, "inputs")
            check_finite(y, "targets")
        if sample_weight is None:
            return x[tr], y[tr], None, xv, yv, None
        return x[tr], y[tr], sample_weight[tr], xv, yv, sample_weight[va]

    def _diverged(self, epoch: int, what: str) -> Exception:
        """Why the loss or the weights stopped being finite. A NaN or inf in the training data
        makes the loss NaN at its first batch: named here, where it costs nothing to a run that
        is fine (a check before training took a pass over the data at every fit). Otherwise the
        run diverged, and huge inputs are the first thing to suspect."""
        x, y = self._given
        try:
            check_finite(x, "inputs")
            check_finite(y, "targets")
        except ValueError as exc:
            return exc
        return TrainingDiverged(epoch, what, float(max(x.max(initial=0.0), -x.min(initial=0.0))))

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, x, y, sample_weight=None, validation_data=None,
            on_epoch: Callable[[dict[str, Any], Trainer], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> FitResult:
        # Overflow on the way to divergence is expected; the guard below turns it into a
        # TrainingDiverged naming the epoch instead of a stream of RuntimeWarnings.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._fit(x, y, sample_weight, validation_data, on_epoch, should_stop)

    def _fit(self, x, y, sample_weight, validation_data, on_epoch, should_stop) -> FitResult:
        x, y, sw, xv, yv, swv = self._prepare(x, y, sample_weight, validation_data)
        n, bs = len(x), self.cfg["batch_size"]
        if n == 0:
            raise ValueError("no training samples")
        self.net.adapt(x)  # a first normalization layer: from the training split, before epoch 1
        net, cfg = self.net, self.cfg
        self.check_metric_names(validation=xv is not None)
        result = FitResult(history=self.history)
        if self.stopped:  # resumed from a checkpoint taken as the run was stopping: it stays stopped
            result.stop_reason, result.best_epoch = self.stopped, self.best_epoch
            if self._restores_best(self.stopped):  # done before that checkpoint was taken
                result.restored_epoch = self.best_epoch
            return result
        # The optimizer updates the trainable runs of the network's flat weight vector (one run
        # unless a layer inside is frozen), so a step costs the same few calls for any network.
        runs = net.trainable_runs()
        params = {k: net.flat_params[sl] for k, sl in runs.items()}
        grads = {k: net.flat_grads[sl] for k, sl in runs.items()}
        # layers with trainable weights, in order; gradient norms are reported for these
        layer_grads = [(name, net.flat_grads[sl]) for name, sl in net.layer_slices.items()
                       if name not in net.frozen]
        while self.epoch < cfg["epochs"]:
            started = time.perf_counter()
            epoch = self.epoch + 1
            lr = self.schedule.lr(self.epoch)
            order = self.rng.permutation(n) if cfg["shuffle"] else np.arange(n)
            # the epoch's loss is a mean over its samples, weighted by sample_weight when given
            loss_sum, loss_weight, correct, seen = 0.0, 0.0, 0.0, 0
            reg = None if net.classification else _RegressionStats()
            grad_sum = [0.0] * len(layer_grads)
            batches = 0
            for start in range(0, n, bs):
                if should_stop is not None and should_stop():
                    result.stop_reason, result.best_epoch = "cancelled", self.best_epoch
                    return result
                idx = order[start:start + bs]
                xb, yb = x[idx], y[idx]
                loss = net.train_step_gradients(xb, yb, None if sw is None else sw[idx])
                if not math.isfinite(loss):
                    raise self._diverged(epoch, "the loss")
                m = len(idx)
                weight = m if sw is None else float(sw[idx].sum())
                loss_sum += loss * weight
                loss_weight += weight
                seen += m
                if net.classification:
                    correct += net.loss.accuracy(net.last_output, yb) * m
                else:
                    reg.add(net.last_output, yb)
                for i, (_, g) in enumerate(layer_grads):  # each layer's gradient L2 norm
                    grad_sum[i] += math.sqrt(float(np.vdot(g, g)))
                self._clip(grads)
                self.optimizer.step(params, grads, lr)
                batches += 1
            loss = loss_sum / loss_weight if loss_weight > 0 else net.penalty()
            record: dict[str, Any] = {"epoch": epoch, "loss": loss, "lr": lr}
            if net.classification:
                record["accuracy"] = correct / seen
            else:
                record.update(reg.result(int(np.prod(net.output_shape))))
            if xv is not None:
                record.update(self.evaluate(xv, yv, prefix="val_", sample_weight=swv))
            if not np.isfinite(net.flat_params).all():
                raise self._diverged(epoch, "the weights")
            record["grad_norms"] = {name: total / batches
                                    for (name, _), total in zip(layer_grads, grad_sum, strict=True)}
            record["weight_norms"] = net.layer_norms(net.params())
            record["duration"] = time.perf_counter() - started
            self.schedule.observe(record)
            self.epoch = epoch
            self.history.append(record)
            stop = self.stopped = self._early_stopping(record) or self._target_reached(record)
            if self._restores_best(stop):
                net.set_weights(self.best_weights)
                result.restored_epoch = self.best_epoch
            if on_epoch is not None:
                on_epoch(record, self)
            if stop:
                result.stop_reason = stop
                break
        result.best_epoch = self.best_epoch
        return result

    def _restores_best(self, stop: str | None) -> bool:
        return bool(stop == "early_stopping" and self.cfg["early_stopping"]["restore_best_weights"]
                    and self.best_weights)

    def _clip(self, grads):
        if self.cfg["clip_value"]:
            v = self.cfg["clip_value"]
            for g in grads.values():
                np.clip(g, -v, v, out=g)
        if self.cfg["clip_norm"]:
            total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
            if total > self.cfg["clip_norm"]:
                scale = self.cfg["clip_norm"] / (total + 1e-12)
                for g in grads.values():
                    g *= g.dtype.type(scale)

    def evaluate(self, x, y, prefix="", sample_weight=None) -> dict[str, float]:
        """Loss and metrics in inference mode (running statistics, no dropout), computed in
        batches of the training batch size: memory stays what training needs (a convolution's
        im2col matrix grows with the batch). The loss is weighted by sample_weight when given,
        as in training; the metrics are not."""
        net, bs, n = self.net, self.cfg["batch_size"], len(x)
        loss_sum, loss_weight, correct = 0.0, 0.0, 0.0
        reg = None if net.classification else _RegressionStats()
        for start in range(0, n, bs):
            xb, yb = x[start:start + bs], y[start:start + bs]
            wb = None if sample_weight is None else sample_weight[start:start + bs]
            loss, _, a = net.loss(net.output_activation, net.logits(xb, training=False), yb, wb)
            weight = len(xb) if wb is None else float(wb.sum())
            loss_sum += loss * weight
            loss_weight += weight
            if reg is None:
                correct += net.loss.accuracy(a, yb) * len(xb)
            else:
                reg.add(a, yb)
        out = {f"{prefix}loss": (loss_sum / loss_weight if loss_weight > 0 else 0.0) + net.penalty()}
        if reg is None:
            out[f"{prefix}accuracy"] = correct / n
        else:
            out.update({f"{prefix}{k}": v for k, v in reg.result(int(np.prod(net.output_shape))).items()})
        return out

    def check_metric_names(self, validation: bool) -> None:
        """Fail before the first epoch, not after it, when a monitor names a metric this run
        never records (a typo, or a val_ metric without validation data)."""
        base = ["loss", "accuracy"] if self.net.classification else ["loss", "mae", "r2"]
        recorded = base + [f"val_{m}" for m in base] if validation else base
        wanted = []
        if self.cfg["early_stopping"]:
            wanted.append(("training.early_stopping.monitor", self.cfg["early_stopping"]["monitor"]))
        if self.cfg["target"]:
            wanted.append(("training.target.metric", self.cfg["target"]["metric"]))
        errors = [{"path": path, "message": f"{name} is not recorded for this run; "
                                            f"one of {', '.join(recorded)}"}
                  for path, name in wanted if name not in recorded]
        # without validation data the schedule watches the training metric instead of val_X
        monitor = self.schedule.config.get("monitor")
        if monitor is not None and monitor.removeprefix("val_") not in base:
            errors.append({"path": "training.lr_schedule.monitor",
                           "message": f"{monitor} is not recorded for this run; one of {', '.join(recorded)}"})
        if errors:
            raise SpecError(errors)

    def _early_stopping(self, record) -> str | None:
        es = self.cfg["early_stopping"]
        if not es:
            return None
        monitor = es["monitor"]
        if improved(monitor, record[monitor], self.best, es["min_delta"]):
            self.best, self.best_epoch, self.wait = record[monitor], record["epoch"], 0
            if es["restore_best_weights"]:
                self.best_weights = self.net.get_weights()
            return None
        self.wait += 1  # epochs without improvement; `patience` of them are tolerated
        return "early_stopping" if self.wait > es["patience"] else None

    def _target_reached(self, record) -> str | None:
        target = self.cfg["target"]
        if not target:
            return None
        value, metric = record[target["metric"]], target["metric"]
        reached = value <= target["value"] if metric in LOWER_IS_BETTER else value >= target["value"]
        return "target_reached" if reached else None

    # -- checkpoints --------------------------------------------------------------------------
    def state(self, history: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Everything needed to continue exactly: (JSON-able meta, arrays by name). history=False
        leaves out the per-epoch records, for callers that keep those elsewhere (the worker
        stores them in the database; in a checkpoint they would grow with every epoch)."""
        opt_meta, opt_arrays = self.optimizer.state_dict()
        arrays = {f"weights:{k}": v for k, v in self.net.get_weights().items()}
        arrays.update({f"optimizer:{k}": v for k, v in opt_arrays.items()})
        if self.best_weights is not None:
            arrays.update({f"best:{k}": v for k, v in self.best_weights.items()})
        meta = {"epoch": self.epoch, "rng": self.rng.bit_generator.state, "optimizer": opt_meta,
                "schedule": self.schedule.state_dict(), "best": self.best, "best_epoch": self.best_epoch,
                "wait": self.wait, "stopped": self.stopped, "history": copy.deepcopy(self.history) if history else []}
        return meta, arrays

    def load_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        def part(prefix):
            return _part(arrays, prefix)
        self.net.set_weights(part("weights:"))
        self.optimizer.load_state_dict(meta["optimizer"], part("optimizer:"))
        self.rng.bit_generator.state = meta["rng"]
        self.schedule.load_state_dict(meta["schedule"])
        self.epoch, self.best, self.best_epoch, self.wait = (
            meta["epoch"], meta["best"], meta["best_epoch"], meta["wait"])
        self.best_weights = part("best:") or None
        self.stopped = meta.get("stopped")
        self.history[:] = copy.deepcopy(meta.get("history", []))


def _part(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def weights_in_state(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The network weights held in the arrays of `Trainer.state()`."""
    return _part(arrays, "weights:")


def train(net: Network, x, y, training: dict[str, Any] | None = None, **kwargs) -> FitResult:
    """Convenience: `train(net, X, y, {"epochs": 20, ...}, on_epoch=...)`."""
    return Trainer(net, training or {}).fit(x, y, **kwargs)
