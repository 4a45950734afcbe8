"""Baselines: zero-shot and zero-shot chain-of-thought (WETR Table 1 / SEPM Table 1 rows).

Prompts: the plain fine query (no WETR Q_pos/Q_neg spans; ``prompt_spans=true`` is the explicit
"same prompt as NTS" switch for ablations).
"""
from __future__ import annotations

from .. import prompts as P
from .base import Method, Param
from .common import fine_prompts, run, to_predictions

SHARED = Param(False, bool, doc="the shared prompt: add WETR's Q_pos/Q_neg spans (same prompt for every method)")


class ZeroShot(Method):
    """The frozen model, the plain fine query, the answer letter read from the next-token logits."""

    name = "zero-shot"
    PARAMS = {"prompt_spans": SHARED}

    def predict(self, lm, samples, task):
        answers, _, batch = run(lm, samples, fine_prompts(samples, task, contrastive=self.params["prompt_spans"]),
                                params=self.params)
        return to_predictions(answers, texts=batch.generated)


class ZeroShotCoT(Method):
    """Zero-shot chain of thought (Kojima et al.): the CoT sentence in the query, then *generation* up to
    ``max_new_tokens`` (default 64) and the answer parsed from the text (``answer="generate"`` by
    default; an unparseable answer counts wrong and is counted in ``metrics.unparseable``). Latency
    therefore includes generation, as in WETR Table 1.

    ``style``: ``"wetr"`` appends "Let's think step by step." before the answer instruction (WETR
    Sec. 4.2); ``"sepm"`` uses SEPM Sec. 4.2's sentence "Let's think step by step, then answer with the
    option's letter from the given choices directly." (use it when comparing against SEPM).
    ``answer="logits"`` gives the old prompt-variant-only reading (first next-token letter)."""

    name = "zero-shot-cot"
    PARAMS = {"prompt_spans": SHARED,
              "style": Param("wetr", str, choices=P.COT_STYLES, doc="CoT wording: wetr (Kojima) | sepm (SEPM Sec. 4.2)"),
              "answer": Param("generate", str, choices=("logits", "generate"),
                              doc="generate (default for CoT): greedy text up to max_new_tokens, parsed")}

    def predict(self, lm, samples, task):
        p = self.params
        answers, _, batch = run(lm, samples, fine_prompts(samples, task, contrastive=p["prompt_spans"], cot=p["style"]),
                                params=p)
        return to_predictions(answers, texts=batch.generated)
