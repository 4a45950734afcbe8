"""emolens.metrics against sklearn (hypothesis) and against hand-built cases."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from emolens import metrics as M

HSET = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = np.array(["anger", "happiness", "neutral", "sadness", "surprise", "worry", "unknown"])


@st.composite
def label_pairs(draw, as_str=False):
    """y_true over k classes; y_pred over k+1 values (so predictions may use a class absent from
    y_true, and true classes may be missing from the predictions)."""
    n = draw(st.integers(1, 50))
    k = draw(st.integers(1, 6))
    t = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    p = np.array(draw(st.lists(st.integers(0, k), min_size=n, max_size=n)))
    if as_str:
        return NAMES[t], NAMES[p]
    return t, p


def _sk(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


# ---------------------------------------------------------------- classification vs sklearn
@HSET
@given(data=st.one_of(label_pairs(), label_pairs(as_str=True)))
def test_war_uar_f1_match_sklearn(data):
    t, p = data
    assert M.war(t, p) == pytest.approx(skm.accuracy_score(t, p))
    assert M.uar(t, p) == pytest.approx(_sk(skm.balanced_accuracy_score, t, p))
    for avg in ("weighted", "macro"):
        assert M.f1(t, p, average=avg) == pytest.approx(
            _sk(skm.f1_score, t, p, average=avg, zero_division=0)), avg


@HSET
@given(data=st.one_of(label_pairs(), label_pairs(as_str=True)))
def test_report_matches_sklearn(data):
    t, p = data
    labels = np.unique(np.concatenate([t, p]))
    r = M.classification_report(t, p, labels)
    assert r["labels"] == labels.tolist()
    assert r["confusion_matrix"] == _sk(skm.confusion_matrix, t, p, labels=labels).tolist()
    rec = _sk(skm.recall_score, t, p, labels=labels, average=None, zero_division=0)
    assert [r["per_class_recall"][k] for k in r["labels"]] == pytest.approx(rec)
    prec = _sk(skm.precision_score, t, p, labels=labels, average=None, zero_division=0)
    assert [r["per_class_precision"][k] for k in r["labels"]] == pytest.approx(prec)
    assert r["war"] == pytest.approx(skm.accuracy_score(t, p))
    assert r["uar"] == pytest.approx(_sk(skm.balanced_accuracy_score, t, p))
    assert r["f1"] == pytest.approx(_sk(skm.f1_score, t, p, average="weighted", zero_division=0))
    assert r["macro_f1"] == pytest.approx(_sk(skm.f1_score, t, p, average="macro", zero_division=0))
    assert sum(r["support"].values()) == len(t)


@HSET
@given(data=label_pairs(as_str=True))
def test_given_labels_with_out_of_set_predictions(data):
    """labels fixed to the dataset's classes; 'unknown' predictions are wrong but not a class."""
    t, p = data
    labels = [x for x in NAMES[:6] if x in set(t)]  # classes of y_true; NAMES[k] may be predicted
    r = M.classification_report(t, p, labels)
    assert r["war"] == pytest.approx(skm.accuracy_score(t, p))
    rec = _sk(skm.recall_score, t, p, labels=labels, average=None, zero_division=0)
    assert [r["per_class_recall"][k] for k in labels] == pytest.approx(rec)
    assert M.uar(t, p, labels=labels) == pytest.approx(
        _sk(skm.recall_score, t, p, labels=labels, average="macro", zero_division=0))
    for avg in ("weighted", "macro"):
        assert M.f1(t, p, average=avg, labels=labels) == pytest.approx(
            _sk(skm.f1_score, t, p, labels=labels, average=avg, zero_division=0))
    assert np.array_equal(M.confusion_matrix(t, p, labels), _sk(skm.confusion_matrix, t, p, labels=labels))


def test_uar_ignores_classes_absent_from_truth_and_hand_values():
    t = ["a", "a", "a", "b"]
    p = ["a", "a", "c", "c"]
    # recall a = 2/3, recall b = 0; 'c' (prediction only) is not averaged in
    assert M.uar(t, p) == pytest.approx(1 / 3)
    assert M.war(t, p) == pytest.approx(0.5)
    # a given label that never occurs in y_true is skipped, not counted as recall 0
    assert M.uar(t, p, labels=["a", "b", "z"]) == pytest.approx(1 / 3)
    r = M.classification_report(t, p, ["a", "b", "c"])
    assert r["per_class_recall"] == {"a": pytest.approx(2 / 3), "b": 0.0, "c": 0.0}
    assert r["confusion_matrix"] == [[2, 0, 1], [0, 0, 1], [0, 0, 0]]


