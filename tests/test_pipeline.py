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


def test_deploy_says_when_the_policy_was_scored_with_another_quantizer():
    from edgempq.export.stage import quantizer_mismatch
    from edgempq.quant import QuantConfig
    from edgempq.schema import Precision

    def policy(**q):
        return Policy({"conv": Precision.parse("w4a8")}, method="measured",
                      quantizer={"ptq": "gptq", "ptq_params": "", "bias_correction": True, "act_range": "minmax", **q})

    assert quantizer_mismatch(Policy({"conv": Precision.parse("w4a8")}), QuantConfig()) is None
    assert quantizer_mismatch(policy(), QuantConfig(weights="gptq", weight_params={"damp": 0.01})) is None
    note = quantizer_mismatch(policy(), QuantConfig(weights="adaround", bias_correction=False))
    assert note.startswith("the policy's penalties were measured by measured with ptq=gptq, bias_correction=True, "
                           "but this deploy quantizes with ptq=adaround, bias_correction=False;")
    note = quantizer_mismatch(policy(ptq_params="damp=0.1"), QuantConfig(weights="gptq"))
    assert "with damp=0.1, but this deploy quantizes with damp=0.01" in note


def test_the_reports_quantization_section_says_what_was_checked_and_labels_block_errors():
    from edgempq.report import ptq_blocks, ptq_summary

    d = deploy_result(quant_config={"act_method": "minmax"}, exact={"layers": 3, "checked": {}}, ptq={
         "weights": "adaround", "params": {"granularity": "block"}, "bias_correction": True, "seconds": 2.0,
         "sequential": True,
                 "notes": ["granularity=block found no block"],
                 "layers": {"a": {"rtn_error": 0.5, "error": 0.1, "block": "a,b"},
                            "b": {"rtn_error": 0.5, "error": 0.1, "block": "a,b"}, "c": {"rtn_error": 0.2}}},
         input_ranges={"a": {"from": "simulation", "scale_change": 2e-7},
                       "c": {"from": "artifact", "scale_change": 0.3}},
         quantizer_note="the policy's penalties were measured by measured with ptq=gptq")
    text = ptq_summary(d)
    assert "all 3 integer layers, checked bit for bit" in text
    assert "inputs of 1 integer layer(s) with the simulation's calibrated scale and zero point (up to float " \
           "rounding: largest relative scale difference 2.0e-07, zero points within 1" in text
    assert "The input ranges of c are the artifact's" in text
    assert text.endswith("Note: granularity=block found no block. Note: the policy's penalties were measured by "
                         "measured with ptq=gptq.")
    table = next(b for b in ptq_blocks(d) if b[0] == "table")
    assert table[2][0][:3] == ["a", "0.5", "0.1"] and table[2][1][:3] == ["b", "(the block's, above)",
                                                                          "(the block's, above)"]


def deploy_result(**fields):
    """A DeployResult with placeholder values where `fields` gives none (for the report's readers)."""
    from edgempq.schema.results import DeployResult

    io = {"name": "x", "shape": [1, 8, 8, 1], "dtype": "int8", "scale": 0.1, "zero_point": 0}
    base = {"model": "m", "model_hash": "h", "data": "d", "data_id": "i", "target": "host", "quant_config": {},
            "simulated_top1": 0.5, "tflite_bytes": 1, "input": io, "output": io,
            "weight_bytes": {"predicted": 1, "artifact": 1}, "policy": {"method": None, "budget": {}, "predicted": {}},
            "layers": []}
    return DeployResult.from_dict({**base, **fields})


def test_a_simulation_far_below_float_is_a_warning_in_the_report():
    """A user whose model expects normalised input got 9 % simulated against 94.9 % float, and
    deploy said nothing: now the report (and the CLI, on stderr) asks about the preprocessing."""
    from edgempq.report import render
    from edgempq.tasks import loss_warning

    assert loss_warning("classify", {"top1": 0.949}, {"top1": 0.09}).startswith(
        "the simulation loses 85.9 points of top-1 against the float")
    assert loss_warning("classify", {"top1": 0.949}, {"top1": 0.90}) is None
    assert loss_warning("classify", {}, {"top1": 0.1}) is None
    text = " ".join(b[1] for b in render(deploy_result(float_top1=0.949, simulated_top1=0.09), None).blocks
                    if b[0] == "p")
    assert "Warning: the simulation loses 85.9 points" in text and "preprocessed like the training data" in text
    quiet = render(deploy_result(float_top1=0.949, simulated_top1=0.94), None).blocks
    assert not any(b[0] == "p" and b[1].startswith("Warning") for b in quiet)
