"""ONNX export of osml encoders, fast enough to run every round on a small device.

``torch.onnx.export`` (the dynamo exporter, torch 2.13) takes seconds per call for a GRU, and the
legacy TorchScript exporter is deprecated. Our encoders are three small, fixed graphs, so the
default path builds the ONNX graph directly from the weights with ``onnx.helper`` (milliseconds;
see ``scripts/bench_export.py``). ``exporter="dynamo"`` keeps torch's own exporter available as an
independent cross-check.

Either way the result must reproduce torch on real inputs: :func:`export_onnx` runs both on the
given windows and raises :class:`~osml.errors.ExportError` above ``tolerance`` (1e-4 max abs).
The file holds its weights inline (one file to copy), names its input ``windows`` and output
``embeddings``, and has a dynamic batch dimension.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from osml.agent.modelcard import ModelCard, sha256_hex
from osml.errors import ExportError
from osml.trainer.encoders import ConvEncoder, Encoder, GRUEncoder, MLPEncoder

__all__ = ["IR_VERSION", "OPSET", "build_onnx", "check_parity", "export_onnx"]

# Opset 17 / IR 8 load on every onnxruntime since 1.14, i.e. also on older Pi images.
OPSET = 17
IR_VERSION = 8
INPUT, OUTPUT = "windows", "embeddings"


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


class _Graph:
    """A tiny accumulator of nodes and initializers."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    # Any, as in onnx.helper.make_node: the attribute values (ints, lists of ints) go straight on.
    def op(self, op_type: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output


def _normalise(g: _Graph, enc: Encoder) -> str:
    centred = g.op("Sub", [INPUT, g.const("in_mean", _np(enc.in_mean))], "centred")
    return g.op("Div", [centred, g.const("in_std", _np(enc.in_std))], "normalised")


def _head(g: _Graph, enc: Encoder, x: str, head: torch.nn.Linear) -> str:
    # The context offset is folded into the head's bias: one Gemm, same arithmetic as torch's
    # Linear followed by the addition up to float rounding (checked by the parity test).
    bias = _np(head.bias) + _np(enc.offset)
    return g.op(
        "Gemm", [x, g.const("head_w", _np(head.weight)), g.const("head_b", bias)], OUTPUT, transB=1
    )


def _gru_graph(g: _Graph, enc: GRUEncoder) -> None:
    z = _normalise(g, enc)
    seq = g.op("Transpose", [z], "time_major", perm=[1, 0, 2])
    hidden = enc.gru.hidden_size
    # torch stacks gates as (reset, update, new); ONNX as (update, reset, hidden).
    order = np.r_[hidden : 2 * hidden, 0:hidden, 2 * hidden : 3 * hidden]
    # nn.GRU sets its per-layer weights as dynamic attributes; get_parameter gives them a type.
    param = enc.gru.get_parameter
    w = _np(param("weight_ih_l0"))[order][None]
    r = _np(param("weight_hh_l0"))[order][None]
    b = np.concatenate([_np(param("bias_ih_l0"))[order], _np(param("bias_hh_l0"))[order]])[None]
    g.nodes.append(
        helper.make_node(
            "GRU",
            [seq, g.const("gru_w", w), g.const("gru_r", r), g.const("gru_b", b)],
            ["", "gru_last"],
            name="gru",
            hidden_size=hidden,
            linear_before_reset=1,  # torch applies the reset gate after the recurrent matmul
        )
    )
    last = g.op(
        "Squeeze", ["gru_last", g.const("axis0", np.array([0], dtype=np.int64))], "last_hidden"
    )
    _head(g, enc, last, enc.head)


def _mlp_graph(g: _Graph, enc: MLPEncoder) -> None:
    flat = g.op("Flatten", [_normalise(g, enc)], "flat", axis=1)
    pre = g.op(
        "Gemm",
        [
            flat,
            g.const("hidden_w", _np(enc.hidden.weight)),
            g.const("hidden_b", _np(enc.hidden.bias)),
        ],
        "pre",
        transB=1,
    )
    _head(g, enc, g.op("Tanh", [pre], "act"), enc.head)


def _conv_graph(g: _Graph, enc: ConvEncoder) -> None:
    x = g.op("Transpose", [_normalise(g, enc)], "channels_first", perm=[0, 2, 1])
    for i, conv in enumerate((enc.conv1, enc.conv2), start=1):
        assert conv.bias is not None  # ConvEncoder builds its convolutions with a bias
        x = g.op(
            "Conv",
            [x, g.const(f"conv{i}_w", _np(conv.weight)), g.const(f"conv{i}_b", _np(conv.bias))],
            f"conv{i}",
            kernel_shape=[3],
            pads=[1, 1],
        )
        x = g.op("Relu", [x], f"relu{i}")
    mean = g.op("ReduceMean", [x], "time_mean", axes=[2], keepdims=0)
    last = g.op(
        "Gather", [x, g.const("last_idx", np.array(-1, dtype=np.int64))], "time_last", axis=2
    )
    _head(g, enc, g.op("Concat", [mean, last], "summary", axis=1), enc.head)


def build_onnx(enc: Encoder) -> bytes:
    """Serialise ``enc`` as a self-contained ONNX model without going through an exporter."""
    g = _Graph()
    if isinstance(enc, GRUEncoder):
        _gru_graph(g, enc)
    elif isinstance(enc, MLPEncoder):
        _mlp_graph(g, enc)
    elif isinstance(enc, ConvEncoder):
        _conv_graph(g, enc)
    else:
        raise ExportError(f"no ONNX builder for {type(enc).__name__}")
    graph = helper.make_graph(
        g.nodes,
        f"osml_{enc.architecture}",
        [
            helper.make_tensor_value_info(
                INPUT, TensorProto.FLOAT, ["batch", enc.window, enc.n_features]
            )
        ],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", enc.embedding_dim])],
        initializer=g.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="osml"
    )
    model.ir_version = IR_VERSION
    data: bytes = model.SerializeToString()
    return data


def _torch_export(enc: Encoder) -> bytes:
    """torch's dynamo exporter (seconds per call): the independent reference path."""
    example = torch.zeros(2, enc.window, enc.n_features)  # batch >= 2, or it is frozen to 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            enc,
            (example,),
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 20)},),
            verbose=False,
        )
    assert program is not None  # with dynamo=True, torch.onnx.export always returns the program
    buf = io.BytesIO()
    onnx.save_model(program.model_proto, buf)  # weights inline: no external .data file
    return buf.getvalue()


