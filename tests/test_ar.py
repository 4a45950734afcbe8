"""MoSEAR Attention Reallocation (seed 003 Sec. 5.2, Algorithm 1, Eqs. 5-14) and the PAI baseline.

Part 1, properties of the closed form on random attention rows (hypothesis): rows still sum to 1,
S_h(A) + S_h(V) kept (Eq. 9), shares within each group kept (Eqs. 10-11), c_h' = c on biased heads
(Eq. 8), H_bias exactly Eq. (7), unbiased heads / unbiased layers / other keys bit-identical, and the
undefined cases (S_h(V) = 0, S(V) = 0) left untouched.

Part 2, on emolens-tiny through the mechanism: AR with a huge tau and PAI with alpha = 0 equal
zero-shot; the rows AR writes equal ``reallocate`` of the rows captured in the same forward, and of an
eager ``output_attentions=True`` run; PAI's rows equal softmax(s + alpha |s|) from the captured q, k and
raise the visual mass; ``uap_profile``; one-line errors.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emolens.intervene import Capture, Plan, intervene
from emolens.methods import available, from_dict, get_method, Task
from emolens.methods.ar import (biased_heads, group_mass, head_ratio, layer_ratio, reallocate, reallocate_head,
                                resolve_layers, uap_profile)
from emolens.methods.common import fine_prompts
from emolens.answers import answer_logits
from emolens.metrics import uap
from emolens.models import TINY_DIR, load_model
from emolens.world import EmoWorld


# =========================================================================== random rows
def random_rows(seed: int, B: int, H: int, R: int, K: int):
    """Attention rows [B, H, R, K] (softmax of random logits at random temperatures, some keys masked
    to exactly 0, sometimes whole groups of a head zeroed) and disjoint source/target masks [B, K]."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 3, size=(B, K))                          # 0 other, 1 source, 2 target
    kind[:, 0], kind[:, 1], kind[:, 2] = 1, 2, 0                     # both groups non-empty, key 2 other
    src, tgt = kind == 1, kind == 2
    temp = rng.choice([0.3, 1.0, 3.0, 8.0], size=(B, H, R, 1))
    logits = rng.normal(size=(B, H, R, K)) * temp + rng.normal(size=(B, 1, 1, K)) * 2
    logits = np.where(rng.random((B, 1, R, K)) < 0.15, -np.inf, logits)   # masked keys (all heads)
    logits[..., 2] = np.where(np.isinf(logits[..., 2]), 0.0, logits[..., 2])  # every row keeps a key
    if rng.random() < 0.5:                                           # a head with no target mass
        h = rng.integers(0, H)
        logits[:, h] = np.where(tgt[:, None, :], -np.inf, logits[:, h])
    if rng.random() < 0.3:                                           # a head with no source mass
        h = rng.integers(0, H)
        logits[:, h] = np.where(src[:, None, :], -np.inf, logits[:, h])
    if rng.random() < 0.2:                                           # a row with no target mass at all
        logits[0, :, 0] = np.where(tgt[0][None], -np.inf, logits[0, :, 0])
    p = torch.softmax(torch.as_tensor(logits), -1).float()
    return p, torch.as_tensor(src), torch.as_tensor(tgt)


def numpy_reference(p, src, tgt, tau):
    """Eqs. (5)-(7) with plain numpy loops: (c [B, R], c_h [B, H, R], biased [B, H, R])."""
    p = p.double().numpy()
    B, H, R, _ = p.shape
    c = np.full((B, R), np.nan)
    c_h = np.full((B, H, R), np.nan)
    biased = np.zeros((B, H, R), bool)
    for b in range(B):
        for r in range(R):
            sa = [p[b, h, r, src[b].numpy()].sum() for h in range(H)]
            sv = [p[b, h, r, tgt[b].numpy()].sum() for h in range(H)]
            if sum(sv) > 0:
                c[b, r] = sum(sa) / sum(sv)
            for h in range(H):
                if sv[h] > 0:
                    c_h[b, h, r] = sa[h] / sv[h]
                    biased[b, h, r] = sum(sv) > 0 and c[b, r] > tau and c_h[b, h, r] > c[b, r]
    return c, c_h, biased


shapes = dict(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 3), H=st.integers(1, 6), R=st.integers(1, 3),
              K=st.integers(4, 40), tau=st.sampled_from([0.0, 0.05, 0.5, 1.0, 2.0, 3.0]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**shapes)
