"""torchmetrics classes: accumulation, de-duplication by sample id, device moves, DDP gathering."""

import multiprocessing
import os
import socket
import warnings

import pytest
import torch

from perceptlm.metrics import CaptionMetrics, MultipleChoiceAccuracy, VQAAccuracy, YesNoMetrics
from perceptlm.metrics.functional import bleu, cider, rouge_l, vqa_accuracy, yes_no_metrics

PREDS = ["A dog on a couch.", "Two cats sleeping!", "a man's bike", "", "People walking (fast)."]
REFS = [
    ["A dog lying on a couch.", "dog on the sofa"],
    ["Two cats asleep on a bed.", "two sleeping cats", "Cats."],
    ["A man with his bike.", "The man's bicycle."],
    ["A plate of food."],
    ["People walking down a street.", "a crowd walks fast"],
]
ANSWERS = [["dog"] * 10, ["2"] * 3 + ["3"] * 7, ["bike"] * 2 + ["bicycle"] * 8, ["food"] * 10, ["yes"] * 10]
VQA_PREDS = ["dog", "two", "bike", "pizza", "yes"]


def _functional_captions(ids):
    preds, refs = [PREDS[i] for i in ids], [REFS[i] for i in ids]
    out = {f"bleu_{k + 1}": v for k, v in enumerate(bleu(preds, refs))}
    return out | {"rouge_l": rouge_l(preds, refs), "cider": cider(preds, refs)}


def _as_floats(values):
    return {k: v.item() for k, v in values.items()}


def test_caption_metrics_matches_functional_in_id_order():
    metric = CaptionMetrics()
    metric.update([PREDS[i] for i in (3, 1)], [REFS[i] for i in (3, 1)], sample_ids=[3, 1])
    metric.update([PREDS[i] for i in (4, 0, 2)], [REFS[i] for i in (4, 0, 2)], sample_ids=torch.tensor([4, 0, 2]))
    assert _as_floats(metric.compute()) == _functional_captions([0, 1, 2, 3, 4])


def test_caption_metrics_counts_each_id_once():
    metric = CaptionMetrics()
    for _ in range(2):
        metric.update(PREDS, REFS, sample_ids=list(range(5)))
    assert _as_floats(metric.compute()) == _functional_captions(range(5))
    with pytest.warns(RuntimeWarning, match="different values"):
        metric.update(["something else"], [REFS[0]], sample_ids=[0])
        metric.compute()


def test_caption_metrics_without_ids_keeps_every_record():
    metric = CaptionMetrics()
    metric.update(PREDS, REFS)
    metric.update(PREDS[:1], REFS[:1])
    assert _as_floats(metric.compute()) == _functional_captions([0, 1, 2, 3, 4, 0])


def test_string_states_survive_device_moves_forward_and_reset():
    metric = CaptionMetrics()
    batch = metric(PREDS[:2], REFS[:2], sample_ids=[0, 1])  # forward: batch value + accumulation
    assert _as_floats(batch) == _functional_captions([0, 1])
    metric = metric.to("cpu").double()
    metric.update(PREDS[2:], REFS[2:], sample_ids=[2, 3, 4])
    assert metric.predictions == PREDS
    assert _as_floats(metric.compute()) == _functional_captions(range(5))
    metric.reset()
    assert metric.predictions == [] and metric.sample_ids == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns about compute() before update()
        assert all(v.isnan() for v in metric.compute().values())
    with pytest.raises(ValueError):
        metric.update(PREDS, REFS[:2])


def test_vqa_accuracy_class():
    scores = vqa_accuracy(VQA_PREDS, ANSWERS, reduction="none")
    metric = VQAAccuracy()
    metric.update(VQA_PREDS[:2], ANSWERS[:2])
    metric.update(VQA_PREDS[2:], ANSWERS[2:])
    assert metric.compute().item() == pytest.approx(sum(scores) / 5, abs=1e-15)
    with_ids = VQAAccuracy()
    with_ids.update(VQA_PREDS, ANSWERS, sample_ids=range(5))
    with_ids.update(VQA_PREDS[:2], ANSWERS[:2], sample_ids=[0, 1])  # repeated samples
    assert with_ids.compute().item() == pytest.approx(sum(scores) / 5, abs=1e-15)


def test_yes_no_and_multiple_choice_classes():
    preds, labels = ["Yes", "No, not at all.", "yes", "There is no cat."], ["yes", "yes", "no", "no"]
    metric = YesNoMetrics()
    metric.update(preds[:3], labels[:3], sample_ids=[0, 1, 2])
    metric.update(preds[2:], labels[2:], sample_ids=[2, 3])  # id 2 seen twice
    assert _as_floats(metric.compute()) == pytest.approx(yes_no_metrics(preds, labels))

    mcq = MultipleChoiceAccuracy(num_options=3)
    mcq.update(torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0]]), torch.tensor([1, 1]))  # tie -> option 0
    mcq.update(["(C)", "I would say B", "no idea"], [2, 1, 0])
    # right: row 1, "(C)", "... B"; wrong: the tie (option 0 chosen), "no idea" (unparsable)
    assert mcq.compute().item() == pytest.approx(3 / 5)
    with pytest.raises(ValueError):
        MultipleChoiceAccuracy().update(["A"], [0])


# --- two processes, gloo backend --------------------------------------------------------------

# DistributedSampler with 5 samples on 2 ranks pads rank 1 with a repeat of sample 0.
SHARDS = {0: [0, 2, 4], 1: [1, 3, 0]}


def _worker(rank, port, queue):
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        ids = SHARDS[rank]
        captions, vqa_ids, vqa_plain = CaptionMetrics(), VQAAccuracy(), VQAAccuracy()
        for i in ids:  # one sample per step
            captions.update([PREDS[i]], [REFS[i]], sample_ids=[i])
            vqa_ids.update([VQA_PREDS[i]], [ANSWERS[i]], sample_ids=[i])
            vqa_plain.update([VQA_PREDS[i]], [ANSWERS[i]])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plain = vqa_plain.compute().item()
        result = {
            "captions": _as_floats(captions.compute()),
            "vqa_ids": vqa_ids.compute().item(),
            "vqa_plain": plain,
            "warned_unkeyed": any("without sample_ids" in str(w.message) for w in caught),
            "local_after_compute": list(captions.sample_ids),
        }
        queue.put((rank, result))
    except Exception as err:  # report instead of hanging the parent
        queue.put((rank, repr(err)))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gathers_strings_and_deduplicates():
    if not torch.distributed.is_available() or "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs torch.distributed and the fork start method")
    ctx = multiprocessing.get_context("fork")
    queue, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, port, queue)) for rank in (0, 1)]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    scores = vqa_accuracy(VQA_PREDS, ANSWERS, reduction="none")
    for rank in (0, 1):
        result = results[rank]
        assert isinstance(result, dict), result
        assert result["captions"] == _functional_captions(range(5))
        assert result["vqa_ids"] == pytest.approx(sum(scores) / 5, abs=1e-15)
        # without ids the padded repeat of sample 0 is counted twice
        assert result["vqa_plain"] == pytest.approx((sum(scores) + scores[0]) / 6, abs=1e-15)
        assert result["warned_unkeyed"]
        assert result["local_after_compute"] == SHARDS[rank]  # local state restored after sync
