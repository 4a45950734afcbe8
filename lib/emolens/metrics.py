"""Evaluation metrics of the papers this project mirrors: pure functions, numpy in, floats/arrays out.

Every function accepts numpy arrays, Python sequences or torch tensors (converted with
:func:`_np`; CUDA / grad tensors are detached and copied to the host first). Nothing here imports
torch or sklearn.

Why hand-written instead of calling sklearn: these are the library's *own* implementations, kept
small and dependency-free so that the definitions (label sets, zero-division rules, which classes
enter an average) are visible in one file and pinned down in docstrings. ``tests/test_metrics.py``
checks each of them against sklearn (``accuracy_score``, ``balanced_accuracy_score``, ``f1_score``,
``recall_score``, ``confusion_matrix``) on random inputs, so a disagreement is a test failure, not a
silent change of protocol.

Contents
--------
Classification (MER2023 / MAFW / DFEW; WETR Table 1, MoSEAR Tables 3-4):
    :func:`war`, :func:`uar`, :func:`f1`, :func:`confusion_matrix`, :func:`classification_report`.
CH-SIMS sentiment (WETR Table 1, survey Table 4):
    :func:`acc2`, :func:`acc3`, :func:`sentiment_f1`, :func:`sentiment_classes`.
Attention analyses:
    :func:`uap`, :func:`uap_per_layer` (MoSEAR Eq. 1), :func:`emass` (WETR Fig. 6).
Token-selection analyses (WETR NTS):
    :func:`selection_scores`, :func:`precision_at_k`, :func:`mean_selection_scores`,
    :func:`deletion_drop`, :func:`matched_random_mask` (WETR Fig. 4),
    :func:`error_propagation`, :func:`swap_selection_noise` (WETR Table 5).
SEPM confidence: :func:`confidence_variance`, :func:`confidence_from_logits` (SEPM Eq. 3-4).
Open-vocabulary reasoning: :func:`emer_set_scores` (MoSEAR Appendix C.1, Eq. 22-24).
Uncertainty: :func:`bootstrap_ci`, :func:`paired_bootstrap_delta`.

Units: every score is a fraction in [0, 1] (papers print percentages: multiply by 100).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Hashable, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "war", "uar", "f1", "confusion_matrix", "classification_report",
    "sentiment_classes", "acc2", "acc3", "sentiment_f1",
    "uap", "uap_per_layer", "emass",
    "selection_scores", "precision_at_k", "mean_selection_scores",
    "deletion_drop", "matched_random_mask", "error_propagation", "swap_selection_noise",
    "confidence_variance", "confidence_from_logits",
    "emer_set_scores",
    "bootstrap_ci", "bootstrap_stat", "paired_bootstrap_delta", "METRICS",
]

ACC2_CONVENTIONS = ("non-negative", "non-zero", "non-positive")


# ----------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------
def _np(x: Any) -> np.ndarray:
    """Array view of ``x``: numpy arrays / sequences via ``np.asarray``, torch tensors via
    ``detach().cpu().numpy()`` (bfloat16/float16 are upcast to float32 since numpy lacks bf16)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        t = x.detach().cpu()
        try:
            return t.numpy()
        except TypeError:  # bfloat16 has no numpy dtype
            return t.float().numpy()
    return np.asarray(x)


def _pair_1d(y_true: Any, y_pred: Any) -> Tuple[np.ndarray, np.ndarray]:
    t = _np(y_true).reshape(-1)
    p = _np(y_pred).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    if t.size == 0:
        raise ValueError("empty input: a metric over zero samples is undefined")
    return t, p


def _resolve_labels(t: np.ndarray, p: np.ndarray, labels: Optional[Sequence]) -> np.ndarray:
    """``labels`` as an array; ``None`` -> sorted union of the values in y_true and y_pred
    (sklearn's ``unique_labels`` convention)."""
    if labels is None:
        both = np.concatenate([t, p])
        try:
            return np.unique(both)
        except TypeError:  # object array with incomparable values (e.g. None for "no answer")
            vals = set(both.tolist())
            return _obj_array(sorted(vals, key=lambda x: (x is None, type(x).__name__, str(x))))
    lab = _np(labels).reshape(-1)
    if lab.size == 0:
        raise ValueError("labels is empty")
    if np.unique(lab).size != lab.size:
        raise ValueError("labels contains duplicates")
    return lab


