"""``LanguageModel``: a frozen Hugging Face decoder-only LM with public injection points."""

from __future__ import annotations

import contextlib
import functools
import inspect
import types
from typing import Any, Callable

import torch
import torch.utils.checkpoint
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from perceptlm.llm.adapters import adapter_for


def positions_from_mask(attention_mask: Tensor, past_length: int = 0) -> Tensor:
    """Position ids that skip padding, so a left-padded sample sees the same positions as alone."""
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.clamp(min=0)
    return positions[:, past_length:]


class LanguageModel(nn.Module):
    """Wraps any decoder-only ``AutoModelForCausalLM`` (:func:`~perceptlm.llm.adapters.adapter_for`:
    a known family, or a layout discovered from the model's modules).

    Public points the injection mechanisms use: :meth:`embed` (token embeddings), :attr:`layers`
    (the decoder layers, for per-layer injection), :meth:`hidden` (the base model run on input
    embeddings, final norm included) and :meth:`logits` (the LM head, applied only where needed).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        name: str = "llm",
        trainable: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.adapter = adapter_for(model.config.model_type, model.base_model)
        self.trainable = trainable
        self.dropout_in_training = False  # DePALM runs its frozen OPT in train mode: dropout, no gradient
        if tokenizer.pad_token_id is None:
            # Padding positions are masked out; any id works, EOS is the usual choice.
            tokenizer.pad_token = tokenizer.eos_token
        if not trainable:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> "LanguageModel":
        # Frozen LLMs stay in eval mode (no dropout) inside ``trainer.fit`` unless ``dropout_in_training``.
        return super().train(mode and (self.trainable or self.dropout_in_training))

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        """Add ``tokens`` to the tokenizer as special tokens (never split) and return their ids;
        the embedding matrix grows (new rows frozen like the rest) only when the ids exceed it
        (OPT-6.7B has spare rows: DePALM's ``</a>`` answer token takes id 50265 of 50272)."""
        self.tokenizer.add_tokens(list(tokens), special_tokens=True)
        rows = self.model.get_input_embeddings().weight.shape[0]
        if len(self.tokenizer) > rows:
            self.model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
            self.requires_grad_(self.trainable)
        return self.tokenizer.convert_tokens_to_ids(list(tokens))

    # -- structure -----------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the LLM's weights (its input embeddings')."""
        return self.model.get_input_embeddings().weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    @property
    def base(self) -> nn.Module:
        return self.model.base_model

    @property
    def layers(self) -> nn.ModuleList:
        return self.adapter.layers(self.base)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def compile_layers(self, **options: Any) -> None:
        """``torch.compile`` each decoder layer in place (regional compilation). The layers share
        one compiled graph, so compile time does not grow with depth, and the fused elementwise
        kernels (norms, activations, rotary embedding) shorten a training step on a GPU. Meant for
        training; decoding steps of changing length may recompile or fall back to eager. With
        activation checkpointing the layer's own forward is compiled, inside the checkpoint."""
        for layer in self.layers:
            if self.activation_checkpointing:
                layer._perceptlm_forward = torch.compile(functools.partial(type(layer).forward, layer), **options)
            else:
                layer.compile(**options)

    def trainable_in_float32(self) -> None:
        """Keep what trains (LoRA adapters, tuned norms) in float32 beside half-precision weights."""
        for parameter in self.parameters():
            if parameter.requires_grad and parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()

    def enable_activation_checkpointing(self, replay: Callable[[], contextlib.AbstractContextManager] | None = None) -> None:
        """Recompute each decoder layer's activations in the backward pass instead of keeping them
        (``torch.utils.checkpoint``, non-reentrant), whenever gradients are recorded; decoding and
        evaluation run the layers as before. A layer's memory from forward to backward drops to its
        input. The layer's forward is wrapped in place (its module, hooks and state-dict keys stay);
        forward pre-hooks (cross-attention blocks) run outside the recomputed region.

        ``replay``: called at each checkpointed forward, it returns a context manager entered around
        that layer's recomputation, which must restore the state the forward saw (an injection's
        perceptual tokens: :meth:`perceptlm.injection.base.Injection.replay`)."""
        for layer in self.layers:
            if getattr(layer, "_compiled_call_impl", None) is not None:
                raise ValueError(f"{self.name}: enable activation checkpointing before compile_layers() "
                                 "(the checkpoint then wraps the compiled layer)")
            layer._perceptlm_replay, layer._perceptlm_forward = replay, None
            layer.forward = types.MethodType(_checkpointed_forward, layer)
        self.activation_checkpointing = True

    activation_checkpointing = False

    @property
    def eos_token_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError(f"{self.name}: the tokenizer defines no EOS token")
        return int(eos)

    # -- computation ---------------------------------------------------------------------------
    def embed(self, input_ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def hidden(
        self,
        inputs_embeds: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> tuple[Tensor, Any]:
        """Final hidden states ``[B, T, H]`` (after the final norm) and the KV cache."""
        past_length = 0 if past_key_values is None else past_key_values.get_seq_length()
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, past_length)
        cache_arg = {self._cache_name: past_key_values} if past_key_values is not None else {}
        output = self.base(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            return_dict=True,
            **cache_arg,
        )
        return output.last_hidden_state, getattr(output, self._cache_name) if use_cache else None

    @functools.cached_property
    def _cache_name(self) -> str:
        """transformers renamed ``past_key_values`` to ``cache``; use what this version takes."""
        parameters = inspect.signature(self.base.forward).parameters
        return "cache" if "cache" in parameters else "past_key_values"

    def logits(self, hidden: Tensor) -> Tensor:
        """The LM head on the given hidden states (call it on supervised positions only)."""
        logits = self.model.get_output_embeddings()(hidden)
        config = self.model.config  # what a family's own forward applies after its LM head
        if getattr(config, "logit_scale", None):  # Cohere
            logits = logits * config.logit_scale
        if getattr(config, "logits_scaling", None):  # Granite
            logits = logits / config.logits_scaling
        scale = getattr(config, "final_logit_softcapping", None)  # Gemma 2 / 3
        if scale:
            logits = torch.tanh(logits / scale) * scale
        return logits


def _checkpointed_forward(layer: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """A decoder layer's own forward, checkpointed while gradients are recorded (bound to the layer
    by :meth:`LanguageModel.enable_activation_checkpointing`; a deep copy rebinds to the copy)."""
    forward = layer._perceptlm_forward or functools.partial(type(layer).forward, layer)  # compiled, or as defined
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    replay = layer._perceptlm_replay

    def contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        return contextlib.nullcontext(), (replay() if replay is not None else contextlib.nullcontext())

    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, context_fn=contexts, **kwargs)
