"""Intervention plans on a real (tiny, random-initialised) Qwen3 GQA model, offline, no mocks.

Covers: key masks vs physically removing the tokens (prefill and generate), masks from layer l leave
layers < l untouched, row edits (probs and logits stage, prefill and decode steps) vs a manual eager
re-implementation of the Qwen3 forward, residual scaling, after-layer callbacks vs the equivalent
static plan, restoration after exceptions, one-line errors for bad input, plan description, and
that the benchmark runs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import archs  # noqa: E402

from emolens import attention as A  # noqa: E402
from emolens.intervene import (AfterLayer, Capture, KeyMask, Plan, ResidualScale, RowEdit,  # noqa: E402
                               intervene)
from emolens.layout import TokenLayout  # noqa: E402
from transformers.integrations.sdpa_attention import repeat_kv  # noqa: E402
from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb  # noqa: E402

NEW = 4


@pytest.fixture(scope="module")
def qwen():
    model, inputs, layouts = archs.qwen3_text(n_layers=4)
    model.generation_config.pad_token_id = archs.PAD_ID
    with torch.no_grad():
        ref = model(**inputs).logits  # stock SDPA
    A.install(model)
    return model, inputs, layouts, ref


def fwd(model, inputs, **kw):
    with torch.no_grad():
        return model(**inputs, **kw)


def gen(model, inputs, **kw):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=NEW, do_sample=False, **kw)


def drop_keep(layouts, L, every=2):
    """keep [B, L]: drop every other visual token of each row."""
    keep = np.ones((len(layouts), L), dtype=bool)
    for b, lay in enumerate(layouts):
        keep[b, lay.visual[::every]] = False
    return keep


def hooks(model):
    """Every forward (pre-)hook on the model (transformers installs its own output-recording hooks
    the first time output_hidden_states / output_attentions is used)."""
    return {(n, k) for n, m in model.named_modules() for d in (m._forward_hooks, m._forward_pre_hooks) for k in d}


# --------------------------------------------------------------------------- key masks
def test_keymask_from_layer0_equals_removing_tokens(qwen):
    model, inputs, layouts, _ = qwen
    L = inputs["input_ids"].shape[1]
    keep = drop_keep(layouts, L)
    with intervene(model, layouts, KeyMask(from_layer=0, keep=keep)):
        out = fwd(model, inputs).logits
    for b, lay in enumerate(layouts):
        kept = np.flatnonzero(keep[b] & (np.arange(L) >= lay.pad))
        ids = inputs["input_ids"][b, kept][None]
        ref = fwd(model, {"input_ids": ids, "position_ids": torch.as_tensor(kept)[None]}).logits[0]
        torch.testing.assert_close(out[b, kept], ref, atol=1e-5, rtol=0)       # every kept position
        torch.testing.assert_close(out[b, -1], ref[-1], atol=1e-5, rtol=0)     # the answer position
    # the mask really acts: logits differ from the unmasked model
    assert (out[:, -1] - fwd(model, inputs).logits[:, -1]).abs().max() > 1e-3


def test_keymask_dropped_rows_and_both_kernels_agree(qwen):
    """Without padding the prefill uses the compact causal kernel over kept tokens; with padding the
    combined bool mask. Both give the same outputs at every position (dropped ones included), and a
    dropped token's own row attends to itself only."""
    model, inputs, layouts, _ = qwen
    L = inputs["input_ids"].shape[1]
    keep = drop_keep(layouts, L)
    plan = [KeyMask(from_layer=1, keep=keep), Capture(layers=[0, 1, 3], rows="visual")]
    with intervene(model, layouts, plan) as tb:  # row 1 is padded: mask path for the batch
        out_b = fwd(model, inputs).logits
    one = {k: v[:1] for k, v in inputs.items()}
    with intervene(model, layouts[0], [KeyMask(from_layer=1, keep=keep[:1]), plan[1]]) as t1:  # compact path
        out_1 = fwd(model, one).logits
    torch.testing.assert_close(out_1[0], out_b[0], atol=1e-5, rtol=0)
    for layer in (1, 3):
        for t in (tb, t1):
            cap = t.captures[("visual", layer)]
            lay = layouts[0]
            for r, p in enumerate(lay.visual):
                row = cap.probs[0, :, r]
                if keep[0, p]:
                    assert row[:, ~torch.as_tensor(keep[0])].abs().max() == 0
                else:
                    assert torch.equal(row, torch.nn.functional.one_hot(torch.tensor(p), L).float().expand_as(row))
    cap0 = tb.captures[("visual", 0)].probs[0]  # layer 0 is before from_layer: dropped rows attend normally
    assert (cap0 > 0).sum(-1).min() > 1 or len(layouts[0].visual) == 0


