"""B6b: the activation memory a training step keeps for its backward pass, with and without
activation checkpointing of the LLM's decoder layers (``llm_activation_checkpointing``), at
LLaMA-7B's layer shape and DePALM's batch of 16.

Measured, not estimated: every tensor autograd saves during the LLM's forward is counted
(``torch.autograd.graph.saved_tensors_hooks``) on a LLaMA-7B-shaped decoder (width 4096, MLP 11008,
32 heads) with ``--layers`` layers (default 2) and random weights, run on the positions each preset
gives the LLM (perceptual tokens + prompt tokens + ``--text`` text tokens); the input embeddings
require gradients, as the connector's tokens do. The per-layer count is scaled to LLaMA-7B's 32
layers; float tensors are counted at 2 bytes (bfloat16, the LLM's dtype on a GPU). The embedding
and the LM head (at supervised positions only) are outside the layers and not counted.

    python experiments/benchmarks/activation_memory.py --threads 2
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# preset -> perceptual tokens at the LLM input (CLIP ViT-L/14 224 px: 256 patches + CLS) and prompt tokens
POSITIONS = {"depalm-qp-l0": (32, 1), "limber-all": (257, 0)}
LLAMA_7B_LAYERS = 32


def decoder(layers: int, smoke: bool) -> Any:
    """A LLaMA-7B-shaped LanguageModel with ``layers`` decoder layers (random weights, float32)."""
    from transformers import AutoModelForCausalLM

    from perceptlm.llm.language_model import LanguageModel
    from perceptlm.zoo.geometry import llama_7b_config
    from perceptlm.zoo.tiny import tiny_tokenizer

    config = llama_7b_config()
    config.num_hidden_layers, config.vocab_size = layers, 256
    if smoke:
        config.hidden_size, config.intermediate_size, config.num_attention_heads, config.num_key_value_heads = 64, 128, 4, 4
    return LanguageModel(AutoModelForCausalLM.from_config(config, attn_implementation="sdpa"), tiny_tokenizer(),
                         name="llama-7b-shaped")


def kept_bytes(llm: Any, batch: int, positions: int) -> int:
    """Bytes autograd keeps from the LLM's forward, float tensors counted at 2 bytes; the weights it
    keeps references to (a linear layer saves its weight for the input's gradient) are not counted."""
    weights = {parameter.untyped_storage().data_ptr() for parameter in llm.parameters()}
    kept = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in weights:
            size = 2 if tensor.is_floating_point() else tensor.element_size()
            kept.append(tensor.numel() * size)
        return tensor

    embeds = torch.randn(batch, positions, llm.hidden_size, requires_grad=True)
    mask = torch.ones(batch, positions, dtype=torch.long)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        llm.hidden(embeds, mask)
    return sum(kept)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.parser(__doc__.split("\n\n")[0], repeats=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--text", type=int, default=24, help="text tokens per sample")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers built (the count is per layer)")
    args = parser.parse_args(argv)
    common.configure(args)
    info = common.machine()
    llm = decoder(args.layers, args.smoke)
    rows = {}
    for preset, (visual, prompts) in POSITIONS.items():
        positions = visual + prompts + args.text
        plain = kept_bytes(llm, args.batch_size, positions)
        rows[preset] = {"positions": positions, "plain_per_layer": plain / args.layers}
    llm.enable_activation_checkpointing()
    for preset, row in rows.items():
        checkpointed = kept_bytes(llm, args.batch_size, row["positions"])
        row["checkpointed_per_layer"] = checkpointed / args.layers
        row["plain_gib_32_layers"] = round(row["plain_per_layer"] * LLAMA_7B_LAYERS / 2**30, 2)
        row["checkpointed_gib_32_layers"] = round(row["checkpointed_per_layer"] * LLAMA_7B_LAYERS / 2**30, 2)
        row["ratio"] = round(row["plain_per_layer"] / row["checkpointed_per_layer"], 2)
        print(f"{preset}: {row['positions']} positions x batch {args.batch_size}: {row['plain_gib_32_layers']} GiB "
              f"kept by 32 layers, {row['checkpointed_gib_32_layers']} GiB with checkpointing ({row['ratio']}x)")
    result = {"benchmark": "B6b activation memory kept for backward, with and without activation checkpointing",
              "command": common.command(argv, "activation_memory.py"), "machine": common.finish(info),
              "config": {"llm": "LLaMA-7B layer shape (4096 / 11008 / 32 heads)" if not args.smoke else "tiny",
                         "layers_built": args.layers, "batch_size": args.batch_size, "text_tokens": args.text,
                         "float_bytes": 2, "scaled_to_layers": LLAMA_7B_LAYERS},
              "presets": rows}
    common.write("activation_memory", result, args.output)
    return result


if __name__ == "__main__":
    main()
