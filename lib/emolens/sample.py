"""The one sample type every source yields: the synthetic world and real dataset loaders alike.

Every method, notebook and evaluation consumes :class:`Sample`, so a real benchmark loaded from a
local copy runs through exactly the same code as the embedded emotion world.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass
class Sample:
    """One multimodal emotion sample.

    Attributes:
        uid: unique id within its dataset (e.g. ``"world-mer/test/000123"``).
        frames: ``[T, H, W, 3]`` uint8 RGB frames (T >= 1; a still image has T = 1).
        audio: audio evidence or ``None``. For the world: ``[F]`` float32 prosody features
            (pitch, energy, tempo, ...). For real data: ``[S]`` float32 mono waveform.
        audio_kind: ``"features"``, ``"waveform"`` or ``None`` (no audio).
        subtitle: the utterance text ("" when the dataset has none).
        label: the gold label, a name from the dataset's label set (or None for unlabeled data).
        labels_by_modality: what each modality alone expresses, e.g.
            ``{"visual": "anger", "audio": "happiness", "text": "anger"}`` (world only; real data: {}).
        cue_mask: ``[T, H, W]`` bool, pixels of the emotion-carrying glyph (ground truth; world only).
        subtitle_cue_words: indices into ``subtitle.split()`` of the words that carry emotion (world only).
        score: a continuous label where the dataset has one (CH-SIMS sentiment in [-1, 1]).
        meta: anything else (view, split, eps, conflict mode, irrelevant attributes such as
            ``bg_color`` and ``n_objects``, valence, sample rate, source paths).
    """

    uid: str
    frames: np.ndarray
    audio: Optional[np.ndarray] = None
    audio_kind: Optional[str] = None
    subtitle: str = ""
    label: Optional[str] = None
    labels_by_modality: dict = field(default_factory=dict)
    cue_mask: Optional[np.ndarray] = None
    subtitle_cue_words: Optional[list] = None
    score: Optional[float] = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        f = np.asarray(self.frames)
        if f.ndim == 3:  # a single image [H, W, 3]
            f = f[None]
        if f.ndim != 4 or f.shape[-1] != 3:
            raise ValueError(f"Sample {self.uid}: frames must be [T, H, W, 3], got shape {tuple(f.shape)}")
        self.frames = f
        if self.audio_kind not in (None, "features", "waveform"):
            raise ValueError(f"Sample {self.uid}: audio_kind must be 'features', 'waveform' or None, got {self.audio_kind!r}")
        if self.audio is not None and self.audio_kind is None:
            raise ValueError(f"Sample {self.uid}: audio given without audio_kind ('features' or 'waveform')")

    @property
    def has_audio(self) -> bool:
        return self.audio is not None

    def cue_patches(self, patch: int) -> np.ndarray:
        """Ground-truth cue tokens: ``[T, H // patch, W // patch]`` bool, True where a patch contains
        at least one glyph pixel. Raises ValueError when the sample has no ground truth."""
        if self.cue_mask is None:
            raise ValueError(f"Sample {self.uid} has no cue_mask (ground truth exists only for the emotion world)")
        t, h, w = self.cue_mask.shape
        gh, gw = h // patch, w // patch
        m = self.cue_mask[:, : gh * patch, : gw * patch].reshape(t, gh, patch, gw, patch)
        return m.any(axis=(2, 4))