def test_reallocate_properties(seed, B, H, R, K, tau):
    p, src, tgt = random_rows(seed, B, H, R, K)
    out, info = reallocate(p, src, tgt, tau)
    assert out.shape == p.shape and out.dtype == p.dtype
    P, O = p.double(), out.double()
    s4, t4 = src[:, None, None, :], tgt[:, None, None, :]
    other = ~(s4 | t4)

    # rows still sum to 1; no negative weight
    torch.testing.assert_close(O.sum(-1), P.sum(-1), atol=1e-6, rtol=0)
    assert (O.sum(-1) - 1).abs().max() < 1e-6
    assert (out >= 0).all()
    # other keys untouched, bit for bit
    assert torch.equal(torch.where(other, out, 0), torch.where(other, p, 0))

    # H_bias is exactly Eq. (7); c and c_h are Eqs. (6) and (5)
    c_ref, ch_ref, b_ref = numpy_reference(p, src, tgt, tau)
    np.testing.assert_allclose(info["c"].numpy(), c_ref, rtol=1e-9, equal_nan=True)
    ch = info["c_h"].numpy()
    finite = np.isfinite(ch_ref)
    np.testing.assert_allclose(ch[finite], ch_ref[finite], rtol=1e-9)
    assert np.array_equal(info["biased"].numpy(), b_ref)
    assert torch.equal(biased_heads(p, src, tgt, tau), info["biased"])
    assert np.array_equal(info["n_biased"].numpy(), b_ref.sum(1))
    lb = np.nan_to_num(c_ref, nan=-1.0) > tau
    assert np.array_equal(info["layer_biased"].numpy(), lb)

    # unbiased heads (c_h <= c, or undefined ratios) and layers with c <= tau: bit-identical
    unb = ~info["biased"]
    assert torch.equal(out[unb], p[unb])
    assert torch.equal(out.permute(0, 2, 1, 3)[~info["layer_biased"]], p.permute(0, 2, 1, 3)[~info["layer_biased"]])

    b = info["biased"]
    if not b.any():
        return
    # the equations, checked tightly on a float64 run (the float32 run above differs by rounding only)
    out64, info64 = reallocate(P, src, tgt, tau)
    assert torch.equal(info64["biased"], b)
    torch.testing.assert_close(out64.float(), out, atol=1e-7, rtol=0)
    O = out64
    sa, sv = group_mass(P, src), group_mass(P, tgt)
    sa2, sv2 = group_mass(O, src), group_mass(O, tgt)
    # Eq. (9): S_h(A) + S_h(V) kept
    torch.testing.assert_close((sa2 + sv2)[b], (sa + sv)[b], atol=1e-12, rtol=0)
    # Eq. (8): c_h(w') = c(w) for biased heads
    c = info["c"][:, None, :].expand_as(sa)
    torch.testing.assert_close(head_ratio(O, src, tgt)[b], c[b], rtol=1e-9, atol=1e-12)
    # Eqs. (15)-(16): the source loses exactly D_h, the target gains it, D_h > 0
    d = info["delta"]
    assert (d[b] > 0).all() and (d[~b] == 0).all()
    torch.testing.assert_close((sa - sa2)[b], d[b], atol=1e-12, rtol=0)
    torch.testing.assert_close((sv2 - sv)[b], d[b], atol=1e-12, rtol=0)
    # Eqs. (10)-(11): (w' - w) / (S' - S) = w / S within each group (shares preserved)
    # (the difference quotient is checked where D_h is not at float64 resolution: c_h barely above c
    # gives D_h ~ 1e-17 and 0/0; the share form below holds everywhere)
    bb, big = b[..., None], (b & (d > 1e-6))[..., None]
    for m, s, s2 in ((s4, sa, sa2), (t4, sv, sv2)):
        rhs = P / s[..., None]
        sel = (big & m).expand_as(P)
        lhs = (O - P) / (s2 - s)[..., None]
        torch.testing.assert_close(lhs[sel], rhs[sel], rtol=1e-6, atol=1e-9)
        sel = (bb & m).expand_as(P)
        share2 = O / s2[..., None]
        torch.testing.assert_close(share2[sel], rhs[sel], rtol=1e-9, atol=1e-12)
    # moved mass = head mean of D_h
    torch.testing.assert_close(info["moved"], d.mean(1))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), H=st.integers(2, 6), K=st.integers(4, 30))
