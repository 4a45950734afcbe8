"""NTS: Noise-suppressed Token Selection (WETR, seed 000, Sec. 3.3, Eq. 3-7), and the selection
baselines of WETR Table 2 / Table 7 (``random-select``, ``query-select``, ``qpos-select``).

NTS sets the selection factor m_i of the token-usage weight w_i = m_i gamma_i (Eq. 2). At a trigger
layer l it reads the model's own attention, scores every visual and subtitle-content token, keeps the
top fraction of each modality, and removes the rest from every later layer::

    a_{I->i}   = mean over heads and over the span's rows of A^(l)[q, i]        (Eq. 4 input)
    d_i        = Norm(a_{I_pos->i} - a_{I_neg->i})                             (Eq. 4)
    s_i        = d_i + Norm(mean_{q in I_con} A_{q,i})   for i in I_v          (Eq. 5)
               = d_i + Norm(mean_{q in I_v}   A_{q,i})   for i in I_con
    K_v        = TopP({s_i}_{i in I_v}, p_v),  K_con = TopP({s_j}_{j in I_con}, p_t)   (Eq. 6)
    m_i        = 1[i in K_v u K_con u I_inst]                                   (Eq. 7)

One forward does it all (``emolens.intervene``): ``Capture`` ops record the attention rows of the
Q_pos / Q_neg spans (and of the visual and content rows for Eq. 5's cross-modal term) at layer l;
an ``AfterLayer`` callback at layer l computes s_i, picks K and calls ``ctx.mask_keys(m, from_layer=l+1)``:
from layer l+1 on no token attends a dropped token (exactly "removing" it for every other token,
see ``intervene.py``). Layers <= l are untouched; the answer is read from the next-token logits.

Choices the paper leaves open (each one is a documented default; most are parameters)
-----------------------------------------------------------------------------------
* **Head aggregation** ("head-aggregated attention A^(l)"): the mean over the layer's query heads.
  a_{I->i} is the mean over heads and over the span's query rows (the "average attention mass from
  span I to token i").
* **Norm** (``norm``): ``"minmax"`` (default) rescales a vector to [0, 1] over *the modality's
  candidate tokens* (all visual tokens, resp. all content tokens, still admitted at this layer) --
  the same set TopP ranks within; ``"zscore"`` standardises over that set; ``"none"`` is the
  identity. A constant vector (no contrast: e.g. a single candidate, or the identically-zero term
  below) maps to all zeros under minmax and zscore, so it adds nothing to s_i.
* **The cross-modal term for content tokens is identically zero in a causal decoder** whose
  sequence puts the visual tokens before the subtitle (every model here, and WETR's backbones):
  a visual row q cannot attend a later content key, so A_{q,i} = 0 exactly for i in I_con, and the
  second case of Eq. 5 is Norm(0) = 0. It is computed honestly (from the captured visual rows, not
  assumed) and reported in ``Prediction.extra["nts"][...]["cross_content_max"]``; it would be
  non-zero only if the modalities interleaved. The visual case (content rows attending visual keys)
  is a real term. ``cross_modal=False`` drops both.
* **TopP rounding** (Eq. 6): keep ``max(1, ceil(p * n))`` tokens of a modality with n tokens
  (``ceil(p*n - 1e-9)``: the epsilon stops float artefacts such as 0.07 * 100 = 7.000000000000001
  from adding a token). With the paper's p_v = 0.03 and 32 visual tokens (world v1) this keeps **1** visual
  token (the faithful consequence of the paper's ratio on a small image; we report it rather than
  change the default). Ties break by position (earlier token first). A modality with no tokens
  keeps none.
* **Which tokens are candidates** (Eq. 7): only visual (I_v) and subtitle-content (I_con) tokens are
  ever dropped. I_inst (every template / prompt token, BOS included) is always kept, as the paper
  says. **Audio tokens are always kept**: Eq. 7 has no audio term (WETR's backbones take video and
  text); literally m_i = 0 for audio would delete a whole modality, which NTS's per-modality top-p
  is designed to prevent (and top-p of a 1-token modality keeps that token anyway). Padding is
  untouched (already masked).
* **Trigger layer** (``layer``): ``-1`` = auto = ``round(n_layers * 9 / 36)`` (the paper's first
  non-zero trigger layer, 9 of InternVL3.5-8B's 36, scaled), i.e. **layer 2** of the embedded
  8-layer model. It must be < n_layers - 1 (the mask acts on later layers).
* **Query rows of the Table 2 strategies** (``scoring``): ``contrastive`` = Eq. 4 (Q_pos - Q_neg);
  ``qpos`` = Norm(a_{I_pos->i}) (Q_pos alone, Table 2/7); ``query`` = Norm(a_{I_q->i}) with I_q the
  task **question span** ("Which emotion does the person show?"; not the Q_pos/Q_neg spans, not the
  option list), the plain query-relevance score of text-guided pruning; ``random`` = i.i.d.
  uniform scores (seeded by ``seed`` and the sample uid, so independent of batching), without the
  cross-modal term. The attention-based strategies keep Eq. 5's cross-modal term (with
  ``cross_modal=True``) so that Table 2's variants "differ only in the scoring function" of d_i.
* **Keep-set sizes under repeated selection** (WETR's trigger layers, ``wetr.py``): the sizes are
  fractions of the *original* modality size (ceil(p * |I_v|), ceil(p * |I_con|)), chosen among the
  tokens still admitted; dropped tokens never return (m_i composes by AND).
"""
from __future__ import annotations

