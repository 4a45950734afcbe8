"""SEPM (seed 001) on the real emolens-tiny model: Eq. 3-4 confidence by hand from the logits, the
branch rule C > alpha, Eq. 5-9 significance and dropping map against an eager
``output_attentions=True`` run, Eq. 10 dropped tokens have no influence on stage 2, the ablation
switches (CCI / FP / VTA, Table 3) and strategies (Table 2), parameter errors, option token ids from the
tokenizer (the model's verbalizer: label words for recipe v2, letters for a letter-verbalizer view of
the same model), and the evaluate() integration (selection precision/recall of the kept tokens).

Data: the default world views of the manifests (``world-emoset`` / ``world-mer``: version 2, 64 px
frames, 8 x 8 patches of 8 px per frame, the manifest's nuisance), so the model sees the frames at their
own size and the world's cue mask lines up with the visual tokens."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from emolens import prompts as P
from emolens.answers import read_answers
from emolens.data import load_dataset
from emolens.evaluate import evaluate
from emolens.methods import Task, get_method
from emolens.methods import sepm as S
from emolens.models import load_model

MODEL = "emolens-tiny"
N = 5


@pytest.fixture(scope="module")
def lm():
    return load_model(MODEL, device="cpu")


@pytest.fixture(scope="module")
def lm_eager():
    return load_model(MODEL, device="cpu", attn="eager")


def _setup(view, n=N, start=0):
    ds = load_dataset(f"world-{view}", "test")  # the manifest's world (version 2, default nuisance)
    return ds[start:start + n], Task.from_dataset(ds)


def _n_visual(lm, samples, task):
    """N_v per sample, from the model's own layouts (recipe v2: 64 per 64-px frame)."""
    return [int(l.visual.size) for l in lm.encode(samples, [P.fine_query(task.labels)] * len(samples)).layouts]


@pytest.fixture(scope="module")
def emoset():
    return _setup("emoset")


@pytest.fixture(scope="module")
def mer():
    return _setup("mer", n=3)


@pytest.fixture(scope="module")
def s1_default(lm, emoset):
    samples, task = emoset
    return S.SEPM().stage1(lm, samples, task)


# ------------------------------------------------------------------------------------- pure functions
def test_equations_on_small_arrays():
    assert S.coarse_confidence(1.0, 0.0) == pytest.approx(0.25)
    assert S.coarse_confidence(0.3, 0.3) == 0.0
    assert S.coarse_confidence(0.6, 0.2) == pytest.approx(((0.6 - 0.4) ** 2 + (0.2 - 0.4) ** 2) / 2)
    A = np.arange(2 * 5 * 6, dtype=float).reshape(2, 5, 6)  # [H, Q, K]
    Pm = S.drop_matrix(A, [1, 3], [0, 2, 5])
    assert np.allclose(Pm, A.mean(0)[[1, 3]][:, [0, 2, 5]])
    assert np.allclose(S.significance(Pm), Pm.mean(0))
    # k = floor(beta N_v), ties broken by position, result sorted
    assert S.n_dropped(16, 0.2) == 3 and S.n_dropped(32, 0.2) == 6 and S.n_dropped(100, 0.29) == 29
    assert S.n_dropped(16, 0.0) == 0
    pbar = np.array([0.5, 0.1, 0.1, 0.9, 0.1, 0.2])
    assert S.dropping_map(pbar, 0.5).tolist() == [1, 2, 4]
    assert S.dropping_map(pbar, 0.34).tolist() == [1, 2]
    assert S.refined_visual_set(6, [1, 2, 4]).tolist() == [0, 3, 5]
    with pytest.raises(ValueError, match="beta"):
        S.dropping_map(pbar, 1.0)


