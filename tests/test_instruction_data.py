"""Instruction data: LLaVA JSON, chat templates and label masks, easy-instruct, ScienceQA, POPE,
Flickr30k / NoCaps with CHAIR, option likelihood, and the CLI on easy-instruct."""

from __future__ import annotations

import glob
import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from perceptlm.batch import Batch
from perceptlm.data import (
    CaptionInstructDataModule,
    EasyInstructDataModule,
    EasyVQADataModule,
    Flickr30kDataModule,
    LLaVAInstructDataModule,
    NoCapsDataModule,
    POPEDataModule,
    Sample,
    ScienceQADataModule,
)
from perceptlm.data.chat import chat_template, encode, end_of_turn_ids
from perceptlm.data.easy_instruct import attributes, easy_instruct_records, image_facts
from perceptlm.data.easyvqa import default_root
from perceptlm.data.instruction import CAPTION_INSTRUCTIONS, InstructionCollator, captions_to_instructions, instruction_sample
from perceptlm.evaluation.likelihood import option_loglikelihood_choice, option_loglikelihoods
from perceptlm.evaluation.scoring import score
from perceptlm.zoo import tiny_tokenizer

BLANK = lambda image: torch.zeros(3, 8, 8)  # noqa: E731 - media preprocessing stand-in


def _model(tokenizer, preprocess=BLANK):
    """A model as ``connect`` reads it: tokenizer, encoder (media preprocessing), stop tokens."""
    return SimpleNamespace(tokenizer=tokenizer, encoder=SimpleNamespace(preprocess=preprocess), stop_token_ids=[])

TURNS = [("human", "<image>\nWhat color is it?"), ("gpt", "red"), ("human", "And the shape?"), ("gpt", "a circle")]


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)


def _labeled_spans(ids: torch.Tensor, labels: torch.Tensor, tokenizer) -> list[str]:
    """Decoded runs of consecutive supervised tokens."""
    spans, current = [], []
    for token, label in zip(ids.tolist(), labels.tolist()):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


@pytest.fixture(scope="module")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from perceptlm.zoo import smollm2_folder

    return AutoTokenizer.from_pretrained(smollm2_folder())


def test_llava_json_labels_only_on_assistant_turns(tmp_path):
    records = [{"id": "000000033471", "image": "000000033471.jpg", "conversations": [
                   {"from": "human", "value": "What colour is the bus?\n<image>"}, {"from": "gpt", "value": "White and red."},
                   {"from": "human", "value": "Where is it?"}, {"from": "gpt", "value": "On a street."}]},
               {"id": "000000052846", "image": "000000052846.jpg", "conversations": [
                   {"from": "human", "value": "<image>\nWhat is the cat doing?"}, {"from": "gpt", "value": "Sleeping."}]},
               {"id": "sharegpt-1", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}]
    (tmp_path / "llava_instruct_150k.json").write_text(json.dumps(records))
    for record in records[:2]:
        _image(tmp_path / "train2017" / record["image"])
    tokenizer = tiny_tokenizer()
    dm = LLaVAInstructDataModule(data_root=str(tmp_path), holdout=1, template="vicuna_v1", batch_size=2)
    dm.connect(_model(tokenizer))
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 1 and len(dm.datasets["val"]) == 1  # the text-only record is dropped
    collate = InstructionCollator(tokenizer, "conversation", train=True, template="vicuna_v1")
    samples = [dm.datasets["train"][0], dm.datasets["val"][0]]
    batch = collate(samples)
    eos = tokenizer.eos_token
    expected = {"000000033471": [f" White and red.{eos}", f" On a street.{eos}"], "000000052846": [f" Sleeping.{eos}"]}
    for row, sample_id in enumerate(batch.ids):
        assert _labeled_spans(batch.input_ids[row], batch.labels[row], tokenizer) == expected[sample_id]
        prefix = tokenizer.decode(batch.input_ids[row, : batch.media_position[row]])
        text = tokenizer.decode(batch.input_ids[row][batch.attention_mask[row].bool()])
        assert "<image>" not in text and text.startswith("A chat between a curious user")
        if sample_id == "000000052846":  # <image> opens the human turn
            assert prefix.endswith("USER: ") and text[len(prefix):].startswith("What is the cat doing?")
        else:  # "What colour is the bus?\n<image>": perception goes after the question
            assert prefix.endswith("USER: What colour is the bus?") and text[len(prefix):].startswith(" ASSISTANT:")
    last_question = {"000000033471": "Where is it?", "000000052846": "What is the cat doing?"}
    for row, sample_id in enumerate(batch.ids):  # what an instruction-aware head reads: the unsupervised text
        instruction = tokenizer.decode(batch.input_ids[row][batch.instruction_mask[row]])
        assert last_question[sample_id] in instruction and instruction.startswith("A chat between a curious user")
        assert not any(answer[1 : -len(eos)] in instruction for answer in expected[sample_id])

    evaluation = InstructionCollator(tokenizer, "conversation", train=False, template="vicuna_v1")(samples)
    for row, sample_id in enumerate(evaluation.ids):
        prompt = tokenizer.decode(evaluation.prompt_ids[row][evaluation.prompt_mask[row].bool()])
        assert prompt.endswith("ASSISTANT:")
        assert evaluation.references[row] == [expected[sample_id][-1][1: -len(eos)]]
        before = tokenizer.decode(evaluation.prompt_ids[row, : evaluation.media_position[row]], skip_special_tokens=True)
        assert before.lstrip(tokenizer.pad_token).endswith("USER: " if sample_id == "000000052846" else "bus?")
    assert (evaluation.prompt_mask[:, -1] == 1).all()