import math
import zlib
from typing import Optional, Sequence

import numpy as np
import torch

from ..intervene import AfterLayer, Capture, Plan
from ..prune import Prune
from ..metrics import swap_selection_noise
from .base import Method, Param, Prediction
from .common import answer_batch, fine_prompts

NORMS = ("minmax", "zscore", "none")
SCORINGS = ("contrastive", "qpos", "query", "random")
#: the prompt span whose rows score tokens under ``scoring="query"`` (WETR Table 2 "Query-related")
QUERY_SPAN = "question"
#: spans each scoring strategy reads
SPANS = {"contrastive": ("q_pos", "q_neg"), "qpos": ("q_pos",), "query": (QUERY_SPAN,), "random": ()}
#: the paper's first non-zero trigger layer as a fraction of depth (n_r = 9 of 36 layers)
TRIGGER_FRACTION = 9 / 36
_FLAT = 1e-12


# =========================================================================== the paper's symbols
def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy().astype(np.float64)
    return np.asarray(x, dtype=np.float64)


#: how the cross-modal capture (every visual and content row against all keys) is stored: ``"heads"``
#: reduces over heads inside the attention function, in chunks (``Capture(reduce="heads")``:
#: ``[B, R, K]``, H times less memory: ~8 MB instead of ~0.25 GB per trigger layer on LLaVA-7B at batch
#: 4); ``None`` keeps the full ``[B, H, R, K]`` capture (the "before" of ``emolens bench``). The scores
#: are the same either way (Eq. 5 averages over heads); rows are not reduced there because the rows
#: averaged (the admitted candidates of the other modality) are decided at the trigger layer itself.
CROSS_CAPTURE_REDUCE = "heads"


def normalize_scores(x, kind: str = "minmax") -> np.ndarray:
    """WETR's ``Norm`` (Eq. 4, 5, and STR's gate): a 1-d vector over one modality's candidate tokens.

    ``minmax``: (x - min) / (max - min) in [0, 1]; ``zscore``: (x - mean) / std; ``none``: identity.
    A constant vector (max - min <= 1e-12, or std <= 1e-12) maps to zeros: it carries no ranking
    information and adds nothing to s_i. Empty in, empty out.
    """
    if kind not in NORMS:
        raise ValueError(f"norm must be one of {list(NORMS)}, got {kind!r}")
    v = _np(x).reshape(-1)
    if v.size == 0 or kind == "none":
        return v.copy()
    if kind == "minmax":
        lo, hi = v.min(), v.max()
        return np.zeros_like(v) if hi - lo <= _FLAT else (v - lo) / (hi - lo)
    sd = v.std()
    return np.zeros_like(v) if sd <= _FLAT else (v - v.mean()) / sd


