"""STR: State-strengthened Token Reweighting (WETR, seed 000, Sec. 3.4, Eq. 8-11).

STR sets the reweighting factor gamma_i of w_i = m_i gamma_i (Eq. 2) for the tokens NTS admitted
(K_v u K_con), at the trigger layer l, and scales their hidden states h_i <- gamma_i h_i so that every
later layer sees the refined usage (Eq. 8's likelihood modulation)::

    alpha_ij = softmax_{j in K_con}(q_i . k_j / sqrt(d))            i in K_v         (Eq. 9)
    e_i^v    = || k_i - sum_j alpha_ij k_j ||_2   (e_j^t symmetric: reconstruct K_con from K_v)
    e_bar    = Norm(e) in [0, 1]
    g_i      = sigmoid(Norm(s_i))                 (s_i: the NTS score of Eq. 5)
    r_i      = (1 - g_i)(1 - e_bar_i),   c_i = g_i e_bar_i                            (Eq. 10)
    b_i      = c_i - r_i,   gamma_i = 1 + delta b_i                                    (Eq. 11)
    gamma_i <- max(gamma_i, gamma_anc)  for the anchors A (top p_anc of K_v / K_con by s_i)
    h_i     <- gamma_i h_i

In one forward (``emolens.intervene``): the NTS captures at layer l also record the visual and content
tokens' query / key vectors; the ``AfterLayer`` callback selects (NTS), computes gamma and calls
``ctx.scale_residual(gamma, layer=l)`` -- the scaling acts on decoder layer l's output, i.e. from
layer l+1 on, like the key mask.

Choices the paper leaves open (documented defaults; most are parameters)
------------------------------------------------------------------------
* **q, k** ("query/key vectors from the frozen attention projections"): by default (``qk_rope="pre"``)
  the projections' output **before RoPE**, after any q/k norm (Qwen3's RMSNorm): the attention
  function receives post-RoPE vectors and ``Capture(qk_rope="pre")`` inverts the rotary embedding
  exactly with the layer's own (cos, sin) (tested against hooks on q_norm/k_norm and q_proj/k_proj on
  every tiny architecture). Pre-RoPE keys of different positions differ only by content, which is
  what "reconstruct a token's key from the other modality's keys" compares. ``qk_rope="post"`` keeps
  the vectors as attention sees them (keys then also differ by their rotary phase).
* **GQA heads in Eq. 9**: q has H heads, k has H_kv < H heads. Each query head h is paired with its
  KV group's keys (head h uses kv head h // (H / H_kv), as the attention does); alpha, the
  reconstruction and e_i are computed per query head with d = head_dim (the model's own 1/sqrt(d)
  scaling), then e_i is the **mean over the H query heads** (equivalently: per KV group, the mean
  over its G query heads, then the mean over groups).
* **Empty other modality** (e.g. no kept content token): sum over an empty set is 0, so
  e_i = ||k_i||_2 ("nothing predicts it").
* **Error normalisation** ("normalize all errors to e_bar in [0, 1]"): one min-max over *all* errors
  of K_v u K_con jointly (a constant set -> 0).
* **Gate** (Eq. 10's g_i = phi(Norm(s_i))): g_i = sigmoid((Norm(s_i) - gate_center) / gate_temp) with
  the NTS ``norm`` over the modality's **kept set K** (``gate_scope="kept"``, default: STR acts on
  K, and the paper's stated property refers to the tokens NTS kept; ``"candidates"`` normalises over
  all candidates at the layer). Defaults gate_center = 0.5, gate_temp = 0.1 make phi a soft step on
  [0, 1]: the most emotion-relevant kept token (Norm = 1) gets g = 0.993, the least g = 0.007. This
  is chosen so the property WETR states holds: "emotion-relevant agreement" (high g_i, low e_bar_i)
  gives r_i = (1 - g_i)(1 - e_bar_i) <= 0.007 and c_i = g_i e_bar_i ~ 0, so gamma_i = 1 + delta (c - r)
  is within 4 * 0.007 = 0.03 of 1 ("not down-weighted"; tested). The literal phi with center 0, temp 1
  confines g to [0.5, 0.731] under minmax, so a kept token with e_bar = 0 gets r >= 0.27 and gamma <=
  1 - delta * 0.27 ~ 0 unless it is an anchor: the opposite of the stated property. A constant score
  set (a lone kept token, or ties) has no contrast; every member is the set's top token, so Norm = 1
  (g = 0.993) for the gate.
* **What h <- gamma h does in a pre-norm decoder**: the next layer reads RMSNorm(h) for its queries,
  keys and values, and RMSNorm is scale-invariant (RMSNorm(gamma h) = RMSNorm(h) for gamma > 0, up to
  the epsilon). So for the *keys and values* of later layers only gamma = 0 survives the next layer's
  norm (a zero vector stays ~0); a positive gamma changes them not at all. What a positive gamma does
  change is the token's residual stream: the scaled h_i plus the next layers' updates, i.e. the
  relative weight of the layer-l state against what later layers add (large gamma: the state at l
  dominates later; small gamma: later updates dominate). The answer row is not reweighted (it is
  an instruction token), so gamma acts on it only through the reweighted tokens' keys/values in later
  layers -- which, by the above, is the gamma = 0 case plus the second-order effect through the
  changed residual mix. Reported, not hidden: this is why STR's effect on emolens-tiny is mostly its
  zeroing of down-weighted tokens.
* **Negative gamma** (``negative``): Eq. 11 gives gamma < 0 when b_i < -1/delta (delta = 4: b < -0.25),
  but Eq. 2 requires gamma > 0 and WETR Table 8 reports the down-weighted group's mean gamma as
  0.000: ``"clamp0"`` (default) sets gamma <- max(gamma, 0); ``"keep"`` applies the signed value
  (flips the hidden state). A gamma of 0 zeroes h_i at layer l's output; the token stays attendable
  in later layers (its key is then 0, not -inf) until its own attention refills it.
* **Anchors**: A = TopP(s over K_v, p_v_anc) u TopP(s over K_con, p_t_anc) with NTS's rounding
  (at least one token per non-empty modality when p_anc > 0; p_anc = 0 or ``anchors=False``: none).
  Defaults p_v_anc = p_t_anc = 0.1 and gamma_anc = 1 (anchors are never down-weighted); the paper
  gives no values. With the paper's p_v = 0.03 (one kept visual token) that token is always an anchor.
* **Scope**: only K_v u K_con are reweighted; instruction and audio tokens keep gamma = 1 (Eq. 9-10
  are defined for the two candidate modalities only).
* **Table 8 statistics** (``Prediction.extra["nts"][t]["str"]``): the retained (admitted, non-pad)
  tokens grouped into down-weighted (gamma < 1), neutral (gamma = 1) and up-weighted (gamma > 1) with
  their count and mean gamma, plus how many gamma were negative before clamping and the anchors.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import Param
from .nts import NTS, NTS_PARAMS, _check_p, _np, keep_count, normalize_scores, top_p

NEGATIVE = ("clamp0", "keep")

STR_PARAMS = {
    "delta": Param(4.0, float, low=0.0, doc="intervention strength delta (Eq. 11)"),
    "anchors": Param(True, bool, doc="anchor protection (WETR Table 6)"),
    "p_v_anc": Param(0.1, float, low=0.0, high=1.0, doc="anchor ratio within K_v (0 = no visual anchors)"),
    "p_t_anc": Param(0.1, float, low=0.0, high=1.0, doc="anchor ratio within K_con (0 = no content anchors)"),
    "gamma_anc": Param(1.0, float, low=1.0, doc="anchor lower bound gamma_anc >= 1"),
    "negative": Param("clamp0", str, choices=NEGATIVE, doc="negative gamma: clamp at 0 or keep the sign"),
    "gate_center": Param(0.5, float, doc="g = sigmoid((Norm(s) - center) / temp) (Eq. 10's phi; 0.5 / 0.1: soft step)"),
    "gate_temp": Param(0.1, float, low=0.0, open_low=True, doc="gate temperature"),
    "gate_scope": Param("kept", str, choices=("kept", "candidates"), doc="Norm of the gate over K (kept) or all candidates"),
    "qk_rope": Param("pre", str, choices=("pre", "post"),
                     doc="Eq. 9's q/k: the projections before RoPE (after any q/k norm; default) or after RoPE"),
}


# =========================================================================== the paper's symbols
def reconstruction_error(q, k, kept_src, kept_tgt, scaling=None) -> np.ndarray:
    """e_i of WETR Eq. (9): how badly token i's key is reconstructed from the other modality's kept keys.

    alpha_ij = softmax_{j in kept_tgt}(q_i . k_j * scaling), e_i = ||k_i - sum_j alpha_ij k_j||_2, per
    query head h against its KV group's keys (GQA), then the mean over the H query heads.

    Args:
        q: ``[H, N, D]`` query vectors of N tokens (post q-norm; pre- or post-RoPE per the ``qk_rope`` param).
        k: ``[H_kv, N, D]`` key vectors of the same N tokens (H divisible by H_kv).
        kept_src: indices into N of the tokens to reconstruct (i in K_v for e^v).
        kept_tgt: indices into N of the tokens that reconstruct them (j in K_con for e^v).
        scaling: score scale, default 1/sqrt(D) (Eq. 9's 1/sqrt(d), d = head_dim).
    Returns:
        ``[len(kept_src)]`` float64; ``||k_i||`` (head-averaged) when ``kept_tgt`` is empty.
    """
    qt = q.detach().double().cpu() if isinstance(q, torch.Tensor) else torch.as_tensor(np.asarray(q, np.float64))
    kt = k.detach().double().cpu() if isinstance(k, torch.Tensor) else torch.as_tensor(np.asarray(k, np.float64))
    if qt.dim() != 3 or kt.dim() != 3 or qt.shape[1] != kt.shape[1] or qt.shape[2] != kt.shape[2]:
        raise ValueError(f"q must be [H, N, D] and k [H_kv, N, D] over the same tokens, got {tuple(qt.shape)} "
                         f"and {tuple(kt.shape)}")
    H, N, D = qt.shape
    Hkv = kt.shape[0]
    if H % Hkv:
        raise ValueError(f"{H} query heads are not a multiple of {Hkv} key heads")
    G = H // Hkv
    src = torch.as_tensor(np.asarray(kept_src, dtype=np.int64).reshape(-1))
    tgt = torch.as_tensor(np.asarray(kept_tgt, dtype=np.int64).reshape(-1))
    if src.numel() == 0:
        return np.zeros(0)
    ks = kt[:, src]                                              # [Hkv, S, D]
    if tgt.numel() == 0:
        return ks.norm(dim=-1).mean(0).numpy()
    sc = D ** -0.5 if scaling is None else float(scaling)
    qs = qt[:, src].reshape(Hkv, G, src.numel(), D)              # head h -> kv group h // G
    kk = kt[:, tgt]                                              # [Hkv, T, D]
    alpha = torch.softmax(torch.einsum("hgsd,htd->hgst", qs, kk) * sc, dim=-1)
    recon = torch.einsum("hgst,htd->hgsd", alpha, kk)
    err = (ks[:, None] - recon).norm(dim=-1)                     # [Hkv, G, S]
    return err.reshape(H, -1).mean(0).numpy()


def normalize(e) -> np.ndarray:
    """e_bar: min-max of the errors to [0, 1] (all of K_v u K_con jointly); a constant set -> zeros."""
    return normalize_scores(e, "minmax")


def gate(s, norm: str = "minmax", center: float = 0.5, temp: float = 0.1) -> np.ndarray:
    """g_i = phi(Norm(s_i)), phi = sigmoid((x - center) / temp) (WETR Eq. 10; defaults: a soft step,
    see the module docstring; ``center=0, temp=1`` is the literal sigmoid).

    ``s``: the NTS scores of one modality's kept set K (Norm runs over them). A constant set (one
    token, or ties) has Norm = 1: each member is the set's top token."""
    if temp <= 0:
        raise ValueError(f"gate temp = {temp} is out of range; allowed (0, inf)")
    v = _np(s).reshape(-1)
    x = np.ones_like(v) if v.size and np.ptp(v) <= 1e-12 else normalize_scores(v, norm)
    return 1.0 / (1.0 + np.exp(-(x - center) / temp))


