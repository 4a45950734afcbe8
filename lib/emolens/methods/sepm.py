"""SEPM: Sharpening Emotion Perception in MLLMs (seed 001, Sec. 3.2-3.3, Eq. 1-10, Algorithm 1).

Two forwards per batch:

* **Stage 1** (coarse, Eq. 1, 3-5): the coarse query Q_c ("A. positive B. negative", PEC and NEC
  listed) with the Focus-on-Emotion prefix "Please focus on emotion." (span ``foe``). One forward
  gives the coarse answer Ê (Eq. 1), the next-token logits z and p = softmax(z) over the whole
  vocabulary (Eq. 3), the confidence C = [(p_A - mu)^2 + (p_B - mu)^2] / 2 (Eq. 4), and -- captured
  in the same forward -- the final layer's attention rows of the FoE tokens (Eq. 5).
* **Confidence assessment** (Algorithm 1): C > alpha -> the fine query Q_f keeps only the predicted
  valence's categories (Q_PEC / Q_NEC); otherwise (C <= alpha) Q_ambi: every category plus the
  ambiguity description (``prompts.ambiguity_description``).
* **Significance** (Eq. 6-8): the drop matrix P[i, j] = A(i, j) over FoE rows i and visual keys j,
  and P̄[j] = mean_i P[i, j].
* **Stage 2** (fine, Eq. 9, 10, 2): the dropping map R = argmin_k(P̄), k = floor(beta N_v); the
  tokens in R are removed for the whole stage-2 forward, and the answer is read from Q_f on D'.

Public pieces (named after the paper's symbols):

    coarse_confidence(p_a, p_b)            C, Eq. 4
    drop_matrix(probs, foe_rows, keys)     P, Eq. 6
    significance(P)                        P̄, Eq. 8
    n_dropped(n_visual, beta)              k = floor(beta N_v), Eq. 9
    dropping_map(pbar, beta)               R = argmin_k(P̄), Eq. 9
    random_dropping_map(n_v, beta, rng)    Table 2 "Random" strategy (same k)
    refined_visual_set(n_visual, R)        V', Eq. 10 (kept indices)
    fine_labels(task, branch)              the option list of Q_PEC / Q_NEC / Q_ambi
    run_stage1(lm, samples, task, ...)     -> Stage1 (Eq. 1, 3, 4, 5-8)
    run_stage2(lm, samples, prompts, drop) -> (answers, logits [B, V], batch) (Eq. 10, 2)
    shared_prefix(batch1, batch2)          the stage-1 cache column up to which stage 2 starts the same
    reuse_inputs(batch1, cache, batch2, P) stage-2 inputs that continue stage 1's cropped KV cache
    SEPM                                   the registered method "sepm" (Algorithm 1)

Choices the paper leaves open (each made once, here):

1. **p in Eq. 3-4** is the whole-vocabulary softmax, not renormalised over A/B ("a probability
   distribution over the vocabulary, we find the indices corresponding to the letters A and B");
   so C is in [0, 1/4] (C = (p_A - p_B)^2 / 4). "The indices corresponding to A and B" are the
   model's verbalizer ids from ``lm.option_token_ids``: the letters for a letter-answering model (HF
   checkpoints), the option's label word ("positive"/"negative") for emolens-tiny, which answers by naming
   the option (``LoadedModel.verbalizer == "word"``, survey Eq. 25). An option spelled by several token ids
   (with and without a leading space) gets the sum of their probabilities (``answers.vocab_probs``). On
   emolens-tiny the coarse query's whole-vocabulary mass goes mostly to fine emotion words, so p_A + p_B is
   ~1e-3 and C ~1e-7: at the paper's alpha = 0.1 no sample is trusted (notebook 04 shows C's own scale). alpha >= 0.25 therefore sends every sample to the ambiguous branch.
   Ties (C == alpha) go to the ambiguous branch: the paper's test is ``if C > alpha``.
2. **Coarse answer Ê** = the letter with the larger logit among A and B (argmax of the option
   softmax; identical to comparing p_A and p_B).
3. **Eq. 5, "the attention map in the final layer"**: the last decoder layer's softmax
   probabilities, averaged over all query heads (the paper gives a single map per layer and does not
   say how heads are combined; the mean is what LLaVA-based token pruning codes use). Only the FoE
   rows are computed (``intervene.Capture``), against all keys, in float32.
4. **P is the raw attention** (Eq. 6 "P[i, j] = A(i, j)"): not renormalised over the visual keys.
5. **argmin_k ties** are broken by position (stable sort: the earlier visual token is dropped
   first). k = floor(beta N_v) is computed as ``floor(beta * N_v + 1e-9)`` so that products that are
   integers on paper (0.29 * 100) are not floored one too low by binary rounding. R is returned
   sorted by visual index.
6. **Dropping = removal** (Eq. 10): stage 2 runs under ``KeyMask(from_layer=0, keep)``: from the first
   decoder layer on no token attends a dropped visual token, which is exactly deleting it from the
   LLM input (tested in ``tests/test_intervene.py`` against physically deleting the tokens). The kept
   tokens keep their original position ids (RoPE); they are not re-indexed. Dropping acts on the
   LLM's visual tokens (after the projector), as in the paper: for vision towers that mix patches
   (ViTs) a dropped patch still shaped its neighbours' features; for emolens-tiny each visual token
   sees only its own patch.
7. **FP in stage 2**: with ``fp=True`` the FoE prefix is kept in Q_f as well (Fig. 2 shows the
   optimised prompt in both stages; Table 3's FP-only row improves accuracy, which needs the prefix
   in the query that is answered).
8. **fp=False**: no FoE prefix anywhere; there is no FoE span, so the significance rows are the
   whole query (span ``query``: every token of the query text), i.e. the query-related strategy.
   ``strategy="query"`` always uses the whole query's rows (Table 2's "relevance to the overall
   query": question, options, category lists and instruction, and the FoE prefix when present).
9. **cci=False**: no coarse stage: the answered query is the fine query over all labels (no ambiguity
   description, no confidence). If VTA is on with an attention strategy, the significance comes from
   an attention-only forward of that same fine query (Eq. 5 with Q_f in place of Q_c, since there is
   no Q_c); with ``strategy="random"`` or ``vta=False`` only one forward runs. The paper does not
   study VTA without CCI ("As VTA depends on other components, it was not studied alone").
10. **Neutral classes** (views with a neutral label, e.g. MER): Q_c stays binary and neutral is kept in
    both restricted option lists (the choice documented in ``emolens.prompts``). Options keep the
    task's label order.
11. **Prompts**: Q_c and Q_f use SEPM's printed wording ("Which of the following descriptions best
    represents the image?" -- "video" for video datasets, ``Task.subject``; "A. Positive B. Negative";
    the PEC / NEC option lists; ``prompts.sepm_query``). ``prompt_spans=True`` is the explicit "same
    prompt for every method" switch: Q_f becomes the shared WETR-span fine query (then ``sepm`` with
    cci, fp and vta off equals ``zero-shot(prompt_spans=true)``); Q_c keeps the paper's wording.
12. **Random strategy** (Table 2): k = floor(beta N_v) tokens drawn uniformly without replacement by
    ``numpy.random.default_rng(SeedSequence([seed, crc32(sample.uid)]))``: deterministic given the seed
    and independent of batch composition and order.

Sharing between the stages (``reuse_prefix``, default true; issue 13). Both stages read the same sample:
emolens-tiny's rows are ``<bos> <image>* <audio>* Subtitle : words <sep> <prompt>``, and Q_c and Q_f both
start with the FoE prefix when ``fp`` is on, so everything before the first token where the two queries
differ is a shared prefix. What each ablation can share:

* **CCI only / CCI + FP, no VTA drop** (``vta=false`` or ``beta=0``): stage 2's input starts exactly like
  stage 1's, and no token is dropped, so the prefix's keys and values are the same in both stages
  (causal attention: a token's KV depends only on the tokens before it). Stage 1 keeps its KV cache;
  stage 2 crops it to the shared prefix (:func:`shared_prefix`: media, subtitle, ``<sep>``, and the
  FoE words with FP) and runs only the rest of Q_f (:func:`reuse_inputs`). Left-padded batches: the
  stage-1 rows end with the same Q_c, so every row's prefix ends at one column ``P`` of the stage-1
  cache; the stage-2 suffixes (per-row Q_f of different lengths) are right-aligned after it, the pad
  columns between are masked, and explicit position ids keep every real token's relative distance
  (RoPE) as in the recomputed stage 2. Same for ``answer=generate`` (generate runs only the columns
  past the cache). Equal to recomputation within float rounding (``tests/test_sepm_reuse.py``: option
  probabilities within 1e-5, same labels and generated text).
* **VTA** (tokens dropped): the drop acts from decoder layer 0, so every token after the first dropped
  one changes in every layer above 0 and no KV beyond that point can be shared. Stage 2 instead removes
  the dropped tokens physically (``emolens.prune``: from layer 1 on the kept tokens only), rather than
  recomputing the full sequence under a mask. (The few tokens before the first dropped visual token --
  ``<bos>`` and the leading visual tokens -- could be shared too; not done: pruning's layer 0 runs the
  full prompt to number the cache.)
* **CCI off**: with VTA by attention, the attention-only stage-1 forward of Q_f is followed by the
  pruned stage 2; with ``strategy="random"`` or without VTA there is a single forward and nothing to share.
* **Fallbacks** (full recomputation, as with ``reuse_prefix=false``): a composed partner (``sepm+wetr``:
  its ops act on the prefix's tokens in stage 2), and HF families (:func:`reuse_supported`: their
  forwards derive mrope position ids / media merges from the whole input).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from .. import prompts as P
from ..answers import read_answers
from ..metrics import confidence_variance
from .base import Method, Param, Prediction, Task
from .common import forward_logits

STRATEGIES = ("foe", "query", "random")
BRANCHES = ("positive", "negative", "ambiguous", "all")
#: tolerance added before flooring beta * N_v (choice 5)
_FLOOR_EPS = 1e-9


# =========================================================================== the equations
def coarse_confidence(p_a, p_b):
    """SEPM Eq. (4): C = [(p_A - mu)^2 + (p_B - mu)^2] / 2, mu = (p_A + p_B) / 2.

    ``p_a``, ``p_b``: the two options' probabilities (their verbalizer ids: letters, or label words for a
    word-verbalizer model) under the whole-vocabulary softmax of Eq. (3)
    (``answers.Answer.vocab_probs``), not renormalised over the two options; C in [0, 1/4].
    Delegates to :func:`emolens.metrics.confidence_variance` (float for scalars, else array).
    """
    return confidence_variance(p_a, p_b)


def drop_matrix(probs, foe_rows, visual_keys) -> np.ndarray:
    """SEPM Eq. (6): the drop matrix P in R^{L_t x L_v}, P[i, j] = A(i, j), i over FoE tokens (T),
    j over visual tokens (V).

    Args:
        probs: the attention map A of Eq. (5): ``[Q, K]`` (one map) or ``[H, Q, K]`` (per head; heads
            are averaged first -- documented choice 3). Rows are query positions, columns keys.
        foe_rows: indices into the row axis of ``probs`` of the FoE tokens (L_t of them).
        visual_keys: indices into the key axis of the visual tokens, in visual order (L_v = N_v).

    Returns:
        float64 ``[L_t, L_v]``, the raw attention probabilities (not renormalised; choice 4).
    """
    a = probs.detach().float().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3:
        a = a.mean(0)
    if a.ndim != 2:
        raise ValueError(f"drop_matrix needs an attention map [Q, K] or [H, Q, K], got shape {a.shape}")
    rows = np.asarray(foe_rows, dtype=np.int64).reshape(-1)
    cols = np.asarray(visual_keys, dtype=np.int64).reshape(-1)
    if rows.size == 0 or cols.size == 0:
        raise ValueError(f"drop_matrix needs at least one text row and one visual key (got {rows.size} rows, "
                         f"{cols.size} visual keys); use a prompt with the FoE span and a sample with visual input")
    return a[np.ix_(rows, cols)]


def significance(P: np.ndarray) -> np.ndarray:
    """SEPM Eq. (8): P̄[j] = (1 / L_t) sum_i P[i, j] -- the mean over the FoE rows; ``[N_v]``."""
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 2 or P.shape[0] == 0:
        raise ValueError(f"significance needs a drop matrix [L_t, L_v] with L_t >= 1, got shape {P.shape}")
    return P.mean(0)


def _check_beta(beta: float) -> float:
    b = float(beta)
    if not (0.0 <= b < 1.0):
        raise ValueError(f"beta = {beta} is out of range; the dropping ratio must be in [0, 1)")
    return b


def n_dropped(n_visual: int, beta: float) -> int:
    """k = floor(beta N_v) of Eq. (9) (with a 1e-9 guard against binary rounding; choice 5)."""
    return int(math.floor(_check_beta(beta) * int(n_visual) + _FLOOR_EPS))


def dropping_map(pbar, beta: float) -> np.ndarray:
    """SEPM Eq. (9): R = argmin_k(P̄), k = floor(beta N_v): the visual indices (0..N_v-1) of the k
    least significant tokens, sorted by index. Ties: the earlier token first (stable sort)."""
    pbar = np.asarray(pbar, dtype=np.float64).reshape(-1)
    k = n_dropped(pbar.size, beta)
    order = np.argsort(pbar, kind="stable")
    return np.sort(order[:k]).astype(np.int64)


def random_dropping_map(n_visual: int, beta: float, rng: np.random.Generator) -> np.ndarray:
    """Table 2's "Random" strategy: the same k = floor(beta N_v) tokens, drawn uniformly without
    replacement from ``rng``; sorted visual indices."""
    k = n_dropped(n_visual, beta)
    return np.sort(rng.choice(int(n_visual), size=k, replace=False)).astype(np.int64)


def refined_visual_set(n_visual: int, R) -> np.ndarray:
    """SEPM Eq. (10): V' = {v_j | j not in R, j in 1..N_v}, as the kept visual indices (0-based,
    sorted)."""
    keep = np.ones(int(n_visual), dtype=bool)
    R = np.asarray(R, dtype=np.int64).reshape(-1)
    if R.size and (R.min() < 0 or R.max() >= n_visual):
        raise ValueError(f"dropping map indices span [{R.min()}, {R.max()}] but there are {n_visual} visual tokens")
    keep[R] = False
    return np.flatnonzero(keep).astype(np.int64)


def fine_labels(task: Task, branch: str) -> list:
    """The option list of Q_f for a branch: ``positive`` -> PEC, ``negative`` -> NEC (neutral kept in
    both, choice 10), ``ambiguous``/``all`` -> every label. Task label order is kept."""
    if branch in ("ambiguous", "all"):
        return list(task.labels)
    if branch not in ("positive", "negative"):
        raise ValueError(f"unknown SEPM branch {branch!r}; use one of {BRANCHES}")
    keep = set(task.valence_groups.get(branch, ())) | set(task.valence_groups.get("neutral", ()))
    labs = [l for l in task.labels if l in keep]
    if not labs:
        raise ValueError(f"valence group {branch!r} of the task is empty; SEPM needs positive and negative groups")
    return labs


def fine_prompt(task: Task, branch: str, *, fp: bool = True, prompt_spans: bool = False, wetr_spans: bool = False):
    """Q_f for one sample (Algorithm 1): Q_PEC / Q_NEC (confident branch), Q_ambi (all categories + the
    ambiguity description), or the fine query over all labels (``all``, CCI off), in SEPM's wording
    (``prompts.sepm_query``); ``prompt_spans=True``: the shared WETR-span fine query instead."""
    amb = P.ambiguity_description(task.valence_groups) if branch == "ambiguous" else None
    if prompt_spans:
        return P.fine_query(fine_labels(task, branch), foe=fp, contrastive=True, ambiguity=amb)
    return P.sepm_query(fine_labels(task, branch), foe=fp, subject=task.subject, ambiguity=amb, contrastive=wetr_spans)


# =========================================================================== the two stages
def _forward(lm, batch, plan=None, keep_cache: bool = False):
    """One forward: ``(answers, logits [B, V] float32 cpu, trace or None, KV cache or None)``;
    ``keep_cache``: the same forward with ``use_cache=True``, its cache returned (stage 1 for the reuse)."""
    if not keep_cache:
        logits, trace = forward_logits(lm, batch, plan)
        cache = None
    else:
        from contextlib import nullcontext

        from ..compat import output_cache
        from ..intervene import intervene

        with torch.no_grad(), (intervene(lm.model, batch.layouts, plan) if plan is not None else nullcontext()) as trace:
            out = lm.model(**batch.inputs, logits_to_keep=1, use_cache=True)
        logits, cache = out.logits[:, -1], output_cache(out)
    answers = read_answers(logits, batch.prompts, lm.option_token_ids)
    return answers, logits.detach().float().cpu(), trace, cache


# =========================================================================== prefix reuse
#: input names a reusing stage 2 understands (any other -- mrope position ids, image grids -- means the
#: model's forward derives something from the whole input, and stage 2 recomputes everything)
_REUSABLE_INPUTS = {"input_ids", "attention_mask", "pixel_values", "frame_index", "audio_values"}


def reuse_supported(lm, batch) -> bool:
    """Whether stage 2 can reuse stage 1's prefix KV cache on this model: plain 1-D RoPE positions numbered
    by column (the decoder's default when no ``position_ids`` are given) and media that enter only through
    their placeholder tokens. True for emolens-tiny; HF families fall back to recomputation."""
    return lm.family == "emolens-tiny" and set(batch.inputs) <= _REUSABLE_INPUTS


def shared_prefix(batch1, batch2) -> Optional[int]:
    """The column ``P`` of stage 1's (left-padded) batch up to which every row's stage-1 tokens are the
    start of its stage-2 tokens, or None when nothing can be shared.

    Row r's real tokens in stage 1 start at column ``off1_r``; ``lcp_r`` is the longest common prefix of
    its unpadded stage-1 and stage-2 ids (the whole ``<bos> <image>* <audio>* Subtitle : words <sep>`` plus
    the FoE prefix when both queries start with it). ``P = min_r(off1_r + lcp_r)``, capped so that every
    row keeps at least one stage-2 token to run (its answer position). Columns ``< P`` of the stage-1 KV
    cache are then exactly the KV of each row's first ``P - off1_r`` stage-2 tokens.
    """
    ids1, m1 = batch1.inputs["input_ids"], batch1.inputs["attention_mask"].bool()
    ids2, m2 = batch2.inputs["input_ids"], batch2.inputs["attention_mask"].bool()
    if ids1.shape[0] != ids2.shape[0]:
        raise ValueError(f"stage 1 has {ids1.shape[0]} rows but stage 2 has {ids2.shape[0]}; encode the same samples")
    L1 = ids1.shape[1]
    P = L1
    for r in range(ids1.shape[0]):
        u1, u2 = ids1[r][m1[r]], ids2[r][m2[r]]
        n = min(u1.numel(), u2.numel())
        diff = (u1[:n] != u2[:n]).nonzero()
        lcp = int(diff[0, 0]) if diff.numel() else n
        lcp = min(lcp, u2.numel() - 1)
        P = min(P, (L1 - u1.numel()) + lcp)
    return P if P > 0 else None


def reuse_inputs(batch1, cache, batch2, P: int) -> dict:
    """Stage-2 model inputs that continue stage 1's KV cache cropped to its first ``P`` columns.

    Row r keeps its first ``q_r = P - off1_r`` stage-2 tokens in the cache; the rest of its stage-2 ids
    (the suffix, length ``f_r``) are right-aligned in ``S = max_r f_r`` new columns (pad columns between the
    prefix and a shorter suffix are masked). Position ids: stage 1 numbered columns ``0..L1-1`` (no explicit
    ids), so the prefix's last token sits at ``P - 1``; suffix token j gets ``P + j``: every row's real
    tokens keep the same *relative* distances as in the recomputed stage 2, which is all RoPE sees.

    Returns ``input_ids``/``attention_mask``/``position_ids`` of width ``P + S`` (what ``generate`` takes
    with a cache: it runs only the columns past the cache) and the cropped cache under ``compat.cache_kw()``.
    """
    from ..compat import cache_kw

    ids1, m1 = batch1.inputs["input_ids"], batch1.inputs["attention_mask"]
    ids2, m2 = batch2.inputs["input_ids"], batch2.inputs["attention_mask"].bool()
    B, L1 = ids1.shape
    sufs = []
    for r in range(B):
        q = P - (L1 - int(m1[r].sum()))
        sufs.append(ids2[r][m2[r]][q:])
    S = max(int(t.numel()) for t in sufs)
    pad = int(ids2[~m2].view(-1)[0]) if bool((~m2).any()) else 0
    sid = torch.full((B, S), pad, dtype=ids1.dtype, device=ids1.device)
    sm = torch.zeros((B, S), dtype=m1.dtype, device=m1.device)
    spos = torch.full((B, S), P, dtype=torch.long, device=ids1.device)
    for r, t in enumerate(sufs):
        f = int(t.numel())
        sid[r, S - f:] = t
        sm[r, S - f:] = 1
        spos[r, S - f:] = torch.arange(P, P + f, device=ids1.device)
    if L1 > P:
        cache.crop(P - L1)  # a negative argument removes that many columns (every transformers 5.x)
    pos = torch.cat([torch.arange(P, device=ids1.device)[None].expand(B, P), spos], 1)
    return {"input_ids": torch.cat([ids1[:, :P], sid], 1), "attention_mask": torch.cat([m1[:, :P], sm], 1),
            "position_ids": pos, cache_kw(): cache}


def _reuse_forward(lm, inputs: dict, P: int):
    """Logits at the last column of the stage-2 suffix, the prefix read from the cache: ``[B, V]``."""
    kw = dict(inputs)
    kw["input_ids"], kw["position_ids"] = kw["input_ids"][:, P:], kw["position_ids"][:, P:]
    with torch.no_grad():
        out = lm.model(**kw, logits_to_keep=1, use_cache=True)
    return out.logits[:, -1]


@dataclass
class Stage1:
    """What stage 1 produced, per sample.

    Attributes:
        query: ``"coarse"`` (Q_c), ``"fine"`` (attention-only pass of Q_f, CCI off) or None (no forward).
        answers: the stage-1 :class:`~emolens.answers.Answer` s (None without a forward).
        logits: ``[B, V]`` float32 next-token logits at the answer position (Eq. 3's z), or None.
        confidence: ``[B]`` C of Eq. (4), or None without a coarse stage.
        p_a, p_b: ``[B]`` whole-vocabulary probabilities of options A / B (their verbalizer ids; Eq. 3), or None.
        coarse: Ê per sample (``"positive"``/``"negative"``), or None.
        branch: ``"positive"`` / ``"negative"`` / ``"ambiguous"`` (CCI) or ``"all"`` (CCI off).
        rows: the span whose attention rows gave the significance (``"foe"``/``"question"``) or None.
        significance: per sample P̄ ``[N_v]`` (Eq. 8), or None when not computed.
        batch: the stage-1 :class:`~emolens.models.base.Batch` (None without a forward).
        cache: the stage-1 forward's KV cache (``transformers.DynamicCache``), kept only when stage 2 will
            reuse its shared prefix (``keep_cache``; released by ``SEPM.predict`` right after stage 2).
    """

    query: Optional[str]
    branch: list
    answers: Optional[list] = None
    logits: Optional[torch.Tensor] = None
    confidence: Optional[np.ndarray] = None
    p_a: Optional[np.ndarray] = None
    p_b: Optional[np.ndarray] = None
    coarse: Optional[list] = None
    rows: Optional[str] = None
    significance: Optional[list] = None
    batch: object = None
    cache: object = None


def significance_rows(strategy: str, fp: bool) -> Optional[str]:
    """The span whose final-layer attention rows give P (choice 8): ``foe`` for the FoE strategy with
    the FoE prompt on, ``query`` (the whole query) for the query strategy or without FP, None for
    ``random``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown SEPM strategy {strategy!r}; use one of {STRATEGIES}")
    if strategy == "random":
        return None
    return "foe" if (strategy == "foe" and fp) else "query"


def run_stage1(lm, samples: Sequence, task: Task, *, alpha: float = 0.1, cci: bool = True, fp: bool = True,
               rows: Optional[str] = "foe", prompt_spans: bool = False, keep_cache: bool = False) -> Stage1:
    """Stage 1 of Algorithm 1 in one forward over the whole batch.

    With ``cci``: Q_c (with the FoE prefix when ``fp``) -> Ê (Eq. 1), p_A, p_B (Eq. 3), C (Eq. 4),
    branch (C > alpha: Ê's valence, else ``ambiguous``). When ``rows`` is a span name, the same forward
    captures the final layer's attention rows of that span (Eq. 5) and gives P̄ per sample (Eq. 6, 8).
    Without ``cci`` and with ``rows``: an attention-only forward of the plain fine query (choice 9);
    without both: no forward at all. ``keep_cache``: the same forward also keeps its KV cache
    (``Stage1.cache``) for :func:`run_stage2` to reuse the shared prefix.
    """
    from ..intervene import Capture, Plan

    B = len(samples)
    if not cci and rows is None:
        return Stage1(query=None, branch=["all"] * B)
    if cci:
        prompts = [P.coarse_query(task.valence_groups, foe=fp, subject=task.subject) for _ in samples]
    else:
        prompts = [fine_prompt(task, "all", fp=fp, prompt_spans=prompt_spans) for _ in samples]
    batch = lm.encode(samples, prompts)
    last = lm.num_layers - 1
    plan = Plan([Capture(layers=[last], rows=rows, name="sig")]) if rows is not None else None
    answers, logits, trace, cache = _forward(lm, batch, plan, keep_cache=keep_cache)
    out = Stage1(query="coarse" if cci else "fine", branch=["all"] * B, answers=answers, logits=logits,
                 rows=rows, batch=batch, cache=cache)
    if rows is not None:
        cap = trace.get("sig", last)
        sig = []
        for b, lay in enumerate(batch.layouts):
            A = cap.sample(b).mean(0)  # [r_b, K], heads averaged (choice 3)
            Pm = drop_matrix(A, np.arange(A.shape[0]), lay.visual)
            sig.append(significance(Pm))
        out.significance = sig
    if cci:
        p_a = np.array([a.vocab_probs["A"] for a in answers], dtype=np.float64)
        p_b = np.array([a.vocab_probs["B"] for a in answers], dtype=np.float64)
        conf = np.atleast_1d(coarse_confidence(p_a, p_b))
        coarse = [a.label for a in answers]  # option labels "positive" / "negative"
        out.p_a, out.p_b, out.confidence, out.coarse = p_a, p_b, conf, coarse
        out.branch = [c if float(C) > alpha else "ambiguous" for c, C in zip(coarse, conf)]
    return out


def keep_matrix(layouts: Sequence, drop: Sequence) -> np.ndarray:
    """``[B, L]`` bool key-keep vector for a batch: False at the dropped visual tokens of each row
    (``drop[b]`` are indices into row b's visual tokens, 0..N_v-1; mapped through the layout, so the
    stage-2 padding is accounted for)."""
    keep = np.ones((len(layouts), layouts[0].seq_len), dtype=bool)
    for b, (lay, d) in enumerate(zip(layouts, drop)):
        d = np.asarray(d if d is not None else [], dtype=np.int64).reshape(-1)
        if d.size:
            if d.min() < 0 or d.max() >= lay.visual.size:
                raise ValueError(f"dropping map of row {b} spans [{d.min()}, {d.max()}] but the row has "
                                 f"{lay.visual.size} visual tokens")
            keep[b, lay.visual[d]] = False
    return keep


def run_stage2(lm, samples: Sequence, prompts: Sequence, drop: Optional[Sequence] = None, *, batch=None,
               extra_ops: Sequence = (), params: Optional[dict] = None, with_trace: bool = False,
               reuse: Optional[Stage1] = None):
    """Stage 2 of Algorithm 1: Q_f on D' (Eq. 10, 2), one forward over the whole batch (per-sample
    prompts may differ; the batch is encoded once, left-padded).

    Args:
        drop: per sample the dropping map R (visual indices 0..N_v-1), or None / empty for no drop.
            Dropped tokens are removed from decoder layer 0 on (``KeyMask``; choice 6).
        batch: the already encoded ``lm.encode(samples, prompts)`` (to encode once), or None.
        extra_ops: plan ops of a composed method, run in the same plan after the drop (``compose``).
        params: the method's params for the answer mode (``answer="generate"``: greedy generation).
        with_trace: also return the trace and the generated texts.
        reuse: a :class:`Stage1` with its KV cache (``keep_cache``): when stage 2 has no plan (no drop, no
            composed ops) and shares a prefix with stage 1 (:func:`shared_prefix`), only the columns past
            it are run (:func:`reuse_inputs`); the cache is consumed. Otherwise ignored.

    Returns:
        ``(answers, logits [B, V] float32 cpu or None, batch)`` (+ ``(trace, texts)`` with ``with_trace``).
    """
    from ..intervene import KeyMask, Plan
    from .common import answer_batch

    batch = batch if batch is not None else lm.encode(samples, prompts)
    ops = []
    if drop is not None and any(np.asarray(d if d is not None else []).size for d in drop):
        if len(drop) != len(samples):
            raise ValueError(f"got {len(drop)} dropping maps for {len(samples)} samples; give one per sample")
        ops.append(KeyMask(from_layer=0, keep=keep_matrix(batch.layouts, drop)))
    ops += list(extra_ops)
    if ops and params is not None and params.get("prune"):
        from ..prune import Prune

        ops.append(Prune())
    plan = Plan(ops) if ops else None
    gen = params is not None and params.get("answer", "logits") == "generate"
    P = None
    if plan is None and reuse is not None and reuse.cache is not None and reuse_supported(lm, batch):
        P = shared_prefix(reuse.batch, batch)
    if P is not None:
        from ..answers import generate_answers
        from ..models.base import Batch

        inputs = reuse_inputs(reuse.batch, reuse.cache, batch, P)
        reuse.cache = None
        trace = None
        if gen:
            answers, texts = generate_answers(lm, Batch(inputs=inputs, layouts=batch.layouts, prompts=batch.prompts),
                                              params.get("max_new_tokens", 64))
            logits = None
        else:
            logits = _reuse_forward(lm, inputs, P)
            answers = read_answers(logits, batch.prompts, lm.option_token_ids)
            logits, texts = logits.detach().float().cpu(), None
    elif gen:
        answers, trace, texts = answer_batch(lm, batch, plan, params)
        logits = None
    else:
        answers, logits, trace, _ = _forward(lm, batch, plan)
        texts = None
    if with_trace:
        return answers, logits, batch, trace, texts
    return answers, logits, batch


# =========================================================================== the method
class SEPM(Method):
    """SEPM (seed 001), Algorithm 1: confidence-guided coarse-to-fine inference (CCI) with the
    Focus-on-Emotion prompt (FP) and FoE-guided visual token dropping (VTA). Two forwards per batch.

    ``Prediction.extra``: ``confidence`` (C, Eq. 4), ``p_A``/``p_B`` (Eq. 3), ``coarse`` (Ê),
    ``branch``, ``options`` (Q_f's labels), ``dropped`` (R, visual indices), ``k``, ``n_visual``,
    ``significance_rows``, ``significance_query``, and ``_cue_visual`` (ground-truth cue tokens, when the
    data has them; ``evaluate`` scores ``selected_visual`` = the kept tokens V' against it and removes
    it from the output). See the module docstring for every choice the paper leaves open.
    """

    name = "sepm"
    PARAMS = {
        "alpha": Param(0.1, float, low=0.0, doc="confidence threshold on C (Eq. 4; C is in [0, 0.25])"),
        "beta": Param(0.2, float, low=0.0, high=1.0, open_high=True, doc="dropping ratio: k = floor(beta N_v) (Eq. 9)"),
        "cci": Param(True, bool, doc="confidence-guided coarse-to-fine inference (off: fine query over all labels)"),
        "fp": Param(True, bool, doc="Focus-on-Emotion prompt prefix in both stages (off: significance from the question span)"),
        "vta": Param(True, bool, doc="visual token dropping in stage 2"),
        "strategy": Param("foe", str, choices=STRATEGIES, doc="dropping strategy (Table 2): foe | query | random"),
        "seed": Param(0, int, low=0, doc="seed of the random strategy"),
        "prompt_spans": Param(False, bool, doc="the shared prompt: Q_f = the WETR-span fine query (default: SEPM's wording)"),
        "prune": Param(False, bool, doc="VTA's dropped tokens removed physically from layer 1 on (emolens.prune)"),
        "reuse_prefix": Param(True, bool, doc="stage 2 without recomputation: reuse stage 1's KV cache of the shared "
                                              "prefix (no VTA drop) or prune VTA's dropped tokens physically; "
                                              "false: stage 2 recomputes everything under a key mask"),
    }

    def validate(self) -> None:
        a = self.params["alpha"]
        if not math.isfinite(a):
            raise ValueError(f"sepm: alpha = {a} is out of range; allowed [0.0, inf)")
        if not math.isfinite(self.params["beta"]):
            raise ValueError(f"sepm: beta = {self.params['beta']} is out of range; allowed [0.0, 1.0)")

    # -- the pieces, usable one by one (tests and notebooks) ------------------------------------
    @property
    def rows(self) -> Optional[str]:
        """The significance span (None when no attention is needed)."""
        p = self.params
        if not p["vta"] or p["beta"] == 0.0:
            return None
        return significance_rows(p["strategy"], p["fp"])

    def stage1(self, lm, samples: Sequence, task: Task, keep_cache: bool = False) -> Stage1:
        p = self.params
        return run_stage1(lm, samples, task, alpha=p["alpha"], cci=p["cci"], fp=p["fp"], rows=self.rows,
                          prompt_spans=p["prompt_spans"], keep_cache=keep_cache)

    def reuses(self, partner=None) -> str:
        """What stage 2 reuses under ``reuse_prefix`` (see "Sharing between the stages"): ``"prefix"`` (stage
        1's KV cache of the shared prefix: no VTA drop), ``"prune"`` (VTA drops tokens: they are removed
        physically instead of masked), or ``"none"`` (``reuse_prefix=false`` or a composed partner)."""
        p = self.params
        if not p["reuse_prefix"] or partner is not None:
            return "none"
        return "prune" if (p["vta"] and p["beta"] > 0) else "prefix"

    def stage2_prompts(self, task: Task, branches: Sequence[str], wetr_spans: bool = False) -> list:
        p = self.params
        return [fine_prompt(task, br, fp=p["fp"], prompt_spans=p["prompt_spans"], wetr_spans=wetr_spans)
                for br in branches]

    def stage2(self, lm, samples: Sequence, task: Task, branches: Sequence[str], drop: Optional[Sequence] = None):
        """Stage 2 alone, with a given dropping map (e.g. on perturbed samples): ``(answers, logits, batch)``."""
        return run_stage2(lm, samples, self.stage2_prompts(task, branches), drop)

    def dropping(self, samples: Sequence, s1: Stage1, n_visual: Sequence[int]) -> list:
        """The dropping map R per sample (Eq. 9; or the random strategy; empty when VTA is off)."""
        p = self.params
        if not p["vta"]:
            return [np.zeros(0, dtype=np.int64) for _ in samples]
        if p["strategy"] == "random":
            out = []
            for s, nv in zip(samples, n_visual):
                rng = np.random.default_rng(np.random.SeedSequence([p["seed"], zlib.crc32(str(s.uid).encode())]))
                out.append(random_dropping_map(nv, p["beta"], rng))
            return out
        if s1.significance is None:  # beta == 0: nothing to drop
            return [np.zeros(0, dtype=np.int64) for _ in samples]
        return [dropping_map(pb, p["beta"]) for pb in s1.significance]

    def predict(self, lm, samples, task, partner=None):
        """Algorithm 1. ``partner``: a composed method whose plan runs in stage 2 together with the drop
        (``methods.compose``): it sees SEPM's kept set as already admitted, never re-admits a dropped token,
        and its per-sample record lands in ``extra[partner.name]``."""
        p = self.params
        mode = self.reuses(partner)
        s1 = self.stage1(lm, samples, task, keep_cache=(mode == "prefix"))
        prompts = self.stage2_prompts(task, s1.branch, wetr_spans=bool(partner is not None and partner.wants_spans))
        batch = lm.encode(samples, prompts)  # the whole batch, once per stage
        # N_v per sample: from the stage-1 layouts when there was a forward, else from stage 2's
        ref = s1.batch if s1.batch is not None else batch
        n_visual = [int(l.visual.size) for l in ref.layouts]
        drop = self.dropping(samples, s1, n_visual)
        extra_ops = partner.ops_for(lm, batch, samples, admitted=keep_matrix(batch.layouts, drop)) if partner else ()
        params = dict(p, prune=p["prune"] or (mode == "prune"))
        answers, _, batch, trace, texts = run_stage2(lm, samples, prompts, drop, batch=batch, extra_ops=extra_ops,
                                                     params=params, with_trace=True, reuse=s1)
        s1.cache = None  # released whether or not it was used
        partner_preds = partner.predictions_from(answers, trace, batch, texts) if partner else None
        preds = []
        for b, a in enumerate(answers):
            lay = batch.layouts[b]
            nv = int(lay.visual.size)
            if s1.batch is not None and n_visual[b] != nv:
                raise RuntimeError(f"sample {b}: {n_visual[b]} visual tokens in stage 1 but {nv} in stage 2")
            kept = np.ones(nv, dtype=bool)
            kept[drop[b]] = False
            extra = {
                "branch": s1.branch[b],
                "options": list(batch.prompts[b].options.values()),
                "dropped": [int(i) for i in drop[b]],
                "k": int(len(drop[b])),
                "n_visual": nv,
                "significance_rows": s1.rows if p["strategy"] != "random" else None,
                "significance_query": s1.query if s1.significance is not None else None,
                "confidence": None, "p_A": None, "p_B": None, "coarse": None,
            }
            if s1.confidence is not None:
                extra.update(confidence=float(s1.confidence[b]), p_A=float(s1.p_a[b]), p_B=float(s1.p_b[b]),
                             coarse=s1.coarse[b])
            if lay.cue_visual is not None:
                extra["_cue_visual"] = [bool(x) for x in lay.cue_visual]
            sel = [bool(x) for x in kept]
            if partner_preds is not None:
                pp = partner_preds[b]
                extra[partner.name] = {k: v for k, v in pp.extra.items() if not k.startswith("_")}
                if pp.selected_visual is not None:
                    sel = [x and y for x, y in zip(sel, pp.selected_visual)]
            preds.append(Prediction(label=a.label, letter=a.letter, option_probs=a.option_probs,
                                    selected_visual=sel, extra=extra, generated=texts[b] if texts else None))
        return preds


__all__ = ["SEPM", "Stage1", "coarse_confidence", "drop_matrix", "significance", "n_dropped", "dropping_map",
           "random_dropping_map", "refined_visual_set", "fine_labels", "fine_prompt", "significance_rows",
           "run_stage1", "run_stage2", "keep_matrix", "shared_prefix", "reuse_inputs", "reuse_supported",
           "STRATEGIES", "BRANCHES"]