def span_attention(probs, row_valid=None) -> np.ndarray:
    """a_{I->i} (the input of Eq. 4): average attention mass from the rows of span I to every key.

    Args:
        probs: ``[H, R, K]`` softmax probabilities of the span's R query rows (one sample, e.g.
            ``AttnCapture.sample(b)``), or ``[B, H, R, K]`` with ``row_valid [B, R]``.
        row_valid: which rows are real (batched form); default all.
    Returns:
        ``[K]`` (or ``[B, K]``) float64: the mean over heads (WETR's head aggregation) and over the
        span's valid rows. No rows -> zeros.
    """
    p = probs if isinstance(probs, torch.Tensor) else torch.as_tensor(np.asarray(probs, dtype=np.float64))
    p = p.detach().double()
    if p.dim() == 3:
        if p.shape[1] == 0:
            return np.zeros(p.shape[-1])
        return p.mean(dim=(0, 1)).cpu().numpy()
    if p.dim() != 4:
        raise ValueError(f"probs must be [H, R, K] or [B, H, R, K], got shape {tuple(p.shape)}")
    w = torch.ones(p.shape[0], p.shape[2], dtype=p.dtype, device=p.device) if row_valid is None \
        else torch.as_tensor(row_valid, device=p.device).to(p.dtype)
    s = (p.mean(1) * w[:, :, None]).sum(1) / w.sum(1).clamp(min=1)[:, None]
    return s.cpu().numpy()


def contrastive_utility(a_pos, a_neg, norm: str = "minmax") -> np.ndarray:
    """d_i = Norm(a_{I_pos->i} - a_{I_neg->i}) (WETR Eq. 4), over one modality's candidate tokens.

    Args:
        a_pos, a_neg: ``[n]`` span attention (:func:`span_attention`) restricted to the candidates.
    """
    a, b = _np(a_pos).reshape(-1), _np(a_neg).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"a_pos and a_neg differ in length: {a.size} vs {b.size}")
    return normalize_scores(a - b, norm)


def cross_modal_support(probs_other, keys, norm: str = "minmax", raw: bool = False) -> np.ndarray:
    """The second term of WETR Eq. (5): Norm((1/|I_o|) sum_{q in I_o} A_{q,i}) for the tokens i of one
    modality, with I_o the *other* modality's tokens as query rows (I_con for visual i, I_v for
    content i), head-averaged.

    In a causal decoder with the visual tokens before the subtitle, the content case (visual rows
    -> content keys) is identically 0 (the keys are in the rows' future); it is computed, not
    assumed, and Norm(0) = 0.

    Args:
        probs_other: ``[H, R, K]`` probabilities of the other modality's R rows (R = 0 -> zeros).
        keys: ``[n]`` key positions of this modality's candidate tokens.
        raw: return the un-normalised mean attention instead.
    """
    k = np.asarray(keys, dtype=np.int64).reshape(-1)
    if isinstance(probs_other, torch.Tensor):
        rows = probs_other.shape[1]
    else:
        rows = np.asarray(probs_other).shape[1]
    a = np.zeros(k.size) if rows == 0 else span_attention(probs_other)[k]
    return a if raw else normalize_scores(a, norm)


def selection_score(d, support=None) -> np.ndarray:
    """s_i = d_i + (cross-modal support) (WETR Eq. 5); ``support=None`` -> s_i = d_i."""
    s = _np(d).reshape(-1)
    if support is None:
        return s.copy()
    c = _np(support).reshape(-1)
    if c.shape != s.shape:
        raise ValueError(f"d and support differ in length: {s.size} vs {c.size}")
    return s + c


def _check_p(p, name: str = "p") -> float:
    try:
        v = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1], got {p!r}") from None
    if not 0.0 < v <= 1.0:
        raise ValueError(f"{name} = {p} is out of range; allowed (0, 1]")
    return v