def test_unparsable_predictions_none():
    t = ["anger", "worry", "worry", "anger"]
    p = ["anger", None, "worry", "happiness"]
    r = M.classification_report(t, p, ["anger", "happiness", "worry"])
    assert r["war"] == pytest.approx(0.5)
    assert r["per_class_recall"] == {"anger": 0.5, "happiness": 0.0, "worry": 0.5}
    assert r["confusion_matrix"] == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
    assert M.uar(t, p) == pytest.approx(0.5)
    # labels=None: None becomes its own (never true) class, last in order
    assert M.classification_report(t, p)["labels"] == ["anger", "happiness", "worry", None]
    assert M.f1(t, p) == pytest.approx(M.f1(t, ["anger", "x", "worry", "happiness"]))


def test_torch_inputs_and_errors():
    torch = pytest.importorskip("torch")
    t = torch.tensor([0, 1, 2, 2])
    p = torch.tensor([0, 2, 2, 2])
    assert M.war(t, p) == pytest.approx(0.75)
    assert M.uar(t, p) == pytest.approx((1 + 0 + 1) / 3)
    with pytest.raises(ValueError):
        M.war([1, 2], [1])
    with pytest.raises(ValueError):
        M.f1([1], [1], average="micro")


# ---------------------------------------------------------------- CH-SIMS
def test_acc2_conventions_differ_on_hand_case():
    truth = [0.0, 0.0, 0.4, -0.6, 0.8]
    pred = [0.2, 0.0, 0.6, -0.2, -0.4]
    assert M.acc2(truth, pred, "non-negative") == pytest.approx(4 / 5)   # 0 -> positive
    assert M.acc2(truth, pred, "non-zero") == pytest.approx(2 / 3)       # true zeros excluded
    assert M.acc2(truth, pred, "non-positive") == pytest.approx(3 / 5)   # 0 -> negative (MMSA SIMS)
    with pytest.raises(ValueError):
        M.acc2([0.0, 0.0], [0.1, -0.1], "non-zero")
    with pytest.raises(ValueError):
        M.acc2(truth, pred, "has0")


@HSET
@given(st.lists(st.tuples(st.sampled_from(np.round(np.arange(-1, 1.01, 0.2), 1).tolist()),
                          st.floats(-1, 1)), min_size=1, max_size=40))
def test_acc2_f1_match_sklearn_on_binarised(pairs):
    t = np.array([a for a, _ in pairs])
    p = np.array([b for _, b in pairs])
    assert M.acc2(t, p, "non-negative") == pytest.approx(skm.accuracy_score(t >= 0, p >= 0))
    assert M.acc2(t, p, "non-positive") == pytest.approx(skm.accuracy_score(t > 0, p > 0))
    nz = t != 0
    if nz.any():
        assert M.acc2(t, p, "non-zero") == pytest.approx(skm.accuracy_score(t[nz] > 0, p[nz] > 0))
        assert M.sentiment_f1(t, p, "non-zero") == pytest.approx(
            _sk(skm.f1_score, t[nz] > 0, p[nz] > 0, labels=[False, True], average="weighted", zero_division=0))
    assert M.sentiment_f1(t, p, average="macro") == pytest.approx(
        _sk(skm.f1_score, t >= 0, p >= 0, labels=[False, True], average="macro", zero_division=0))


def test_acc3_thresholds():
    truth = [-0.8, 0.0, 0.2, 0.6, -0.2]
    pred = [-0.05, 0.05, 0.3, 0.1, -0.5]
    # band 0.1: pred -> [neu, neu, pos, neu, neg]; truth -> [neg, neu, pos, pos, neg]
    assert M.acc3(truth, pred) == pytest.approx(3 / 5)
    # band 0 (pure sign): pred -> [neg, pos, pos, pos, neg]
    assert M.acc3(truth, pred, neutral_band=0.0) == pytest.approx(4 / 5)
    assert M.sentiment_classes([-1, -0.1, 0, 0.1, 0.11, -0.11]).tolist() == [0, 1, 1, 1, 2, 0]
    # on CH-SIMS's gold grid the band does not matter for the truth
    grid = np.round(np.arange(-1, 1.01, 0.2), 1)
    assert np.array_equal(M.sentiment_classes(grid), M.sentiment_classes(grid, 0.0))


