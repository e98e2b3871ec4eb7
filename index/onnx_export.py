"""Turn a local sentence-transformers model into an ONNX graph, once, from the weights on disk.

The graph takes token ids and returns the unit-length sentence vector (mean pooling and L2
normalisation are inside it), so serving needs only onnxruntime and the `tokenizers` tokenizer,
not PyTorch. The export runs at first start (a few seconds) into a cache folder keyed by the
weights, so a changed model is exported again and a model hub is never contacted.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
FORMAT = "3"  # bump when the graph's inputs, outputs or build steps change


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
    """The path of the exported (and, with `int8`, dynamically quantised) graph, building it if missing."""
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
    import torch
    from transformers import AutoModel

    class SentenceVector(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1)

    # Eager attention traces to plain ONNX ops; the SDPA path bakes shape checks into the trace.
    encoder = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    example = torch.ones(2, 8, dtype=torch.long)
    mask = torch.ones_like(example)
    mask[1, 5:] = 0  # a padded row, so no tracing shortcut for all-ones masks is baked in
    axes = {name: {0: "batch", 1: "tokens"} for name in INPUTS}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes, all about the dynamic axes declared here
        torch.onnx.export(SentenceVector(encoder), (example, mask, torch.zeros_like(example)),
                          str(out), input_names=list(INPUTS), output_names=["embedding"],
                          dynamic_axes={**axes, "embedding": {0: "batch"}}, opset_version=17, dynamo=False)


def _quantise(fp32: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel scales keep the vectors within cosine ~0.99 of fp32; one scale per tensor drifts to ~0.97.
    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True)
