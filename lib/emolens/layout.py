"""TokenLayout: where each kind of token sits in one sequence of a (possibly padded) batch.

Every method reads positions from a layout, never from hard-coded token ids. Positions are absolute
indices into the model's (left-padded) input row, so ``layout.visual`` indexes the key axis of the
attention probabilities directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

SPAN_NAMES = ("q_pos", "q_neg", "foe", "question", "options", "ambiguity", "cot")


def _ix(x) -> np.ndarray:
    return np.asarray(x if x is not None else [], dtype=np.int64).reshape(-1)


@dataclass
class TokenLayout:
    """Token positions of one sequence.

    Attributes (all position arrays are int64 ``[n]``, sorted, absolute in the padded row):
        seq_len: length of the padded row this layout belongs to.
        pad: number of left-padding tokens (positions ``< pad`` are padding).
        visual: visual token positions ``[N_v]`` (I_v in WETR).
        visual_grid: ``[N_v, 3]`` (frame, row, col) of each visual token, or None for models
            whose vision tower does not expose a grid.
        audio: audio token positions ``[N_a]``.
        content: subtitle content token positions ``[N_con]`` (I_con in WETR).
        instruction: every other non-pad text token ``[N_inst]`` (I_inst; always kept by NTS).
        spans: named prompt spans (subset of ``instruction``): ``q_pos`` (emotion-seeking),
            ``q_neg`` (emotion-irrelevant), ``foe`` ("Please focus on emotion."), ``question``,
            ``options``, ``ambiguity``, ``cot``. Missing spans are absent or empty.
        answer: position whose next-token logits give the answer (the last prompt token).
        cue_visual: ``[N_v]`` bool ground truth (visual token carries the emotion glyph), or None.
        cue_content: ``[N_con]`` bool ground truth (content token is an emotion word), or None.
        options: option letter -> label, for lettered queries (e.g. {"A": "anger", ...}).
    """

    seq_len: int
    pad: int = 0
    visual: np.ndarray = field(default_factory=lambda: _ix(None))
    visual_grid: Optional[np.ndarray] = None
    audio: np.ndarray = field(default_factory=lambda: _ix(None))
    content: np.ndarray = field(default_factory=lambda: _ix(None))
    instruction: np.ndarray = field(default_factory=lambda: _ix(None))
    spans: dict = field(default_factory=dict)
    answer: int = -1
    cue_visual: Optional[np.ndarray] = None
    cue_content: Optional[np.ndarray] = None
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.visual = _ix(self.visual)
        self.audio = _ix(self.audio)
        self.content = _ix(self.content)
        self.instruction = _ix(self.instruction)
        self.spans = {k: _ix(v) for k, v in self.spans.items()}
        if self.answer < 0:
            self.answer = self.seq_len - 1

    # ------------------------------------------------------------------ queries
    def span(self, name: str) -> np.ndarray:
        """Positions of a named prompt span; ValueError (one line, with the fix) when empty."""
        pos = self.spans.get(name)
        if pos is None or pos.size == 0:
            have = sorted(k for k, v in self.spans.items() if v.size)
            raise ValueError(
                f"prompt span {name!r} is empty in this layout (spans present: {have}); "
                f"use a prompt template that contains it (see emolens.prompts)"
            )
        return pos

    def group(self, name: str) -> np.ndarray:
        """Positions of a token group by name: ``visual``, ``audio``, ``content`` (alias ``subtitle``),
        ``instruction``, or any span name. Raises ValueError when the group is empty."""
        key = {"subtitle": "content", "text": "content"}.get(name, name)
        if key in ("visual", "audio", "content", "instruction"):
            pos = getattr(self, key)
            if pos.size == 0:
                raise ValueError(
                    f"no {name} tokens in this layout; pick a dataset/model with {name} input "
                    f"or choose another token group"
                )
            return pos
        if key in SPAN_NAMES or key in self.spans:
            return self.span(key)
        raise ValueError(f"unknown token group {name!r}; use one of visual, audio, content, instruction, {', '.join(SPAN_NAMES)}")

    @property
    def valid(self) -> np.ndarray:
        """Non-pad positions ``[seq_len - pad]``."""
        return np.arange(self.pad, self.seq_len)

    def validate(self, seq_len: Optional[int] = None) -> "TokenLayout":
        """Check every position lies inside ``[pad, seq_len)``; raise a one-line ValueError otherwise."""
        n = self.seq_len if seq_len is None else seq_len
        groups = {"visual": self.visual, "audio": self.audio, "content": self.content,
                  "instruction": self.instruction, **{f"span {k}": v for k, v in self.spans.items()},
                  "answer": _ix([self.answer])}
        for name, pos in groups.items():
            if pos.size and (pos.min() < self.pad or pos.max() >= n):
                raise ValueError(
                    f"layout {name} positions span [{pos.min()}, {pos.max()}] but the sequence has "
                    f"{n} tokens ({self.pad} padding); rebuild the layout with the processor that made the inputs"
                )
        return self

    def shifted(self, extra_pad: int) -> "TokenLayout":
        """The same layout with ``extra_pad`` more left-padding tokens (for batching)."""
        s = lambda a: a + extra_pad  # noqa: E731
        return TokenLayout(
            seq_len=self.seq_len + extra_pad, pad=self.pad + extra_pad, visual=s(self.visual),
            visual_grid=self.visual_grid, audio=s(self.audio), content=s(self.content),
            instruction=s(self.instruction), spans={k: s(v) for k, v in self.spans.items()},
            answer=self.answer + extra_pad, cue_visual=self.cue_visual, cue_content=self.cue_content,
            options=dict(self.options),
        )