def test_named_templates_and_the_tokenizers_own(smol_tokenizer):
    tiny = tiny_tokenizer()
    v0 = encode(chat_template("llava_v0", tiny).pieces(TURNS), tiny)
    assert _labeled_spans(torch.tensor(v0.input_ids), torch.tensor(v0.labels), tiny) == [" red###", " a circle###"]
    assert tiny.decode(v0.input_ids).endswith("###Human: And the shape?###Assistant: a circle###")
    plain = encode(chat_template("plain", tiny).pieces(TURNS[:2]), tiny)
    assert tiny.decode(plain.input_ids) == f"red{tiny.eos_token}" and -100 not in plain.labels
    with pytest.raises(ValueError, match="plain"):
        chat_template("plain", tiny).pieces(TURNS)
    with pytest.raises(ValueError, match="no chat_template"):
        chat_template("tokenizer", tiny)
    with pytest.raises(ValueError, match="valid"):
        chat_template("chatml-ish", tiny)
    assert chat_template("auto", tiny).name == "vicuna_v1"
    assert end_of_turn_ids("vicuna_v1", tiny) == [tiny.eos_token_id] == end_of_turn_ids("plain", tiny)
    assert tiny.decode(end_of_turn_ids("llava_v0", tiny)) == "###"

    assert smol_tokenizer.chat_template and chat_template("auto", smol_tokenizer).name == "tokenizer"
    assert end_of_turn_ids("auto", smol_tokenizer) == smol_tokenizer.convert_tokens_to_ids(["<|im_end|>"])
    own = encode(chat_template("auto", smol_tokenizer).pieces(TURNS), smol_tokenizer)
    assert _labeled_spans(torch.tensor(own.input_ids), torch.tensor(own.labels), smol_tokenizer) == \
        ["red<|im_end|>", "a circle<|im_end|>"]
    full = smol_tokenizer.decode(own.input_ids)
    assert full.count("<|im_end|>") == 5  # system, 2 user, 2 assistant: only the assistant ones are supervised
    assert smol_tokenizer.decode(own.input_ids[: own.media_position]).endswith("<|im_start|>user\n")
    prompt = encode(chat_template("auto", smol_tokenizer).pieces(TURNS[:3]), smol_tokenizer)
    reference = smol_tokenizer.apply_chat_template([{"role": "user", "content": "What color is it?"},
                                                    {"role": "assistant", "content": "red"},
                                                    {"role": "user", "content": "And the shape?"}],
                                                   tokenize=False, add_generation_prompt=True)
    assert smol_tokenizer.decode(prompt.input_ids) == reference
    assert _labeled_spans(torch.tensor(prompt.input_ids), torch.tensor(prompt.labels), smol_tokenizer) == ["red<|im_end|>"]


