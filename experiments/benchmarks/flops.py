"""Model FLOPs of one training step with a frozen LLM (for MFU and for explaining step times).

Frozen decoder-only LLM, ``N`` = its non-embedding matmul parameters (per layer: q, k, v, o
projections and the gated FFN's three matrices), ``L`` layers of width ``H``, ``S`` tokens per
sequence (prefix + text), batch ``B``, ``n`` supervised positions per sequence, vocabulary ``V``:

- forward: ``2 N B S`` (matmuls) + ``4 L H S^2 B`` (QK^T and AV; causal masking not discounted, as
  PaLM's MFU counts it) + ``2 V H B n`` (the LM head runs on supervised positions only);
- backward with respect to the activations only (frozen weights get no gradient): the same again
  for the matmuls and the LM head (``dX = dY W^T``), twice the forward for attention (no weights:
  gradients for Q, K and V), i.e. ``2 N B S + 8 L H S^2 B + 2 V H B n``.

Total: ``4 N B S + 12 L H S^2 B + 4 V H B n``. The trainable connector's FLOPs (forward + full
backward, about ``6 N_c`` per token it processes) are counted exactly with
:class:`torch.utils.flop_counter.FlopCounterMode` on its own forward and backward
(:func:`counted_flops`), since the tokens each of its layers sees differ (e.g. a QPMapper's input
Linear sees every visual token, its output Linear only the queries).
"""

from __future__ import annotations

from typing import Any, Callable

# Dense bf16 tensor-core peaks (TFLOPS, no sparsity) from the vendors' data sheets.
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0,
    "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "A10G": 70.0, "A10": 125.0, "L40S": 362.0,
    "L40": 181.0, "L4": 121.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0, "T4": 65.0,
}


def peak_tflops(device_name: str) -> float | None:
    """The bf16 peak of a GPU from its name (longest matching key), None when unknown."""
    name = device_name.upper().replace("NVIDIA", "").strip()
    matches = [key for key in PEAK_BF16_TFLOPS if key.upper() in name]
    if not matches:
        return None
    if "H100" in name and not any(k in name for k in ("NVL", "PCIE")):
        return PEAK_BF16_TFLOPS["H100 SXM"]  # "NVIDIA H100 80GB HBM3" is the SXM part
    return PEAK_BF16_TFLOPS[max(matches, key=len)]


def llm_dimensions(config: Any) -> dict[str, int]:
    """Width, depth, heads, FFN width and vocabulary of a Llama-family transformers config."""
    heads = config.num_attention_heads
    return {"hidden": config.hidden_size, "layers": config.num_hidden_layers, "heads": heads,
            "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
            "ffn": config.intermediate_size, "vocab": config.vocab_size}


def llm_matmul_parameters(hidden: int, layers: int, heads: int, kv_heads: int, ffn: int, **_: Any) -> int:
    """``N``: q, k, v, o and gate/up/down matrices of every layer (embeddings and norms excluded)."""
    head_dim = hidden // heads
    attention = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim
    return layers * (attention + 3 * hidden * ffn)


def frozen_llm_flops(dims: dict[str, int], batch: int, sequence: int, supervised: int) -> dict[str, float]:
    """FLOPs of forward + activation-only backward of a frozen LLM (module docstring)."""
    n = llm_matmul_parameters(**dims)
    hidden, layers, vocab = dims["hidden"], dims["layers"], dims["vocab"]
    tokens = batch * sequence
    matmuls = 4.0 * n * tokens
    attention = 12.0 * layers * hidden * sequence * tokens
    head = 4.0 * vocab * hidden * batch * supervised
    return {"matmul": matmuls, "attention": attention, "lm_head": head, "total": matmuls + attention + head,
            "parameters": float(n)}


def counted_flops(fn: Callable[[], Any]) -> float:
    """FLOPs that ``fn`` executes (matmuls, convolutions, attention kernels torch knows), counted
    by ``torch.utils.flop_counter`` — forward and backward when ``fn`` calls ``backward``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())
