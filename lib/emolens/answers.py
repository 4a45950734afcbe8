"""Reading the answer: label scores from next-token logits over option letters (verbalizers).

The survey (seed 002, Eq. 25) scores a closed label set by the model's next-token probabilities of
each label's verbalizer; here the verbalizers are the option letters of a lettered query, resolved
from the tokenizer (with and without a leading space), never hard-coded.

Two distributions are returned because the papers use both:

* ``option_probs``: softmax restricted to the options' letter logits (for each letter, the logsumexp
  over its token ids) — the prediction is its argmax;
* ``vocab_probs``: each letter's probability under the softmax over the whole vocabulary (summed over
  its ids) — what SEPM's Eq. 3 computes before taking p_A, p_B.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch


@dataclass
class Answer:
    """One prediction: the chosen letter, its label, and both probability views."""

    letter: str
    label: str
    option_probs: dict = field(default_factory=dict)
    vocab_probs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"letter": self.letter, "label": self.label,
                "option_probs": {k: round(float(v), 6) for k, v in self.option_probs.items()},
                "vocab_probs": {k: round(float(v), 6) for k, v in self.vocab_probs.items()}}


def letter_scores(logits: torch.Tensor, options: dict, letter_ids: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of each option for one row.

    Args:
        logits: ``[V]`` next-token logits at the answer position.
        options: letter -> label, in option order.
        letter_ids: letter -> list of token ids spelling it.

    Returns:
        ``(option_probs [n_opt], vocab_probs [n_opt])``.
    """
    lg = logits.float()
    logp = torch.log_softmax(lg, dim=-1)
    per = []
    vocab = []
    for letter in options:
        ids = torch.as_tensor(letter_ids[letter], device=lg.device)
        per.append(torch.logsumexp(lg[ids], dim=0))
        vocab.append(torch.logsumexp(logp[ids], dim=0).exp())
    per_t = torch.stack(per)
    return torch.softmax(per_t, dim=0), torch.stack(vocab)


def read_answers(logits: torch.Tensor, prompts: Sequence, letter_ids_fn) -> list:
    """``logits [B, V]`` at each row's answer position + the prompts -> list[:class:`Answer`]."""
    out = []
    for b, prompt in enumerate(prompts):
        opts = prompt.options
        if not opts:
            raise ValueError("prompt has no lettered options; use a template from emolens.prompts")
        ids = letter_ids_fn(list(opts))
        op, vp = letter_scores(logits[b], opts, ids)
        k = int(op.argmax())
        letters = list(opts)
        out.append(Answer(letters[k], opts[letters[k]], dict(zip(letters, op.tolist())), dict(zip(letters, vp.tolist()))))
    return out


def answer_logits(model, batch, **kwargs) -> torch.Tensor:
    """Run the model on a :class:`~emolens.models.base.Batch` and return ``[B, V]`` logits at each row's
    answer position (the last position: batches are left-padded)."""
    with torch.no_grad():
        out = model(**batch.inputs, logits_to_keep=1, use_cache=False, **kwargs)
    return out.logits[:, -1]


def parse_free_text(text: str, options: dict) -> Optional[str]:
    """Map a generated free-text answer to a label: a leading option letter ("B", "B.", "(B)") or the
    first label name mentioned. Returns None when nothing matches (counted as wrong, never guessed)."""
    t = text.strip()
    m = re.match(r"^\(?([A-Z])[\).:\s]?", t)
    if m and m.group(1) in options and (len(t) == 1 or not t[1:2].isalpha()):
        return options[m.group(1)]
    low = t.lower()
    hits = [(low.find(lab.lower()), lab) for lab in options.values() if lab.lower() in low]
    return min(hits)[1] if hits else None
