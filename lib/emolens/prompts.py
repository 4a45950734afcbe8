"""Query templates, as structured prompts whose named spans every model family can locate.

A :class:`Prompt` is a list of text segments, some of them named spans (``q_pos``, ``q_neg``,
``foe``, ``question``, ``options``, ``ambiguity``, ``cot``). Processors render the segments with
their own chat template and locate each span through the tokenizer's character offsets, so no
method ever hard-codes a token id.

Wording follows the papers where they give it:

* SEPM (seed 001) Sec. 3.2: the coarse-grained query Q_c ("Which of the following descriptions best
  represents the image? A. Positive B. Negative. Positive emotions include [PEC]. Negative emotions
  include [NEC]. Answer directly with the letter of the chosen option."), the fine-grained query Q_f
  with the same question, options restricted to PEC or NEC (:func:`sepm_query`), and the ambiguous
  branch (all categories plus an ambiguity description). ``subject`` is "image" for image datasets
  and "video" for video datasets (the paper evaluates images only).
* SEPM Sec. 4.2: its Zero-shot-CoT wording "Let's think step by step, then answer with the option's
  letter from the given choices directly." (:data:`SEPM_COT`); WETR Sec. 4.2 appends "let's think step
  by step" (:data:`COT`, Kojima et al.).
* SEPM Sec. 3.3: the Focus-on-Emotion prefix "Please focus on emotion." (span ``foe``).
* WETR (seed 000) Sec. 3.3: two short instruction spans, an emotion-seeking Q_pos and an
  emotion-irrelevant Q_neg "that can be answered without emotion" (spans ``q_pos``, ``q_neg``).
  They are part of WETR's method, so only NTS/STR/WETR and the selection baselines that read them
  get them by default; zero-shot, CoT, AR and PAI get the plain query (:func:`fine_query` with
  ``contrastive=False``), SEPM its own wording. ``prompt_spans=true`` on a method is the explicit
  "same prompt for every method" switch (the WETR-span fine query everywhere, for ablations).
* Option order: :func:`shuffle_options` permutes which letter carries which label (seeded per
  sample) to measure letter-position bias; answers are read through ``Prompt.options``.

Choice left open by SEPM: views with a neutral class (MER2023) have no neutral valence. Here the
coarse query stays binary (Eq. 4 is a two-option variance) and ``neutral`` is kept in *both* fine
option lists, so a confident coarse decision can still end in ``neutral``.
"""
from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

LETTERS = tuple(string.ascii_uppercase)
WORD_PATTERN = r"[A-Za-z0-9']+|[^\sA-Za-z0-9']"

Q_POS = "Look for the face, voice and words that reveal the emotion."
Q_NEG = "Note the background colour and the objects."
FOE = "Please focus on emotion."
COT = "Let's think step by step."
SEPM_COT = "Let's think step by step, then answer with the option's letter from the given choices directly."
COT_STYLES = ("wetr", "sepm")
SEPM_QUESTION = "Which of the following descriptions best represents the {subject}?"
ANSWER = "Answer directly with the letter of the chosen option."


@dataclass
class Prompt:
    """A query as ordered segments ``(span_name_or_None, text)``.

    Attributes:
        segments: the text pieces in order; named ones become TokenLayout spans.
        options: option letter -> label (what the answer letter means), e.g. {"A": "anger"}.
        kind: ``fine`` | ``coarse`` | ``ambiguous`` | ``irrelevant``.
        target: the correct letter when known (training and irrelevant-question accuracy).
    """

    segments: list
    options: dict = field(default_factory=dict)
    kind: str = "fine"
    target: Optional[str] = None

    @property
    def text(self) -> str:
        return " ".join(t for _, t in self.segments if t)

    def span_chars(self) -> dict:
        """Character ranges ``name -> (start, end)`` of the named spans within :attr:`text`, plus
        ``query``: the whole query text (SEPM Table 2's "query-related" rows score against it)."""
        text = self.text
        out, pos = ({"query": (0, len(text))} if text else {}), 0
        for name, t in self.segments:
            if not t:
                continue
            if name is not None:
                out[name] = (pos, pos + len(t))
            pos += len(t) + 1
        return out

    def with_target(self, label: str) -> "Prompt":
        inv = {v: k for k, v in self.options.items()}
        return Prompt(list(self.segments), dict(self.options), self.kind, inv.get(label))