# ------------------------------------------------------------------------------------- Eq. 3-4, branch
def test_confidence_is_eq4_of_the_vocab_softmax(lm, emoset, s1_default):
    samples, task = emoset
    s1 = s1_default
    opts = [dict(p.options) for p in s1.batch.prompts]
    assert all(o == {"A": "positive", "B": "negative"} for o in opts)
    # the answer tokens are the model's verbalizer: the option words for a word-verbalizer model
    ids = lm.option_token_ids(opts[0])
    if lm.verbalizer == "word":
        assert ids == {L: lm.word_ids([w])[w] for L, w in opts[0].items()} and ids != lm.letter_ids(["A", "B"])
    p = torch.softmax(s1.logits.double(), dim=-1)  # Eq. 3: softmax over the whole vocabulary
    pa = p[:, ids["A"]].sum(-1).numpy()
    pb = p[:, ids["B"]].sum(-1).numpy()
    mu = (pa + pb) / 2
    C = ((pa - mu) ** 2 + (pb - mu) ** 2) / 2  # Eq. 4
    # relative tolerances: this model's p_A, p_B are ~1e-3 and C ~1e-8 (an absolute 1e-7 would pass anything)
    assert np.allclose(s1.p_a, pa, rtol=1e-4, atol=0) and np.allclose(s1.p_b, pb, rtol=1e-4, atol=0)
    assert np.allclose(s1.confidence, C, rtol=1e-3, atol=1e-14)
    assert np.allclose(s1.confidence, (pa - pb) ** 2 / 4, rtol=1e-3, atol=1e-14)
    assert (s1.confidence >= 0).all() and (s1.confidence <= 0.25).all()
    assert s1.coarse == ["positive" if a > b else "negative" for a, b in zip(pa, pb)]
    # the stage-1 logits are those of a plain forward of Q_c with the FoE prefix (the capture is read-only)
    batch = lm.encode(samples, [P.coarse_query(task.valence_groups, foe=True)] * len(samples))
    assert s1.batch.layouts[0].spans["foe"].size > 0
    with torch.no_grad():
        ref = lm.model(**batch.inputs).logits[:, -1].float()
    assert torch.allclose(s1.logits, ref, atol=1e-5)


def test_branch_follows_c_greater_than_alpha(lm, emoset, s1_default):
    samples, task = emoset
    C = s1_default.confidence
    for alpha in (0.0, 0.25):  # the rule alone (stage 1 without the attention capture)
        s1 = S.run_stage1(lm, samples, task, alpha=alpha, rows=None)
        assert s1.branch == [e if c > alpha else "ambiguous" for e, c in zip(s1_default.coarse, C)]
    for alpha in (float(np.median(C)), float(C[0])):  # whole method; C[0] == alpha is a tie -> ambiguous
        preds = get_method("sepm", alpha=alpha).predict(lm, samples, task)
        for p, c, e_hat in zip(preds, C, s1_default.coarse):
            e = p.extra
            assert e["confidence"] == pytest.approx(float(c), abs=1e-7)
            want = e_hat if c > alpha else "ambiguous"
            assert e["branch"] == want and e["coarse"] == e_hat
            if want == "ambiguous":
                assert e["options"] == list(task.labels)
            else:
                assert e["options"] == list(task.valence_groups[want])
            assert p.label in e["options"]
        assert preds[0].extra["branch"] == "ambiguous" or alpha != float(C[0])
    # the ambiguous branch carries the ambiguity description, the confident ones do not
    amb = S.fine_prompt(task, "ambiguous")
    assert dict(amb.segments)["ambiguity"] == P.ambiguity_description(task.valence_groups)
    assert "ambiguity" not in dict(S.fine_prompt(task, "positive").segments)
    assert "foe" in dict(S.fine_prompt(task, "negative", fp=True).segments)


def test_neutral_kept_in_both_fine_lists(mer):
    _, task = mer
    pos, neg = S.fine_labels(task, "positive"), S.fine_labels(task, "negative")
    assert "neutral" in pos and "neutral" in neg
    assert set(pos) - {"neutral"} == set(task.valence_groups["positive"])
    assert set(neg) - {"neutral"} == set(task.valence_groups["negative"])


# ------------------------------------------------------------------------------------- Eq. 5-9
def _eager_last_layer_attention(lm_eager, batch):
    """``[B, H, L, L]`` final-layer attention of an eager ``output_attentions=True`` run (the tiny
    model's outer forward returns logits only, so its Qwen3 decoder is run on the model's own input
    embeddings)."""
    model = lm_eager.model
    inp = batch.inputs
    with torch.no_grad():
        emb = model.embed(inp["input_ids"], inp["pixel_values"], inp["frame_index"], inp.get("audio_values"))
        out = model.language_model(inputs_embeds=emb, attention_mask=inp["attention_mask"], output_attentions=True)
    assert out.attentions is not None and len(out.attentions) == lm_eager.num_layers
    return out.attentions[-1]