def test_keymask_persists_through_generate(qwen):
    model, inputs, layouts, _ = qwen
    one = {k: v[:1] for k, v in inputs.items()}  # row 0 has no padding
    L = one["input_ids"].shape[1]
    keep = drop_keep(layouts[:1], L)
    with intervene(model, layouts[:1], KeyMask(from_layer=0, keep=keep)):
        g = gen(model, one, output_logits=True, return_dict_in_generate=True)
    new = g.sequences[0, L:]
    kept = np.flatnonzero(keep[0])
    ids = torch.cat([one["input_ids"][0, kept], new])[None]
    pos = torch.cat([torch.as_tensor(kept), torch.arange(L, L + NEW)])[None]
    ref = fwd(model, {"input_ids": ids, "position_ids": pos}).logits[0]
    for s in range(NEW):
        torch.testing.assert_close(g.logits[s][0], ref[len(kept) - 1 + s], atol=1e-5, rtol=0)
    assert ref[len(kept) - 1:-1].argmax(-1).tolist() == new.tolist()


def test_keymask_from_layer_l_leaves_earlier_layers_untouched(qwen):
    model, inputs, layouts, _ = qwen
    L = inputs["input_ids"].shape[1]
    keep = drop_keep(layouts, L)
    caps = [Capture(layers="all", rows="answer"), Capture(layers="all", rows="q_pos")]
    with intervene(model, layouts, caps) as t0:
        h0 = fwd(model, inputs, output_hidden_states=True).hidden_states
    with intervene(model, layouts, caps + [KeyMask(from_layer=2, keep=keep)]) as t1:
        h1 = fwd(model, inputs, output_hidden_states=True).hidden_states
    for name in ("answer", "q_pos"):
        for layer in (0, 1):
            assert torch.equal(t0.captures[(name, layer)].probs, t1.captures[(name, layer)].probs)
        for layer in (2, 3):
            p = t1.captures[(name, layer)]
            dropped = torch.as_tensor(~keep)
            for b in range(len(layouts)):
                rows = p.positions[b][p.row_valid[b]]
                m = dropped[b][None, None, :].expand(p.probs.shape[1], len(rows), L).clone()
                m[:, torch.arange(len(rows)), rows] = False  # the diagonal key is always kept
                assert (p.probs[b][:, p.row_valid[b]][m] == 0).all()
            assert not torch.allclose(t0.captures[(name, layer)].probs, p.probs)
    # hidden_states[i] is the input of layer i: unchanged up to the input of layer 2
    valid = torch.as_tensor(inputs["attention_mask"]).bool()
    for i in range(3):
        assert torch.equal(h0[i][valid], h1[i][valid])
    assert not torch.allclose(h0[3][valid], h1[3][valid])


# --------------------------------------------------------------------------- manual eager reference
def manual_forward(model, input_ids, attention_mask, edits=None, position_ids=None):
    """Tiny eager re-implementation of Qwen3ForCausalLM.forward that materialises the full
    probability matrix P [B, H, N, N] and applies ``edits``: {layer: (stage, rows, fn)} where rows
    is a list per sample of positions and fn(x [B?, H, R, K], vis [K], b) edits one sample's rows."""
    lm = model.model
    B, N = input_ids.shape
    h = lm.embed_tokens(input_ids)
    pos = torch.arange(N)[None].expand(B, N) if position_ids is None else position_ids
    cos, sin = lm.rotary_emb(h, pos)
    causal = torch.ones(N, N, dtype=torch.bool).tril()
    allowed = causal[None, None] & attention_mask.bool()[:, None, None, :]
    allowed = allowed | torch.eye(N, dtype=torch.bool)[None, None]  # pad rows attend themselves (no NaN)
    for i, dl in enumerate(lm.layers):
        at = dl.self_attn
        x = dl.input_layernorm(h)
        shp = (B, N, -1, at.head_dim)
        q = at.q_norm(at.q_proj(x).view(shp)).transpose(1, 2)
        k = at.k_norm(at.k_proj(x).view(shp)).transpose(1, 2)
        v = at.v_proj(x).view(shp).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k, v = repeat_kv(k, at.num_key_value_groups), repeat_kv(v, at.num_key_value_groups)
        s = torch.matmul(q, k.transpose(2, 3)) * at.scaling
        stage, rows, fn = (edits or {}).get(i, (None, None, None))
        if stage == "logits":
            for b in range(B):
                r = torch.as_tensor(rows[b])
                s[b][:, r] = fn(s[b][:, r], b)
        p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
        if stage == "probs":
            for b in range(B):
                r = torch.as_tensor(rows[b])
                p[b][:, r] = fn(p[b][:, r], b)
        o = torch.matmul(p, v).transpose(1, 2).reshape(B, N, -1)
        h = h + at.o_proj(o)
        h = h + dl.mlp(dl.post_attention_layernorm(h))
    return model.lm_head(lm.norm(h))