def test_reallocate_head_is_the_closed_form(seed, H, K):
    """Eq. (12)-(14) on one row: equals reallocate() on its biased heads; c_h' = c for any c >= 0."""
    rng = np.random.default_rng(seed)
    p, src, tgt = random_rows(seed, 1, H, 1, K)
    sa, sv = group_mass(p, src), group_mass(p, tgt)
    ok = ((sa > 0) & (sv > 0))[0, :, 0]
    out, info = reallocate(p, src, tgt, 0.0)
    for h in np.flatnonzero(ok.numpy()):
        c = float(rng.uniform(0, 3))
        w2, d = reallocate_head(p[0, h, 0], src[0], tgt[0], c)
        torch.testing.assert_close(head_ratio(w2, src[0], tgt[0]).double(), torch.tensor(c, dtype=torch.float64),
                                   rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(w2.double().sum(), p[0, h, 0].double().sum(), atol=1e-6, rtol=0)
        if info["biased"][0, h, 0]:
            w3, d3 = reallocate_head(p[0, h, 0], src[0], tgt[0], info["c"][0, 0])
            torch.testing.assert_close(w3, out[0, h, 0], atol=1e-7, rtol=0)
            assert float(d3) == pytest.approx(float(info["delta"][0, h, 0]), rel=1e-9)


def test_worked_example_and_edge_cases():
    # two heads over keys [a, v1, v2, t]: head 0 is audio-heavy, head 1 is not
    p = torch.tensor([[[[0.6, 0.1, 0.1, 0.2]], [[0.1, 0.4, 0.4, 0.1]]]], dtype=torch.float64)
    src = torch.tensor([[True, False, False, False]])
    tgt = torch.tensor([[False, True, True, False]])
    c = (0.6 + 0.1) / (0.2 + 0.8)                                     # Eq. (6) = 0.7
    assert float(layer_ratio(p, src, tgt)[0, 0]) == pytest.approx(c)
    assert head_ratio(p, src, tgt)[0, :, 0].tolist() == pytest.approx([3.0, 0.125])
    out, info = reallocate(p, src, tgt, tau=0.5)
    d = (0.6 - c * 0.2) / (1 + c)                                     # Eq. (14)
    assert info["biased"][0, :, 0].tolist() == [True, False]
    assert float(info["delta"][0, 0, 0]) == pytest.approx(d)
    exp = torch.tensor([0.6 - d, 0.1 + d / 2, 0.1 + d / 2, 0.2], dtype=torch.float64)
    torch.testing.assert_close(out[0, 0, 0], exp)
    assert torch.equal(out[0, 1], p[0, 1])
    # tau >= c: the layer is not biased -> untouched (Eq. 7 is strict)
    out, info = reallocate(p, src, tgt, tau=c)
    assert torch.equal(out, p) and not info["layer_biased"].any()
    # S(V) = 0: c undefined -> untouched, c recorded as NaN
    q = torch.tensor([[[[0.5, 0.0, 0.0, 0.5]], [[0.2, 0.0, 0.0, 0.8]]]])
    out, info = reallocate(q, src, tgt, 0.0)
    assert torch.equal(out, q) and math.isnan(float(info["c"][0, 0])) and not info["biased"].any()
    # S_h(V) = 0 for one head (c_h = inf): that head untouched, the other one still handled
    q = torch.tensor([[[[0.9, 0.0, 0.0, 0.1]], [[0.3, 0.3, 0.3, 0.1]]]])
    out, info = reallocate(q, src, tgt, 0.0)
    assert torch.isinf(info["c_h"][0, 0, 0]) and info["biased"][0, :, 0].tolist() == [False, False]
    assert torch.equal(out, q)  # head 1 has c_h = 0.5 < c = 2: unbiased too
    # numpy input, [K] masks and index arrays work for the helpers
    assert float(group_mass(p.numpy()[0, 0, 0], np.array([1, 2]))) == pytest.approx(0.2)
    assert float(layer_ratio(p[0, :, 0], src[0], tgt[0], head_dim=-2)) == pytest.approx(c)


def test_reallocate_errors_are_one_line():
    p, src, tgt = random_rows(0, 1, 2, 1, 8)
    for call, msg in ((lambda: reallocate(p, src, tgt, -0.1), "tau"),
                      (lambda: reallocate(p, src, src | tgt, 1.0), "overlap"),
                      (lambda: reallocate(p[0], src, tgt, 1.0), r"\[B, H, R, K\]"),
                      (lambda: reallocate(p, src[:, :4], tgt[:, :4], 1.0), "keys"),
                      (lambda: reallocate_head(torch.tensor([0.5, 0.0, 0.5]), torch.tensor([True, False, False]),
                                               torch.tensor([False, True, False]), 1.0), "S_h")):
        with pytest.raises(ValueError, match=msg) as e:
            call()
        assert "\n" not in str(e.value)


# =========================================================================== on the model
@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    if (TINY_DIR / "config.json").is_file():
        return "emolens-tiny"
    from emolens.models.train import train_tiny

    out = tmp_path_factory.mktemp("tiny")
    train_tiny(str(out), steps=5, batch_size=4, vision_steps=2, progress=False)
    return str(out)


@pytest.fixture(scope="module")
def lm(model_path):
    return load_model(model_path, device="cpu")


@pytest.fixture(scope="module")
def camer():
    w = EmoWorld("camer", conflict="video-aligned")
    return w.samples("test", 4), Task(labels=w.labels, valence_groups=w.valence_groups)


def logits_under(lm, samples, task, plan):
    batch = lm.encode(samples, fine_prompts(samples, task))
    if plan is None:
        return answer_logits(lm.model, batch), None, batch
    with intervene(lm.model, batch.layouts, plan) as tr:
        out = answer_logits(lm.model, batch)
    return out, tr, batch


def test_registry_and_describe():
    assert {"ar", "pai"} <= set(available())
    m = from_dict({"method": "ar", "tau": "2", "source": "content", "layers": [1, 2, 3]})
    d = m.describe()
    assert d == {"method": "ar", "tau": 2.0, "source": "content", "target": "visual", "layers": [1, 2, 3],
                 "prompt_spans": False, "answer": "logits", "max_new_tokens": 64}
    json.dumps(d)
    assert from_dict(d).describe() == d
    assert get_method("pai").describe()["alpha"] == 0.5 and get_method("pai").params["layers"] == "all"
    assert resolve_layers("2:", 8) == [2, 3, 4, 5, 6, 7] and resolve_layers("2-5", 8) == [2, 3, 4, 5]
    assert resolve_layers("all", 3) == [0, 1, 2] and resolve_layers("1,3", 8) == [1, 3]
    assert get_method("ar").needs == ("audio", "visual") and get_method("ar", source="content").needs == ("text", "visual")


def test_ar_huge_tau_and_pai_alpha0_equal_zero_shot(lm, camer):
    samples, task = camer
    ref, _, _ = logits_under(lm, samples, task, None)
    L = lm.num_layers
    ar = get_method("ar", tau=1e9)
    out, tr, _ = logits_under(lm, samples, task, ar.plan(list(range(L))))
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)
    assert all(not info["layer_biased"].any() for info in tr.decisions["ar"].values())
    pai = get_method("pai", alpha=0.0)
    out, _, _ = logits_under(lm, samples, task, pai.plan(resolve_layers("2:", L)))
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)
    # same through predict()
    zs = [p.label for p in get_method("zero-shot").predict(lm, samples, task)]
    assert [p.label for p in ar.predict(lm, samples, task)] == zs
    assert [p.label for p in pai.predict(lm, samples, task)] == zs


