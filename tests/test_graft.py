import numpy as np
import pytest

from jtransfer.graft import GraftError, graft

INIT = {
    "params": {
        "backbone": {"conv": {"kernel": np.zeros((3, 3, 3, 4), np.float32)}},
        "head": {
            "dense": {"kernel": np.zeros((4, 5), np.float32), "bias": np.zeros(5, np.float32)}
        },
    },
    "batch_stats": {"backbone": {"bn": {"mean": np.zeros(4, np.float32)}}},
}


def _loaded(**changes):
    tree = {
        "params": {
            "backbone": {"conv": {"kernel": np.ones((3, 3, 3, 4), np.float64)}},
            "head": {"dense": {"kernel": np.ones((4, 1000)), "bias": np.ones(1000)}},
        },
        "batch_stats": {"backbone": {"bn": {"mean": np.ones(4)}}},
    }
    tree.update(changes)
    return tree


def test_graft_loads_and_reinitialises_head():
    loaded = _loaded()
    loaded["params"]["head"]["old_fc"] = {"w": np.ones(3)}  # only in the checkpoint
    out, manifest = graft(INIT, loaded, dont_load=["head/.*"])
    assert out["params"]["backbone"]["conv"]["kernel"].dtype == np.float32
    np.testing.assert_array_equal(out["params"]["backbone"]["conv"]["kernel"], 1)
    np.testing.assert_array_equal(out["params"]["head"]["dense"]["kernel"], 0)
    assert out["params"]["head"]["dense"]["kernel"].shape == (4, 5)
    assert sorted(manifest["reinitialized"]) == [
        "params/head/dense/bias",
        "params/head/dense/kernel",
    ]
    assert "batch_stats/backbone/bn/mean" in manifest["loaded"]
    assert manifest["ignored"] == ["params/head/old_fc/w"]


def test_graft_names_every_bad_path():
    loaded = _loaded()
    del loaded["batch_stats"]["backbone"]["bn"]["mean"]
    loaded["params"]["backbone"]["extra"] = {"w": np.ones(2)}
    loaded["params"]["backbone"]["conv"]["kernel"] = np.ones((5, 5, 3, 4))
    with pytest.raises(GraftError) as e:
        graft(INIT, loaded)
    msg = str(e.value)
    for path in (
        "batch_stats/backbone/bn/mean",
        "params/backbone/extra/w",
        "params/backbone/conv/kernel: checkpoint (5, 5, 3, 4) vs model (3, 3, 3, 4)",
        "params/head/dense/kernel: checkpoint (4, 1000) vs model (4, 5)",
    ):
        assert path in msg


def test_dont_load_that_matches_nothing_is_an_error():
    with pytest.raises(GraftError, match="neck"):
        graft(INIT, _loaded(), dont_load=["head/.*", "neck/.*"])