def _vis_keys(layouts, K):
    m = torch.zeros(len(layouts), K, dtype=torch.bool)
    for b, lay in enumerate(layouts):
        m[b, torch.as_tensor(lay.visual)] = True
    return m


def reweight(p, vis):
    """AR-like: multiply visual keys' probability by 3, renormalise (p [..., K], vis [..., K])."""
    p = p * torch.where(vis, 3.0, 1.0)
    return p / p.sum(-1, keepdim=True)


def amplify(s, vis):
    """PAI-like: s + 0.5 |s| on visual keys, pre-softmax."""
    return s + torch.where(vis, 0.5 * s.abs(), torch.zeros_like(s))


def test_manual_reference_matches_stock(qwen):
    model, inputs, layouts, ref = qwen
    with torch.no_grad():
        man = manual_forward(model, inputs["input_ids"], inputs["attention_mask"])
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(man[valid], ref[valid], atol=1e-5, rtol=0)


@pytest.mark.parametrize("stage", ["probs", "logits"])
def test_row_edit_matches_manual_eager_reference(qwen, stage):
    model, inputs, layouts, ref = qwen
    L = inputs["input_ids"].shape[1]
    vis = _vis_keys(layouts, L)
    f = reweight if stage == "probs" else amplify
    layers = [1, 2]
    plan = [RowEdit(layers=layers, rows="q_pos", fn=lambda x, ctx: f(x, ctx.keys_in("visual")[:, None, None, :]),
                    stage=stage, name="edited"),
            RowEdit(layers=layers, rows="answer", fn=lambda x, ctx: f(x, ctx.keys_in("visual")[:, None, None, :]),
                    stage=stage)]
    with intervene(model, layouts, plan) as trace:
        out = fwd(model, inputs).logits
    rows = [np.concatenate([lay.group("q_pos"), [lay.answer]]) for lay in layouts]
    edits = {l: (stage, rows, lambda x, b: f(x, vis[b])) for l in layers}
    with torch.no_grad():
        man = manual_forward(model, inputs["input_ids"], inputs["attention_mask"], edits)
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(out[valid], man[valid], atol=1e-5, rtol=0)
    assert (out[valid] - ref[valid]).abs().max() > 1e-3  # the edit changes the output
    # rows before the first edited row are untouched
    first = min(int(r.min()) for r in rows)
    torch.testing.assert_close(out[:, :first], ref[:, :first], atol=1e-6, rtol=0)
    # the named edit recorded its edited rows; they sum to 1
    e = trace.captures[("edited", 1)]
    sums = e.probs.sum(-1)  # [B, H, R]
    assert torch.allclose(sums.permute(0, 2, 1)[e.row_valid], torch.ones(()), atol=1e-5)


