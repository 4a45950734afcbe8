"""Independent references for NTS (WETR Eq. 4-7) and STR (WETR Eq. 9-11), sharing no code with
``emolens.methods``: attention from transformers' eager attention (``output_attentions=True``), q / k
from forward hooks on the layer's q_norm / k_norm and the rotary embedding, and every equation in plain
numpy. Hyperparameters are read from the method object. Used by ``test_references.py`` and by the
analysis helpers' tests."""
from __future__ import annotations

import math

import numpy as np
import torch


def ref_norm(x: np.ndarray, kind: str) -> np.ndarray:
    """WETR's Norm over one modality's candidates, written from the paper (constant -> 0)."""
    x = np.asarray(x, np.float64)
    if x.size == 0 or kind == "none":
        return x.copy()
    if kind == "minmax":
        span = x.max() - x.min()
        return np.zeros_like(x) if span <= 1e-12 else (x - x.min()) / span
    if kind == "zscore":
        return np.zeros_like(x) if x.std() <= 1e-12 else (x - x.mean()) / x.std()
    raise AssertionError(kind)


def ref_topp(s: np.ndarray, p: float, n_ref: int) -> np.ndarray:
    """TopP (Eq. 6): the max(1, ceil(p n)) highest scores, ties to the earlier position."""
    k = min(s.size, max(1, math.ceil(p * n_ref - 1e-9)))
    order = sorted(range(s.size), key=lambda i: (-s[i], i))
    return np.sort(np.asarray(order[:k], np.int64))


def ref_nts_scores(A: np.ndarray, lay, params: dict):
    """s_i (Eq. 4-5) of one sample from its eager attention ``A [H, L, L]`` at the trigger layer."""
    a = A.mean(0)                                               # head aggregation: mean over heads
    norm = params["norm"]
    a_pos = a[lay.span("q_pos")].mean(0)                        # a_{I_pos -> i}
    a_neg = a[lay.span("q_neg")].mean(0)                        # a_{I_neg -> i}
    v, c = lay.visual, lay.content
    d_v = ref_norm(a_pos[v] - a_neg[v], norm)                   # Eq. 4
    d_c = ref_norm(a_pos[c] - a_neg[c], norm)
    if not params["cross_modal"]:
        return d_v, d_c
    cross_v = a[np.ix_(c, v)].mean(0) if c.size else np.zeros(v.size)   # content rows -> visual keys
    cross_c = a[np.ix_(v, c)].mean(0) if v.size else np.zeros(c.size)   # visual rows -> content keys
    return d_v + ref_norm(cross_v, norm), d_c + ref_norm(cross_c, norm)  # Eq. 5


def boundary_gap(s: np.ndarray, k: int) -> float:
    """Score gap between the k-th and (k+1)-th ranked candidate (inf when all are kept)."""
    srt = np.sort(s)[::-1]
    return float("inf") if k >= s.size else float(srt[k - 1] - srt[k])


def _decoder_layers(model):
    inner = getattr(model, "language_model", None) or getattr(model, "model", model)
    inner = getattr(inner, "language_model", inner)
    return inner.layers


def eager_attention(lm_eager, batch, layer: int) -> np.ndarray:
    """``[B, H, L, L]`` softmax probabilities of one layer from a forward with transformers' eager
    attention and ``output_attentions=True`` (read from the layer's attention module output, which
    is where eager returns them; the embedded model's wrapper does not collect them)."""
    got = {}
    attn = _decoder_layers(lm_eager.model)[layer].self_attn
    h = attn.register_forward_hook(lambda m, i, o: got.__setitem__("w", o[1]))
    try:
        with torch.no_grad():
            lm_eager.model(**batch.inputs, output_attentions=True, use_cache=False)
    finally:
        h.remove()
    return got["w"].double().cpu().numpy()


def check_nts_against_reference(method, trace, A, layouts, tol=1e-6):
    """Assert the method's keep set equals the reference's for every sample (skipping a modality only
    when its TopP boundary is an exact tie within ``tol``). Returns how many modality decisions were
    compared."""
    p = method.params
    adm = trace.decisions["admitted"]
    compared = 0
    for b, lay in enumerate(layouts):
        s_v, s_c = ref_nts_scores(A[b], lay, p)
        for grp, s, ratio in ((lay.visual, s_v, p["p_v"]), (lay.content, s_c, p["p_t"])):
            if grp.size == 0:
                continue
            keep = ref_topp(s, ratio, grp.size)
            if boundary_gap(s, keep.size) <= tol:
                continue
            assert np.flatnonzero(adm[b, grp]).tolist() == keep.tolist(), (b, s)
            compared += 1
    return compared


