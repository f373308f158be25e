"""``PerceptualLM``: a frozen perceptual encoder, a trainable interface and a frozen LLM, as one
plain ``nn.Module``.

One forward reads top to bottom: media -> :meth:`~PerceptualLM.perceive` (encoder, or cached features)
-> :meth:`~PerceptualLM.map` (connector) -> :meth:`~PerceptualLM.splice` (prefix tokens, then prompt
tokens, at the media position of the text) -> the LLM, with the injection's per-layer hooks active ->
logits at the supervised positions only (:meth:`~PerceptualLM.losses`) or KV-cached decoding
(:meth:`~PerceptualLM.generate`). Training concerns (optimiser, schedule, logging, checkpoints) live
in :mod:`perceptlm.training`; this module needs no Trainer.
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceptlm import generation, presets, zoo
from perceptlm.batch import Batch
from perceptlm.connectors import build_connector
from perceptlm.encoders.base import PerceptualEncoder, PerceptualFeatures
from perceptlm.injection import build_injection
from perceptlm.llm.language_model import LanguageModel
from perceptlm.losses import ImageTextContrastive
from perceptlm.presets import Preset
from perceptlm.tuning import PromptTokens, apply_llm_tuning

FROZEN_COMPONENTS = ("encoder", "llm")
EXPORT_FORMAT = {"format": "perceptlm", "version": 1}


class PerceptualLM(nn.Module):
    """One interface mechanism (a :class:`~perceptlm.presets.Preset`) between ``encoder`` and ``llm``.

    Build it from a preset name and zoo names with :meth:`build`. ``encoder`` and ``llm`` stay frozen
    (eval mode, no gradient) unless the preset's LLM tuning trains part of the LLM;
    ``freeze_connector`` keeps a later stage's connector fixed (no gradient, no dropout).
    Objective: cross-entropy on answer tokens + EOS with ``label_smoothing``, plus ``itc_weight`` x
    BLIP-2's image-text contrastive loss in training (:class:`~perceptlm.losses.ImageTextContrastive`).
    Decoding defaults: ``max_new_tokens``, ``num_beams`` (1 = greedy), ``stop_strings`` (the text is
    cut before the first one; greedy decoding also stops there). ``compile_llm`` compiles each LLM
    decoder layer (:meth:`LanguageModel.compile_layers`). ``special_tokens``: tokens added to the LLM's
    tokenizer that are never split (DePALM's OPT answer token ``</a>``, which its prompts end with).
    ``llm_dropout``: the frozen LLM runs with its dropout in training (DePALM's frozen OPT is in
    train mode while it trains; still no gradient). ``llm_activation_checkpointing``: recompute the LLM's layers
    in backward (:class:`LanguageModel`); ``llm_dtype``: what :meth:`build` loaded the LLM in."""

    def __init__(self, preset: Preset, encoder: PerceptualEncoder, llm: LanguageModel, *,
                 llm_tuning_options: dict[str, Any] | None = None, freeze_connector: bool = False,
                 label_smoothing: float = 0.0, itc_weight: float = 0.0, max_new_tokens: int = 20,
                 num_beams: int = 1, stop_strings: list[str] | None = None, compile_llm: bool = False,
                 special_tokens: list[str] | None = None, llm_dropout: bool = False,
                 llm_activation_checkpointing: bool = False, llm_dtype: str = "auto") -> None:
        options = {k: v for k, v in locals().items() if k not in ("self", "preset", "encoder", "llm", "__class__")}
        super().__init__()
        if itc_weight < 0:
            raise ValueError(f"itc_weight must be >= 0 (0: no contrastive loss), got {itc_weight}")
        self.preset, self.encoder, self.llm = preset, encoder, llm
        injection = build_injection(preset.injection, **preset.injection_options)
        self.connector = build_connector(encoder.embed_dim, injection.token_width(llm.hidden_size), preset.connector)
        self.injection = injection
        self.injection.install(llm)
        if special_tokens:
            llm.add_special_tokens(special_tokens)
        llm.dropout_in_training = llm_dropout
        apply_llm_tuning(llm, preset.llm_tuning, **(llm_tuning_options or {}))
        llm.trainable_in_float32()  # LoRA adapters beside a half-precision LLM
        if llm_activation_checkpointing:  # recomputation sees the injection's tokens again (replay)
            llm.enable_activation_checkpointing(self.injection.replay)
        if compile_llm:
            if not injection.compilable:
                raise ValueError(f"compile_llm is not supported with the {preset.injection!r} injection of {preset.name!r} "
                                 "(compiled attention with injected keys/values differs from eager); set compile_llm false")
            llm.compile_layers()
        self.prompt = PromptTokens(preset.prompt_tokens, llm.hidden_size) if preset.prompt_tokens else None
        self.contrastive = ImageTextContrastive(llm.hidden_size) if itc_weight > 0 else None
        self.frozen_connector = freeze_connector
        if freeze_connector:
            self.connector.requires_grad_(False)
        self.label_smoothing, self.itc_weight = label_smoothing, itc_weight
        self.max_new_tokens, self.num_beams, self.stop_strings = max_new_tokens, num_beams, stop_strings
        self.options = options  # the keyword arguments, for build_arguments (``llm_dtype`` as asked: ``auto`` re-resolves)
        # decoding ends at any of these: EOS, and a chat template's end-of-turn (the data adds it)
        self.stop_token_ids: list[int] = [llm.eos_token_id]

    @classmethod
    def build(cls, preset: str | Preset = "depalm-qp-l0", encoder: str | PerceptualEncoder = "test-tiny-vit",
              llm: str | LanguageModel = "test-tiny-llama", *, stage: str | None = None,
              features: dict[str, Any] | None = None, connector: dict[str, Any] | None = None,
              injection: str | None = None, injection_options: dict[str, Any] | None = None,
              prompt_tokens: int | None = None, llm_tuning: str | None = None,
              freeze_connector: bool | None = None, llm_dtype: str = "auto", **options: Any) -> "PerceptualLM":
        """The model of ``preset`` (a name or a :class:`Preset`) on ``encoder`` and ``llm`` (zoo names
        or loaded modules; a loaded encoder is viewed with the preset's feature selection, sharing its
        weights; a loaded LLM that tuning changes is copied first). ``features`` ... ``llm_tuning``
        override the preset's fields (dicts merge); ``stage`` applies its two-stage recipe (LLM tuning,
        frozen connector), which explicit ``llm_tuning`` / ``freeze_connector`` override. ``options``:
        the keyword arguments of :class:`PerceptualLM`. ``llm_dtype``: the dtype a zoo LLM loads in
        (:func:`perceptlm.zoo.llm_dtype`); an LLM passed in must already have it."""
        base = presets.get(preset) if isinstance(preset, str) else preset
        recipe = base.stage(stage)
        resolved = base.with_overrides(features=features, connector=connector, injection=injection,
                                       injection_options=injection_options, prompt_tokens=prompt_tokens,
                                       llm_tuning=llm_tuning or recipe.get("llm_tuning"))
        if isinstance(encoder, PerceptualEncoder):
            encoder = encoder.with_selection(**resolved.features)
        else:
            encoder = zoo.load_encoder(encoder, **resolved.features)
        if isinstance(llm, LanguageModel) and resolved.llm_tuning != "frozen":
            llm = copy.deepcopy(llm)  # tuning adds or unfreezes weights: leave the caller's LLM as it was
        if not isinstance(llm, LanguageModel):
            llm = zoo.load_llm(llm, dtype=zoo.llm_dtype(llm_dtype, tuning=resolved.llm_tuning, llm=llm))
        elif llm_dtype != "auto" and llm.dtype != zoo.llm_dtype(llm_dtype):
            raise ValueError(f"llm_dtype={llm_dtype!r}, but the LLM passed in ({llm.name}) is {llm.dtype}: pass its zoo "
                             "name, or load it in that dtype")
        frozen = recipe.get("freeze_connector", False) if freeze_connector is None else freeze_connector
        return cls(resolved, encoder, llm, freeze_connector=bool(frozen), llm_dtype=llm_dtype, **options)

    # -- structure ---------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.llm.tokenizer

    @property
    def num_visual_tokens(self) -> int:
        """Perceptual tokens the LLM receives at evaluation (R-rand keeps fewer in training); per
        target layer for per-layer injections."""
        encoder = self.encoder
        layers = 1 if self.injection.per_encoder_layer else encoder.num_selected_layers
        mapped = self.connector.num_output_tokens(
            encoder.num_tokens * layers,
            grid=None if encoder.token_selection in ("cls", "mean") else encoder.grid,
            has_cls=encoder.has_cls and encoder.token_selection not in ("patches", "mean"),
            num_layers=layers,
        )
        return self.injection.num_perceptual_tokens(mapped)

    @property
    def num_input_tokens(self) -> int:
        """Tokens this model adds to each LLM input sequence: prompt tokens and prefix perception."""
        prompts = self.prompt.num_tokens if self.prompt is not None else 0
        return prompts + self.injection.num_prefix_tokens(self.num_visual_tokens)

    @property
    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def parameter_table(self) -> list[tuple[str, int, int]]:
        """(component, trainable, frozen) parameter counts."""
        rows = []
        for name, module in self.named_children():
            params = list(module.parameters())
            trainable = sum(p.numel() for p in params if p.requires_grad)
            rows.append((name, trainable, sum(p.numel() for p in params) - trainable))
        return rows

    def trainable_keys(self) -> set[str]:
        """State-dict keys that exports and checkpoints hold: everything outside the frozen backbones
        (a frozen Q-Former inside the connector included) plus any trainable backbone parameter."""
        keys = {name for name, p in self.named_parameters() if p.requires_grad}
        return keys | {name for name in self.state_dict() if name.split(".")[0] not in FROZEN_COMPONENTS}

    def train(self, mode: bool = True) -> "PerceptualLM":
        super().train(mode)  # the backbones' own ``train`` keeps them in eval unless they train
        if self.frozen_connector:  # a later stage's fixed connector: no dropout either
            self.connector.eval()
        return self

    # -- perception ----------------------------------------------------------------------------------
    def perceive(self, media: Any, blind: bool = False, instruction: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Media -> LLM-width perceptual tokens ``[B, K, H]`` (``[B, layers, K, H]`` for per-layer
        injections).

        ``media`` may be precomputed :class:`PerceptualFeatures` (the feature cache): the encoder
        does not run then. ``blind=True`` is the "blind" baseline: the encoder's outputs are zeroed,
        so the LLM still receives the connector's tokens but they carry nothing of the media.
        ``instruction``: ``(token ids, mask)`` of the instruction text, read by connectors that
        ``reads_instruction`` (InstructBLIP) and ignored by the others."""
        if blind:
            if isinstance(media, PerceptualFeatures):
                size = media.tokens.shape[0]
            else:
                size = len(media["input_features"]) if isinstance(media, dict) else len(media)
            features = self.encoder.blank(size, like=next(self.connector.parameters()))
        else:
            features = media if isinstance(media, PerceptualFeatures) else self.encoder(media)
        return self.map(features, instruction)

    def map(self, features: PerceptualFeatures, instruction: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The connector on ``features``; with a per-layer injection each encoder layer is mapped
        separately (one shared mapper pass per layer) into ``[B, layers, K, H]``."""
        if self.connector.reads_instruction and instruction is not None:
            ids, mask = instruction
            return self.connector(features, instruction=(self.llm.embed(ids), mask))
        if not self.injection.per_encoder_layer:
            return self.connector(features)
        tokens, layers = features.tokens, features.num_layers
        folded = PerceptualFeatures(tokens.reshape(-1, 1, *tokens.shape[2:]), features.mask.repeat_interleave(layers, 0),
                                    features.cls_index, features.grid)
        mapped = self.connector(folded)
        return mapped.view(tokens.shape[0], layers, *mapped.shape[1:])

    # -- the splice of perception into the text ----------------------------------------------------------
    def prefix(self, visual: Tensor) -> Tensor:
        """Everything placed at the media position: prefix perception, then the prompt tokens
        (DePALM's order: ``[perception; prompt; text]``)."""
        injected = self.injection.prefix(visual)
        parts = [injected] if injected is not None else []
        if self.prompt is not None:
            parts.append(self.prompt(visual.shape[0]).to(injected.dtype if injected is not None else visual.dtype))
        if not parts:
            return visual.new_zeros(visual.shape[0], 0, self.llm.hidden_size)
        return torch.cat(parts, dim=1)

    def splice(self, visual: Tensor, input_ids: Tensor, attention_mask: Tensor,
               media_position: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The LLM's input embeddings ``[B, K+T, H]`` and mask, and where each text token went
        (``[B, T]`` indices into the K+T positions).

        ``media_position`` ``[B]``: per row, the text-token index before which the prefix goes
        (LLaVA's ``<image>`` placeholder); None puts it before all text."""
        text = self.llm.embed(input_ids)  # the LLM's dtype: the trainable tokens are cast to it
        prefix = self.prefix(visual).to(text.dtype)
        size, k = prefix.shape[:2]
        steps = torch.arange(input_ids.shape[1], device=input_ids.device)
        if media_position is None or k == 0:
            mask = torch.cat([attention_mask.new_ones(size, k), attention_mask], dim=1)
            return torch.cat([prefix, text], dim=1), mask, (steps + k).expand(size, -1)
        position = media_position.to(input_ids.device).clamp(0, input_ids.shape[1])[:, None]
        text_index = steps + k * (steps >= position)  # [B, T]
        prefix_index = position + torch.arange(k, device=input_ids.device)  # [B, K]
        hidden = prefix.shape[-1]
        embeds = text.new_zeros(size, k + input_ids.shape[1], hidden)
        embeds = embeds.scatter(1, text_index[..., None].expand(-1, -1, hidden), text)
        embeds = embeds.scatter(1, prefix_index[..., None].expand(-1, -1, hidden), prefix)
        mask = attention_mask.new_ones(size, k + input_ids.shape[1]).scatter(1, text_index, attention_mask)
        return embeds, mask, text_index

    def hidden_states(self, media: Any, input_ids: Tensor, attention_mask: Tensor, *, blind: bool = False,
                      instruction: tuple[Tensor, Tensor] | None = None,
                      media_position: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The LLM's final hidden states over perception and text, each text token's index among
        them (:meth:`splice`), and the perceptual tokens."""
        visual = self.perceive(media, blind, instruction)
        embeds, mask, text_index = self.splice(visual, input_ids, attention_mask, media_position)
        with self.injection.context(visual):
            hidden, _ = self.llm.hidden(embeds, mask)
        return hidden, text_index, visual

    def forward(self, media: Any, input_ids: Tensor, attention_mask: Tensor, *,
                instruction: tuple[Tensor, Tensor] | None = None, media_position: Tensor | None = None,
                blind: bool = False) -> Tensor:
        """Logits ``[B, T, V]`` over the text positions (arguments: :meth:`perceive`, :meth:`splice`)."""
        hidden, text_index, _ = self.hidden_states(media, input_ids, attention_mask, blind=blind,
                                                   instruction=instruction, media_position=media_position)
        return self.llm.logits(hidden.gather(1, text_index[..., None].expand(-1, -1, hidden.shape[-1])))

    # -- objective -------------------------------------------------------------------------------------
    def losses(self, batch: Batch) -> dict[str, Tensor]:
        """``{"loss": total, "lm": cross-entropy[, "itc": contrastive]}`` on a training batch.

        The cross-entropy covers supervised tokens only and the LM head runs at those positions
        alone. Each text token is predicted from the position before it: the prefix's last position
        predicts the text token that follows it, so an empty prompt still trains the first target
        token (a first text token with nothing before it is not predicted). The contrastive term is
        added in training mode when ``itc_weight`` > 0."""
        hidden, text_index, visual = self.hidden_states(
            batch.media, batch.input_ids, batch.attention_mask,
            instruction=(batch.input_ids, batch.instruction_mask), media_position=batch.media_position)
        labels = batch.labels
        predictor = text_index - 1
        supervised = (labels != -100) & (predictor >= 0)
        rows, columns = supervised.nonzero(as_tuple=True)
        logits = self.llm.logits(hidden[rows, predictor[rows, columns]])
        lm = F.cross_entropy(logits.float(), labels[rows, columns], label_smoothing=self.label_smoothing)
        if self.contrastive is None or not self.training:
            return {"loss": lm, "lm": lm}
        itc = self.contrastive(visual.flatten(1, -2), self.answer_embedding(labels))
        return {"loss": lm + self.itc_weight * itc, "lm": lm, "itc": itc}

    def loss(self, batch: Batch) -> Tensor:
        """The total training loss of :meth:`losses`."""
        return self.losses(batch)["loss"]

    def answer_embedding(self, labels: Tensor) -> Tensor:
        """``[B, H]``: the mean of the LLM's input embeddings over each sample's answer tokens (a
        fixed text representation: no gradient reaches the embeddings through it)."""
        answer = labels != -100
        if not bool(answer.any(1).all()):
            raise ValueError("ITC needs an answer in every sample; some sample has no supervised token")
        with torch.no_grad():
            embedded = self.llm.embed(labels.clamp(min=0)).float()
        weights = answer.float().unsqueeze(-1)
        return (embedded * weights).sum(1) / weights.sum(1)

    # -- decoding --------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, media: Any, input_ids: Tensor, attention_mask: Tensor, *, max_new_tokens: int | None = None,
                 num_beams: int | None = None, blind: bool = False, media_position: Tensor | None = None) -> Tensor:
        """New token ids ``[B, <=max_new_tokens]`` after left-padded prompts (a stop token, then
        padding); ``media_position`` indexes the left-padded prompt (:meth:`splice`). The prompt is
        the instruction an instruction-aware connector reads."""
        max_new_tokens = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        num_beams = num_beams or self.num_beams
        visual = self.perceive(media, blind, instruction=(input_ids, attention_mask))
        embeds, mask, _ = self.splice(visual, input_ids, attention_mask, media_position)
        stops, pad = self.stop_token_ids, self.tokenizer.pad_token_id
        with self.injection.context(visual):
            if num_beams == 1:
                stop = generation.stop_string_criterion(self.tokenizer, self.stop_strings) if self.stop_strings else None
                return generation.greedy(self.llm, embeds, mask, max_new_tokens, stops, pad, stop=stop)
            return generation.beam_search(self.llm, embeds, mask, max_new_tokens, stops, pad, num_beams,
                                          expand=self.injection.expand)

    def decode(self, ids: Tensor) -> list[str]:
        """Generated ids -> texts: cut at the first stop token and the first stop string, stripped."""
        ended = torch.isin(ids, torch.tensor(self.stop_token_ids, device=ids.device)).cumsum(1) > 0
        texts = self.tokenizer.batch_decode(ids.masked_fill(ended, self.tokenizer.pad_token_id), skip_special_tokens=True)
        return [generation.truncate_at_stop(t, self.stop_strings).strip() for t in texts]

    # -- persistence: safetensors + JSON, trainable weights only -----------------------------------------
    def trainable_state(self) -> dict[str, Tensor]:
        keep = self.trainable_keys()
        return {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items() if k in keep}

    def load_trainable(self, state: dict[str, Tensor], source: str, partial: bool = False) -> list[str]:
        """Load trainable weights ``state`` (keys as :meth:`trainable_keys`). ``partial``: an earlier
        stage may lack some (a new LoRA, an instruction projection), but must share at least one and
        agree in shape. Returns the keys loaded; errors name ``source``."""
        keys, own = self.trainable_keys(), self.state_dict()
        shared = sorted(keys & set(state))
        if partial and not shared:
            raise KeyError(f"{source} holds none of this model's trainable weights (e.g. {sorted(keys)[:3]}); "
                           "was it trained with the same preset?")
        if not partial and (keys - set(state) or set(state) - keys):
            raise KeyError(f"{source}: weights do not match the model: missing {sorted(keys - set(state))[:5]}, "
                           f"unexpected {sorted(set(state) - keys)[:5]}")
        wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shared if state[k].shape != own[k].shape]
        if wrong:
            raise ValueError(f"{source}: shapes differ for {wrong[:3]}")
        self.load_state_dict({k: state[k] for k in shared}, strict=False)
        return shared

    def build_arguments(self) -> dict[str, Any]:
        """The :meth:`build` arguments that rebuild this model on the same backbones: the preset's
        name with every field it resolved to, and the model's options."""
        p = self.preset
        return {"preset": p.name, "features": p.features, "connector": p.connector, "injection": p.injection,
                "injection_options": p.injection_options, "prompt_tokens": p.prompt_tokens,
                "llm_tuning": p.llm_tuning, **self.options}

    def save_pretrained(self, directory: str | Path, arguments: dict[str, Any] | None = None,
                        extra: dict[str, Any] | None = None) -> Path:
        """Write ``model.safetensors`` (trainable weights only) and ``perceptlm.json`` (backbone zoo
        names; ``arguments``: what rebuilds the model, by default :meth:`build_arguments`, or a
        caller's own that include them; ``extra`` facts)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.trainable_state(), str(directory / "model.safetensors"))
        config = {**EXPORT_FORMAT, "encoder": self.encoder.name, "llm": self.llm.name,
                  "arguments": self.build_arguments() if arguments is None else arguments, **(extra or {})}
        (directory / "perceptlm.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, encoder: Any = None, llm: Any = None,
                        **overrides: Any) -> "PerceptualLM":
        """Rebuild a model written by :meth:`save_pretrained` (backbones from the zoo or passed in,
        trainable weights from safetensors: no pickle, no code execution), in eval mode."""
        config, state = read_pretrained(directory)
        accepted = set(inspect.signature(cls.build).parameters) | set(inspect.signature(cls.__init__).parameters)
        arguments = {k: v for k, v in {**config["arguments"], **overrides}.items() if k in accepted}
        model = cls.build(encoder=encoder or config["encoder"], llm=llm or config["llm"], **arguments)
        model.load_trainable(state, str(directory))
        return model.eval()


def read_pretrained(directory: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(perceptlm.json, trainable weights)`` of a :meth:`PerceptualLM.save_pretrained` folder."""
    from safetensors.torch import load_file

    directory = Path(directory)
    path = directory / "perceptlm.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a perceptlm export (save_pretrained writes it)")
    config = json.loads(path.read_text())
    if config.get("format") != EXPORT_FORMAT["format"]:
        raise ValueError(f"{path}: not a perceptlm export (format={config.get('format')!r})")
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing (save_pretrained writes it beside perceptlm.json)")
    return config, load_file(str(weights))