def test_row_edit_on_decode_steps_matches_manual_reference(qwen):
    model, inputs, layouts, _ = qwen
    L = inputs["input_ids"].shape[1]
    plan = RowEdit(layers="all", rows="last", steps="all",
                   fn=lambda p, ctx: reweight(p, ctx.keys_in("visual")[:, None, None, :]))
    with intervene(model, layouts, plan):
        g = gen(model, inputs, output_logits=True, return_dict_in_generate=True)
    seq = g.sequences
    T = seq.shape[1]
    vis = _vis_keys(layouts, T)
    rows = [np.arange(L - 1, T - 1)] * len(layouts)  # the answer row, then every decode row
    edits = {l: ("probs", rows, lambda x, b: reweight(x, vis[b])) for l in range(4)}
    mask = torch.cat([inputs["attention_mask"], torch.ones(len(layouts), T - L, dtype=torch.long)], 1)
    with torch.no_grad():
        man = manual_forward(model, seq, mask, edits)
    for s in range(NEW):
        torch.testing.assert_close(g.logits[s], man[:, L - 1 + s], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- residual scaling
def test_residual_scale(qwen):
    model, inputs, layouts, ref = qwen
    L = inputs["input_ids"].shape[1]
    caps = [Capture(layers="all", rows="answer")]
    with intervene(model, layouts, caps) as t0:
        h0 = fwd(model, inputs, output_hidden_states=True).hidden_states
    with intervene(model, layouts, caps + [ResidualScale(layer=1, gamma=np.ones((2, L)))]):
        out1 = fwd(model, inputs).logits
    assert torch.equal(out1, ref)  # gamma = 1 is the identity
    gamma = np.ones((2, L), dtype=np.float32)
    for b, lay in enumerate(layouts):
        gamma[b, lay.visual] = 0.5
    with intervene(model, layouts, caps + [ResidualScale(layer=1, gamma=gamma)]) as t1:
        o = fwd(model, inputs, output_hidden_states=True)
    h1 = o.hidden_states
    for layer in (0, 1):
        assert torch.equal(t0.captures[("answer", layer)].probs, t1.captures[("answer", layer)].probs)
    # layer 2's attention reads RMSNorm(h), invariant to scaling a whole token vector; layer 3 sees the change
    assert not torch.allclose(t0.captures[("answer", 3)].probs, t1.captures[("answer", 3)].probs)
    assert torch.equal(h0[1], h1[1])  # input of layer 1
    torch.testing.assert_close(h1[2], h0[2] * torch.as_tensor(gamma)[:, :, None])  # output of layer 1, scaled
    assert (o.logits - ref).abs().max() > 1e-4
    # under generate the scaling acts on the prefill (carried through the cache)
    with intervene(model, layouts, ResidualScale(layer=1, gamma=gamma)):
        g = gen(model, inputs, output_logits=True, return_dict_in_generate=True)
    torch.testing.assert_close(g.logits[0], o.logits[:, -1], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- after-layer callbacks
def test_after_layer_decides_and_applies_in_one_forward(qwen):
    model, inputs, layouts, _ = qwen
    L = inputs["input_ids"].shape[1]
    trig = 1

    def decide(ctx):
        cap = ctx.captures["q_pos"]
        keep = torch.ones(len(ctx.layouts), L, dtype=torch.bool)
        gamma = torch.ones(len(ctx.layouts), L)
        for b, lay in enumerate(ctx.layouts):
            score = cap.sample(b).mean((0, 1))[torch.as_tensor(lay.visual)]  # mean over heads and rows
            order = torch.argsort(score, descending=True)
            drop = lay.visual[order[len(order) // 2:].numpy()]
            keep[b, drop] = False
            gamma[b, lay.visual[order[: len(order) // 2].numpy()]] = 1.5
        ctx.decisions["keep"], ctx.decisions["gamma"] = keep, gamma
        ctx.mask_keys(keep)                 # from layer trig + 1
        ctx.scale_residual(gamma)           # output of layer trig

    with intervene(model, layouts, [Capture(layers=[trig], rows="q_pos"), AfterLayer(trig, decide)]) as t:
        out = fwd(model, inputs).logits
        g_dyn = gen(model, inputs, output_logits=True, return_dict_in_generate=True)
    keep, gamma = t.decisions["keep"], t.decisions["gamma"]
    static = [KeyMask(from_layer=trig + 1, keep=keep), ResidualScale(layer=trig, gamma=gamma)]
    with intervene(model, layouts, static):
        ref = fwd(model, inputs).logits
        g_ref = gen(model, inputs, output_logits=True, return_dict_in_generate=True)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    assert torch.equal(g_dyn.sequences, g_ref.sequences)
    for a, b in zip(g_dyn.logits, g_ref.logits):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert (out - fwd(model, inputs).logits).abs().max() > 1e-4
    # callbacks can only act on later layers
    with pytest.raises(ValueError, match="later layers"):
        with intervene(model, layouts, AfterLayer(trig, lambda ctx: ctx.mask_keys(keep, from_layer=trig))):
            fwd(model, inputs)


# --------------------------------------------------------------------------- restoration and errors
def test_exception_inside_intervene_restores_model():
    model, inputs, layouts = archs.qwen3_text(n_layers=4)
    with torch.no_grad():
        ref = model(**inputs).logits
    A.install(model)
    L = inputs["input_ids"].shape[1]
    assert hooks(model) == set()
    plan = Plan([Capture(layers="all", rows="q_pos"), KeyMask(0, drop_keep(layouts, L)),
                 RowEdit([1], "answer", lambda p, ctx: p), ResidualScale(2, np.full((2, L), 0.3)),
                 AfterLayer(1, lambda ctx: None)])
    with pytest.raises(KeyboardInterrupt):
        with intervene(model, layouts, plan):
            fwd(model, inputs)
            assert hooks(model) and len(A._REGISTRY) > 0
            raise KeyboardInterrupt
    assert hooks(model) == set()
    assert len(A._REGISTRY) == 0
    assert torch.equal(fwd(model, inputs).logits, ref)
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(model, layouts, plan):
            fwd(model, inputs)
            raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert len(A._REGISTRY) == 0
    assert torch.equal(fwd(model, inputs).logits, ref)


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


def test_bad_inputs_give_one_line_errors(qwen):
    model, inputs, layouts, _ = qwen
    L = inputs["input_ids"].shape[1]
    before = hooks(model)
    # a layout whose positions exceed the sequence
    bad = TokenLayout(seq_len=L, visual=[3, L + 2], answer=L - 1)
    with pytest.raises(ValueError) as e:
        with intervene(model, [layouts[0], bad], []):
            pass
    assert "rebuild the layout" in _one_line(e)
    # layouts built for another input length
    short = [lay for lay in archs.layouts_from_ids(inputs["input_ids"][:, 1:], inputs["attention_mask"][:, 1:],
                                                   archs.IMG)]
    with pytest.raises(ValueError) as e:
        with intervene(model, short, Capture(layers=[0], rows="answer")):
            fwd(model, inputs)
    assert "build the layouts from the same padded inputs" in _one_line(e)
    assert hooks(model) == before and len(A._REGISTRY) == 0
    # an empty span a plan needs
    with pytest.raises(ValueError) as e:
        with intervene(model, layouts, Capture(layers=[0], rows="foe")):
            pass
    msg = _one_line(e)
    assert "'foe'" in msg and "prompt template" in msg
    with pytest.raises(ValueError) as e:
        with intervene(model, layouts, Capture(layers=[0], rows="answer", qk_positions="audio")):
            pass
    assert "audio" in _one_line(e)
    # layer out of range, wrong mask shape, wrong batch size
    with pytest.raises(ValueError) as e:
        with intervene(model, layouts, Capture(layers=[7], rows="answer")):
            pass
    assert "out of range" in _one_line(e) and "4 decoder layers" in str(e.value)
    with pytest.raises(ValueError) as e:
        with intervene(model, layouts, KeyMask(1, np.ones((2, L + 1), bool))):
            pass
    assert "keep has shape" in _one_line(e)
    with pytest.raises(ValueError) as e:
        with intervene(model, layouts[:1], Capture(layers=[0], rows="answer")):
            fwd(model, inputs)
    assert "one TokenLayout per batch row" in _one_line(e)
    # nested interventions are refused
    with intervene(model, layouts, []):
        with pytest.raises(RuntimeError, match="already active"):
            with intervene(model, layouts, []):
                pass
    assert hooks(model) == before and len(A._REGISTRY) == 0


def test_unsupported_backend_message():
    model, inputs, layouts = archs.qwen3_text(n_layers=2)  # stock SDPA, not installed
    with pytest.raises(RuntimeError) as e:
        with intervene(model, layouts, Capture(layers=[0], rows="answer")):
            pass
    assert _one_line(e) == ("unsupported attention backend 'sdpa': load the model with emolens.load_model(...) "
                            "or call emolens.attention.install(model)")
    vlm, _, vlay = archs.qwen2_vl()
    A.install(vlm, text_impl="eager")
    with pytest.raises(RuntimeError, match="unsupported attention backend 'eager'"):
        with intervene(vlm, vlay, []):
            pass


def test_plan_describe_is_plain_data():
    keep = np.ones((2, 5), bool)
    plan = Plan([Capture(layers=[3, 4], rows="q_pos", qk_positions="visual"), KeyMask(2, keep),
                 RowEdit("all", "answer", reweight, stage="probs"), ResidualScale(1, keep.astype(float)),
                 AfterLayer(3, reweight), Capture(rows=[[1, 2], [3]])])
    d = plan.describe()
    json.dumps(d)
    assert [o["op"] for o in d["ops"]] == ["Capture", "KeyMask", "RowEdit", "ResidualScale", "AfterLayer", "Capture"]
    assert d["ops"][0]["layers"] == [3, 4] and d["ops"][1]["keep"]["shape"] == [2, 5]
    assert d["ops"][2]["fn"] == "reweight" and d["ops"][5]["rows"] == {"per_sample": [2, 1]}
    with pytest.raises(ValueError, match="unknown plan op"):
        Plan([object()])


def test_bench_quick_runs():
    from emolens.bench import run_bench

    res = run_bench(quick=True)
    assert set(res) >= {"ratios", "peak_memory_ratio", "config"}
    r = res["ratios"]["small"]
    assert set(r) >= {"capture", "key_mask", "row_edit"} and all(v > 0 for v in r.values())
    m = res["peak_memory_ratio"]["small"]
    assert m["capture_vs_plain"] > 0 and m["eager_output_attentions_vs_plain"] > m["capture_vs_plain"]
