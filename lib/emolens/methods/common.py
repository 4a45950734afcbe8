"""Shared plumbing of all methods: encode, run (optionally under an intervention plan), read answers.

Prompts (issue: fidelity to the papers): each method gets the prompt of its own paper by default.
:func:`fine_prompts` gives the plain fine query (zero-shot, CoT, AR, PAI); WETR's Q_pos/Q_neg spans are
added only by the methods that read them (NTS/STR/WETR and the selection baselines) or when a
method's ``prompt_spans=true`` asks for the shared prompt (the "same prompt for every method" switch).

Answers: ``answer="logits"`` reads the option letter from the next-token logits (one forward);
``answer="generate"`` generates greedily up to ``max_new_tokens`` under the same plan and parses the
text (``answers.generate_answers``); an unparseable answer has ``label=None`` and counts wrong.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .. import prompts as P
from ..answers import answer_logits, generate_answers, read_answers
from .base import Prediction, Task


def fine_prompts(samples: Sequence, task: Task, **kw) -> list:
    """The fine query for every sample: the plain query by default (``contrastive=False``);
    ``contrastive=True`` adds WETR's Q_pos/Q_neg spans."""
    kw.setdefault("contrastive", False)
    return [P.fine_query(task.labels, **kw) for _ in samples]


def forward_logits(lm, batch, plan=None):
    """One forward of an encoded batch, under ``plan`` when given: ``(logits [B, V], trace_or_None)``."""
    if plan is None:
        return answer_logits(lm.model, batch), None
    from ..intervene import intervene

    with intervene(lm.model, batch.layouts, plan) as trace:
        logits = answer_logits(lm.model, batch)
    return logits, trace


def forward_generate(lm, batch, plan=None, max_new_tokens: int = 64):
    """Greedy generation of an encoded batch, under ``plan`` when given:
    ``(answers, texts, trace_or_None)``."""
    if plan is None:
        answers, texts = generate_answers(lm, batch, max_new_tokens)
        return answers, texts, None
    from ..intervene import intervene

    with intervene(lm.model, batch.layouts, plan) as trace:
        answers, texts = generate_answers(lm, batch, max_new_tokens)
    return answers, texts, trace


def answer_batch(lm, batch, plan=None, params: Optional[dict] = None):
    """Answers of an encoded batch under ``plan`` in the method's answer mode (``params["answer"]``):
    ``(answers, trace_or_None, texts_or_None)``."""
    params = params or {}
    if params.get("answer", "logits") == "generate":
        answers, texts, trace = forward_generate(lm, batch, plan, params.get("max_new_tokens", 64))
        return answers, trace, texts
    logits, trace = forward_logits(lm, batch, plan)
    return read_answers(logits, batch.prompts, lm.option_token_ids), trace, None


def run(lm, samples: Sequence, prompts: Sequence, plan=None, batch=None, params: Optional[dict] = None):
    """Encode and answer once (``params``: the method's, for the answer mode).
    Returns ``(answers, trace_or_None, batch)``; generated texts are in ``batch.generated`` (or None)."""
    batch = batch if batch is not None else lm.encode(samples, prompts)
    answers, trace, texts = answer_batch(lm, batch, plan, params)
    batch.generated = texts
    return answers, trace, batch


def to_predictions(answers, extras: Optional[Sequence] = None, texts: Optional[Sequence] = None) -> list:
    out = []
    for i, a in enumerate(answers):
        out.append(Prediction(label=a.label, letter=a.letter, option_probs=a.option_probs,
                              extra=(extras[i] if extras else {}),
                              generated=(texts[i] if texts is not None else None)))
    return out


@torch.no_grad()
def no_grad_run(*a, **k):
    return run(*a, **k)