@pytest.mark.parametrize("view", ["emoset", "mer"])
def test_significance_and_dropping_map_match_eager_attention(lm, lm_eager, emoset, mer, view):
    samples, task = emoset if view == "emoset" else mer
    att = None
    for strategy, span in (("foe", "foe"), ("query", "query")):   # query: the whole query's rows
        m = get_method("sepm", strategy=strategy)
        s1 = m.stage1(lm, samples, task)
        assert s1.rows == span and s1.query == "coarse"
        if att is None:  # both strategies read the same Q_c forward (FoE prefix on)
            att = _eager_last_layer_attention(lm_eager, s1.batch)  # final layer, Eq. 5
        nvs = [lay.visual.size for lay in s1.batch.layouts]
        drops = m.dropping(samples, s1, nvs)
        for b, lay in enumerate(s1.batch.layouts):
            A = att[b].double().mean(0)  # heads averaged
            ref = A[lay.spans[span]][:, lay.visual].mean(0).numpy()  # Eq. 6 + Eq. 8
            assert np.allclose(s1.significance[b], ref, atol=1e-5)
            nv = lay.visual.size
            assert nv == (64 if view == "emoset" else 128)  # 8 x 8 patches per 64-px frame, T = 1 / 2
            k = math.floor(0.2 * nv)
            dropped = drops[b].tolist()
            assert len(dropped) == k
            # the k least significant (Eq. 9): every dropped token is below every kept one
            sig = s1.significance[b]
            kept = np.setdiff1d(np.arange(nv), dropped)
            assert sig[dropped].max() <= sig[kept].min()
            assert sorted(np.argsort(ref, kind="stable")[:k].tolist()) == dropped
    # the whole method reports the same map (default strategy: FoE)
    m = get_method("sepm")
    s1 = m.stage1(lm, samples, task)
    drops = m.dropping(samples, s1, nvs)
    for b, p in enumerate(m.predict(lm, samples, task)):
        nv = nvs[b]
        assert p.extra["dropped"] == drops[b].tolist() and p.extra["k"] == math.floor(0.2 * nv)
        assert p.selected_visual == [j not in drops[b] for j in range(nv)]
        assert p.extra["_cue_visual"] == [bool(x) for x in s1.batch.layouts[b].cue_visual]


# ------------------------------------------------------------------------------------- Eq. 10
def _perturb(samples, layouts, which, p, seed=0, margin=2):
    """Copies of the samples whose ``p x p`` patches ``which[b]`` (visual indices) get random pixels in
    their interior. ``margin``: the shipped conv vision stem lets a token see 2 pixels of each
    neighbouring patch, so only pixels >= 2 px from the patch border belong to that token alone."""
    rng = np.random.default_rng(seed)
    out = []
    m = margin
    for s, lay, idx in zip(samples, layouts, which):
        f = s.frames.copy()
        for j in idx:
            t, r, c = lay.visual_grid[j]
            f[t, r * p + m:(r + 1) * p - m, c * p + m:(c + 1) * p - m] = rng.integers(0, 256, (p - 2 * m, p - 2 * m, 3), dtype=np.uint8)
        out.append(type(s)(**{**s.__dict__, "frames": f}))
    return out


@pytest.mark.parametrize("view", ["emoset", "mer"])
def test_dropped_tokens_have_no_influence_on_stage2(lm, emoset, mer, view):
    samples, task = emoset if view == "emoset" else mer
    m = get_method("sepm", alpha=0.0 if view == "mer" else 0.1)
    preds = m.predict(lm, samples, task)
    branches = [p.extra["branch"] for p in preds]
    drop = [p.extra["dropped"] for p in preds]
    assert all(len(d) > 0 for d in drop)
    ans, logits, batch = m.stage2(lm, samples, task, branches, drop)
    assert [a.label for a in ans] == [p.label for p in preds]
    if len(set(len(p.options) for p in batch.prompts)) > 1:
        assert any(l.pad > 0 for l in batch.layouts)  # padded batch: per-sample prompts
    patch = lm.model.config.patch_size
    pert = _perturb(samples, batch.layouts, drop, patch)
    _, logits_p, _ = m.stage2(lm, pert, task, branches, drop)
    assert torch.allclose(logits, logits_p, atol=1e-5), (logits - logits_p).abs().max()
    # the test has power: perturbing kept tokens under the same drop changes the logits
    kept = [[j for j in range(l.visual.size) if j not in d][:3] for l, d in zip(batch.layouts, drop)]
    _, logits_k, _ = m.stage2(lm, _perturb(samples, batch.layouts, kept, patch), task, branches, drop)
    assert (logits - logits_k).abs().max() > 1e-4