def check_parity(enc: Encoder, model: bytes, windows: np.ndarray, tolerance: float = 1e-4) -> float:
    """Max abs difference between onnxruntime and torch on ``windows``; raises above tolerance."""
    x = np.ascontiguousarray(windows, dtype=np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        got = sess.run([OUTPUT], {INPUT: x})[0]
    except Exception as exc:
        raise ExportError(
            f"onnxruntime cannot run the exported {enc.architecture} model: {exc}"
        ) from exc
    with torch.no_grad():
        want = enc.eval()(torch.from_numpy(x)).numpy()
    diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
    if not diff <= tolerance:
        raise ExportError(
            f"{enc.architecture} export differs from torch by {diff:.3g} (> {tolerance:g}) "
            f"on {len(x)} windows"
        )
    return diff


def export_onnx(
    enc: Encoder,
    windows: np.ndarray,
    version: int,
    *,
    agent: str = "",
    context: str = "",
    exporter: str = "builder",
    tolerance: float = 1e-4,
) -> tuple[bytes, ModelCard, float]:
    """Export ``enc`` and check parity on ``windows`` (real inputs, >= 2 of them).

    Returns the model bytes, its card and the measured max abs difference. Writing is the
    caller's job (:func:`osml.agent.modelcard.write_model` does it atomically).
    """
    if len(windows) < 2:
        raise ExportError("parity check needs at least 2 real windows")
    if exporter == "builder":
        model = build_onnx(enc)
    elif exporter == "dynamo":
        model = _torch_export(enc)
    else:
        raise ExportError(f"unknown exporter {exporter!r} (builder or dynamo)")
    diff = check_parity(enc, model, windows, tolerance)
    card = ModelCard(
        version=version,
        architecture=enc.architecture,
        window=enc.window,
        n_features=enc.n_features,
        embedding_dim=enc.embedding_dim,
        sha256=sha256_hex(model),
        agent=agent,
        context=context,
    )
    return model, card, diff
