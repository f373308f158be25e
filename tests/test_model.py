"""PerceptualLM contracts on tiny backbones, without a Trainer: freezing, loss, generation, export;
and the checkpoints of the InterfaceModule that trains it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from perceptlm import build, presets
from perceptlm.data.collate import Collator, Sample
from perceptlm.model import PerceptualLM


def _module(tiny_encoder, tiny_llm, **overrides):
    return PerceptualLM.build("depalm-qp-l0", tiny_encoder, tiny_llm, **overrides)


def _batch(module, prompts, answers, train=True, size=32):
    samples = [Sample(str(i), torch.randn(3, size, size), p, [a]) for i, (p, a) in enumerate(zip(prompts, answers))]
    return Collator(module.tokenizer, "vqa", train=train)(samples)


PROMPTS = ["what shape?\n\nAnswer:\n", "is there a red shape in the image?\n\nAnswer:\n", "color?\n\nAnswer:\n"]
ANSWERS = ["circle", "no", "teal"]


def test_presets_listed_and_unknown_rejected(tiny_encoder, tiny_llm):
    assert "depalm-qp-l0" in presets.names()
    with pytest.raises(ValueError, match="valid presets: .*depalm-qp-l0"):
        PerceptualLM.build("no-such-preset", tiny_encoder, tiny_llm)
    with pytest.raises(ValueError, match="unknown preset override"):
        presets.get("depalm-qp-l0").with_overrides(mapper={"x": 1})


def test_structure_and_trainable_count(tiny_encoder, tiny_llm):
    module = _module(tiny_encoder, tiny_llm)
    assert module.num_visual_tokens == 32
    D, W, H, Q, n, P = tiny_encoder.embed_dim, 1024, tiny_llm.hidden_size, 32, 2, 1  # DePALM's 1024-wide mapper
    # The formula documented on the preset (post-norm layer: attention 4W^2+4W, FFN 2W^2+3W, norms 4W).
    expected = D * W + W + Q * W + n * (4 * W * W + 4 * W + 2 * W * W + W + W + 4 * W) + W * H + H + P * H
    assert module.num_trainable_parameters == expected
    table = dict((name, (t, f)) for name, t, f in module.parameter_table())
    assert table["encoder"][0] == 0 and table["llm"][0] == 0 and table["encoder"][1] > 0


def test_frozen_backbones_stay_eval_and_unchanged_after_a_step(tiny_encoder, tiny_llm):
    module = _module(copy.deepcopy(tiny_encoder), copy.deepcopy(tiny_llm))
    module.train()
    assert not module.encoder.training and not module.llm.training and module.connector.training
    before = {k: v.clone() for k, v in module.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    loss = module.loss(_batch(module, PROMPTS, ANSWERS))
    loss.backward()
    optimizer.step()
    after = module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("connector.", "prompt.")) for k in changed)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.", "llm.")))


def test_loss_is_answer_tokens_plus_eos(tiny_encoder, tiny_llm):
    module = _module(tiny_encoder, tiny_llm, label_smoothing=0.0).eval()
    batch = _batch(module, PROMPTS, ANSWERS)
    eos = module.tokenizer.eos_token_id
    for row, answer in zip(batch.labels, ANSWERS):
        supervised = row[row != -100].tolist()
        assert supervised == module.tokenizer(answer, add_special_tokens=False)["input_ids"] + [eos]
    # Same value as cross-entropy over the full-vocabulary logits of forward().
    logits = module(batch.media, batch.input_ids, batch.attention_mask)
    targets = batch.labels[:, 1:]
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    assert torch.allclose(module.loss(batch), reference, atol=1e-5)


def test_forward_is_causal(tiny_encoder, tiny_llm):
    module = _module(tiny_encoder, tiny_llm).eval()
    batch = _batch(module, PROMPTS[:1], ANSWERS[:1])
    ids = batch.input_ids.clone()
    logits = module(batch.media, ids, batch.attention_mask)
    t = ids.shape[1] // 2
    ids[:, t + 1] = (ids[:, t + 1] + 7) % module.tokenizer.vocab_size
    changed = module(batch.media, ids, batch.attention_mask)
    assert torch.allclose(logits[:, : t + 1], changed[:, : t + 1], atol=1e-6)
    assert not torch.allclose(logits[:, t + 1 :], changed[:, t + 1 :])


def test_batched_left_padded_generation_equals_single(tiny_encoder, tiny_llm):
    module = _module(tiny_encoder, tiny_llm).eval()
    batch = _batch(module, PROMPTS, ANSWERS, train=False)
    together = module.generate(batch.media, batch.prompt_ids, batch.prompt_mask, max_new_tokens=6)
    for i in range(len(PROMPTS)):
        mask = batch.prompt_mask[i : i + 1].bool()[0]
        alone = module.generate(batch.media[i : i + 1], batch.prompt_ids[i : i + 1, mask],
                                batch.prompt_mask[i : i + 1, mask], max_new_tokens=6)
        assert torch.equal(alone[0], together[i, : alone.shape[1]])


def test_cached_generation_equals_recomputation(tiny_encoder, tiny_llm):
    module = _module(tiny_encoder, tiny_llm).eval()
    batch = _batch(module, PROMPTS[:1], ANSWERS[:1], train=False)
    media, ids, mask = batch.media, batch.prompt_ids, batch.prompt_mask
    cached = module.generate(media, ids, mask, max_new_tokens=5)
    for _ in range(5):  # greedy without a cache: the full forward each step
        logits = module(media, ids, mask)
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
    assert torch.equal(cached[0], ids[0, -5:][: cached.shape[1]])


def test_beam_search_scores_at_least_greedy(tiny_encoder, tiny_llm):
    module = _module(tiny_encoder, tiny_llm).eval()
    batch = _batch(module, PROMPTS, ANSWERS, train=False)
    args = (batch.media, batch.prompt_ids, batch.prompt_mask)
    beams = module.generate(*args, max_new_tokens=4, num_beams=3)
    one_beam = module.generate(*args, max_new_tokens=4, num_beams=1)
    assert beams.shape[0] == 3 and beams.shape[1] <= 4

    def logprob(new):  # sum of log-probabilities of the generated continuation
        ids = torch.cat([args[1], new], dim=1)
        mask = torch.cat([args[2], torch.ones_like(new)], dim=1)
        logp = torch.log_softmax(module(args[0], ids, mask), -1)[:, args[1].shape[1] - 1 : -1]
        return logp.gather(-1, new[..., None])[..., 0].sum(-1)

    if beams.shape[1] == one_beam.shape[1] == 4:
        assert bool((logprob(beams) >= logprob(one_beam) - 1e-4).all())


def test_checkpoint_holds_trainable_weights_only(tiny_encoder, tiny_llm):
    module = build("depalm-qp-l0", tiny_encoder, tiny_llm)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    keys = set(checkpoint["state_dict"])
    assert keys == {f"model.{k}" for k in module.model.trainable_keys()}
    assert not any(k.startswith(("model.encoder.", "model.llm.")) for k in keys)
    other = build("depalm-qp-l0", tiny_encoder, tiny_llm)
    other.on_load_checkpoint(checkpoint)
    other.load_state_dict(checkpoint["state_dict"], strict=False)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in checkpoint["state_dict"].items())
    # checkpoints written before the model had its own module name the weights without "model."
    legacy = {"state_dict": {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}}
    other.on_load_checkpoint(legacy)
    assert set(legacy["state_dict"]) == keys
    del checkpoint["state_dict"]["model.connector.output.0.weight"]
    with pytest.raises(KeyError, match="lacks trainable weights"):
        other.on_load_checkpoint(checkpoint)


def test_beam_search_is_batch_invariant(tiny_encoder, tiny_llm):
    module = _module(tiny_encoder, tiny_llm).eval()
    batch = _batch(module, PROMPTS, ANSWERS, train=False)
    together = module.generate(batch.media, batch.prompt_ids, batch.prompt_mask, max_new_tokens=5, num_beams=3)
    for i in range(len(PROMPTS)):
        mask = batch.prompt_mask[i].bool()
        alone = module.generate(batch.media[i : i + 1], batch.prompt_ids[i : i + 1, mask],
                                batch.prompt_mask[i : i + 1, mask], max_new_tokens=5, num_beams=3)
        pad = module.tokenizer.pad_token_id
        trim = lambda t: t[: int((t != pad).nonzero().max()) + 1] if bool((t != pad).any()) else t[:0]  # noqa: E731
        assert torch.equal(trim(alone[0]), trim(together[i]))


def test_stop_strings_cut_the_text_and_end_greedy_decoding(tiny_encoder, tiny_llm):
    from perceptlm.generation import stop_string_criterion, truncate_at_stop

    assert truncate_at_stop("red circle\nQuestion: what", ["\n"]) == "red circle"
    assert truncate_at_stop("no stop here", ["\n", "###"]) == "no stop here"
    module = _module(tiny_encoder, tiny_llm).eval()
    batch = _batch(module, PROMPTS[:1], ANSWERS[:1], train=False)
    free = module.generate(batch.media, batch.prompt_ids, batch.prompt_mask, max_new_tokens=8)
    first = module.tokenizer.decode(free[0, :2])
    stop = stop_string_criterion(module.tokenizer, [first])
    assert bool(stop(free[:, :2])[0]) and not bool(stop(free[:, :1])[0] and len(first) > 1)
    module.stop_strings = [first]
    stopped = module.generate(batch.media, batch.prompt_ids, batch.prompt_mask, max_new_tokens=8)
    assert stopped.shape[1] <= 2 and torch.equal(stopped[0], free[0, : stopped.shape[1]])


def test_save_and_load_pretrained_generate_the_same(tmp_path, tiny_encoder, tiny_llm):
    from safetensors.torch import load_file

    from perceptlm import InterfaceModule

    module = build("depalm-qp-l0", tiny_encoder, tiny_llm, connector={"num_queries": 4}, lr=3e-4).eval()
    torch.nn.init.normal_(module.model.connector.output[0].weight, std=0.5)  # not the init any more
    batch = _batch(module, PROMPTS, ANSWERS, train=False)
    before = module.generate(batch.media, batch.prompt_ids, batch.prompt_mask, max_new_tokens=5)
    module.save_pretrained(tmp_path / "export")
    assert set(load_file(str(tmp_path / "export" / "model.safetensors"))) == module.model.trainable_keys()
    loaded = InterfaceModule.from_pretrained(tmp_path / "export")  # backbones rebuilt from the zoo
    assert loaded.model.encoder.name == "test-tiny-vit" and loaded.model.preset.connector["num_queries"] == 4
    assert loaded.hparams.lr == 3e-4  # the run's own arguments come back too
    after = loaded.generate(batch.media, batch.prompt_ids, batch.prompt_mask, max_new_tokens=5)
    assert torch.equal(before, after)
    plain = PerceptualLM.from_pretrained(tmp_path / "export")  # the model alone, without Lightning
    assert torch.equal(before, plain.generate(batch.media, batch.prompt_ids, batch.prompt_mask, max_new_tokens=5))
    plain.save_pretrained(tmp_path / "plain")  # and back: the model's own build arguments
    again = PerceptualLM.from_pretrained(tmp_path / "plain")
    assert again.preset == plain.preset and again.options == plain.options
    assert torch.equal(before, again.generate(batch.media, batch.prompt_ids, batch.prompt_mask, max_new_tokens=5))
    with pytest.raises(FileNotFoundError, match="not a perceptlm export"):
        InterfaceModule.from_pretrained(tmp_path)


def test_compiled_llm_layers_give_the_eager_loss_and_gradients(tiny_encoder, tiny_llm):
    eager = _module(tiny_encoder, tiny_llm)
    compiled = PerceptualLM.build("depalm-qp-l0", tiny_encoder, copy.deepcopy(tiny_llm), compile_llm=True)
    compiled.load_state_dict(eager.state_dict())
    assert all(layer._compiled_call_impl is not None for layer in compiled.llm.layers)
    assert not any(getattr(layer, "_compiled_call_impl", None) for layer in tiny_llm.layers)  # the caller's copy
    batch = _batch(eager, PROMPTS, ANSWERS)
    losses, grads = [], []
    for module in (eager, compiled):
        module.eval().zero_grad()  # eval: no dropout in the connector, so both see the same function
        loss = module.loss(batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in module.connector.parameters() if p.grad is not None]))
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_generation_stops_at_an_end_of_turn_token_besides_eos(tiny_encoder, tiny_llm):
    module = _module(tiny_encoder, tiny_llm).eval()
    batch = _batch(module, PROMPTS[:1], ANSWERS[:1], train=False)
    free = module.generate(batch.media, batch.prompt_ids, batch.prompt_mask, max_new_tokens=6, num_beams=1)
    assert free.shape[1] == 6 and module.llm.eos_token_id not in free[0, :3].tolist()
    module.stop_token_ids = [module.llm.eos_token_id, int(free[0, 2])]  # e.g. <|eot_id|> of a chat template
    stopped = module.generate(batch.media, batch.prompt_ids, batch.prompt_mask, max_new_tokens=6, num_beams=1)
    assert stopped[0].tolist() == free[0, :3].tolist()
    assert module.decode(free) == [module.tokenizer.decode(free[0, :2], skip_special_tokens=True).strip()]


def test_instruction_data_reports_its_single_token_end_of_turn(smollm2, tiny_llm):
    from types import SimpleNamespace

    from perceptlm.data import EasyInstructDataModule

    def stops(tokenizer, template):
        """The stop tokens connect gives a model that had none."""
        model = SimpleNamespace(tokenizer=tokenizer, encoder=SimpleNamespace(preprocess=None), stop_token_ids=[])
        EasyInstructDataModule(template=template).connect(model)
        return model.stop_token_ids

    assert stops(smollm2.tokenizer, "auto") == smollm2.tokenizer.convert_tokens_to_ids(["<|im_end|>"])
    assert smollm2.tokenizer.decode(stops(smollm2.tokenizer, "llava_v0")) == "###"  # one token in SmolLM2
    assert stops(tiny_llm.tokenizer, "llava_v0") == []  # several tokens: stop_strings end it
    assert stops(tiny_llm.tokenizer, "vicuna_v1") == [tiny_llm.tokenizer.eos_token_id]
    end = smollm2.tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = SimpleNamespace(tokenizer=smollm2.tokenizer, encoder=SimpleNamespace(preprocess=None),
                            stop_token_ids=[smollm2.eos_token_id])
    data = EasyInstructDataModule()
    data.connect(model)
    data.connect(model)  # connecting again adds nothing twice
    assert model.stop_token_ids == sorted({smollm2.eos_token_id, end})


def test_the_model_trains_and_decodes_without_lightning():
    """The maths needs no Trainer: building, a loss step and decoding import no Lightning."""
    import subprocess
    import sys

    script = """
import sys, torch
from perceptlm.batch import Batch
from perceptlm.model import PerceptualLM
model = PerceptualLM.build("depalm-qp-l0", "test-tiny-vit", "test-tiny-llama", connector={"num_queries": 4})
ids = torch.tensor([[5, 6, 7, 8]])
batch = Batch(ids=["0"], task="vqa", media=torch.randn(1, 3, 32, 32), prompts=[""], sources=[None],
              input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([[-100, -100, 7, 8]]))
loss = model.loss(batch)
loss.backward()
assert torch.isfinite(loss) and model.connector.output[0].weight.grad is not None
assert all(p.grad is None for p in model.llm.parameters())
new = model.eval().generate(batch.media, ids, torch.ones_like(ids), max_new_tokens=3)
assert new.shape == (1, 3) and len(model.decode(new)) == 1
print(sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning")))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
