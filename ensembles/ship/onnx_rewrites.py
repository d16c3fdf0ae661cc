"""Rewrites that serve ONNX Runtime's CPU kernels, each computing the same function (up to the
float rounding of other kernels; the export's check against the bundle verifies the whole
graph afterwards).

Before tracing, on a copy of the members (`for_export`):
- `HalveLength` (the mean of even and odd samples, cheap to train through) becomes the
  AvgPool1d(2) it equals: one pooling kernel instead of two strided copies, an add and a scale;
- each residual U-block's tail (last transposed convolution, BN, LeakyReLU, + x_in, halve
  the length, 1x1 projection) becomes `PolyphaseTail`: the even and odd output samples of the
  stride-2 transposed convolution are two channel groups of one ordinary convolution, and
  the halving that follows averages exactly those pairs, so the full-length tensor is never
  formed. ORT runs transposed convolutions outside its blocked layout (reordering around
  each); the tail then stays in it.

On the traced graph (`rewrite_graph`):
- ``Gather(x, arange(k))`` becomes ``Slice(x, 0, k)``, and a slice that keeps the whole axis
  is dropped: the components crop decoder outputs with index_select so that torch.export
  keeps lengths symbolic; at the export's static lengths most crops keep everything, and a
  kept slice is still a copy in ORT;
- 1-D (transposed) convolutions run as 2-D ones of height 1, on ORT's blocked kernels, and
  the activations, normalisations, adds, concatenations and pools between them run on the
  same height-1 tensors: ORT then fuses activations into convolutions and keeps its blocked
  layout across the chain instead of reordering around every convolution;
- each branch's temporal self-attention (the exporter's unfused MatMul, Softmax, MatMul with
  the reshapes around them) becomes ONNX Runtime's ``com.microsoft.MultiHeadAttention``,
  which never materialises the T x T scores (without `heads`, as ``ecgtune export
  --standard-ops`` asks, the graph keeps to standard ONNX operators for other runtimes);
- shapes recorded at tracing time for tensors whose rank changed are dropped (a strict ONNX
  checker re-infers them).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from ecgtune.components.blocks import HalveLength, ResUBlock, TemporalSelfAttention, _crop_to

__all__ = ["ORT_DOMAIN", "PolyphaseTail", "attention_heads", "for_export", "polyphase_weight",
           "rewrite_graph"]

ORT_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib operators

M = TypeVar("M", bound=nn.Module)


def for_export(module: M) -> M:
    """An eval-mode copy of `module` with `HalveLength` as AvgPool1d(2) and every `ResUBlock`
    that has one with a `PolyphaseTail`; `module` itself is left as it is (the export checks
    the graph against it)."""
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, HalveLength):
                setattr(parent, name, nn.AvgPool1d(2))
            elif isinstance(child, ResUBlock):
                try:
                    setattr(parent, name, PolyphaseTail(child))
                except ValueError:  # no exact polyphase form: the block stays as it is
                    continue
    return module.eval()  # after the swaps: the new BatchNorms too


def polyphase_weight(weight: Tensor, padding: int) -> tuple[Tensor, int]:
    """A stride-2 ConvTranspose1d's weight (in, out, K) -> the weight (2 * out, in, 2S + 1)
    and padding S of the stride-1 Conv1d whose channels [0, out) are its even output samples
    y[2t] and [out, 2 * out) its odd ones y[2t + 1], t = 0 .. input length - 1, for a
    transposed convolution with output_padding 1 and K = 2 * padding + 1 (the output then
    has exactly twice the input's length; others raise ValueError).

    y[2t + phase] = sum over s of x[t + s] W[phase + padding - 2s], for the s where that tap
    exists; as a correlation over x[t - S .. t + S] the other taps are zero."""
    n_in, n_out, k = weight.shape
    if k != 2 * padding + 1:
        raise ValueError(f"no polyphase form for kernel {k} with padding {padding}: the "
                         "output is not exactly twice the input's length")
    taps = {(phase, s): phase + padding - 2 * s
            for phase in (0, 1) for s in range(-k, k + 1) if 0 <= phase + padding - 2 * s < k}
    half = max(abs(s) for _, s in taps)
    out = weight.new_zeros(2 * n_out, n_in, 2 * half + 1)
    for (phase, s), tap in taps.items():
        out[phase * n_out:(phase + 1) * n_out, :, s + half] = weight[:, :, tap].T
    return out, half


class PolyphaseTail(nn.Module):
    """A `ResUBlock` computing the same function, for export: its last decoder stage and
    what follows, proj(pool(crop(stage(z)) + x_in)), as
    tail(crop'(act(bn(conv(z))))) + proj(AvgPool1d(2)(x_in)), where `conv` gives the
    stage's even and odd output samples as two channel groups (`polyphase_weight`, BN and
    activation per channel, repeated for both) and `tail` is the 1x1 conv 0.5 * [P | P]:
    the halving averages each (even, odd) pair and P is linear. crop' keeps
    floor(len(x_in) / 2) pairs: the crop to len(x_in) then the pool's dropped odd sample."""

    def __init__(self, block: ResUBlock) -> None:
        super().__init__()
        stage = block.decoder[-1]
        up, bn, act = list(stage.children())
        if not (isinstance(up, nn.ConvTranspose1d) and isinstance(bn, nn.BatchNorm1d)
                and (up.stride, up.output_padding, up.dilation, up.groups)
                == ((2,), (1,), (1,), 1)):
            raise ValueError(f"no polyphase form for {stage}")
        self.block = block  # conv_in .. the last stage's input (`ResUBlock.stages`)
        weight, half = polyphase_weight(up.weight.detach(), int(up.padding[0]))
        conv = nn.Conv1d(up.in_channels, 2 * up.out_channels, weight.shape[-1], padding=half,
                         bias=False)
        conv.weight.data.copy_(weight)
        bn2 = nn.BatchNorm1d(2 * bn.num_features, eps=bn.eps)
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn2, key).data.copy_(getattr(bn, key).detach().repeat(2))
        self.up = nn.Sequential(conv, bn2, copy.deepcopy(act))
        proj = block.proj.weight.detach()  # (width, width, 1)
        self.tail = nn.Conv1d(2 * proj.shape[1], proj.shape[0], 1, bias=False)
        self.tail.weight.data.copy_(0.5 * torch.cat([proj, proj], dim=1))
        self.pool = nn.AvgPool1d(2)

    def forward(self, x: Tensor) -> Tensor:
        x_in, last = self.block.stages(x)
        pairs = _crop_to(self.up(last), x_in.size(-1) // 2)
        return self.tail(pairs) + self.block.proj(self.pool(x_in))


def attention_heads(module: nn.Module) -> dict[str, int]:
    """Module path -> head count of every temporal self-attention in `module` (the paths
    name the attention's parameters in the exported graph)."""
    return {name: m.heads for name, m in module.named_modules()
            if isinstance(m, TemporalSelfAttention)}


def rewrite_graph(model: Any, heads: Mapping[str, int] | None = None) -> dict[str, int]:
    """Applies the graph rewrites in place; returns how many nodes each changed. `heads`
    (`attention_heads` of the exported module) fuses those attentions; None keeps the graph
    to standard ONNX operators."""
    counts = {"attentions fused": _fuse_attention(model, heads or {}),
              "gathers to slices": _gathers_to_slices(model),
              "whole-axis slices dropped": _drop_whole_axis_slices(model),
              "convolutions to 2-D": _convs_to_2d(model),
              "operations kept 2-D between convolutions": _lift_squeezes(model)}
    _drop_inferred_shapes(model)
    return counts


def _drop_unused_initializers(graph: Any) -> None:
    used = {name for n in graph.node for name in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _gathers_to_slices(model: Any) -> int:
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    count = 0
    for node in graph.node:
        if node.op_type != "Gather" or len(node.input) != 2 or node.input[1] not in inits:
            continue
        idx = numpy_helper.to_array(inits[node.input[1]])
        if idx.ndim != 1 or idx.size == 0 or not np.array_equal(idx, np.arange(idx.size)):
            continue
        axis = next((helper.get_attribute_value(a) for a in node.attribute
                     if a.name == "axis"), 0)
        names = [f"{node.output[0]}__slice_{k}" for k in ("starts", "ends", "axes")]
        for name, value in zip(names, (0, idx.size, axis), strict=True):
            graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), name))
        node.op_type = "Slice"
        del node.attribute[:]
        node.input[:] = [node.input[0], *names]
        count += 1
    _drop_unused_initializers(graph)
    return count


