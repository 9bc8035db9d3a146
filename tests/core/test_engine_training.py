"""The training loop: determinism, exact checkpoint -> resume, early stopping, target metric,
divergence guard, cancellation, stratified validation split, diagnostics, fine-tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, r2_score

from core.nn import Network, Trainer, TrainingDiverged, train
from core.nn.serialization import arrays_from_npz, arrays_to_npz
from core.nn.training import stratified_split


def blobs(n=90, k=3, d=4, spread=1.0, seed=0):
    """k Gaussian classes in d dimensions, float64 features and integer labels."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(k, d))
    y = np.arange(n) % k
    return centers[y] + spread * rng.normal(size=(n, d)), y


def smooth(n=80, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(n, 2))
    return x, np.sin(x[:, 0]) + 0.5 * x[:, 1] ** 2


def classifier(d=4, k=3, hidden=8, **kw):
    return Network.from_spec({"input_shape": [d], "loss": "categorical_crossentropy", **kw,
                              "layers": [{"type": "dense", "units": hidden, "activation": "tanh"},
                                         {"type": "dense", "units": k, "activation": "softmax"}]})


def regressor(**kw):
    return Network.from_spec({"input_shape": [2], "loss": "mse", **kw,
                              "layers": [{"type": "dense", "units": 16, "activation": "tanh"},
                                         {"type": "dense", "units": 1}]})


def without_duration(history):
    return [{k: v for k, v in r.items() if k != "duration"} for r in history]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# -- determinism ----------------------------------------------------------------------------

def run_once(net_seed=0, train_seed=0):
    x, y = blobs()
    net = classifier()
    net = Network.from_spec(net.spec, seed=net_seed)
    result = train(net, x, y, {"epochs": 4, "batch_size": 16, "seed": train_seed,
                               "validation_split": 0.2, "optimizer": {"type": "adam"}})
    return net.get_weights(), without_duration(result.history)


def test_same_seeds_give_bit_identical_runs():
    w1, h1 = run_once()
    w2, h2 = run_once()
    assert_same_weights(w1, w2)
    assert h1 == h2


@pytest.mark.parametrize("seeds", [{"net_seed": 1}, {"train_seed": 1}], ids=["init", "shuffle"])
def test_different_seeds_give_different_runs(seeds):
    w1, _ = run_once()
    w2, _ = run_once(**seeds)
    assert not np.array_equal(w1["dense_0/kernel"], w2["dense_0/kernel"])


# -- checkpoint -> resume -------------------------------------------------------------------

class Interrupted(Exception):
    """Raised from on_epoch to kill a run after its checkpoint, like a crashed worker."""