# ------------------------------------------------------------------------------------- ablations
def test_cci_off_uses_all_labels_without_a_coarse_stage(lm, emoset):
    samples, task = emoset
    m = get_method("sepm", cci=False)
    s1 = m.stage1(lm, samples, task)
    assert s1.query == "fine" and s1.confidence is None and s1.coarse is None
    assert all(l.spans.get("options") is not None for l in s1.batch.layouts)
    assert all(p.options == dict(zip("ABCDEFGH", task.labels)) for p in s1.batch.prompts)
    for p, nv in zip(m.predict(lm, samples, task), _n_visual(lm, samples, task)):
        assert p.extra["options"] == list(task.labels) and p.extra["branch"] == "all"
        assert p.extra["confidence"] is None and p.extra["coarse"] is None
        assert p.extra["k"] == math.floor(0.2 * nv) and p.extra["significance_query"] == "fine"
    # no stage-1 forward at all when nothing needs attention
    assert get_method("sepm", cci=False, vta=False).stage1(lm, samples, task).query is None
    assert get_method("sepm", cci=False, strategy="random").stage1(lm, samples, task).batch is None


def test_all_components_off_is_zero_shot(lm, emoset):
    """With the shared-prompt switch on both, SEPM with every component off is the zero-shot baseline
    (by default each uses its own paper's prompt)."""
    samples, task = emoset
    a = get_method("sepm", cci=False, fp=False, vta=False, prompt_spans=True).predict(lm, samples, task)
    b = get_method("zero-shot", prompt_spans=True).predict(lm, samples, task)
    assert [p.label for p in a] == [p.label for p in b]
    for x, y in zip(a, b):
        assert x.option_probs == pytest.approx(y.option_probs, abs=1e-6)


def test_vta_off_drops_nothing(lm, emoset):
    samples, task = emoset
    m = get_method("sepm", vta=False)
    preds = m.predict(lm, samples, task)
    assert all(p.extra["dropped"] == [] and p.extra["k"] == 0 and all(p.selected_visual) for p in preds)
    assert all(p.extra["significance_query"] is None for p in preds)
    # equals the plain forward of the same stage-2 prompts (no plan installed)
    prompts = m.stage2_prompts(task, [p.extra["branch"] for p in preds])
    batch = lm.encode(samples, prompts)
    with torch.no_grad():
        ref = lm.model(**batch.inputs).logits[:, -1]
    assert [a.label for a in read_answers(ref, batch.prompts, lm.option_token_ids)] == [p.label for p in preds]
    # beta = 0 drops nothing either
    assert all(p.extra["k"] == 0 for p in get_method("sepm", beta=0.0).predict(lm, samples, task))


def test_fp_off_has_no_foe_span(lm, emoset):
    samples, task = emoset
    m = get_method("sepm", fp=False)
    s1 = m.stage1(lm, samples, task)
    assert all(l.spans.get("foe") is None or l.spans["foe"].size == 0 for l in s1.batch.layouts)
    assert s1.rows == "query"
    assert all("foe" not in dict(p.segments) for p in m.stage2_prompts(task, s1.branch))
    preds = m.predict(lm, samples, task)
    assert all(p.extra["significance_rows"] == "query" for p in preds)
    on = S.SEPM()
    assert all("foe" in dict(p.segments) for p in on.stage2_prompts(task, ["positive", "ambiguous"]))


def test_random_strategy_is_seeded(lm, emoset):
    samples, task = emoset
    none = S.Stage1(query=None, branch=["all"] * len(samples))  # the random map needs no attention
    nv = _n_visual(lm, samples, task)

    def maps(seed, ss=samples):
        return [d.tolist() for d in get_method("sepm", strategy="random", seed=seed).dropping(ss, none, nv)]

    da = maps(3)
    assert da == maps(3) and da == maps(3, samples[::-1])[::-1]  # seeded, independent of batch order
    assert da != maps(4)
    assert all(len(d) == math.floor(0.2 * n) == len(set(d)) for d, n in zip(da, nv))
    m = get_method("sepm", strategy="random", seed=3)
    a, b = m.predict(lm, samples, task), m.predict(lm, samples, task)
    assert [p.extra["dropped"] for p in a] == da == [p.extra["dropped"] for p in b]
    assert [p.label for p in a] == [p.label for p in b]
    assert all(p.extra["significance_rows"] is None for p in a)


