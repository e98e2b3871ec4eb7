"""Write a local BERT sentence-transformers model as an ONNX graph, once, from the weights on disk.

The graph is built node by node with `onnx.helper` from the `model.safetensors` tensors (read with
`safetensors.numpy`), so neither the first start nor serving needs PyTorch: BERT's embeddings, its
encoder layers (post-norm attention and an erf GELU feed-forward, as `transformers`' BertModel
computes them), then mean pooling over the real tokens and L2 normalisation, as the model's
sentence-transformers modules do. It takes token ids and returns the unit-length sentence vector.
tests/index/test_embedder.py checks it against sentence-transformers on torch. The graph is written
into a cache folder keyed by the weights, so a changed model is built again and a model hub is never
contacted.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
FORMAT = "4"  # bump when the graph's inputs, outputs or build steps change
OPSET = 17  # LayerNormalization; onnxruntime 1.17 and later run it
IR_VERSION = 8  # the IR of opset 17, so an older onnxruntime loads what a newer onnx writes


def cache_dir() -> Path:
    """$CATCACHE_CACHE_DIR, else $XDG_CACHE_HOME/catcache, else ~/.cache/catcache."""
    if os.environ.get("CATCACHE_CACHE_DIR"):
        return Path(os.environ["CATCACHE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "catcache"


def weights_key(model_dir: Path) -> str:
    """Names, sizes and modification times of the model's files: cheap, and changes with the weights."""
    stats = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in model_dir.iterdir() if p.is_file())
    return hashlib.sha256(repr((FORMAT, str(model_dir.resolve()), stats)).encode()).hexdigest()[:16]


def onnx_model(model_dir: Path, int8: bool = False) -> Path:
    """The path of the built (and, with `int8`, dynamically quantised) graph, building it if missing."""
    folder = cache_dir() / "onnx" / f"{model_dir.name}-{weights_key(model_dir)}"
    fp32, quantised = folder / "model.onnx", folder / "model.int8.onnx"
    if not fp32.exists():
        _atomically(fp32, lambda tmp: _export(model_dir, tmp))
    if int8 and not quantised.exists():
        _atomically(quantised, lambda tmp: _quantise(fp32, tmp))
    return quantised if int8 else fp32


