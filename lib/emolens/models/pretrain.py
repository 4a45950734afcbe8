"""The pretraining world of emolens-tiny (recipe v2, issue 12): a generic mixture, distinct from the benchmarks.

Real MLLMs are pretrained on web data and meet MER2023 / EmoSet zero-shot. emolens-tiny likewise learns
perception and general question answering from a *generic* mixture over the world's scenes (EmoWorld
version 2), never from the benchmark views' query, and never from any method's prompt text:

* questions about faces and expressions, voices (prosody), words (subtitles), valence, background
  colours and object counts, each in several paraphrased templates (:data:`TEMPLATES`);
* options are a random subset of candidates (2-8) in a random order, so the model must read the options
  (the v1 model memorised letter <-> emotion: its WAR fell to chance with shuffled options);
* half of the perception questions are answered with the option's *word* and half with its *letter*, and
  an option look-up task ("Which letter stands for anger?") exercises the reading skill on its own. In the
  30-minute budget the 1.8 M-parameter decoder does not learn to bind letters to option words (letter
  answers stay at chance; benchmarks/calibration_log.md, entries 3-4), so the shipped model is read by the
  option's *word* (the survey's verbalizer, seed 002 Eq. 25; ``LoadedModel.verbalizer == "word"``), and its
  last stage (1b) answers every perception question by word (``make_pretraining_example(word_p=1.0,
  lookup=False)``);
* the emotion is named in varied wordings: a quarter of the emotion questions list the subtitle
  adjectives (e.g. "furious") instead of the emotion names;
* statistics differ from the benchmarks the way web data differs from emotion benchmarks
  (:data:`PRETRAINING_STATISTICS`): little nuisance (eps in {0, 0.5, 1}), consistent modalities, audio
  more often the informative modality than the small face.

None of the methods' sentences appears (WETR's Q_pos / Q_neg, SEPM's fine / coarse / ambiguous query
wordings, "Please focus on emotion.", the CoT sentences; tests/test_pretraining.py scans every template
and answer instruction). Their words (focus, emotion, positive, negative, face, voice, ...) do appear, in
other sentences, so the methods' prompts are new compositions of known words.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .. import prompts as P

#: question templates by kind; ``{m}`` is filled with a modality noun where the kind allows it
TEMPLATES: dict = {
    "visual": (
        "What feeling does the yellow face express?",
        "Look at the yellow face: which mood does it show?",
        "Which expression is on the speaker's face?",
        "Tell me the mood of the yellow face.",
        "Focus on the face of the speaker and name its feeling.",
    ),
    "audio": (
        "How does the voice sound?",
        "Which mood does the speaker's voice carry?",
        "Listen to the tone: what feeling is in it?",
        "Focus on the voice and name the feeling it carries.",
    ),
    "text": (
        "Which feeling do the words convey?",
        "Read the subtitle: what mood do the words reveal?",
        "What emotion is named or implied by the words?",
    ),
    "any": (
        "What is the speaker feeling?",
        "Which feeling fits this clip best?",
        "Which emotion is expressed here?",
        "Using the face, the voice and the words, which mood is it?",
        "Note every cue you can: what emotion does the speaker have?",
    ),
    "valence": (
        "Is the speaker's mood positive or negative?",
        "Is this feeling pleasant or unpleasant? Positive is pleasant and negative is unpleasant.",
        "Which valence does the emotion have?",
    ),
    "bg_color": (
        "Which colour is the background?",
        "Behind the objects, what colour do you see?",
        "Name the colour of the background of the picture.",
    ),
    "n_objects": (
        "Count the objects: how many are there?",
        "How many squares and discs can you see?",
        "What number of objects is in the picture?",
    ),
}
#: instructions of the word-answer half: the answer is the option's own word (one token), not its letter
WORD_INSTRUCTIONS: tuple = (
    "Answer with the word itself.",
    "Say the answer in one word.",
    "Name it in one word.",
)
#: option look-up (a generic reading skill: find a named option and give its letter; no perception)
LOOKUP_TEMPLATES: tuple = (
    "Which letter stands for {w}?",
    "Find {w} in the list: which letter is it?",
    "Where is {w} among the options?",
)
ANSWER_INSTRUCTIONS: tuple = (
    "Reply with the letter of the best option.",
    "Give only the letter.",
    "Answer with one letter.",
    "Choose an option and give its letter.",
    "Which letter is correct?",
)

#: the mixture's statistics (recorded in the model card as the world's pretraining statistics)
PRETRAINING_STATISTICS: dict = {
    "scenes": "EmoWorld version 2 scenes of the mer (clip + audio + subtitle) and emoset (still + caption) views, "
              "train split, consistent modalities",
    "eps": [0.0, 0.5, 1.0],
    "informative": {"all": 0.30, "audio only": 0.25, "visual only": 0.25, "text only": 0.20},
    "question_kinds": {"emotion": 0.675, "valence": 0.125, "bg_color": 0.10, "n_objects": 0.10},
    "answer_form": "every answer is the option's own word (never its letter): lettered options are shown, and "
                   "the instruction asks for the word (WORD_INSTRUCTIONS); answers are read by the option word "
                   "(verbalizer 'word'). Tried and dropped (calibration log, entries 3-6): 50 % letter answers and "
                   "an option look-up task, whose letter binding never formed in the budget",
    "emotion_question_targets": "a question about the informative modality (visual / audio / text templates) or a "
                                "modality-free one; candidates: the answer plus 1-7 other emotions of all 12, in random order",
    "emotion_wordings": "names (75 %) or subtitle adjectives (25 %, e.g. 'furious' for anger)",
    "option_order": "random permutation per example",
    "templates": {k: len(v) for k, v in TEMPLATES.items()},
    "word_instructions": len(WORD_INSTRUCTIONS),
}

_EMO_P = (0.50, 0.125, 0.10, 0.10, 0.175)
_INF = ((("visual", "audio", "text"), 0.30), (("audio",), 0.25), (("visual",), 0.25), (("text",), 0.20))


def pretraining_worlds(seed: int) -> dict:
    """The EmoWorld (version 2) instances the mixture draws scenes from, keyed by (view, eps, informative)."""
    from ..world import EmoWorld

    ws = {}
    for view in ("mer", "emoset"):
        for eps in PRETRAINING_STATISTICS["eps"]:
            for inf, _ in _INF:
                if view == "emoset" and inf == ("audio",):
                    continue
                pt = 1.0 if inf == ("text",) else 0.5
                ws[(view, eps, inf)] = EmoWorld(view, eps=eps, informative=inf, p_text_emotion=pt, seed=seed,
                                                version=2)
    return ws


def all_texts() -> list:
    """Every sentence the mixture can put in a prompt (for the no-method-prompt test)."""
    return ([t for v in TEMPLATES.values() for t in v] + list(ANSWER_INSTRUCTIONS) + list(WORD_INSTRUCTIONS)
            + list(LOOKUP_TEMPLATES))


def _prompt(question: str, values: list, answer: str, rng: np.random.Generator, *, word: Optional[bool] = None,
            word_p: float = 0.5) -> P.Prompt:
    """A lettered multiple-choice prompt. ``word``: answer with the option's word (its token) instead of its
    letter (None: a coin flip, 50 %)."""
    opt_text, opts = P._options(values)
    word = bool(rng.random() < word_p) if word is None else word
    inst = WORD_INSTRUCTIONS if word else ANSWER_INSTRUCTIONS
    segs = [("question", question), ("options", opt_text), (None, inst[int(rng.integers(len(inst)))])]
    pr = P.Prompt(segs, opts, "pretraining")
    return P.Prompt(segs, opts, "pretraining", answer) if word else pr.with_target(answer)


def _candidates(rng: np.random.Generator, answer: str, pool: list, k_max: int = 7) -> list:
    others = [x for x in pool if x != answer]
    k = int(rng.integers(1, min(k_max, len(others)) + 1))
    vals = [answer] + [others[i] for i in rng.choice(len(others), size=k, replace=False)]
    return [vals[i] for i in rng.permutation(len(vals))]


def make_pretraining_example(ws: dict, rng: np.random.Generator, *, word_p: float = 1.0, lookup: bool = False):
    """Draw one (sample, prompt-with-target) from the generic pretraining mixture. ``word_p``: share of
    perception questions answered with the option's word (else its letter); ``lookup``: include the
    option look-up task (else its share goes to the emotion questions)."""
    from ..world import EMOTIONS
    from ..world.taxonomy import BG_COLORS, EMOTION_WORDS, NUMBER_DIGITS, VALENCE

    view = "mer" if rng.random() < 0.6 else "emoset"
    eps = float(rng.choice(PRETRAINING_STATISTICS["eps"]))
    inf = _INF[int(rng.choice(len(_INF), p=[p for _, p in _INF]))][0]
    if view == "emoset" and inf == ("audio",):
        view = "mer"
    s = ws[(view, eps, inf)].sample("train", int(rng.integers(0, 10_000_000)))
    kind = ("emotion", "valence", "bg_color", "n_objects", "lookup")[int(rng.choice(5, p=_EMO_P))]
    if kind == "lookup" and not lookup:
        kind = "emotion"
    if kind == "lookup":  # pure reading: the options are emotion names, adjectives, colours or digits
        pool = (list(EMOTIONS), [w for ws_ in EMOTION_WORDS.values() for w in ws_], [c for c, _ in BG_COLORS],
                list(NUMBER_DIGITS))[int(rng.integers(4))]
        ans = pool[int(rng.integers(len(pool)))]
        q = LOOKUP_TEMPLATES[int(rng.integers(len(LOOKUP_TEMPLATES)))].format(w=ans)
        return s, _prompt(q, _candidates(rng, ans, pool), ans, rng, word=False)
    if kind == "bg_color":
        q = TEMPLATES["bg_color"][int(rng.integers(len(TEMPLATES["bg_color"])))]
        return s, _prompt(q, _candidates(rng, s.meta["bg_color"], [c for c, _ in BG_COLORS], 5), s.meta["bg_color"], rng, word_p=word_p)
    if kind == "n_objects":
        q = TEMPLATES["n_objects"][int(rng.integers(len(TEMPLATES["n_objects"])))]
        ans = str(s.meta["n_objects"])
        return s, _prompt(q, _candidates(rng, ans, list(NUMBER_DIGITS), 3), ans, rng, word_p=word_p)
    if kind == "valence" and VALENCE[s.label] != "neutral":
        q = TEMPLATES["valence"][int(rng.integers(len(TEMPLATES["valence"])))]
        vals = ["positive", "negative"] if rng.random() < 0.5 else ["negative", "positive"]
        if rng.random() < 0.5:
            vals = [v.capitalize() for v in vals]
        ans = [v for v in vals if v.lower() == VALENCE[s.label]][0]
        return s, _prompt(q, vals, ans, rng, word_p=word_p)
    mod = inf[0] if len(inf) == 1 and rng.random() < 0.7 else "any"
    q = TEMPLATES[mod][int(rng.integers(len(TEMPLATES[mod])))]
    cands = _candidates(rng, s.label, list(EMOTIONS))
    if rng.random() < 0.25:  # varied wording: the emotions named by adjectives
        words = {e: EMOTION_WORDS[e][int(rng.integers(len(EMOTION_WORDS[e])))] for e in cands}
        return s, _prompt(q, [words[e] for e in cands], words[s.label], rng, word_p=word_p)
    return s, _prompt(q, cands, s.label, rng, word_p=word_p)

