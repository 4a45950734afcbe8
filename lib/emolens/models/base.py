"""What `load_model` returns, for every family: the model, its processor, and an encoder that
turns samples + structured prompts into batched model inputs and per-sample TokenLayouts."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from ..layout import TokenLayout


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU. Anything else is passed to torch.device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'") from e
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available here; use device='auto' or 'cpu'")
    return d


def resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on a CUDA device that supports it (``torch.cuda.is_bf16_supported()``:
    Ampere and later), float16 on older CUDA cards (T4, V100), float32 on the CPU; strings like
    'float16' accepted.

    float16 and STR: gamma-scaling multiplies hidden states by up to ``1 + delta`` (5 at delta = 4), and
    fp16's largest finite value is 65504; real decoders carry outlier features of several thousand, so
    a scaled state can overflow to inf. emolens scales in float32 and clamps to the dtype's finite range
    when casting back (``intervene``'s ``ResidualScale``), so an fp16 run stays finite; where the clamp
    acts, the state is not exactly gamma * h (bf16 has float32's range and is never clamped).
    """
    if dtype in (None, "auto"):
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or one of {sorted(table)}")
    return table[dtype]


@dataclass
class Batch:
    """Model inputs for a batch and where every token sits.

    Attributes:
        inputs: keyword arguments for ``model(**inputs)`` (input_ids ``[B, L]``, attention_mask
            ``[B, L]`` left-padded, plus the family's media tensors), already on the model's device.
        layouts: one :class:`TokenLayout` per row.
        prompts: the structured prompts that were rendered.
    """

    inputs: dict
    layouts: list
    prompts: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.layouts)


@dataclass
class LoadedModel:
    """A model ready for emolens: ``model, processor, encode = load_model(...)`` also works.

    ``encode(samples, prompts) -> Batch``; ``option_token_ids(letters) -> {letter: [ids]}`` gives every
    vocabulary id that spells the letter (with and without a leading space), resolved from the
    tokenizer, never hard-coded.
    """

    model: Any
    processor: Any
    family: str
    device: torch.device
    dtype: torch.dtype
    encoder: Callable = None
    letter_ids: Callable = None
    name: str = ""
    info: dict = field(default_factory=dict)
    #: how an option is read from the next-token logits (the survey's verbalizers, seed 002 Eq. 25):
    #: "letter" (the option's letter; every HF model) or "word" (the option's own label word, for a model
    #: pretrained to name its answers: emolens-tiny recipe v2, see its model card)
    verbalizer: str = "letter"
    word_ids: Callable = None

    def encode(self, samples: Sequence, prompts: Sequence) -> Batch:
        if len(samples) != len(prompts):
            raise ValueError(f"encode got {len(samples)} samples but {len(prompts)} prompts; give one prompt per sample")
        if not samples:
            raise ValueError("encode got an empty batch")
        return self.encoder(samples, prompts)

    def option_token_ids(self, options) -> dict:
        """``{letter: [token ids]}`` of each option's verbalizer. ``options``: the letters, or a prompt's
        ``{letter: label}`` dict; with ``verbalizer == "word"`` and a dict, the ids are the label word's
        (in every capitalisation the vocabulary has), so the option whose *word* scores highest wins."""
        if self.verbalizer == "word" and isinstance(options, dict):
            by_label = self.word_ids(list(options.values()))
            return {k: by_label[v] for k, v in options.items()}
        return self.letter_ids(list(options))

    @property
    def num_layers(self) -> int:
        from ..attention import text_config

        return int(text_config(self.model).num_hidden_layers)

    def __iter__(self):
        yield self.model
        yield self.processor
        yield self.encode
