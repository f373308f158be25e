"""Every cell of the DePALM grid (experiments/paper/depalm/commands.txt) through the real CLI.

commands.txt holds 550 runs: 11 mechanisms x 10 benchmark columns x 5 seeds. The five seeds of a
(mechanism, column) cell differ only in seed-dependent arguments (the seeds, the run directory, the
W&B run name and save folder, the checkpoint folder and path), which the first test asserts for every
line; so building and training one seed per (mechanism, column) - the 110 cells below - covers all
550 lines.

For each of the 110 cells, the cell's own ``perceptlm fit`` arguments (its mechanism, data and GPU
trainer configs, backbones, feature / connector / special-token options, learning rate, batch size,
accumulation, clipping, epochs, checkpoint callback) are run twice:

- at the paper's geometry: the encoder and LLM names become ``geometry:<the same name>`` (the real
  architecture and size on the meta device, no weights) and the CLI instantiates everything without
  running, on a CPU float32 trainer without W&B. The trainable-parameter count equals the preset's
  ``trainable_formula`` at that geometry, and the cell's options and hyper-parameters reach the
  model, trainer and datamodule as the cell gives them.
- ``fit`` for one optimizer step on tiny stand-ins of the same kinds (open_clip CLIP and EVA02 towers,
  TimeSformer, CLAP, LLaMA, OPT; see ``stand_ins``) on tiny data in each dataset's official format:
  exactly one optimizer step after the cell's number of accumulated micro-batches; the trainable
  weights move, the frozen backbones do not. What the tiny runs change, and why: the micro-batch is
  at most 2 (accumulation kept), the 1% cells read the whole 16-sample fixture, and the presets'
  fixed interface widths (1024, 768, 256) are 64 (``with_tiny_widths``).

``test_parameter_table`` prints the trainable counts at the real geometry, mechanism x backbone
column, and checks the known ones.
"""
from __future__ import annotations

import csv
import functools
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from perceptlm.cli import cli
from perceptlm.zoo.geometry import on_meta
from test_audio import audiocaps_root  # noqa: F401 - the module-scoped AudioCaps fixture (official CSV + wav)
from test_image_datasets import WRITERS as IMAGE_WRITERS
from test_paper_grids import ROWS, cell_of, option, parsed_lines
from test_presets import formula_value
from test_video import make_msrvtt

# -- the grid ---------------------------------------------------------------------------------------
# Options whose values differ between the seeds of a cell (everything else must be identical).
SEED_OPTIONS = ("--seed_everything", "--data.init_args.seed", "--trainer.default_root_dir",
                "--trainer.logger.init_args.save_dir", "--trainer.logger.init_args.name",
                "--trainer.callbacks.dirpath", "--ckpt_path")


@functools.cache
def cells() -> dict[tuple[str, str, float], list[str]]:
    """(mechanism, dataset, fraction) -> the fit arguments of its seed-0 line (after ``perceptlm``)."""
    return {cell_of(fit)[:3]: list(fit) for fit, _ in parsed_lines() if cell_of(fit)[3] == 0}


def cell_id(cell: tuple[str, str, float]) -> str:
    mechanism, dataset, fraction = cell
    return f"{mechanism}-{dataset}-{'1pct' if fraction < 1 else '100pct'}"


CELLS = sorted(cells(), key=lambda c: (ROWS.index(c[0]), c[1], -c[2]))
IDS = [cell_id(c) for c in CELLS]


def replace(args: list[str], name: str, value: str) -> list[str]:
    """``args`` with the value of option ``name`` (present exactly once) replaced."""
    assert args.count(name) == 1, name
    args = list(args)
    args[args.index(name) + 1] = value
    return args


def masked(args: tuple[str, ...]) -> list[str]:
    """``args`` with the values of the seed-dependent options blanked."""
    args = list(args)
    for i, word in enumerate(args[:-1]):
        if word in SEED_OPTIONS:
            args[i + 1] = "<seed-dependent>"
    return args