def _eager_attentions(model_path, batch):
    """All layers' ``[B, H, L, L]`` attention of an eager ``output_attentions=True`` run of the decoder
    on the model's own input embeddings (emolens-tiny's outer forward returns logits only)."""
    lm_e = load_model(model_path, device="cpu", attn="eager")
    inp = batch.inputs
    with torch.no_grad():
        emb = lm_e.model.embed(inp["input_ids"], inp["pixel_values"], inp["frame_index"], inp.get("audio_values"))
        out = lm_e.model.language_model(inputs_embeds=emb, attention_mask=inp["attention_mask"], output_attentions=True)
    return out.attentions


def test_ar_row_edit_equals_reallocate_of_captured_and_eager(lm, model_path, camer):
    samples, task = camer
    L = lm.num_layers
    ar = get_method("ar", tau=0.0)
    _, tr, batch = logits_under(lm, samples, task, ar.plan(list(range(L)), record=True))
    B, K = len(samples), batch.inputs["input_ids"].shape[1]
    src = torch.zeros(B, K, dtype=torch.bool)
    tgt = torch.zeros(B, K, dtype=torch.bool)
    for b, lay in enumerate(batch.layouts):
        src[b, lay.audio] = True
        tgt[b, lay.visual] = True
    changed = 0
    for l in range(L):
        before, after = tr.get("ar_in", l).probs, tr.get("ar", l).probs
        exp, info = reallocate(before, src, tgt, 0.0)
        torch.testing.assert_close(after, exp, atol=1e-7, rtol=0)
        assert torch.equal(info["biased"], tr.decisions["ar"][l]["biased"])
        changed += int(info["biased"].sum())
    assert changed > 0, "tau = 0 should reallocate some head on the model"

    # a single edited layer l: its input equals the unedited model's, so the rows it writes are
    # reallocate() of the eager attention of that layer
    eager = _eager_attentions(model_path, batch)
    for l in (0, L // 2):
        _, tr1, _ = logits_under(lm, samples, task, ar.plan([l], record=True))
        e = eager[l][:, :, -1:].float()
        torch.testing.assert_close(tr1.get("ar_in", l).probs, e, atol=1e-5, rtol=0)
        exp, _ = reallocate(e, src, tgt, 0.0)
        torch.testing.assert_close(tr1.get("ar", l).probs, exp, atol=1e-5, rtol=0)


def test_ar_predict_extras(lm, camer):
    samples, task = camer
    preds = get_method("ar", tau=0.0, layers="1-3").predict(lm, samples, task)
    for p in preds:
        x = p.extra["ar"]
        assert x["layers"] == [1, 2, 3]
        assert len(x["c"]) == len(x["layer_biased"]) == len(x["n_biased_heads"]) == len(x["moved_mass"]) == 3
        for c, lb, nb, mv in zip(x["c"], x["layer_biased"], x["n_biased_heads"], x["moved_mass"]):
            assert lb == (c is not None and c > 0)
            assert 0 <= nb < 4 + 1 and (mv > 0) == (nb > 0)
        json.dumps(p.to_dict())


def test_pai_is_the_paper_formula_and_raises_visual_mass(lm, camer):
    samples, task = camer
    L = lm.num_layers
    alpha = 0.5
    layers = resolve_layers("2:", L)
    batch = lm.encode(samples, fine_prompts(samples, task))
    K = batch.inputs["input_ids"].shape[1]
    allpos = [lay.valid for lay in batch.layouts]
    pai = get_method("pai", alpha=alpha, layers="2:")   # PAI's own code setting (default: all layers)
    plan = Plan(pai.plan(layers, record=True).ops + [Capture(layers="all", rows="last", name="all", qk_positions=allpos)])
    with intervene(lm.model, batch.layouts, plan) as tr:
        answer_logits(lm.model, batch)
    with intervene(lm.model, batch.layouts, Capture(layers="all", rows="last", name="zs")) as tr0:
        answer_logits(lm.model, batch)
    tgt = torch.zeros(len(samples), K, dtype=torch.bool)
    for b, lay in enumerate(batch.layouts):
        tgt[b, lay.visual] = True
    scaling = lm.model.config.text_config.head_dim ** -0.5
    for l in range(L):
        cap = tr.get("all", l)
        if l not in layers:   # layers before the range are untouched
            torch.testing.assert_close(cap.probs, tr0.get("zs", l).probs, atol=1e-6, rtol=0)
            assert ("pai", l) not in tr.captures
            continue
        q, k = cap.q, cap.k                                          # [B, H, 1, D], [B, Hkv, K', D]
        G = q.shape[1] // k.shape[1]
        sub = torch.einsum("bhrd,bhkd->bhrk", q, k.repeat_interleave(G, 1)) * scaling
        s = torch.full(cap.probs.shape, float("-inf"))                  # padding keys stay -inf
        for b in range(len(samples)):
            v = cap.k_valid[b]
            s[b, :, :, cap.k_positions[b][v]] = sub[b, :, :, v]
        t = tgt[:, None, None, :]
        s = torch.where(t, s + alpha * s.abs(), s)                     # PAI: s + alpha |s| on image keys
        exp = torch.softmax(s, -1)
        got = tr.get("pai", l).probs
        torch.testing.assert_close(got, exp, atol=1e-5, rtol=0)
        before = tr.get("pai_in", l).probs
        m0 = (before * tgt[:, None, None, :]).sum(-1).mean(1)
        m1 = (got * tgt[:, None, None, :]).sum(-1).mean(1)
        assert (m1 > m0).all(), f"layer {l}: visual mass {m0} -> {m1}"
        if l == layers[0]:   # first edited layer: its input is the zero-shot one
            torch.testing.assert_close(before, tr0.get("zs", l).probs, atol=1e-6, rtol=0)
    p = pai.predict(lm, samples, task)[0]
    assert p.extra["pai"]["layers"] == layers
    assert all(a > b for a, b in zip(p.extra["pai"]["mass_after"], p.extra["pai"]["mass_before"]))


def test_ar_other_groups_and_missing_modality(lm):
    w = EmoWorld("emoset")
    samples = w.samples("test", 2)
    task = Task(labels=w.labels, valence_groups=w.valence_groups)
    ar = get_method("ar")
    with pytest.raises(ValueError, match="needs audio input") as e:
        ar.check_data(["image", "text"])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no audio tokens") as e:
        ar.predict(lm, samples, task)
    assert "\n" not in str(e.value)
    # subtitle -> visual on a model/dataset without audio works
    sub = get_method("ar", source="content", tau=0.0)
    sub.check_data(["image", "text"])
    preds = sub.predict(lm, samples, task)
    assert len(preds) == 2 and len(preds[0].extra["ar"]["c"]) == lm.num_layers
    get_method("pai").check_data(["image", "text"])
    with pytest.raises(ValueError, match="needs audio"):
        get_method("pai", group="audio").check_data(["image", "text"])


@pytest.mark.parametrize("kw, msg", [
    ({"tau": -1}, "tau"),
    ({"source": "smell"}, "source must be one of"),
    ({"target": "pixels"}, "target must be one of"),
    ({"source": "visual"}, "same token group"),
    ({"layers": "x-y"}, "layers"),
    ({"layers": -1}, "layers"),
])
def test_ar_param_errors_are_one_line(kw, msg):
    with pytest.raises(ValueError, match=msg) as e:
        get_method("ar", **kw)
    assert "\n" not in str(e.value)


def test_pai_param_errors_and_layer_range(lm, camer):
    samples, task = camer
    for kw, msg in (({"alpha": -0.5}, "alpha"), ({"group": "nope"}, "group must be one of")):
        with pytest.raises(ValueError, match=msg) as e:
            get_method("pai", **kw)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="layers") as e:
        get_method("ar", layers="3-12").predict(lm, samples, task)
    assert "\n" not in str(e.value)


