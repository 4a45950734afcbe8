"""The emolens attention function on real (tiny, random-initialised) architectures, offline.

Covers: model utilities (decoder_layers, text_config, install keeps vision towers on SDPA), identity
with the stock SDPA model (forward and generate, batched with left padding), and captured attention
rows against eager ``output_attentions=True`` for prefill rows and decode-step rows.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import archs  # noqa: E402

from emolens import attention as A  # noqa: E402
from emolens.intervene import Capture, Plan, intervene  # noqa: E402

ARCHS = list(archs.BUILDERS)
NEW = 5


@functools.lru_cache(maxsize=None)
def built(name):
    model, inputs, layouts = archs.BUILDERS[name]()
    model.generation_config.pad_token_id = archs.PAD_ID
    return model, inputs, layouts


def set_impl(model, impl):
    """Switch the text attention (vision towers stay on SDPA)."""
    A.install(model, text_impl=impl)
    return model


def generate(model, inputs, **kw):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=NEW, do_sample=False, **kw)


def full_inputs(inputs, sequences):
    """Inputs for one forward over prompt + generated tokens."""
    n = sequences.shape[1] - inputs["input_ids"].shape[1]
    full = dict(inputs)
    full["input_ids"] = sequences
    full["attention_mask"] = torch.cat([inputs["attention_mask"],
                                        torch.ones(sequences.shape[0], n, dtype=inputs["attention_mask"].dtype)], 1)
    if "mm_token_type_ids" in inputs:
        mm = inputs["mm_token_type_ids"]
        full["mm_token_type_ids"] = torch.cat([mm, torch.zeros(mm.shape[0], n, dtype=mm.dtype)], 1)
    return full


# --------------------------------------------------------------------------- utilities
@pytest.mark.parametrize("name", ARCHS)
def test_decoder_layers_text_config_and_install(name):
    model, inputs, layouts = built(name)
    layers = A.decoder_layers(model)
    cfg = A.text_config(model)
    assert len(layers) == cfg.num_hidden_layers
    for i, layer in enumerate(layers):
        assert [m.layer_idx for m in A.attention_modules(layer)] == [i]
    set_impl(model, "emolens")
    assert A.attn_implementation(model) == "emolens"
    vcfg = getattr(model.config, "vision_config", None)
    if vcfg is not None:  # the vision tower stays on plain SDPA
        assert vcfg._attn_implementation == "sdpa"
    set_impl(model, "sdpa")
    assert A.attn_implementation(model) == "sdpa"


# --------------------------------------------------------------------------- identity
@pytest.mark.parametrize("name", ARCHS)
def test_identity_with_stock_sdpa(name):
    model, inputs, layouts = built(name)
    assert layouts[1].pad > 0  # the batch is left padded
    set_impl(model, "sdpa")
    with torch.no_grad():
        ref = model(**inputs).logits
    ref_gen = generate(model, inputs)
    set_impl(model, "emolens")
    try:
        with torch.no_grad():
            out = model(**inputs).logits
        assert torch.equal(out, ref)  # installed, no intervention: bit-identical
        assert torch.equal(generate(model, inputs), ref_gen)
        with intervene(model, layouts, Plan([])) as trace:
            with torch.no_grad():
                out_empty = model(**inputs).logits
            gen_empty = generate(model, inputs)
        assert trace.captures == {}
        torch.testing.assert_close(out_empty, ref, atol=1e-5, rtol=0)
        assert torch.equal(gen_empty, ref_gen)
        # a capture-only plan observes without changing anything
        with intervene(model, layouts, [Capture(layers="all", rows="visual"),
                                        Capture(layers="all", rows="last", steps="all")]) as trace:
            with torch.no_grad():
                out_cap = model(**inputs).logits
            gen_cap = generate(model, inputs)
        assert len(trace.captures) == 2 * len(A.decoder_layers(model))
        torch.testing.assert_close(out_cap, ref, atol=1e-5, rtol=0)
        assert torch.equal(gen_cap, ref_gen)
    finally:
        set_impl(model, "sdpa")


# --------------------------------------------------------------------------- capture vs eager
@pytest.mark.parametrize("name", ARCHS)
def test_capture_matches_eager_output_attentions(name):
    model, inputs, layouts = built(name)
    n = len(A.decoder_layers(model))
    set_impl(model, "eager")
    with torch.no_grad():
        eager = model(**inputs, output_attentions=True).attentions
    assert len(eager) == n
    set_impl(model, "emolens")
    try:
        plan = Plan([Capture(layers="all", rows="q_pos", qk_positions="visual"),
                     Capture(layers=[0, n - 1], rows="visual"),
                     Capture(layers="all", rows="answer")])
        with intervene(model, layouts, plan) as trace, torch.no_grad():
            model(**inputs)
        for (cname, layer), cap in trace.captures.items():
            B, H, R, K = cap.probs.shape
            assert K == inputs["input_ids"].shape[1]
            for b, lay in enumerate(layouts):
                want_pos = {"q_pos": lay.group("q_pos"), "visual": lay.visual, "answer": [lay.answer]}[cname]
                r = len(want_pos)
                assert cap.positions[b, :r].tolist() == list(want_pos)
                assert bool(cap.row_valid[b, :r].all()) and not bool(cap.row_valid[b, r:].any())
                assert (cap.positions[b, r:] == -1).all() and (cap.probs[b, :, r:] == 0).all()
                ref = eager[layer][b][:, torch.as_tensor(want_pos)]
                torch.testing.assert_close(cap.probs[b, :, :r], ref.float(), atol=1e-6, rtol=0)
        # different row counts per sample where the layouts differ
        vis = trace.captures[("visual", 0)]
        assert vis.row_valid.sum(1).tolist() == [len(l.visual) for l in layouts]
        # q/k recorded post-RoPE: their scaled dot products reproduce the probability ratios
        cap = trace.captures[("q_pos", 1)]
        attn = A.attention_modules(A.decoder_layers(model)[1])[0]
        G = cap.q.shape[1] // cap.k.shape[1]
        s = torch.einsum("bhrd,bhkd->bhrk", cap.q.float(), cap.k.repeat_interleave(G, 1).float()) * attn.scaling
        for b in range(len(layouts)):
            kv = int(cap.k_valid[b].sum())
            p = cap.probs[b, :, :, cap.k_positions[b, :kv]]
            lr = torch.log(p[..., 1:]) - torch.log(p[..., :1])
            torch.testing.assert_close(lr, s[b, :, :, 1:kv] - s[b, :, :, :1], atol=1e-4, rtol=1e-4)
    finally:
        set_impl(model, "sdpa")


@pytest.mark.parametrize("name", ARCHS)
def test_decode_step_capture_matches_eager(name):
    model, inputs, layouts = built(name)
    n = len(A.decoder_layers(model))
    L = inputs["input_ids"].shape[1]
    set_impl(model, "emolens")
    try:
        with intervene(model, layouts, Capture(layers="all", rows="last", steps="all")) as trace:
            seq = generate(model, inputs)
    finally:
        set_impl(model, "eager")
    try:
        with torch.no_grad():
            eager = model(**full_inputs(inputs, seq), output_attentions=True).attentions
    finally:
        set_impl(model, "sdpa")
    assert len(trace.decode_captures) == NEW - 1
    for layer in range(n):
        pre = trace.captures[("last", layer)]
        assert pre.positions[:, 0].tolist() == [L - 1] * len(layouts)
        torch.testing.assert_close(pre.probs[:, :, 0], eager[layer][:, :, L - 1, :L].float(), atol=1e-6, rtol=0)
        for s, caps in enumerate(trace.decode_captures):
            cap = caps[("last", layer)]
            K = L + s + 1
            assert cap.probs.shape[-1] == K and cap.positions[:, 0].tolist() == [L + s] * len(layouts)
            torch.testing.assert_close(cap.probs[:, :, 0], eager[layer][:, :, L + s, :K].float(), atol=1e-6, rtol=0)


def test_capture_without_padding_rebuilds_causality():
    """Batch 1 without padding: transformers passes no mask at all (pure causal); the captured rows
    must still be causal, for prefill rows and for decode-step rows."""
    model, inputs, layouts = built("qwen3_text")
    one = {k: v[:1] for k, v in inputs.items()}
    assert layouts[0].pad == 0
    L = one["input_ids"].shape[1]
    set_impl(model, "emolens")
    try:
        with intervene(model, layouts[0], [Capture(layers="all", rows="visual"),
                                            Capture(layers="all", rows="last", steps="decode")]) as trace:
            with torch.no_grad():
                model(**one)
            seq = generate(model, one)
    finally:
        set_impl(model, "eager")
    try:
        with torch.no_grad():
            eager = model(**full_inputs(one, seq), output_attentions=True).attentions
    finally:
        set_impl(model, "sdpa")
    vis = torch.as_tensor(layouts[0].visual)
    for layer in range(len(eager)):
        cap = trace.captures[("visual", layer)]
        torch.testing.assert_close(cap.probs[0], eager[layer][0][:, vis, :L].float(), atol=1e-6, rtol=0)
        assert (cap.probs[0][:, torch.arange(len(vis)), vis + 1] == 0).all()  # nothing beyond the diagonal
        for s, caps in enumerate(trace.decode_captures):
            torch.testing.assert_close(caps[("last", layer)].probs[0, :, 0], eager[layer][0, :, L + s, :L + s + 1].float(),
                                       atol=1e-6, rtol=0)


def test_install_and_layers_through_a_plain_wrapper_module():
    """A plain nn.Module holding a transformers decoder as `language_model` (like an embedded model)."""
    model, inputs, layouts = archs.qwen3_text(n_layers=2)

    class Wrapper(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.encoder = torch.nn.Linear(4, 4)
            self.language_model = lm

    w = Wrapper(model)
    assert A.decoder_layers(w) is model.model.layers
    A.install(w)
    assert A.attn_implementation(w) == "emolens"
    with intervene(w, layouts, Capture(layers=[1], rows="answer")) as trace, torch.no_grad():
        w.language_model(**inputs)
    assert trace.captures[("answer", 1)].probs.shape == (2, 4, 1, inputs["input_ids"].shape[1])


# --------------------------------------------------------------------------- upstream drift
@pytest.mark.filterwarnings("error::FutureWarning")
@pytest.mark.filterwarnings("error::DeprecationWarning")
@pytest.mark.parametrize("name", ARCHS)
def test_generate_with_a_plan_emits_no_deprecation_warning(name):
    """generate() through the emolens attention with a capture plan raises no FutureWarning or
    DeprecationWarning on the installed transformers (e.g. the 5.24 ``past_key_values`` -> ``cache``
    rename): the cache keyword is passed under the name the version takes (emolens.compat)."""
    model, inputs, layouts = built(name)
    set_impl(model, A.NAME)
    with intervene(model, layouts, Plan([Capture(layers=[0], rows="last", steps="all")])):
        seq = generate(model, inputs)
    assert seq.shape[1] == inputs["input_ids"].shape[1] + NEW