def _options(labels: Sequence[str]) -> tuple[str, dict]:
    if len(labels) > len(LETTERS):
        raise ValueError(f"{len(labels)} options exceed the {len(LETTERS)} available letters")
    opts = {LETTERS[i]: lab for i, lab in enumerate(labels)}
    return " ".join(f"{k}. {v}" for k, v in opts.items()), opts


def fine_query(labels: Sequence[str], *, foe: bool = False, contrastive: bool = True,
               cot: Union[bool, str] = False, ambiguity: Optional[str] = None, subject: str = "person") -> Prompt:
    """Fine-grained query Q_f (SEPM Eq. 2 / the default MER query).

    Args:
        labels: the candidate categories, in option order (A, B, ...).
        foe: prefix SEPM's "Please focus on emotion." (span ``foe``).
        contrastive: include WETR's Q_pos and Q_neg spans (needed by NTS/STR/WETR).
        cot: add the zero-shot chain-of-thought sentence (span ``cot``): ``True``/``"wetr"`` = Kojima's
            "Let's think step by step." (WETR Sec. 4.2) before the answer instruction; ``"sepm"`` = SEPM
            Sec. 4.2's sentence, which replaces the answer instruction.
        ambiguity: an ambiguity description (SEPM's low-confidence branch, span ``ambiguity``).
    """
    if not labels:
        raise ValueError("fine_query needs at least one label")
    opt_text, opts = _options(labels)
    segs = []
    if foe:
        segs.append(("foe", FOE))
    if contrastive:
        segs += [("q_pos", Q_POS), ("q_neg", Q_NEG)]
    if ambiguity:
        segs.append(("ambiguity", ambiguity))
    segs.append(("question", f"Which emotion does the {subject} show?"))
    segs.append(("options", opt_text))
    _cot_tail(segs, cot)
    return Prompt(segs, opts, "ambiguous" if ambiguity else "fine")


def _cot_tail(segs: list, cot) -> None:
    if cot not in (False, None, True, *COT_STYLES):
        raise ValueError(f"cot must be true/false or one of {list(COT_STYLES)}, got {cot!r}")
    if cot == "sepm":
        segs.append(("cot", SEPM_COT))
        return
    if cot:
        segs.append(("cot", COT))
    segs.append((None, ANSWER))


def sepm_query(labels: Sequence[str], *, foe: bool = False, subject: str = "image",
               ambiguity: Optional[str] = None, cot: Union[bool, str] = False, contrastive: bool = False) -> Prompt:
    """SEPM's fine-grained query Q_f (Sec. 3.2, as printed): "Which of the following descriptions best
    represents the image? [PEC] / [NEC] Answer directly with the letter of the chosen option.", with the
    FoE prefix (span ``foe``) and, in the low-confidence branch, the ambiguity description before the
    question. Spans: ``question``, ``options`` (and ``foe``, ``ambiguity``, ``cot``). ``contrastive``
    adds WETR's Q_pos / Q_neg spans after the FoE prefix (only for a composition with a WETR-family
    method, ``methods.compose``)."""
    if not labels:
        raise ValueError("sepm_query needs at least one label")
    opt_text, opts = _options(labels)
    segs = [("foe", FOE)] if foe else []
    if contrastive:
        segs += [("q_pos", Q_POS), ("q_neg", Q_NEG)]
    if ambiguity:
        segs.append(("ambiguity", ambiguity))
    segs += [("question", SEPM_QUESTION.format(subject=subject)), ("options", opt_text)]
    _cot_tail(segs, cot)
    return Prompt(segs, opts, "ambiguous" if ambiguity else "fine")