def test_caption_pairs_become_instruction_records():
    samples = [Sample("img1", "a.png", "", ["a dog", "a brown dog"]), Sample("img2", "b.png", "", ["a cat"])]
    records = captions_to_instructions(samples, seed=0)
    assert records == captions_to_instructions(samples, seed=0)
    assert [r.targets for r in records] == [["a dog", "a brown dog"], ["a cat"]]
    for record in records:
        (role, text), = record.extra["turns"]
        assert role == "human" and text.startswith("<image>\n") and text[8:] in CAPTION_INSTRUCTIONS
    assert len({r.prompt for s in range(6) for r in captions_to_instructions(samples, seed=s)}) > 1

    source = EasyVQADataModule(task="caption", test_limit=3)
    dm = CaptionInstructDataModule(source=source, template="vicuna_v1", eval_batch_size=3)
    dm.connect(_model(tiny_tokenizer()))
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert dm.task == "caption" and len(batch.ids) == 3 and all(len(r[0].split()) == 2 for r in batch.references)
    assert all(p in CAPTION_INSTRUCTIONS for p in batch.prompts) and batch.meta[0]["task"] == "caption"


def test_easy_instruct_is_deterministic_and_balanced():
    facts = image_facts(default_root(), "test")
    first = easy_instruct_records(facts, "test", "all", "random")
    assert first == easy_instruct_records(image_facts(default_root(), "test"), "test", "all", "random")
    known = sum(f.color is not None for f in facts)
    counts = Counter(r["meta"]["task"] for r in first)
    assert counts == {"conversation": 2 * known, "mcq": 3 * known, "yesno": 4 * known, "caption": known}
    negatives, truth = {}, {f.image_id: (f.color, f.shape) for f in facts}
    for subset in ("random", "popular", "adversarial"):
        probes = easy_instruct_records(facts, "test", "yesno", subset)
        answers = Counter(r["conversations"][1]["value"] for r in probes)
        assert answers["yes"] == answers["no"] == 2 * known
        negatives[subset] = {r["id"].rsplit(f"{subset}-", 1)[1]: r["conversations"][0]["value"]
                             for r in probes if r["conversations"][1]["value"] == "no"}
        for record in probes:  # a "no" probe asks about what the image does not show
            color, shape = truth[int(record["image"][:-4])]
            question = record["conversations"][0]["value"]
            present = f"a {shape} " in question or f"a {color} shape" in question
            assert present == (record["conversations"][1]["value"] == "yes"), question
            attribute, answer = record["meta"]["probe"].split("-")  # the probe kind names both
            assert answer == record["conversations"][1]["value"] and (attribute == "color") == ("shape in" in question)
    assert negatives["adversarial"] != negatives["random"] and negatives["popular"] != negatives["random"]
    assert negatives["adversarial"] != negatives["popular"]
    for record in (r for r in first if r["meta"]["task"] == "mcq"):
        letter = record["conversations"][1]["value"]
        option_lines = record["conversations"][0]["value"].split("\n")[2:-1]
        assert option_lines == [f"{chr(65 + k)}. {o}" for k, o in enumerate(record["options"])]
        assert record["meta"]["answer_index"] == ord(letter) - 65 < record["meta"]["num_options"] == len(record["options"])
    colours = [r for r in first if r["meta"]["task"] == "mcq" and r["id"].endswith("-color")]
    assert all(r["options"][r["meta"]["answer_index"]] == truth[int(r["image"][:-4])][0] for r in colours)


