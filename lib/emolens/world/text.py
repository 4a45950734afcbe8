"""Subtitles of the emotion world: T = g_t(z_e, eps_t) of WETR Eq. (1).

A subtitle is built from a closed set of templates and words (all lowercase, single words separated by
one space, no punctuation):

- with probability ``p_text_emotion`` the utterance is an *emotion template* whose slot ``{w}`` is filled
  with one word from :data:`emolens.world.taxonomy.EMOTION_WORDS` of the text emotion, e.g.
  ``"i feel so furious about this"``; the index of that word in ``subtitle.split()`` is the subtitle's
  ground-truth cue (``Sample.subtitle_cue_words``);
- otherwise a *filler template* with no emotion evidence, e.g. ``"we talked about the weather today"``;
- the nuisance eps_t adds redundant filler: ``floor(eps)`` words plus one more with probability
  ``eps - floor(eps)`` (so "about eps" extra words), each drawn from :data:`FILLER_WORDS` and inserted at
  a random word boundary, so at eps = 7 about seven irrelevant words surround the single emotion word.

:func:`vocabulary` lists every word that any subtitle or attribute answer can contain: template and
filler words, all :data:`EMOTION_WORDS`, the 12 emotion names, the valence names, the background /
object colour names, the object shape names (``square``, ``disc``), and the object counts both as
digits ``1`` .. ``4`` (an attribute answer is ``str(sample.meta["n_objects"])``, a digit) and as the number
words ``one`` .. ``four`` (for prose prompts).
"""
from __future__ import annotations

import numpy as np

from .taxonomy import BG_COLORS, EMOTION_WORDS, EMOTIONS, NUMBER_DIGITS, NUMBER_WORDS, OBJECT_SHAPES

EMOTION_TEMPLATES: tuple = (
    "i feel so {w} about this",
    "honestly i am {w} right now",
    "that made me {w}",
    "we were all {w} after the call",
    "she said she was {w} today",
    "he looked {w} when he heard it",
    "i am {w} about the news",
    "to be honest it left me {w}",
)

FILLER_TEMPLATES: tuple = (
    "we talked about the weather today",
    "the meeting was moved to tuesday",
    "i think the train leaves at noon",
    "she put the keys on the table",
    "he read the report this morning",
    "they will call us after lunch",
    "the shop on the corner is open",
    "we need more paper for the printer",
)

#: redundant words inserted by the subtitle nuisance (eps_t); none carries emotion.
FILLER_WORDS: tuple = (
    "well", "so", "um", "like", "really", "just", "then", "also", "anyway", "basically",
    "actually", "you", "know", "okay", "yeah", "maybe", "again", "there", "here", "now",
)

VALENCE_WORDS: tuple = ("positive", "negative", "neutral")


def vocabulary() -> list:
    """Sorted list of every word a subtitle or an attribute answer of the world can contain."""
    words = set()
    for t in EMOTION_TEMPLATES:
        words.update(w for w in t.split() if w != "{w}")
    for t in FILLER_TEMPLATES:
        words.update(t.split())
    words.update(FILLER_WORDS)
    for ws in EMOTION_WORDS.values():
        words.update(ws)
    words.update(EMOTIONS)
    words.update(VALENCE_WORDS)
    words.update(name for name, _ in BG_COLORS)
    words.update(OBJECT_SHAPES)
    words.update(NUMBER_WORDS)
    words.update(NUMBER_DIGITS)
    return sorted(words)


def make_subtitle(rng_base: np.random.Generator, rng_noise: np.random.Generator, text_emotion, eps: float):
    """Return ``(subtitle, cue_word_indices)``.

    ``text_emotion`` is an emotion name (an emotion template is used) or None (a filler template).
    ``rng_base`` chooses the template and the emotion word; ``rng_noise`` the extra filler words, so
    the same sample at a higher eps keeps its utterance and only gains filler.
    """
    tpl_e = EMOTION_TEMPLATES[int(rng_base.integers(len(EMOTION_TEMPLATES)))]
    tpl_f = FILLER_TEMPLATES[int(rng_base.integers(len(FILLER_TEMPLATES)))]
    word_choice = int(rng_base.integers(1 << 30))
    if text_emotion is None:
        words = tpl_f.split()
        cue = None
    else:
        pool = EMOTION_WORDS[text_emotion]
        word = pool[word_choice % len(pool)]
        words = []
        cue = None
        for w in tpl_e.split():
            if w == "{w}":
                cue = len(words)
                w = word
            words.append(w)
    eps = float(eps)
    n_extra = int(np.floor(eps)) + int(rng_noise.random() < eps - np.floor(eps))
    for _ in range(n_extra):
        pos = int(rng_noise.integers(len(words) + 1))
        words.insert(pos, FILLER_WORDS[int(rng_noise.integers(len(FILLER_WORDS)))])
        if cue is not None and pos <= cue:
            cue += 1
    return " ".join(words), ([] if cue is None else [cue])