def test_the_seeds_of_a_cell_differ_only_in_seed_dependent_arguments():
    groups: dict[tuple[str, str, float], list[tuple[int, tuple, tuple]]] = {}
    for fit, test in parsed_lines():
        mechanism, dataset, fraction, seed = cell_of(fit)
        groups.setdefault((mechanism, dataset, fraction), []).append((seed, fit, test))
    assert len(parsed_lines()) == 550 and len(groups) == 110 == len(CELLS)
    for cell, runs in groups.items():
        assert sorted(seed for seed, _, _ in runs) == [0, 1, 2, 3, 4], cell
        first_fit, first_test = masked(runs[0][1]), masked(runs[0][2])
        for seed, fit, test in runs:
            assert masked(fit) == first_fit and masked(test) == first_test, (cell, seed)
            for args in (fit, test):
                assert option(args, "--seed_everything") == option(args, "--data.init_args.seed") == str(seed)
                for name in SEED_OPTIONS[2:]:
                    if name in args:
                        assert f"seed{seed}" in option(args, name), (cell, name)


# -- the real geometry: every cell instantiated by the CLI without running -------------------------
def geometry_args(fit: list[str], root: Path) -> list[str]:
    """The cell's fit arguments on ``geometry:`` backbones, for instantiation on a CPU machine."""
    args = fit[1:]  # without the subcommand: the CLI instantiates and does not run
    for name in ("--model.init_args.encoder", "--model.init_args.llm"):
        args = replace(args, name, f"geometry:{option(args, name)}")
    args = replace(args, "--trainer.default_root_dir", str(root))
    args = replace(args, "--trainer.callbacks.dirpath", str(root / "checkpoints"))
    # gpu.yaml asks for a GPU and bf16-mixed: this machine has no GPU, and nothing runs here, so the
    # trainer is a CPU float32 one; W&B is not started (the logger's arguments are still parsed).
    return [*args, "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.logger", "false"]


def cell_options_missing(model, fit: list[str]) -> list[str]:
    """The cell's feature / special-token / LLM-dropout options that did not reach ``model`` (a
    PerceptualLM)."""
    encoder, llm, missing = model.encoder, model.llm, []
    features = json.loads(option(fit, "--model.init_args.features")) if "--model.init_args.features" in fit else {}
    for key, value in features.items():
        if key == "final_norm":
            landed = encoder.apply_final_norm == value
        elif key == "layers":
            landed = encoder.num_selected_layers == value
        elif key in ("image_mean", "image_std"):
            landed = tuple(getattr(encoder, key)) == pytest.approx(tuple(value))
        else:  # num_frames, token_order, temporal, output, padding
            landed = getattr(encoder, key) == value
        if not landed:
            missing.append(f"features.{key}")
    if "--model.init_args.special_tokens" in fit:
        for token in json.loads(option(fit, "--model.init_args.special_tokens")):
            if len(llm.tokenizer(token, add_special_tokens=False)["input_ids"]) != 1:
                missing.append(f"special token {token}")
    if "--model.init_args.llm_dropout" in fit and llm.dropout_in_training is not True:
        missing.append("llm_dropout")
    return missing


_GEOMETRY: dict[tuple[str, str, float], dict | Exception] = {}


def geometry_record(cell: tuple[str, str, float]) -> dict:
    """Build the cell at the real geometry once (kept: the numbers, not the model; or the error)."""
    if cell not in _GEOMETRY:
        try:
            _GEOMETRY[cell] = _geometry_record(cells()[cell])
        except Exception as error:  # noqa: BLE001 - raised again for every caller
            _GEOMETRY[cell] = error
    if isinstance(_GEOMETRY[cell], Exception):
        raise _GEOMETRY[cell]
    return _GEOMETRY[cell]