# ------------------------------------------------------------------------------------- errors, ids
@pytest.mark.parametrize("kw,name", [({"alpha": -0.1}, "alpha"), ({"alpha": float("nan")}, "alpha"),
                                     ({"beta": 1.0}, "beta"), ({"beta": -0.01}, "beta"),
                                     ({"strategy": "attention"}, "strategy"), ({"seed": -1}, "seed")])
def test_out_of_range_params_raise_one_line(kw, name):
    with pytest.raises(ValueError) as ei:
        get_method("sepm", **kw)
    msg = str(ei.value)
    assert name in msg and "\n" not in msg


def _swapped_ids(real, asked, key):
    """A wrapper of an id lookup that swaps the ids of the two coarse options (keys ``key[0]``,
    ``key[1]``): the coarse answer must flip, C (symmetric in p_A, p_B) must not change."""
    a, b = key

    def swapped(names):
        asked.append(tuple(names))
        ids = real(names)
        if set(ids) == {a, b}:
            ids = {a: ids[b], b: ids[a]}
        return ids
    return swapped


@pytest.mark.parametrize("verbalizer", ["model", "letter"])
def test_letter_ids_come_from_the_tokenizer(lm, emoset, monkeypatch, verbalizer):
    """Stage 1 reads p_A, p_B from the ids ``lm.option_token_ids`` resolves from the tokenizer: the
    option label words for this word-verbalizer model (``word_ids``), the letters for a letter-verbalizer
    view of the same model (``verbalizer="letter"``, as every HF model). Swapping the two options' ids
    flips the coarse answer and leaves C unchanged."""
    samples, task = emoset
    tok = lm.processor.tokenizer
    if verbalizer == "letter":
        lm = dataclasses.replace(lm, verbalizer="letter")
    if lm.verbalizer == "word":
        name, key = "word_ids", ("positive", "negative")
        want = {L: sorted({tok.convert_tokens_to_ids(v) for v in (w, w.capitalize())} - {tok.unk_token_id})
                for L, w in (("A", "positive"), ("B", "negative"))}
    else:
        name, key = "letter_ids", ("A", "B")
        want = {L: [tok.convert_tokens_to_ids(L)] for L in "AB"}
    assert lm.option_token_ids({"A": "positive", "B": "negative"}) == want
    assert all(i != tok.unk_token_id for v in want.values() for i in v)
    base = S.run_stage1(lm, samples, task, rows=None)
    asked = []
    monkeypatch.setattr(lm, name, _swapped_ids(getattr(lm, name), asked, key))
    sw = S.run_stage1(lm, samples, task, rows=None)
    assert key in asked
    assert sw.coarse == [{"positive": "negative", "negative": "positive"}[c] for c in base.coarse]
    assert np.allclose(sw.confidence, base.confidence, rtol=1e-6, atol=0)
    assert np.allclose(sw.p_a, base.p_b, rtol=1e-6, atol=0) and np.allclose(sw.p_b, base.p_a, rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------- evaluate
def test_evaluate_reports_selection_of_kept_tokens(lm):
    """evaluate's selection precision / recall equal sklearn's over the kept visual tokens (all but
    the dropping map R in each prediction) against the world's ground-truth cue tokens (from the
    layouts, not from the predictions)."""
    from sklearn.metrics import precision_score, recall_score

    ds = load_dataset("world-emoset", "test", limit=8)
    res = evaluate(lm, ds, "sepm", batch_size=8, progress=False)
    assert res["selection"]["n"] == 8
    lays = lm.encode(list(ds), [P.fine_query(ds.labels) for _ in ds]).layouts
    prec, rec = [], []
    for p, lay in zip(res["predictions"], lays):
        truth = np.asarray(lay.cue_visual, bool)
        kept = np.ones(lay.visual.size, bool)
        kept[p["extra"]["dropped"]] = False
        assert 0 < truth.sum() < truth.size and (~kept).sum() == p["extra"]["k"]
        prec.append(precision_score(truth, kept, zero_division=0))
        rec.append(recall_score(truth, kept, zero_division=0))
    assert res["selection"]["precision"] == pytest.approx(np.mean(prec), abs=1e-12)
    assert res["selection"]["recall"] == pytest.approx(np.mean(rec), abs=1e-12)
    for p, lay in zip(res["predictions"], lays):
        k = math.floor(0.2 * lay.visual.size)  # beta = 0.2 of N_v = 64
        assert "_cue_visual" not in p["extra"] and len(p["extra"]["dropped"]) == k
        assert p["extra"]["branch"] in ("positive", "negative", "ambiguous")
