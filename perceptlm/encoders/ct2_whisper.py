"""Read CTranslate2 ``model.bin`` files and rebuild Whisper (Radford et al. 2022) as a transformers model.

No dependency on the ``ctranslate2`` package: the binary layout (little-endian) is

    uint32 binary_version | string spec_name | uint32 spec_revision | uint32 num_variables
    per variable: string name | uint8 rank | uint32 dims[rank] | uint8 dtype_id | uint32 num_bytes | bytes
    uint32 num_aliases | per alias: string alias | string target

where ``string`` is a uint16 length (counting a trailing NUL) followed by the UTF-8 bytes and the NUL.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

SUPPORTED_BINARY_VERSIONS = (4, 5, 6)
# CTranslate2 DataType ids; bfloat16 has no numpy dtype and is widened to float32.
CT2_DTYPES: dict[int, Any] = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
# Scalar spec flags of a Whisper model and the only values this converter implements.
WHISPER_FLAGS = {
    "decoder/activation": 3,  # GELU (erf)
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/alibi": 0,
    "decoder/start_from_zero_embedding": 0,
}
# Legacy alignment metadata: read and ignored (config.json carries the alignment heads).
IGNORED_SCALARS = ("decoder/alignment_heads", "decoder/alignment_layer")


class CT2FormatError(ValueError):
    """A CTranslate2 model file is corrupt, truncated or of an unsupported kind."""


class _Reader:
    def __init__(self, path: Path, data: bytes) -> None:
        self.path, self.data, self.offset = path, data, 0

    def fail(self, what: str) -> CT2FormatError:
        return CT2FormatError(
            f"{self.path}: corrupt or truncated CTranslate2 model ({what} at byte {self.offset} "
            f"of {len(self.data)})"
        )

    def unpack(self, fmt: str, what: str) -> Any:
        size = struct.calcsize("<" + fmt)
        if self.offset + size > len(self.data):
            raise self.fail(f"file ends inside {what}")
        value = struct.unpack_from("<" + fmt, self.data, self.offset)[0]
        self.offset += size
        return value

    def take(self, count: int, what: str) -> memoryview:
        if self.offset + count > len(self.data):
            raise self.fail(f"file ends inside {what} ({count} bytes expected)")
        view = memoryview(self.data)[self.offset : self.offset + count]
        self.offset += count
        return view

    def string(self, what: str) -> str:
        length = self.unpack("H", f"{what} length")
        raw = bytes(self.take(length, what))
        if length == 0 or raw[-1] != 0:
            raise self.fail(f"{what} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None


def read_ct2_model(path: str | Path) -> dict[str, np.ndarray]:
    """Parse a CTranslate2 ``model.bin`` into ``{name: array}`` with aliases resolved (an alias maps to
    the same array object as its target). Arrays keep the stored dtype and are read-only views of the
    file bytes; bfloat16 is widened to float32. The spec name and revision are stored under
    ``"__spec__"`` / ``"__revision__"`` as 0-d arrays."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no CTranslate2 model.bin here")
    reader = _Reader(path, path.read_bytes())
    version = reader.unpack("I", "binary version")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise CT2FormatError(
            f"{path}: CTranslate2 binary version {version} is not supported "
            f"(valid: {SUPPORTED_BINARY_VERSIONS}); the file may be corrupt or not a model.bin"
        )
    spec = reader.string("spec name")
    revision = reader.unpack("I", "spec revision")
    variables: dict[str, np.ndarray] = {"__spec__": np.array(spec), "__revision__": np.array(revision)}
    for _ in range(reader.unpack("I", "variable count")):
        name = reader.string("variable name")
        rank = reader.unpack("B", f"rank of {name!r}")
        shape = tuple(reader.unpack("I", f"shape of {name!r}") for _ in range(rank))
        dtype_id = reader.unpack("B", f"dtype of {name!r}")
        if dtype_id not in CT2_DTYPES:
            raise reader.fail(f"unknown dtype id {dtype_id} for {name!r} (valid: {sorted(CT2_DTYPES)})")
        num_bytes = reader.unpack("I", f"byte count of {name!r}")
        raw = reader.take(num_bytes, f"data of {name!r}")
        dtype = CT2_DTYPES[dtype_id]
        item = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        if num_bytes != item * int(np.prod(shape, dtype=np.int64)):
            raise reader.fail(f"{name!r} has {num_bytes} bytes but shape {shape} needs {item}-byte items")
        if dtype == "bfloat16":
            array = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, dtype)
        variables[name] = array.reshape(shape)
    for _ in range(reader.unpack("I", "alias count")):
        alias, target = reader.string("alias"), reader.string("alias target")
        if target not in variables:
            raise reader.fail(f"alias {alias!r} points to missing variable {target!r}")
        variables[alias] = variables[target]
    if reader.offset != len(reader.data):
        raise reader.fail(f"{len(reader.data) - reader.offset} trailing bytes after the aliases")
    return variables


