"""B3 — the ``llava-1.5`` preset vs transformers' ``LlavaForConditionalGeneration`` with the same weights.

Both models hold the same CLIP vision tower (a random-init ``CLIPVisionConfig``; 112 px, patch 14:
64 patches, width 256, 4 blocks by default), the same 2-layer GELU projector (ours: the connector's
MLP, copied into ``multi_modal_projector.linear_1/2``) and the same LLM (SmolLM2-135M-Instruct, real
weights, copied into ``language_model`` and ``lm_head``). LLaVA settings: ``vision_feature_layer=-2``,
``vision_feature_select_strategy="default"`` (patches, CLS dropped), i.e. our preset's selection.
Inputs: the ``<image>`` token expanded to the patch count at the start of the sequence (our L0
prefix), then the same text; labels only on the answer tokens (-100 on image and prompt positions).
Checks: logits over the text positions and the loss (label smoothing off in ours, as in LLaVA's
loss) agree. Training step: vision tower and LLM frozen in both, the projector trains with the
same AdamW; a step is forward with labels, backward, optimizer step. LLaVA computes the LM head on
every position; ours only on the supervised ones.

    python experiments/benchmarks/llava_peer.py
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from perceptlm.batch import Batch

import common
import workloads


def build(args: Any) -> tuple[Any, Any, int]:
    """Our module and the peer with identical weights; returns them and the patch count."""
    import transformers

    from perceptlm.model import PerceptualLM
    from perceptlm.encoders.hf_vision import HFVisionEncoder

    if args.smoke:
        geometry = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=128)
    else:
        geometry = dict(image_size=args.image_size, patch_size=args.patch_size, hidden_size=args.vision_width,
                        num_hidden_layers=args.vision_layers, num_attention_heads=max(1, args.vision_width // 64),
                        intermediate_size=4 * args.vision_width)
    torch.manual_seed(args.seed)
    vision = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**geometry)).eval()
    encoder = HFVisionEncoder(vision, name="clip-vision-random")
    llm = workloads.load_llm(args.smoke)
    ours = PerceptualLM.build("llava-1.5", encoder, llm, label_smoothing=0.0)
    patches = ours.num_visual_tokens
    vocab = llm.model.get_input_embeddings().num_embeddings
    config = transformers.LlavaConfig(
        vision_config=vision.config, text_config=llm.model.config, image_token_index=vocab - 1,
        image_seq_length=patches, projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default", multimodal_projector_bias=True,
    )
    peer = transformers.LlavaForConditionalGeneration(config)
    peer.model.vision_tower.load_state_dict(vision.state_dict())
    mlp = ours.connector.output  # Linear, GELU, Linear
    peer.model.multi_modal_projector.linear_1.load_state_dict(mlp[0].state_dict())
    peer.model.multi_modal_projector.linear_2.load_state_dict(mlp[2].state_dict())
    peer.model.language_model.load_state_dict(llm.model.base_model.state_dict())
    peer.lm_head.load_state_dict(llm.model.get_output_embeddings().state_dict())
    peer.requires_grad_(False)
    peer.model.multi_modal_projector.requires_grad_(True)
    return ours, peer, patches


def inputs(ours: Any, peer: Any, patches: int, args: Any) -> tuple[Batch, dict[str, Any]]:
    """The same sample in both formats."""
    generator = torch.Generator().manual_seed(args.seed)
    size = ours.encoder.image_size
    pixels = torch.randn(args.batch_size, 3, size, size, generator=generator)
    vocab = ours.llm.model.get_input_embeddings().num_embeddings
    text = workloads.text_batch(vocab, args.batch_size, args.text_length, args.answer_length, generator)
    ours_batch = dataclasses.replace(text, media=pixels)
    image = torch.full((args.batch_size, patches), peer.config.image_token_id, dtype=torch.long)
    peer_batch = {
        "input_ids": torch.cat([image, text.input_ids], dim=1),
        "attention_mask": torch.cat([torch.ones_like(image), text.attention_mask], dim=1),
        "labels": torch.cat([torch.full_like(image, -100), text.labels], dim=1),
        "pixel_values": pixels,
    }
    return ours_batch, peer_batch


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.parser(__doc__.split("\n\n")[0], repeats=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-length", type=int, default=24)
    parser.add_argument("--answer-length", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--vision-width", type=int, default=256)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--profile", action="store_true", help="record the top operators of both steps")
    args = parser.parse_args(argv)
    common.configure(args)
    info = common.machine()
    ours, peer, patches = build(args)
    ours_batch, peer_batch = inputs(ours, peer, patches, args)

    ours.eval(), peer.eval()
    with torch.no_grad():
        ours_logits = ours(ours_batch.media, ours_batch.input_ids, ours_batch.attention_mask)
        ours_loss = ours.loss(ours_batch)
        out = peer(**peer_batch)
    peer_logits = out.logits[:, patches:]
    logit_gap = float((ours_logits - peer_logits).abs().max())
    loss_gap = abs(float(ours_loss) - float(out.loss))

    ours.train(), peer.train()
    ours_opt = workloads.optimizer(ours)
    peer_params = [p for p in peer.parameters() if p.requires_grad]
    peer_opt = torch.optim.AdamW(peer_params, **workloads.ADAMW)
    ours_step = workloads.step_fn(ours, ours_batch, ours_opt, clip=None)

    def peer_step() -> float:
        loss = peer(**peer_batch).loss
        loss.backward()
        peer_opt.step()
        peer_opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    timing = common.interleaved({"perceptlm": ours_step, "transformers_llava": peer_step}, args.repeats, args.warmup)
    ratio = timing["perceptlm"]["median"] / timing["transformers_llava"]["median"]
    profiles = {"perceptlm": common.top_ops(ours_step), "transformers_llava": common.top_ops(peer_step)} if args.profile else {}
    trainable = {"perceptlm": ours.num_trainable_parameters, "transformers_llava": sum(p.numel() for p in peer_params)}
    result = {
        "benchmark": "B3 LLaVA peer",
        "command": common.command(argv, "llava_peer.py"),
        "machine": common.finish(info),
        "config": {"preset": "llava-1.5", "vision": {k: getattr(ours.encoder.model.config, k) for k in (
                       "image_size", "patch_size", "hidden_size", "num_hidden_layers")},
                   "visual_tokens": patches, "llm": ours.llm.name, "batch_size": args.batch_size,
                   "text_length": args.text_length, "answer_length": args.answer_length, "repeats": args.repeats,
                   "attention": {"perceptlm": ours.llm.model.config._attn_implementation,
                                 "transformers_llava": peer.config.text_config._attn_implementation}},
        "trainable_parameters": trainable,
        "max_abs_logit_difference": logit_gap,
        "loss": {"perceptlm": float(ours_loss), "transformers_llava": float(out.loss), "abs_difference": loss_gap},
        "timing": timing,
        "ratio_perceptlm_over_llava": round(ratio, 4),
        "top_ops": profiles,
        "target": {"logits_within": 1e-4, "ratio": "<= 1.0",
                   "met": logit_gap <= 1e-4 and ratio <= 1.0 and trainable["perceptlm"] == trainable["transformers_llava"]},
    }
    common.write("llava_peer" + ("_smoke" if args.smoke else ""), result, args.output)
    print(f"max |logit diff| {logit_gap:.2e}; loss diff {loss_gap:.2e}; step time perceptlm/llava = {ratio:.3f}")
    return result


if __name__ == "__main__":
    main()
