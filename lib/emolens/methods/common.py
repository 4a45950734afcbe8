"""Shared plumbing of all methods: encode, run (optionally under an intervention plan), read answers."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .. import prompts as P
from ..answers import answer_logits, read_answers
from .base import Prediction, Task


def fine_prompts(samples: Sequence, task: Task, **kw) -> list:
    """The default fine query for every sample (WETR's Q_pos/Q_neg spans included by default so that
    every method, baselines too, sees the same prompt and differences come from the mechanism)."""
    kw.setdefault("contrastive", True)
    return [P.fine_query(task.labels, **kw) for _ in samples]


def forward_logits(lm, batch, plan=None):
    """One forward of an encoded batch, under ``plan`` when given: ``(logits [B, V], trace_or_None)``."""
    if plan is None:
        return answer_logits(lm.model, batch), None
    from ..intervene import intervene

    with intervene(lm.model, batch.layouts, plan) as trace:
        logits = answer_logits(lm.model, batch)
    return logits, trace


def run(lm, samples: Sequence, prompts: Sequence, plan=None, batch=None):
    """Encode and forward once. Returns ``(answers, trace_or_None, batch)``."""
    batch = batch if batch is not None else lm.encode(samples, prompts)
    logits, trace = forward_logits(lm, batch, plan)
    return read_answers(logits, batch.prompts, lm.option_token_ids), trace, batch


def to_predictions(answers, extras: Optional[Sequence] = None) -> list:
    out = []
    for i, a in enumerate(answers):
        out.append(Prediction(label=a.label, letter=a.letter, option_probs=a.option_probs,
                              extra=(extras[i] if extras else {})))
    return out


@torch.no_grad()
def no_grad_run(*a, **k):
    return run(*a, **k)
