"""The papers' systems as data: feature selection, mapper, injection and LLM tuning.

A preset is a :class:`Preset` value, not a subclass; :func:`build` turns it (plus overrides) into an
:class:`~perceptlm.modules.interface.InterfaceModule`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Preset:
    """One mechanism along DePALM's four axes.

    ``features``: encoder selection (``layers``, ``tokens``, ``final_norm``).
    ``connector``: ``{"type": name in perceptlm.connectors.CONNECTORS (default "mapping"), **its
    arguments}``, built by :func:`perceptlm.connectors.build_connector`.
    ``injection``: name in :data:`perceptlm.injection.INJECTIONS`.
    ``prompt_tokens``: learned input prompt tokens (DePALM §3.4).
    ``llm_tuning``: what of the LLM trains ("frozen", "lora", ...; DePALM's fourth axis).
    ``stages``: the system's own two-stage recipe (Garg & Bas 2023 §2): ``{"align": {...}, "instruct":
    {...}}`` with ``llm_tuning`` and ``freeze_connector`` per stage (see ``InterfaceModule(stage=...)``).
    ``trainable_formula``: the trainable-parameter count as an arithmetic expression in the feature
    width ``D``, the mapper width ``W``, the LLM width ``H``, queries/output tokens ``Q``, mapper layers
    ``n``, prompt tokens ``P`` and Q-Former cross-attention layers ``C``; parenthesised words are
    comments (the tests evaluate the expression without them).
    """

    name: str
    paper: str
    features: dict[str, Any] = field(default_factory=dict)
    connector: dict[str, Any] = field(default_factory=dict)
    injection: str = "prefix"
    injection_options: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int = 0
    trainable_formula: str = ""
    llm_tuning: str = "frozen"
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def with_overrides(self, **overrides: Any) -> "Preset":
        """Merge dict-valued overrides (``features``, ``connector``) and replace the rest."""
        valid = {f for f in asdict(self) if f not in ("name", "paper", "trainable_formula", "stages")}
        unknown = set(overrides) - valid
        if unknown:
            raise ValueError(f"unknown preset override(s) {sorted(unknown)}; valid: {sorted(valid)}")
        merged: dict[str, Any] = {}
        for key, value in overrides.items():
            if value is None:
                continue
            current = getattr(self, key)
            merged[key] = {**current, **value} if isinstance(current, dict) else value
        return replace(self, **merged)


_QP_FORMULA = (
    "D*W+W (input Linear) + Q*W (queries) + n*(4*W*W+4*W + 2*W*W+2*W + 4*W) (post-norm layers: "
    "attention, FFN of width W, two LayerNorms) + W*H+H (output Linear) + P*H (prompt tokens)"
)
_LINEAR_FORMULA = "D*H+H (one Linear, shared by every token)"
_RESAMPLER_TAIL = "D (RMSNorm) + D*H+H (output Linear) + P*H (prompt token)"
_QFORMER_BODY = (
    "2*D (LayerNorm on the features) + Q*W+2*W (queries and their LayerNorm) + n*(12*W*W+13*W) "
    "(self-attention, FFN 4W, LayerNorms) + C*(2*W*W+2*D*W+6*W) (cross-attention blocks, C = n/f rounded up)"
)
_DEPALM = "DePALM (Vallaeys et al. 2024)"
# Stage recipes (Garg & Bas 2023 §2, Table 1): stage 1 aligns on caption pairs, stage 2 tunes on
# instructions. LLaVA fine-tunes the whole LLM in stage 2 (full, at lr 2e-5; frozen or LoRA by
# override), mPLUG-Owl trains LoRA adapters (here at 2e-4) with its abstractor frozen.
_ALIGN_THEN_INSTRUCT = {"align": {"llm_tuning": "frozen"}, "instruct": {"llm_tuning": "frozen"}}
_GARG_BAS = "Garg & Bas 2023 §2"
_ALL_LAST = {"layers": 1, "tokens": "all"}
_BLIP2_QFORMER = {"type": "qformer", "width": 768, "num_queries": 32, "num_layers": 12, "num_heads": 12,
                  "cross_attention_freq": 2}


_RESAMPLER_PAPER = {
    "avgpool": "'R-avgpool': CLS + the mean of each 2x2 window (4 frames in 1-D)",
    "linear": "'R-linear': CLS + Linear(4d->d) of each concatenated 2x2 window (4 frames in 1-D)",
    "qpmapper": "'R-QPMapper': CLS + one QPMapper query per 2x2 window (4 frames in 1-D)",
    "rand": "'R-rand': CLS + a random 1/16..1/2 of the patch tokens in training, all at evaluation",
}


def _resampler(mode: str, formula_head: str, **extra: Any) -> Preset:
    return Preset(
        name=f"depalm-r-{mode}",
        paper=f"{_DEPALM} §3.2 token resampler {_RESAMPLER_PAPER[mode]}; RMSNorm -> Linear; L0 + 1 prompt token",
        features=dict(_ALL_LAST),
        connector={"type": "resampler", "mode": mode, **extra},
        injection="prefix",
        prompt_tokens=1,
        trainable_formula=f"{formula_head} + {_RESAMPLER_TAIL}" if formula_head else _RESAMPLER_TAIL,
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="flamingo",
            paper=("Flamingo (Alayrac et al. 2022) §2.1-2.2: Perceiver resampler (64 latents attending to the "
                   "visual tokens; approximated by Q-Former layers with cross-attention in every layer) and "
                   "gated cross-attention dense blocks (tanh gates at 0) before every 4th LLM layer"),
            features={"layers": 1, "tokens": "all"},
            connector={"type": "qformer", "num_queries": 64, "num_layers": 6, "num_heads": 8,
                       "cross_attention_freq": 1, "width": None},
            injection="cross_attention",
            injection_options={"start": 0.0, "end": 1.0, "every": 4},
            trainable_formula=(_QFORMER_BODY + " + W*H+H (output Linear) + X*(12*H*H+13*H+2) (a gated block "
                               "before each of the X target layers)"),
        ),
        Preset(
            name="depalm-c-attn",
            paper=(f"{_DEPALM} §3.3 'c-attn': tokens of the last 4 encoder layers -> Linear, 1-layer transformer, "
                   "Linear; gated cross-attention (tanh gate at 0) before the upper LLM layers (17-28 of 32)"),
            features={"layers": 4, "tokens": "all"},
            connector={"transformer": "encoder", "num_layers": 1, "width": None},
            injection="cross_attention",
            injection_options={"start": 0.5, "end": 0.875},
            trainable_formula=("D*W+W + n*(6*W*W+10*W) (1 post-norm layer, FFN width W) + W*H+H (output Linear) "
                               "+ X*(12*H*H+13*H+2) (a gated block per target layer: LN, attention, FFN 4H, 2 gates)"),
        ),
        Preset(
            name="depalm-qp-l0",
            paper="DePALM (Vallaeys et al. 2024) §3, 'QP, L0': QPMapper summary tokens at the LLM input",
            features={"layers": 1, "tokens": "all"},
            connector={"transformer": "qpmapper", "num_queries": 32, "num_layers": 2, "width": None},
            injection="prefix",
            prompt_tokens=1,
            trainable_formula=_QP_FORMULA,
        ),
        Preset(
            name="depalm-qp-inner",
            paper=(f"{_DEPALM} §3.3 'QP, inner': last 4 encoder layers, one shared QPMapper (32 tokens, run once per "
                   "encoder layer) injected inside 12 upper LLM layers (17-28 of 32; encoder layers spread in "
                   "proportion) with per-layer RMSNorm + scale/bias; 16 prompt tokens"),
            features={"layers": 4, "tokens": "all"},
            connector={"transformer": "qpmapper", "num_queries": 32, "num_layers": 2, "width": None},
            injection="inner",
            injection_options={"start": 0.5, "end": 0.875, "token_norm": True},
            prompt_tokens=16,
            trainable_formula=_QP_FORMULA + " + X*2*H (per target layer: scale and bias after a parameter-free RMSNorm)",
        ),
        Preset(
            name="epalm",
            paper=("eP-ALM (Shukor et al. 2023) §3 as in " + _DEPALM + " §3 presets: CLS of the last 6 encoder layers "
                   "-> one shared Linear -> one token per upper LLM layer (replaced at each layer); 10 prompt tokens"),
            features={"layers": 6, "tokens": "cls"},
            connector={"transformer": None, "input_projection": False},
            injection="inner",
            injection_options={"start": 0.5, "end": 1.0},
            prompt_tokens=10,
            trainable_formula=_LINEAR_FORMULA + " + P*H (prompt tokens)",
        ),
        Preset(
            name="llama-adapter",
            paper=("LLaMA-Adapter (Zhang et al. 2023) §3.2-3.3: 10 learned adaption prompts in each of the top "
                   "layers (30 of 32), the projected global visual feature added to them, zero-init tanh gate "
                   "per head on their separate softmax"),
            features={"layers": 1, "tokens": "cls"},
            connector={"transformer": None, "input_projection": False},
            injection="inner",
            injection_options={"start": 0.0625, "end": 1.0, "llm_norm": False, "gated": True,
                               "adaption_prompts": 10},
            trainable_formula=(_LINEAR_FORMULA + " + X*R*H (R=10 adaption prompts per target layer) + X*A "
                               "(one gate per attention head A)"),
        ),
        Preset(
            name="limber-1",
            paper=f"LiMBeR (Merullo et al. 2023) as 'LiMBeR(1)' in {_DEPALM} §3 presets: last-layer CLS -> Linear -> 1 token at L0",
            features={"layers": 1, "tokens": "cls"},
            connector={"transformer": None, "input_projection": False},
            trainable_formula=_LINEAR_FORMULA,
        ),
        Preset(
            name="limber-all",
            paper=f"LiMBeR (Merullo et al. 2023) as 'LiMBeR(all)' in {_DEPALM} §3 presets: every last-layer token -> per-token Linear at L0",
            features=dict(_ALL_LAST),
            connector={"transformer": None, "input_projection": False},
            trainable_formula=_LINEAR_FORMULA,
        ),
        Preset(
            name="mapl",
            paper=f"MAPL (Manas et al. 2023) as in {_DEPALM} §3 presets: Linear->256, QPMapper 4 layers, 32 queries, Linear; 32 tokens at L0",
            features=dict(_ALL_LAST),
            connector={"transformer": "qpmapper", "width": 256, "num_queries": 32, "num_layers": 4},
            trainable_formula=_QP_FORMULA,
        ),
        _resampler("avgpool", ""),
        _resampler("linear", "4*D*D+D (Linear 4D to D)"),
        _resampler("qpmapper", "Q*D (one query, Q=1, shared by all groups) + n*(6*D*D+10*D) (QPMapper layers, FFN width D)",
                   num_layers=4),
        _resampler("rand", ""),
        # LLaVA reads the raw penultimate hidden states (``hidden_states[-2]``): no final norm.
        Preset(
            name="llava",
            paper=f"LLaVA (Liu et al. 2023, Visual Instruction Tuning §4.1) via {_GARG_BAS}: penultimate-layer patches -> Linear",
            features={"layers": [-2], "tokens": "patches", "final_norm": False},
            connector={"transformer": None, "input_projection": False},
            trainable_formula=_LINEAR_FORMULA,
            stages={"align": {"llm_tuning": "frozen"}, "instruct": {"llm_tuning": "full", "llm_lr": 2e-5}},
        ),
        Preset(
            name="llava-1.5",
            paper="LLaVA-1.5 (Liu et al. 2023, Improved Baselines with Visual Instruction Tuning §3): penultimate-layer patches -> 2-layer GELU MLP",
            features={"layers": [-2], "tokens": "patches", "final_norm": False},
            connector={"transformer": None, "input_projection": False, "output_depth": 2},
            trainable_formula="D*H+H + H*H+H (2-layer GELU MLP of width H)",
            stages={"align": {"llm_tuning": "frozen"}, "instruct": {"llm_tuning": "full", "llm_lr": 2e-5}},
        ),
        Preset(
            name="clipcap",
            paper="ClipCap (Mokady et al. 2021) §3, MLP mapping network: global embedding -> Q=10 prefix tokens, L0",
            features={"layers": 1, "tokens": "cls"},
            connector={"type": "clipcap", "prefix_length": 10, "mapping": "mlp"},
            trainable_formula="D*(Q*H//2)+Q*H//2 (Linear D to kH/2) + (Q*H//2)*Q*H+Q*H (Linear kH/2 to kH; Q = prefix length k)",
        ),
        Preset(
            name="blip2",
            paper=f"BLIP-2 (Li et al. 2023) §3.1 Q-Former, §3.3 Linear to the LLM, §3.4 penultimate ViT layer; via {_GARG_BAS}",
            features={"layers": [-2], "tokens": "all", "final_norm": False},
            connector=dict(_BLIP2_QFORMER),
            trainable_formula=_QFORMER_BODY + " + W*H+H (output Linear)",
            stages=_ALIGN_THEN_INSTRUCT,
        ),
        Preset(
            name="instructblip",
            paper=(f"InstructBLIP (Dai et al. 2023) §2.2: BLIP-2's Q-Former whose queries also attend to the "
                   f"instruction tokens in self-attention (embedded by the LLM, projected by a Linear), then Linear; "
                   f"via {_GARG_BAS}"),
            features={"layers": [-2], "tokens": "all", "final_norm": False},
            connector={**_BLIP2_QFORMER, "instruction_aware": True},
            trainable_formula=_QFORMER_BODY + " + H*W+W (instruction projection) + W*H+H (output Linear)",
            stages=_ALIGN_THEN_INSTRUCT,
        ),
        Preset(
            name="minigpt4",
            paper=f"MiniGPT-4 (Zhu et al. 2023) §3: BLIP-2's frozen Q-Former + a trained Linear -> 32 tokens; via {_GARG_BAS}",
            features={"layers": [-2], "tokens": "all", "final_norm": False},
            connector={**_BLIP2_QFORMER, "freeze": True, "init_from": None},
            trainable_formula="W*H+H (output Linear; the Q-Former is frozen)",
            stages=_ALIGN_THEN_INSTRUCT,
        ),
        Preset(
            name="mplug-owl",
            paper=(f"mPLUG-Owl (Ye et al. 2023) §3 visual abstractor (64 queries; 6 layers, width 1024, 16 heads as "
                   f"released) approximated by Q-Former layers + Linear; stage-2 LoRA on the LLM; via {_GARG_BAS}"),
            features=dict(_ALL_LAST),
            connector={"type": "qformer", "width": 1024, "num_queries": 64, "num_layers": 6, "num_heads": 16,
                       "cross_attention_freq": 1},
            trainable_formula=_QFORMER_BODY + " + W*H+H (output Linear) + L*r*(2*H + H+K) (LoRA, rank r=8 on q_proj and v_proj of the L LLM layers; K = key/value width)",
            llm_tuning="lora",
            stages={"align": {"llm_tuning": "frozen"},
                    "instruct": {"llm_tuning": "lora", "freeze_connector": True, "llm_lr": 2e-4}},
        ),
    ]
}


def names() -> list[str]:
    """The preset names, sorted."""
    return sorted(PRESETS)


def get(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(names())}") from None


def build(name: str, encoder: Any, llm: Any, **overrides: Any):
    """Build the :class:`InterfaceModule` of preset ``name`` on ``encoder`` and ``llm`` (zoo names
    or loaded modules). ``overrides`` are preset fields (dicts merge) or module arguments."""
    from perceptlm.modules.interface import InterfaceModule

    get(name)
    return InterfaceModule(preset=name, encoder=encoder, llm=llm, **overrides)