RESUME_CASES = {
    "sgd_nesterov_step_clip": (
        "classification",
        {"epochs": 6, "batch_size": 16, "clip_norm": 0.5,
         "optimizer": {"type": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": True},
         "lr_schedule": {"type": "step", "step_size": 2, "gamma": 0.5}}),
    "adam_plateau_early_stopping_validation": (
        "classification",
        {"epochs": 30, "batch_size": 16, "validation_split": 0.3,
         "optimizer": {"type": "adam", "learning_rate": 0.05},
         "lr_schedule": {"type": "reduce_on_plateau", "patience": 0, "factor": 0.5,
                         "min_delta": 0.02},
         "early_stopping": {"monitor": "val_loss", "patience": 2, "min_delta": 0.01,
                            "restore_best_weights": True}}),
    "adamw_cosine_regression_r2": (
        "regression",
        {"epochs": 12, "batch_size": 8, "validation_split": 0.25,
         "optimizer": {"type": "adamw", "learning_rate": 0.02},
         "lr_schedule": {"type": "cosine", "min_lr": 0.001},
         "early_stopping": {"monitor": "val_r2", "patience": 1, "min_delta": 0.005}}),
    "rmsprop_exponential": (
        "classification",
        {"epochs": 5, "batch_size": 32, "optimizer": {"type": "rmsprop"},
         "lr_schedule": {"type": "exponential", "gamma": 0.8}}),
    "adagrad_sample_weights": (
        "classification",
        {"epochs": 5, "batch_size": 10, "validation_split": 0.2, "optimizer": {"type": "adagrad"}}),
}


def resume_data(kind):
    if kind == "regression":
        x, y = smooth()
        return regressor, x, y, None
    x, y = blobs(n=120, spread=2.5)  # overlapping classes, so validation loss plateaus
    return classifier, x, y, np.linspace(0.5, 2.0, len(x))


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_checkpoint_resume_is_exact(case):
    kind, training = RESUME_CASES[case]
    build, x, y, sw = resume_data(kind)
    k = 3

    net = build()
    straight = Trainer(net, training).fit(x, y, sample_weight=sw)
    assert len(straight.history) > k

    saved = {}

    def checkpoint(record, trainer):
        if record["epoch"] == k:
            meta, arrays = trainer.state()
            saved["blob"] = arrays_to_npz(arrays, meta)
            raise Interrupted

    with pytest.raises(Interrupted):
        Trainer(build(), training).fit(x, y, sample_weight=sw, on_epoch=checkpoint)

    arrays, meta = arrays_from_npz(saved["blob"])
    assert json.loads(json.dumps(meta)) == meta and meta["epoch"] == k
    fresh = Network.from_spec(build().spec, seed=12345)  # its own init must be overwritten
    trainer = Trainer(fresh, training)
    trainer.load_state(meta, arrays)
    resumed = trainer.fit(x, y, sample_weight=sw)

    assert_same_weights(fresh.get_weights(), net.get_weights())
    assert without_duration(resumed.history) == without_duration(straight.history)
    assert (resumed.stop_reason, resumed.best_epoch) == (straight.stop_reason, straight.best_epoch)


def test_resume_cases_exercise_what_they_claim():
    """Guards the case above against silently testing less: plateau cuts the rate, and early
    stopping fires after the checkpoint epoch and restores best weights saved in it."""
    kind, training = RESUME_CASES["adam_plateau_early_stopping_validation"]
    build, x, y, sw = resume_data(kind)
    result = Trainer(build(), training).fit(x, y, sample_weight=sw)
    assert result.stop_reason == "early_stopping"
    assert result.best_epoch <= 3 < len(result.history)
    assert len({r["lr"] for r in result.history}) > 1
    kind, training = RESUME_CASES["adamw_cosine_regression_r2"]
    build, x, y, sw = resume_data(kind)
    result = Trainer(build(), training).fit(x, y)
    assert "val_r2" in result.history[0]


def test_state_is_a_snapshot():
    """A checkpoint held in memory must not change as training continues."""
    x, y = blobs()
    trainer = Trainer(classifier(), {"epochs": 2, "optimizer": {"type": "adam"}})
    trainer.fit(x, y)
    meta, arrays = trainer.state()
    frozen_meta = json.dumps(meta)
    frozen = {k: a.copy() for k, a in arrays.items()}
    trainer.cfg["epochs"] = 4
    trainer.fit(x, y)
    assert json.dumps(meta) == frozen_meta
    assert_same_weights(arrays, frozen)


# -- early stopping and target ------------------------------------------------------------

def test_early_stopping_patience_and_restore():
    """A min_delta nothing can beat makes epoch 1 the best for good: patience 2 tolerates
    epochs 2 and 3, stops at 4, and puts epoch 1's weights back."""
    x, y = blobs()
    per_epoch = []
    result = train(classifier(), x, y,
                   {"epochs": 20, "early_stopping": {"monitor": "loss", "patience": 2,
                                                     "min_delta": 100.0}},
                   on_epoch=lambda r, t: per_epoch.append(t.net.get_weights()))
    assert result.stop_reason == "early_stopping"
    assert len(result.history) == 4 and result.best_epoch == 1
    # on_epoch of the stopping epoch already sees the restored weights
    assert_same_weights(per_epoch[-1], per_epoch[0])


def test_restore_best_weights_gives_the_best_epochs_weights():
    x, y = blobs(n=120, spread=2.5)
    net = classifier(hidden=32)
    snapshots = {}

    def remember(record, trainer):
        snapshots.setdefault(record["epoch"], trainer.net.get_weights())

    result = train(net, x, y, {"epochs": 60, "batch_size": 8, "validation_split": 0.3,
                               "optimizer": {"type": "adam", "learning_rate": 0.05},
                               "early_stopping": {"monitor": "val_loss", "patience": 3}},
                   on_epoch=remember)
    val = [r["val_loss"] for r in result.history]
    assert result.stop_reason == "early_stopping"
    assert result.best_epoch == int(np.argmin(val)) + 1 < len(val)
    assert_same_weights(net.get_weights(), snapshots[result.best_epoch])


def test_without_restore_the_last_weights_stay():
    x, y = blobs()
    net = classifier()
    last = {}
    result = train(net, x, y, {"epochs": 20, "early_stopping": {
        "monitor": "loss", "patience": 1, "min_delta": 100.0, "restore_best_weights": False}},
        on_epoch=lambda r, t: last.update(w=t.net.get_weights()))
    assert result.stop_reason == "early_stopping" and len(result.history) == 3
    assert_same_weights(net.get_weights(), last["w"])


def test_early_stopping_min_delta_counts_only_real_improvements():
    x, y = blobs()
    es = {"monitor": "loss", "patience": 1, "min_delta": 0.05}
    result = train(classifier(), x, y, {"epochs": 40, "early_stopping": es})
    losses = [r["loss"] for r in result.history]
    best, wait, stop = losses[0], 0, None  # the rule, replayed on the recorded losses
    for epoch, value in enumerate(losses[1:], start=2):
        if value < best - 0.05:
            best, wait = value, 0
        else:
            wait += 1
            if wait > 1:
                stop = epoch
                break
    assert stop == len(losses) and result.stop_reason == "early_stopping"


def test_with_sample_weights_the_epoch_losses_are_weighted_means():
    """Each batch's weighted mean used to be counted by the batch's size (an all-zero batch as
    a loss of 0 for its samples), and the validation part lost its weights."""
    from sklearn.metrics import mean_squared_error

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(23, 4)), rng.normal(size=(23, 3)) * 5
    sw = rng.uniform(0, 2, 23)
    sw[7:14] = 0  # one whole batch weighs nothing
    spec = {"input_shape": [4], "loss": "mse", "layers": [{"type": "dense", "units": 3}]}
    net = Network.from_spec(spec, seed=0, dtype="float64")
    training = {"epochs": 1, "batch_size": 7, "shuffle": False, "validation_split": 0.3,
                "optimizer": {"type": "sgd", "learning_rate": 1e-30}}  # the weights stay put
    trainer = Trainer(net, training)
    record = trainer.fit(x, y, sample_weight=sw).history[-1]
    _, _, _, xv, yv, swv = trainer._prepare(x, y, sw, None)
    tr = np.setdiff1d(np.arange(23), [np.flatnonzero((x == row).all(axis=1))[0] for row in xv])
    pred = net.forward(x)
    assert record["loss"] == pytest.approx(mean_squared_error(y[tr], pred[tr], sample_weight=sw[tr]), rel=1e-9)
    assert record["val_loss"] == pytest.approx(mean_squared_error(yv, net.forward(xv), sample_weight=swv), rel=1e-9)