class _Source:
    """Hands out CT2 variables as float tensors and records which were used."""

    def __init__(self, variables: dict[str, np.ndarray]) -> None:
        self.variables, self.used = variables, set()

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self.variables:
            raise KeyError(f"CTranslate2 Whisper model lacks variable {name!r}")
        self.used.add(name)
        array = self.variables[name]
        scale_name = name + "_scale"  # int8/int16 quantised weights: w = q / scale (per output row)
        if name.endswith("/weight") and scale_name in self.variables:
            self.used.add(scale_name)
            scale = np.asarray(self.variables[scale_name], np.float32)
            return torch.from_numpy(array.astype(np.float32) / scale.reshape(-1, *[1] * (array.ndim - 1)))
        return torch.from_numpy(np.array(array, dtype=np.float32))

    def scalar(self, name: str) -> int:
        return int(self(name).item())


def _count_layers(variables: dict[str, np.ndarray], stack: str) -> int:
    found = {int(m.group(1)) for n in variables if (m := re.match(rf"{stack}/layer_(\d+)/", n))}
    if found != set(range(len(found))) or not found:
        raise ValueError(f"CTranslate2 Whisper model: {stack} layers {sorted(found)} are not 0..n-1")
    return len(found)


def _special_ids(tokenizer: Any, vocab_size: int) -> dict[str, int]:
    names = {"eos": "<|endoftext|>", "sot": "<|startoftranscript|>", "no_timestamps": "<|notimestamps|>",
             "prev": "<|startofprev|>", "transcribe": "<|transcribe|>", "translate": "<|translate|>"}
    if tokenizer is not None:
        return {key: int(tokenizer.convert_tokens_to_ids(token)) for key, token in names.items()}
    if vocab_size != 51864:
        raise ValueError("special token ids are only known for English-only Whisper (vocab 51864); pass a tokenizer")
    return {"eos": 50256, "sot": 50257, "no_timestamps": 50362, "prev": 50360, "translate": 50357, "transcribe": 50358}