def _obj_array(values: Sequence) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def _encode(y: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Index of each element of ``y`` in ``labels`` (any order), -1 where it is not a label."""
    if y.dtype == object or labels.dtype == object:  # hashable lookup, no ordering needed
        pos = {v: i for i, v in enumerate(labels.tolist())}
        return np.fromiter((pos.get(v, -1) for v in y.tolist()), dtype=np.int64, count=y.size)
    order = np.argsort(labels, kind="stable")
    sorted_lab = labels[order]
    pos = np.searchsorted(sorted_lab, y)
    pos_c = np.clip(pos, 0, len(labels) - 1)
    hit = (pos < len(labels)) & (sorted_lab[pos_c] == y)
    return np.where(hit, order[pos_c], -1)


def _counts(t: np.ndarray, p: np.ndarray, labels: np.ndarray):
    """Confusion matrix ``[C, C]`` (rows true, cols predicted) and per-label support / predicted
    counts. A sample whose prediction is outside ``labels`` (e.g. an unparsable LLM answer) is not
    in the matrix but still counts in the support of its true label, so it lowers that recall."""
    C = len(labels)
    ti, pi = _encode(t, labels), _encode(p, labels)
    both = (ti >= 0) & (pi >= 0)
    cm = np.bincount(ti[both] * C + pi[both], minlength=C * C).reshape(C, C)
    support = np.bincount(ti[ti >= 0], minlength=C)
    n_pred = np.bincount(pi[pi >= 0], minlength=C)
    return cm, support, n_pred


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (sklearn's ``zero_division=0``)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def _py(x: Any) -> Any:
    """numpy scalar -> Python scalar (for JSON-ready reports)."""
    return x.item() if isinstance(x, np.generic) else x


# ----------------------------------------------------------------------------------------------
# classification: WAR / UAR / F1
# ----------------------------------------------------------------------------------------------
def war(y_true: Any, y_pred: Any) -> float:
    """Weighted Average Recall = overall accuracy.

    WAR = (1/N) sum_n 1[y_pred_n == y_true_n]. It equals the support-weighted mean of per-class
    recalls, hence the name (MAFW/DFEW/MER2023 "WAR" in WETR Table 1, MoSEAR Table 4).

    Args:
        y_true, y_pred: ``[N]`` labels (ints, strings, ...). A prediction that is not any class
            (e.g. an unparsable answer) simply counts as wrong.
    Returns:
        float in [0, 1]. Reference: ``sklearn.metrics.accuracy_score``.
    """
    t, p = _pair_1d(y_true, y_pred)
    return float(np.mean(t == p))


def uar(y_true: Any, y_pred: Any, labels: Optional[Sequence] = None) -> float:
    """Unweighted Average Recall: the unweighted mean of per-class recalls.

    UAR = (1/|C|) sum_{c in C} TP_c / N_c, N_c = #{n : y_true_n = c}.

    Which classes enter the mean (the choice, documented): only classes *present in y_true*
    (N_c > 0); a class with no true samples has undefined recall and is skipped rather than counted
    as 0. With ``labels=None``, C = the classes present in y_true, which is exactly
    ``sklearn.metrics.balanced_accuracy_score``. With ``labels`` given, C = the given labels that
    are present in y_true (true samples of other classes are ignored, their predictions are not
    needed). Predictions outside C are wrong answers for their sample and lower that class's recall.

    Args:
        y_true, y_pred: ``[N]`` labels.
        labels: optional subset / order of classes.
    Returns:
        float in [0, 1].
    """
    t, p = _pair_1d(y_true, y_pred)
    lab = np.unique(t) if labels is None else _resolve_labels(t, p, labels)
    cm, support, _ = _counts(t, p, lab)
    present = support > 0
    if not present.any():
        raise ValueError("none of the labels occurs in y_true: UAR is undefined")
    return float(np.mean(np.diag(cm)[present] / support[present]))


def f1(y_true: Any, y_pred: Any, average: str = "weighted", labels: Optional[Sequence] = None) -> float:
    """F1 score, support-weighted (default) or macro over classes.

    Per class c: F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c) = 2 TP_c / (N_c + P_c) with N_c true and P_c
    predicted samples of c; F1_c = 0 when N_c + P_c = 0 (sklearn ``zero_division=0``).

    - ``average="weighted"``: sum_c N_c F1_c / sum_c N_c. This is the MER2023 challenge metric for
      discrete emotions (Lian et al., 2023: weighted average F1, "WAF"), which MoSEAR reports for
      MER2023 ("F1 score, as recommended in prior work [9, 38]") and MER-UniBench / the survey's
      Table 4 call WAF.
    - ``average="macro"``: (1/|C|) sum_c F1_c. WETR Sec. 4.2 *states* "macro-averaged F1-score"
      for MAFW, MER23 and CH-SIMS, yet its Table 1 F1 tracks WAR closely (e.g. MER23 InternVL3.5-8B:
      WAR 68.13, UAR 63.24, F1 68.48), which is what weighted F1 does on imbalanced data (macro F1
      tracks UAR). We therefore default to "weighted" and always report both in
      :func:`classification_report`.

    Classes C: ``labels`` if given, else the sorted union of y_true and y_pred (sklearn's default:
    a class that is only ever predicted enters the macro mean with F1 = 0 and has zero weight in
    the weighted mean).

    Returns:
        float in [0, 1]. Reference: ``sklearn.metrics.f1_score(average=..., zero_division=0)``.
    """
    if average not in ("weighted", "macro"):
        raise ValueError(f"average must be 'weighted' or 'macro', got {average!r}")
    t, p = _pair_1d(y_true, y_pred)
    lab = _resolve_labels(t, p, labels)
    cm, support, n_pred = _counts(t, p, lab)
    f1_c = _safe_div(2 * np.diag(cm), support + n_pred)
    if average == "macro":
        return float(np.mean(f1_c))
    tot = support.sum()
    return float((f1_c * support).sum() / tot) if tot > 0 else 0.0


def confusion_matrix(y_true: Any, y_pred: Any, labels: Optional[Sequence] = None) -> np.ndarray:
    """Confusion matrix ``[C, C]`` int64, rows = true class, columns = predicted class, in the
    order of ``labels`` (default: sorted union of y_true and y_pred). Samples whose true or
    predicted value is not in ``labels`` are left out (as ``sklearn.metrics.confusion_matrix``)."""
    t, p = _pair_1d(y_true, y_pred)
    lab = _resolve_labels(t, p, labels)
    return _counts(t, p, lab)[0].astype(np.int64)


def classification_report(y_true: Any, y_pred: Any, labels: Optional[Sequence] = None) -> Dict[str, Any]:
    """All classification metrics of one run, JSON-ready.

    Args:
        y_true, y_pred: ``[N]`` labels.
        labels: the dataset's class list (recommended: fixes the order and makes classes that
            never occur appear with recall 0 / support 0). Default: sorted union of y_true, y_pred.
            Predictions outside ``labels`` count as wrong (lower WAR and the true class's recall).
    Returns:
        dict with ``war``, ``uar`` (over labels present in y_true), ``f1_weighted`` and ``f1_macro``
        (over ``labels``; ``f1`` = weighted and ``macro_f1`` kept as aliases; ``emolens.evaluate``
        sets ``f1`` to the manifest's average and names it in ``f1_average``), ``per_class_recall``, ``per_class_precision``,
        ``per_class_f1``, ``support`` (dicts label -> value; recall/precision 0 where undefined),
        ``confusion_matrix`` (list of lists, rows true, cols predicted), ``labels`` (list), ``n``.
    """
    t, p = _pair_1d(y_true, y_pred)
    lab = _resolve_labels(t, p, labels)
    cm, support, n_pred = _counts(t, p, lab)
    tp = np.diag(cm)
    rec = _safe_div(tp, support)
    prec = _safe_div(tp, n_pred)
    f1_c = _safe_div(2 * tp, support + n_pred)
    present = support > 0
    keys = [_py(x) for x in lab]
    tot = support.sum()
    return {
        "n": int(t.size),
        "war": float(np.mean(t == p)),
        "uar": float(rec[present].mean()) if present.any() else float("nan"),
        "f1": float((f1_c * support).sum() / tot) if tot > 0 else 0.0,
        "f1_weighted": float((f1_c * support).sum() / tot) if tot > 0 else 0.0,
        "f1_macro": float(f1_c.mean()),
        "macro_f1": float(f1_c.mean()),
        "per_class_recall": {k: float(v) for k, v in zip(keys, rec)},
        "per_class_precision": {k: float(v) for k, v in zip(keys, prec)},
        "per_class_f1": {k: float(v) for k, v in zip(keys, f1_c)},
        "support": {k: int(v) for k, v in zip(keys, support)},
        "confusion_matrix": cm.astype(int).tolist(),
        "labels": keys,
    }


# ----------------------------------------------------------------------------------------------
# CH-SIMS sentiment
# ----------------------------------------------------------------------------------------------
def _binarize(t: np.ndarray, p: np.ndarray, convention: str) -> Tuple[np.ndarray, np.ndarray]:
    t = t.astype(np.float64)
    p = p.astype(np.float64)
    if convention == "non-negative":
        return t >= 0, p >= 0
    if convention == "non-zero":
        keep = t != 0
        if not keep.any():
            raise ValueError("convention='non-zero' with every true score == 0: Acc-2 undefined")
        return t[keep] > 0, p[keep] > 0
    if convention == "non-positive":
        return t > 0, p > 0
    raise ValueError(f"convention must be one of {ACC2_CONVENTIONS}, got {convention!r}")


def acc2(scores_true: Any, scores_pred: Any, convention: str = "non-negative") -> float:
    """Binary sentiment accuracy (Acc-2) from continuous scores in [-1, 1] (CH-SIMS, MOSI/MOSEI).

    Conventions (the literature uses all three; papers rarely say which -- state it):

    - ``"non-negative"`` (default; "Has0" in the MMSA toolkit): positive := score >= 0, negative :=
      score < 0, for both truth and prediction; 0 is grouped with positive. All samples count.
    - ``"non-zero"`` ("Non0", MOSI/MOSEI papers): samples whose *true* score is exactly 0 are
      excluded; then positive := score > 0 vs negative := score <= 0 (a predicted 0 counts as
      negative, as in MMSA's ``test_preds[non_zeros] > 0``).
    - ``"non-positive"``: positive := score > 0, negative := score <= 0 (0 grouped with negative).
      This is MMSA's CH-SIMS evaluation (``ms_2 = [-1.01, 0.0, 1.01]``: classes [-1, 0] and (0, 1]).

    The survey (Table 4) and WETR (Table 1) report CH-SIMS Acc-2 without stating the convention.

    Args:
        scores_true, scores_pred: ``[N]`` floats (a classifier's discrete output mapped to
            {-1, 0, 1} is fine).
    Returns:
        float in [0, 1].
    """
    t, p = _pair_1d(scores_true, scores_pred)
    bt, bp = _binarize(t, p, convention)
    return float(np.mean(bt == bp))


def sentiment_classes(scores: Any, neutral_band: float = 0.1) -> np.ndarray:
    """Three sentiment classes from scores: 0 = negative (s < -band), 1 = neutral
    (-band <= s <= band), 2 = positive (s > band). ``[N]`` int64."""
    if neutral_band < 0:
        raise ValueError("neutral_band must be >= 0")
    s = _np(scores).reshape(-1).astype(np.float64)
    return np.where(s < -neutral_band, 0, np.where(s > neutral_band, 2, 1)).astype(np.int64)


def acc3(scores_true: Any, scores_pred: Any, neutral_band: float = 0.1) -> float:
    """Three-class sentiment accuracy (Acc-3): negative / neutral / positive.

    Thresholds (the choice, documented): negative s < -0.1, neutral -0.1 <= s <= 0.1, positive
    s > 0.1, applied to truth and prediction alike. +/-0.1 is CH-SIMS's three-class split as used by
    the MMSA toolkit (``ms_3 = [-1.01, -0.1, 0.1, 1.01]``: [-1, -0.1], (-0.1, 0.1], (0.1, 1]); we
    close the neutral band symmetrically, which differs from MMSA only for a score of exactly -0.1.
    CH-SIMS gold scores lie on the grid {-1.0, -0.8, ..., 0.8, 1.0}, so for the *truth* this is
    identical to negative [-1, 0), neutral {0}, positive (0, 1]; it matters only for continuous
    predictions. ``neutral_band=0`` gives the pure sign rule for predictions as well.

    Args:
        scores_true, scores_pred: ``[N]`` floats in [-1, 1].
    Returns:
        float in [0, 1].
    """
    t, p = _pair_1d(scores_true, scores_pred)
    return float(np.mean(sentiment_classes(t, neutral_band) == sentiment_classes(p, neutral_band)))


def sentiment_f1(scores_true: Any, scores_pred: Any, convention: str = "non-negative",
                 average: str = "weighted") -> float:
    """F1 of the binary (Acc-2) sentiment decision, under the same ``convention`` as :func:`acc2`.

    As in MMSA (``f1_score(..., average='weighted')`` on the two classes) the default is
    support-weighted F1 over {negative, positive}; WETR's text says "macro-averaged F1" for CH-SIMS
    -- pass ``average="macro"`` for that (see :func:`f1` for why we default to weighted).
    """
    t, p = _pair_1d(scores_true, scores_pred)
    bt, bp = _binarize(t, p, convention)
    return f1(bt, bp, average=average, labels=[False, True])


# ----------------------------------------------------------------------------------------------
# attention analyses
# ----------------------------------------------------------------------------------------------
GroupSpec = Union[Sequence[int], np.ndarray]


def _group_mask(pos: Any, K: int, name: str) -> np.ndarray:
    """Bool mask ``[K]`` from an index array or a bool mask. Duplicate indices count once."""
    a = _np(pos).reshape(-1)
    if a.dtype == bool:
        if a.size != K:
            raise ValueError(f"group {name!r}: bool mask has length {a.size}, expected {K}")
        return a
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"group {name!r}: positions must be integers or a bool mask")
    a = a.astype(np.int64)
    if a.size and (a.min() < -K or a.max() >= K):
        raise IndexError(f"group {name!r}: position out of range for K={K}")
    m = np.zeros(K, dtype=bool)
    m[a] = True
    return m


def uap(attn_row: Any, groups: Mapping[str, GroupSpec]) -> Dict[str, float]:
    """Unimodal Attention Proportion, MoSEAR Eq. (1), for one query row at one layer.

    UAP_g = (1/H) sum_h sum_{k in g} w_h(k), where w_h(k) is head h's attention probability from
    the query (the decoding step y_k, MoSEAR: "the first response token that reflects the emotion")
    to key k. (Eq. 1 as printed omits sum_h; the 1/H makes the head average the only reading.)

    Args:
        attn_row: ``[H, K]`` post-softmax attention of one query position (each row sums to 1
            over all K keys, including BOS/text keys not in any group).
        groups: name -> key positions (int array) or bool mask ``[K]``, e.g.
            ``{"visual": layout.visual, "audio": layout.audio}``.
    Returns:
        dict name -> float. For disjoint groups the values sum to <= 1, with equality when the
        groups partition the keys.
    """
    a = _np(attn_row).astype(np.float64)
    if a.ndim != 2:
        raise ValueError(f"attn_row must be [H, K], got shape {a.shape}")
    K = a.shape[-1]
    return {g: float((a[:, _group_mask(pos, K, g)].sum(-1)).mean()) for g, pos in groups.items()}


def uap_per_layer(attn: Any, groups: Mapping[str, GroupSpec]) -> Dict[str, np.ndarray]:
    """MoSEAR Eq. (1) at every layer: ``attn [L, H, K]`` (one query row per layer) -> dict
    name -> ``[L]`` float64 UAP. MoSEAR Fig. 3(a) averages this over the middle layers."""
    a = _np(attn).astype(np.float64)
    if a.ndim != 3:
        raise ValueError(f"attn must be [L, H, K], got shape {a.shape}")
    K = a.shape[-1]
    return {g: a[..., _group_mask(pos, K, g)].sum(-1).mean(-1) for g, pos in groups.items()}


def emass(a_pos: Any, a_neg: Any, keep: Any, mode: str = "ratio") -> Union[float, np.ndarray]:
    """Emotion Attention Mass (WETR Sec. 4.4, Fig. 6, right).

    WETR: EMass "measures how much attention is allocated to a shared evidence set K under an
    emotion-seeking query versus a noise-seeking query"; the paper gives no formula. Our definition:

        M_q = sum_{i in K} a_{q->i} / sum_i a_{q->i}          (share of query q's mass on K)
        EMass = M_pos / (M_pos + M_neg)                        (mode="ratio", in [0, 1])
        EMass = M_pos - M_neg                                  (mode="difference", in [-1, 1])

    ``a_q`` is the head-averaged attention from the span I_q to each key, as in WETR Eq. (4)
    (``a_{I_pos -> i}``, ``a_{I_neg -> i}``). Normalising each query by its own total mass makes the
    two queries comparable (different span lengths, attention sinks). "ratio" = 0.5 means no
    preference for K; > 0.5 means the emotion-seeking query concentrates on K more than the
    noise-seeking one. Undefined (NaN) when both M_pos and M_neg are 0 (K gets no attention).

    Args:
        a_pos, a_neg: ``[..., K]`` non-negative attention to the keys (pass the full key set that
            defines "all attention", e.g. every non-pad key, or the visual+content tokens).
        keep: the evidence set K: bool ``[K]`` / ``[..., K]`` or an index array into the key axis.
        mode: "ratio" (default) or "difference".
    Returns:
        float (1-d inputs) or array of the leading shape.
    """
    ap = _np(a_pos).astype(np.float64)
    an = _np(a_neg).astype(np.float64)
    if ap.shape != an.shape:
        raise ValueError(f"a_pos and a_neg differ in shape: {ap.shape} vs {an.shape}")
    if mode not in ("ratio", "difference"):
        raise ValueError(f"mode must be 'ratio' or 'difference', got {mode!r}")
    if (ap < 0).any() or (an < 0).any():
        raise ValueError("attention must be non-negative")
    K = ap.shape[-1]
    k = _np(keep)
    mask = k.astype(bool) if k.dtype == bool else _group_mask(k, K, "keep")
    tot_p, tot_n = ap.sum(-1), an.sum(-1)
    if (tot_p == 0).any() or (tot_n == 0).any():
        raise ValueError("a query with zero total attention: EMass undefined")
    m_pos = (ap * mask).sum(-1) / tot_p
    m_neg = (an * mask).sum(-1) / tot_n
    if mode == "difference":
        out = m_pos - m_neg
    else:
        den = m_pos + m_neg
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(den > 0, m_pos / np.where(den > 0, den, 1.0), np.nan)
    return float(out) if np.ndim(out) == 0 else out


# ----------------------------------------------------------------------------------------------
# token selection (WETR NTS)
# ----------------------------------------------------------------------------------------------
def _bool_1d(x: Any, name: str) -> np.ndarray:
    a = _np(x).reshape(-1)
    if a.dtype != bool:
        if a.size and not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name} must be a bool mask (or 0/1), got other values")
        a = a.astype(bool)
    return a


def selection_scores(selected: Any, truth: Any) -> Dict[str, float]:
    """Precision / recall / F1 of a selected token set against ground-truth cue tokens.

    precision = |S & T| / |S|, recall = |S & T| / |T|, f1 = 2|S & T| / (|S| + |T|); each is 0
    when its denominator is 0 (nothing selected / no true cue), as sklearn's ``zero_division=0``.

    Args:
        selected: bool ``[N]`` (list or array; 0/1 accepted): the kept set (e.g. NTS's K restricted
            to one modality).
        truth: bool ``[N]``: ground-truth cue tokens (e.g. ``layout.cue_visual``).
    Returns:
        dict precision, recall, f1 (floats), n_selected, n_true, n_hit (ints).
    """
    s, t = _bool_1d(selected, "selected"), _bool_1d(truth, "truth")
    if s.shape != t.shape:
        raise ValueError(f"selected and truth differ in length: {s.size} vs {t.size}")
    hit, ns, nt = int((s & t).sum()), int(s.sum()), int(t.sum())
    return {
        "precision": hit / ns if ns else 0.0,
        "recall": hit / nt if nt else 0.0,
        "f1": 2 * hit / (ns + nt) if ns + nt else 0.0,
        "n_selected": ns, "n_true": nt, "n_hit": hit,
    }


def precision_at_k(scores: Any, truth: Any, k: int) -> float:
    """Fraction of the k highest-scored items that are true cues.

    Ties are broken by position (stable sort: the earlier index wins). ``k`` larger than N is
    clipped to N; ``k <= 0`` is an error.
    """
    s = _np(scores).reshape(-1).astype(np.float64)
    t = _bool_1d(truth, "truth")
    if s.shape != t.shape:
        raise ValueError("scores and truth differ in length")
    if k <= 0:
        raise ValueError("k must be positive")
    k = min(int(k), s.size)
    top = np.argsort(-s, kind="stable")[:k]
    return float(t[top].mean())


def mean_selection_scores(selected: Iterable[Any], truth: Iterable[Any], average: str = "macro") -> Dict[str, float]:
    """Selection scores over a batch of samples (each its own ``[N_i]`` masks).

    ``average="macro"``: mean over samples of the per-sample precision/recall/f1 (each sample
    weighs the same). ``average="micro"``: pool hits/selected/true counts over samples first.
    Counts (n_selected, n_true, n_hit) are summed in both cases; ``n_samples`` is added.
    """
    rows = [selection_scores(s, t) for s, t in zip(selected, truth)]
    if not rows:
        raise ValueError("no samples")
    ns = sum(r["n_selected"] for r in rows)
    nt = sum(r["n_true"] for r in rows)
    hit = sum(r["n_hit"] for r in rows)
    if average == "macro":
        out = {m: float(np.mean([r[m] for r in rows])) for m in ("precision", "recall", "f1")}
    elif average == "micro":
        out = {"precision": hit / ns if ns else 0.0, "recall": hit / nt if nt else 0.0,
               "f1": 2 * hit / (ns + nt) if ns + nt else 0.0}
    else:
        raise ValueError("average must be 'macro' or 'micro'")
    out.update(n_selected=ns, n_true=nt, n_hit=hit, n_samples=len(rows))
    return out


def deletion_drop(acc_full: Any, acc_deleted: Any) -> Union[float, np.ndarray]:
    """Accuracy lost by deleting tokens: ``acc_full - acc_deleted`` (positive = degradation).

    WETR Fig. 4 protocol ("Deletion Test of Selected Tokens"): run NTS to get its selected set K
    (the NTS-chosen visual and content tokens; the always-kept instruction span is *not* part of
    what is deleted), then remove exactly those tokens and keep all others unchanged, and report the
    WAR degradation versus the full input. Control (ours; WETR shows only the NTS deletion): delete a
    random set of the same size drawn from the same modalities (:func:`matched_random_mask`),
    averaged over a few seeds. NTS selects decision-critical evidence only if
    ``deletion_drop(full, nts_deleted)`` clearly exceeds ``deletion_drop(full, random_deleted)``
    (use :func:`paired_bootstrap_delta` on the per-sample predictions to decide).

    Vectorised: arrays broadcast.
    """
    out = np.asarray(_np(acc_full), dtype=np.float64) - np.asarray(_np(acc_deleted), dtype=np.float64)
    return float(out) if out.ndim == 0 else out


def matched_random_mask(selected: Any, candidates: Any = None, seed: Any = None,
                        modality: Any = None) -> np.ndarray:
    """Random bool mask with the same number of True entries as ``selected``: the size-matched
    control for the deletion test (:func:`deletion_drop`).

    Args:
        selected: bool ``[N]``: the set whose size to match.
        candidates: optional bool ``[N]``: where the random set may be drawn (default: everywhere).
        seed: int or ``np.random.Generator``.
        modality: optional int ``[N]`` modality id per token; when given, the count is matched
            *per modality* (values < 0 mean "not a candidate"), drawn among that modality's tokens
            within ``candidates``.
    Returns:
        bool ``[N]``.
    """
    s = _bool_1d(selected, "selected")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    cand = np.ones_like(s) if candidates is None else _bool_1d(candidates, "candidates")
    mod = np.zeros(s.size, dtype=np.int64) if modality is None else _np(modality).reshape(-1).astype(np.int64)
    if not (cand.shape == s.shape == mod.shape):
        raise ValueError("selected, candidates and modality must have the same length")
    out = np.zeros_like(s)
    for m in np.unique(mod[mod >= 0]):
        pool = np.flatnonzero(cand & (mod == m))
        need = int((s & (mod == m)).sum())
        if need > pool.size:
            raise ValueError(f"modality {m}: need {need} random tokens but only {pool.size} candidates")
        out[rng.choice(pool, size=need, replace=False)] = True
    return out


def error_propagation(f1_clean: Any, f1_noisy: Any) -> Union[float, np.ndarray]:
    """Delta F1 under post-NTS selection noise: ``f1_noisy - f1_clean`` (negative = degradation),
    the number WETR Table 5 prints in parentheses (e.g. Baseline r=30%: 53.65 - 60.57 = -6.92).

    WETR Table 5 protocol ("inject controlled post-NTS selection noise with ratio r"; the paper does
    not say how). Ours: after NTS has chosen its kept set, for each modality (visual, content)
    independently, a fraction r of the kept tokens (round(r * n_kept), capped by the number of
    dropped tokens) is swapped for the same number of randomly chosen dropped tokens of the same
    modality, so the keep ratio per modality is unchanged and only the selection quality degrades
    (:func:`swap_selection_noise`). The instruction span is never touched. r in {0, .05, .1, .2, .3}.
    The paper also leaves open what the noise is for its "Baseline" row, which selects nothing yet
    loses F1 as r grows (a swap on an all-kept mask is a no-op); our reading: the baseline loses a
    random fraction r of each modality's tokens (an irreversible wrong drop of the same rate).

    Vectorised: arrays broadcast (e.g. one clean value against a vector of r settings).
    """
    out = np.asarray(_np(f1_noisy), dtype=np.float64) - np.asarray(_np(f1_clean), dtype=np.float64)
    return float(out) if out.ndim == 0 else out


def swap_selection_noise(keep: Any, r: float, modality: Any = None, seed: Any = None) -> np.ndarray:
    """Inject post-selection noise of ratio r (WETR Table 5, as defined in :func:`error_propagation`).

    Args:
        keep: bool ``[N]`` selection mask (True = kept).
        r: fraction in [0, 1] of the kept tokens (per modality) to swap for dropped ones.
        modality: optional int ``[N]`` modality id per token (e.g. 0 = visual, 1 = content);
            tokens with id < 0 (instruction, padding) are never changed. Default: one modality.
        seed: int or ``np.random.Generator``.
    Returns:
        new bool ``[N]`` mask with the same number of kept tokens in every modality; exactly
        ``min(round(r * n_kept_m), n_dropped_m)`` kept tokens of modality m were dropped and as many
        dropped tokens of m were admitted.
    """
    if not 0.0 <= r <= 1.0:
        raise ValueError("r must be in [0, 1]")
    k = _bool_1d(keep, "keep").copy()
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    mod = np.zeros(k.size, dtype=np.int64) if modality is None else _np(modality).reshape(-1).astype(np.int64)
    if mod.shape != k.shape:
        raise ValueError("keep and modality differ in length")
    out = k.copy()
    for m in np.unique(mod[mod >= 0]):
        kept = np.flatnonzero(k & (mod == m))
        dropped = np.flatnonzero(~k & (mod == m))
        n = min(int(np.floor(r * kept.size + 0.5)), dropped.size)
        if n == 0:
            continue
        out[rng.choice(kept, size=n, replace=False)] = False
        out[rng.choice(dropped, size=n, replace=False)] = True
    return out


# ----------------------------------------------------------------------------------------------
# SEPM confidence
# ----------------------------------------------------------------------------------------------
def confidence_variance(p_a: Any, p_b: Any) -> Union[float, np.ndarray]:
    """SEPM Eq. (4): C = ((p_A - mu)^2 + (p_B - mu)^2) / 2, mu = (p_A + p_B) / 2.

    Equivalently C = (p_A - p_B)^2 / 4. What p is (checked against SEPM Eq. 3 and the text after
    it): p = softmax(z) over the *whole vocabulary* ("Since what we obtain is a probability
    distribution over the vocabulary, we find the indices corresponding to the letters A and B"),
    so p_A + p_B <= 1 and is *not* renormalised over the two option tokens. Implemented as written:
    pass the full-vocabulary probabilities (see :func:`confidence_from_logits`). C is in [0, 1/4];
    the maximum 1/4 is reached when one option has all the mass (p_A = 1, p_B = 0); SEPM treats
    C < alpha (alpha = 0.1 by default) as an unreliable coarse answer.

    Args:
        p_a, p_b: probabilities, any broadcastable shapes.
    Returns:
        float for scalars, else an array.
    """
    a = np.asarray(_np(p_a), dtype=np.float64)
    b = np.asarray(_np(p_b), dtype=np.float64)
    mu = (a + b) / 2.0
    out = ((a - mu) ** 2 + (b - mu) ** 2) / 2.0
    return float(out) if out.ndim == 0 else out


def confidence_from_logits(logits: Any, idx_a: int, idx_b: int) -> Union[float, np.ndarray]:
    """SEPM Eq. (3)-(4) from raw next-token logits ``[..., V]``: full-vocabulary softmax, then
    :func:`confidence_variance` of the probabilities at token ids ``idx_a`` (letter "A") and
    ``idx_b`` (letter "B"). Numerically stable (log-sum-exp)."""
    z = np.asarray(_np(logits), dtype=np.float64)
    zmax = z.max(-1, keepdims=True)
    logp = z - zmax - np.log(np.exp(z - zmax).sum(-1, keepdims=True))
    return confidence_variance(np.exp(logp[..., idx_a]), np.exp(logp[..., idx_b]))


# ----------------------------------------------------------------------------------------------
# EMER / CA-MER set-level scores
# ----------------------------------------------------------------------------------------------
def _default_group(x: Hashable) -> Hashable:
    return x.strip().lower() if isinstance(x, str) else x


def emer_set_scores(pred_sets: Sequence[Iterable[Hashable]], true_sets: Sequence[Iterable[Hashable]],
                    group: Union[None, Mapping[Hashable, Hashable], Callable[[Hashable], Hashable]] = None
                    ) -> Dict[str, Any]:
    """Set-level accuracy and recall of open-vocabulary emotion labels (MoSEAR Appendix C.1,
    Eq. 22-24, the EMER / AffectGPT protocol).

    Per sample: Y^m = {G(y) : y in Y}, Yhat^m = {G(y) : y in Yhat} (Eq. 22), then (Eq. 23)
        Accuracy = |Y^m & Yhat^m| / |Yhat^m|,   Recall = |Y^m & Yhat^m| / |Y^m|,
    and (Eq. 24) Average = (Accuracy + Recall) / 2. Dataset scores are the means over samples of
    the per-sample accuracy and recall (the paper gives the per-sample formula; averaging over
    samples is the EMER/AffectGPT convention), and ``average`` is the mean of those two means.

    G: MoSEAR groups synonyms with gpt-3.5-turbo; here ``group`` is a dict label -> group id
    (labels not in the dict map to themselves after normalisation) or a callable. Default G:
    ``str.strip().lower()`` (identity for non-strings). Empty sets: accuracy = 0 when nothing is
    predicted, recall = 0 when the truth set is empty (zero-division -> 0).

    Args:
        pred_sets, true_sets: one iterable of labels per sample (same number of samples).
    Returns:
        dict accuracy, recall, average (floats), n (int), per_sample_accuracy,
        per_sample_recall (lists).
    """
    if len(pred_sets) != len(true_sets):
        raise ValueError("pred_sets and true_sets differ in length")
    if len(pred_sets) == 0:
        raise ValueError("no samples")
    if group is None:
        G = _default_group
    elif callable(group):
        G = group
    else:
        gmap = {_default_group(k): v for k, v in group.items()}
        G = lambda x: gmap.get(_default_group(x), _default_group(x))  # noqa: E731
    accs, recs = [], []
    for ps, ts in zip(pred_sets, true_sets):
        if isinstance(ps, str) or isinstance(ts, str):
            raise TypeError("each sample's labels must be an iterable of labels, not a string")
        pm, tm = {G(x) for x in ps}, {G(x) for x in ts}
        inter = len(pm & tm)
        accs.append(inter / len(pm) if pm else 0.0)
        recs.append(inter / len(tm) if tm else 0.0)
    acc, rec = float(np.mean(accs)), float(np.mean(recs))
    return {"accuracy": acc, "recall": rec, "average": (acc + rec) / 2, "n": len(accs),
            "per_sample_accuracy": accs, "per_sample_recall": recs}


# ----------------------------------------------------------------------------------------------
# bootstrap
# ----------------------------------------------------------------------------------------------
METRICS: Dict[str, Callable[[Any, Any], float]] = {
    "war": war,
    "accuracy": war,
    "uar": uar,
    "f1": f1,
    "weighted_f1": f1,
    "macro_f1": lambda t, p: f1(t, p, average="macro"),
    "acc2": acc2,
    "acc3": acc3,
    "sentiment_f1": sentiment_f1,
}


def _metric_fn(metric: Union[str, Callable]) -> Callable[[Any, Any], float]:
    if callable(metric):
        return metric
    try:
        return METRICS[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)}") from None


def _boot_indices(N: int, n: int, seed: Any) -> np.ndarray:
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return rng.integers(0, N, size=(n, N))


def bootstrap_ci(y_true: Any, y_pred: Any, metric: Union[str, Callable] = "war", n: int = 1000,
                 seed: Any = 0, alpha: float = 0.05) -> Tuple[float, float, float]:
    """Percentile bootstrap confidence interval of a metric over test samples.

    Resamples the N (y_true, y_pred) pairs with replacement ``n`` times, evaluates ``metric`` on
    each resample and returns the (alpha/2, 1 - alpha/2) percentiles (numpy's linear
    interpolation). The point estimate is the metric on the full data, not the bootstrap mean.

    Args:
        y_true, y_pred: arrays with the samples on axis 0 (labels, or CH-SIMS scores for acc2).
        metric: callable (y_true, y_pred) -> float, or a name in :data:`METRICS`.
        n: number of bootstrap resamples. seed: int or Generator (deterministic by default).
        alpha: 1 - confidence level.
    Returns:
        (estimate, lo, hi).
    """
    fn = _metric_fn(metric)
    t, p = _np(y_true), _np(y_pred)
    if len(t) != len(p) or len(t) == 0:
        raise ValueError("y_true and y_pred must be non-empty and of equal length")
    est = float(fn(t, p))
    idx = _boot_indices(len(t), n, seed)
    vals = np.array([fn(t[i], p[i]) for i in idx], dtype=np.float64)
    lo, hi = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return est, float(lo), float(hi)


def bootstrap_stat(stat: Callable[[np.ndarray], float], N: int, n: int = 1000, seed: Any = 0,
                   alpha: float = 0.05) -> Tuple[float, float, float]:
    """Bootstrap of any statistic of N paired samples: ``stat(idx)`` is evaluated on the full index
    set and on ``n`` resampled index sets (with replacement; the same indices for every system inside
    ``stat``, so comparisons are paired). Returns ``(value, lo, hi)``, the (alpha/2, 1 - alpha/2)
    percentiles. Used for differences of differences (WETR Table 5, Fig. 6) and group contrasts."""
    if N <= 0:
        raise ValueError("bootstrap_stat needs at least one sample")
    full = float(stat(np.arange(N)))
    vals = np.array([stat(i) for i in _boot_indices(N, n, seed)], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return full, float("nan"), float("nan")
    lo, hi = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return full, float(lo), float(hi)


def paired_bootstrap_delta(y_true: Any, pred_a: Any, pred_b: Any, metric: Union[str, Callable] = "war",
                           n: int = 1000, seed: Any = 0, alpha: float = 0.05) -> Tuple[float, float, float]:
    """Paired bootstrap of a metric difference between two systems on the *same* samples.

    delta = metric(y_true, pred_a) - metric(y_true, pred_b): pass the method as ``pred_a`` and the
    baseline as ``pred_b`` so a positive delta is a gain. Each resample draws one index set and
    scores both systems on it (paired), which removes the between-sample variance the two share.

    How to read it: a claimed gain is "reproduced" when lo > 0 (the (1 - alpha) interval excludes
    zero in the claimed direction); "not reproduced" when hi <= 0; otherwise "inconclusive at this
    N" -- report the interval, not just the sign of delta.

    Returns:
        (delta, lo, hi) with lo/hi the (alpha/2, 1 - alpha/2) percentiles of the resampled deltas.
    """
    fn = _metric_fn(metric)
    t, a, b = _np(y_true), _np(pred_a), _np(pred_b)
    if not (len(t) == len(a) == len(b)) or len(t) == 0:
        raise ValueError("y_true, pred_a and pred_b must be non-empty and of equal length")
    delta = float(fn(t, a) - fn(t, b))
    idx = _boot_indices(len(t), n, seed)
    vals = np.array([fn(t[i], a[i]) - fn(t[i], b[i]) for i in idx], dtype=np.float64)
    lo, hi = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return delta, float(lo), float(hi)