def test_easy_instruct_conversation_context_and_question_do_not_give_away_the_scored_answer():
    facts = image_facts(default_root(), "train")
    truth = {f"{f.image_id}.png": {"color": f.color, "shape": f.shape} for f in facts if f.color is not None}
    records = easy_instruct_records(facts, "train", "conversation", turns=3)
    assert Counter(r["meta"]["scored"] for r in records) == {"color": len(truth), "shape": len(truth)}
    assert Counter(r["meta"]["turns"] for r in records)[3] > len(records) // 2
    by_question = {}
    for record in records:
        texts = [t["value"].removeprefix("<image>\n") for t in record["conversations"]]
        pairs = list(zip(texts[::2], texts[1::2]))
        assert len(pairs) == record["meta"]["turns"] and record["conversations"][0]["value"].startswith("<image>\n")
        scored = record["meta"]["scored"]
        assert attributes(*pairs[-1]) == {scored} and pairs[-1][1] == truth[record["image"]][scored], record["id"]
        assert all(scored not in attributes(*qa) and attributes(*qa) for qa in pairs[:-1]), record["id"]
        by_question.setdefault(pairs[-1][0], Counter())[pairs[-1][1]] += 1
    # without the image the scored question alone is a poor guide: no wording's most common answer
    # covers half its records (a yes/no question about a colour would be "no" 7 times in 8)
    assert len(by_question) == 5 and all(max(c.values()) < sum(c.values()) / 2 for c in by_question.values())
    assert attributes("what color is the triangle?", "blue") == {"color", "shape"}
    assert attributes("is there not a blue shape?", "no") == {"color"}


def test_easy_instruct_text_oracle_states_the_truth_in_the_first_turn():
    plain = EasyInstructDataModule(test_images=10).records("test")
    oracle = EasyInstructDataModule(test_images=10, describe=True).records("test")
    truth = {f"{f.image_id}.png": f"a {f.color} {f.shape}" for f in image_facts(default_root(), "test") if f.color}
    assert len(plain) == len(oracle) and sum(r["image"] in truth for r in plain) > len(plain) // 2
    for before, after in zip(plain, oracle):
        first_before, first_after = before["conversations"][0]["value"], after["conversations"][0]["value"]
        if before["image"] in truth:
            statement = f"<image>\nThe image shows {truth[before['image']]}.\n"
            assert first_after == first_before.replace("<image>\n", statement) != first_before
        else:
            assert first_after == first_before
        assert after["conversations"][1:] == before["conversations"][1:] and after["meta"] == before["meta"]


def test_easy_instruct_reasoned_answers_state_the_image_and_read_as_their_label():
    from perceptlm.evaluation.scoring import _letter_index
    from perceptlm.metrics.functional import parse_option_letter, pope_answer_is_yes

    dm = EasyInstructDataModule(test_images=10)
    plain = dm.records("train")
    truth = {f"{f.image_id}.png": f"a {f.color} {f.shape}" for f in image_facts(default_root(), "train") if f.color}
    for reasoned, families in ((True, {"yesno", "mcq"}), (["yesno"], {"yesno"}), (["mcq"], {"mcq"})):
        changed = EasyInstructDataModule(test_images=10, reasoned=reasoned).records("train")
        assert len(plain) == len(changed)
        counts = {"yesno": 0, "mcq": 0}
        for before, after in zip(plain, changed):
            task = before["meta"]["task"]
            if task not in families:
                assert after == before
                continue
            counts[task] += 1
            label, answer = before["conversations"][1]["value"], after["conversations"][1]["value"]
            if task == "yesno":
                assert answer == f"{truth[before['image']]}, so {label}."
                assert pope_answer_is_yes(answer) == (label == "yes")  # POPE's rules read it as its label
            else:
                option = before["options"][before["meta"]["answer_index"]]
                assert answer == f"{option}, so {label}." and option in truth[before["image"]]
                # the letter parser reads it as its label
                assert parse_option_letter(answer, before["meta"]["num_options"]) == _letter_index(label)
            assert after["conversations"][0] == before["conversations"][0]
            assert after["meta"] == before["meta"] and after.get("options") == before.get("options")
        assert {task: counts[task] for task in families} == {task: (4 if task == "yesno" else 3) * len(truth)
                                                             for task in families}
        for split in ("val", "test"):  # evaluation references stay yes / no and the letter
            assert EasyInstructDataModule(test_images=10, reasoned=reasoned).records(split) == dm.records(split)
    for bad in (["conversation"], "yesno"):
        with pytest.raises(ValueError, match="reasoned") as error:
            EasyInstructDataModule(reasoned=bad)
        assert "mcq" in str(error.value)  # names what is valid