def test_validation_loss_includes_the_penalties_as_the_training_loss_does():
    """On the training data itself, with weights that do not move, the two losses must agree:
    with an l2 penalty counted in one only, the curves showed a gap that was no generalisation."""
    x, y = blobs()
    spec = {"input_shape": [x.shape[1]], "loss": "categorical_crossentropy", "layers": [
        {"type": "dense", "units": 8, "activation": "tanh", "l2": 1.0, "l1": 0.1},
        {"type": "dense", "units": 3, "activation": "softmax"}]}
    net = Network.from_spec(spec, seed=0, dtype="float64")
    record = Trainer(net, {"epochs": 1, "optimizer": {"type": "sgd", "learning_rate": 1e-30}}).fit(
        x, y, validation_data=(x, y)).history[-1]
    assert net.penalty() > 0.1 * record["loss"]
    assert record["val_loss"] == pytest.approx(record["loss"], rel=1e-9)


def test_a_nan_monitored_value_is_never_the_best():
    """A NaN val_loss in the first epoch (one extreme validation row can give it) used to become
    the best, which nothing can beat: early stopping then ended a run that kept improving."""
    trainer = Trainer(classifier(), {"early_stopping": {"monitor": "val_loss", "patience": 2}})
    stops = [trainer._early_stopping({"epoch": e, "val_loss": v})
             for e, v in enumerate([float("nan"), 5.0, 4.0, float("nan"), 3.0], start=1)]
    assert stops == [None] * 5 and (trainer.best, trainer.best_epoch) == (3.0, 5)
    plateau = Trainer(classifier(), {"lr_schedule": {"type": "reduce_on_plateau", "monitor": "loss",
                                                     "patience": 0}}).schedule
    base = plateau.lr(0)
    for value in (float("nan"), 2.0, 1.0):
        plateau.observe({"loss": value})
    # the NaN epoch did not improve (one cut, patience 0); 2 and 1 then did, and cut nothing
    assert plateau.best == 1.0 and plateau.lr(3) == pytest.approx(base * 0.1)


