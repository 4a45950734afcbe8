"""Baselines: zero-shot and zero-shot chain-of-thought (WETR Table 1 rows)."""
from __future__ import annotations

from .base import Method, Param
from .common import fine_prompts, run, to_predictions


class ZeroShot(Method):
    """The frozen model, the fine query, the answer letter read from the next-token logits."""

    name = "zero-shot"
    PARAMS = {"prompt_spans": Param(True, bool, doc="include WETR's Q_pos/Q_neg spans in the prompt")}

    def predict(self, lm, samples, task):
        answers, _, _ = run(lm, samples, fine_prompts(samples, task, contrastive=self.params["prompt_spans"]))
        return to_predictions(answers)


class ZeroShotCoT(Method):
    """Zero-shot with the "Let's think step by step." sentence (Kojima et al.) before the answer
    instruction. With a letter read from the first next-token logits, no reasoning text is generated:
    this measures the prompt variant, which is what a closed-set benchmark scores."""

    name = "zero-shot-cot"
    PARAMS = {"prompt_spans": Param(True, bool, doc="include WETR's Q_pos/Q_neg spans in the prompt")}

    def predict(self, lm, samples, task):
        answers, _, _ = run(lm, samples, fine_prompts(samples, task, contrastive=self.params["prompt_spans"], cot=True))
        return to_predictions(answers)