def test_pope_files_and_metrics(tmp_path):
    lines = {"random": [(1, "yes"), (2, "no"), (3, "yes")], "popular": [(1, "no"), (2, "yes"), (3, "no")],
             "adversarial": [(1, "yes"), (2, "no")]}
    for subset, questions in lines.items():
        (tmp_path / f"coco_pope_{subset}.json").write_text("\n".join(json.dumps(
            {"question_id": q, "image": f"COCO_val2014_{q:012d}.jpg", "text": f"Is there a dog{q} in the image?",
             "label": label}) for q, label in questions) + "\n")
    for q in (1, 2, 3):
        _image(tmp_path / "val2014" / f"COCO_val2014_{q:012d}.jpg")
    dm = POPEDataModule(data_root=str(tmp_path))
    dm.connect(_model(tiny_tokenizer()))
    dm.setup("test")
    samples = dm.datasets["test"].samples
    assert [s.id for s in samples][:3] == ["random-1", "random-2", "random-3"] and len(samples) == 8
    assert samples[0].prompt == "Is there a dog1 in the image?\nAnswer the question using a single word or phrase."
    with pytest.raises(ValueError, match="evaluation benchmark"):
        dm.load_samples("train")

    # POPE's evaluate.py: the text before the first ".", commas dropped, split on " ": "no" iff a
    # word is exactly "No", "no" or "not". TP=2 (0, 4), FN=1 (1), TN=2 (2, 3), FP=1 (5).
    predictions = ["Yes, there is a dog.", "No.", "no", "There is not a dog", "Not sure. No", "Yes"]
    labels = ["yes", "yes", "no", "no", "yes", "no"]
    metrics = score("yesno", predictions, [[x] for x in labels])
    assert metrics == pytest.approx({"accuracy": 4 / 6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "yes_ratio": 3 / 6})
    grouped = score("yesno", predictions, [[x] for x in labels], [{"group": "a"}] * 3 + [{"group": "b"}] * 3)
    assert grouped["a_accuracy"] == pytest.approx(2 / 3) and grouped["b_yes_ratio"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="line 2"):
        (tmp_path / "coco_pope_random.json").write_text('{"question_id": 1, "image": "a.jpg", "text": "q", "label": "yes"}\n'
                                                        '{"question_id": 2, "image": "a.jpg", "text": "q", "label": "maybe"}\n')
        dm.load_samples("test")


def test_scienceqa_image_problems_and_letter_scoring(tmp_path):
    problems = {"1": {"question": "Which animal is shown?", "choices": ["cat", "dog", "fish"], "answer": 1, "hint": "",
                      "image": "image.png", "subject": "natural science", "split": "test"},
                "2": {"question": "Which word is a noun?", "choices": ["run", "tree"], "answer": 1, "hint": "",
                      "image": None, "subject": "language science", "split": "test"},
                "3": {"question": "Which is a state?", "choices": ["Ohio", "Paris"], "answer": 0, "hint": "Look at the map.",
                      "image": "image.png", "subject": "social science", "split": "test"}}
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"train": [], "val": [], "test": ["1", "2", "3"]}))
    for pid in ("1", "3"):
        _image(tmp_path / "images" / "test" / pid / "image.png")
    dm = ScienceQADataModule(data_root=str(tmp_path), template="vicuna_v1", eval_batch_size=4)
    tokenizer = tiny_tokenizer()
    dm.connect(_model(tokenizer))
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch.ids == ["1", "3"] and batch.references == [["B"], ["A"]]  # no-image problem 2 left out
    assert batch.prompts[1] == ("Context: Look at the map.\nWhich is a state?\nA. Ohio\nB. Paris\n"
                                   "Answer with the option's letter from the given choices directly.")
    assert [[tokenizer.decode(o) for o in options] for options in batch.option_ids] == [[" cat", " dog", " fish"],
                                                                                          [" Ohio", " Paris"]]
    predictions = ["B", "The answer is A.", "(c)", "a dog", "B. dog", "I think C"]
    references = [["B"], ["A"], ["B"], ["B"], ["B"], ["C"]]
    meta = [{"num_options": 3}] * 5 + [{"num_options": 2}]  # "C" is not among 2 options: unparsed
    assert score("mcq", predictions, references, meta) == pytest.approx({"accuracy": 3 / 6, "unparsed": 2 / 6})