# ---------------------------------------------------------------- UAP
@HSET
@given(H=st.integers(1, 6), K=st.integers(2, 30), n_groups=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_uap_partition_sums_to_one(H, K, n_groups, seed):
    rng = np.random.default_rng(seed)
    attn = rng.dirichlet(np.ones(K), size=H)                # [H, K], rows sum to 1
    assign = rng.integers(0, n_groups, size=K)
    groups = {f"g{g}": np.flatnonzero(assign == g) for g in range(n_groups)}
    u = M.uap(attn, groups)
    assert sum(u.values()) == pytest.approx(1.0)
    for g, pos in groups.items():
        direct = np.mean([attn[h, pos].sum() for h in range(H)])
        assert u[g] == pytest.approx(direct)
        assert 0.0 <= u[g] <= 1.0 + 1e-12
    # a strict subset of the keys gets <= 1 in total
    sub = {g: pos[: max(len(pos) - 1, 0)] for g, pos in groups.items()}
    assert sum(M.uap(attn, sub).values()) <= 1.0 + 1e-12


def test_uap_hand_case_and_per_layer():
    attn = np.array([[0.5, 0.25, 0.25, 0.0],
                     [0.1, 0.1, 0.1, 0.7]])
    groups = {"visual": [0, 1], "audio": np.array([False, False, False, True])}
    u = M.uap(attn, groups)
    assert u["visual"] == pytest.approx((0.75 + 0.2) / 2)
    assert u["audio"] == pytest.approx(0.35)
    rng = np.random.default_rng(0)
    L = rng.dirichlet(np.ones(6), size=(5, 3))              # [L, H, K]
    per = M.uap_per_layer(L, {"a": [0, 1], "b": [5]})
    assert per["a"].shape == (5,)
    for layer in range(5):
        one = M.uap(L[layer], {"a": [0, 1], "b": [5]})
        assert per["a"][layer] == pytest.approx(one["a"])
        assert per["b"][layer] == pytest.approx(one["b"])
    torch = pytest.importorskip("torch")
    assert M.uap(torch.tensor(attn), groups)["audio"] == pytest.approx(0.35)
    with pytest.raises(IndexError):
        M.uap(attn, {"x": [4]})


# ---------------------------------------------------------------- EMass
@HSET
@given(K=st.integers(1, 40), seed=st.integers(0, 10_000))
def test_emass_range_and_symmetry(K, seed):
    rng = np.random.default_rng(seed)
    a_pos = rng.random(K) + 1e-3
    a_neg = rng.random(K) + 1e-3
    keep = rng.random(K) < 0.5
    keep[rng.integers(K)] = True
    e = M.emass(a_pos, a_neg, keep)
    assert 0.0 <= e <= 1.0
    assert M.emass(a_pos, a_pos, keep) == pytest.approx(0.5)
    assert M.emass(a_pos, a_pos, keep, mode="difference") == pytest.approx(0.0)
    # swapping the queries mirrors the ratio around 1/2
    assert M.emass(a_neg, a_pos, keep) == pytest.approx(1.0 - e)
    # each query is normalised by its own total mass
    assert M.emass(3.0 * a_pos, a_neg, keep) == pytest.approx(e)
    # index form == mask form
    assert M.emass(a_pos, a_neg, np.flatnonzero(keep)) == pytest.approx(e)


def test_emass_hand_cases():
    a_pos = np.array([0.6, 0.2, 0.1, 0.1])
    a_neg = np.array([0.1, 0.1, 0.4, 0.4])
    keep = [0, 1]
    # M_pos = 0.8, M_neg = 0.2
    assert M.emass(a_pos, a_neg, keep) == pytest.approx(0.8)
    assert M.emass(a_pos, a_neg, keep, mode="difference") == pytest.approx(0.6)
    assert M.emass([1.0, 0.0], [0.0, 1.0], [0]) == pytest.approx(1.0)
    assert np.isnan(M.emass([0.0, 1.0], [0.0, 1.0], [0]))      # K gets no attention at all
    batch = M.emass(np.stack([a_pos, a_neg]), np.stack([a_neg, a_neg]), np.array([True, True, False, False]))
    assert batch == pytest.approx([0.8, 0.5])


# ---------------------------------------------------------------- selection / deletion / noise
def test_selection_scores_hand_cases():
    s = M.selection_scores([1, 1, 0, 0, 1], [True, False, True, False, True])
    assert s == {"precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3),
                 "f1": pytest.approx(2 / 3), "n_selected": 3, "n_true": 3, "n_hit": 2}
    s = M.selection_scores([True, True, True, True], [True, False, False, False])
    assert (s["precision"], s["recall"]) == (pytest.approx(0.25), 1.0)
    assert s["f1"] == pytest.approx(2 * 0.25 * 1 / 1.25)
    z = M.selection_scores([False, False], [True, False])
    assert (z["precision"], z["recall"], z["f1"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        M.selection_scores([0, 2], [1, 0])


@HSET
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=40))
def test_selection_scores_match_sklearn(pairs):
    s = np.array([a for a, _ in pairs])
    t = np.array([b for _, b in pairs])
    r = M.selection_scores(s, t)
    assert r["precision"] == pytest.approx(_sk(skm.precision_score, t, s, zero_division=0))
    assert r["recall"] == pytest.approx(_sk(skm.recall_score, t, s, zero_division=0))
    assert r["f1"] == pytest.approx(_sk(skm.f1_score, t, s, zero_division=0))


def test_precision_at_k_and_batch_mean():
    scores = [0.9, 0.1, 0.8, 0.3, 0.8]
    truth = [True, False, False, True, True]
    assert M.precision_at_k(scores, truth, 1) == 1.0
    assert M.precision_at_k(scores, truth, 2) == 0.5          # tie 0.8: index 2 before 4
    assert M.precision_at_k(scores, truth, 3) == pytest.approx(2 / 3)
    assert M.precision_at_k(scores, truth, 99) == pytest.approx(3 / 5)
    sel = [[1, 1, 0], [1, 0, 0, 0]]
    tru = [[1, 0, 0], [0, 1, 1, 1]]
    mac = M.mean_selection_scores(sel, tru)
    assert mac["precision"] == pytest.approx((0.5 + 0.0) / 2)
    assert mac["recall"] == pytest.approx((1.0 + 0.0) / 2)
    mic = M.mean_selection_scores(sel, tru, average="micro")
    assert mic["precision"] == pytest.approx(1 / 3) and mic["recall"] == pytest.approx(1 / 4)
    assert mic["n_samples"] == 2 and mic["n_true"] == 4


def test_deletion_and_error_propagation():
    assert M.deletion_drop(0.68, 0.41) == pytest.approx(0.27)
    assert M.error_propagation(60.57, 53.65) == pytest.approx(-6.92)   # WETR Table 5, Baseline r=30%
    # NTS+STR row: 68.48 -> 68.26, 68.04, 67.46, 66.72. The paper prints (-0.18) for r=5%, but
    # 68.26 - 68.48 = -0.22 (a typo in Table 5; every other entry is consistent).
    d = M.error_propagation(68.48, np.array([68.26, 68.04, 67.46, 66.72]))
    assert d == pytest.approx([-0.22, -0.44, -1.02, -1.76], abs=1e-9)


@HSET
@given(N=st.integers(2, 60), r=st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3, 1.0]), seed=st.integers(0, 1000))
def test_swap_selection_noise(N, r, seed):
    rng = np.random.default_rng(seed)
    keep = rng.random(N) < 0.3
    mod = rng.integers(-1, 2, size=N)                        # -1: never touched (instruction)
    out = M.swap_selection_noise(keep, r, modality=mod, seed=seed)
    assert np.array_equal(out[mod < 0], keep[mod < 0])
    for m in (0, 1):
        sel = mod == m
        assert out[sel].sum() == keep[sel].sum()           # keep ratio per modality preserved
        n_kept, n_drop = int((keep & sel).sum()), int((~keep & sel).sum())
        expect = min(int(np.floor(r * n_kept + 0.5)), n_drop)
        assert int((keep & sel & ~out).sum()) == expect   # exactly that many kept tokens dropped
    if r == 0.0:
        assert np.array_equal(out, keep)


