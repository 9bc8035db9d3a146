"""Learning-rate schedules, applied once per epoch. Pure functions of the epoch except
reduce_on_plateau, whose state is part of the checkpoint."""

from __future__ import annotations

import math

from .spec import Field

# Metrics that improve by going down; every other one (accuracy, r2) improves by going up.
LOWER_IS_BETTER = ("loss", "val_loss", "mae", "val_mae")


def improved(metric: str, value: float, best: float | None, min_delta: float) -> bool:
    """Whether `value` beats `best` by more than min_delta in the metric's direction. A NaN is
    never an improvement: taken for the first best, nothing could ever beat it (every comparison
    with NaN is false), and early stopping would end a run that goes on improving."""
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    if metric in LOWER_IS_BETTER:
        return value < best - min_delta
    return value > best + min_delta


class Schedule:
    name = ""
    fields: dict[str, Field] = {}

    def __init__(self, config: dict, base_lr: float, epochs: int):
        self.config, self.base_lr, self.epochs = config, base_lr, epochs

    def lr(self, epoch: int) -> float:
        """Learning rate for `epoch` (0-based)."""
        raise NotImplementedError

    def observe(self, metrics: dict) -> None:
        """Called after each epoch with its metrics."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Constant(Schedule):
    name = "constant"

    def lr(self, epoch):
        return self.base_lr


class Step(Schedule):
    name = "step"
    fields = {"step_size": Field("int", minimum=1, default=10, description="epochs between decays"),
              "gamma": Field("float", minimum=0, exclusive_minimum=True, maximum=1, default=0.1)}

    def lr(self, epoch):
        return self.base_lr * self.config["gamma"] ** (epoch // self.config["step_size"])


class Exponential(Schedule):
    name = "exponential"
    fields = {"gamma": Field("float", minimum=0, exclusive_minimum=True, maximum=1, default=0.95)}

    def lr(self, epoch):
        return self.base_lr * self.config["gamma"] ** epoch


class Cosine(Schedule):
    """Cosine annealing from the base rate to min_lr over the run (Loshchilov & Hutter)."""

    name = "cosine"
    fields = {"min_lr": Field("float", minimum=0, default=0.0)}

    def lr(self, epoch):
        lo = self.config["min_lr"]
        frac = epoch / max(self.epochs - 1, 1)
        return lo + 0.5 * (self.base_lr - lo) * (1 + math.cos(math.pi * frac))


class ReduceOnPlateau(Schedule):
    name = "reduce_on_plateau"
    fields = {"monitor": Field("str", default="val_loss"),
              "factor": Field("float", minimum=0, exclusive_minimum=True, maximum=1, default=0.1),
              "patience": Field("int", minimum=0, default=5),
              "min_delta": Field("float", minimum=0, default=1e-4),
              "min_lr": Field("float", minimum=0, default=0.0)}

    def __init__(self, config, base_lr, epochs):
        super().__init__(config, base_lr, epochs)
        self.current, self.best, self.wait = base_lr, None, 0

    def lr(self, epoch):
        return self.current

    def observe(self, metrics):
        monitor = self.config["monitor"]
        if monitor not in metrics:  # val_X without validation data: watch the training X
            monitor = monitor.removeprefix("val_")
        value = metrics[monitor]
        if improved(monitor, value, self.best, self.config["min_delta"]):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait > self.config["patience"]:
            self.current = max(self.current * self.config["factor"], self.config["min_lr"])
            self.wait = 0

    def state_dict(self):
        return {"current": self.current, "best": self.best, "wait": self.wait}

    def load_state_dict(self, state):
        self.current, self.best, self.wait = state["current"], state["best"], state["wait"]


SCHEDULES: dict[str, type[Schedule]] = {
    c.name: c for c in (Constant, Step, Exponential, Cosine, ReduceOnPlateau)}