def _geometry_record(fit: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as root:
        built = cli(geometry_args(fit, Path(root)), run=False)
    module, trainer, data = built.model, built.trainer, built.datamodule
    model = module.model
    targets = len(getattr(model.injection, "layer_indices", []))
    D, H = model.encoder.embed_dim, model.llm.hidden_size
    return {
        "trainable": model.num_trainable_parameters,
        # llm=None: the DePALM mechanisms' formulas use D, W, V, H, Q, n, P and X only (no LoRA or head counts)
        "formula": formula_value(model.preset, D, H, None, targets), "D": D, "H": H, "targets": targets,
        "encoder": model.encoder.name, "llm": model.llm.name, "missing": cell_options_missing(model, fit),
        "on_meta": on_meta(model.encoder) and on_meta(model.llm),
        "real_trainable": not any(p.is_meta for p in model.parameters() if p.requires_grad),
        "lr": module.hparams.lr, "decay_all_parameters": module.hparams.decay_all_parameters,
        "gradient_clip_val": trainer.gradient_clip_val, "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "max_epochs": trainer.max_epochs, "batch_size": data.batch_size, "template": data.template,
        "augment": data.augment, "fraction": data.fraction, "seed": data.seed,
    }


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_cell_builds_at_the_real_geometry(cell):
    fit = cells()[cell]
    record = geometry_record(cell)
    assert record["encoder"] == f"geometry:{option(fit, '--model.init_args.encoder')}"
    assert record["llm"] == f"geometry:{option(fit, '--model.init_args.llm')}"
    assert record["on_meta"] and record["real_trainable"]  # frozen backbones on meta, the interface real
    assert not record["missing"]
    assert record["trainable"] == record["formula"], (record["trainable"], record["formula"])
    fraction = option(fit, "--data.init_args.fraction")
    assert record["lr"] == float(option(fit, "--model.init_args.lr")) and record["decay_all_parameters"] is True
    assert record["gradient_clip_val"] == float(option(fit, "--trainer.gradient_clip_val"))
    assert record["accumulate_grad_batches"] == int(option(fit, "--trainer.accumulate_grad_batches"))
    assert record["max_epochs"] == int(option(fit, "--trainer.max_epochs"))
    assert record["batch_size"] == int(option(fit, "--data.init_args.batch_size"))
    assert record["template"] == json.loads(option(fit, "--data.init_args"))["template"]
    assert record["augment"] == "depalm" == option(fit, "--data.init_args.augment")
    assert record["fraction"] == (None if fraction == "null" else float(fraction)) and record["seed"] == 0


# Known counts at LLaMA-7B / CLIP ViT-L/14 (D=1024, H=4096); EVA02-CLIP-L is 1024 wide and OPT-6.7B
# 4096 wide, so they hold on those columns too.
KNOWN = {"depalm-c-attn": 21_060_609, "depalm-r-linear": 88_100_864, "depalm-qp-l0": 17_888_256,
         "mapl": 2_906_368, "limber-1": 4_198_400}
# The table's columns; the VQA columns on OPT-6.7B + CLIP-L with the same options share one.
COLUMNS = {("textcaps", 1.0): "LLaMA+CLIP-L", ("coco_karpathy", 1.0): "LLaMA+EVA02-L",
           ("coco_karpathy", 0.01): "LLaMA+EVA02-L 1%", ("vqav2", 1.0): "OPT+CLIP-L",
           ("vqav2", 0.01): "OPT+CLIP-L 1%", ("audiocaps", 1.0): "OPT+CLAP", ("msrvtt", 1.0): "LLaMA+TimeSformer"}
SAME_AS_VQAV2 = ("textvqa", "okvqa", "aokvqa")


def reason(error: Exception) -> str:
    """The innermost message of a CLI error (jsonargparse lists it under ``Errors:``)."""
    lines = [line.strip() for line in str(error).splitlines()]
    inner = [line[2:] for line in lines if line.startswith("- ") and "Expected a <class 'NoneType'>" not in line]
    return f"{type(error).__name__}: {(inner or lines or [''])[0][:200]}"


def test_parameter_table(capsys):
    """Trainable parameters of every cell at the real geometry, mechanism x column (printed)."""
    table, failures = {}, {}
    for cell in CELLS:
        try:
            table[cell] = geometry_record(cell)["trainable"]
        except Exception as error:  # noqa: BLE001 - reported in the table and below
            failures[cell] = reason(error)
    width = max(map(len, COLUMNS.values())) + 2
    lines = ["mechanism".ljust(18) + "".join(label.rjust(width) for label in COLUMNS.values())]
    for mechanism in ROWS:
        row = [f"{table[c]:,}" if (c := (mechanism, *column)) in table else "fails" for column in COLUMNS]
        lines.append(mechanism.ljust(18) + "".join(value.rjust(width) for value in row))
    with capsys.disabled():
        print("\n\nTrainable parameters at the paper's geometry (geometry: backbones, built by the CLI; "
              f"{', '.join(SAME_AS_VQAV2)} as vqav2)\n" + "\n".join(lines))
        for cell, why in failures.items():
            print(f"  {cell_id(cell)}: {why}")
    for mechanism in ROWS:
        for dataset in SAME_AS_VQAV2:
            if (mechanism, dataset, 1.0) in table and (mechanism, "vqav2", 1.0) in table:
                assert table[mechanism, dataset, 1.0] == table[mechanism, "vqav2", 1.0], (mechanism, dataset)
    for mechanism, count in KNOWN.items():
        for dataset in ("textcaps", "coco_karpathy", "vqav2"):
            if (mechanism, dataset, 1.0) in table:
                assert table[mechanism, dataset, 1.0] == count, (mechanism, dataset)
    assert not failures, sorted(map(cell_id, failures))


# -- one optimizer step on tiny stand-ins ----------------------------------------------------------
# One tiny random-init stand-in per real backbone, of the same kind and loaded through the same zoo
# path where the zoo allows it:
# - open_clip:ViT-L-14:openai -> open_clip:<tiny config>: an open_clip VisionTransformer with QuickGELU
#   (6 blocks of width 64, 32 px, 8 px patches: CLS + 4 x 4), registered from a config (the zoo's
#   open_clip: prefix builds any registered config, without weights when no tag is given).
# - open_clip:EVA02-L-14:merged2b_s4b_b131k -> open_clip:<tiny config>: the same open_clip tower
#   around timm's EVA02 trunk, at timm's eva02_tiny_patch14_224 (12 blocks of width 192, CLS + 16 x 16),
#   so the cells' final_norm: false reads the raw trunk blocks as for the real one.
# - timesformer:facebook/timesformer-base-finetuned-k400 -> timesformer:<folder>: test-tiny-timesformer's
#   config (width 64, 32 px, 8 px patches, 4 frames, so the cells' 16 frames resize the time
#   embeddings as for the real 8-frame checkpoint) with 6 blocks instead of 4 (eP-ALM reads the last
#   6 encoder layers), saved as a checkpoint folder and loaded by the real name's loader.
# - clap:laion/clap-htsat-unfused -> test-tiny-clap (with its audio projection: output=projected).
# - huggyllama/llama-7b -> test-tiny-llama; facebook/opt-6.7b -> test-tiny-opt, except on AudioCaps:
#   there CLAP's 1 + 1024 tokens enter at the input of an LLM with OPT-6.7B's 2048 learned positions,
#   and test-tiny-opt has 512, so that column's OPT is test-tiny-opt's config with 2048 positions,
#   saved as a folder (the hub-id / folder loading path).
TINY_TEXT = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
OPEN_CLIP_CONFIGS = {
    "open_clip:ViT-L-14:openai": ("test-tiny-ViT-L-14-standin", {
        "embed_dim": 32, "quick_gelu": True, "text_cfg": TINY_TEXT,
        "vision_cfg": {"image_size": 32, "layers": 6, "width": 64, "head_width": 16, "patch_size": 8}}),
    "open_clip:EVA02-L-14:merged2b_s4b_b131k": ("test-tiny-EVA02-L-14-standin", {
        "embed_dim": 32, "custom_text": True, "text_cfg": TINY_TEXT,
        "vision_cfg": {"image_size": 224, "timm_model_name": "eva02_tiny_patch14_224", "timm_model_pretrained": False,
                       "timm_pool": "token", "timm_proj": None}}),
}
TIMESFORMER, OPT = "timesformer:facebook/timesformer-base-finetuned-k400", "facebook/opt-6.7b"
TINY_NAMES = {"clap:laion/clap-htsat-unfused": "test-tiny-clap", "huggyllama/llama-7b": "test-tiny-llama",
              OPT: "test-tiny-opt"}
TINY_WIDTH = 64


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, str]:
    """Real backbone name -> its tiny stand-in's zoo name (``"audiocaps"``: the OPT of that column)."""
    import open_clip
    from transformers import TimesformerConfig, TimesformerModel

    from perceptlm.zoo.tiny import TINY_TIMESFORMER, tiny_llm_model

    folder = tmp_path_factory.mktemp("stand_ins")
    names = dict(TINY_NAMES)
    for real, (name, config) in OPEN_CLIP_CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(folder / f"{name}.json")
        names[real] = f"open_clip:{name}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        TimesformerModel(TimesformerConfig(**{**TINY_TIMESFORMER, "num_hidden_layers": 6})).save_pretrained(
            folder / "timesformer")
    names[TIMESFORMER] = f"timesformer:{folder / 'timesformer'}"
    model, tokenizer = tiny_llm_model("opt", max_position_embeddings=2048)
    model.save_pretrained(folder / "opt-2048")
    tokenizer.save_pretrained(folder / "opt-2048")
    names["audiocaps"] = str(folder / "opt-2048")
    return names