def test_matched_random_mask():
    sel = np.array([1, 1, 0, 0, 0, 1, 0, 0], dtype=bool)
    mod = np.array([0, 0, 0, 0, 1, 1, 1, -1])
    out = M.matched_random_mask(sel, modality=mod, seed=3)
    assert out[mod == 0].sum() == 2 and out[mod == 1].sum() == 1 and not out[mod < 0].any()
    cand = ~sel
    out = M.matched_random_mask(sel, candidates=cand, modality=mod, seed=3)
    assert not (out & sel).any()
    with pytest.raises(ValueError):
        M.matched_random_mask([1, 1, 1], candidates=[1, 0, 0])


# ---------------------------------------------------------------- SEPM confidence
@HSET
@given(st.floats(0, 1), st.floats(0, 1))
def test_confidence_variance_formula(pa, pb):
    mu = (pa + pb) / 2
    direct = ((pa - mu) ** 2 + (pb - mu) ** 2) / 2
    assert M.confidence_variance(pa, pb) == pytest.approx(direct, abs=1e-15)
    assert M.confidence_variance(pa, pb) == pytest.approx((pa - pb) ** 2 / 4, abs=1e-15)
    assert 0.0 <= M.confidence_variance(pa, pb) <= 0.25


def test_confidence_variance_max_and_vectorised():
    grid = np.linspace(0, 1, 101)
    pa, pb = np.meshgrid(grid, grid)
    ok = pa + pb <= 1 + 1e-12                                   # full-vocabulary probabilities
    c = M.confidence_variance(pa, pb)
    assert c.shape == pa.shape
    assert c[ok].max() == pytest.approx(0.25)
    assert M.confidence_variance(1.0, 0.0) == pytest.approx(0.25)
    assert M.confidence_variance(0.0, 1.0) == pytest.approx(0.25)
    assert M.confidence_variance(0.4, 0.4) == 0.0