def test_uap_profile(lm, camer):
    samples, task = camer
    prof = uap_profile(lm, samples, task, batch_size=3)
    L, N = lm.num_layers, len(samples)
    assert prof["uap"]["visual"].shape == (N, L) and prof["uap"]["audio"].shape == (N, L)
    assert list(prof["middle"]) == list(range(L // 4, L - L // 4))
    tot = prof["uap"]["visual"] + prof["uap"]["audio"]
    assert (tot <= 1 + 1e-9).all() and (prof["uap"]["audio"] >= 0).all()
    np.testing.assert_allclose(prof["uap_middle"]["audio"], prof["uap"]["audio"][:, prof["middle"]].mean(1))
    for b in range(N):
        assert prof["per_token"][b].sum() == pytest.approx(1.0, abs=1e-6)
        assert prof["per_token_group"]["audio"][b].shape == (1,)
        assert prof["per_token_group"]["visual"][b].sum() == pytest.approx(prof["uap_middle"]["visual"][b], abs=1e-9)
    # Eq. (1) against metrics.uap on a capture of the same rows
    batch = lm.encode(samples[:1], fine_prompts(samples[:1], task))
    with intervene(lm.model, batch.layouts, Capture(layers=[3], rows="answer")) as tr:
        answer_logits(lm.model, batch)
    lay = batch.layouts[0]
    u = uap(tr.get("answer", 3).probs[0, :, 0], {"visual": lay.visual, "audio": lay.audio})
    assert u["visual"] == pytest.approx(prof["uap"]["visual"][0, 3], abs=1e-6)
    assert u["audio"] == pytest.approx(prof["uap"]["audio"][0, 3], abs=1e-6)
    zs = [p.label for p in get_method("zero-shot").predict(lm, samples, task)]
    assert prof["pred"] == zs and list(prof["correct"]) == [g == p for g, p in zip(prof["gold"], zs)]
