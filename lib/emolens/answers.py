"""Reading the answer: label scores from next-token logits over option letters (verbalizers).

The survey (seed 002, Eq. 25) scores a closed label set by the model's next-token probabilities of
each label's verbalizer; here the verbalizers are the option letters of a lettered query, resolved
from the tokenizer (with and without a leading space), never hard-coded -- or, for a model whose
``LoadedModel.verbalizer`` is ``"word"`` (emolens-tiny, recipe v2), each option's own label word.

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
        ids = letter_ids_fn(dict(opts))  # letters (a dict iterates as its letters) or, for word verbalizers, labels
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
    """Map a generated free-text answer to a label, in this order: a leading option letter ("B", "B.",
    "(B)"); an explicit "answer is B" / "Answer: B" / "answer: (B)"; the first label name mentioned.
    Returns None when nothing matches (counted as wrong, never guessed)."""
    t = text.strip()
    m = re.match(r"^\(?([A-Z])[\).:\s]?", t)
    if m and m.group(1) in options and (len(t) == 1 or not t[1:2].isalpha()):
        return options[m.group(1)]
    m = re.search(r"answer(?: is)?\s*[:\-]?\s*\(?([A-Z])\b", t, flags=re.IGNORECASE)
    if m and m.group(1).upper() in options:
        return options[m.group(1).upper()]
    low = t.lower()
    hits = [(low.find(lab.lower()), lab) for lab in options.values() if lab.lower() in low]
    return min(hits)[1] if hits else None


def _decoder(lm):
    tok = getattr(lm.processor, "tokenizer", lm.processor)
    if not hasattr(tok, "decode"):
        raise ValueError(f"the {lm.family!r} processor has no tokenizer to decode generated text; use answer=logits")
    return tok


def generate_answers(lm, batch, max_new_tokens: int = 64):
    """Greedy generation on an encoded batch (under whatever ``intervene`` plan is active): the text,
    parsed into a label (:func:`parse_free_text`; None = unparseable), and the option scores of the
    first generated token (the same reading as ``answer=logits``, kept for calibration analyses).

    Returns ``(answers, texts)``: :class:`Answer` per row (``label``/``letter`` None when the text
    names no option) and the decoded generated texts.
    """
    tok = _decoder(lm)
    with torch.no_grad():
        out = lm.model.generate(**batch.inputs, max_new_tokens=int(max_new_tokens), do_sample=False,
                                output_logits=True, return_dict_in_generate=True)
    L = batch.inputs["input_ids"].shape[1]
    first = out.logits[0]                                            # [B, V] logits of the first step
    ref = read_answers(first, batch.prompts, lm.option_token_ids)
    answers, texts = [], []
    for b, (prompt, r) in enumerate(zip(batch.prompts, ref)):
        text = tok.decode(out.sequences[b, L:], skip_special_tokens=True).strip()
        label = parse_free_text(text, prompt.options)
        inv = {v: k for k, v in prompt.options.items()}
        answers.append(Answer(inv.get(label) if label is not None else None, label, r.option_probs, r.vocab_probs))
        texts.append(text)
    return answers, texts