def test_confidence_from_logits_uses_full_vocab_softmax():
    torch = pytest.importorskip("torch")
    z = torch.randn(3, 50, dtype=torch.float64) * 3
    p = torch.softmax(z, -1)
    c = M.confidence_from_logits(z, 7, 11)
    assert c == pytest.approx(((p[:, 7] - p[:, 11]) ** 2 / 4).numpy())
    # not the two-token renormalised softmax
    p2 = torch.softmax(z[:, [7, 11]], -1)
    assert not np.allclose(c, ((p2[:, 0] - p2[:, 1]) ** 2 / 4).numpy())


# ---------------------------------------------------------------- EMER set-level
def test_emer_set_scores():
    pred = [["Happy", "joyful", "sad"], ["angry"], []]
    true = [["happy", "sad", "angry"], ["angry", "worried"], ["neutral"]]
    r = M.emer_set_scores(pred, true)
    # sample 1: Yhat={happy, joyful, sad} -> acc 2/3, rec 2/3; sample 2: acc 1, rec 1/2; sample 3: 0, 0
    assert r["accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert r["recall"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert r["average"] == pytest.approx((r["accuracy"] + r["recall"]) / 2)
    g = M.emer_set_scores(pred, true, group={"joyful": "happy"})
    assert g["per_sample_accuracy"][0] == pytest.approx(1.0)     # {happy, sad} after grouping
    assert g["per_sample_recall"][0] == pytest.approx(2 / 3)
    with pytest.raises(TypeError):
        M.emer_set_scores(["happy"], ["happy"])


# ---------------------------------------------------------------- bootstrap
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(20, 200))
def test_bootstrap_ci_contains_estimate(seed, n):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 4, size=n)
    p = np.where(rng.random(n) < 0.6, t, rng.integers(0, 4, size=n))
    est, lo, hi = M.bootstrap_ci(t, p, "war", n=300, seed=seed)
    assert est == pytest.approx(M.war(t, p))
    assert lo <= est <= hi
    assert hi - lo > 0 or M.war(t, p) in (0.0, 1.0)


def test_bootstrap_deterministic_and_callable():
    rng = np.random.default_rng(1)
    t = rng.integers(0, 3, size=80)
    p = np.where(rng.random(80) < 0.7, t, (t + 1) % 3)
    a = M.bootstrap_ci(t, p, M.uar, n=200, seed=5)
    assert a == M.bootstrap_ci(t, p, "uar", n=200, seed=5)
    assert a != M.bootstrap_ci(t, p, "uar", n=200, seed=6)
    with pytest.raises(ValueError):
        M.bootstrap_ci(t, p, "nope")


def test_paired_bootstrap_delta():
    rng = np.random.default_rng(2)
    t = rng.integers(0, 5, size=300)
    base = np.where(rng.random(300) < 0.5, t, (t + 1) % 5)
    assert M.paired_bootstrap_delta(t, base, base, "war", n=200) == (0.0, 0.0, 0.0)
    # the method fixes 30% of the baseline's errors and breaks nothing: a clear gain
    better = np.where((base != t) & (rng.random(300) < 0.3), t, base)
    d, lo, hi = M.paired_bootstrap_delta(t, better, base, "war", n=500)
    assert d == pytest.approx(M.war(t, better) - M.war(t, base))
    assert 0 < lo <= d <= hi
    d2, lo2, hi2 = M.paired_bootstrap_delta(t, base, better, "war", n=500)
    assert d2 == pytest.approx(-d) and hi2 < 0
