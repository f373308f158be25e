"""B1 — training-step time per sample of every preset, relative to DePALM's QP,L0 (DePALM Table 1,
"train" column: few summary tokens train ~3.5x faster than all 257 tokens, LiMBeR-all).

Real geometry: cached CLIP ViT-L/14 features (257 x 1024, random values; the encoder never runs,
see ``workloads.py``) into SmolLM2-135M-Instruct (real weights), the presets' own mapper geometry
(QP: 32 queries, width 1024, 2 layers; ...), batch 8, 24 text tokens of which 8 are supervised.
A step is the loss, backward, gradient clipping (0.8) and AdamW.

One preset is resident at a time, next to the reference (``depalm-qp-l0``): the two alternate
(ref, P, P, ref, ref, P, ...) and the ratio P/ref is taken from that block's medians, so drift of
the machine's load between blocks cancels. The presets share one frozen LLM (hooks that earlier
presets installed stay inactive outside their own forward). FLOPs per sample are counted with
``torch.utils.flop_counter`` on the warm-up step; ``--profile`` records the top operators of the
reference and of LiMBeR-all; the 7B projection applies the analytic frozen-LLM formula of
``flops.py`` with LLaMA-7B dimensions plus each connector's counted FLOPs at width 4096.

    python experiments/benchmarks/token_count.py --profile
"""

from __future__ import annotations

import gc
import sys
from typing import Any

import torch

import common
import flops
import workloads

REFERENCE = "depalm-qp-l0"
LLAMA_7B = {"hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 32, "ffn": 11008, "vocab": 32000}


def projection_7b(module: Any, text_length: int, answer_length: int) -> dict[str, float] | None:
    """FLOPs per sample of this preset with a LLaMA-7B-sized frozen LLM (prefix injection only):
    the analytic LLM formula + the connector's counted FLOPs at output width 4096, with the token
    count the connector gives in training (R-rand keeps a random fraction: one draw)."""
    from perceptlm.connectors import build_connector

    if module.preset.injection != "prefix" or module.preset.llm_tuning != "frozen":
        return None
    connector = build_connector(module.encoder.embed_dim, LLAMA_7B["hidden"], module.preset.connector).train()
    features = workloads.random_features(module.encoder, 1)
    produced: list[int] = []

    def run() -> None:
        tokens = connector(features)
        produced.append(tokens.shape[1])  # training-time count (R-rand: one random draw)
        tokens.float().pow(2).mean().backward()

    connector_flops = flops.counted_flops(run)
    prefix = module.preset.prompt_tokens + produced[0]
    llm = flops.frozen_llm_flops(LLAMA_7B, 1, prefix + text_length, answer_length)
    return {"llm": llm["total"], "connector": connector_flops, "total": llm["total"] + connector_flops,
            "llm_sequence": prefix + text_length}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.parser(__doc__.split("\n\n")[0], repeats=3)
    parser.add_argument("--presets", default="all", help="comma-separated preset names, or 'all'")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-length", type=int, default=24)
    parser.add_argument("--answer-length", type=int, default=8)
    parser.add_argument("--profile", action="store_true", help="top operators of the reference and limber-all")
    args = parser.parse_args(argv)
    common.configure(args)

    from perceptlm.model import PerceptualLM
    from perceptlm import presets

    info = common.machine()
    names = presets.names() if args.presets == "all" else [n.strip() for n in args.presets.split(",")]
    names = [n for n in names if n != REFERENCE]
    encoder, llm = workloads.feature_encoder(args.smoke), workloads.load_llm(args.smoke)

    def build(name: str) -> tuple[Any, Any]:
        torch.manual_seed(args.seed)
        module = PerceptualLM.build(name, encoder, llm).train()
        batch = workloads.training_batch(module, args.batch_size, args.text_length, args.answer_length, args.seed)
        return module, workloads.step_fn(module, batch, workloads.optimizer(module))

    def describe(module: Any, step: Any) -> dict[str, Any]:
        flop_count = flops.counted_flops(step)  # also the warm-up step
        return {"visual_tokens": module.num_visual_tokens, "prompt_tokens": module.preset.prompt_tokens,
                "injection": module.preset.injection, "llm_tuning": module.preset.llm_tuning,
                "trainable_parameters": module.num_trainable_parameters,
                "flops_per_sample": flop_count / args.batch_size,
                "flops_7b_per_sample": projection_7b(module, args.text_length, args.answer_length)}

    reference, reference_step = build(REFERENCE)
    rows: dict[str, dict[str, Any]] = {REFERENCE: describe(reference, reference_step)}
    blocks: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    if args.profile:
        profiles[REFERENCE] = common.top_ops(reference_step)
    for name in names:
        print(f"{name} vs {REFERENCE}", file=sys.stderr, flush=True)
        module, step = build(name)
        rows[name] = describe(module, step)
        if args.profile and name == "limber-all":
            profiles[name] = common.top_ops(step)
        # the counted step above was the preset's first warm-up call
        timing = common.interleaved({REFERENCE: reference_step, name: step}, args.repeats, max(0, args.warmup - 1))
        ratio = timing[name]["median"] / timing[REFERENCE]["median"]
        rows[name].update(seconds_per_sample=timing[name]["median"] / args.batch_size, ratio_to_reference=round(ratio, 4),
                          reference_seconds_per_sample=timing[REFERENCE]["median"] / args.batch_size)
        blocks.append({"preset": name, "timing": timing})
        del module, step
        gc.collect()
    reference_times = [b["timing"][REFERENCE]["median"] for b in blocks]
    if reference_times:
        rows[REFERENCE].update(seconds_per_sample=common.median(reference_times) / args.batch_size, ratio_to_reference=1.0)
    reference_flops = rows[REFERENCE]["flops_per_sample"]
    reference_7b = (rows[REFERENCE]["flops_7b_per_sample"] or {}).get("total")
    for row in rows.values():
        row["flops_ratio_to_reference"] = round(row["flops_per_sample"] / reference_flops, 4)
        if row["flops_7b_per_sample"] and reference_7b:
            row["flops_7b_ratio_to_reference"] = round(row["flops_7b_per_sample"]["total"] / reference_7b, 4)
    headline = rows.get("limber-all", {}).get("ratio_to_reference")
    result = {
        "benchmark": "B1 token count",
        "command": common.command(argv, "token_count.py"),
        "machine": common.finish(info),
        "config": {"encoder": encoder.name, "features": [encoder.num_raw_tokens, encoder.embed_dim], "llm": llm.name,
                   "batch_size": args.batch_size, "text_length": args.text_length, "answer_length": args.answer_length,
                   "repeats": args.repeats, "warmup": args.warmup, "reference": REFERENCE},
        "target": {"limber_all_over_reference": ">= 3.5", "measured": headline,
                   "met": None if headline is None else headline >= 3.5},
        "presets": rows,
        "blocks": blocks,
        "top_ops": profiles,
    }
    common.write("token_count" + ("_smoke" if args.smoke else ""), result, args.output)
    for name, row in sorted(rows.items(), key=lambda item: item[1].get("ratio_to_reference") or 0):
        print(f"{name:<18} {row.get('ratio_to_reference', float('nan')):>7.3f}x time "
              f"{row['flops_ratio_to_reference']:>7.3f}x FLOPs  {row.get('flops_7b_ratio_to_reference', '-')} (7B FLOPs)")
    return result


if __name__ == "__main__":
    main()