def convert_whisper(variables: dict[str, np.ndarray], config: dict | None = None, tokenizer: Any = None):
    """Build a float32 ``WhisperForConditionalGeneration`` from parsed CT2 ``WhisperSpec`` variables;
    sizes come from tensor shapes, ``config`` is the CT2 ``config.json`` (suppress/alignment ids)."""
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    config = config or {}
    spec = str(variables.get("__spec__", ""))
    if spec and spec != "WhisperSpec":
        raise ValueError(f"CTranslate2 model spec is {spec!r}; only 'WhisperSpec' can be converted")
    get = _Source(variables)
    get.used.update({"__spec__", "__revision__"})
    for flag, valid in WHISPER_FLAGS.items():
        if flag in variables and get.scalar(flag) != valid:
            raise ValueError(f"CTranslate2 Whisper flag {flag}={get.scalar(flag)} is unsupported (valid: {valid})")
    get.used.update(n for n in IGNORED_SCALARS if n in variables)

    vocab_size, d_model = variables["decoder/embeddings/weight"].shape
    ids = _special_ids(tokenizer, vocab_size)
    hf_config = WhisperConfig(
        vocab_size=vocab_size, d_model=d_model, num_mel_bins=variables["encoder/conv1/weight"].shape[1],
        encoder_layers=_count_layers(variables, "encoder"), decoder_layers=_count_layers(variables, "decoder"),
        encoder_attention_heads=get.scalar("encoder/num_heads"),
        decoder_attention_heads=get.scalar("decoder/num_heads"),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        bos_token_id=ids["eos"], eos_token_id=ids["eos"], pad_token_id=ids["eos"],
        decoder_start_token_id=ids["sot"], begin_suppress_tokens=None, suppress_tokens=None,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):  # skip random init: every parameter is assigned (and checked) below
        model = WhisperForConditionalGeneration(hf_config)
    model = model.to_empty(device="cpu")
    model.tie_weights()
    params = dict(model.named_parameters())
    assigned: set[str] = set()

    def put(hf_name: str, value: torch.Tensor) -> None:
        if hf_name not in params:
            raise KeyError(f"transformers Whisper has no parameter {hf_name!r}")
        if hf_name in assigned:
            raise ValueError(f"transformers parameter {hf_name!r} assigned twice")
        if params[hf_name].shape != value.shape:
            raise ValueError(f"{hf_name}: shape {tuple(value.shape)} != expected {tuple(params[hf_name].shape)}")
        with torch.no_grad():
            params[hf_name].copy_(value)
        assigned.add(hf_name)

    def dense(ct2: str, hf: str, bias: bool = True) -> None:
        put(f"{hf}.weight", get(f"{ct2}/weight"))
        if bias:
            put(f"{hf}.bias", get(f"{ct2}/bias"))

    def norm(ct2: str, hf: str) -> None:
        put(f"{hf}.weight", get(f"{ct2}/gamma"))
        put(f"{hf}.bias", get(f"{ct2}/beta"))

    def split(ct2: str, hf: str, projections: tuple[str, ...]) -> None:
        weights = get(f"{ct2}/weight").chunk(len(projections))
        biases = get(f"{ct2}/bias").chunk(len(projections))
        for proj, weight, bias in zip(projections, weights, biases):
            put(f"{hf}.{proj}.weight", weight)
            if proj == "k_proj":  # Whisper's key projection has no bias; CT2 stores zeros
                if bias.abs().max() > 0:
                    raise ValueError(f"{ct2}: non-zero key bias cannot be represented in transformers Whisper")
            else:
                put(f"{hf}.{proj}.bias", bias)

    for side in ("encoder", "decoder"):
        put(f"model.{side}.embed_positions.weight", get(f"{side}/position_encodings/encodings"))
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        for i in range(getattr(hf_config, f"{side}_layers")):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            split(f"{src}/self_attention/linear_0", f"{dst}.self_attn", ("q_proj", "k_proj", "v_proj"))
            dense(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
            norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            dense(f"{src}/ffn/linear_0", f"{dst}.fc1")
            dense(f"{src}/ffn/linear_1", f"{dst}.fc2")
            norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
            if side == "decoder":
                dense(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
                split(f"{src}/attention/linear_1", f"{dst}.encoder_attn", ("k_proj", "v_proj"))
                dense(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
                norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
    for conv in ("conv1", "conv2"):
        dense(f"encoder/{conv}", f"model.encoder.{conv}")
    put("model.decoder.embed_tokens.weight", get("decoder/embeddings/weight"))
    model.tie_weights()
    if "decoder/projection/weight" in variables:  # CT2 aliases the output projection to the embeddings
        if variables["decoder/projection/weight"] is not variables["decoder/embeddings/weight"]:
            raise ValueError("CTranslate2 decoder/projection/weight is not tied to decoder/embeddings/weight")
        get.used.add("decoder/projection/weight")
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        raise ValueError("proj_out is not tied to the decoder embeddings after conversion")

    missing = sorted(set(params) - assigned)
    unused = sorted(set(variables) - get.used)
    if missing or unused:
        raise ValueError(f"Whisper conversion incomplete: HF parameters not assigned {missing}; "
                         f"CT2 variables not used {unused}")

    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["sot"], bos_token_id=ids["eos"], eos_token_id=ids["eos"],
        pad_token_id=ids["eos"], max_length=hf_config.max_target_positions,
        suppress_tokens=config.get("suppress_ids", []), begin_suppress_tokens=config.get("suppress_ids_begin", []),
        no_timestamps_token_id=ids["no_timestamps"], prev_sot_token_id=ids["prev"],
        is_multilingual=vocab_size >= 51865, return_timestamps=False,
        task_to_id={"transcribe": ids["transcribe"], "translate": ids["translate"]},
        alignment_heads=config.get("alignment_heads"),
    )
    return model.eval()
