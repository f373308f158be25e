"""B5 — generation throughput: batched KV-cached greedy decoding vs batch-1 decoding without a cache.

Arm "cached_batch": ``InterfaceModule.generate`` on ``--batch-size`` left-padded prompts at once
(one prefill, then one cached step per token). Arm "uncached_single": the DePALM code's evaluation
setting — batch size 1, the KV cache off, the whole forward recomputed over prefix + prompt + the
tokens so far for every new token (the perceptual tokens are mapped once per sample). Both decode
greedily up to ``--max-new-tokens`` and stop a sequence at EOS; throughput counts the tokens each
produced (up to and including EOS). The uncached arm runs on the first ``--single-samples`` prompts
(throughput is a rate). The token sequences of the samples both arms decode are compared.

Workload: ``depalm-qp-l0`` on cached CLIP ViT-L/14-shaped features into SmolLM2-135M-Instruct, VQA
prompts ("{question}\\n\\nAnswer:\\n", DePALM's template).

    python experiments/benchmarks/decoding.py
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import common
import workloads

QUESTIONS = [
    "What is the man holding?", "How many people are in the picture?", "What color is the bus?",
    "Is there a dog in the image?", "What is on the table next to the window?", "Where is the cat sitting?",
    "What sport is being played?", "What time of day is it?",
]


def prompts(tokenizer: Any, count: int) -> tuple[Tensor, Tensor, list[list[int]]]:
    """Left-padded prompt ids and mask for ``count`` VQA prompts, and the unpadded id lists."""
    ids = [tokenizer(f"{QUESTIONS[i % len(QUESTIONS)]}\n\nAnswer:\n", add_special_tokens=False)["input_ids"]
           for i in range(count)]
    width = max(len(x) for x in ids)
    padded = torch.full((count, width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(count, width, dtype=torch.long)
    for row, seq in enumerate(ids):
        padded[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    return padded, mask, ids


def produced(tokens: Tensor, eos: int) -> list[list[int]]:
    """Each row's tokens up to and including its first EOS."""
    rows = []
    for row in tokens.tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


@torch.no_grad()
def uncached(module: Any, features: Any, ids: list[int], max_new_tokens: int) -> list[int]:
    """Batch-1 greedy decoding recomputing the full forward for every token (no KV cache)."""
    visual = module.perceive(features)
    prompt = torch.tensor([ids])
    embeds, mask, _ = module.splice(visual, prompt, torch.ones_like(prompt))
    eos, out = module.llm.eos_token_id, []
    with module.injection.context(visual):
        for _ in range(max_new_tokens):
            hidden, _ = module.llm.hidden(embeds, mask)
            token = int(module.llm.logits(hidden[:, -1]).argmax(-1))
            out.append(token)
            if token == eos:
                break
            embeds = torch.cat([embeds, module.llm.embed(torch.tensor([[token]])).to(embeds.dtype)], dim=1)
            mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.parser(__doc__.split("\n\n")[0], repeats=3)
    parser.add_argument("--preset", default="depalm-qp-l0")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--single-samples", type=int, default=2, help="prompts the uncached batch-1 arm decodes")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    args = parser.parse_args(argv)
    common.configure(args)

    from perceptlm.model import PerceptualLM

    info = common.machine()
    encoder = workloads.feature_encoder(args.smoke)
    module = PerceptualLM.build(args.preset, encoder, workloads.load_llm(args.smoke)).eval()
    features = workloads.random_features(module.encoder, args.batch_size, torch.Generator().manual_seed(args.seed))
    prompt_ids, prompt_mask, unpadded = prompts(module.tokenizer, args.batch_size)
    eos = module.llm.eos_token_id
    single = min(args.single_samples, args.batch_size)
    outputs: dict[str, list[list[int]]] = {}

    def cached_batch() -> None:
        tokens = module.generate(features, prompt_ids, prompt_mask, max_new_tokens=args.max_new_tokens, num_beams=1)
        outputs["cached_batch"] = produced(tokens, eos)

    def uncached_single() -> None:
        outputs["uncached_single"] = [
            uncached(module, features.__class__(features.tokens[i:i + 1], features.mask[i:i + 1], features.cls_index,
                                                features.grid), unpadded[i], args.max_new_tokens)
            for i in range(single)]

    timing = common.interleaved({"cached_batch": cached_batch, "uncached_single": uncached_single},
                                args.repeats, args.warmup)
    counts = {arm: sum(len(seq) for seq in outputs[arm]) for arm in outputs}
    rate = {arm: counts[arm] / timing[arm]["median"] for arm in counts}
    speedup = rate["cached_batch"] / rate["uncached_single"]
    same = sum(a == b for a, b in zip(outputs["cached_batch"][:single], outputs["uncached_single"]))
    result = {
        "benchmark": "B5 generation throughput",
        "command": common.command(argv, "decoding.py"),
        "machine": common.finish(info),
        "config": {"preset": args.preset, "encoder": encoder.name, "llm": module.llm.name,
                   "batch_size": args.batch_size, "single_samples": single, "max_new_tokens": args.max_new_tokens,
                   "prompt_tokens": [len(x) for x in unpadded], "prefix_tokens": module.num_input_tokens, "repeats": args.repeats, "decoding": "greedy"},
        "tokens": counts,
        "timing": timing,
        "tokens_per_second": {arm: round(r, 3) for arm, r in rate.items()},
        "speedup_cached_batch_over_uncached_single": round(speedup, 3),
        "identical_sequences": f"{same}/{single}",
        "target": {"speedup": ">= 5", "met": speedup >= 5},
    }
    common.write("decoding" + ("_smoke" if args.smoke else ""), result, args.output)
    print(f"tokens/s cached batch {rate['cached_batch']:.2f} vs uncached batch-1 {rate['uncached_single']:.2f}: "
          f"{speedup:.2f}x; identical sequences {same}/{single}")
    return result


if __name__ == "__main__":
    main()