def overlap_residual(g, e_bar):
    """WETR Eq. (10): r_i = (1 - g_i)(1 - e_bar_i) (predictable, weakly relevant overlap),
    c_i = g_i e_bar_i (relevant, hard-to-predict residual evidence). Returns ``(r, c)``."""
    g, e = _np(g).reshape(-1), _np(e_bar).reshape(-1)
    if g.shape != e.shape:
        raise ValueError(f"g and e_bar differ in length: {g.size} vs {e.size}")
    return (1.0 - g) * (1.0 - e), g * e


def migration_gamma(r, c, delta: float = 4.0, negative: str = "clamp0"):
    """WETR Eq. (11): b_i = c_i - r_i, gamma_i = 1 + delta b_i. ``negative="clamp0"``: gamma <- max(gamma, 0)
    (Eq. 2's gamma > 0; Table 8's down-weighted mean 0.000); ``"keep"``: signed. Returns ``(gamma, b)``."""
    if not float(delta) >= 0:
        raise ValueError(f"delta = {delta} is out of range; allowed [0, inf)")
    if negative not in NEGATIVE:
        raise ValueError(f"negative must be one of {list(NEGATIVE)}, got {negative!r}")
    r, c = _np(r).reshape(-1), _np(c).reshape(-1)
    b = c - r
    gamma = 1.0 + float(delta) * b
    if negative == "clamp0":
        gamma = np.maximum(gamma, 0.0)
    return gamma, b


