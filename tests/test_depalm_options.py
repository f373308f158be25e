"""The run options DePALM's released recipe needs beyond the mechanisms: OPT's ``</a>`` answer token,
the frozen OPT's dropout in training, AdamW weight decay on every trainable tensor."""

from __future__ import annotations

import torch

from perceptlm import zoo
from perceptlm.data.collate import Collator, Sample
from perceptlm.model import PerceptualLM
from perceptlm.training import optimization


def test_the_answer_token_is_one_token_and_ends_the_prompt(tiny_encoder):
    model = PerceptualLM.build("limber-1", tiny_encoder, zoo.load_llm("test-tiny-opt"), special_tokens=["</a>"])
    tokenizer = model.tokenizer
    (token,) = tokenizer.convert_tokens_to_ids(["</a>"])
    assert tokenizer("</a>", add_special_tokens=False)["input_ids"] == [token]  # never split
    assert token < model.llm.model.get_input_embeddings().weight.shape[0]  # an embedding row exists
    assert not model.llm.model.get_input_embeddings().weight.requires_grad  # and stays frozen
    samples = [Sample("0", torch.randn(3, 32, 32), "is it red?\n\nAnswer: </a>", ["yes"])]
    batch = Collator(tokenizer, "vqa", train=False)(samples)
    assert batch.prompt_ids[0, -1].item() == token
    assert model.build_arguments()["special_tokens"] == ["</a>"]  # save_pretrained rebuilds it


def test_frozen_llm_dropout_in_training_only(tiny_encoder):
    llm = zoo.load_llm("test-tiny-opt", dropout=0.5)
    model = PerceptualLM.build("limber-1", tiny_encoder, llm, llm_dropout=True)
    ids = torch.randint(0, 200, (2, 6))
    model.train()
    assert model.llm.training and not model.encoder.training
    assert not any(p.requires_grad for p in model.llm.parameters())  # still frozen
    with torch.no_grad():
        first, second = model.llm.model(input_ids=ids).logits, model.llm.model(input_ids=ids).logits
    assert not torch.allclose(first, second)  # dropout acts
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.llm.model(input_ids=ids).logits, model.llm.model(input_ids=ids).logits)
    plain = PerceptualLM.build("limber-1", tiny_encoder, zoo.load_llm("test-tiny-opt", dropout=0.5)).train()
    assert not plain.llm.training  # the default: a frozen LLM stays in evaluation mode


def test_weight_decay_on_every_tensor_or_on_matrices(tiny_encoder, tiny_llm):
    model = PerceptualLM.build("depalm-qp-l0", tiny_encoder, tiny_llm, connector={"width": 32})
    trainable = [p for p in model.parameters() if p.requires_grad]
    vectors = sum(p.numel() for p in trainable if p.ndim < 2)
    assert vectors > 0
    decayed = optimization.adamw(model, 1e-3, 0.1, 1e-4, decay_all=True).param_groups
    assert [g["weight_decay"] for g in decayed] == [0.1]
    assert sum(p.numel() for p in decayed[0]["params"]) == sum(p.numel() for p in trainable)
    default = optimization.adamw(model, 1e-3, 0.1, 1e-4).param_groups
    exempt = [g for g in default if g["weight_decay"] == 0.0]
    assert sum(p.numel() for g in exempt for p in g["params"]) == vectors