def test_early_stopping_maximises_accuracy():
    x, y = blobs(spread=0.3)  # separable: accuracy climbs to 1 and then cannot improve
    result = train(classifier(), x, y, {"epochs": 200, "validation_split": 0.2,
                                        "optimizer": {"type": "adam", "learning_rate": 0.05},
                                        "early_stopping": {"monitor": "val_accuracy",
                                                           "patience": 2}})
    acc = [r["val_accuracy"] for r in result.history]
    assert result.stop_reason == "early_stopping" and len(acc) < 200
    assert result.best_epoch == int(np.argmax(acc)) + 1


@pytest.mark.parametrize("target", [{"metric": "accuracy", "value": 0.0},
                                    {"metric": "loss", "value": 1e9}], ids=["accuracy", "loss"])
def test_trivial_target_stops_after_one_epoch(target):
    x, y = blobs()
    result = train(classifier(), x, y, {"epochs": 10, "target": target})
    assert result.stop_reason == "target_reached" and len(result.history) == 1


def test_a_loss_target_stops_at_the_value_itself():
    """"Loss-like metrics stop at or below" the value: a run seeded as one that recorded loss L
    in its first epoch stops there when the target is exactly L."""
    x, y = blobs()
    first = train(classifier(), x, y, {"epochs": 1}).history[0]["loss"]
    result = train(classifier(), x, y, {"epochs": 10, "target": {"metric": "loss", "value": first}})
    assert result.stop_reason == "target_reached" and len(result.history) == 1
    assert result.history[0]["loss"] == first


def test_target_stops_as_soon_as_reached():
    x, y = blobs(spread=0.5)
    result = train(classifier(), x, y, {"epochs": 300, "validation_split": 0.2,
                                        "optimizer": {"type": "adam", "learning_rate": 0.01},
                                        "target": {"metric": "val_accuracy", "value": 0.95}})
    acc = [r["val_accuracy"] for r in result.history]
    assert result.stop_reason == "target_reached"
    assert acc[-1] >= 0.95 and all(a < 0.95 for a in acc[:-1]) and len(acc) > 1


@pytest.mark.parametrize("training, path", [
    ({"early_stopping": {"monitor": "val_loss"}}, "training.early_stopping.monitor"),
    ({"early_stopping": {"monitor": "accuracy"}}, "training.early_stopping.monitor"),
    ({"target": {"metric": "val_accuracy", "value": 0.9}}, "training.target.metric"),
    ({"lr_schedule": {"type": "reduce_on_plateau", "monitor": "acc"}},
     "training.lr_schedule.monitor"),
])
def test_unrecorded_metrics_fail_before_training(training, path):
    """A regression run without validation records loss, mae and r2 only."""
    from core.nn import SpecError

    x, y = smooth()
    net = regressor()
    before = net.get_weights()
    with pytest.raises(SpecError) as err:
        train(net, x, y, {"epochs": 3, **training})
    assert err.value.errors[0]["path"] == path
    assert_same_weights(net.get_weights(), before)


