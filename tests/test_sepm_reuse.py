"""SEPM without recomputation (issue 13): ``reuse_prefix=True`` gives the same predictions as recomputing
stage 2, on left-padded batches of world samples, and really runs fewer tokens.

* no VTA drop (CCI only, CCI + FP): stage 2 runs only the columns past the prefix it shares with stage 1
  (stage 1's KV cache); the stage-2 forward's decoder sees ``S`` << ``L`` tokens;
* VTA drops tokens: stage 2 removes them physically (``prune``): later layers see fewer tokens;
* ``answer=generate``: the same generated text;
* HF families and composed partners fall back to recomputation (``SEPM.reuses``).
"""
import pytest
import torch

from emolens.data import load_dataset
from emolens.methods import Task, get_method
from emolens.methods import sepm as S
from emolens.models import load_model

TOL = 1e-5


@pytest.fixture(scope="module")
def lm():
    return load_model("emolens-tiny", device="cpu")


@pytest.fixture(scope="module")
def mer():
    ds = load_dataset("world-mer", split="test", limit=12)
    return [ds[i] for i in range(len(ds))], Task.from_dataset(ds)


class _Seen:
    """Sequence lengths every decoder layer processes, per forward call of layer 0."""

    def __init__(self, lm):
        self.layers = lm.model.language_model.layers
        self.calls = []

    def __enter__(self):
        def hook(j):
            def f(mod, args, kwargs):
                h = args[0] if args else kwargs["hidden_states"]
                if j == 0:
                    self.calls.append([])
                self.calls[-1].append(int(h.shape[1]))
            return f
        self.h = [l.register_forward_pre_hook(hook(j), with_kwargs=True) for j, l in enumerate(self.layers)]
        return self

    def __exit__(self, *exc):
        for h in self.h:
            h.remove()


def _compare(lm, samples, task, **cfg):
    a = get_method("sepm", reuse_prefix=False, **cfg).predict(lm, samples, task)
    with _Seen(lm) as seen:
        b = get_method("sepm", **cfg).predict(lm, samples, task)
    assert [x.label for x in a] == [y.label for y in b]
    assert [x.extra["branch"] for x in a] == [y.extra["branch"] for y in b]
    assert [x.extra["dropped"] for x in a] == [y.extra["dropped"] for y in b]
    assert [x.generated for x in a] == [y.generated for y in b]
    d = max(abs(x.option_probs[k] - y.option_probs[k]) for x, y in zip(a, b) for k in x.option_probs)
    assert d <= TOL, d
    return a, seen.calls


@pytest.mark.parametrize("cfg", [{"vta": False}, {"vta": False, "fp": False}, {"beta": 0.0},
                                 {"vta": False, "alpha": 0.0}],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_prefix_reuse_equals_recomputation(lm, mer, cfg):
    samples, task = mer
    preds, calls = _compare(lm, samples, task, **cfg)
    assert len(calls) == 2                                    # stage 1 + stage 2, one forward each
    full, suffix = calls[0][0], calls[1][0]
    nv = preds[0].extra["n_visual"]
    assert suffix < full - nv                                 # the visual prefix is not run again
    enc = lm.encode(samples, get_method("sepm", **cfg).stage2_prompts(task, [p.extra["branch"] for p in preds]))
    assert any(l.pad > 0 for l in enc.layouts)                # a padded batch (per-row prompts differ)


def test_prefix_reuse_in_generate(lm, mer):
    samples, task = mer
    preds, calls = _compare(lm, samples[:6], task, vta=False, answer="generate", max_new_tokens=6)
    assert all(p.generated is not None for p in preds)
    assert calls[1][0] < calls[0][0]                          # generate's prefill ran only the suffix


@pytest.mark.parametrize("cfg", [{}, {"cci": False}, {"strategy": "random", "beta": 0.3}],
                         ids=["default", "cci=False", "random"])
def test_vta_drop_is_pruned_not_recomputed(lm, mer, cfg):
    samples, task = mer
    preds, calls = _compare(lm, samples, task, **cfg)
    st2 = calls[-1]
    assert all(p.extra["k"] > 0 for p in preds)
    assert min(st2[1:]) < st2[0]                              # later layers process only the kept tokens


def test_shared_prefix_covers_the_visual_prefix_and_foe(lm, mer):
    samples, task = mer
    m = get_method("sepm", vta=False)
    s1 = m.stage1(lm, samples, task, keep_cache=True)
    b2 = lm.encode(samples, m.stage2_prompts(task, s1.branch))
    P = S.shared_prefix(s1.batch, b2)
    L1 = s1.batch.inputs["input_ids"].shape[1]
    for lay in s1.batch.layouts:                              # every row's media and subtitle are shared
        assert lay.visual.max() < P and (lay.content.size == 0 or lay.content.max() < P)
        assert lay.spans["foe"].max() < P                     # FoE starts both queries (FP)
    assert s1.cache.get_seq_length() == L1
    assert not S.reuse_supported(lm, type(b2)(inputs={**b2.inputs, "position_ids": None}, layouts=b2.layouts))


def test_reuses_documents_the_fallbacks():
    assert get_method("sepm").reuses() == "prune"
    assert get_method("sepm", vta=False).reuses() == "prefix"
    assert get_method("sepm", beta=0.0).reuses() == "prefix"
    assert get_method("sepm", reuse_prefix=False).reuses() == "none"
    assert get_method("sepm").reuses(partner=object()) == "none"
