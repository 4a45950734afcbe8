"""WETR step by step (notebooks 01 NTS, 02 STR, 03 WETR): ``emolens.analysis.wetr``.

Hand cases for the pure parts (alpha of Eq. 9 against ``reconstruction_error``, Table 8 groups, keep
vectors under left-padding, gold-label probabilities) and, on the embedded model, that the helpers
reproduce what the methods decide inside the forward (Eq. 4-7 recomputed from the captures equal the
method's m_i; STR's layer output is exactly gamma_i times NTS's), that a removal with nothing to
remove is the frozen model, and the shapes / matched sizes of the deletion and contribution tables.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from emolens.analysis import wetr
from emolens.layout import TokenLayout
from emolens.methods.reweight import reconstruction_error


# =========================================================================== pure parts
def test_alpha_matrix_is_eq9_and_reproduces_reconstruction_error():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(4, 6, 8, generator=g), torch.randn(2, 6, 8, generator=g)
    src, tgt = [0, 1], [2, 3, 5]
    a = wetr.alpha_matrix(q, k, src, tgt)
    assert a.shape == (4, 2, 3)
    np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-12)
    # head h uses kv head h // 2 and the 1/sqrt(d) scaling
    ref = torch.softmax(q[3, src].double() @ k[1, tgt].double().T / math.sqrt(8), -1).numpy()
    np.testing.assert_allclose(a[3], ref, rtol=1e-10)
    # e_i = || k_i - sum_j alpha_ij k_j ||, mean over query heads == the library's reconstruction_error
    kk = k.double().repeat_interleave(2, dim=0)
    e = np.stack([np.linalg.norm(kk[h, src].numpy() - a[h] @ kk[h, tgt].numpy(), axis=-1) for h in range(4)]).mean(0)
    np.testing.assert_allclose(e, reconstruction_error(q, k, src, tgt), rtol=1e-9)
    # one target: alpha is exactly 1
    np.testing.assert_array_equal(wetr.alpha_matrix(q, k, [0, 1, 2], [4]), np.ones((4, 3, 1)))


def test_gamma_group_hand_cases():
    assert wetr.gamma_group([0.0, 0.5, 1.0, 1.0 + 1e-9, 1.2, 3.0]).tolist() == ["DW", "DW", "NEU", "NEU", "UW", "UW"]


def _layout(pad: int) -> TokenLayout:
    n = 10
    return TokenLayout(seq_len=n + pad, pad=pad, visual=np.arange(1, 5) + pad, content=np.arange(5, 8) + pad,
                       instruction=np.r_[0, 8, 9] + pad)


def test_removal_keep_uses_group_indices_under_padding():
    lays = [_layout(0).shifted(2), _layout(2)]                    # one left-padded batch of length 12
    keep = wetr.removal_keep(lays, [{"visual": [0, 3], "content": [1]}, None])
    assert keep.shape == (2, 12)
    assert (~keep[0]).nonzero().flatten().tolist() == [3, 6, 8]  # visual 1+2, 4+2; content 6+2
    assert keep[1].all()


def test_gold_prob_reads_the_gold_letter():
    prompts = [SimpleNamespace(options={"A": "anger", "B": "happiness"})] * 2
    answers = [SimpleNamespace(option_probs={"A": 0.2, "B": 0.8}), SimpleNamespace(option_probs={"A": 0.6, "B": 0.4})]
    samples = [SimpleNamespace(label="happiness"), SimpleNamespace(label="anger")]
    np.testing.assert_allclose(wetr.gold_prob(answers, samples, prompts), [0.8, 0.6])
    assert np.isnan(wetr.gold_prob(answers[:1], [SimpleNamespace(label="worry")], prompts[:1])[0])


def test_evidence_set_and_emass_batch_hand_cases():
    lay = TokenLayout(seq_len=8, visual=[1, 2, 3], content=[4, 5], instruction=[0, 6, 7],
                      cue_visual=np.array([False, True, True]), cue_content=np.array([True, False]))
    K = wetr.evidence_set(lay)
    assert sorted(K.tolist()) == [2, 3, 4]                         # cue visual 2, 3 and emotion word 4
    with pytest.raises(ValueError, match="no ground truth"):
        wetr.evidence_set(TokenLayout(seq_len=8, visual=[1, 2, 3], instruction=[0]))
    on_k = torch.zeros(2, 1, 8)
    on_k[:, :, K] = 1.0 / 3                                         # Q_pos: all mass on K
    uniform = torch.full((2, 3, 8), 1.0 / 8)                        # Q_neg: uniform, M_neg = 3/8
    cap = lambda x: SimpleNamespace(sample=lambda b: x)            # noqa: E731 (AttnCapture.sample: [H, r, K])
    caps = {("q_pos", 5): cap(on_k), ("q_neg", 5): cap(uniform)}
    got = wetr.emass_batch(caps, 5, [lay, lay])
    np.testing.assert_allclose(got, [1 / (1 + 3 / 8)] * 2)          # EMass = M_pos / (M_pos + M_neg)
    caps = {("q_pos", 5): cap(uniform), ("q_neg", 5): cap(uniform)}
    np.testing.assert_allclose(wetr.emass_batch(caps, 5, [lay]), [0.5])


# =========================================================================== on the embedded model
@pytest.fixture(scope="module")
def env():
    from emolens.models import TINY_DIR, load_model
    from emolens.methods import Task
    from emolens.world import EmoWorld

    if not (Path(TINY_DIR) / "config.json").is_file():
        pytest.skip("the embedded emolens-tiny checkpoint is missing")
    lm = load_model("emolens-tiny", device="cpu")
    w = EmoWorld("mer", eps=0.0)
    samples = [w.sample("test", i) for i in range(4)]
    task = Task(labels=w.labels, valence_groups=w.valence_groups)
    return lm, samples, task


def load_model_eager():
    from emolens.models import load_model

    return load_model("emolens-tiny", device="cpu", attn="eager")


def test_nts_scores_and_keep_reproduce_the_method(env):
    from emolens.methods import get_method
    from emolens.methods.common import fine_prompts

    lm, samples, task = env
    m = get_method("nts", p_v=0.1, p_t=0.4)
    batch = lm.encode(samples, fine_prompts(samples, task, contrastive=True))
    l = m.trigger_layers(lm.num_layers)[0]
    _, trace = m.forward(lm, batch, samples)
    tab = wetr.token_table(lm, batch, 1)
    assert set(tab["group"]) == {"visual", "audio", "content", "instruction"}
    assert (tab.loc[batch.layouts[1].span("q_pos"), "span"] == "q_pos").all()
    runs = wetr.layout_runs(tab)
    assert runs["n"].sum() == len(tab)
    vis = runs[runs.group == "visual"].iloc[0]
    assert vis["n"] == batch.layouts[1].visual.size and vis["text"] == f"<image> x {vis['n']}"
    assert runs[runs.span == "q_neg"]["text"].iloc[0].startswith("Note the background")
    # the independent reference (tests/references.py): eager attention + numpy Eq. 4-6
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from references import eager_attention, ref_nts_scores, ref_topp

    A = eager_attention(load_model_eager(), batch, l)
    for b, lay in enumerate(batch.layouts):
        sc = wetr.nts_scores(trace, lay, l, b)
        assert np.all(sc["cross_c_raw"] == 0.0)                    # causal layout: visual rows cannot see content
        ref_v, ref_c = ref_nts_scores(A[b], lay, m.params)
        np.testing.assert_allclose(sc["s_v"], ref_v, atol=1e-5)     # the helper's s_i is Eq. 5 on the real attention
        np.testing.assert_allclose(sc["s_c"], ref_c, atol=1e-5)
        kp = wetr.nts_keep(lay, sc, 0.1, 0.4)
        assert kp["kept_visual"].tolist() == lay.visual[ref_topp(ref_v, 0.1, lay.visual.size)].tolist()
        np.testing.assert_array_equal(kp["m"][lay.pad:], trace.decisions["admitted"][b][lay.pad:])
        assert kp["kept_visual"].size == math.ceil(0.1 * lay.visual.size)


def test_layer_output_shows_gamma_scaling_and_qk(env):
    from emolens.methods import get_method
    from emolens.methods.common import fine_prompts

    lm, samples, task = env
    s = samples[:2]
    batch = lm.encode(s, fine_prompts(s, task, contrastive=True))
    strm, nts = get_method("str"), get_method("nts")
    l = strm.trigger_layers(lm.num_layers)[0]
    h_str, tr = wetr.layer_output(lm, batch, s, strm, l)
    h_nts, _ = wetr.layer_output(lm, batch, s, nts, l)
    g = torch.as_tensor(tr.decisions["gamma"][l])
    torch.testing.assert_close(h_str, h_nts * g[..., None], rtol=1e-5, atol=1e-6)
    _, tr = strm.forward(lm, batch, s)
    q, k, pos = wetr.capture_qk(tr, l, 0)
    lay = batch.layouts[0]
    assert q.shape[1] == k.shape[1] == pos.size == lay.visual.size + lay.content.size
    with pytest.raises(ValueError, match="q/k"):
        wetr.capture_qk(nts.forward(lm, batch, s)[1], l, 0)


def test_removal_of_nothing_is_the_frozen_model_and_deletion_sizes_match(env):
    from emolens.answers import answer_logits, read_answers
    from emolens.methods import get_method
    from emolens.methods.common import fine_prompts

    lm, samples, task = env
    prompts = fine_prompts(samples, task, contrastive=True)
    batch = lm.encode(samples, prompts)
    ref = read_answers(answer_logits(lm.model, batch), batch.prompts, lm.option_token_ids)
    got = wetr.forward_removed(lm, samples, prompts, None, batch_size=3)
    np.testing.assert_allclose(wetr.gold_prob(got, samples, prompts), wetr.gold_prob(ref, samples, prompts), atol=1e-5)
    # removing every visual and content token changes the answer distribution
    drops = [{"visual": np.arange(lay.visual.size), "content": np.arange(lay.content.size)} for lay in batch.layouts]
    gone = wetr.gold_prob(wetr.forward_removed(lm, samples, prompts, drops), samples, prompts)
    assert not np.allclose(gone, wetr.gold_prob(ref, samples, prompts), atol=1e-4)
    df = wetr.deletion_test(lm, samples, task, get_method("nts", p_v=0.1, p_t=0.4), n_random=2, seed=0)
    assert sorted(df["condition"].unique()) == ["full", "remove random", "remove selected"]
    sel = df[df.condition == "remove selected"].set_index("sample")
    for rep in (0, 1):
        rnd = df[(df.condition == "remove random") & (df.rep == rep)].set_index("sample")
        assert (rnd["n_visual"] == sel["n_visual"]).all() and (rnd["n_content"] == sel["n_content"]).all()
    assert (df[df.condition == "full"][["n_visual", "n_content"]] == 0).all().all()
    with pytest.raises(ValueError, match="selects no tokens"):
        wetr.deletion_test(lm, samples[:1], task, get_method("zero-shot"))


def test_contribution_shift_rows_are_the_retained_candidates(env):
    import pandas as pd

    from emolens.methods import get_method

    lm, samples, task = env
    s = samples[:2]
    after = get_method("str", delta=0.0)
    df = wetr.contribution_shift(lm, s, task, get_method("nts"), after)
    # one row per retained visual / content token: ceil(0.03 * n_vis) + ceil(0.2 * n_con) per sample
    # (n_vis = 128 on the default model: 4 visual rows)
    from emolens.methods.nts import keep_count

    lays = lm.encode(s, after.prompts(s, task)).layouts
    counts = pd.crosstab(df["sample"], df["group"])
    assert counts.index.tolist() == list(range(len(s)))
    assert counts["visual"].tolist() == [keep_count(lay.visual.size, 0.03) for lay in lays] == [4] * len(s)
    assert counts["content"].tolist() == [keep_count(lay.content.size, 0.2) for lay in lays]
    np.testing.assert_allclose(df["gamma"], 1.0)                  # delta = 0: gamma = 1 ...
    np.testing.assert_allclose(df["contrib_before"], df["contrib_after"], atol=1e-5)  # ... and nothing shifts
    assert set(df["weighting"]) == {"NEU"}
    with pytest.raises(ValueError, match="single-trigger"):
        wetr.contribution_shift(lm, s, task, get_method("nts"), get_method("wetr"))