def keep_count(n: int, p: float, n_ref: Optional[int] = None) -> int:
    """How many of n candidates TopP keeps: ``max(1, ceil(p * n_ref - 1e-9))`` capped at n (0 when
    n = 0). ``n_ref`` (default n) is the size the ratio refers to: WETR's repeated selection uses the
    original modality size."""
    _check_p(p)
    if n <= 0:
        return 0
    ref = n if n_ref is None else int(n_ref)
    return min(n, max(1, math.ceil(p * ref - 1e-9)))


def top_p(scores, p: float, n_ref: Optional[int] = None) -> np.ndarray:
    """TopP(scores, p) of WETR Eq. (6): indices (ascending) of the :func:`keep_count` highest scores.

    Rounding: ``max(1, ceil(p * n))`` (so p_v = 0.03 of 32 visual tokens keeps 1, of the default world's 128 keeps 4). Ties: the
    earlier index wins (stable sort). ``p`` must be in (0, 1].
    """
    _check_p(p)
    s = _np(scores).reshape(-1)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    k = keep_count(s.size, p, n_ref)
    return np.sort(np.argsort(-s, kind="stable")[:k])


def selection_mask(layout, kept_visual, kept_content, admitted=None) -> np.ndarray:
    """m_i of WETR Eq. (7) over one padded row: ``[seq_len]`` bool.

    K = K_v u K_con u I_inst. Every position that is not a visual or content token (instruction,
    audio -- always kept, see the module docstring --, padding) is True; a visual / content token
    is True iff it is in ``kept_visual`` / ``kept_content`` (absolute positions). ``admitted``
    (``[seq_len]`` bool) ANDs an earlier trigger's mask in (dropped tokens never return).
    """
    keep = np.ones(layout.seq_len, dtype=bool)
    keep[layout.visual] = False
    keep[layout.content] = False
    keep[np.asarray(kept_visual, dtype=np.int64)] = True
    keep[np.asarray(kept_content, dtype=np.int64)] = True
    for name, pos in (("kept_visual", kept_visual), ("kept_content", kept_content)):
        group = layout.visual if name == "kept_visual" else layout.content
        if not np.isin(np.asarray(pos, dtype=np.int64), group).all():
            raise ValueError(f"{name} holds positions outside the layout's "
                             f"{'visual' if name == 'kept_visual' else 'content'} tokens")
    if admitted is not None:
        keep &= np.asarray(admitted, dtype=bool)
    return keep


def check_spans(layouts, names: Sequence[str]) -> None:
    """Raise the layout's one-line span error when a prompt lacks a span the scoring needs."""
    for lay in layouts:
        for n in names:
            lay.span(n)


def _rng(seed: int, uid, *extra) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(str(uid).encode()), *[int(e) for e in extra]])


def _gamma_stats(gamma: np.ndarray, retained: np.ndarray, tol: float = 1e-6) -> dict:
    """WETR Table 8 groups over the retained tokens: down-weighted (gamma < 1), neutral (= 1), up-weighted."""
    g = gamma[retained]
    out = {}
    for name, m in (("dw", g < 1 - tol), ("neu", np.abs(g - 1) <= tol), ("uw", g > 1 + tol)):
        out[name] = {"n": int(m.sum()), "mean": float(g[m].mean()) if m.any() else None}
    return out


# =========================================================================== parameters
NTS_PARAMS = {
    "layer": Param(-1, int, low=-1, doc="trigger layer l (-1 = auto: round(n_layers * 9/36), 2 for 8 layers)"),
    "p_v": Param(0.03, float, low=0.0, high=1.0, open_low=True, doc="visual keep ratio p_v (Eq. 6)"),
    "p_t": Param(0.2, float, low=0.0, high=1.0, open_low=True, doc="text-content keep ratio p_t (Eq. 6)"),
    "norm": Param("minmax", str, choices=NORMS, doc="Norm of Eq. 4/5 over the modality's candidates"),
    "scoring": Param("contrastive", str, choices=SCORINGS, doc="WETR Table 2 scoring strategy"),
    "cross_modal": Param(True, bool, doc="add Eq. 5's cross-modal support term"),
    "seed": Param(0, int, low=0, doc="seed of the random strategy / selection noise"),
    "prune": Param(False, bool, doc="remove the dropped tokens physically from the next layer on (emolens.prune; same answers, less compute)"),
}