def test_option_likelihood_picks_the_most_likely_option():
    class NextIsPlusOne(torch.nn.Module):
        """Logits that favour token t+1 after token t (vocabulary 300)."""

        tokenizer = list(range(300))
        blind_calls = []

        def forward(self, media, input_ids, attention_mask, instruction, blind):
            assert media.shape[0] == input_ids.shape[0]
            # the head is instructed by each pair's prompt, as in generation (not by the option)
            assert torch.equal(instruction[0], input_ids[:, : instruction[0].shape[1]])
            assert torch.equal(instruction[1], attention_mask[:, : instruction[0].shape[1]])
            assert instruction[0].shape[1] == 4
            self.blind_calls.append(blind)
            logits = torch.zeros(*input_ids.shape, 300)
            logits.scatter_(-1, ((input_ids + 1) % 300).unsqueeze(-1), 10.0)
            return logits

    prompt_ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 40]])
    batch = Batch(ids=["a", "b", "c"], task="mcq", media=torch.zeros(3, 1), prompts=["", "", ""], sources=[None] * 3,
                  prompt_ids=torch.cat([prompt_ids, prompt_ids[:1]]),
                  prompt_mask=torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]]),
                  option_ids=[[[9], [7, 8, 9]], [[44], [41], [41, 42]], []])
    model = NextIsPlusOne()
    assert option_loglikelihood_choice(model, batch) == [1, 1, None]
    assert option_loglikelihood_choice(model, batch, max_logits=1) == [1, 1, None]  # one pair per forward
    assert model.blind_calls == [False] * 6
    assert option_loglikelihood_choice(model, batch, blind=True) == [1, 1, None]
    assert model.blind_calls[6:] == [True]


def test_option_likelihood_instructs_the_head_and_scores_the_blind_baseline(tiny_encoder, tiny_llm):
    """InstructBLIP's Q-Former reads the prompt when options are scored, as in training and generation;
    ``blind`` scores with the perceptual tokens zeroed."""
    from perceptlm import build

    module = build("instructblip", tiny_encoder, tiny_llm, stage="instruct",
                           connector={"width": 64, "num_layers": 2, "num_heads": 4, "num_queries": 4}).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in module.model.connector.parameters():
            parameter.normal_(0, 0.5)  # an instruction projection that matters
    dm = EasyInstructDataModule(family="mcq", test_images=2, eval_batch_size=8, system="")
    dm.connect(module.model)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    prompt_ids, prompt_mask, width = batch.prompt_ids, batch.prompt_mask, batch.prompt_ids.shape[1]

    def scores(instructed=True, blind=False):
        """Per sample, each option's summed log-likelihood, one (prompt, option) pair per call."""
        out = []
        for i, options in enumerate(batch.option_ids):
            prompt = (prompt_ids[i : i + 1], prompt_mask[i : i + 1])
            row = []
            for option in options:
                ids = torch.cat([prompt[0], torch.tensor([option])], 1)
                mask = torch.cat([prompt[1], torch.ones(1, len(option), dtype=torch.long)], 1)
                where = {"media_position": batch.media_position[i : i + 1]} if batch.media_position is not None else {}
                with torch.no_grad():
                    logits = module(batch.media[i : i + 1], ids, mask, instruction=prompt if instructed else None,
                                    blind=blind, **where)
                logprobs = logits[0, width - 1 : -1].log_softmax(-1)
                row.append(float(logprobs.gather(-1, torch.tensor(option)[:, None]).sum()))
            out.append(row)
        return out

    def best(rows):
        return [max(range(len(r)), key=lambda k: (r[k], -k)) for r in rows]

    def flat(rows):
        return [x for row in rows for x in row]

    instructed, uninstructed, blind = scores(), scores(instructed=False), scores(blind=True)
    assert len(instructed) == 6 and flat(instructed) != pytest.approx(flat(uninstructed), abs=1e-3)  # the head reads it
    assert flat(option_loglikelihoods(module, batch)) == pytest.approx(flat(instructed), abs=1e-4)
    assert option_loglikelihood_choice(module, batch) == best(instructed)
    assert flat(blind) != pytest.approx(flat(instructed), abs=1e-3)
    assert flat(option_loglikelihoods(module, batch, blind=True)) == pytest.approx(flat(blind), abs=1e-4)
    assert option_loglikelihood_choice(module, batch, blind=True) == best(blind)