def _fuse_attention(model: Any, heads: Mapping[str, int]) -> int:
    """Replaces, for each attention module path P, the nodes between its packed projection
    (``Add(.., P.qkv.bias)``: q | k | v, each heads x head size) and the input of its output
    projection (``MatMul`` -> ``Add(.., P.out.bias)``) by a Split and ORT's fused
    ``MultiHeadAttention`` (same default scale, 1/sqrt(head size), as torch's
    scaled_dot_product_attention). A region read from outside, or reading anything but the
    projection and constants, is left alone."""
    from onnx import helper

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    constants = {i.name for i in graph.initializer}
    graph_outputs = {o.name for o in graph.output}

    def bias_add(name: str) -> Any:
        return next((n for n in readers.get(name, ()) if n.op_type == "Add"), None)

    replaced: dict[int, list[Any]] = {}  # id(the node computing the attention's output) -> new
    for path, n_heads in heads.items():
        qkv, out = bias_add(f"{path}.qkv.bias"), bias_add(f"{path}.out.bias")
        if qkv is None or out is None:
            continue
        matmul = next((producer[i] for i in out.input if i in producer), None)
        if matmul is None or matmul.op_type != "MatMul":
            continue
        start, end = qkv.output[0], matmul.input[0]
        region, stack, reached = {}, [end], False
        while stack:
            name = stack.pop()
            if name == start:
                reached = True
            elif name in producer and id(producer[name]) not in region:
                region[id(producer[name])] = producer[name]
                stack.extend(producer[name].input)
        inner = {o for n in region.values() for o in n.output}
        closed = all(i in inner or i in constants or i in ("", start)
                     for n in region.values() for i in n.input)
        private = all(o == end or (o not in graph_outputs
                                   and all(id(r) in region for r in readers.get(o, ())))
                      for o in inner)
        if not (reached and closed and private):
            continue
        q, k, v = (f"{end}__{part}" for part in "qkv")
        replaced[id(producer[end])] = [
            helper.make_node("Split", [start], [q, k, v], axis=-1, num_outputs=3),
            helper.make_node("MultiHeadAttention", [q, k, v], [end], domain=ORT_DOMAIN,
                             num_heads=int(n_heads), name=f"{path}.fused_attention")]
    if not replaced:
        return 0
    # The rest of each region is read by nothing now: `_live` drops it.
    nodes = [new for node in graph.node for new in replaced.get(id(node), [node])]
    del graph.node[:]
    graph.node.extend(_live(nodes, graph_outputs))
    if all(o.domain != ORT_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(ORT_DOMAIN, 1))
    _drop_unused_initializers(graph)
    return len(replaced)


