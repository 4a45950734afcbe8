"""Capture(qk_rope="pre"): q and k before RoPE (after any q/k norm), as WETR Eq. 9 reads "the frozen
attention projections", on every tiny architecture, against the projections' own outputs read by
forward hooks on q_norm/k_norm (Qwen3 families) or q_proj/k_proj (the others)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import archs  # noqa: E402

from emolens import attention as A  # noqa: E402
from emolens.intervene import Capture, Plan, intervene  # noqa: E402

LAYER = 1


def _projection_outputs(model, layer):
    """Forward hooks on layer ``layer``'s q/k projections (after the norm when there is one):
    ``{"q": [B, L, H, D], "k": [B, L, Hkv, D]}``."""
    attn = A.decoder_layers(model)[layer].self_attn
    got, handles = {}, []
    for name in ("q", "k"):
        mod = getattr(attn, f"{name}_norm", None) or getattr(attn, f"{name}_proj")

        def hook(m, args, out, name=name):
            t = out.detach().float()
            got[name] = t.view(*t.shape[:2], -1, attn.head_dim)
        handles.append(mod.register_forward_hook(hook))
    return got, handles


@pytest.mark.parametrize("name", list(archs.BUILDERS))
def test_pre_rope_capture_equals_the_projections(name):
    model, inputs, layouts = archs.BUILDERS[name]()
    A.install(model)
    got, handles = _projection_outputs(model, LAYER)
    plan = Plan([Capture(layers=[LAYER], rows="visual", name="v", qk_positions="visual", qk_rope="pre"),
                 Capture(layers=[LAYER], rows="visual", name="post", qk_positions="visual")])
    try:
        with torch.no_grad(), intervene(model, layouts, plan) as tr:
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    rec, post = tr.captures[("v", LAYER)], tr.captures[("post", LAYER)]
    checked = 0
    for b in range(len(layouts)):
        pos = rec.positions[b][rec.row_valid[b]]
        kpos = rec.k_positions[b][rec.k_valid[b]]
        q_ref = got["q"][b, pos].transpose(0, 1)        # [H, R, D]
        k_ref = got["k"][b, kpos].transpose(0, 1)       # [Hkv, R, D]
        q = rec.q[b][:, : pos.numel()]
        k = rec.k[b][:, : kpos.numel()]
        assert torch.allclose(q, q_ref, atol=1e-5, rtol=1e-4), (name, (q - q_ref).abs().max())
        assert torch.allclose(k, k_ref, atol=1e-5, rtol=1e-4), (name, (k - k_ref).abs().max())
        # and the post-RoPE capture really differs (RoPE was applied and undone, not skipped)
        assert not torch.allclose(post.k[b][:, : kpos.numel()], k_ref, atol=1e-4)
        checked += pos.numel()
    assert checked > 0


def test_pre_rope_only_for_prefill():
    model, inputs, layouts = archs.qwen3_text()
    A.install(model)
    with pytest.raises(ValueError, match="prefill"):
        with intervene(model, layouts, Plan([Capture(layers=[1], rows="last", qk_positions="visual",
                                                     qk_rope="pre", steps="all")])):
            pass
    with pytest.raises(ValueError, match="qk_rope"):
        with intervene(model, layouts, Plan([Capture(layers=[1], rows="last", qk_positions="visual", qk_rope="x")])):
            pass