def test_flickr30k_nocaps_and_chair(tmp_path):
    images = [{"filename": f"{i}.jpg", "imgid": i, "split": split, "sentences": [{"raw": f"A man rides horse {i}."},
                                                                              {"raw": "A person on a horse."}]}
              for i, split in enumerate(["train", "test", "test"])]
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    for image in images:
        _image(tmp_path / "flickr30k-images" / image["filename"])
    dm = Flickr30kDataModule(data_root=str(tmp_path), eval_batch_size=4)
    dm.connect(_model(tiny_tokenizer()))
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch.ids == ["1", "2"] and len(batch.references[0]) == 2 and batch.meta[0]["objects"] == []

    nocaps = {"images": [{"id": k, "file_name": f"{k}.jpg", "domain": d} for k, d in enumerate(["in-domain", "out-domain"])],
              "annotations": [{"image_id": k, "id": 10 + j, "caption": c} for k in (0, 1)
                              for j, c in enumerate(["a dog on a couch", "a small dog sleeping"])]}
    (tmp_path / "nocaps_val_4500_captions.json").write_text(json.dumps(nocaps))
    samples = NoCapsDataModule(data_root=str(tmp_path)).load_samples("val")
    assert [s.extra["meta"]["group"] for s in samples] == ["in-domain", "out-domain"] and len(samples[0].targets) == 2
    with pytest.raises(ValueError, match="no training split"):
        NoCapsDataModule(data_root=str(tmp_path)).load_samples("train")

    # CHAIR: ground truth = objects the references mention; "dog" is hallucinated in caption 1.
    predictions = ["two men ride a horse next to a dog", "a horse"]
    references = [["a man rides a horse"], ["a person on a horse"]]
    metrics = score("caption", predictions, references, [{"objects": [], "group": "x"}, {"objects": [], "group": "y"}])
    assert metrics["chair_i"] == pytest.approx(1 / 4) and metrics["chair_s"] == pytest.approx(1 / 2)
    assert metrics["x_chair_s"] == 1.0 and metrics["y_chair_s"] == 0.0 and "cider" in metrics and "y_cider" in metrics
    assert score("caption", predictions, references).keys() == {"cider", "bleu4", "rouge_l"}


def test_bad_records_name_file_and_record(tmp_path):
    path = tmp_path / "llava_instruct_150k.json"
    path.write_text(json.dumps([{"id": "a", "image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image>\nq"}, {"from": "assistant", "value": "x"}]}]))
    with pytest.raises(ValueError, match=r"llava_instruct_150k.json: record 0 \(id a\): turn 1"):
        LLaVAInstructDataModule(data_root=str(tmp_path)).load_samples("train")
    with pytest.raises(ValueError, match="valid"):
        LLaVAInstructDataModule(data_root=str(tmp_path), template="nope")
    with pytest.raises(ValueError, match="end with a human turn"):
        instruction_sample("x", None, [("human", "q"), ("gpt", "a")], ["b"])