def test_plateau_on_val_loss_without_validation_watches_loss():
    x, y = smooth()
    result = train(regressor(), x, y, {"epochs": 3, "lr_schedule": {"type": "reduce_on_plateau"}})
    assert len(result.history) == 3


# -- divergence and cancellation ----------------------------------------------------------

def test_huge_learning_rate_raises_training_diverged():
    x, y = smooth()
    with pytest.raises(TrainingDiverged) as err:
        train(regressor(), x, 1e3 * y, {"epochs": 50, "optimizer": {"type": "sgd",
                                                                     "learning_rate": 1e6}})
    assert err.value.epoch >= 1
    assert f"at epoch {err.value.epoch}" in str(err.value)


@pytest.mark.parametrize("where", ["inputs", "targets", "validation inputs"])
def test_non_finite_data_is_named_not_blamed_on_the_learning_rate(where):
    """The HTTP API refuses such data; a Python caller got "the loss became non-finite ... try a
    lower learning rate" for one NaN in X."""
    x, y = smooth()
    xv, yv = x[:10].copy(), y[:10].copy()
    {"inputs": x, "targets": y, "validation inputs": xv}[where][7] = np.nan
    with pytest.raises(ValueError, match=f"^{where} hold a non-finite value \\(nan\\) at sample 7"):
        train(regressor(), x, y, {"epochs": 1}, validation_data=(xv, yv))


@pytest.mark.parametrize("sample", range(0, 80, 7))
def test_a_nan_is_named_by_its_index_in_the_data_as_given(sample):
    """With validation_split the data is split before training: the index is the caller's,
    whichever part the sample fell in (a NaN in the validation part would only make val_loss
    NaN, which stops nothing)."""
    x, y = smooth()
    x[sample, 1] = np.inf
    with pytest.raises(ValueError, match=f"^inputs hold a non-finite value \\(inf\\) at sample {sample}, "):
        train(regressor(), x, y, {"epochs": 1, "validation_split": 0.25})


def test_divergence_from_huge_inputs_says_to_scale_them():
    x, y = smooth()
    with pytest.raises(TrainingDiverged, match="scale the inputs \\(the largest \\|value\\| is 1e\\+30\\)"):
        linear = Network.from_spec({"input_shape": [2], "loss": "mse", "layers": [{"type": "dense", "units": 1}]})
        train(linear, x * 1e30 / np.abs(x).max(), y, {"epochs": 3})


def test_weights_that_overflow_in_the_last_batch_fail_the_run():
    """The loss of a batch is taken before its update: weights that become infinite in the run's
    very last update show in no loss, and the run would have ended as a success."""
    net = Network.from_spec({"input_shape": [1], "loss": "mse", "layers": [{"type": "dense", "units": 1}]})
    with pytest.raises(TrainingDiverged) as err:
        train(net, np.ones((1, 1)), np.full((1, 1), 1e3),
              {"epochs": 1, "batch_size": 1, "optimizer": {"type": "sgd", "learning_rate": 1e38}})
    assert "the weights" in str(err.value) and err.value.epoch == 1


def test_should_stop_cancels_mid_epoch():
    x, y = blobs(n=40)
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) == 7  # 4 batches per epoch: stop before the 3rd batch of epoch 2

    trainer = Trainer(classifier(), {"epochs": 5, "batch_size": 10})
    result = trainer.fit(x, y, should_stop=should_stop)
    assert result.stop_reason == "cancelled"
    assert len(calls) == 7 and len(result.history) == 1 and trainer.epoch == 1


