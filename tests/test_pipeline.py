import pytest

from edgempq.errors import ConfigError, DataError
from edgempq.layers import trace
from edgempq.pipeline import load_model_and_data, simulate, uniform_table
from edgempq.schema import Policy


def test_simulate_refuses_a_policy_made_for_another_model():
    model, ds = load_model_and_data("zoo:mnist_resnet8", "digits")
    policy = Policy.uniform(trace(model.module, model.input_shape), "w8a8", model_hash="0123456789abcdef")
    with pytest.raises(ConfigError, match="made for model 0123456789abcdef"):
        simulate(model, ds, policy)


def test_uniform_table_reports_sizes_that_shrink_with_bits():
    model, ds = load_model_and_data("zoo:mnist_resnet8", "digits")
    rows = {r.label: r for r in uniform_table(model, ds, ("w8a8", "w4a8"))}
    assert rows["float"].weight_bytes > rows["w8a8"].weight_bytes > rows["w4a8"].weight_bytes
    assert rows["w8a8"].bops == 2 * rows["w4a8"].bops
    assert all(0.0 <= r.top1 <= 1.0 for r in rows.values())


def test_labels_beyond_the_model_outputs_are_refused(tmp_path):
    import numpy as np

    x = np.zeros((30, 1, 28, 28), np.float32)
    np.savez(tmp_path / "many.npz", x=x, y=np.arange(30) % 15)
    with pytest.raises(DataError, match="label 14 but model zoo:mnist_resnet8 has only 10 outputs"):
        load_model_and_data("zoo:mnist_resnet8", str(tmp_path / "many.npz"))