def _static_dims(model: Any) -> dict[str, list[int | None]]:
    """Each tensor's dimensions as shape inference sees them (None where symbolic)."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    graph = inferred.graph
    return {v.name: [d.dim_value if d.HasField("dim_value") else None
                     for d in v.type.tensor_type.shape.dim]
            for v in [*graph.value_info, *graph.input, *graph.output]}


def _drop_whole_axis_slices(model: Any) -> int:
    """Drops ``Slice(x, 0, k, axis)`` (step 1) where x's static size on that axis is <= k:
    its output is x; its consumers read x instead."""
    from onnx import numpy_helper

    graph = model.graph
    if any(a.type in (a.GRAPH, a.GRAPHS) for n in graph.node for a in n.attribute):
        return 0  # a subgraph could read a dropped slice's output: left alone
    dims = _static_dims(model)
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}
    kept = []
    for node in graph.node:
        node.input[:] = [alias.get(name, name) for name in node.input]
        args = [inits.get(name) for name in node.input[1:]]
        shape = dims.get(node.input[0])
        if (node.op_type != "Slice" or len(args) < 3 or any(a is None for a in args)
                or shape is None or node.output[0] in outputs):
            kept.append(node)
            continue
        starts, ends, axes, *steps = (np.asarray(a).ravel() for a in args)
        whole = (len(axes) == 1 and starts[0] == 0 and (not steps or steps[0][0] == 1)
                 and shape[int(axes[0])] is not None and ends[0] >= shape[int(axes[0])])
        if whole:
            alias[node.output[0]] = node.input[0]
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unused_initializers(graph)
    return len(alias)


_AXIS2 = "__ecgtune_axis2"  # the height axis the 2-D rewrite adds
_CONV_2D = {"kernel_shape": lambda v: [1, *v], "strides": lambda v: [1, *v],
            "dilations": lambda v: [1, *v], "output_padding": lambda v: [0, *v],
            "pads": lambda v: [0, v[0], 0, v[1]]}


def _convs_to_2d(model: Any) -> int:
    """Run each 1-D (transposed) convolution as a 2-D one of height 1 (Unsqueeze, Conv with
    a (1, k) kernel, Squeeze): the same sums, but ONNX Runtime's blocked 2-D kernels; measured
    1.35x faster at batch 1 and 1.18x at batch 16 on `small` members (1 thread)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    axis = _AXIS2
    graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), axis))
    nodes, count = [], 0
    for node in graph.node:
        w = node.input[1] if len(node.input) > 1 else ""
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type not in ("Conv", "ConvTranspose") or w not in inits or uses[w] != 1
                or len(inits[w].dims) != 3 or "output_shape" in attrs
                or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[w])
        inits[w].CopyFrom(numpy_helper.from_array(weight[:, :, None, :].copy(), w))
        attrs = {k: _CONV_2D[k](v) if k in _CONV_2D else v for k, v in attrs.items()}
        x4, y4 = f"{node.output[0]}__in4d", f"{node.output[0]}__out4d"
        nodes += [helper.make_node("Unsqueeze", [node.input[0], axis], [x4]),
                  helper.make_node(node.op_type, [x4, *node.input[1:]], [y4], name=node.name,
                                   **attrs),
                  helper.make_node("Squeeze", [y4, axis], [node.output[0]])]
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