def test_zero_weight_samples_are_ignored():
    """A batch whose samples all weigh 0 contributes nothing (it used to be 0/0 = NaN and a
    false TrainingDiverged); zero-weight samples never move the weights."""
    x, y = blobs(n=40)
    w = np.r_[np.ones(20), np.zeros(20)]
    training = {"epochs": 3, "batch_size": 10, "shuffle": False,
                "optimizer": {"type": "sgd", "learning_rate": 0.5}}
    weighted, subset = classifier(), classifier()
    result = train(weighted, x, y, training, sample_weight=w)
    train(subset, x[:20], y[:20], training)  # plain SGD: the zero batches are exact no-ops
    assert np.isfinite(result.history[-1]["loss"])
    assert_same_weights(weighted.get_weights(), subset.get_weights())
    for bad in (-w, np.r_[np.ones(39), np.nan]):
        with pytest.raises(ValueError, match="sample_weight"):
            train(classifier(), x, y, training, sample_weight=bad)


# -- validation split, metrics and diagnostics ----------------------------------------------

@pytest.mark.parametrize("form", ["labels", "one_hot", "column"])
def test_stratified_split_keeps_class_proportions(form):
    labels = np.repeat([0, 1, 2], [120, 60, 20])
    y = {"labels": labels, "one_hot": np.eye(3)[labels],
         "column": (labels == 0).astype(float)[:, None]}[form]
    tr, va = stratified_split(y, 0.2, np.random.default_rng(0), classification=True)
    assert np.intersect1d(tr, va).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(200))
    counts = np.bincount(labels[va] if form != "column" else (labels[va] == 0).astype(int))
    want = [24, 12, 4] if form != "column" else [16, 24]
    np.testing.assert_array_equal(counts, want)


@pytest.mark.parametrize("counts, fraction", [([2] * 10, 0.2), ([3] * 10, 0.2), ([3] * 10 + [100], 0.1),
                                              ([1] * 5 + [20], 0.6), ([7, 5, 3], 0.5)])
def test_stratified_split_holds_the_fraction_and_leaves_every_class_in_training(counts, fraction):
    """Rounded class by class, ten classes of 2 at 0.2 gave no validation sample, ten of 3 gave
    a third, and classes of one sample went to validation only."""
    labels = np.repeat(np.arange(len(counts)), counts)
    tr, va = stratified_split(labels, fraction, np.random.default_rng(0), classification=True)
    assert len(va) == round(len(labels) * fraction)
    assert set(labels[tr]) == set(range(len(counts)))
    got = np.bincount(labels[va], minlength=len(counts))
    assert np.all(np.abs(got - np.asarray(counts) * fraction) < 1 + 1e-9) or min(counts) == 1


def test_sequence_labels_get_a_plain_split():
    """(n, steps) class indices are not one-hot rows: argmax over time would be no class."""
    y = np.zeros((100, 5), dtype=np.intp)
    y[:2, 4] = 2  # argmax over steps would make fake "classes" of 2 and 98 (0 + 24 drawn)
    tr, va = stratified_split(y, 0.25, np.random.default_rng(0), classification=True)
    assert len(va) == 25 and len(tr) == 75


def test_regression_split_is_random_and_sized():
    y = np.arange(100.0)
    tr, va = stratified_split(y, 0.25, np.random.default_rng(0), classification=False)
    assert len(va) == 25 and np.intersect1d(tr, va).size == 0
    assert not np.array_equal(va, np.arange(75, 100))


def test_validation_metrics_match_sklearn():
    x, y = blobs(n=120, spread=2.0)
    xv, yv = blobs(n=60, spread=2.0, seed=1)
    net = classifier(dtype="float64")
    result = train(net, x, y, {"epochs": 3}, validation_data=(xv, yv))
    last = result.history[-1]
    p = net.forward(xv)
    assert last["val_loss"] == pytest.approx(log_loss(yv, p), rel=1e-9)
    assert last["val_accuracy"] == pytest.approx(accuracy_score(yv, p.argmax(1)))

    x, y = smooth()
    xv, yv = smooth(n=40, seed=1)
    net = regressor(dtype="float64")
    last = train(net, x, y, {"epochs": 3}, validation_data=(xv, yv)).history[-1]
    pred = net.forward(xv)[:, 0]
    assert last["val_r2"] == pytest.approx(r2_score(yv, pred), rel=1e-9)
    assert last["val_mae"] == pytest.approx(mean_absolute_error(yv, pred), rel=1e-9)
    assert {"loss", "mae", "r2", "val_loss", "lr"} <= last.keys() and "accuracy" not in last


