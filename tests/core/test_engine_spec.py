"""Spec validation: every error names its path, typos never pass, user text is only ever a
dictionary key, and the published JSON Schema comes from the same declarations."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from core.nn import Network, SpecError, check_model_spec, check_training_spec
from core.nn.network import shapes_only
from core.nn.schema import layer_schemas
from core.nn.spec import Field
from core.nn.training import TRAINING_FIELDS, training_json_schema

MODEL = {"input_shape": [4], "loss": "categorical_crossentropy",
         "layers": [{"type": "dense", "units": 8, "activation": "relu"},
                    {"type": "dense", "units": 8, "activation": "tanh"},
                    {"type": "dense", "units": 3, "activation": "softmax"}]}


def model_with(path, value):
    """MODEL with one value replaced; `path` is a list of keys / indices."""
    spec = copy.deepcopy(MODEL)
    target = spec
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return spec


_DELETE = object()


def model_errors(spec):
    with pytest.raises(SpecError) as err:
        Network.from_spec(spec)
    return err.value.errors


def training_errors(spec):
    with pytest.raises(SpecError) as err:
        check_training_spec(spec)
    return err.value.errors


def test_valid_model_gets_defaults():
    checked = check_model_spec(MODEL)
    assert checked["dtype"] == "float32"
    assert checked["layers"][0]["kernel_initializer"] == "glorot_uniform"
    assert checked["layers"][0]["use_bias"] is True and checked["layers"][0]["l2"] == 0.0


@pytest.mark.parametrize("path, value, where, message", [
    (["layers", 2, "units"], 0, "model.layers[2].units", "must be >= 1"),
    (["layers", 1, "units"], 2.5, "model.layers[1].units", "must be an integer"),
    (["layers", 1, "units"], True, "model.layers[1].units", "must be an integer"),
    (["layers", 1, "units"], "8", "model.layers[1].units", "must be an integer"),
    (["layers", 0, "type"], "dense2", "model.layers[0].type", "unknown layer type 'dense2'"),
    (["layers", 0, "type"], None, "model.layers[0].type", "unknown layer type"),
    (["layers", 0, "activation"], "swish", "model.layers[0].activation", "must be one of"),
    (["layers", 0, "kernel_initializer"], "random", "model.layers[0].kernel_initializer",
     "must be one of"),
    (["layers", 0, "l2"], -0.1, "model.layers[0].l2", "must be >= 0"),
    (["layers", 0, "l1"], float("nan"), "model.layers[0].l1", "must be finite"),
    (["layers", 0], "dense", "model.layers[0]", "must be an object"),
    (["layers"], [], "model.layers", "at least 1"),
    (["layers"], {"type": "dense"}, "model.layers", "must be a list"),
    (["loss"], "cross_entropy", "model.loss", "must be one of"),
    (["loss"], _DELETE, "model.loss", "is required"),
    (["dtype"], "float16", "model.dtype", "must be one of float32, float64"),
    (["input_shape"], [0], "model.input_shape[0]", "must be an integer >= 1"),
    (["input_shape"], [], "model.input_shape", "non-empty list"),
    (["input_shape"], 4, "model.input_shape", "non-empty list"),
])
def test_model_errors_name_their_path(path, value, where, message):
    errors = model_errors(model_with(path, value))
    assert any(e["path"] == where and message in e["message"] for e in errors), errors


def test_typos_are_unknown_fields():
    spec = copy.deepcopy(MODEL)
    spec["layers"][1]["unit"] = spec["layers"][1].pop("units")
    spec["los"] = "mse"
    errors = model_errors(spec)
    assert {"path": "model.layers[1].unit", "message": "unknown field"} in errors
    assert {"path": "model.layers[1].units", "message": "is required"} in errors
    assert {"path": "model.los", "message": "unknown field"} in errors


def test_every_error_is_reported_at_once():
    spec = model_with(["layers", 0, "units"], -1)
    spec["layers"][2]["activation"] = "nope"
    spec["dtype"] = "int8"
    paths = {e["path"] for e in model_errors(spec)}
    assert {"model.layers[0].units", "model.layers[2].activation", "model.dtype"} <= paths
    message = str(SpecError([{"path": "a.b", "message": "is bad"}]))
    assert message == "a.b: is bad"


def test_model_must_be_an_object():
    assert model_errors([MODEL]) == [{"path": "model", "message": "must be an object"}]


@pytest.mark.parametrize("loss, activation, needs", [
    ("categorical_crossentropy", "sigmoid", "softmax"),
    ("sparse_categorical_crossentropy", "linear", "softmax"),
    ("binary_crossentropy", "softmax", "sigmoid"),
    ("binary_crossentropy", "relu", "sigmoid"),
])
def test_loss_and_output_activation_must_fit(loss, activation, needs):
    spec = model_with(["loss"], loss)
    spec["layers"][2]["activation"] = activation
    (error,) = model_errors(spec)
    assert error["path"] == "model.layers[2].activation"
    assert needs in error["message"] and activation in error["message"] and loss in error["message"]


def test_duplicate_layer_names():
    spec = copy.deepcopy(MODEL)
    spec["layers"][0]["name"] = spec["layers"][1]["name"] = "hidden"
    (error,) = model_errors(spec)
    assert error["path"] == "model.layers[1].name"


@pytest.mark.parametrize("dtype", ["float16", "garbage", "int32"])
def test_dtype_argument_is_checked_like_the_spec(dtype):
    with pytest.raises(SpecError) as err:
        Network.from_spec(MODEL, dtype=dtype)
    assert err.value.errors[0]["path"] == "model.dtype"


# -- training ---------------------------------------------------------------------------------

def test_training_defaults():
    checked = check_training_spec(None)
    assert checked["epochs"] == 10 and checked["batch_size"] == 32
    assert checked["optimizer"] == {"type": "sgd", "learning_rate": 0.01, "momentum": 0.0,
                                    "nesterov": False}
    assert checked["lr_schedule"] is None and checked["early_stopping"] is None
    adam = check_training_spec({"optimizer": {"type": "adam"}})["optimizer"]
    assert adam["learning_rate"] == 0.001 and adam["beta2"] == 0.999
    assert check_training_spec({"epochs": 1e3})["epochs"] == 1000


@pytest.mark.parametrize("spec, where, message", [
    ({"epochs": 0}, "training.epochs", "must be >= 1"),
    ({"epochs": "ten"}, "training.epochs", "must be an integer"),
    ({"epochs": 10.5}, "training.epochs", "must be an integer"),
    ({"epochs": float("inf")}, "training.epochs", "must be"),
    ({"batch_size": None}, "training.batch_size", "must be an integer"),
    ({"validation_split": 0.95}, "training.validation_split", "must be <= 0.9"),
    ({"clip_norm": 0}, "training.clip_norm", "must be > 0"),
    ({"shuffle": "yes"}, "training.shuffle", "must be a boolean"),
    ({"epoch": 5}, "training.epoch", "unknown field"),
    ({"optimizer": {"type": "adamax"}}, "training.optimizer.type", "must be one of"),
    ({"optimizer": {}}, "training.optimizer.type", "must be one of"),
    ({"optimizer": "adam"}, "training.optimizer", "must be an object"),
    ({"optimizer": {"type": "sgd", "learning_rate": 0}}, "training.optimizer.learning_rate",
     "must be > 0"),
    ({"optimizer": {"type": "sgd", "momentum": 1.5}}, "training.optimizer.momentum", "must be <= 1"),
    ({"optimizer": {"type": "sgd", "lr": 0.1}}, "training.optimizer.lr", "unknown field"),
    ({"optimizer": {"type": "sgd", "beta1": 0.9}}, "training.optimizer.beta1", "unknown field"),
    ({"lr_schedule": {"type": "linear"}}, "training.lr_schedule.type", "must be one of"),
    ({"lr_schedule": {"type": "step", "gamma": 2}}, "training.lr_schedule.gamma", "must be <= 1"),
    ({"lr_schedule": {"type": "cosine", "min_lr": 1e300}}, "training.lr_schedule.min_lr",
     "at most the learning rate (0.01)"),
    ({"optimizer": {"type": "sgd", "learning_rate": 0.1}, "lr_schedule": {"type": "reduce_on_plateau", "min_lr": 0.2}},
     "training.lr_schedule.min_lr", "at most the learning rate (0.1)"),
    ({"early_stopping": {"patience": -1}}, "training.early_stopping.patience", "must be >= 0"),
    ({"early_stopping": {"monitor": ""}}, "training.early_stopping.monitor", "non-empty string"),
    ({"target": {"metric": "accuracy"}}, "training.target.value", "is required"),
    ({"target": 0.9}, "training.target", "must be an object"),
])
def test_training_errors_name_their_path(spec, where, message):
    errors = training_errors(spec)
    assert any(e["path"] == where and message in e["message"] for e in errors), errors


def test_training_must_be_an_object():
    assert training_errors([]) == [{"path": "training", "message": "must be an object"}]


# User text only ever indexes a dict: names of Python attributes are unknown, and values that
# are not strings are errors, never TypeError / AttributeError.
HOSTILE = ["__class__", "__init__", "__dict__", "mro", "forward", "update", "lr", "Dense", "Adam",
           "get_activation", ["sgd"], {"a": 1}, 3, None]


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
def test_registries_treat_names_as_keys(name):
    for path, where in ((["layers", 0, "type"], "model.layers[0].type"),
                        (["layers", 0, "activation"], "model.layers[0].activation"),
                        (["layers", 0, "bias_initializer"], "model.layers[0].bias_initializer"),
                        (["loss"], "model.loss")):
        assert where in {e["path"] for e in model_errors(model_with(path, name))}
    assert training_errors({"optimizer": {"type": name}})[0]["path"] == "training.optimizer.type"
    assert training_errors({"lr_schedule": {"type": name}})[0]["path"] == "training.lr_schedule.type"


# -- JSON Schema --------------------------------------------------------------------------------

def test_json_schemas_are_json_and_share_the_defaults():
    schema = json.loads(json.dumps(training_json_schema()))
    assert schema["additionalProperties"] is False
    for name, field in TRAINING_FIELDS.items():
        if field.default is not None and name not in ("optimizer",):
            assert schema["properties"][name]["default"] == field.default, name
    assert schema["properties"]["epochs"]["minimum"] == 1
    optimizers = {o["properties"]["type"]["enum"][0]: o
                  for o in schema["properties"]["optimizer"]["oneOf"]}
    assert optimizers["adam"]["properties"]["learning_rate"]["default"] == 0.001
    assert optimizers["sgd"]["required"] == ["type"]

    layers = json.loads(json.dumps(layer_schemas()))  # every registered layer
    dense = layers["dense"]
    assert dense["required"] == ["type", "units"]
    assert dense["properties"]["units"] == {"type": "integer", "minimum": 1,
                                            "description": "output width"}
    assert "softmax" in dense["properties"]["activation"]["enum"]


def test_field_kinds_edge_cases():
    errors: list = []
    assert Field("int_list", minimum=0).check([0, 2], "p", errors) == [0, 2]
    assert Field("int_list").check([0], "p", errors) is None
    Field("list").check("x", "q", errors)
    assert errors == [{"path": "p[0]", "message": "must be an integer >= 1"},
                      {"path": "q", "message": "must be a list"}]
    assert Field("int_list", minimum=0).json_schema()["items"]["minimum"] == 0


def test_count_parameters_matches_a_real_build_without_allocating():
    import tracemalloc

    from core.nn.network import count_parameters

    small = {"input_shape": [6, 6, 2], "loss": "mse", "layers": [
        {"type": "conv2d", "filters": 3, "kernel_size": 3}, {"type": "batch_norm"}, {"type": "flatten"},
        {"type": "residual", "layers": [{"type": "dense", "units": 48}]}, {"type": "dense", "units": 2}]}
    assert count_parameters(small) == Network.from_spec(small).parameter_count
    seq = {"input_shape": [5, 3], "loss": "mse", "layers": [{"type": "lstm", "units": 4, "return_sequences": True},
                                                            {"type": "gru", "units": 3}, {"type": "dense", "units": 1}]}
    assert count_parameters(seq) == Network.from_spec(seq).parameter_count
    huge = {"input_shape": [4096], "loss": "mse", "layers": [{"type": "dense", "units": 8192}] * 16}
    tracemalloc.start()
    try:
        assert count_parameters(huge) == 4096 * 8192 + 8192 + 15 * (8192 * 8192 + 8192)
        assert tracemalloc.get_traced_memory()[1] < 50e6  # a real build would need about 17 GB
    finally:
        tracemalloc.stop()


COST_SPECS = {
    "mlp": ({"input_shape": [784], "loss": "categorical_crossentropy", "layers": [
        {"type": "dense", "units": 256, "activation": "relu"}, {"type": "dense", "units": 128, "activation": "relu"},
        {"type": "dense", "units": 10, "activation": "softmax"}]}, 64),
    "conv": ({"input_shape": [28, 28, 1], "loss": "categorical_crossentropy", "layers": [
        {"type": "conv2d", "filters": 16, "kernel_size": 3, "activation": "relu"}, {"type": "max_pool2d"},
        {"type": "conv2d", "filters": 32, "kernel_size": 3, "activation": "relu", "padding": "same"},
        {"type": "max_pool2d"}, {"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}]}, 32),
    "conv_channels_first": ({"input_shape": [3, 32, 32], "loss": "mse", "layers": [
        {"type": "conv2d", "filters": 8, "kernel_size": 5, "data_format": "channels_first", "activation": "relu"},
        {"type": "batch_norm", "axis": 1}, {"type": "avg_pool2d", "data_format": "channels_first"},
        {"type": "flatten"}, {"type": "dense", "units": 1}]}, 32),
    "lstm": ({"input_shape": [50, 8], "loss": "categorical_crossentropy", "layers": [
        {"type": "lstm", "units": 64}, {"type": "dense", "units": 10, "activation": "softmax"}]}, 64),
    "gru_rnn": ({"input_shape": [30, 4], "loss": "mse", "layers": [
        {"type": "gru", "units": 32, "return_sequences": True}, {"type": "simple_rnn", "units": 16},
        {"type": "dense", "units": 1}]}, 16),
    "residual": ({"input_shape": [64], "loss": "mse", "layers": [
        {"type": "dense", "units": 64, "activation": "relu"},
        {"type": "residual", "layers": [{"type": "dense", "units": 64, "activation": "relu"},
                                        {"type": "dropout", "rate": 0.2}, {"type": "dense", "units": 64}]},
        {"type": "dense", "units": 1}]}, 128),
    # a wide activation's temporaries outweigh what the layers keep (gelu: 8 arrays the size of z)
    **{f"wide_{act}": ({"input_shape": [64], "loss": "mse", "layers": [
        {"type": "dense", "units": 4096, "activation": act}, {"type": "dense", "units": 1}]}, 64)
       for act in ("gelu", "tanh", "softplus", "sigmoid", "elu", "leaky_relu")},
    # a window larger than the image, padded: the padded image, not the input, is what it holds
    "padded_pools": ({"input_shape": [16, 16, 4], "loss": "mse", "layers": [
        {"type": "avg_pool2d", "pool_size": 5, "strides": 1, "padding": "same"},
        {"type": "max_pool2d", "pool_size": 40, "padding": "same"}, {"type": "flatten"},
        {"type": "dense", "units": 1}]}, 32),
    "wide_batch_norm_dropout": ({"input_shape": [64], "loss": "mse", "layers": [
        {"type": "dense", "units": 4096}, {"type": "batch_norm"}, {"type": "dropout", "rate": 0.5},
        {"type": "activation", "activation": "relu"}, {"type": "dense", "units": 1}]}, 64),
}


@pytest.mark.parametrize("name", sorted(COST_SPECS))
def test_cost_estimates_the_memory_a_training_step_allocates(name):
    """The service refuses a batch by this estimate before the job is queued (a 316x316 image
    through 8192 filters took a worker to 23 GB before the kernel killed it), so it must track
    what a training step really allocates: NumPy reports its arrays to tracemalloc."""
    import tracemalloc

    spec, batch = COST_SPECS[name]
    net = Network.from_spec(spec)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *net.input_shape)).astype(np.float32)
    y = rng.integers(0, 10, batch) if spec["loss"] != "mse" else rng.standard_normal((batch, 1))
    y = net.loss.prepare_targets(y, net.output_shape, net.dtype)
    net.train_step_gradients(x, y)  # the first step also allocates what every step reuses
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        net.train_step_gradients(x, y)
        allocated = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    estimate = net.cost()[1] * batch * 4
    assert 0.8 * allocated < estimate < 2.5 * allocated, (estimate, allocated)
    assert shapes_only(spec).cost() == net.cost()  # known before any weight is allocated


def test_cost_counts_the_forward_multiply_adds_and_the_recurrent_steps():
    mlp = Network.from_spec(COST_SPECS["mlp"][0])
    assert mlp.cost()[0] == 784 * 256 + 256 * 128 + 128 * 10 and mlp.sequential_steps == 0
    per_position = Network.from_spec({"input_shape": [5, 7], "loss": "mse",
                                      "layers": [{"type": "dense", "units": 3}]})
    assert per_position.cost()[0] == 5 * 7 * 3  # dense on (steps, features) acts on each step
    conv = Network.from_spec(COST_SPECS["conv"][0])
    # 26x26 positions x 3x3x1x16, max pool 13x13x16 x 2x2, 13x13 positions x 3x3x16x32, pool, flatten, dense
    assert conv.cost()[0] == (26 * 26 * 9 * 16 + 13 * 13 * 16 * 4 + 13 * 13 * 9 * 16 * 32 + 6 * 6 * 32 * 4
                              + 6 * 6 * 32 + 6 * 6 * 32 * 10)
    seq = Network.from_spec(COST_SPECS["gru_rnn"][0])
    # GRU: 30 steps x 3 gates x 32 units x (32 + 4 + 1); RNN: 30 x 16 x (16 + 32 + 1); dense 16
    assert seq.cost()[0] == 30 * 96 * 37 + 30 * 16 * 49 + 16
    assert seq.sequential_steps == 60
    assert conv.sequential_steps == 9 + 4 + 9 + 4  # window offsets, looped over per batch


def test_inference_goes_in_batches_that_fit_in_inference_bytes(monkeypatch):
    """Predict answers rows in batches of at most 1024, fewer when one batch would hold more
    than INFERENCE_BYTES: a wide network predicting 1024 rows at once could exhaust memory."""
    import core.nn.network as network

    # float64: in float32 a GEMM's rounding depends on how many rows it gets (1e-6 apart with
    # OpenBLAS's Haswell kernels), and this is about which rows go together
    net = Network.from_spec(COST_SPECS["conv"][0], dtype="float64")
    x = np.random.default_rng(1).random((40, 28, 28, 1))
    whole = net.forward(x)
    seen = []
    real = net.logits
    monkeypatch.setattr(net, "logits", lambda xb, training: seen.append(len(xb)) or real(xb, training))
    monkeypatch.setattr(network, "INFERENCE_BYTES", net.cost()[1] * 8 * 7)
    np.testing.assert_allclose(net.forward(x), whole, rtol=1e-12)
    assert seen == [7] * 5 + [5]
    monkeypatch.setattr(network, "INFERENCE_BYTES", 1)
    seen.clear()
    assert net.forward(x[:3]).shape == (3, 10) and seen == [1, 1, 1]


def test_the_engine_builds_stored_specs_the_api_would_now_refuse():
    """Server limits (layer name length, input axes) are the API's, at submission: a stored job
    from before them must still build for predict, fine-tuning and its worker."""
    spec = copy.deepcopy(MODEL)
    spec["layers"][0]["name"] = "n" * 200
    spec["input_shape"] = [1] * 8 + [4]
    net = Network.from_spec(spec)
    assert net.layers[0].name == "n" * 200 and net.forward(np.zeros((2,) + (1,) * 8 + (4,))).shape[-1] == 3
