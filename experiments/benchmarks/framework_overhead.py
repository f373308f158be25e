"""B2 — Lightning's training loop vs a hand-written PyTorch loop on the same module and batches.

Both arms train the same :class:`~perceptlm.training.InterfaceModule` (``depalm-qp-l0`` on
cached CLIP ViT-L/14-shaped features into SmolLM2-135M-Instruct, batch 8, 24 text tokens) over the
same pre-built batches with the same optimizer and schedule (the module's own
``configure_optimizers``: AdamW in two weight-decay groups + per-step LambdaLR) and the same
gradient clipping (norm 0.8). Lightning: ``Trainer.fit`` with ``max_steps`` steps, logger,
checkpointing, progress bar and model summary off (the module's own ``self.log`` calls stay: they
are part of its training step). Hand loop: loss, backward, clip, step, schedule, zero grads.

A step's time is the interval between consecutive batch starts (a Lightning callback records them;
the hand loop records its own), so the loop's per-step overhead (hooks, logging, data transfer)
is inside it and the one-off ``Trainer`` setup is not (reported apart as ``fit_seconds``). The
first ``--warmup`` intervals of every run are dropped. Runs alternate Lightning/hand, hand/
Lightning, ... The encoder is materialised with one block (Lightning moves the whole module; the
features come from the batches, so the block never runs). ``--scale tiny`` runs the test-size
backbones instead, where a step takes milliseconds and the loop's fixed cost per step shows.

    python experiments/benchmarks/framework_overhead.py
    python experiments/benchmarks/framework_overhead.py --scale tiny --steps 30 --warmup 5 --repeats 4
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from perceptlm.batch import Batch

import common
import workloads


def _hand_loop(module: Any, batches: list[Batch], clip: float) -> tuple[list[float], float]:
    """The plain PyTorch loop; returns batch start times and the total seconds."""
    from lightning.pytorch import Trainer

    module.trainer = Trainer(max_steps=len(batches), logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)  # read by configure_optimizers
    config = module.configure_optimizers()
    module.trainer = None
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    params = workloads.trainable(module)
    module.train()
    starts = []
    begin = time.perf_counter()
    for batch in batches:
        starts.append(time.perf_counter())
        loss = module.model.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    starts.append(time.perf_counter())
    return starts, starts[-1] - begin


def _lightning(module: Any, batches: list[Batch], clip: float) -> tuple[list[float], float]:
    """``Trainer.fit`` over ``batches``; returns batch start times (+ the end) and the fit seconds."""
    from lightning.pytorch import Callback, Trainer
    from torch.utils.data import DataLoader

    starts: list[float] = []

    class Clock(Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            starts.append(time.perf_counter())

        def on_train_end(self, *args: Any) -> None:
            starts.append(time.perf_counter())

    trainer = Trainer(max_steps=len(batches), logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, gradient_clip_val=clip, accelerator="cpu", devices=1,
                      num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Clock()])
    loader = DataLoader(batches, batch_size=None, shuffle=False, collate_fn=lambda item: item)
    begin = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return starts, time.perf_counter() - begin


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.parser(__doc__.split("\n\n")[0], repeats=2)
    parser.add_argument("--steps", type=int, default=5, help="steps per run (the first --warmup are dropped)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-length", type=int, default=24)
    parser.add_argument("--preset", default="depalm-qp-l0")
    parser.add_argument("--scale", choices=["real", "tiny"], default="real",
                        help="tiny: test-size backbones, so the loop's fixed per-step cost is visible")
    args = parser.parse_args(argv)
    common.configure(args)
    if args.smoke:
        args.steps = min(args.steps, args.warmup + 2)

    from lightning.pytorch import seed_everything

    from perceptlm import build

    info = common.machine()
    seed_everything(args.seed, verbose=False)
    tiny = args.smoke or args.scale == "tiny"
    encoder = workloads.feature_encoder(tiny, materialise=True, layers=1)
    module = build(args.preset, encoder, workloads.load_llm(tiny))
    batches = [workloads.training_batch(module.model, args.batch_size, args.text_length, seed=args.seed + i)
               for i in range(args.steps)]
    clip = 0.8
    arms = {"lightning": _lightning, "hand": _hand_loop}
    steps: dict[str, list[float]] = {name: [] for name in arms}
    totals: dict[str, list[float]] = {name: [] for name in arms}
    for repeat in range(args.repeats):
        for name in list(arms) if repeat % 2 == 0 else list(arms)[::-1]:
            starts, total = arms[name](module, batches, clip)
            intervals = [b - a for a, b in zip(starts, starts[1:])][args.warmup:]
            steps[name] += intervals
            totals[name].append(total)
            print(f"  repeat {repeat} {name}: steps {[round(s, 3) for s in intervals]} total {total:.2f} s",
                  file=sys.stderr, flush=True)
    medians = {name: common.median(values) for name, values in steps.items()}
    ratio = medians["lightning"] / medians["hand"]
    result = {
        "benchmark": "B2 framework overhead",
        "command": common.command(argv, "framework_overhead.py"),
        "machine": common.finish(info),
        "config": {"scale": "tiny" if tiny else "real", "preset": args.preset, "encoder": encoder.name, "llm": module.model.llm.name, "batch_size": args.batch_size,
                   "text_length": args.text_length, "steps_per_run": args.steps, "dropped_intervals": args.warmup,
                   "repeats": args.repeats, "gradient_clip": clip},
        "step_seconds": {name: [round(s, 5) for s in values] for name, values in steps.items()},
        "median_step_seconds": {name: round(m, 5) for name, m in medians.items()},
        "run_seconds": {"lightning_fit": [round(t, 3) for t in totals["lightning"]],
                        "hand_loop": [round(t, 3) for t in totals["hand"]]},
        "ratio_lightning_over_hand": round(ratio, 4),
        "overhead_ms_per_step": round(1000 * (medians["lightning"] - medians["hand"]), 2),
        "target": {"ratio": "<= 1.10", "met": ratio <= 1.10},
    }
    suffix = "_smoke" if args.smoke else ("_tiny" if tiny else "")
    common.write("framework_overhead" + suffix, result, args.output)
    print(f"lightning/hand = {ratio:.3f} (median step {medians['lightning']:.3f} s vs {medians['hand']:.3f} s)")
    return result


if __name__ == "__main__":
    main()