def test_cli_fit_and_validate_on_easy_instruct(tmp_path):
    from perceptlm.cli import cli

    configs = Path(__file__).parents[1] / "experiments" / "configs"
    args = ["--config", str(configs / "mechanisms" / "depalm-qp-l0.yaml"), "--config", str(configs / "data" / "easy_instruct.yaml"),
            "--config", str(configs / "trainer" / "cpu.yaml"),
            "--model.init_args.encoder", "test-tiny-vit", "--model.init_args.llm", "test-tiny-llama",
            "--model.init_args.connector", '{"width": 64, "num_queries": 4}',
            "--model.init_args.max_new_tokens", "3", "--model.init_args.num_beams", "1",
            "--data.init_args.limit", "8", "--data.init_args.batch_size", "4", "--data.init_args.eval_batch_size", "16",
            "--data.init_args.val_images", "2", "--data.init_args.system", "", "--trainer.max_steps", "2", "--trainer.num_sanity_val_steps", "0",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"]
    cli(["fit", *args, "--trainer.limit_val_batches", "0"])
    checkpoint = glob.glob(str(tmp_path / "**" / "*.ckpt"), recursive=True)
    assert checkpoint and torch.load(checkpoint[0], weights_only=True)["global_step"] == 2
    run = cli(["validate", *args, "--ckpt_path", checkpoint[0], "--model.init_args.eval_blind", "true"])
    metrics = {k: float(v) for k, v in run.trainer.callback_metrics.items()}
    expected = EasyInstructDataModule(val_images=2).records("val")
    assert metrics["val/num_samples"] == len(expected)
    for key in ("mcq_accuracy", "yesno_accuracy", "yesno_f1", "conversation_accuracy", "caption_cider",
                "accuracy_likelihood", "mcq_color_accuracy", "blind_mcq_accuracy", "blind_accuracy_likelihood"):
        assert f"val/{key}" in metrics, key
    mcq = sum(r["meta"]["task"] == "mcq" for r in expected)  # a choice is right or wrong on each question
    assert metrics["val/accuracy_likelihood"] * mcq == pytest.approx(round(metrics["val/accuracy_likelihood"] * mcq))
    assert metrics["val/blind_accuracy_likelihood"] * mcq == pytest.approx(round(metrics["val/blind_accuracy_likelihood"] * mcq))


@pytest.mark.parametrize("name, cls", [("easy_instruct", "EasyInstructDataModule"), ("llava_instruct", "LLaVAInstructDataModule"),
                                       ("scienceqa", "ScienceQADataModule"), ("pope", "POPEDataModule"),
                                       ("llava_bench", "LLaVABenchDataModule"), ("flickr30k", "Flickr30kDataModule"),
                                       ("nocaps", "NoCapsDataModule")])
def test_data_configs_parse(name, cls, capsys):
    from perceptlm.cli import cli

    configs = Path(__file__).parents[1] / "experiments" / "configs"
    with pytest.raises(SystemExit):
        cli(["validate", "--config", str(configs / "mechanisms" / "llava.yaml"), "--config", str(configs / "data" / f"{name}.yaml"),
             "--model.init_args.encoder", "test-tiny-vit", "--model.init_args.llm", "test-tiny-llama", "--print_config"])
    printed = capsys.readouterr().out
    assert f"class_path: perceptlm.data.{cls}" in printed and "preset: llava" in printed


def test_chair_over_the_easy_vqa_shapes():
    meta = [{"task": "caption", "objects": ["circle"], "vocabulary": "easy-vqa"}] * 3
    metrics = score("caption", ["a red triangle", "a blue circle", "two circles and a rectangle"],
                                [["a red circle"], ["a blue circle"], ["a gray circle"]], meta)
    assert metrics["chair_i"] == pytest.approx(2 / 4)  # triangle, circle, circle, rectangle: 2 not in the image
    assert metrics["chair_s"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="one object vocabulary"):
        score("caption", ["a", "b"], [["a"], ["b"]], [meta[0], {"objects": ["dog"]}])


def test_the_easy_vqa_object_vocabulary_is_the_datasets_shapes():
    from perceptlm.data.easyvqa import SHAPES
    from perceptlm.evaluation.scoring import EASY_VQA_SHAPES, object_vocabulary

    assert EASY_VQA_SHAPES == SHAPES
    assert set(object_vocabulary("easy-vqa")) == set(SHAPES)