def shuffle_options(prompt: Prompt, rng) -> Prompt:
    """The same prompt with its option labels permuted over the letters (``rng``: a numpy Generator,
    seeded per sample by the caller). The ``options`` segment is re-rendered; every other segment is
    unchanged. Coarse queries keep their printed capitalisation ("A. Negative B. Positive")."""
    labels = list(prompt.options.values())
    perm = [labels[i] for i in rng.permutation(len(labels))]
    show = (lambda x: x.capitalize()) if prompt.kind == "coarse" else (lambda x: x)
    opts = {LETTERS[i]: lab for i, lab in enumerate(perm)}
    text = " ".join(f"{k}. {show(v)}" for k, v in opts.items())
    segs = [(n, text if n == "options" else t) for n, t in prompt.segments]
    return Prompt(segs, opts, prompt.kind, None)


def coarse_query(valence_groups: dict, *, foe: bool = True, subject: str = "image") -> Prompt:
    """Coarse-grained query Q_c of SEPM Sec. 3.2 (Eq. 1), as printed: "Which of the following
    descriptions best represents the image? A. Positive B. Negative Positive emotions include [PEC].
    Negative emotions include [NEC]. Answer directly ...". ``valence_groups`` maps
    ``positive``/``negative`` (and optionally ``neutral``) to labels; option labels are
    ``positive``/``negative``."""
    for g in ("positive", "negative"):
        if not valence_groups.get(g):
            raise ValueError(f"coarse_query needs a non-empty '{g}' valence group, got {sorted(valence_groups)}")
    pec = ", ".join(valence_groups["positive"])
    nec = ", ".join(valence_groups["negative"])
    segs = []
    if foe:
        segs.append(("foe", FOE))
    segs += [
        ("question", SEPM_QUESTION.format(subject=subject)),
        ("options", "A. Positive B. Negative"),
        (None, f"Positive emotions include {pec}. Negative emotions include {nec}."),
        (None, ANSWER),
    ]
    return Prompt(segs, {"A": "positive", "B": "negative"}, "coarse")


def ambiguity_description(valence_groups: dict) -> str:
    """SEPM's 'ambiguous-related description' for the low-confidence branch (C <= alpha). The paper
    gives no wording; ours states the stage-1 indecision in the world's vocabulary."""
    return "The emotion may be positive or negative, so consider every option."


def irrelevant_query(attribute: str, values: Sequence[str]) -> Prompt:
    """An emotion-irrelevant question answered from the world's nuisance attributes
    (``bg_color`` or ``n_objects``) — what WETR's Q_neg is about."""
    q = {"bg_color": "What is the background colour?", "n_objects": "How many objects are there?"}
    if attribute not in q:
        raise ValueError(f"unknown irrelevant attribute {attribute!r}; use one of {sorted(q)}")
    opt_text, opts = _options(list(values))
    segs = [("question", q[attribute]), ("options", opt_text), (None, ANSWER)]
    return Prompt(segs, opts, "irrelevant")


def vocabulary() -> list:
    """Every word the templates can produce (for the embedded model's word-level tokenizer)."""
    words = set()
    for s in (Q_POS, Q_NEG, FOE, COT, ANSWER,
              "Which emotion does the person show?",
              "Which of the following descriptions best represents the person?",
              "A. positive B. negative Positive emotions include . Negative emotions include .",
              ambiguity_description({}), "What is the background colour?", "How many objects are there?"):
        words.update(split_words(s))
    words.update(LETTERS)
    return sorted(words)


def split_words(text: str) -> list:
    """The word/punctuation split used by the embedded tokenizer: runs of letters, digits and
    apostrophes are words (case kept), every other non-space character is its own token."""
    import re

    return re.findall(WORD_PATTERN, text)
