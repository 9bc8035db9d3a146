"""Weights and checkpoints as bytes: exact round trips, and nothing that needs pickle."""

from __future__ import annotations

import io

import numpy as np
import pytest

from core.nn.serialization import (
    array_from_bytes,
    array_to_bytes,
    arrays_from_npz,
    arrays_to_npz,
)

ARRAYS = {
    "weights:dense_0/kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
    "optimizer:m:dense_0/kernel": np.full((2, 3), -0.5),
    "scalar": np.array(3.25),
    "empty": np.zeros((0, 4), dtype=np.float32),
    "labels": np.array([0, 2, 1], dtype=np.int64),
    "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "file": np.ones(1),  # np.savez's own parameter names must still work as array names
    "allow_pickle": np.zeros(1),
    "x.npy": np.ones(2),
}


def test_npz_round_trip_is_exact():
    meta = {"epoch": 3, "rng": {"state": 2**127 + 5}, "best": None, "history": [{"loss": 0.1}]}
    arrays, back = arrays_from_npz(arrays_to_npz(ARRAYS, meta))
    assert back == meta
    assert arrays.keys() == ARRAYS.keys()
    for k, a in ARRAYS.items():
        assert arrays[k].dtype == a.dtype and arrays[k].shape == a.shape
        np.testing.assert_array_equal(arrays[k], a)


def test_npz_without_meta_and_deterministic_bytes():
    data = arrays_to_npz(ARRAYS)
    assert arrays_from_npz(data)[1] is None
    assert arrays_to_npz(ARRAYS) == data
    with np.load(io.BytesIO(data)) as npz:  # a plain .npz to NumPy
        np.testing.assert_array_equal(npz["scalar"], 3.25)


def test_meta_name_is_reserved():
    with pytest.raises(ValueError, match="reserved"):
        arrays_to_npz({"__meta__": np.ones(1)}, {"a": 1})


def test_single_array_round_trip():
    a = np.linspace(0, 1, 7, dtype=np.float32).reshape(7, 1)
    b = array_from_bytes(array_to_bytes(a))
    assert b.dtype == a.dtype
    np.testing.assert_array_equal(a, b)


def test_object_arrays_are_refused_both_ways():
    evil = np.array([{"a": 1}, None], dtype=object)
    with pytest.raises(ValueError):
        array_to_bytes(evil)
    with pytest.raises(ValueError):
        arrays_to_npz({"evil": evil})
    buf = io.BytesIO()
    np.savez(buf, evil=evil, allow_pickle=True)  # a crafted archive that needs pickle
    with pytest.raises(ValueError):
        arrays_from_npz(buf.getvalue())
    buf = io.BytesIO()
    np.save(buf, evil, allow_pickle=True)
    with pytest.raises(ValueError):
        array_from_bytes(buf.getvalue())


def test_a_lone_npy_is_not_an_npz():
    with pytest.raises(ValueError, match="npz"):
        arrays_from_npz(array_to_bytes(np.ones(3)))


def test_a_snapshot_gives_back_the_weights_as_they_were():
    """The worker keeps a snapshot after every epoch (what a cancelled job keeps): one copy of
    the flat vector and the buffers, named only when needed, nested layers included."""
    from core.nn import Network

    spec = {"input_shape": [4], "loss": "categorical_crossentropy", "layers": [
        {"type": "dense", "units": 8, "activation": "relu"}, {"type": "batch_norm"},
        {"type": "residual", "layers": [{"type": "dense", "units": 8, "activation": "relu"},
                                        {"type": "dense", "units": 8}]},
        {"type": "dense", "units": 3, "activation": "softmax"}]}
    net = Network.from_spec(spec, seed=3)
    before, snap = net.get_weights(), net.snapshot()
    net.flat_params += 1.0  # training goes on after the snapshot
    for buffer in net.buffers().values():
        buffer += 5.0
    after = net.weights_of(snap)
    assert list(after) == list(before)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)