def anchor_clamp(gamma, s, p_anc: float, gamma_anc: float = 1.0):
    """Anchor protection: the top ``p_anc`` of a kept set by NTS score ``s`` (TopP rounding, >= 1 token
    when p_anc > 0; none when p_anc = 0) get gamma <- max(gamma, gamma_anc), gamma_anc >= 1.
    Returns ``(gamma', anchor_mask)``."""
    if not float(gamma_anc) >= 1.0:
        raise ValueError(f"gamma_anc = {gamma_anc} is out of range; allowed [1, inf)")
    g = _np(gamma).reshape(-1).copy()
    sc = _np(s).reshape(-1)
    if g.shape != sc.shape:
        raise ValueError(f"gamma and s differ in length: {g.size} vs {sc.size}")
    mask = np.zeros(g.size, dtype=bool)
    if p_anc == 0 or g.size == 0:
        return g, mask
    _check_p(p_anc, "p_anc")
    mask[top_p(sc, p_anc)] = True
    g[mask] = np.maximum(g[mask], float(gamma_anc))
    return g, mask


# =========================================================================== the method
class STR(NTS):
    """NTS at the trigger layer ``layer``, then STR (Eq. 9-11) on the admitted tokens at that layer:
    h_i <- gamma_i h_i on layer l's output. Same forward, same answer reading as ``nts``."""

    name = "str"
    PARAMS = {**NTS_PARAMS, **STR_PARAMS}

    @property
    def use_str(self) -> bool:
        return bool(self.params.get("use_str", True))

    def _reweight(self, caps, b, lay, cand_v, cand_c, s_v, s_c, kv, kc):
        p = self.params
        vc = caps["vc"]
        pos = vc.positions[b][vc.row_valid[b]].cpu().numpy()
        kpos = vc.k_positions[b][vc.k_valid[b]].cpu().numpy()
        q = vc.q[b][:, : pos.size]                               # [H, r_b, D]
        k = vc.k[b][:, : kpos.size]                              # [Hkv, r_b, D]
        if not np.array_equal(pos, kpos):  # pragma: no cover - the plan captures both at the same positions
            raise RuntimeError("STR needs q and k captured at the same positions")
        row = {int(x): i for i, x in enumerate(pos)}
        iv = np.asarray([row[int(x)] for x in kv], dtype=np.int64)
        ic = np.asarray([row[int(x)] for x in kc], dtype=np.int64)
        e = np.concatenate([reconstruction_error(q, k, iv, ic), reconstruction_error(q, k, ic, iv)])
        e_bar = normalize(e)
        norm = p.get("norm", "minmax")
        in_v, in_c = np.isin(cand_v, kv), np.isin(cand_c, kc)
        if p.get("gate_scope", "kept") == "kept":   # Norm over K (module docstring)
            gv = gate(np.asarray(s_v)[in_v], norm, p["gate_center"], p["gate_temp"])
            gc = gate(np.asarray(s_c)[in_c], norm, p["gate_center"], p["gate_temp"])
        else:
            gv = gate(s_v, norm, p["gate_center"], p["gate_temp"])[in_v]
            gc = gate(s_c, norm, p["gate_center"], p["gate_temp"])[in_c]
        g = np.concatenate([gv, gc])
        r, c = overlap_residual(g, e_bar)
        gamma_raw = 1.0 + p["delta"] * (c - r)
        gamma, bias = migration_gamma(r, c, p["delta"], p["negative"])
        nv = kv.size
        anc = np.zeros(gamma.size, dtype=bool)
        if p["anchors"]:
            sv_k = np.asarray(s_v)[np.isin(cand_v, kv)]
            sc_k = np.asarray(s_c)[np.isin(cand_c, kc)]
            gamma[:nv], anc[:nv] = anchor_clamp(gamma[:nv], sv_k, p["p_v_anc"], p["gamma_anc"])
            gamma[nv:], anc[nv:] = anchor_clamp(gamma[nv:], sc_k, p["p_t_anc"], p["gamma_anc"])
        full = np.ones(lay.seq_len, dtype=np.float32)
        full[kv] = gamma[:nv]
        full[kc] = gamma[nv:]
        stats = {"gamma_visual": [round(float(x), 6) for x in gamma[:nv]],
                 "gamma_content": [round(float(x), 6) for x in gamma[nv:]],
                 "anchor_visual": anc[:nv].tolist(), "anchor_content": anc[nv:].tolist(),
                 "n_anchor": int(anc.sum()), "n_negative": int((gamma_raw < 0).sum()),
                 "e_bar": [round(float(x), 6) for x in e_bar], "gate": [round(float(x), 6) for x in g]}
        return full, stats


__all__ = ["reconstruction_error", "normalize", "gate", "overlap_residual", "migration_gamma", "anchor_clamp",
           "STR", "STR_PARAMS", "keep_count"]