_UNARY = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Identity"}
_BINARY = {"Add", "Sub", "Mul", "Div"}
_POOL_2D = {"kernel_shape": _CONV_2D["kernel_shape"], "strides": _CONV_2D["strides"],
            "dilations": _CONV_2D["dilations"], "pads": _CONV_2D["pads"]}


def _lift_squeezes(model: Any) -> int:
    """After `_convs_to_2d`: runs the operations between height-1 convolutions on the 4-D
    tensors themselves (an activation of ``Squeeze(y)`` is ``Squeeze`` of the activation of
    ``y``), and drops ``Unsqueeze(Squeeze(y))`` pairs. Returns how many operations moved."""
    from onnx import helper

    graph = model.graph
    scalars = {i.name for i in graph.initializer if int(np.prod(i.dims)) == 1}
    four: dict[str, str] = {}  # a 3-D tensor -> the 4-D (height-1) tensor it squeezes
    alias: dict[str, str] = {}  # a dropped Unsqueeze's output -> the 4-D tensor it equals
    nodes, moved = [], 0
    for node in graph.node:
        node.input[:] = [alias.get(name, name) for name in node.input]
        op, ins = node.op_type, list(node.input)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if op == "Squeeze" and ins[1:] == [_AXIS2]:
            four[node.output[0]] = ins[0]
            nodes.append(node)
            continue
        if op == "Unsqueeze" and ins[1:] == [_AXIS2] and ins[0] in four:
            alias[node.output[0]] = four[ins[0]]
            continue
        lifted: dict[str, Any] | None = None
        if op in _UNARY and ins[0] in four:
            lifted = attrs
        elif (op in _BINARY and all(i in four or i in scalars for i in ins)
              and any(i in four for i in ins)):
            lifted = attrs
        elif (op == "BatchNormalization" and ins[0] in four
              and not attrs.get("training_mode", 0)):
            lifted = attrs
        elif op == "Concat" and all(i in four for i in ins):
            axis = int(attrs["axis"]) % 3
            lifted = {**attrs, "axis": axis if axis < 2 else 3}
        elif (op in ("AveragePool", "MaxPool") and ins[0] in four and len(node.output) == 1
              and len(attrs.get("kernel_shape", ())) == 1
              and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")):
            lifted = {k: _POOL_2D[k](v) if k in _POOL_2D else v for k, v in attrs.items()}
        if lifted is None:
            nodes.append(node)
            continue
        out4 = f"{node.output[0]}__4d"
        nodes += [helper.make_node(op, [four.get(i, i) for i in ins], [out4], name=node.name,
                                   **lifted),
                  helper.make_node("Squeeze", [out4, _AXIS2], [node.output[0]])]
        four[node.output[0]] = out4
        moved += 1
    del graph.node[:]
    graph.node.extend(_live(nodes, {o.name for o in graph.output}))
    _drop_unused_initializers(graph)
    return moved


def _live(nodes: list[Any], outputs: set[str]) -> list[Any]:
    """The nodes (in order) whose outputs something still reads."""
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    return kept[::-1]


def _drop_inferred_shapes(model: Any) -> None:
    """Keeps the exporter's recorded shapes only for tensors the rewritten graph still has and
    a rewrite did not reshape (the 2-D weights): a strict checker (``full_check``) compares
    them with what it infers."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    names = {name for n in graph.node for name in (*n.input, *n.output)}
    kept = [v for v in graph.value_info if v.name in names and v.name not in inits]
    del graph.value_info[:]
    graph.value_info.extend(kept)
