"""The DePALM main table as runs, cell by cell as its authors ran it: every mechanism x benchmark
column x seed of Vallaeys et al. 2024 (*Improved Baselines for Data-efficient Perceptual Augmentation
of LLMs*, the main comparison: 11 mechanisms, 10 columns, 5-run means).

    python experiments/paper/depalm/grid.py write [--out DIR]     # commands.txt + sweeps/<dataset>.yaml
    python experiments/paper/depalm/grid.py table                 # the per-cell recipes, as markdown
    python experiments/paper/depalm/grid.py run --dataset D --mechanism M --fraction F --seed S [--dry-run]

Each cell's recipe is read from :data:`SCRIPTS`: the Hydra overrides of the released per-cell script
``experiments/<folder>/<folder>_<mechanism>*.sh`` of facebookresearch/DePALM (the scripts that
produced the table), verbatim. :func:`recipe` interprets them with the defaults of the released
``config/`` (LLM, encoder, learning rate, gradient clipping, micro-batch x accumulation, epochs, data
fraction, mapper options) and checks that the preset's own fields (prompt tokens, mapper width and
depth, resampler, kept tokens) agree with them. ``write`` regenerates the committed files; ``run``
runs one cell (``perceptlm fit`` then ``perceptlm test``); the W&B sweeps call it. Paths are relative
to the repository root. Pure standard library (+ PyYAML for the sweep files).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
PROGRAM = "experiments/paper/depalm/grid.py"
CONFIGS = "experiments/configs"
RUNS = "runs/depalm"
PROJECT = "perceptlm-depalm"
GROUP = "depalm"  # every run of the grid: one W&B group, one comparison workspace
SEEDS = (0, 1, 2, 3, 4)  # DePALM reports 5-run means
NUM_WORKERS = 8

# The table's rows, in its order: perceptlm preset -> (the paper's name, the released script's name).
MECHANISMS = {
    "limber-1": ("LiMBeR(1)", "limber-1"),
    "limber-all": ("LiMBeR(all)", "limber-all"),
    "mapl": ("MAPL", "mapl"),
    "epalm": ("eP-ALM", "epalm"),
    "depalm-qp-l0": ("QP,L0", "depalm-QP-L0"),
    "depalm-qp-inner": ("QP,inner", "depalm-QP-inner"),
    "depalm-r-avgpool": ("R-avgpool", "depalm-R-avgpool-L0"),
    "depalm-r-linear": ("R-linear", "depalm-R-linear-L0"),
    "depalm-r-qpmapper": ("R-QPMapper", "depalm-R-QPMapper-L0"),
    "depalm-r-rand": ("R-rand", "depalm-R-rand-L0"),
    "depalm-c-attn": ("c-attn", "depalm-c-attn"),
}

# The released configs' names -> perceptlm zoo names (read from the local Hugging Face cache).
LLMS = {
    "llama": "huggyllama/llama-7b",  # LLaMA-7B (DePALM's config/llm/llama.yaml: the same weights, another upload)
    "opt": "facebook/opt-6.7b",  # OPT-6.7B (config/llm/opt.yaml)
}
ENCODERS = {
    "clip-vit-L": "open_clip:ViT-L-14:openai",  # config/feat_model/clip-vit-L.yaml (DePALM's default)
    "eva-clip-L": "open_clip:EVA02-L-14:merged2b_s4b_b131k",  # timm eva02_large_patch14_clip_224.merged2b
    "clap": "clap:laion/clap-htsat-unfused",  # the audiocaps_100%_clap scripts (MAViL has no public weights)
    "timesformer": "timesformer:facebook/timesformer-base-finetuned-k400",
}
# How DePALM reads each encoder (config/feat_model/*.yaml, depalm/models/perceptual/): feature-selection
# fields of the preset. Images are squashed to 224x224 at evaluation by --data.init_args.augment depalm.
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
ENCODER_FEATURES: dict[str, dict[str, Any]] = {
    "clip-vit-L": {},  # norm: auto, the vision model's post_layernorm on every layer (open_clip's ln_post)
    "eva-clip-L": {"final_norm": False},  # norm: null, the raw block outputs
    # global + fine-grained embeddings through the audio projection, L2-normalised (1025 x 512, one
    # reading DePALM stacks as identical layers); clips under 10 s filled by repeating samples
    "clap": {"output": "projected", "padding": "sample_repeat"},
    # 16 frames (the 8-frame time embeddings interpolated), every block through the model's norm, the
    # model's patch-major order; frames normalised with CLIP's mean and std (depalm/data/data/video.py)
    "timesformer": {"num_frames": 16, "token_order": "patch", "image_mean": CLIP_MEAN, "image_std": CLIP_STD},
}
# The answer token and caption prompt of config/llm/opt.yaml; LLaMA has neither.
ANSWER_TOKEN = {"opt": "</a>", "llama": ""}
CAPTION_PROMPT = {"opt": "Answer: ", "llama": ""}


@dataclass(frozen=True)
class Column:
    """One benchmark column: the data config, the training fraction, the released scripts' folder
    and the overrides every script of that folder shares (used for a cell with no released script)."""

    dataset: str
    fraction: float
    folder: str
    shared: str
    task: str  # "caption", "vqa" or "textvqa": the prompt format


COLUMNS = {
    "coco": Column("coco_karpathy", 1.0, "coco_100%", "dataset=coco feat_model=eva-clip-L", "caption"),
    "coco-1pct": Column("coco_karpathy", 0.01, "coco_1%", "dataset=coco feat_model=eva-clip-L "
                        "dataset.splits.train.max_rows=0.01 training.epochs=30", "caption"),
    "vqav2": Column("vqav2", 1.0, "vqa_100%", "dataset=vqa llm=opt", "vqa"),
    "vqav2-1pct": Column("vqav2", 0.01, "vqa_1%", "dataset=vqa llm=opt dataset.splits.train.max_rows=0.01 "
                         "training.epochs=30", "vqa"),
    "textcaps": Column("textcaps", 1.0, "textcaps_100%", "dataset=textcaps llm=llama training.epochs=20", "caption"),
    "textvqa": Column("textvqa", 1.0, "textvqa_100%", "dataset=textvqa llm=opt training.epochs=20", "textvqa"),
    "okvqa": Column("okvqa", 1.0, "okvqa_100%", "dataset=okvqa llm=opt training.epochs=20", "vqa"),
    "aokvqa": Column("aokvqa", 1.0, "aokvqa_100%", "dataset=aokvqa llm=opt training.epochs=20", "vqa"),
    "audiocaps": Column("audiocaps", 1.0, "audiocaps_100%_clap", "dataset=audiocaps llm=opt training.epochs=12 "
                        "feat_model=clap dataset.audio_model_type=clap feat_model.load_float16=false", "caption"),
    "msrvtt": Column("msrvtt", 1.0, "msrvtt_100%", "dataset=msrvtt llm=llama feat_model=timesformer", "caption"),
}

# The released scripts' overrides (after ``python run.py run_dir=...``), verbatim, by column and preset.
# A cell missing here has no released script: its recipe is the column's shared overrides with the
# mechanism's experiment and DePALM's config defaults (see RECIPES_WITHOUT_SCRIPT).
_C = "experiment=depalm_resampler"
SCRIPTS: dict[str, dict[str, str]] = {
    "coco": {
        "depalm-qp-l0": "dataset=coco feat_model=eva-clip-L experiment=depalm mod=insert_l0 finetune.prompt_tuning.new_tokens=1 adapter.transformer.n_layers=2 exp_name=depalm-QP-L0 training.optimizer.args.lr=4e-4",
        "depalm-qp-inner": "dataset=coco feat_model=eva-clip-L experiment=depalm adapter.transformer.n_layers=2 exp_name=depalm-QP-inner dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-r-qpmapper": f"dataset=coco feat_model=eva-clip-L {_C} resampler.type=qsformer adapter.embed_dim=768 training.clip_norm=0.5 exp_name=depalm-R-QPMapper-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2 training.optimizer.args.lr=4e-4",
        "depalm-r-avgpool": f"dataset=coco feat_model=eva-clip-L {_C} resampler.type=avg_pool adapter.embed_dim=llm_dim training.optimizer.args.lr=1e-3 exp_name=depalm-R-avgpool-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-r-linear": f"dataset=coco feat_model=eva-clip-L {_C} resampler.type=linear adapter.embed_dim=llm_dim training.optimizer.args.lr=1e-3 exp_name=depalm-R-linear-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-r-rand": f"dataset=coco feat_model=eva-clip-L {_C} resampler.type=rand_any_patch resampler.reduction_fact=1 adapter.embed_dim=auto training.optimizer.args.lr=1e-3 exp_name=depalm-R-rand-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-c-attn": "dataset=coco feat_model=eva-clip-L experiment=depalm mod=cross_attn exp_name=depalm-c-attn dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "epalm": "dataset=coco feat_model=eva-clip-L experiment=epalm exp_name=epalm training.optimizer.args.lr=1e-3",
        "limber-1": "dataset=coco feat_model=eva-clip-L experiment=limber adapter.source.keep_features.n_elements=1 exp_name=limber-1",
        "limber-all": "dataset=coco feat_model=eva-clip-L experiment=limber exp_name=limber-all dataset.splits.train.batch_size=4 training.accumulate_steps=4",
        "mapl": "dataset=coco feat_model=eva-clip-L experiment=mapl exp_name=mapl training.clip_norm=0.2",
    },
    "coco-1pct": {
        "depalm-qp-l0": "dataset=coco feat_model=eva-clip-L dataset.splits.train.max_rows=0.01 training.epochs=30 experiment=depalm mod=insert_l0 finetune.prompt_tuning.new_tokens=1 adapter.transformer.n_layers=2 exp_name=depalm-QP-L0",
        "depalm-qp-inner": "dataset=coco feat_model=eva-clip-L dataset.splits.train.max_rows=0.01 training.epochs=30 experiment=depalm adapter.transformer.n_layers=2 exp_name=depalm-QP-inner dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-r-qpmapper": f"dataset=coco feat_model=eva-clip-L dataset.splits.train.max_rows=0.01 training.epochs=30 {_C} resampler.type=qsformer adapter.embed_dim=768 training.clip_norm=0.5 exp_name=depalm-R-QPMapper-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2 adapter.transformer.n_layers=1 training.optimizer.args.lr=1e-3",
        "depalm-r-avgpool": f"dataset=coco feat_model=eva-clip-L dataset.splits.train.max_rows=0.01 training.epochs=30 {_C} resampler.type=avg_pool adapter.embed_dim=llm_dim exp_name=depalm-R-avgpool-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2 training.optimizer.args.lr=1e-3",
        "depalm-r-linear": f"dataset=coco feat_model=eva-clip-L dataset.splits.train.max_rows=0.01 training.epochs=30 {_C} resampler.type=linear adapter.embed_dim=llm_dim training.optimizer.args.lr=1e-3 exp_name=depalm-R-linear-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-r-rand": f"dataset=coco feat_model=eva-clip-L dataset.splits.train.max_rows=0.01 training.epochs=30 {_C} resampler.type=rand_any_patch resampler.reduction_fact=1 adapter.embed_dim=auto training.optimizer.args.lr=1e-3 exp_name=depalm-R-rand-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "epalm": "dataset=coco feat_model=eva-clip-L dataset.splits.train.max_rows=0.01 training.epochs=30 experiment=epalm exp_name=epalm training.optimizer.args.lr=1e-3",
        "limber-1": "dataset=coco feat_model=eva-clip-L dataset.splits.train.max_rows=0.01 training.epochs=30 experiment=limber adapter.source.keep_features.n_elements=1 exp_name=limber-1 training.optimizer.args.lr=1e-3",
        "limber-all": "dataset=coco feat_model=eva-clip-L dataset.splits.train.max_rows=0.01 training.epochs=30 experiment=limber exp_name=limber-all dataset.splits.train.batch_size=4 training.accumulate_steps=4",
        "mapl": "dataset=coco feat_model=eva-clip-L dataset.splits.train.max_rows=0.01 training.epochs=30 experiment=mapl exp_name=mapl",
    },
    "vqav2": {
        "depalm-qp-l0": "dataset=vqa llm=opt experiment=depalm mod=insert_l0 finetune.prompt_tuning.new_tokens=1 adapter.transformer.n_layers=2 exp_name=depalm-QP-L0 training.optimizer.args.lr=4e-4",
        "depalm-qp-inner": "dataset=vqa llm=opt experiment=depalm adapter.transformer.n_layers=2 exp_name=depalm-QP-inner dataset.splits.train.batch_size=8 training.accumulate_steps=2 training.optimizer.args.lr=4e-4",
        "depalm-r-qpmapper": f"dataset=vqa llm=opt {_C} resampler.type=qsformer adapter.embed_dim=768 training.clip_norm=0.5 exp_name=depalm-R-QPMapper-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2 training.optimizer.args.lr=4e-4",
        "depalm-r-avgpool": f"dataset=vqa llm=opt {_C} resampler.type=avg_pool adapter.embed_dim=llm_dim training.optimizer.args.lr=1e-3 exp_name=depalm-R-avgpool-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-r-linear": f"dataset=vqa llm=opt {_C} resampler.type=linear adapter.embed_dim=llm_dim exp_name=depalm-R-linear-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2 training.optimizer.args.lr=4e-4",
        "depalm-r-rand": f"dataset=vqa llm=opt {_C} resampler.type=rand_any_patch resampler.reduction_fact=1 adapter.embed_dim=auto training.optimizer.args.lr=1e-3 exp_name=depalm-R-rand-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-c-attn": "dataset=vqa llm=opt experiment=depalm mod=cross_attn exp_name=depalm-c-attn dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "epalm": "dataset=vqa llm=opt experiment=epalm exp_name=epalm training.optimizer.args.lr=1e-3",
        "limber-1": "dataset=vqa llm=opt experiment=limber adapter.source.keep_features.n_elements=1 exp_name=limber-1",
        "limber-all": "dataset=vqa llm=opt experiment=limber exp_name=limber-all dataset.splits.train.batch_size=4 training.accumulate_steps=4",
        "mapl": "dataset=vqa llm=opt experiment=mapl exp_name=mapl",
    },
    "vqav2-1pct": {
        "depalm-qp-l0": "dataset=vqa llm=opt dataset.splits.train.max_rows=0.01 training.epochs=30 experiment=depalm mod=insert_l0 finetune.prompt_tuning.new_tokens=1 adapter.transformer.n_layers=2 exp_name=depalm-QP-L0 training.clip_norm=0.2",
        "depalm-qp-inner": "dataset=vqa llm=opt dataset.splits.train.max_rows=0.01 training.epochs=30 experiment=depalm adapter.transformer.n_layers=2 exp_name=depalm-QP-inner dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-r-qpmapper": f"dataset=vqa llm=opt dataset.splits.train.max_rows=0.01 training.epochs=30 {_C} resampler.type=qsformer adapter.embed_dim=768 training.clip_norm=0.5 exp_name=depalm-R-QPMapper-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2 adapter.transformer.n_layers=1 training.optimizer.args.lr=4e-4",
        "depalm-r-avgpool": f"dataset=vqa llm=opt dataset.splits.train.max_rows=0.01 training.epochs=30 {_C} resampler.type=avg_pool adapter.embed_dim=llm_dim training.optimizer.args.lr=1e-3 exp_name=depalm-R-avgpool-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-r-linear": f"dataset=vqa llm=opt dataset.splits.train.max_rows=0.01 training.epochs=30 {_C} resampler.type=linear adapter.embed_dim=llm_dim training.optimizer.args.lr=1e-3 exp_name=depalm-R-linear-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-r-rand": f"dataset=vqa llm=opt dataset.splits.train.max_rows=0.01 training.epochs=30 {_C} resampler.type=rand_any_patch resampler.reduction_fact=1 adapter.embed_dim=auto training.optimizer.args.lr=1e-3 exp_name=depalm-R-rand-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-c-attn": "dataset=vqa llm=opt dataset.splits.train.max_rows=0.01 training.epochs=30 experiment=depalm mod=cross_attn exp_name=depalm-c-attn training.clip_norm=0.1 training.optimizer.args.lr=4e-3",
        "epalm": "dataset=vqa llm=opt dataset.splits.train.max_rows=0.01 training.epochs=30 experiment=epalm exp_name=epalm training.optimizer.args.lr=1e-3",
        "limber-1": "dataset=vqa llm=opt dataset.splits.train.max_rows=0.01 training.epochs=30 experiment=limber adapter.source.keep_features.n_elements=1 exp_name=limber-1",
        "limber-all": "dataset=vqa llm=opt dataset.splits.train.max_rows=0.01 training.epochs=30 experiment=limber exp_name=limber-all dataset.splits.train.batch_size=4 training.accumulate_steps=4",
        "mapl": "dataset=vqa llm=opt dataset.splits.train.max_rows=0.01 training.epochs=30 experiment=mapl exp_name=mapl",
    },
    "textcaps": {
        "depalm-qp-l0": "dataset=textcaps llm=llama training.epochs=20 experiment=depalm mod=insert_l0 finetune.prompt_tuning.new_tokens=1 adapter.transformer.n_layers=2 exp_name=depalm-QP-L0 training.optimizer.args.lr=1e-3",
        "depalm-qp-inner": "dataset=textcaps llm=llama training.epochs=20 experiment=depalm adapter.transformer.n_layers=2 exp_name=depalm-QP-inner dataset.splits.train.batch_size=8 training.accumulate_steps=2 training.optimizer.args.lr=1e-3",
        "depalm-r-qpmapper": f"dataset=textcaps llm=llama training.epochs=20 {_C} resampler.type=qsformer adapter.embed_dim=768 training.clip_norm=0.5 exp_name=depalm-R-QPMapper-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2 training.optimizer.args.lr=1e-3",
        "depalm-r-avgpool": f"dataset=textcaps llm=llama training.epochs=20 {_C} resampler.type=avg_pool adapter.embed_dim=llm_dim training.optimizer.args.lr=1e-3 exp_name=depalm-R-avgpool-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-r-linear": f"dataset=textcaps llm=llama training.epochs=20 {_C} resampler.type=linear adapter.embed_dim=llm_dim exp_name=depalm-R-linear-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2 training.optimizer.args.lr=4e-4",
        "depalm-r-rand": f"dataset=textcaps llm=llama training.epochs=20 {_C} resampler.type=rand_any_patch resampler.reduction_fact=1 adapter.embed_dim=auto exp_name=depalm-R-rand-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2 training.optimizer.args.lr=1e-3",
        "depalm-c-attn": "dataset=textcaps llm=llama training.epochs=20 experiment=depalm mod=cross_attn exp_name=depalm-c-attn dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "epalm": "dataset=textcaps llm=llama training.epochs=20 experiment=epalm exp_name=epalm training.optimizer.args.lr=1e-3",
        "limber-1": "dataset=textcaps llm=llama training.epochs=20 experiment=limber adapter.source.keep_features.n_elements=1 exp_name=limber-1",
        "limber-all": "dataset=textcaps llm=llama training.epochs=20 experiment=limber exp_name=limber-all dataset.splits.train.batch_size=4 training.accumulate_steps=4",
        "mapl": "dataset=textcaps llm=llama training.epochs=20 experiment=mapl exp_name=mapl training.optimizer.args.lr=1e-3",
    },
    "textvqa": {
        "depalm-qp-l0": "dataset=textvqa llm=opt training.epochs=20 experiment=depalm mod=insert_l0 finetune.prompt_tuning.new_tokens=1 adapter.transformer.n_layers=2 exp_name=depalm-QP-L0 training.optimizer.args.lr=1e-3 training.clip_norm=0.2 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-qp-inner": "dataset=textvqa llm=opt training.epochs=20 experiment=depalm adapter.transformer.n_layers=2 exp_name=depalm-QP-inner training.optimizer.args.lr=1e-3 training.clip_norm=0.2 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-r-qpmapper": f"dataset=textvqa llm=opt training.epochs=20 {_C} resampler.type=qsformer adapter.embed_dim=768 training.optimizer.args.lr=1e-3 training.clip_norm=0.5 exp_name=depalm-R-QPMapper-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-r-avgpool": f"dataset=textvqa llm=opt training.epochs=20 {_C} resampler.type=avg_pool adapter.embed_dim=llm_dim training.optimizer.args.lr=1e-3 exp_name=depalm-R-avgpool-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-r-linear": f"dataset=textvqa llm=opt training.epochs=20 {_C} resampler.type=linear adapter.embed_dim=llm_dim training.optimizer.args.lr=1e-3 exp_name=depalm-R-linear-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-r-rand": f"dataset=textvqa llm=opt training.epochs=20 {_C} resampler.type=rand_any_patch resampler.reduction_fact=1 adapter.embed_dim=auto training.optimizer.args.lr=1e-3 exp_name=depalm-R-rand-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "epalm": "dataset=textvqa llm=opt training.epochs=20 experiment=epalm exp_name=epalm training.optimizer.args.lr=1e-3",
        "limber-1": "dataset=textvqa llm=opt training.epochs=20 experiment=limber adapter.source.keep_features.n_elements=1 exp_name=limber-1 training.optimizer.args.lr=4e-4",
        "limber-all": "dataset=textvqa llm=opt training.epochs=20 experiment=limber exp_name=limber-all dataset.splits.train.batch_size=4 training.accumulate_steps=4",
        "mapl": "dataset=textvqa llm=opt training.epochs=20 experiment=mapl exp_name=mapl",
    },
    "okvqa": {
        "depalm-qp-l0": "dataset=okvqa llm=opt training.epochs=20 experiment=depalm mod=insert_l0 finetune.prompt_tuning.new_tokens=1 adapter.transformer.n_layers=2 exp_name=depalm-QP-L0 training.optimizer.args.lr=4e-4",
        "depalm-qp-inner": "dataset=okvqa llm=opt training.epochs=20 experiment=depalm adapter.transformer.n_layers=2 exp_name=depalm-QP-inner training.optimizer.args.lr=1e-3",
        "depalm-r-qpmapper": f"dataset=okvqa llm=opt training.epochs=20 {_C} resampler.type=qsformer adapter.embed_dim=768 training.optimizer.args.lr=1e-3 training.clip_norm=0.5 exp_name=depalm-R-QPMapper-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-r-avgpool": f"dataset=okvqa llm=opt training.epochs=20 {_C} resampler.type=avg_pool adapter.embed_dim=llm_dim training.optimizer.args.lr=1e-3 exp_name=depalm-R-avgpool-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-r-linear": f"dataset=okvqa llm=opt training.epochs=20 {_C} resampler.type=linear adapter.embed_dim=llm_dim training.optimizer.args.lr=1e-3 exp_name=depalm-R-linear-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-r-rand": f"dataset=okvqa llm=opt training.epochs=20 {_C} resampler.type=rand_any_patch resampler.reduction_fact=1 adapter.embed_dim=auto training.optimizer.args.lr=1e-3 exp_name=depalm-R-rand-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-c-attn": "dataset=okvqa llm=opt training.epochs=20 experiment=depalm mod=cross_attn exp_name=depalm-c-attn dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "epalm": "dataset=okvqa llm=opt training.epochs=20 experiment=epalm exp_name=epalm training.optimizer.args.lr=1e-3",
        "limber-1": "dataset=okvqa llm=opt training.epochs=20 experiment=limber adapter.source.keep_features.n_elements=1 exp_name=limber-1 training.optimizer.args.lr=1e-3",
        "limber-all": "dataset=okvqa llm=opt training.epochs=20 experiment=limber exp_name=limber-all dataset.splits.train.batch_size=4 training.accumulate_steps=4",
        "mapl": "dataset=okvqa llm=opt training.epochs=20 experiment=mapl exp_name=mapl training.optimizer.args.lr=1e-3",
    },
    "aokvqa": {
        "depalm-qp-l0": "dataset=aokvqa llm=opt training.epochs=20 experiment=depalm mod=insert_l0 finetune.prompt_tuning.new_tokens=1 adapter.transformer.n_layers=2 exp_name=depalm-QP-L0",
        "depalm-qp-inner": "dataset=aokvqa llm=opt training.epochs=20 experiment=depalm adapter.transformer.n_layers=2 exp_name=depalm-QP-inner dataset.splits.train.batch_size=8 training.accumulate_steps=2 training.optimizer.args.lr=1e-3",
        "depalm-r-qpmapper": f"dataset=aokvqa llm=opt training.epochs=20 {_C} resampler.type=qsformer adapter.embed_dim=768 training.optimizer.args.lr=1e-3 training.clip_norm=0.5 exp_name=depalm-R-QPMapper-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-r-avgpool": f"dataset=aokvqa llm=opt training.epochs=20 {_C} resampler.type=avg_pool adapter.embed_dim=llm_dim exp_name=depalm-R-avgpool-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2 training.optimizer.args.lr=1e-3",
        "depalm-r-linear": f"dataset=aokvqa llm=opt training.epochs=20 {_C} resampler.type=linear adapter.embed_dim=llm_dim training.optimizer.args.lr=1e-3 exp_name=depalm-R-linear-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-r-rand": f"dataset=aokvqa llm=opt training.epochs=20 {_C} resampler.type=rand_any_patch resampler.reduction_fact=1 adapter.embed_dim=auto training.optimizer.args.lr=1e-3 exp_name=depalm-R-rand-L0 dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "depalm-c-attn": "dataset=aokvqa llm=opt training.epochs=20 experiment=depalm mod=cross_attn exp_name=depalm-c-attn dataset.splits.train.batch_size=8 training.accumulate_steps=2",
        "epalm": "dataset=aokvqa llm=opt training.epochs=20 experiment=epalm exp_name=epalm training.optimizer.args.lr=1e-3",
        "limber-1": "dataset=aokvqa llm=opt training.epochs=20 experiment=limber adapter.source.keep_features.n_elements=1 exp_name=limber-1",
        "limber-all": "dataset=aokvqa llm=opt training.epochs=20 experiment=limber exp_name=limber-all dataset.splits.train.batch_size=4 training.accumulate_steps=4",
        "mapl": "dataset=aokvqa llm=opt training.epochs=20 experiment=mapl exp_name=mapl training.optimizer.args.lr=1e-3",
    },
    "audiocaps": {
        "depalm-qp-l0": "dataset=audiocaps dataset.splits.train.batch_size=4 training.accumulate_steps=4 llm=opt training.epochs=12 experiment=depalm mod=insert_l0 finetune.prompt_tuning.new_tokens=1 adapter.transformer.n_layers=2 exp_name=depalm-QP-L0 feat_model=clap dataset.audio_model_type=clap feat_model.load_float16=false training.clip_norm=0.2",
        "depalm-qp-inner": "dataset=audiocaps dataset.splits.train.batch_size=4 training.accumulate_steps=4 llm=opt training.epochs=12 experiment=depalm adapter.transformer.n_layers=2 exp_name=depalm-QP-inner feat_model=clap dataset.audio_model_type=clap feat_model.load_float16=false training.optimizer.args.lr=4e-4",
        "depalm-r-qpmapper": f"dataset=audiocaps llm=opt training.epochs=12 {_C} resampler.type=qsformer adapter.embed_dim=768 training.clip_norm=0.5 exp_name=depalm-R-QPMapper-L0 feat_model=clap dataset.audio_model_type=clap feat_model.load_float16=false dataset.splits.train.batch_size=4 training.accumulate_steps=4 training.optimizer.args.lr=4e-4",
        "depalm-r-avgpool": f"dataset=audiocaps llm=opt training.epochs=12 {_C} resampler.type=avg_pool adapter.embed_dim=llm_dim training.optimizer.args.lr=1e-3 exp_name=depalm-R-avgpool-L0 feat_model=clap dataset.audio_model_type=clap feat_model.load_float16=false dataset.splits.train.batch_size=4 training.accumulate_steps=4",
        "depalm-r-linear": f"dataset=audiocaps llm=opt training.epochs=12 {_C} resampler.type=linear adapter.embed_dim=llm_dim exp_name=depalm-R-linear-L0 feat_model=clap dataset.audio_model_type=clap feat_model.load_float16=false dataset.splits.train.batch_size=4 training.accumulate_steps=4 training.optimizer.args.lr=4e-4",
        "depalm-r-rand": f"dataset=audiocaps llm=opt training.epochs=12 {_C} resampler.type=rand_any_patch resampler.reduction_fact=1 adapter.embed_dim=auto training.optimizer.args.lr=1e-3 exp_name=depalm-R-rand-L0 feat_model=clap dataset.audio_model_type=clap feat_model.load_float16=false dataset.splits.train.batch_size=1 training.accumulate_steps=16",
        "depalm-c-attn": "dataset=audiocaps dataset.splits.train.batch_size=4 training.accumulate_steps=4 llm=opt training.epochs=12 experiment=depalm mod=cross_attn exp_name=depalm-c-attn feat_model=clap dataset.audio_model_type=clap feat_model.load_float16=false",
        "epalm": "dataset=audiocaps dataset.splits.train.batch_size=4 training.accumulate_steps=4 llm=opt training.epochs=12 experiment=epalm exp_name=epalm feat_model=clap dataset.audio_model_type=clap feat_model.load_float16=false training.optimizer.args.lr=1e-3",
        "limber-1": "dataset=audiocaps dataset.splits.train.batch_size=4 training.accumulate_steps=4 llm=opt training.epochs=12 experiment=limber adapter.source.keep_features.n_elements=1 exp_name=limber-1 feat_model=clap dataset.audio_model_type=clap feat_model.load_float16=false training.optimizer.args.lr=1e-3",
        "limber-all": "dataset=audiocaps llm=opt training.epochs=12 experiment=limber exp_name=limber-all feat_model=clap dataset.audio_model_type=clap feat_model.load_float16=false dataset.splits.train.batch_size=1 training.accumulate_steps=16",
        "mapl": "dataset=audiocaps dataset.splits.train.batch_size=4 training.accumulate_steps=4 llm=opt training.epochs=12 experiment=mapl exp_name=mapl feat_model=clap dataset.audio_model_type=clap feat_model.load_float16=false",
    },
    "msrvtt": {
        "depalm-qp-l0": "dataset=msrvtt llm=llama experiment=depalm mod=insert_l0 finetune.prompt_tuning.new_tokens=1 adapter.transformer.n_layers=2 exp_name=depalm-QP-L0 feat_model=timesformer dataset.splits.train.batch_size=8 training.accumulate_steps=2 training.optimizer.args.lr=1e-3",
        "depalm-qp-inner": "dataset=msrvtt llm=llama experiment=depalm adapter.transformer.n_layers=2 exp_name=depalm-QP-inner feat_model=timesformer dataset.splits.train.batch_size=2 training.accumulate_steps=8 training.optimizer.args.lr=1e-3",
        "depalm-r-qpmapper": f"dataset=msrvtt llm=llama {_C} resampler.type=qsformer adapter.embed_dim=768 training.clip_norm=0.5 exp_name=depalm-R-QPMapper-L0 feat_model=timesformer dataset.splits.train.batch_size=1 training.accumulate_steps=16 training.optimizer.args.lr=4e-4",
        "depalm-r-avgpool": f"dataset=msrvtt llm=llama {_C} resampler.type=avg_pool adapter.embed_dim=llm_dim exp_name=depalm-R-avgpool-L0 feat_model=timesformer dataset.splits.train.batch_size=8 training.accumulate_steps=2 training.optimizer.args.lr=4e-4",
        "depalm-r-linear": f"dataset=msrvtt llm=llama {_C} resampler.type=linear adapter.embed_dim=llm_dim exp_name=depalm-R-linear-L0 feat_model=timesformer dataset.splits.train.batch_size=2 training.accumulate_steps=8 training.optimizer.args.lr=4e-4",
        "depalm-r-rand": f"dataset=msrvtt llm=llama {_C} resampler.type=rand_any_patch resampler.reduction_fact=1 adapter.embed_dim=auto exp_name=depalm-R-rand-L0 feat_model=timesformer feat_model.average_time=true dataset.splits.train.batch_size=2 training.accumulate_steps=8 training.optimizer.args.lr=4e-4",
        "epalm": "dataset=msrvtt llm=llama experiment=epalm exp_name=epalm feat_model=timesformer dataset.splits.train.batch_size=8 training.accumulate_steps=2 training.optimizer.args.lr=1e-3",
        "limber-1": "dataset=msrvtt llm=llama experiment=limber adapter.source.keep_features.n_elements=1 exp_name=limber-1 feat_model=timesformer dataset.splits.train.batch_size=2 training.accumulate_steps=8 training.optimizer.args.lr=1e-3",
        "limber-all": "dataset=msrvtt llm=llama experiment=limber exp_name=limber-all feat_model=timesformer feat_model.average_time=true dataset.splits.train.batch_size=2 training.accumulate_steps=8",
        "mapl": "dataset=msrvtt llm=llama experiment=mapl exp_name=mapl feat_model=timesformer dataset.splits.train.batch_size=8 training.accumulate_steps=2",
    },
}

# The mechanism part of a script (experiment, mod, resampler and mapper overrides) for the cells the
# release has no script for (c-attn on COCO 1%, TextVQA, MSR-VTT): the mechanism as its other
# columns run it, with DePALM's config defaults for everything the scripts set per cell.
MECHANISM_OVERRIDES = {"depalm-c-attn": "experiment=depalm mod=cross_attn"}


def script(column: str, mechanism: str) -> tuple[str, bool]:
    """The released overrides of a cell and whether a released script gives them (else: the column's
    shared overrides plus the mechanism's)."""
    if mechanism in SCRIPTS[column]:
        return SCRIPTS[column][mechanism], True
    return f"{COLUMNS[column].shared} {MECHANISM_OVERRIDES[mechanism]}", False


# -- interpreting a script ---------------------------------------------------------------------------
# config/experiment/<name>.yaml: input prompt tokens (finetune.prompt_tuning) and transformer depth.
EXPERIMENT_PROMPTS = {"depalm": 16, "depalm_resampler": 1, "epalm": 10, "limber": 0, "mapl": 0}
EXPERIMENT_MAPPER_LAYERS = {"depalm": 4, "mapl": 4}
EXPERIMENT_WIDTHS = {"depalm": 1024, "mapl": 256, "limber": None, "epalm": None}  # adapter.embed_dim
# The scripts' value overrides -> the Recipe field each sets, and its type.
VALUE_OVERRIDES: dict[str, tuple[str, Any]] = {
    "llm": ("llm", str),
    "feat_model": ("feat_model", str),
    "training.optimizer.args.lr": ("lr", float),
    "training.clip_norm": ("clip", float),
    "dataset.splits.train.batch_size": ("batch_size", int),
    "training.accumulate_steps": ("accumulation", int),
    "training.epochs": ("epochs", int),
    "dataset.splits.train.max_rows": ("fraction", float),
    "finetune.prompt_tuning.new_tokens": ("prompt_tokens", int),
    "adapter.transformer.n_layers": ("mapper_layers", int),
    "feat_model.average_time": ("average_time", lambda value: value == "true"),
}
@dataclass
class Recipe:
    """What a cell's script sets, with the released config defaults (config/run.yaml, experiment/,
    mod/): the backbones' config names, optimisation and data, and the mechanism's options."""

    llm: str = "llama"  # config/run.yaml; experiment=depalm also sets llama
    feat_model: str = "clip-vit-L"
    lr: float = 8e-4
    clip: float = 0.8
    batch_size: int = 16
    accumulation: int = 1
    epochs: int = 8
    fraction: float = 1.0
    prompt_tokens: int = 0  # finetune.prompt_tuning (disabled by default)
    mapper_layers: int | None = None  # adapter.transformer.n_layers (None: no transformer)
    average_time: bool = False
    released: bool = True
    checks: dict[str, Any] = field(default_factory=dict)  # mechanism options the preset must have


def recipe(column: str, mechanism: str) -> Recipe:
    """Interpret the cell's overrides; an override this function does not know raises. As in Hydra,
    the config groups (``experiment``, ``mod``) are composed first and every value override then
    wins over them, wherever it stands on the line."""
    text, released = script(column, mechanism)
    r = Recipe(released=released)
    items = [item.split("=", 1) for item in text.split()]
    groups = [(k, v) for k, v in items if k in ("experiment", "mod")]
    for key, value in groups + [(k, v) for k, v in items if k not in ("experiment", "mod")]:
        item = f"{key}={value}"
        if key == "experiment":  # config/experiment/<value>.yaml: prompt tokens and mapper depth
            r.prompt_tokens = EXPERIMENT_PROMPTS[value]
            r.mapper_layers = EXPERIMENT_MAPPER_LAYERS.get(value)
            if value in EXPERIMENT_WIDTHS:
                r.checks["width"] = EXPERIMENT_WIDTHS[value]
        elif key == "mod" and value == "cross_attn":  # config/mod/cross_attn.yaml
            r.clip, r.accumulation, r.mapper_layers = 0.05, 2, 1
        elif key == "mod" and value == "insert_l0":
            r.prompt_tokens = 1
        elif key in VALUE_OVERRIDES:
            name, convert = VALUE_OVERRIDES[key]
            setattr(r, name, convert(value))
        elif key == "adapter.embed_dim":
            r.checks["width"] = {"llm_dim": "llm", "auto": None}.get(value, int(value) if value.isdigit() else value)
        elif key == "resampler.type":  # the scripts' "qsformer" is not in the released code: qpmapper
            r.checks["mode"] = {"avg_pool": "avgpool", "rand_any_patch": "rand", "qsformer": "qpmapper"}.get(value, value)
        elif key == "adapter.source.keep_features.n_elements":
            r.checks["tokens"] = {"1": "cls"}[value]
        elif key in ("dataset", "exp_name", "resampler.reduction_fact", "dataset.audio_model_type",
                     "feat_model.load_float16"):
            continue  # the column / mechanism themselves; CLAP read in float32 as perceptlm always does
        else:
            raise ValueError(f"{column} / {mechanism}: the override {item!r} is not interpreted")
    return r


# -- cells -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    mechanism: str
    column: str
    seed: int

    @property
    def dataset(self) -> str:
        return COLUMNS[self.column].dataset

    @property
    def fraction(self) -> float:
        return COLUMNS[self.column].fraction

    @property
    def label(self) -> str:
        return f"{self.dataset}-{fraction_label(self.fraction)}-{self.mechanism}"

    @property
    def run_dir(self) -> str:
        return f"{RUNS}/{self.dataset}/{fraction_label(self.fraction)}/{self.mechanism}/seed{self.seed}"


def fraction_label(fraction: float) -> str:
    return f"{fraction * 100:g}pct"


def cells() -> list[Cell]:
    """Every run of the table, in a fixed order: column, mechanism, seed."""
    return [Cell(m, c, s) for c in COLUMNS for m in MECHANISMS for s in SEEDS]


def find_column(dataset: str, fraction: float) -> str:
    for name, column in COLUMNS.items():
        if column.dataset == dataset and column.fraction == fraction:
            return name
    valid = ", ".join(f"{c.dataset} {c.fraction:g}" for c in COLUMNS.values())
    raise ValueError(f"no column for dataset {dataset!r} at fraction {fraction:g}; valid: {valid}")


def template(column: str, llm: str) -> str:
    """The prompt DePALM's ``tokenize_input`` builds (config/dataset/*.yaml instructions, stripped, a
    space after a last character that is not one; OPT's caption prompt and answer token appended)."""
    task = COLUMNS[column].task
    if task == "vqa":  # "{prompt}\n\nAnswer:\n" stripped -> "...Answer:" + " "
        text = "{question}\n\nAnswer: "
    elif task == "textvqa":  # no instruction: "{prompt}" + " "
        text = "{question} "
    else:  # captions: an empty prompt, OPT's "Answer: " in its place
        text = CAPTION_PROMPT[llm]
    return text + ANSWER_TOKEN[llm]


@functools.cache
def preset_file(mechanism: str) -> dict[str, Any]:
    """The preset file ``perceptlm/presets/<mechanism>.yaml``, read once."""
    return yaml.safe_load((HERE.parents[2] / "perceptlm" / "presets" / f"{mechanism}.yaml").read_text())


def preset_field(mechanism: str, key: str) -> Any:
    """A field of the preset file of ``mechanism``."""
    return preset_file(mechanism).get(key)


def features(cell: Cell, r: Recipe) -> dict[str, Any]:
    """The preset's feature selection as DePALM reads this cell's encoder."""
    selection = dict(ENCODER_FEATURES[r.feat_model])
    if r.average_time:  # feat_model.average_time=true (DePALM's timesformer_avg reading)
        selection["temporal"] = "reshape_mean"
    layers = (preset_field(cell.mechanism, "features") or {}).get("layers", 1)
    if r.feat_model == "clap" and layers != 1:  # CLAP's one reading, which DePALM repeats as every layer
        selection["layers"] = 1
    return selection


def mismatches(column: str, mechanism: str) -> list[str]:
    """Where the preset file disagrees with what the cell's script sets (empty: the preset, with the
    cell's overrides, is the script's mechanism)."""
    r = recipe(column, mechanism)
    connector = preset_field(mechanism, "connector") or {}
    found = []
    if (preset_field(mechanism, "prompt_tokens") or 0) != r.prompt_tokens:
        found.append(f"prompt_tokens {preset_field(mechanism, 'prompt_tokens')} != {r.prompt_tokens}")
    if connector.get("type", "mapping") == "mapping" and connector.get("transformer") is not None:
        if connector.get("num_layers") != r.mapper_layers:
            found.append(f"mapper layers {connector.get('num_layers')} != {r.mapper_layers}")
    for key in ("width", "mode"):
        if key in r.checks and connector.get(key) != r.checks[key]:
            found.append(f"connector {key} {connector.get(key)!r} != {r.checks[key]!r}")
    if "tokens" in r.checks and (preset_field(mechanism, "features") or {}).get("tokens") != r.checks["tokens"]:
        found.append(f"features.tokens != {r.checks['tokens']!r}")
    return [f"{column} / {mechanism}: {m}" for m in found]


def model_overrides(cell: Cell, r: Recipe) -> list[str]:
    args: list[str] = []
    selection = features(cell, r)
    if selection:
        args += ["--model.init_args.features", json.dumps(selection)]
    if cell.mechanism == "depalm-r-qpmapper" and r.mapper_layers:  # 1% scripts: a global QPMapper -> 1 token
        args += ["--model.init_args.connector", json.dumps({"global_layers": r.mapper_layers})]
    if r.llm == "opt":
        args += ["--model.init_args.special_tokens", json.dumps([ANSWER_TOKEN["opt"]]),
                 "--model.init_args.llm_dropout", "true"]
    return args


def config_files(cell: Cell) -> list[str]:
    return [f"{CONFIGS}/mechanisms/{cell.mechanism}.yaml", f"{CONFIGS}/data/{cell.dataset}.yaml",
            f"{CONFIGS}/trainer/gpu.yaml"]


def _common(cell: Cell, job: str) -> list[str]:
    r = recipe(cell.column, cell.mechanism)
    args = [part for path in config_files(cell) for part in ("--config", path)]
    fraction = "null" if cell.fraction == 1.0 else f"{cell.fraction:g}"
    args += [
        "--model.init_args.encoder", ENCODERS[r.feat_model],
        "--model.init_args.llm", LLMS[r.llm],
        *model_overrides(cell, r),
        "--model.init_args.lr", f"{r.lr:g}",
        "--model.init_args.decay_all_parameters", "true",  # DePALM's AdamW decays every trainable tensor
        # JSON, so the prompt's line breaks stay escapes and the command stays one line
        "--data.init_args", json.dumps({"template": template(cell.column, r.llm)}),
        "--data.init_args.augment", "depalm",
        "--data.init_args.batch_size", str(r.batch_size),
        "--data.init_args.fraction", fraction,
        "--data.init_args.seed", str(cell.seed),  # the low-data subset and the shuffle
        "--data.init_args.num_workers", str(NUM_WORKERS),
        "--seed_everything", str(cell.seed),  # initialisation, dropout, augmentation
        "--trainer.default_root_dir", cell.run_dir,  # results.json + predictions.jsonl
        "--trainer.logger.init_args.project", PROJECT,
        "--trainer.logger.init_args.save_dir", cell.run_dir,
        "--trainer.logger.init_args.name", f"{cell.label}-seed{cell.seed}",
        "--trainer.logger.init_args.group", GROUP,  # the whole grid: `perceptlm dashboard --group depalm`
        "--trainer.logger.init_args.job_type", job,
    ]
    return args


def fit_args(cell: Cell) -> list[str]:
    """``perceptlm fit`` arguments: the cell's recipe (backbones, learning rate, clipping, micro-batch
    x accumulation, epochs, data fraction, augmentation), seeds, W&B naming, a checkpoint of the
    last step."""
    r = recipe(cell.column, cell.mechanism)
    return ["fit", *_common(cell, "fit"),
            "--trainer.gradient_clip_val", f"{r.clip:g}",
            "--trainer.accumulate_grad_batches", str(r.accumulation),
            "--trainer.max_epochs", str(r.epochs),
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.dirpath", f"{cell.run_dir}/checkpoints",
            "--trainer.callbacks.save_last", "true",
            "--trainer.callbacks.save_top_k", "0"]


def test_args(cell: Cell) -> list[str]:
    """``perceptlm test`` arguments: the same composition, scored from the last checkpoint."""
    return ["test", *_common(cell, "test"), "--ckpt_path", f"{cell.run_dir}/checkpoints/last.ckpt"]


def command_line(cell: Cell) -> str:
    return shlex.join(["perceptlm", *fit_args(cell)]) + " && " + shlex.join(["perceptlm", *test_args(cell)])


def markdown_table() -> str:
    """One row per (column, mechanism): the released script and its recipe."""
    rows = ["| column | mechanism | script | LLM | encoder | lr | clip | batch x accum | epochs | cell options |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for column, spec in COLUMNS.items():
        for mechanism, (_, stem) in MECHANISMS.items():
            r = recipe(column, mechanism)
            cell = Cell(mechanism, column, SEEDS[0])
            name = f"`{spec.folder}/..._{stem}*.sh`" if r.released else "none (config defaults)"
            options = []
            if r.average_time or "layers" in features(cell, r):
                options.append(", ".join(f"{k}: {v}" for k, v in features(cell, r).items()
                                         if k in ("temporal", "layers")))
            if mechanism == "depalm-r-qpmapper" and r.mapper_layers:
                options.append(f"global QPMapper ({r.mapper_layers} layer): 1 token")
            rows.append(f"| {column} | {mechanism} | {name} | {r.llm} | {r.feat_model} | {r.lr:g} | {r.clip:g} | "
                        f"{r.batch_size} x {r.accumulation} | {r.epochs} | {'; '.join(options)} |")
    return "\n".join(rows) + "\n"


def sweep(dataset: str) -> dict:
    """A W&B grid sweep over one dataset's cells; each run calls ``grid.py run`` (fit, then test)."""
    fractions = sorted({c.fraction for c in COLUMNS.values() if c.dataset == dataset}, reverse=True)
    return {
        "name": f"depalm-{dataset}",
        "description": f"DePALM main table, {dataset}: mechanisms x fractions x seeds",
        "project": PROJECT,
        "program": PROGRAM,
        "method": "grid",
        "parameters": {
            "mechanism": {"values": list(MECHANISMS)},
            "fraction": {"values": fractions},
            "seed": {"values": list(SEEDS)},
        },
        "command": ["${env}", "${interpreter}", "${program}", "run", f"--dataset={dataset}", "${args}"],
    }


def write(out: Path) -> list[Path]:
    """``commands.txt`` (one line per cell), ``recipes.md`` (the per-cell recipes) and
    ``sweeps/<dataset>.yaml`` under ``out``."""
    disagreements = [m for column in COLUMNS for mechanism in MECHANISMS for m in mismatches(column, mechanism)]
    if disagreements:
        raise ValueError("the presets disagree with the released scripts:\n" + "\n".join(disagreements))
    (out / "sweeps").mkdir(parents=True, exist_ok=True)
    header = ("# DePALM main table: one line per run (mechanism x benchmark column x seed), from the repository root.\n"
              "# Generated by experiments/paper/depalm/grid.py write; do not edit by hand.\n")
    paths = [out / "commands.txt", out / "recipes.md"]
    paths[0].write_text(header + "".join(command_line(c) + "\n" for c in cells()))
    paths[1].write_text("# DePALM main table: the recipe of every cell\n\nGenerated by `python experiments/paper/depalm/"
                        "grid.py write` from the released per-cell scripts (`grid.py`, `SCRIPTS`); do not edit by hand. "
                        "Every seed of a cell runs this recipe.\n\n" + markdown_table())
    for dataset in dict.fromkeys(c.dataset for c in COLUMNS.values()):
        path = out / "sweeps" / f"{dataset}.yaml"
        text = yaml.safe_dump(sweep(dataset), sort_keys=False, default_flow_style=False, width=120)
        path.write_text(f"# wandb sweep {PROGRAM.rsplit('/', 1)[0]}/sweeps/{dataset}.yaml, then: wandb agent "
                        f"ENTITY/{PROJECT}/SWEEP_ID (from the repository root)\n# Generated by grid.py write.\n" + text)
        paths.append(path)
    return paths


def run(cell: Cell, dry_run: bool = False) -> int:
    """Fit, then test. Under a W&B sweep agent the test resumes the agent's run, so the test
    metrics land on the same run as the training curves."""
    for args in (fit_args(cell), test_args(cell)):
        command = [sys.executable, "-m", "perceptlm.cli", *args]
        print(shlex.join(command), flush=True)
        if dry_run:
            continue
        env = dict(os.environ)
        if args[0] == "test" and env.get("WANDB_RUN_ID"):
            env.setdefault("WANDB_RESUME", "allow")
        code = subprocess.run(command, env=env).returncode
        if code:
            return code
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    writer = commands.add_parser("write", help="write commands.txt and sweeps/")
    writer.add_argument("--out", type=Path, default=HERE)
    commands.add_parser("table", help="print the per-cell recipes as a markdown table")
    runner = commands.add_parser("run", help="run one cell: perceptlm fit, then perceptlm test")
    runner.add_argument("--dataset", required=True, choices=sorted({c.dataset for c in COLUMNS.values()}))
    runner.add_argument("--mechanism", required=True, choices=list(MECHANISMS))
    runner.add_argument("--fraction", required=True, type=float)
    runner.add_argument("--seed", required=True, type=int)
    runner.add_argument("--dry-run", action="store_true", help="print the two commands only")
    options = parser.parse_args(argv)
    if options.command == "write":
        for path in write(options.out):
            print(path)
        return 0
    if options.command == "table":
        print(markdown_table(), end="")
        return 0
    column = find_column(options.dataset, options.fraction)
    return run(Cell(options.mechanism, column, options.seed), options.dry_run)


if __name__ == "__main__":
    sys.exit(main())