def _atomically(target: Path, build) -> None:
    """Build into a temporary file beside `target`, then rename: concurrent starts never read half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        build(Path(tmp))
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _export(model_dir: Path, out: Path) -> None:
    import onnx

    onnx.save(sentence_graph(model_dir), str(out))


def sentence_graph(model_dir: Path):
    """The ONNX model of `model_dir`'s BERT encoder, mean pooling and normalisation."""
    from onnx import TensorProto, helper
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "bert" or config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{model_dir}: catcache builds the ONNX graph of BERT encoders with GELU only "
                         f"(this one is {config.get('model_type')!r}, {config.get('hidden_act')!r})")
    pooling = model_dir / "1_Pooling" / "config.json"
    if pooling.exists() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens"):
        raise ValueError(f"{model_dir}: catcache pools by the mean of the tokens; this model pools otherwise")
    weights = {name.removeprefix("bert."): tensor for name, tensor in load_file(str(model_dir / "model.safetensors")).items()}
    graph = _Graph(weights)
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    eps = float(config.get("layer_norm_eps", 1e-12))

    # Embeddings: word + position (0..T-1) + token type, then LayerNorm.
    tokens = graph.node("Gather", [graph.node("Shape", ["input_ids"]), graph.const("index_1", np.array([1], np.int64))],
                        axis=0)
    positions = graph.node("Slice", [graph.weight("embeddings.position_embeddings.weight"),
                                     graph.const("zero", np.array([0], np.int64)), tokens,
                                     graph.const("axis_0", np.array([0], np.int64))])
    summed = graph.node("Add", [graph.node("Add", [graph.node("Gather", [graph.weight("embeddings.word_embeddings.weight"),
                                                                         "input_ids"]), positions]),
                                graph.node("Gather", [graph.weight("embeddings.token_type_embeddings.weight"),
                                                      "token_type_ids"])])
    x = graph.layer_norm(summed, "embeddings.LayerNorm", eps)

    # Padded keys get the most negative float added to their scores, as BertModel's eager attention does.
    mask = graph.node("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    inverted = graph.node("Sub", [graph.const("one", np.array(1.0, np.float32)), mask])
    bias = graph.node("Unsqueeze", [graph.node("Mul", [inverted, graph.const("lowest", np.array(np.finfo(np.float32).min,
                                                                                                 np.float32))]),
                                    graph.const("axes_1_2", np.array([1, 2], np.int64))])
    split = graph.const("split_heads", np.array([0, 0, heads, hidden // heads], np.int64))
    merge = graph.const("merge_heads", np.array([0, 0, hidden], np.int64))
    scale = graph.const("scale", np.array(1.0 / math.sqrt(hidden // heads), np.float32))
    for n in range(config["num_hidden_layers"]):
        prefix = f"encoder.layer.{n}."

        def heads_of(name: str, perm: list[int]) -> str:
            projected = graph.linear(x, f"{prefix}attention.self.{name}")
            return graph.node("Transpose", [graph.node("Reshape", [projected, split])], perm=perm)

        query, key, value = heads_of("query", [0, 2, 1, 3]), heads_of("key", [0, 2, 3, 1]), heads_of("value", [0, 2, 1, 3])
        scores = graph.node("Add", [graph.node("Mul", [graph.node("MatMul", [query, key]), scale]), bias])
        context = graph.node("MatMul", [graph.node("Softmax", [scores], axis=-1), value])
        context = graph.node("Reshape", [graph.node("Transpose", [context], perm=[0, 2, 1, 3]), merge])
        attended = graph.node("Add", [graph.linear(context, f"{prefix}attention.output.dense"), x])
        x = graph.layer_norm(attended, f"{prefix}attention.output.LayerNorm", eps)
        inner = graph.gelu(graph.linear(x, f"{prefix}intermediate.dense"))
        x = graph.layer_norm(graph.node("Add", [graph.linear(inner, f"{prefix}output.dense"), x]),
                             f"{prefix}output.LayerNorm", eps)

    # Mean over the real tokens, then unit length (sentence-transformers' Pooling and Normalize).
    weights_3d = graph.node("Unsqueeze", [mask, graph.const("axis_2", np.array([2], np.int64))])
    axis_1 = graph.const("axis_1", np.array([1], np.int64))
    total = graph.node("ReduceSum", [graph.node("Mul", [x, weights_3d]), axis_1], keepdims=0)
    count = graph.node("Max", [graph.node("ReduceSum", [weights_3d, axis_1], keepdims=0),
                               graph.const("tiny_count", np.array(1e-9, np.float32))])
    mean = graph.node("Div", [total, count])
    norm = graph.node("Max", [graph.node("ReduceL2", [mean], axes=[-1], keepdims=1),
                              graph.const("tiny_norm", np.array(1e-12, np.float32))])
    graph.nodes.append(helper.make_node("Div", [mean, norm], ["embedding"]))

    dims = ["batch", "tokens"]
    model = helper.make_model(
        helper.make_graph(graph.nodes, "sentence_embedding",
                          [helper.make_tensor_value_info(name, TensorProto.INT64, dims) for name in INPUTS],
                          [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
                          graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name="catcache")
    model.ir_version = IR_VERSION
    return model


class _Graph:
    """Nodes and initializers being collected; each `node` returns its single output's name."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights = weights
        self.nodes: list = []
        self.initializers: list = []
        self._names: set[str] = set()

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        if name not in self._names:
            self._names.add(name)
            self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, name: str, transpose: bool = False) -> str:
        value = self.weights[name]
        return self.const(name + (".T" if transpose else ""), np.ascontiguousarray(value.T) if transpose else value)

    def node(self, op: str, inputs: list[str], **attributes) -> str:
        from onnx import helper

        output = f"{op.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    def linear(self, x: str, name: str) -> str:
        """x @ W.T + b, as torch.nn.Linear with weights of shape (out, in)."""
        return self.node("Add", [self.node("MatMul", [x, self.weight(f"{name}.weight", transpose=True)]),
                                 self.weight(f"{name}.bias")])

    def layer_norm(self, x: str, name: str, eps: float) -> str:
        return self.node("LayerNormalization", [x, self.weight(f"{name}.weight"), self.weight(f"{name}.bias")],
                         axis=-1, epsilon=eps)

    def gelu(self, x: str) -> str:
        """The exact GELU, x * (1 + erf(x / sqrt 2)) / 2, which onnxruntime fuses into one kernel."""
        root2 = self.const("sqrt_2", np.array(math.sqrt(2.0), np.float32))
        half = self.const("half", np.array(0.5, np.float32))
        one = self.const("one", np.array(1.0, np.float32))
        erf = self.node("Erf", [self.node("Div", [x, root2])])
        return self.node("Mul", [self.node("Mul", [x, self.node("Add", [erf, one])]), half])


def _quantise(fp32: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel scales keep the vectors within cosine ~0.99 of fp32; one scale per tensor drifts to ~0.97.
    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True)
