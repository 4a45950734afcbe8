"""Physical pruning (``emolens.prune``, ``prune=true``) equals mask mode.

Known failure modes of token-pruning code this guards against: a duplicate KV entry from an extra
scoring forward (FastV #46: cache lengths are checked), a mask width that does not match a pruned
layer's cache length (left-padded generate), batch size 1 only (FastV #49, SparseVLM: batches of
several rows with *different* keep counts), renumbered positions (logits would differ: RoPE).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import archs
from emolens import attention as A
from emolens.intervene import KeyMask, Plan, intervene
from emolens.prune import Prune

TOL = 1e-4
NEW = 5


def _layer_lengths(model):
    """Record the sequence length each decoder layer outputs on the prefill."""
    seen = {}
    layers = A.decoder_layers(model)

    def mk(j):
        def hook(mod, args, out):
            h = out[0] if isinstance(out, tuple) else out
            if h.shape[1] > 1:
                seen[j] = h.shape[1]
        return hook
    return seen, [l.register_forward_hook(mk(j)) for j, l in enumerate(layers)]


def _keep(layouts, L, counts=(2, 3)):
    """keep [B, L]: row b drops every counts[b]-th visual token -> different keep counts per row."""
    keep = np.ones((len(layouts), L), dtype=bool)
    for b, lay in enumerate(layouts):
        keep[b, lay.visual[:: counts[b % len(counts)]]] = False
    return keep


def _run(model, inputs, layouts, ops, prune):
    plan = Plan(list(ops) + ([Prune()] if prune else []))
    with torch.no_grad(), intervene(model, layouts, plan):
        return model(**inputs, use_cache=False).logits[:, -1].float()


def _gen(model, inputs, layouts, ops, prune):
    plan = Plan(list(ops) + ([Prune()] if prune else []))
    with torch.no_grad(), intervene(model, layouts, plan):
        out = model.generate(**inputs, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True)
    return out.sequences, out.get("past_key_values", None) or out.get("cache", None)


@pytest.fixture(scope="module", params=sorted(archs.BUILDERS))
def family(request):
    model, inputs, layouts = archs.BUILDERS[request.param]()
    model.generation_config.pad_token_id = archs.PAD_ID
    A.install(model)
    return request.param, model, inputs, layouts


def _single(inputs, layouts, b=0):
    """Row b alone, its padding removed (no mask from transformers)."""
    pad = layouts[b].pad
    out = {}
    for k, v in inputs.items():
        if k in ("input_ids", "attention_mask", "mm_token_type_ids"):
            out[k] = v[b:b + 1, pad:]
        else:
            out[k] = v
    return out


def test_hf_family_pruned_logits_equal_mask_mode(family):
    name, model, inputs, layouts = family
    n = len(A.decoder_layers(model))
    L = inputs["input_ids"].shape[1]
    ops = [KeyMask(from_layer=1, keep=_keep(layouts, L))]
    ref = _run(model, inputs, layouts, ops, prune=False)
    seen, handles = _layer_lengths(model)
    try:
        got = _run(model, inputs, layouts, ops, prune=True)
    finally:
        for h in handles:
            h.remove()
    assert (got - ref).abs().max().item() <= TOL
    start = max(1, __import__("emolens.prune", fromlist=["x"]).deepstack_layers(model))
    if start < n:  # tokens really removed (same count for every row: the larger keep count)
        kept = int(_keep(layouts, L).sum(1).max())
        assert seen[start] == kept < L, (seen, kept, L)
        assert seen[0] == L


def test_hf_family_no_padding(family):
    name, model, inputs, layouts = family
    if name.startswith(("qwen2", "qwen3_vl", "internvl", "llava")) and "pixel_values" in inputs:
        pytest.skip("media tensors cover both rows; the padded batch test covers this family")
    one = _single(inputs, layouts)
    lay = [layouts[0].shifted(-layouts[0].pad)] if layouts[0].pad else [layouts[0]]
    L = one["input_ids"].shape[1]
    ops = [KeyMask(from_layer=1, keep=_keep(lay, L))]
    assert (_run(model, one, lay, ops, True) - _run(model, one, lay, ops, False)).abs().max().item() <= TOL


def test_hf_family_generate_same_tokens_and_cache(family):
    name, model, inputs, layouts = family
    L = inputs["input_ids"].shape[1]
    keep = _keep(layouts, L)
    ops = [KeyMask(from_layer=1, keep=keep)]
    ref, _ = _gen(model, inputs, layouts, ops, False)
    got, cache = _gen(model, inputs, layouts, ops, True)
    assert torch.equal(ref, got)
    if cache is not None and hasattr(cache, "layers"):
        steps = got.shape[1] - L - 1  # the last token is not in the cache
        lens = [int(c.keys.shape[-2]) for c in cache.layers]
        assert lens[0] == L + steps
        start = max(1, __import__("emolens.prune", fromlist=["x"]).deepstack_layers(model))
        for j in range(start, len(lens)):  # no duplicate entry: kept prompt tokens + generated ones
            assert lens[j] == int(keep.sum(1).max()) + steps, (j, lens)


# --------------------------------------------------------------------------- methods on emolens-tiny
@pytest.fixture(scope="module")
def tiny():
    from emolens import load_model
    from emolens.data import load_dataset
    from emolens.methods import Task

    lm = load_model("emolens-tiny", device="cpu", dtype="float32")
    ds = load_dataset("world-mer", limit=6)
    return lm, [ds[i] for i in range(len(ds))], Task.from_dataset(ds)


@pytest.mark.parametrize("name", ["nts", "wetr", "sparsevlm"])
def test_tiny_method_pruned_logits_equal_mask(tiny, name):
    from emolens.methods import get_method
    from emolens.methods.common import forward_logits

    lm, samples, task = tiny
    m, mp = get_method(name), get_method(name, prune=True)
    if name == "sparsevlm":
        from emolens.methods.common import fine_prompts

        prompts = fine_prompts(samples, task)
        batch = lm.encode(samples, prompts)
        ops, opsp = m.ops_for(lm, batch, samples), mp.ops_for(lm, batch, samples) + [Prune()]
    else:
        batch = lm.encode(samples, m.prompts(samples, task))
        ops, opsp = m.plan_for(lm, batch, samples).ops, mp.plan_for(lm, batch, samples).ops
    assert any(isinstance(o, Prune) for o in opsp)
    pads = {lay.pad for lay in batch.layouts}
    assert len(pads) > 1, "the batch should be left-padded unevenly"
    seen, handles = _layer_lengths(lm.model)
    try:
        a, _ = forward_logits(lm, batch, Plan(ops))
        n_mask = dict(seen)
        b, _ = forward_logits(lm, batch, Plan(opsp))
    finally:
        for h in handles:
            h.remove()
    assert (a - b).abs().max().item() <= TOL
    assert min(seen.values()) < max(n_mask.values())  # later layers really processed fewer tokens


@pytest.mark.parametrize("name", ["wetr", "sepm"])
def test_tiny_predictions_and_generate_equal_mask(tiny, name):
    from emolens.methods import get_method

    lm, samples, task = tiny
    for answer in ("logits", "generate"):
        kw = {"answer": answer, "max_new_tokens": 6} if answer == "generate" else {}
        base = {"reuse_prefix": False} if name == "sepm" else {}   # SEPM's default already prunes VTA's drop
        p0 = get_method(name, **base, **kw).predict(lm, samples, task)
        p1 = get_method(name, prune=True, **kw).predict(lm, samples, task)
        assert [p.label for p in p0] == [p.label for p in p1]
        assert [p.generated for p in p0] == [p.generated for p in p1]
        for x, y in zip(p0, p1):
            for k in x.option_probs:
                assert abs(x.option_probs[k] - y.option_probs[k]) <= 1e-4


def test_eval_wetr_prune_same_predictions():
    """`emolens eval --method wetr --set prune=true` = mask mode (the acceptance check runs 200)."""
    from emolens.evaluate import evaluate

    r0 = evaluate("emolens-tiny", "world-mer", "wetr", {}, limit=24)
    r1 = evaluate("emolens-tiny", "world-mer", "wetr", {"prune": True}, limit=24)
    assert [p["label"] for p in r0["predictions"]] == [p["label"] for p in r1["predictions"]]