def qk_uses_rope(method) -> bool:
    """Whether the method's Eq. 9 reads q/k after RoPE, from its hyperparameters (a parameter whose name
    mentions rope: a bool, or a string naming pre / post); today's default (no such parameter) is
    post-RoPE."""
    for name, value in method.params.items():
        if "rope" in name.lower():
            if isinstance(value, bool):
                return value if "post" in name.lower() or name.lower() == "rope" else not value
            return "post" in str(value).lower()
    return True


def capture_qk(lm, batch, layer: int) -> tuple:
    """q ``[B, H, L, D]``, k ``[B, H_kv, L, D]`` of one decoder layer, from forward hooks on q_norm /
    k_norm (post q/k norm, pre-RoPE), and the rotary embedding's (cos, sin) ``[B, L, D]``."""
    attn = _decoder_layers(lm.model)[layer].self_attn
    got = {}
    hs = [attn.q_norm.register_forward_hook(lambda m, i, o: got.__setitem__("q", o.detach())),
          attn.k_norm.register_forward_hook(lambda m, i, o: got.__setitem__("k", o.detach())),
          lm.model.language_model.rotary_emb.register_forward_hook(lambda m, i, o: got.__setitem__("rope", o))]
    try:
        with torch.no_grad():
            lm.model(**batch.inputs, use_cache=False)
    finally:
        for h in hs:
            h.remove()
    q = got["q"].double().numpy().transpose(0, 2, 1, 3)       # [B, L, H, D] -> [B, H, L, D]
    k = got["k"].double().numpy().transpose(0, 2, 1, 3)
    cos, sin = (t.double().numpy() for t in got["rope"])
    return q, k, cos, sin


def ref_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x ``[H, L, D]`` rotated by (cos, sin) ``[L, D]`` (the rotate-half convention of Qwen/Llama)."""
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos[None] + rot * sin[None]


def ref_recon_error(q, k, src, tgt) -> np.ndarray:
    """e_i of Eq. 9 per query head h against KV head h // G, mean over the H query heads."""
    H, _, D = q.shape
    G = H // k.shape[0]
    if len(tgt) == 0:
        return np.mean([np.linalg.norm(k[h // G][src], axis=-1) for h in range(H)], 0)
    errs = []
    for h in range(H):
        kk = k[h // G]
        z = q[h][src] @ kk[tgt].T / math.sqrt(D)
        z = np.exp(z - z.max(-1, keepdims=True))
        alpha = z / z.sum(-1, keepdims=True)
        errs.append(np.linalg.norm(kk[src] - alpha @ kk[tgt], axis=-1))
    return np.mean(errs, 0)


def ref_gamma(method, s_v, s_c, kv, kc, q, k, lay) -> np.ndarray:
    """gamma over the sequence (1 outside K_v u K_con) from Eq. 9-11 and the anchor rule."""
    p = method.params
    pos = np.concatenate([kv, kc])
    e = np.concatenate([ref_recon_error(q, k, kv, kc), ref_recon_error(q, k, kc, kv)])
    e_bar = ref_norm(e, "minmax")                                   # jointly over K_v u K_con
    sig = lambda x: 1.0 / (1.0 + np.exp(-(x - p["gate_center"]) / p["gate_temp"]))  # noqa: E731
    iv, ic = np.isin(lay.visual, kv), np.isin(lay.content, kc)
    # Norm scope of the gate: the kept set K (``gate_scope="kept"``) or all candidates. Before issue 11
    # there was no parameter and the scope was the candidates, with a constant set normalised to 0;
    # with the parameter, a constant set (no contrast: every member is the top token) gets Norm = 1.
    scope = p.get("gate_scope", "candidates")
    const = 1.0 if "gate_scope" in p else 0.0

    def gnorm(x):
        return np.full(x.size, const) if x.size and np.ptp(x) <= 1e-12 else ref_norm(x, p["norm"])

    if scope == "kept":
        g = np.concatenate([sig(gnorm(s_v[iv])), sig(gnorm(s_c[ic]))])
    else:
        g = np.concatenate([sig(gnorm(s_v))[iv], sig(gnorm(s_c))[ic]])
    r, c = (1 - g) * (1 - e_bar), g * e_bar                         # Eq. 10
    gamma = 1 + p["delta"] * (c - r)                                # Eq. 11
    if p["negative"] == "clamp0":
        gamma = np.maximum(gamma, 0.0)
    if p["anchors"]:
        for sl, s_kept, ratio in ((slice(0, kv.size), s_v[iv], p["p_v_anc"]),
                                  (slice(kv.size, None), s_c[ic], p["p_t_anc"])):
            if ratio > 0 and s_kept.size:
                anc = ref_topp(s_kept, ratio, s_kept.size)
                gamma[sl][anc] = np.maximum(gamma[sl][anc], p["gamma_anc"])
    full = np.ones(lay.seq_len)
    full[pos] = gamma
    return full
