"""The export's graph rewrites change how ONNX Runtime computes, never what: each is checked
here on a small graph against the unrewritten one (the export's own check covers whole
ensembles, tests/ensembles/test_onnx_export.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ecgtune.components.blocks import HalveLength, ResUBlock, TemporalSelfAttention
from ecgtune.ensembles.ship.onnx_rewrites import (
    ORT_DOMAIN,
    PolyphaseTail,
    _drop_whole_axis_slices,
    attention_heads,
    for_export,
    polyphase_weight,
    rewrite_graph,
)


def _run(model, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_for_export_swaps_halve_length_for_the_pool_it_equals_on_a_copy():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(3, 4, 5, padding=2), HalveLength(),
                        nn.Sequential(nn.ReLU(), HalveLength()))
    ready = for_export(net)
    assert isinstance(net[1], HalveLength) and isinstance(net[2][1], HalveLength)  # untouched
    assert isinstance(ready[1], nn.AvgPool1d) and isinstance(ready[2][1], nn.AvgPool1d)
    for length in (64, 67):  # odd: both drop the trailing sample
        x = torch.randn(2, 3, length)
        with torch.no_grad():
            assert torch.equal(ready(x), net(x))



@pytest.mark.parametrize("kernel", [1, 3, 5, 9, 15])
def test_polyphase_weight_gives_the_even_and_odd_samples_of_the_transposed_conv(kernel):
    torch.manual_seed(kernel)
    up = nn.ConvTranspose1d(5, 3, kernel, stride=2, padding=kernel // 2, output_padding=1,
                            bias=False)
    x = torch.randn(2, 5, 23)
    weight, half = polyphase_weight(up.weight.detach(), kernel // 2)
    with torch.no_grad():
        y = up(x)
        phases = nn.functional.conv1d(x, weight, padding=half)
    assert y.shape[-1] == 2 * 23 and phases.shape[-1] == 23
    torch.testing.assert_close(phases[:, :3], y[..., 0::2], rtol=0, atol=1e-5)
    torch.testing.assert_close(phases[:, 3:], y[..., 1::2], rtol=0, atol=1e-5)


def _resu_block(depth: int) -> ResUBlock:
    """Random weights and BN statistics (fresh BN in eval mode is nearly the identity)."""
    torch.manual_seed(depth)
    block = ResUBlock(6, 8, 4, depth, 9)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return block.eval()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_polyphase_tail_computes_the_resu_block_at_even_and_odd_lengths(depth):
    block = _resu_block(depth)
    ready = for_export(nn.Sequential(block))
    assert isinstance(ready[0], PolyphaseTail) and isinstance(block, ResUBlock)  # on a copy
    assert not any(m.training for m in ready.modules())  # its new BatchNorm included
    assert not any(isinstance(m, nn.ConvTranspose1d) for m in ready[0].up.modules())
    for length in (64, 63, 50, 37):  # odd lengths: the crop and the pool's dropped sample
        x = torch.randn(3, 6, length)
        with torch.no_grad():
            expected = block(x)
            got = ready(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("kernel", "stride", "padding"), [(9, 3, 4), (4, 2, 2), (9, 2, 3)])
def test_polyphase_tail_refuses_a_stage_it_has_no_form_for(kernel, stride, padding):
    block = _resu_block(1)
    block.decoder[-1][0] = nn.ConvTranspose1d(8, 8, kernel, stride=stride, padding=padding,
                                              output_padding=1, bias=False)
    with pytest.raises(ValueError, match="no polyphase form"):
        PolyphaseTail(block)


def test_for_export_keeps_a_block_with_no_polyphase_form_as_it_is():
    block = _resu_block(1)  # kernel 9 with padding 3: 2 samples too many, cropped
    block.decoder[-1][0] = nn.ConvTranspose1d(8, 8, 9, stride=2, padding=3, output_padding=1,
                                              bias=False)
    ready = for_export(nn.Sequential(block))
    assert isinstance(ready[0], ResUBlock)
    x = torch.randn(2, 6, 64)
    with torch.no_grad():
        torch.testing.assert_close(ready(x), block(x), rtol=0, atol=1e-6)


def test_exported_resu_block_runs_its_tail_as_an_ordinary_convolution():
    """What the form is for: one transposed convolution fewer per block in the graph."""
    import onnx

    block = nn.Sequential(_resu_block(2))
    x = torch.randn(2, 6, 64)
    counts = {}
    for name, module in (("plain", block), ("polyphase", for_export(block))):
        program = torch.onnx.export(module, (x,), dynamo=True, input_names=["x"],
                                    verbose=False)
        model = program.model_proto
        counts[name] = sum(n.op_type == "ConvTranspose" for n in model.graph.node)
        if name == "polyphase":
            rewrite_graph(model)
            onnx.checker.check_model(model, full_check=True)
            with torch.no_grad():
                np.testing.assert_allclose(_run(model, x.numpy())[0], block(x).numpy(),
                                           rtol=0, atol=1e-5)
    assert counts == {"plain": 2, "polyphase": 1}

def _slices_graph():
    """y = Slice(x, 0, 8, axis 2) (the whole axis) + 1; z = Slice(x, 0, 6, axis 2)."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name, value):
        return numpy_helper.from_array(np.array([value], np.int64), name)

    nodes = [helper.make_node("Slice", ["x", "zero", "eight", "two"], ["whole"]),
             helper.make_node("Add", ["whole", "one"], ["y"]),
             helper.make_node("Slice", ["x", "zero", "six", "two"], ["z"])]
    graph = helper.make_graph(
        nodes, "slices",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 4, 6])],
        [const("zero", 0), const("eight", 8), const("six", 6), const("two", 2),
         numpy_helper.from_array(np.ones(1, np.float32), "one")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_slice_keeping_the_whole_axis_is_dropped_and_the_rest_stay():
    import onnx

    model = _slices_graph()
    x = np.random.default_rng(0).standard_normal((3, 4, 8)).astype(np.float32)
    before = _run(model, x)
    assert _drop_whole_axis_slices(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Add", "Slice"]
    assert model.graph.node[0].input[0] == "x"
    assert "eight" not in {i.name for i in model.graph.initializer}  # unused, removed
    onnx.checker.check_model(model, full_check=True)
    for got, want in zip(_run(model, x), before, strict=True):
        assert np.array_equal(got, want)


def test_convolutions_run_2d_with_the_same_sums_and_the_graph_passes_a_strict_check():
    import onnx

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(3, 8, 5, padding=2), nn.LeakyReLU(),
                        nn.ConvTranspose1d(8, 4, 5, stride=2, padding=2, output_padding=1))
    x = torch.randn(2, 3, 32)
    program = torch.onnx.export(net.eval(), (x,), dynamo=True, input_names=["x"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    model = program.model_proto
    counts = rewrite_graph(model)
    assert counts["convolutions to 2-D"] == 2
    onnx.checker.check_model(model, full_check=True)  # no stale 3-D shapes recorded
    (got,) = _run(model, x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x).numpy(), rtol=0, atol=1e-5)


class _Chain(nn.Module):
    """Convolutions with what sits between them in the components: activations, a
    normalisation, a residual add, a skip concatenation, a pool, a scale."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Sequential(nn.Conv1d(3, 8, 5, padding=2), nn.BatchNorm1d(8),
                                     nn.LeakyReLU(0.1))
        self.down = nn.Conv1d(8, 8, 5, stride=2, padding=2)
        self.up = nn.ConvTranspose1d(8, 8, 5, stride=2, padding=2, output_padding=1)
        self.norm = nn.BatchNorm1d(16)
        self.out = nn.Conv1d(16, 4, 1)
        self.pool = nn.AvgPool1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv_in(x)
        b = self.up(torch.relu(self.down(a)))
        y = torch.relu(self.norm(torch.cat([a + b, b], dim=1)))
        return self.pool(torch.sigmoid(self.out(y)) * 0.5)


def test_operations_between_convolutions_run_on_the_2d_tensors_with_the_same_result():
    import onnx

    torch.manual_seed(0)
    net = _Chain().eval()
    for bn in (net.conv_in[1], net.norm):  # non-trivial running statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 32)
    program = torch.onnx.export(net, (x,), dynamo=True, input_names=["x"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    model = program.model_proto
    counts = rewrite_graph(model)
    assert counts["operations kept 2-D between convolutions"] >= 6, counts
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    # One Unsqueeze at the input, one Squeeze at the output: nothing goes back to 3-D between.
    assert ops.count("Unsqueeze") == 1 and ops.count("Squeeze") == 1, ops
    (got,) = _run(model, np.random.default_rng(1).standard_normal((5, 3, 32)).astype(np.float32))
    with torch.no_grad():
        want = net(torch.from_numpy(np.random.default_rng(1).standard_normal((5, 3, 32))
                                    .astype(np.float32))).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def _export(net: nn.Module, x: torch.Tensor):
    program = torch.onnx.export(net.eval(), (x,), dynamo=True, input_names=["x"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    return program.model_proto


def test_attention_runs_as_ort_fused_multi_head_attention_with_the_same_result():
    import onnx

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(3, 8, 5, padding=2),
                        nn.Sequential(TemporalSelfAttention(8, 2))).eval()
    assert attention_heads(net) == {"1.0": 2}
    x = torch.randn(3, 3, 40)
    with torch.no_grad():
        want = net(x).numpy()
    fused, standard = _export(net, x), _export(net, x)
    assert rewrite_graph(fused, attention_heads(net))["attentions fused"] == 1
    ops = [(n.domain, n.op_type) for n in fused.graph.node]
    assert (ORT_DOMAIN, "MultiHeadAttention") in ops
    names = [op for _, op in ops]
    assert "Softmax" not in names and names.count("MatMul") == 2  # the two projections only
    assert {o.domain for o in fused.opset_import} == {"", ORT_DOMAIN}
    onnx.checker.check_model(fused, full_check=True)
    (got,) = _run(fused, x.numpy())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # Without heads (--standard-ops) the graph keeps to the standard domain, same numbers.
    assert rewrite_graph(standard, None)["attentions fused"] == 0
    assert {n.domain for n in standard.graph.node} == {""}
    assert "Softmax" in {n.op_type for n in standard.graph.node}
    (got,) = _run(standard, x.numpy())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_an_attention_path_the_graph_does_not_name_is_left_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(3, 8, 5, padding=2), TemporalSelfAttention(8, 2)).eval()
    model = _export(net, torch.randn(2, 3, 16))
    assert rewrite_graph(model, {"elsewhere": 2})["attentions fused"] == 0
    assert "Softmax" in {n.op_type for n in model.graph.node}