def test_r2_holds_for_targets_whose_mean_dwarfs_their_spread():
    """R² is accumulated batch by batch; sum(y²) - sum(y)²/n cancels to nothing for targets
    around 1e9 with a spread of 1 (it gave 0.0 where scikit-learn gives 0.99)."""
    from core.nn.training import _RegressionStats

    rng = np.random.default_rng(0)
    y = 1e9 + rng.standard_normal((1000, 2))
    pred = y + 0.1 * rng.standard_normal(y.shape)
    stats = _RegressionStats()
    for start in range(0, len(y), 64):
        stats.add(pred[start:start + 64], y[start:start + 64])
    assert stats.result(2)["r2"] == pytest.approx(r2_score(y, pred), rel=1e-9)
    assert stats.result(2)["r2"] > 0.98


def test_grad_and_weight_norms_per_layer():
    x, y = blobs()
    spec = {"input_shape": [4], "loss": "categorical_crossentropy",
            "layers": [{"type": "dense", "units": 6, "activation": "relu"},
                       {"type": "activation", "activation": "tanh"},
                       {"type": "dense", "units": 3, "activation": "softmax"}]}
    net = Network.from_spec(spec)
    result = train(net, x, y, {"epochs": 3})
    for record in result.history:
        assert set(record["grad_norms"]) == set(record["weight_norms"]) == {"dense_0", "dense_1"}
        assert all(v > 0 and np.isfinite(v) for v in record["grad_norms"].values())
        assert all(v > 0 and np.isfinite(v) for v in record["weight_norms"].values())
    w = net.get_weights()
    want = np.sqrt(np.sum(w["dense_1/kernel"].astype(float) ** 2)
                   + np.sum(w["dense_1/bias"].astype(float) ** 2))
    assert result.history[-1]["weight_norms"]["dense_1"] == pytest.approx(want, rel=1e-6)


# -- fine-tuning ----------------------------------------------------------------------------

def test_fine_tuning_with_a_frozen_layer():
    x, y = blobs()
    base = classifier()
    train(base, x, y, {"epochs": 3})
    tuned = Network.from_spec(base.spec, seed=7)
    tuned.set_weights(base.get_weights())
    tuned.freeze(["dense_0"])
    trainer = Trainer(tuned, {"epochs": 3, "optimizer": {"type": "adamw", "learning_rate": 0.05}})
    result = trainer.fit(x[::-1], y[::-1])
    after, before = tuned.get_weights(), base.get_weights()
    np.testing.assert_array_equal(after["dense_0/kernel"], before["dense_0/kernel"])
    np.testing.assert_array_equal(after["dense_0/bias"], before["dense_0/bias"])
    assert not np.array_equal(after["dense_1/kernel"], before["dense_1/kernel"])
    assert set(result.history[0]["grad_norms"]) == {"dense_1"}
    _, arrays = trainer.state()
    assert not any("dense_0" in k for k in arrays if k.startswith("optimizer:"))
    with pytest.raises(ValueError, match="unknown layers"):
        tuned.freeze(["dense_9"])