# =========================================================================== the engine
class NTS(Method):
    """WETR's Noise-suppressed Token Selection at one trigger layer (Eq. 4-7); see the module docstring.

    ``predict`` runs one forward: capture at layer l, select, mask every layer > l, read the answer
    letter from the next-token logits. ``Prediction.selected_visual`` / ``selected_content`` are the
    kept sets over the sample's visual / content tokens, ``extra["_cue_visual"]`` the world's ground
    truth (``evaluate`` turns it into selection precision / recall), ``extra["nts"]`` one record per
    trigger layer.

    The engine here also serves STR (``reweight.py``) and WETR (``wetr.py``): subclasses override
    :meth:`trigger_layers` and :meth:`_reweight`.
    """

    name = "nts"
    PARAMS = dict(NTS_PARAMS)
    #: fixed scoring strategy of the baseline subclasses (None: the ``scoring`` parameter)
    FIXED_SCORING: Optional[str] = None

    # ------------------------------------------------------------------ configuration
    @property
    def scoring(self) -> str:
        return self.FIXED_SCORING or self.params["scoring"]

    @property
    def use_nts(self) -> bool:
        return bool(self.params.get("use_nts", True))

    @property
    def use_str(self) -> bool:
        return False

    def trigger_layers(self, n_layers: int) -> list:
        """The layers at which the method acts (NTS: the single layer ``layer``)."""
        l = int(self.params["layer"])
        if l == -1:
            l = min(max(1, round(n_layers * TRIGGER_FRACTION)), n_layers - 2)
        if not 0 <= l <= n_layers - 2:
            raise ValueError(f"{self.name}: layer = {self.params['layer']} is out of range for a {n_layers}-layer model; "
                             f"use 0..{n_layers - 2} (the selection acts on the layers after it) or -1 for auto")
        return [l]

    def _needs_vc(self) -> bool:
        return (self.params.get("cross_modal", True) and self.scoring != "random") or self.use_str

    # ------------------------------------------------------------------ plan
    def build_plan(self, batch, samples, n_layers: int, keep_captures: bool = True) -> Plan:
        """The intervention plan for one encoded batch: captures at every trigger layer and one
        ``AfterLayer`` callback per trigger layer that decides m (and gamma) in the same forward.
        ``keep_captures=False`` drops each layer's captures from the trace once decided (the visual
        rows' attention of a real VLM is large); decisions are always kept."""
        layers = self.trigger_layers(n_layers)
        spans = SPANS[self.scoring]
        try:
            check_spans(batch.layouts, spans)
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None
        ops = []
        for name in spans:
            ops.append(Capture(layers=layers, rows=name))
        if self._needs_vc():
            vc = [np.concatenate([lay.visual, lay.content]) for lay in batch.layouts]
            ops.append(Capture(layers=layers, rows=vc, name="vc", qk_positions=vc if self.use_str else None,
                               reduce=CROSS_CAPTURE_REDUCE,
                               qk_rope=self.params.get("qk_rope", "pre")))
        uids = [getattr(s, "uid", i) for i, s in enumerate(samples)]
        for l in layers:
            ops.append(AfterLayer(layer=l, fn=lambda ctx, _u=uids, _f=layers[0]: self._decide(ctx, _u, _f, keep_captures)))
        if self.params.get("prune"):
            ops.append(Prune())
        return Plan(ops)

    def forward(self, lm, batch, samples, extra_ops: Sequence = (), keep_captures: bool = True):
        """Run the method's plan (plus ``extra_ops``, after it) on an encoded batch.
        Returns ``(answer logits [B, V], trace)``; ``trace.decisions`` holds ``admitted`` ([B, L] bool,
        the final m), ``triggers`` (per-layer records) and, with STR, ``gamma`` (layer -> [B, L])."""
        from .common import forward_logits

        return forward_logits(lm, batch, self.plan_for(lm, batch, samples, extra_ops, keep_captures))

    def plan_for(self, lm, batch, samples, extra_ops: Sequence = (), keep_captures: bool = False) -> Plan:
        """The method's plan for an encoded batch followed by ``extra_ops`` (composition hook)."""
        plan = self.build_plan(batch, samples, lm.num_layers, keep_captures)
        return Plan(list(plan.ops) + list(extra_ops))

    def prompts(self, samples, task) -> list:
        """WETR's prompt: the fine query with the Q_pos / Q_neg spans (the spans NTS/STR read)."""
        return fine_prompts(samples, task, contrastive=True)

    def predict(self, lm, samples, task, prompts: Optional[Sequence] = None, partner=None) -> list:
        """One :class:`Prediction` per sample. ``prompts`` (default: the fine query with the Q_pos/Q_neg
        spans) must contain the spans the scoring reads, else a one-line ValueError. ``partner``: a
        composed method (``methods.compose``) whose ops run after this method's in the same plan; its
        per-sample record lands in ``extra[partner.name]``."""
        prompts = list(prompts) if prompts is not None else self.prompts(samples, task)
        batch = lm.encode(samples, prompts)
        extra_ops = partner.ops_for(lm, batch, samples) if partner is not None else ()
        plan = self.plan_for(lm, batch, samples, extra_ops, keep_captures=False)
        answers, trace, texts = answer_batch(lm, batch, plan, self.params)
        preds = self.predictions(answers, trace, batch, texts)
        if partner is not None:
            for pr, pp in zip(preds, partner.predictions_from(answers, trace, batch, texts)):
                pr.extra[partner.name] = {k: v for k, v in pp.extra.items() if not k.startswith("_")}
        return preds

    # ------------------------------------------------------------------ composition (methods.compose)
    #: the partner needs WETR's Q_pos / Q_neg spans in the host's prompt
    wants_spans = True

    def ops_for(self, lm, batch, samples, admitted=None) -> list:
        """This method's ops for an encoded batch, as a composition partner. ``admitted`` (``[B, L]``
        bool, e.g. SEPM's kept set) seeds m: tokens it excludes are never candidates, so never
        re-admitted (the host's own KeyMask keeps them masked in any case)."""
        ops = list(self.build_plan(batch, samples, lm.num_layers, keep_captures=False).ops)
        if admitted is not None:
            ops.insert(0, AfterLayer(layer=min(self.trigger_layers(lm.num_layers)), fn=_SeedAdmitted(admitted)))
        return ops

    def predictions_from(self, answers, trace, batch, texts=None) -> list:
        return self.predictions(answers, trace, batch, texts)

    # ------------------------------------------------------------------ the decision at a trigger layer
    def _scores(self, caps, b, lay, cand_v, cand_c, rng):
        """s_i (Eq. 5) for the visual and content candidates of sample b, plus diagnostics."""
        info = {}
        if self.scoring == "random":
            return rng.random(cand_v.size), rng.random(cand_c.size), info
        norm = self.params["norm"]
        if self.scoring == "contrastive":
            a_pos = span_attention(caps["q_pos"].sample(b))
            a_neg = span_attention(caps["q_neg"].sample(b))
            d_v = contrastive_utility(a_pos[cand_v], a_neg[cand_v], norm)
            d_c = contrastive_utility(a_pos[cand_c], a_neg[cand_c], norm)
        else:
            a = span_attention(caps["q_pos" if self.scoring == "qpos" else QUERY_SPAN].sample(b))
            d_v, d_c = normalize_scores(a[cand_v], norm), normalize_scores(a[cand_c], norm)
        if not self.params["cross_modal"]:
            return d_v, d_c, info
        vc = caps["vc"]
        probs = vc.sample(b)                                   # [H, r_b, K] ([1, r_b, K] head-reduced)
        pos = vc.positions[b][vc.row_valid[b]].cpu().numpy()
        rows_c = np.flatnonzero(np.isin(pos, cand_c))          # admitted content rows (I_con)
        rows_v = np.flatnonzero(np.isin(pos, cand_v))          # admitted visual rows (I_v)
        raw_v = cross_modal_support(probs[:, rows_c], cand_v, raw=True)
        raw_c = cross_modal_support(probs[:, rows_v], cand_c, raw=True)
        info["cross_visual_max"] = float(raw_v.max()) if raw_v.size else 0.0
        info["cross_content_max"] = float(raw_c.max()) if raw_c.size else 0.0
        return (selection_score(d_v, normalize_scores(raw_v, norm)),
                selection_score(d_c, normalize_scores(raw_c, norm)), info)

    def _decide(self, ctx, uids, first_layer, keep_captures=True):
        l = ctx.layer
        layouts = ctx.layouts
        B, L = len(layouts), layouts[0].seq_len
        dec = ctx.decisions
        if "admitted" not in dec:
            dec["admitted"] = np.ones((B, L), dtype=bool)
            dec["triggers"] = []
        adm = dec["admitted"]
        new = adm.copy()
        gamma = np.ones((B, L), dtype=np.float32)
        per = []
        p_v, p_t = self.params["p_v"], self.params["p_t"]
        noise_r = float(self.params.get("noise_r", 0.0))
        seed = self.params["seed"]
        for b, lay in enumerate(layouts):
            rng = _rng(seed, uids[b], l)
            cand_v = lay.visual[adm[b, lay.visual]]
            cand_c = lay.content[adm[b, lay.content]]
            s_v, s_c, info = self._scores(ctx.captures, b, lay, cand_v, cand_c, rng)
            if self.use_nts:
                kv = cand_v[top_p(s_v, p_v, n_ref=lay.visual.size)] if cand_v.size else cand_v
                kc = cand_c[top_p(s_c, p_t, n_ref=lay.content.size)] if cand_c.size else cand_c
                if noise_r > 0:
                    kv, kc = self._swap_noise(cand_v, cand_c, kv, kc, noise_r, _rng(seed, uids[b], l, 1))
            else:
                kv, kc = cand_v, cand_c
                if noise_r > 0 and l == first_layer:
                    kv, kc = self._random_drop(cand_v, cand_c, noise_r, _rng(seed, uids[b], l, 2))
            new[b] = selection_mask(lay, kv, kc, admitted=adm[b])
            rec = {"layer": l, "n_cand_visual": int(cand_v.size), "n_cand_content": int(cand_c.size),
                   "kept_visual": np.flatnonzero(np.isin(lay.visual, kv)).tolist(),
                   "kept_content": np.flatnonzero(np.isin(lay.content, kc)).tolist(), **info}
            if self.use_str:
                g, st = self._reweight(ctx.captures, b, lay, cand_v, cand_c, s_v, s_c, kv, kc)
                gamma[b] = g
                retained = new[b] & (np.arange(L) >= lay.pad)
                rec["str"] = {**st, **_gamma_stats(g, retained)}
            per.append(rec)
        dec["triggers"].append({"layer": l, "samples": per})
        if (new != adm).any():  # m_i = 0 for the newly dropped tokens from layer l + 1 on (Eq. 7)
            ctx.mask_keys(new, from_layer=l + 1)
        dec["admitted"] = new
        if self.use_str:
            dec.setdefault("gamma", {})[l] = gamma
            ctx.scale_residual(gamma, layer=l)
        if not keep_captures:
            for name in ("q_pos", "q_neg", QUERY_SPAN, "vc"):
                ctx.trace.captures.pop((name, l), None)

    @staticmethod
    def _swap_noise(cand_v, cand_c, kv, kc, r, rng):
        """WETR Table 5 post-NTS noise (``metrics.swap_selection_noise``): within this trigger's
        candidates, swap round(r * |kept|) kept tokens of each modality for dropped ones."""
        cand = np.concatenate([cand_v, cand_c])
        mod = np.concatenate([np.zeros(cand_v.size, np.int64), np.ones(cand_c.size, np.int64)])
        keep = np.isin(cand, np.concatenate([kv, kc]))
        out = swap_selection_noise(keep, r, modality=mod, seed=rng)
        return cand[out & (mod == 0)], cand[out & (mod == 1)]

    @staticmethod
    def _random_drop(cand_v, cand_c, r, rng):
        """The Table 5 "Baseline" row (no NTS): drop round(r * n) random tokens of each modality."""
        out = []
        for c in (cand_v, cand_c):
            n = min(int(np.floor(r * c.size + 0.5)), c.size)
            drop = rng.choice(c, size=n, replace=False) if n else np.zeros(0, np.int64)
            out.append(c[~np.isin(c, drop)])
        return out[0], out[1]

    def _reweight(self, caps, b, lay, cand_v, cand_c, s_v, s_c, kv, kc):  # pragma: no cover - STR overrides
        return np.ones(lay.seq_len, dtype=np.float32), {}

    # ------------------------------------------------------------------ results
    def predictions(self, answers, trace, batch, texts=None) -> list:
        dec = trace.decisions
        adm = dec.get("admitted")
        selects = self.use_nts or float(self.params.get("noise_r", 0.0)) > 0
        out = []
        for b, (a, lay) in enumerate(zip(answers, batch.layouts)):
            extra = {"triggers": [t["layer"] for t in dec.get("triggers", [])],
                     "nts": [t["samples"][b] for t in dec.get("triggers", [])]}
            sv = sc = None
            if selects and adm is not None:
                sv = adm[b, lay.visual].tolist()
                sc = adm[b, lay.content].tolist()
                extra["k_visual"], extra["k_content"] = int(sum(sv)), int(sum(sc))
                extra["n_visual"], extra["n_content"] = int(lay.visual.size), int(lay.content.size)
            if lay.cue_visual is not None:
                extra["_cue_visual"] = np.asarray(lay.cue_visual, bool).tolist()
            out.append(Prediction(label=a.label, letter=a.letter, option_probs=a.option_probs,
                                  selected_visual=sv, selected_content=sc, extra=extra,
                                  generated=texts[b] if texts is not None else None))
        return out


