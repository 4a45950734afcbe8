"""KeyMask equals physically removing the tokens, on every architecture builder in ``tests/archs.py``.

SEPM's stage 2 and NTS rely on it on LLaVA, the Qwen-VL families (3-D M-RoPE position ids) and
InternVL, not only on the Qwen3 text model. For each family: one forward of the whole model under
``KeyMask(from_layer=0)`` that drops every other visual token, against the family's language model
run on the kept tokens alone -- the same input embeddings (media merged in), the kept tokens'
*original* position ids (3-D for M-RoPE), Qwen3-VL's deepstack visual embeddings restricted to the
kept visual tokens -- with no mask at all. The last hidden state at every kept position must agree.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import archs  # noqa: E402

from emolens import attention as A  # noqa: E402
from emolens.intervene import KeyMask, intervene  # noqa: E402


def language_model(model):
    inner = getattr(model, "model", model)
    return getattr(inner, "language_model", inner)


def capture_text_call(model, inputs, plan=None, layouts=None):
    """Run the whole model; return the language model's call kwargs and its last hidden state."""
    lang = language_model(model)
    got = {}
    h1 = lang.register_forward_pre_hook(lambda m, a, k: got.__setitem__("kw", dict(k)), with_kwargs=True)
    h2 = lang.register_forward_hook(lambda m, a, o: got.__setitem__("h", o[0] if isinstance(o, tuple)
                                                                    else o.last_hidden_state))
    try:
        with torch.no_grad():
            if plan is None:
                model(**inputs)
            else:
                with intervene(model, layouts, plan):
                    model(**inputs)
    finally:
        h1.remove()
        h2.remove()
    return got["kw"], got["h"]


def removed_reference(model, kw, b: int, kept: np.ndarray) -> torch.Tensor:
    """The language model on row b's kept tokens only, at their original positions: ``[n_kept, D]``."""
    lang = language_model(model)
    idx = torch.as_tensor(kept)
    call = {}
    if kw.get("inputs_embeds") is not None:
        call["inputs_embeds"] = kw["inputs_embeds"][b:b + 1, idx]
    else:
        call["input_ids"] = kw["input_ids"][b:b + 1, idx]
    pos = kw.get("position_ids")
    call["position_ids"] = idx[None] if pos is None else pos[..., b:b + 1, idx]
    if kw.get("visual_pos_masks") is not None:                       # Qwen3-VL deepstack
        vm = kw["visual_pos_masks"]
        flat = torch.cumsum(vm.reshape(-1).long(), 0).reshape(vm.shape) - 1   # index into the visual rows
        keep_vis = idx[vm[b, idx]]
        rows = flat[b, keep_vis]
        call["visual_pos_masks"] = vm[b:b + 1, idx]
        call["deepstack_visual_embeds"] = [e[rows] for e in kw["deepstack_visual_embeds"]]
    # an explicit all-ones mask: without one, transformers reads position ids with gaps (the dropped
    # tokens) as packed sequences and builds a block-diagonal mask
    call["attention_mask"] = torch.ones(1, idx.numel(), dtype=torch.long)
    with torch.no_grad():
        out = lang(**call, use_cache=False)
    return out.last_hidden_state[0]


@pytest.mark.parametrize("family", list(archs.BUILDERS))
def test_keymask_equals_physical_removal(family):
    model, inputs, layouts = archs.BUILDERS[family]()
    A.install(model)
    L = inputs["input_ids"].shape[1]
    keep = np.ones((len(layouts), L), dtype=bool)
    for b, lay in enumerate(layouts):
        assert lay.visual.size >= 2
        keep[b, lay.visual[::2]] = False                               # drop every other visual token
    kw_full, h_full = capture_text_call(model, inputs)
    kw, h_masked = capture_text_call(model, inputs, [KeyMask(from_layer=0, keep=keep)], layouts)
    if kw_full.get("position_ids") is not None:
        assert torch.equal(kw["position_ids"], kw_full["position_ids"])  # the mask leaves positions alone
        if family.startswith("qwen") and family != "qwen3_text":
            assert kw["position_ids"].shape[0] >= 3                    # M-RoPE: 3-D position ids
    for b, lay in enumerate(layouts):
        kept = np.flatnonzero(keep[b] & (np.arange(L) >= lay.pad))
        ref = removed_reference(model, kw, b, kept)
        torch.testing.assert_close(h_masked[b, kept], ref, atol=1e-5, rtol=1e-4)
    # the mask really acts: the answer position's state differs from the unmasked model's
    assert (h_masked[:, -1] - h_full[:, -1]).abs().max() > 1e-4