def test_a_frozen_batch_norm_keeps_what_it_computes():
    """Frozen, batch norm normalizes with its moving statistics in training too and leaves them
    alone (as in Keras): a wholly frozen network predicts the same after training, and layers
    around a frozen batch norm learn through it with the right gradients."""
    from tests.core.gradcheck import check_gradients, make

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 4)) * 3 + 5, rng.standard_normal(64)
    spec = {"input_shape": [4], "loss": "mse", "layers": [
        {"type": "dense", "units": 4}, {"type": "batch_norm", "name": "bn"}, {"type": "dense", "units": 1}]}
    net = Network.from_spec(spec, seed=0)
    net.set_weights({**net.get_weights(), "bn/moving_mean": np.full(4, 0.5), "bn/moving_variance": np.full(4, 2.0)})
    net.freeze(["dense_0", "bn", "dense_1"])
    before, stats = net.forward(x), {k: v.copy() for k, v in net.buffers().items()}
    Trainer(net, {"epochs": 3, "optimizer": {"type": "sgd"}}).fit(x, y)
    np.testing.assert_array_equal(net.forward(x), before)
    for k, v in net.buffers().items():
        np.testing.assert_array_equal(v, stats[k])

    net.freeze(["bn"])  # the dense layers learn, through the frozen normalization
    result = Trainer(net, {"epochs": 3, "optimizer": {"type": "sgd"}}).fit(x, y)
    assert set(result.history[0]["grad_norms"]) == {"dense_0", "dense_1"}
    for k, v in net.buffers().items():
        np.testing.assert_array_equal(v, stats[k])
    net.freeze([])  # unfrozen, it normalizes with the batch's statistics again
    Trainer(net, {"epochs": 1, "optimizer": {"type": "sgd"}}).fit(x, y)
    assert not np.array_equal(net.buffers()["bn/moving_mean"], stats["bn/moving_mean"])

    checked = make(spec["layers"], [4])
    checked.set_weights({**checked.get_weights(), "bn/moving_mean": np.full(4, 0.5),
                         "bn/moving_variance": np.full(4, 2.0)})
    checked.freeze(["bn"])
    check_gradients(checked, x[:8], y[:8, None])


def test_set_weights_checks_names_and_shapes():
    net = classifier()
    w = net.get_weights()
    with pytest.raises(ValueError, match="missing"):
        net.set_weights({k: v for k, v in w.items() if k != "dense_0/bias"})
    with pytest.raises(ValueError, match="shape"):
        net.set_weights({**w, "dense_0/bias": np.zeros(99)})
    net.set_weights({"dense_0/bias": np.ones(8)}, strict=False)
    np.testing.assert_array_equal(net.get_weights()["dense_0/bias"], np.ones(8))


def test_resume_from_a_checkpoint_taken_when_the_target_was_reached_stays_stopped():
    from sklearn.datasets import load_iris


    x, y = load_iris(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    spec = {"input_shape": [4], "layers": [{"type": "dense", "units": 8, "activation": "tanh"},
                                           {"type": "dense", "units": 3, "activation": "softmax"}],
            "loss": "categorical_crossentropy"}
    training = {"epochs": 500, "optimizer": {"type": "adam", "learning_rate": 0.05},
                "target": {"metric": "accuracy", "value": 0.9}}
    saved = {}

    def on_epoch(record, trainer):
        meta, arrays = trainer.state()
        saved["blob"] = arrays_to_npz(arrays, meta)

    first = Trainer(Network.from_spec(spec, seed=0), training)
    result = first.fit(x, y, on_epoch=on_epoch)
    assert result.stop_reason == "target_reached" and first.epoch < 500
    arrays, meta = arrays_from_npz(saved["blob"])  # the last checkpoint, taken at the stopping epoch
    resumed = Trainer(Network.from_spec(spec, seed=0), training)
    resumed.load_state(meta, arrays)
    again = resumed.fit(x, y)
    assert again.stop_reason == "target_reached" and resumed.epoch == first.epoch
    assert again.restored_epoch is None


def test_resume_from_a_checkpoint_taken_when_early_stopping_restored_says_so():
    """The worker takes a job's metrics from the restored epoch: a run resumed from the
    checkpoint of its stopping epoch must still report which epoch its weights are from."""
    x, y = blobs()
    training = {"epochs": 20, "early_stopping": {"monitor": "loss", "patience": 2, "min_delta": 100.0}}
    saved = {}
    first = Trainer(classifier(), training)
    result = first.fit(x, y, on_epoch=lambda r, t: saved.update(state=t.state()))
    assert result.stop_reason == "early_stopping" and result.restored_epoch == result.best_epoch == 1
    resumed = Trainer(classifier(), training)
    resumed.load_state(*saved["state"])
    again = resumed.fit(x, y)
    assert (again.stop_reason, again.best_epoch, again.restored_epoch) == ("early_stopping", 1, 1)
    assert_same_weights(resumed.net.get_weights(), first.net.get_weights())
