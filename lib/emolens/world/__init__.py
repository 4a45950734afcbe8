"""The synthetic emotion world: a generative model of WETR's Eq. (1), V = g_v(z_e, eps_v),
T = g_t(z_e, eps_t) (seed 000, Sec. 3.2), plus audio A = g_a(z_e, eps_a), with known ground truth.

>>> from emolens.world import EmoWorld
>>> w = EmoWorld("mer", eps=0.0)
>>> s = w.sample("test", 0)
>>> s.frames.shape, s.audio.shape, s.label in w.labels
((2, 32, 32, 3), (8,), True)

Modules: :mod:`.taxonomy` (emotions, valence, glyph feature table, words, colours, views),
:mod:`.glyphs` (face pixel templates), :mod:`.prosody` (audio prototypes and noise), :mod:`.text`
(subtitle templates and :func:`vocabulary`), :mod:`.generator` (:class:`EmoWorld`).
"""
from .generator import EmoWorld
from .taxonomy import (BG_COLORS, CLOSE_PAIRS, EMOTION_WORDS, EMOTIONS, EXPRESSIONS, VALENCE, VIEWS,
                       feature_distance)
from .text import vocabulary

__all__ = ["EmoWorld", "EMOTIONS", "VIEWS", "vocabulary", "VALENCE", "CLOSE_PAIRS", "EMOTION_WORDS",
           "BG_COLORS", "EXPRESSIONS", "feature_distance"]
