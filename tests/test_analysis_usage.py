"""Token usage step by step (notebooks 00, 03, 05): ``emolens.analysis.usage``.

Hand cases for the pure parts (group masses, cue share) and, on the embedded model, that the captured
answer rows are probability rows and leave the logits untouched, that ``mask_group_plan`` removes
exactly the chosen visual tokens (zero attention on them, and only on them), that the usage profile
is one row per (sample, layer) with masses that add up, and that ``method_attention`` under no
method equals the frozen model's rows.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from emolens.analysis import usage
from emolens.layout import TokenLayout


def _layout() -> TokenLayout:
    return TokenLayout(seq_len=10, visual=[1, 2, 3, 4], audio=[5, 6], content=[7], instruction=[0, 8, 9],
                       spans={"q_pos": [8]}, cue_visual=np.array([True, False, False, True]))


def test_group_mass_and_cue_share_hand_cases():
    row = np.array([0.1, 0.2, 0.0, 0.1, 0.3, 0.05, 0.05, 0.1, 0.06, 0.04])
    m = usage.group_mass(row, _layout())
    assert m == pytest.approx({"visual": 0.6, "audio": 0.1, "content": 0.1, "instruction": 0.2})
    assert usage.group_mass(row, _layout(), groups=("q_pos", "options")) == pytest.approx({"q_pos": 0.06, "options": 0.0})
    assert usage.cue_share(row, _layout()) == pytest.approx(0.5 / 0.6)   # cue tokens 1 and 4 of the visual mass
    assert np.isnan(usage.cue_share(np.zeros(10), _layout()))
    lay = _layout()
    lay.cue_visual = None
    assert usage.cue_share(row, lay) is None


# =========================================================================== on the embedded model
@pytest.fixture(scope="module")
def env():
    from emolens.data import load_dataset
    from emolens.methods import Task
    from emolens.methods.common import fine_prompts
    from emolens.models import load_model

    ds = load_dataset("world-mer", split="test", limit=3)
    samples, task = [ds[i] for i in range(len(ds))], Task.from_dataset(ds)
    # the contrastive prompt carries the Q_pos/Q_neg spans NTS reads
    return load_model("emolens-tiny", device="cpu"), samples, fine_prompts(samples, task, contrastive=True)


def test_answer_attention_rows_are_probabilities_and_leave_logits_untouched(env):
    from emolens.answers import answer_logits

    lm, samples, prompts = env
    batch, rows, logits = usage.answer_attention(lm, samples, prompts)
    assert sorted(rows) == list(range(lm.num_layers))
    B, K = len(samples), batch.layouts[0].seq_len
    for r in rows.values():
        assert r.shape[0] == B and r.shape[-1] == K
        torch.testing.assert_close(r.sum(-1), torch.ones(r.shape[:2]), atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, answer_logits(lm.model, lm.encode(samples, prompts)), atol=1e-5, rtol=0)


def test_mask_group_plan_removes_exactly_the_chosen_tokens(env):
    lm, samples, prompts = env
    layouts = lm.encode(samples, prompts).layouts
    op = usage.mask_group_plan(layouts, lambda lay: lay.cue_visual, from_layer=1)
    for b, lay in enumerate(layouts):
        dropped = set(np.flatnonzero(~op.keep[b].numpy()).tolist())
        assert dropped == set(lay.visual[np.asarray(lay.cue_visual, bool)].tolist()) and dropped
    batch, rows, _ = usage.answer_attention(lm, samples, prompts, plan_ops=[op])
    _, rows0, _ = usage.answer_attention(lm, samples, prompts)
    for b in range(len(samples)):
        gone = ~op.keep[b]
        assert rows[0][b][:, gone].sum() > 0                          # layer 0 is before from_layer
        for l in range(1, lm.num_layers):
            assert float(rows[l][b][:, gone].abs().max()) == 0.0
    torch.testing.assert_close(rows[0], rows0[0])                     # nothing changes before from_layer


def test_usage_profile_is_one_row_per_sample_and_layer(env):
    lm, samples, prompts = env
    prof = usage.usage_profile(lm, samples, prompts, batch_size=2)   # two chunks
    assert len(prof) == len(samples) * lm.num_layers
    assert set(prof["sample"]) == {s.uid for s in samples}
    tot = prof[list(usage.GROUPS)].sum(1)
    assert ((tot > 0.5) & (tot <= 1 + 1e-4)).all()                   # the groups cover (almost) every key
    assert ((prof["cue_share"] >= 0) & (prof["cue_share"] <= 1)).all()
    assert ((prof["cue_uniform"] > 0) & (prof["cue_uniform"] < 1)).all()


def test_method_attention_without_method_is_the_frozen_model(env):
    from emolens.methods import get_method

    lm, samples, prompts = env
    last = lm.num_layers - 1
    _, rows, logits = usage.answer_attention(lm, samples, prompts, layers=[last])
    batch, caps, logits2 = usage.method_attention(lm, samples, prompts, None, layers=[last])
    assert set(caps) == {("answer", last)}
    torch.testing.assert_close(caps[("answer", last)].probs[:, :, 0], rows[last])
    torch.testing.assert_close(logits2, logits)
    _, caps_n, logits_n = usage.method_attention(lm, samples, prompts, get_method("nts", p_v=0.1, p_t=0.4),
                                                 layers=[last])
    assert caps_n[("answer", last)].probs.shape == caps[("answer", last)].probs.shape
    assert not torch.allclose(logits_n, logits)                        # NTS acted
    with pytest.raises(ValueError, match="single-forward plan"):
        usage.method_attention(lm, samples, prompts, get_method("sepm"), layers=[last])
