"""``InterfaceModule``: frozen encoder + trainable connector + injection + LLM tuning + frozen LLM."""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from perceptlm import generation
from perceptlm.batch import Batch
from perceptlm.connectors import build_connector
from perceptlm.encoders.base import PerceptualEncoder, PerceptualFeatures
from perceptlm.injection import INJECTIONS
from perceptlm.llm.language_model import LanguageModel
from perceptlm.modules import presets
from perceptlm.modules.contrastive import ImageTextContrastive
from perceptlm.modules.evaluation import EvaluationMixin
from perceptlm.modules.persistence import FROZEN_COMPONENTS, PersistenceMixin
from perceptlm.modules.stages import initialise_from, stage_recipe
from perceptlm.tuning import PromptTokens, apply_llm_tuning


class InterfaceModule(EvaluationMixin, PersistenceMixin, LightningModule):
    """One interface mechanism between a frozen perceptual encoder and a frozen LLM.

    ``preset`` names the mechanism (:func:`perceptlm.presets.names`); ``features``, ``connector``,
    ``injection``, ``prompt_tokens`` and ``llm_tuning`` (frozen | lora | norms | full, with
    ``llm_tuning_options`` such as LoRA's ``r``) override its fields (dicts merge). ``encoder`` and ``llm``
    are zoo names or loaded modules (a loaded encoder is viewed with the preset's feature selection,
    sharing its weights). Decoding: ``max_new_tokens``, ``num_beams`` (1 = greedy),
    ``stop_strings`` (the text is cut before the first one; greedy decoding also stops there).
    Faults: a NaN/inf loss stops the run with a message (``nonfinite_loss="stop"``) or skips the
    step (``"skip"``); samples whose media fail to load are skipped, counted per epoch, and more
    than ``max_skipped_fraction`` of them is an error. Optimisation follows DePALM: AdamW (lr 8e-4, weight decay 0.1,
    eps 1e-4), linear warm-up over ``warmup_fraction`` of the steps from ``lr * min_lr_ratio``, then
    cosine decay to ``lr * min_lr_ratio``; label smoothing 0.002; loss on answer tokens + EOS.
    Two-stage systems: ``stage`` ("align" | "instruct") applies the preset's recipe (``llm_tuning``
    and ``freeze_connector`` override it) and ``init_from`` (a checkpoint or ``save_pretrained``
    folder) copies an earlier stage's weights. ``llm_lr`` is the learning rate of tuned LLM weights
    (LoRA or full; default ``lr``, or the stage recipe's: LLaVA's stage 2 tunes the LLM at 2e-5).
    ``compile_llm`` compiles each LLM decoder layer (``LanguageModel.compile_layers``; a GPU
    training step of a 7B LLM in bf16: 2.3x faster at batch 16).
    ``itc_weight`` > 0 adds BLIP-2's image-text contrastive loss on the perceptual tokens and the
    answer text to the training loss, with that weight (:mod:`perceptlm.modules.contrastive`).
    """

    def __init__(
        self,
        preset: str = "depalm-qp-l0",
        encoder: str | PerceptualEncoder = "test-tiny-vit",
        llm: str | LanguageModel = "test-tiny-llama",
        features: dict[str, Any] | None = None,
        connector: dict[str, Any] | None = None,
        injection: str | None = None,
        injection_options: dict[str, Any] | None = None,
        prompt_tokens: int | None = None,
        llm_tuning: str | None = None,
        llm_tuning_options: dict[str, Any] | None = None,
        lr: float = 8e-4,
        llm_lr: float | None = None,
        weight_decay: float = 0.1,
        adam_eps: float = 1e-4,
        warmup_fraction: float = 0.2,
        min_lr_ratio: float = 1e-4,
        label_smoothing: float = 0.002,
        max_new_tokens: int = 20,
        num_beams: int = 1,
        stop_strings: list[str] | None = None,
        eval_blind: bool = False,
        nonfinite_loss: str = "stop",
        max_skipped_fraction: float = 0.01,
        stage: str | None = None,
        init_from: str | None = None,
        freeze_connector: bool | None = None,
        compile_llm: bool = False,
        itc_weight: float = 0.0,
    ) -> None:
        super().__init__()
        from perceptlm import zoo

        self.save_hyperparameters(ignore=[] if isinstance(encoder, str) and isinstance(llm, str) else ["encoder", "llm"])
        self.encoder_name = encoder if isinstance(encoder, str) else encoder.name
        self.llm_name = llm if isinstance(llm, str) else llm.name
        recipe = stage_recipe(presets.get(preset), stage)
        self.preset = presets.get(preset).with_overrides(
            features=features, connector=connector, injection=injection, injection_options=injection_options,
            prompt_tokens=prompt_tokens,
            llm_tuning=llm_tuning or recipe.get("llm_tuning"),
        )
        if isinstance(encoder, PerceptualEncoder):  # the preset's selection, on the caller's weights
            self.encoder = encoder.with_selection(**self.preset.features)
        else:
            self.encoder = zoo.load_encoder(encoder, **self.preset.features)
        if isinstance(llm, LanguageModel) and self.preset.llm_tuning != "frozen":
            llm = copy.deepcopy(llm)  # tuning adds or unfreezes weights: leave the caller's LLM as it was
        self.llm = llm if isinstance(llm, LanguageModel) else zoo.load_llm(llm)
        self.connector = build_connector(self.encoder.embed_dim, self.llm.hidden_size, self.preset.connector)
        if self.preset.injection not in INJECTIONS:
            raise ValueError(f"unknown injection {self.preset.injection!r}; valid: {sorted(INJECTIONS)}")
        self.injection = INJECTIONS[self.preset.injection](**self.preset.injection_options)
        self.injection.install(self.llm)
        apply_llm_tuning(self.llm, self.preset.llm_tuning, **(llm_tuning_options or {}))
        if compile_llm:
            self.llm.compile_layers()
        self.prompt = PromptTokens(self.preset.prompt_tokens, self.llm.hidden_size) if self.preset.prompt_tokens else None
        self.frozen_connector = bool(recipe.get("freeze_connector", False) if freeze_connector is None else freeze_connector)
        self.llm_lr = llm_lr if llm_lr is not None else recipe.get("llm_lr")
        if self.frozen_connector:
            self.connector.requires_grad_(False)
        if itc_weight < 0:
            raise ValueError(f"itc_weight must be >= 0 (0: no contrastive loss), got {itc_weight}")
        self.contrastive = ImageTextContrastive(self.llm.hidden_size) if itc_weight > 0 else None
        if init_from:
            copied = initialise_from(self, init_from, self.trainable_keys())
            print(f"{len(copied)} tensors initialised from {init_from}")
        if nonfinite_loss not in ("stop", "skip"):
            raise ValueError(f"nonfinite_loss={nonfinite_loss!r} is unknown; valid: 'stop', 'skip'")
        self._seen: dict[str, list[int]] = {}
        # generation ends at any of these: EOS, and a chat template's end-of-turn token (datamodule.connect)
        self.stop_token_ids: list[int] = [self.llm.eos_token_id]
        self.strict_loading = False  # checkpoints hold trainable weights only; checked in on_load_checkpoint
        self.train_seconds = 0.0
        self.train_samples = 0
        self._clock: float | None = None
        self._step_clock: float | None = None

    # -- structure ---------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.llm.tokenizer

    @property
    def num_visual_tokens(self) -> int:
        """Perceptual tokens the LLM receives at evaluation (R-rand keeps fewer in training); per
        target layer for inner injection."""
        enc = self.encoder
        if getattr(self.injection, "num_prompts", 0):  # LLaMA-Adapter: the prompts carry the features
            return self.injection.num_prompts
        layers = 1 if self.injection.per_encoder_layer else enc.num_selected_layers  # per injected layer
        return self.connector.num_output_tokens(
            enc.num_tokens * layers,
            grid=None if enc.token_selection == "cls" else enc.grid,
            has_cls=enc.has_cls and enc.token_selection != "patches",
            num_layers=layers,
        )

    def train(self, mode: bool = True) -> "InterfaceModule":
        super().train(mode)
        self.encoder.train(mode)  # both stay in eval unless trainable
        self.llm.train(mode)
        if self.frozen_connector:  # a later stage's fixed connector: no dropout either
            self.connector.eval()
        return self

    def trainable_keys(self) -> set[str]:
        """State-dict keys a checkpoint holds: everything outside the frozen backbones (a frozen
        Q-Former inside the connector included) plus any trainable backbone parameter."""
        keys = {name for name, p in self.named_parameters() if p.requires_grad}
        keys |= {name for name in self.state_dict() if name.split(".")[0] not in FROZEN_COMPONENTS}
        return keys

    def parameter_table(self) -> list[tuple[str, int, int]]:
        """(component, trainable, frozen) parameter counts."""
        rows = []
        for name, module in self.named_children():
            params = list(module.parameters())
            trainable = sum(p.numel() for p in params if p.requires_grad)
            rows.append((name, trainable, sum(p.numel() for p in params) - trainable))
        return rows

    @property
    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "connect"):
            datamodule.connect(self)  # the one data<->model handshake (CLI, Trainer.fit, notebooks)

    # -- computation -------------------------------------------------------------------------------
    def perceive(self, media: Any, blind: bool = False, instruction: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Media -> LLM-width perceptual tokens ``[B, K, H]``.

        ``blind=True`` is the "blind" baseline: the same model with the perceptual tokens (the
        encoder's outputs) zeroed, so the LLM still receives the connector's summary tokens, but
        they carry no information about the media (the encoder does not run). ``media`` may also be
        precomputed :class:`PerceptualFeatures` (the feature cache): the encoder does not run then.
        ``instruction``: ``(token ids, mask)`` of the instruction text, read by instruction-aware
        connectors (InstructBLIP) and ignored by the others."""
        if blind:
            if isinstance(media, PerceptualFeatures):
                batch = media.tokens.shape[0]
            else:
                batch = len(media["input_features"]) if isinstance(media, dict) else len(media)
            return self.map(self.encoder.blank(batch, like=next(self.connector.parameters())), instruction)
        return self.map(media if isinstance(media, PerceptualFeatures) else self.encoder(media), instruction)

    def map(self, features: PerceptualFeatures, instruction: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The connector on ``features``: ``[B, K, H]``, or ``[B, layers, K, H]`` with each encoder
        layer mapped separately (one shared mapper pass per encoder layer) when the injection
        wants per-layer tokens."""
        if getattr(self.connector, "instruction_aware", False) and instruction is not None:
            ids, mask = instruction
            return self.connector(features, instruction=(self.llm.embed(ids), mask))
        if not self.injection.per_encoder_layer:
            return self.connector(features)
        tokens, layers = features.tokens, features.num_layers
        folded = PerceptualFeatures(tokens.reshape(-1, 1, *tokens.shape[2:]), features.mask.repeat_interleave(layers, 0),
                                    features.cls_index, features.grid)
        mapped = self.connector(folded)
        return mapped.view(tokens.shape[0], layers, *mapped.shape[1:])

    def prefix(self, visual: Tensor) -> Tensor:
        """Everything placed at the media position: prompt tokens, then L0 perceptual tokens."""
        parts = []
        if self.prompt is not None:
            parts.append(self.prompt(visual.shape[0]).to(visual.dtype))
        injected = self.injection.prefix(visual)
        if injected is not None:
            parts.append(injected)
        if not parts:
            return visual.new_zeros(visual.shape[0], 0, self.llm.hidden_size)
        return torch.cat(parts, dim=1)

    def _inputs(self, visual: Tensor, input_ids: Tensor, attention_mask: Tensor,
                media_position: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | int]:
        """The LLM's input embeddings and mask, and where the text went: the prefix length ``K``
        when the prefix comes first, else the index of each text token ``[B, T]``.

        ``media_position`` ``[B]``: per row, the text token index before which the prefix goes
        (LLaVA's ``<image>`` placeholder; 0 = before all text, as without it)."""
        prefix = self.prefix(visual)
        text = self.llm.embed(input_ids).to(prefix.dtype)
        batch, k = prefix.shape[:2]
        if media_position is None or k == 0:
            mask = torch.cat([attention_mask.new_ones(batch, k), attention_mask], dim=1)
            return torch.cat([prefix, text], dim=1), mask, k
        steps = torch.arange(input_ids.shape[1], device=input_ids.device)
        position = media_position.to(input_ids.device).clamp(0, input_ids.shape[1])[:, None]
        text_index = steps + k * (steps >= position)  # [B, T]
        prefix_index = position + torch.arange(k, device=input_ids.device)  # [B, K]
        width = k + input_ids.shape[1]
        hidden = prefix.shape[-1]
        embeds = text.new_zeros(batch, width, hidden)
        embeds = embeds.scatter(1, text_index[..., None].expand(-1, -1, hidden), text)
        embeds = embeds.scatter(1, prefix_index[..., None].expand(-1, -1, hidden), prefix)
        mask = attention_mask.new_ones(batch, width).scatter(1, text_index, attention_mask)
        return embeds, mask, text_index

    def _hidden(self, media: Any, input_ids: Tensor, attention_mask: Tensor, blind: bool = False,
                instruction: tuple[Tensor, Tensor] | None = None,
                media_position: Tensor | None = None) -> tuple[Tensor, Tensor | int, Tensor]:
        """Final LLM hidden states over prefix and text, where the text is (see :meth:`_inputs`), and
        the perceptual tokens."""
        visual = self.perceive(media, blind, instruction)
        embeds, mask, text_index = self._inputs(visual, input_ids, attention_mask, media_position)
        with self.injection.context(visual):
            hidden, _ = self.llm.hidden(embeds, mask)
        return hidden, text_index, visual

    def forward(self, media: Any, input_ids: Tensor, attention_mask: Tensor,
                instruction: tuple[Tensor, Tensor] | None = None, media_position: Tensor | None = None,
                blind: bool = False) -> Tensor:
        """Logits ``[B, T, V]`` over the text positions (``instruction``, ``blind``: see :meth:`perceive`;
        ``media_position``: see :meth:`_inputs`)."""
        hidden, text_index, _ = self._hidden(media, input_ids, attention_mask, blind=blind, instruction=instruction,
                                             media_position=media_position)
        if isinstance(text_index, int):
            return self.llm.logits(hidden[:, text_index:])
        return self.llm.logits(hidden.gather(1, text_index[..., None].expand(-1, -1, hidden.shape[-1])))

    def loss(self, batch: Batch) -> Tensor:
        """Cross-entropy on supervised tokens only; the LM head runs on those positions alone.

        Each text token is predicted from the position before it: the prefix's last position
        predicts the text token that follows the prefix, so an empty prompt still trains the first
        target token (a first text token with nothing before it is not predicted). In training with
        ``itc_weight`` > 0 the contrastive loss is added (logged as ``train/itc``)."""
        prompt = batch.attention_mask.bool() & (batch.labels == -100)  # the instruction: unsupervised text
        hidden, text_index, visual = self._hidden(batch.media, batch.input_ids, batch.attention_mask,
                                                  instruction=(batch.input_ids, prompt),
                                                  media_position=batch.media_position)
        labels = batch.labels
        if isinstance(text_index, int):
            text_index = torch.arange(labels.shape[1], device=labels.device).expand_as(labels) + text_index
        predictor = text_index - 1
        supervised = (labels != -100) & (predictor >= 0)
        rows, columns = supervised.nonzero(as_tuple=True)
        logits = self.llm.logits(hidden[rows, predictor[rows, columns]])
        loss = F.cross_entropy(logits.float(), labels[rows, columns], label_smoothing=self.hparams.label_smoothing)
        if self.contrastive is None or not self.training:
            return loss
        itc = self.contrastive(visual.flatten(1, -2), self._answer_embedding(labels))
        self.log("train/itc", itc, batch_size=labels.shape[0])
        return loss + self.hparams.itc_weight * itc

    def _answer_embedding(self, labels: Tensor) -> Tensor:
        """``[B, H]``: the mean of the LLM's input embeddings over each sample's answer tokens (a fixed
        text representation: no gradient reaches the embeddings through it)."""
        answer = labels != -100
        if not bool(answer.any(1).all()):
            raise ValueError("ITC needs an answer in every sample; some sample has no supervised token")
        with torch.no_grad():
            embedded = self.llm.embed(labels.clamp(min=0)).float()
        weights = answer.float().unsqueeze(-1)
        return (embedded * weights).sum(1) / weights.sum(1)

    @torch.no_grad()
    def generate(
        self,
        media: Any,
        input_ids: Tensor,
        attention_mask: Tensor,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
        blind: bool = False,
        media_position: Tensor | None = None,
    ) -> Tensor:
        """New token ids ``[B, <=max_new_tokens]`` after left-padded prompts (EOS, then padding);
        ``media_position``: see :meth:`_inputs` (an index into the left-padded prompt)."""
        max_new_tokens = self.hparams.max_new_tokens if max_new_tokens is None else max_new_tokens
        num_beams = num_beams or self.hparams.num_beams
        visual = self.perceive(media, blind, instruction=(input_ids, attention_mask))  # the prompt instructs
        embeds, mask, _ = self._inputs(visual, input_ids, attention_mask, media_position)
        eos, pad = self.stop_token_ids, self.tokenizer.pad_token_id
        with self.injection.context(visual):
            if num_beams == 1:
                stops = self.hparams.stop_strings
                stop = generation.stop_string_criterion(self.tokenizer, stops) if stops else None
                return generation.greedy(self.llm, embeds, mask, max_new_tokens, eos, pad, stop=stop)
            return generation.beam_search(self.llm, embeds, mask, max_new_tokens, eos, pad, num_beams,
                                          expand=self.injection.expand)

    # -- training ----------------------------------------------------------------------------------
    def _count_skipped(self, batch: Batch, stage: str) -> None:
        skipped, seen = batch.skipped, self._seen.get(stage, [0, 0])  # a resumed epoch skips on_*_epoch_start
        for sample_id, reason in skipped[: max(0, 3 - seen[0])]:  # the first few by name; the count is logged
            print(f"skipped {stage} sample {sample_id}: {reason}")
        self._seen[stage] = [seen[0] + len(skipped), seen[1] + len(skipped) + len(batch.ids)]

    def _check_skipped(self, stage: str) -> None:
        skipped, total = self._seen.pop(stage, [0, 0])
        if total:
            self.log(f"data/{stage}_skipped", float(skipped), reduce_fx="sum", sync_dist=True)
            if skipped / total > self.hparams.max_skipped_fraction:
                raise RuntimeError(
                    f"{skipped} of {total} {stage} samples this epoch had media that failed to load, more "
                    f"than max_skipped_fraction={self.hparams.max_skipped_fraction}; see the messages above"
                )

    def on_train_epoch_start(self) -> None:
        self._seen["train"] = [0, 0]

    def on_train_epoch_end(self) -> None:
        self._check_skipped("train")

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        self._count_skipped(batch, "train")
        if not batch.ids:
            return None  # every sample of this batch was skipped
        loss = self.loss(batch)
        batch_size = batch.input_ids.shape[0]
        if not torch.isfinite(loss):
            message = f"non-finite training loss ({loss.item()}) at step {self.global_step}, batch {batch.ids[:4]}"
            if self.hparams.nonfinite_loss == "stop":
                raise FloatingPointError(message + "; set nonfinite_loss='skip' to skip such steps")
            print(f"{message}: step skipped")
            self.log("train/nonfinite_steps", 1.0, reduce_fx="sum", on_step=False, on_epoch=True, batch_size=batch_size)
            return None  # Lightning skips the optimizer step
        self.train_samples += batch_size * self.trainer.world_size
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self._log_throughput(batch)
        return loss

    def _log_throughput(self, batch: Batch) -> None:
        """``train/samples_per_second`` and ``train/tokens_per_second`` (prefix + real text tokens
        through the LLM; this rank's batch times the world size) over the wall time since the
        previous step, and the learning rate ``train/lr``."""
        now = time.perf_counter()
        previous, self._step_clock = self._step_clock, now
        if previous is None:
            return
        seconds, world = now - previous, self.trainer.world_size
        prefix = self.preset.prompt_tokens + (self.num_visual_tokens if self.preset.injection == "prefix" else 0)
        tokens = float(batch.attention_mask.sum()) + prefix * batch.input_ids.shape[0]
        self.log_dict({"train/samples_per_second": batch.input_ids.shape[0] * world / seconds,
                       "train/tokens_per_second": tokens * world / seconds,
                       "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"]},
                      batch_size=batch.input_ids.shape[0])

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip as configured; under FSDP through the wrapped module's own ``clip_grad_norm_`` (the
        gradients are sharded), which Lightning's FSDP precision plugin leaves to the module."""
        from lightning.pytorch.strategies import FSDPStrategy

        if isinstance(self.trainer.strategy, FSDPStrategy) and gradient_clip_val:
            if gradient_clip_algorithm not in (None, "norm"):
                raise ValueError(f"FSDP clips by norm only; got gradient_clip_algorithm={gradient_clip_algorithm!r}")
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> Any:
        groups: dict[tuple[bool, bool], list[Tensor]] = {}  # (LLM weight, decayed) -> parameters
        for name, param in self.named_parameters():
            if param.requires_grad:
                groups.setdefault((name.startswith("llm."), param.ndim >= 2), []).append(param)
        lr, decay = self.hparams.lr, self.hparams.weight_decay
        optimizer = torch.optim.AdamW(
            [{"params": params, "weight_decay": decay if decayed else 0.0,
              "lr": self.llm_lr if in_llm and self.llm_lr is not None else lr}
             for (in_llm, decayed), params in sorted(groups.items(), key=lambda item: (item[0][0], not item[0][1]))],
            lr=lr,
            eps=self.hparams.adam_eps,
        )
        # The schedule spans max_steps when it is set, so a run stopped early by max_epochs (or a
        # pre-emption) and resumed follows the same learning-rate curve as an uninterrupted one.
        steps = self.trainer.max_steps
        total = max(1, int(steps if steps and steps > 0 else self.trainer.estimated_stepping_batches))
        warmup = int(self.hparams.warmup_fraction * total)
        floor = self.hparams.min_lr_ratio

        def factor(step: int) -> float:
            if step < warmup:
                return floor + (1 - floor) * step / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        rows = self.parameter_table()
        if self.trainer.is_global_zero:
            lines = [f"{'component':<12}{'trainable':>14}{'frozen':>14}"]
            lines += [f"{name:<12}{t:>14,}{f:>14,}" for name, t, f in rows]
            print("\n".join(lines))
        for logger in self.loggers:
            if hasattr(logger, "log_table"):
                logger.log_table("parameters", columns=["component", "trainable", "frozen"], data=[list(r) for r in rows])
            if hasattr(logger, "log_hyperparams"):
                logger.log_hyperparams({"trainable_params": self.num_trainable_parameters,
                                        "visual_tokens": self.num_visual_tokens})

    def on_train_start(self) -> None:
        self._clock = time.perf_counter()
        self._step_clock = None

    def on_train_end(self) -> None:
        self._stop_clock()

    def _stop_clock(self) -> None:
        if self._clock is not None:
            now = time.perf_counter()
            self.train_seconds += now - self._clock
            self._clock = now