TRAIN_SAMPLES = 16  # the most samples a tiny step reads (see micro_batch)


# The fixture writers give 2-4 training samples; a step of the widest cell reads 16, so each set's
# training split is extended to TRAIN_SAMPLES with copies of its records under new ids (the same
# official files, more rows; media files copied where a sample is one media file).
def _copies(count: int) -> range:
    return range(1, -(-TRAIN_SAMPLES // count))


def _extend_karpathy(root: Path) -> None:
    data = json.loads((root / "dataset_coco.json").read_text())
    train = [r for r in data["images"] if r["split"] == "train"]
    data["images"] += [{**r, "cocoid": r["cocoid"] + 1000 * k, "imgid": r["imgid"] + 1000 * k}
                       for k in _copies(len(train)) for r in train]
    (root / "dataset_coco.json").write_text(json.dumps(data))


def _extend_vqa(root: Path, question_file: str, annotation_file: str) -> None:
    questions = json.loads((root / question_file).read_text())
    annotations = json.loads((root / annotation_file).read_text())
    count = len(questions["questions"])
    for k in _copies(count):
        questions["questions"] += [{**q, "question_id": q["question_id"] + 1000 * k} for q in questions["questions"][:count]]
        annotations["annotations"] += [{**a, "question_id": a["question_id"] + 1000 * k}
                                       for a in annotations["annotations"][:count]]
    (root / question_file).write_text(json.dumps(questions))
    (root / annotation_file).write_text(json.dumps(annotations))


def _extend_records(path: Path, key: str | None, field: str, new_id) -> None:
    data = json.loads(path.read_text())
    records = data if key is None else data[key]
    count = len(records)
    records += [{**r, field: new_id(r[field], k)} for k in _copies(count) for r in records[:count]]
    path.write_text(json.dumps(data))


def _extend_textcaps(root: Path) -> None:
    path = root / "TextCaps_0.1_train.json"
    data = json.loads(path.read_text())
    images = sorted({r["image_id"] for r in data["data"]})
    extra = []
    for k in _copies(len(images)):
        for image in images:
            shutil.copy(root / "train_images" / f"{image}.jpg", root / "train_images" / f"{image}x{k}.jpg")
        extra += [{**r, "image_id": f"{r['image_id']}x{k}", "image_name": f"{r['image_id']}x{k}",
                   "caption_id": r["caption_id"] + 1000 * k} for r in data["data"]]
    data["data"] += extra
    path.write_text(json.dumps(data))


def _extend_audiocaps(root: Path) -> None:
    with open(root / "train.csv", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    extra = []
    for k in _copies(len(rows)):
        for audiocap_id, youtube_id, start, caption in rows:
            shutil.copy(root / "audio" / "train" / f"{youtube_id}_{start}.wav",
                        root / "audio" / "train" / f"{youtube_id}x{k}_{start}.wav")
            extra.append([str(int(audiocap_id) + 1000 * k), f"{youtube_id}x{k}", start, caption])
    with open(root / "train.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows, *extra])


def _extend_msrvtt(root: Path) -> None:
    data = json.loads((root / "MSRVTT_data.json").read_text())
    with open(root / "MSRVTT_train.7k.csv", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    videos = {v["video_id"]: v for v in data["videos"]}
    train = [video for _, video in rows]
    for k in _copies(len(train)):
        for video in train:
            copy = f"{video}x{k}"
            shutil.copy(root / "videos" / "all" / f"{video}.mp4", root / "videos" / "all" / f"{copy}.mp4")
            data["videos"].append({**videos[video], "video_id": copy, "id": len(data["videos"])})
            data["sentences"] += [{**s, "video_id": copy, "sen_id": len(data["sentences"]) + i}
                                  for i, s in enumerate(s for s in data["sentences"] if s["video_id"] == video)]
            rows.append([str(len(rows)), copy])
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    with open(root / "MSRVTT_train.7k.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory, audiocaps_root) -> dict[str, Path]:  # noqa: F811 - the imported fixture
    """Each benchmark column's tiny data in its official layout, written once for the module."""
    from perceptlm.data import OKVQADataModule, VQAv2DataModule

    roots = {}
    for dataset, write in IMAGE_WRITERS.items():
        roots[dataset] = root = tmp_path_factory.mktemp(dataset)
        write(root)
    _extend_karpathy(roots["coco_karpathy"])
    for dataset, module in (("vqav2", VQAv2DataModule), ("okvqa", OKVQADataModule)):
        _extend_vqa(roots[dataset], module.question_file.format(split="train"),
                    module.annotation_file.format(split="train"))
    _extend_records(roots["aokvqa"] / "aokvqa_v1p0_train.json", None, "question_id", lambda v, k: f"{v}{k}")
    _extend_records(roots["textvqa"] / "TextVQA_0.5.1_train.json", "data", "question_id", lambda v, k: v + 1000 * k)
    _extend_textcaps(roots["textcaps"])
    roots["audiocaps"] = audiocaps_root
    _extend_audiocaps(audiocaps_root)
    roots["msrvtt"] = make_msrvtt(tmp_path_factory.mktemp("msrvtt"))
    _extend_msrvtt(roots["msrvtt"])
    return roots


class StepProbe(Callback):
    """Records the parameters before training, the micro-batches and optimizer steps, and which
    parameters had a non-zero gradient at the step."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        self.micro_batches, self.steps, self.nonzero_grads = 0, 0, set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.micro_batches += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.steps += 1
        self.nonzero_grads |= {n for n, p in pl_module.named_parameters() if p.grad is not None and p.grad.any()}


def micro_batch(fit: list[str]) -> int:
    """The tiny runs' micro-batch size: the cell's, at most 2 (accumulation unchanged), so a step reads
    at most 2 x 8 or 1 x 16 samples; collation still pads several samples together."""
    return min(int(option(fit, "--data.init_args.batch_size")), 2)


def with_tiny_widths(fit: list[str]) -> list[str]:
    """``fit`` with the preset's fixed interface widths (DePALM's adapter.embed_dim: 1024, 768, 256; c-attn's
    1024-wide block) set to TINY_WIDTH, merged into the cell's own connector options: those widths
    are sized for D=1024 / H=4096 backbones, and at full width the CPU step of a 257-token cell
    takes seconds per micro-batch. Their full-size counts are checked at the real geometry."""
    from perceptlm import presets

    preset, args = presets.get(cell_of(fit)[0]), list(fit)
    if isinstance(preset.connector.get("width"), int):
        name = "--model.init_args.connector"
        connector = {**(json.loads(option(fit, name)) if name in fit else {}), "width": TINY_WIDTH}
        args = replace(args, name, json.dumps(connector)) if name in fit else [*args, name, json.dumps(connector)]
    if isinstance(preset.injection_options.get("width"), int):
        assert "--model.init_args.injection_options" not in fit
        args += ["--model.init_args.injection_options", json.dumps({"width": TINY_WIDTH})]
    return args


def step_args(fit: list[str], root: Path, data_root: Path, stand_ins: dict[str, str]) -> list[str]:
    args = with_tiny_widths(fit)
    args = replace(args, "--model.init_args.encoder", stand_ins[option(fit, "--model.init_args.encoder")])
    llm = option(fit, "--model.init_args.llm")
    args = replace(args, "--model.init_args.llm", stand_ins["audiocaps" if cell_of(fit)[1] == "audiocaps" else llm])
    args = replace(args, "--data.init_args.batch_size", str(micro_batch(fit)))
    # A 1% subset of a 16-sample fixture is one sample, too few for the cell's accumulation: the
    # tiny run reads the whole fixture (the fraction itself is checked at the real geometry).
    args = replace(args, "--data.init_args.fraction", "null")
    args = replace(args, "--data.init_args.num_workers", "0")  # in-process loading
    args = replace(args, "--trainer.default_root_dir", str(root))
    args = replace(args, "--trainer.callbacks.dirpath", str(root / "checkpoints"))
    return [
        *args, "--data.init_args.data_root", str(data_root),
        # gpu.yaml's GPU and bf16-mixed: CPU float32 here; no W&B (logger off).
        "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.logger", "false",
        "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.callbacks+=test_depalm_cells.StepProbe",
    ]


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_one_training_step_on_tiny_stand_ins(cell, stand_ins, data_roots, tmp_path):
    fit = cells()[cell]
    fitted = cli(step_args(fit, tmp_path / "run", data_roots[cell[1]], stand_ins))
    probe = next(c for c in fitted.trainer.callbacks if isinstance(c, StepProbe))
    module = fitted.model
    assert not cell_options_missing(module.model, fit)  # the cell's own options work on the stand-ins
    accumulate = int(option(fit, "--trainer.accumulate_grad_batches"))
    assert fitted.trainer.global_step == 1 and probe.steps == 1
    assert probe.micro_batches == accumulate  # one step after the cell's accumulation
    assert fitted.trainer.accumulate_grad_batches == accumulate
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()  # the cell's ModelCheckpoint
    after = dict(module.named_parameters())
    frozen = [n for n, p in after.items() if not p.requires_grad]
    trainable = [n for n, p in after.items() if p.requires_grad]
    assert frozen and trainable
    assert all(torch.equal(probe.before[n], after[n]) for n in frozen)  # encoder and LLM untouched
    first = next(n for n in trainable if n.startswith("model.connector."))
    assert not torch.equal(probe.before[first], after[first].detach()), first
    assert probe.nonzero_grads and probe.nonzero_grads <= set(trainable)
