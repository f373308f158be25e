"""B7 — GPU training step of a preset on a 7B-class frozen LLM: step time, tokens/s and model FLOPs
utilisation (MFU).

The LLM is a random-init Llama of LLaMA-7B's shape (width 4096, 32 layers, 32 heads, FFN 11008,
vocabulary 32000) in bf16, built on the device from its config (nothing downloaded). The encoder is
CLIP ViT-L/14-shaped and never runs: features ``[B, 1, 257, 1024]`` come as from the cache. The
trainable parts (connector, prompt tokens) stay float32 and run under bf16 autocast (DePALM trains
with autocast too); a step is loss, backward, gradient clipping (0.8) and AdamW, as in
``InterfaceModule``'s Lightning step.

FLOPs per step (``flops.py``): frozen LLM ``4 N B S + 12 L H S^2 B + 4 V H B n`` (forward, and
backward with respect to activations only) + the connector's forward and full backward counted by
``torch.utils.flop_counter``; MFU = FLOPs / step time / the chip's dense bf16 peak
(``flops.PEAK_BF16_TFLOPS``: H100 SXM and H200 989 TFLOPS, A100 312, ...). ``flops_counted_step``
is the whole step counted by the flop counter, as a cross-check (on CPU some attention kernels are
not counted). ``--tiny`` swaps in a 64-wide, 2-layer Llama and a 64-wide feature geometry so the
script runs on a CPU (no MFU: no peak is known).

``--compile`` compiles each LLM decoder layer (``LanguageModel.compile_layers``) after the eager
step that the flop counter counts. ``--compare PRESET`` times a second preset on the same LLM,
alternating with the first (B1's LiMBeR-all / QP,L0 ratio at 7B scale).

    python experiments/benchmarks/gpu.py                     # one GPU
    python experiments/benchmarks/gpu.py --compile --compare limber-all --batch-size 32
    python experiments/benchmarks/gpu.py --tiny --steps 2    # CPU check
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch

import common
import flops
import workloads

LLAMA_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                intermediate_size=11008, vocab_size=32000, max_position_embeddings=2048)
LLAMA_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                  intermediate_size=128, max_position_embeddings=512)


def build_llm(tiny: bool, device: torch.device, dtype: torch.dtype) -> Any:
    """A random-init frozen Llama (LLaMA-7B shape, or tiny) as a perceptlm ``LanguageModel``."""
    import transformers

    from perceptlm import zoo
    from perceptlm.llm.language_model import LanguageModel

    tokenizer = zoo.tiny_tokenizer()  # ids only: pad/EOS; the text is random ids below the vocabulary
    shape = dict(LLAMA_TINY, vocab_size=len(tokenizer)) if tiny else dict(LLAMA_7B)
    config = transformers.LlamaConfig(**shape, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                      bos_token_id=tokenizer.eos_token_id)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return LanguageModel(model.eval(), tokenizer, name="llama-tiny-random" if tiny else "llama-7b-shape-random")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.parser(__doc__.split("\n\n")[0], repeats=10)
    parser.add_argument("--tiny", action="store_true", help="tiny LLM and features (runs on a CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (alias of --repeats)")
    parser.add_argument("--preset", default="depalm-qp-l0")
    parser.add_argument("--compare", default=None, help="a second preset timed alternately on the same LLM "
                        "(e.g. limber-all: B1's ratio at 7B scale)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--text-length", type=int, default=24)
    parser.add_argument("--answer-length", type=int, default=8)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="frozen LLM weights and autocast")
    parser.add_argument("--profile", action="store_true", help="record the top operators of one step")
    parser.add_argument("--compile", action="store_true", help="torch.compile each LLM decoder layer (regional)")
    args = parser.parse_args(argv)
    steps = args.steps
    common.configure(args)
    args.tiny = args.tiny or args.smoke
    args.repeats = steps if steps is not None else args.repeats
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and not args.tiny:
        raise SystemExit("gpu.py: no GPU here (device cpu); a 7B-class step needs one. Use --tiny to check the "
                         "script on a CPU, or --device cuda on a GPU machine")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    from perceptlm.model import PerceptualLM

    info = common.machine(device)
    sync = common.synchronizer(device)
    llm = build_llm(args.tiny, device, dtype)
    encoder = workloads.feature_encoder(smoke=args.tiny)  # meta: never runs, never moves
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext)

    def prepare(name: str) -> tuple[Any, Any, int]:
        """A preset on the shared LLM, its training step and its connector's counted FLOPs."""
        torch.manual_seed(args.seed)
        module = PerceptualLM.build(name, encoder, llm).train()
        for child_name, child in module.named_children():
            if child_name != "encoder":
                child.to(device)
        batch = workloads.training_batch(module, args.batch_size, args.text_length, args.answer_length, args.seed,
                                         device=device)
        optimizer = workloads.optimizer(module)
        params = workloads.trainable(module)

        def step() -> None:
            with autocast:
                loss = module.loss(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 0.8)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def connector_pass() -> None:
            with autocast:
                out = module.connector(batch.media)
            out.float().pow(2).mean().backward()

        connector_flops = flops.counted_flops(connector_pass)
        module.zero_grad(set_to_none=True)
        return module, step, connector_flops

    module, step, connector_flops = prepare(args.preset)
    arms = {args.preset: step}
    if args.compare:
        other, other_step, other_connector_flops = prepare(args.compare)
        arms[args.compare] = other_step
    counted = flops.counted_flops(step)  # eager, also the first warm-up step
    if args.compare:
        flops.counted_flops(other_step)  # its first warm-up step too
    if args.compile:  # after counting: compiled kernels bypass the flop counter; compiles in the next warm-up steps
        llm.compile_layers()
    for _ in range(max(2 if args.compile else 0, args.warmup - 1)):  # two: a second shape recompiles once
        for arm in arms.values():
            arm()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timing = common.interleaved(arms, args.repeats, warmup=0, sync=sync)
    profile = common.top_ops(step, sync=sync) if args.profile else []
    seconds = timing[args.preset]["median"]
    prefix = module.num_input_tokens
    sequence = prefix + args.text_length
    dims = flops.llm_dimensions(llm.config)
    llm_flops = flops.frozen_llm_flops(dims, args.batch_size, sequence, args.answer_length)
    total = llm_flops["total"] + connector_flops
    peak = flops.peak_tflops(info.get("gpu", "")) if device.type == "cuda" else None
    achieved = total / seconds / 1e12
    mfu = achieved / peak if peak else None
    result = {
        "benchmark": "B7 GPU step and MFU",
        "command": common.command(argv, "gpu.py"),
        "machine": common.finish(info),
        "config": {"preset": args.preset, "llm": llm.name, "llm_shape": dims, "dtype": args.dtype,
                   "encoder": encoder.name, "features": [encoder.num_raw_tokens, encoder.embed_dim],
                   "batch_size": args.batch_size, "text_length": args.text_length, "answer_length": args.answer_length,
                   "llm_sequence": sequence, "compiled_layers": args.compile, "timed_steps": args.repeats, "warmup_steps": max(1, args.warmup)},
        "step_seconds": timing[args.preset]["seconds"],
        "median_step_seconds": seconds,
        "tokens_per_second": round(args.batch_size * sequence / seconds, 2),
        "samples_per_second": round(args.batch_size / seconds, 3),
        "flops_per_step": {"llm": llm_flops, "connector_counted": connector_flops, "total": total},
        "flops_counted_step": counted,
        "achieved_tflops": round(achieved, 4),
        "peak_bf16_tflops": peak,
        "mfu": None if mfu is None else round(mfu, 4),
        "max_memory_allocated_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "target": {"mfu": ">= 0.40", "met": None if mfu is None else mfu >= 0.40},
        "top_ops": profile,
    }
    if args.compare:
        sequence_other = other.preset.prompt_tokens + (other.num_visual_tokens if other.preset.injection == "prefix" else 0)
        sequence_other += args.text_length
        other_flops = flops.frozen_llm_flops(dims, args.batch_size, sequence_other, args.answer_length)["total"]
        other_flops += other_connector_flops
        result["comparison"] = {  # measured alternately with the reference in this run (B1 at 7B scale)
            "preset": args.compare, "llm_sequence": sequence_other, "step_seconds": timing[args.compare]["seconds"],
            "median_step_seconds": timing[args.compare]["median"],
            "time_ratio_to_reference": float(f"{timing[args.compare]['median'] / seconds:.4g}"),  # 4 significant digits
            "flops_per_step": other_flops, "flops_ratio_to_reference": float(f"{other_flops / total:.4g}")}
    common.write("gpu" + ("_tiny" if args.tiny else ""), result, args.output)
    print(f"median step {seconds:.4f} s, {result['tokens_per_second']} tokens/s, {achieved:.3f} TFLOPS"
          + (f", MFU {mfu:.1%} of {peak} TFLOPS" if mfu is not None else " (no peak known for this device)"),
          file=sys.stderr)
    if args.compare:
        comparison = result["comparison"]
        print(f"{args.compare} / {args.preset}: {comparison['time_ratio_to_reference']}x time, "
              f"{comparison['flops_ratio_to_reference']}x FLOPs", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