class _SeedAdmitted:
    """AfterLayer callback placed before the first trigger's: ``decisions["admitted"] = admitted`` so the
    selection starts from a host's kept set (composition)."""

    def __init__(self, admitted):
        self.admitted = np.asarray(admitted, dtype=bool)

    def __call__(self, ctx):
        if "admitted" not in ctx.decisions:
            ctx.decisions["admitted"] = self.admitted.copy()
            ctx.decisions["triggers"] = []


def _without(params: dict, *names) -> dict:
    return {k: v for k, v in params.items() if k not in names}


class RandomSelect(NTS):
    """WETR Table 2 "Random": NTS's keep ratios with i.i.d. uniform scores (no cross-modal term)."""

    name = "random-select"
    PARAMS = _without(NTS_PARAMS, "scoring", "cross_modal", "norm")
    FIXED_SCORING = "random"

    def _needs_vc(self) -> bool:
        return False


class QuerySelect(NTS):
    """WETR Table 2 "Query-related": scores from the task question span's attention (span
    ``question``), plus Eq. 5's cross-modal term; NTS's keep ratios."""

    name = "query-select"
    PARAMS = _without(NTS_PARAMS, "scoring")
    FIXED_SCORING = "query"


class QposSelect(NTS):
    """WETR Table 2 / 7 "Q_pos-related": scores from the Q_pos span's attention alone, plus Eq. 5's
    cross-modal term; NTS's keep ratios."""

    name = "qpos-select"
    PARAMS = _without(NTS_PARAMS, "scoring")
    FIXED_SCORING = "qpos"
