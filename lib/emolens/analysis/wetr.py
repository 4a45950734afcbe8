"""WETR step by step (the computations notebooks 01 NTS, 02 STR and 03 WETR show): read one sample's
captures out of a method's trace, recompute WETR's Eq. 4-7 with the paper-symbol functions of
``methods/nts.py`` (so a notebook can compare its step-by-step numbers with what the method decided inside the forward), run a batch
with chosen tokens removed (WETR Fig. 4 deletion test, Table 8 leave-one-out contributions), and
measure EMass on the world's ground-truth evidence set (WETR Fig. 6).

Everything here is a thin composition of library calls (``intervene``, ``methods.nts``,
``methods.reweight``, ``metrics``); no new method logic. Positions given by callers are *indices into
a layout's token group* (``layout.visual`` / ``layout.content``), never absolute positions, so the
same request works whatever left-padding a batch gets.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..answers import answer_logits, read_answers
from ..intervene import KeyMask, Plan, intervene
from ..methods.nts import (contrastive_utility, cross_modal_support, selection_mask, selection_score,
                          span_attention, top_p, normalize_scores)
from .cpu import to_cpu
from .usage import GROUPS


# =========================================================================== reading a trace
def token_table(lm, batch, b: int = 0):
    """One row of an encoded batch as a table: position, token string, token group, prompt span.

    Non-text tokens show their placeholder (``<image>``, ``<audio>``); padding rows are left out."""
    import pandas as pd

    lay = batch.layouts[b]
    tok = getattr(lm.processor, "tokenizer", lm.processor)
    ids = batch.inputs["input_ids"][b].tolist()
    toks = tok.convert_ids_to_tokens(ids)
    group = np.full(lay.seq_len, "", dtype=object)
    for g in GROUPS:
        group[getattr(lay, g)] = g
    span = np.full(lay.seq_len, "", dtype=object)
    for name, pos in lay.spans.items():
        span[pos] = name
    rows = [{"position": p, "token": toks[p], "group": group[p], "span": span[p]} for p in lay.valid]
    return pd.DataFrame(rows).set_index("position")


def layout_runs(tokens):
    """Collapse a :func:`token_table` into runs of consecutive positions with the same group and span:
    a DataFrame with ``positions`` ("a..b"), ``n``, ``group``, ``span`` and ``text`` (the tokens, or
    ``<image> x n`` for repeated placeholders) -- the sequence layout at a glance."""
    import pandas as pd

    recs, start = [], None
    pos = tokens.index.to_numpy()
    key = list(zip(tokens["group"], tokens["span"]))
    for i in range(len(pos) + 1):
        if i < len(pos) and start is not None and key[i] == key[start] and pos[i] == pos[i - 1] + 1:
            continue
        if start is not None:
            toks = tokens["token"].iloc[start:i].tolist()
            text = f"{toks[0]} x {len(toks)}" if len(toks) > 1 and len(set(toks)) == 1 else " ".join(toks)
            recs.append({"positions": f"{pos[start]}..{pos[i - 1]}" if i - 1 > start else f"{pos[start]}",
                         "n": i - start, "group": key[start][0], "span": key[start][1], "text": text})
        start = i
    return pd.DataFrame(recs)


def capture_rows(trace, name: str, layer: int, b: int = 0):
    """Sample ``b``'s captured attention rows on the CPU: ``(probs [H, r, K] float64 torch, positions [r]
    int64)`` (``[1, r, K]`` for a head-reduced capture, ``Capture(reduce="heads")``)."""
    cap = trace.get(name, layer)
    valid = cap.row_valid[b].cpu()
    return to_cpu(cap.sample(b)).double(), cap.positions[b].cpu()[valid].numpy()


def capture_qk(trace, layer: int, b: int = 0, name: str = "vc"):
    """Query and key vectors STR reads at ``layer`` (captured with ``qk_positions``):
    ``(q [H, n, D], k [H_kv, n, D], positions [n])``, float64, rows = the captured positions."""
    cap = trace.get(name, layer)
    if cap.q is None or cap.k is None:
        raise ValueError(f"capture ({name!r}, {layer}) holds no q/k vectors; run a method with STR (use_str) "
                         f"and keep_captures=True")
    pos = cap.positions[b][cap.row_valid[b]].cpu().numpy()
    kpos = cap.k_positions[b][cap.k_valid[b]].cpu().numpy()
    if not np.array_equal(pos, kpos):
        raise ValueError("q and k were captured at different positions")
    return to_cpu(cap.q[b][:, : pos.size]).double(), to_cpu(cap.k[b][:, : kpos.size]).double(), pos


def nts_scores(trace, layout, layer: int, b: int = 0, *, norm: str = "minmax", cross_modal: bool = True) -> dict:
    """WETR Eq. 4-5 for sample ``b`` of an NTS/STR trace (contrastive scoring, first trigger layer:
    every visual / content token is a candidate), from the captured ``q_pos``, ``q_neg`` and ``vc`` rows.

    Returns a dict of numpy arrays: ``cand_v``, ``cand_c`` (positions), ``a_pos``, ``a_neg`` (``[K]``,
    every key), ``d_v``, ``d_c`` (Eq. 4), ``cross_v_raw``, ``cross_c_raw`` (Eq. 5's un-normalised
    cross-modal means), ``cross_v``, ``cross_c`` (their Norm) and ``s_v``, ``s_c`` (Eq. 5)."""
    cand_v, cand_c = layout.visual, layout.content
    a_pos = span_attention(capture_rows(trace, "q_pos", layer, b)[0])
    a_neg = span_attention(capture_rows(trace, "q_neg", layer, b)[0])
    out = {"cand_v": cand_v, "cand_c": cand_c, "a_pos": a_pos, "a_neg": a_neg,
           "d_v": contrastive_utility(a_pos[cand_v], a_neg[cand_v], norm),
           "d_c": contrastive_utility(a_pos[cand_c], a_neg[cand_c], norm)}
    if cross_modal:
        probs, pos = capture_rows(trace, "vc", layer, b)
        rows_c = np.flatnonzero(np.isin(pos, cand_c))     # content rows (I_con) -> visual keys
        rows_v = np.flatnonzero(np.isin(pos, cand_v))     # visual rows (I_v) -> content keys
        out["cross_v_raw"] = cross_modal_support(probs[:, rows_c], cand_v, raw=True)
        out["cross_c_raw"] = cross_modal_support(probs[:, rows_v], cand_c, raw=True)
        out["cross_v"] = normalize_scores(out["cross_v_raw"], norm)
        out["cross_c"] = normalize_scores(out["cross_c_raw"], norm)
        out["s_v"] = selection_score(out["d_v"], out["cross_v"])
        out["s_c"] = selection_score(out["d_c"], out["cross_c"])
    else:
        out["s_v"], out["s_c"] = selection_score(out["d_v"]), selection_score(out["d_c"])
    return out


def nts_keep(layout, scores: dict, p_v: float, p_t: float) -> dict:
    """WETR Eq. 6-7 from :func:`nts_scores`: ``kept_visual`` / ``kept_content`` (absolute positions,
    K_v and K_con) and ``m`` (``[seq_len]`` bool, the selection factor over the padded row)."""
    kv = scores["cand_v"][top_p(scores["s_v"], p_v)] if scores["cand_v"].size else scores["cand_v"]
    kc = scores["cand_c"][top_p(scores["s_c"], p_t)] if scores["cand_c"].size else scores["cand_c"]
    return {"kept_visual": kv, "kept_content": kc, "m": selection_mask(layout, kv, kc)}


def alpha_matrix(q, k, src, tgt, scaling: Optional[float] = None) -> np.ndarray:
    """WETR Eq. 9's alpha_ij per query head: ``[H, |src|, |tgt|]`` = softmax_j(q_i . k_j / sqrt(d)),
    query head h paired with its KV group's keys (head h -> kv head h // (H / H_kv), as the attention
    does). ``src`` / ``tgt`` index the token axis of ``q`` / ``k``. Rows sum to 1."""
    q = torch.as_tensor(q).double()
    k = torch.as_tensor(k).double()
    H, _, D = q.shape
    G = H // k.shape[0]
    src = torch.as_tensor(np.asarray(src, np.int64).reshape(-1))
    tgt = torch.as_tensor(np.asarray(tgt, np.int64).reshape(-1))
    kk = k[:, tgt].repeat_interleave(G, dim=0)                      # [H, T, D]
    sc = D ** -0.5 if scaling is None else float(scaling)
    return torch.softmax(torch.einsum("hsd,htd->hst", q[:, src], kk) * sc, dim=-1).cpu().numpy()


def layer_output(lm, batch, samples, method, layer: int) -> tuple:
    """Run ``method`` on an encoded batch and record decoder layer ``layer``'s output hidden states as
    the next layer receives them (after any ``h_i <- gamma_i h_i`` the method applies there).

    Returns ``(h [B, L, d] float32, trace)``. The recording hook is registered before the method's
    own residual hooks (which ``intervene`` prepends), so it sees the scaled stream."""
    from ..attention import decoder_layers

    rec = {}

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        rec["h"] = h.detach().float().cpu()

    handle = decoder_layers(lm.model)[layer].register_forward_hook(hook)
    try:
        _, trace = method.forward(lm, batch, samples, keep_captures=False)
    finally:
        handle.remove()
    return rec["h"], trace


# =========================================================================== removing tokens
def gold_prob(answers, samples, prompts) -> np.ndarray:
    """Probability (softmax over the option letters) of each sample's gold label: ``[B]``
    (NaN where the gold label is not an option)."""
    out = []
    for a, s, p in zip(answers, samples, prompts):
        letter = {lab: let for let, lab in p.options.items()}.get(s.label)
        out.append(float(a.option_probs[letter]) if letter in a.option_probs else np.nan)
    return np.asarray(out, dtype=np.float64)


def removal_keep(layouts, drops) -> torch.Tensor:
    """``[B, L]`` bool keep vector: False at the visual / content tokens named in ``drops[b]``
    (``{"visual": indices into layout.visual, "content": indices into layout.content}`` or None)."""
    L = layouts[0].seq_len
    keep = torch.ones(len(layouts), L, dtype=torch.bool)
    for b, (lay, d) in enumerate(zip(layouts, drops)):
        if not d:
            continue
        for g in ("visual", "content"):
            idx = np.asarray(d.get(g, []), dtype=np.int64).reshape(-1)
            if idx.size:
                keep[b, torch.as_tensor(getattr(lay, g)[idx])] = False
    return keep


def forward_removed(lm, samples: Sequence, prompts: Sequence, drops: Optional[Sequence] = None, *,
                    from_layer: int = 0, method=None, batch_size: int = 16) -> list:
    """Answers with chosen tokens removed from ``from_layer`` on (a ``KeyMask``: no other token attends
    them, exactly like deleting them; see ``intervene.py``).

    Args:
        drops: one entry per sample (see :func:`removal_keep`); None = remove nothing.
        method: None -> the frozen model; else a token method (``nts``/``str``...) whose own plan runs
            with the removal added (``method.forward(..., extra_ops=[KeyMask])``).
    Returns:
        one :class:`~emolens.answers.Answer` per sample (:func:`gold_prob` reads them with the prompts).
    """
    drops = list(drops) if drops is not None else [None] * len(samples)
    if not (len(samples) == len(prompts) == len(drops)):
        raise ValueError("samples, prompts and drops must have the same length")
    out = []
    for i in range(0, len(samples), batch_size):
        s, p, d = samples[i:i + batch_size], prompts[i:i + batch_size], drops[i:i + batch_size]
        batch = lm.encode(s, p)
        ops = [KeyMask(from_layer=from_layer, keep=removal_keep(batch.layouts, d))] if any(d) else []
        if method is None:
            with intervene(lm.model, batch.layouts, Plan(ops)):
                logits = answer_logits(lm.model, batch)
        else:
            logits, _ = method.forward(lm, batch, s, extra_ops=ops, keep_captures=False)
        out += read_answers(logits, batch.prompts, lm.option_token_ids)
    return out


def deletion_test(lm, samples: Sequence, task, method, *, n_random: int = 3, seed: int = 0,
                  batch_size: int = 16):
    """WETR Fig. 4 with a size-matched control: remove (from layer 0) the visual + content tokens
    ``method`` selects, or as many random tokens of the same modalities (``metrics.matched_random_mask``,
    ``n_random`` draws), and answer with the frozen model.

    Returns a tidy DataFrame: sample, condition (``full``, ``remove selected``, ``remove random``), rep,
    correct, p_gold, n_visual, n_content (tokens removed)."""
    import pandas as pd

    from ..methods.nts import NTS
    from ..metrics import matched_random_mask

    if not isinstance(method, NTS):
        raise ValueError(f"method {method.name} selects no tokens; the deletion test needs a selecting method "
                         f"(nts, its baselines, str or wetr)")
    prompts = method.prompts(samples, task)     # the method's own prompt (WETR's Q_pos/Q_neg spans)
    preds = []
    for i in range(0, len(samples), batch_size):
        preds += method.predict(lm, samples[i:i + batch_size], task, prompts[i:i + batch_size])
    sel = []
    for p in preds:
        if p.selected_visual is None:
            raise ValueError(f"method {method.name} selects no tokens; the deletion test needs a selecting method")
        sel.append((np.asarray(p.selected_visual, bool), np.asarray(p.selected_content, bool)))
    conds = [("full", 0, [None] * len(samples)),
             ("remove selected", 0, [{"visual": np.flatnonzero(v), "content": np.flatnonzero(c)} for v, c in sel])]
    for rep in range(n_random):
        rng = np.random.default_rng([int(seed), rep])
        drops = []
        for v, c in sel:
            mod = np.r_[np.zeros(v.size, np.int64), np.ones(c.size, np.int64)]
            r = matched_random_mask(np.r_[v, c], modality=mod, seed=rng)
            drops.append({"visual": np.flatnonzero(r[: v.size]), "content": np.flatnonzero(r[v.size:])})
        conds.append(("remove random", rep, drops))
    recs = []
    for name, rep, drops in conds:
        ans = forward_removed(lm, samples, prompts, drops, from_layer=0, batch_size=batch_size)
        pg = gold_prob(ans, samples, prompts)
        for j, (a, s, d) in enumerate(zip(ans, samples, drops)):
            recs.append({"sample": j, "condition": name, "rep": rep, "correct": a.label == s.label,
                         "p_gold": pg[j], "n_visual": 0 if d is None else len(d["visual"]),
                         "n_content": 0 if d is None else len(d["content"])})
    return pd.DataFrame(recs)


def gamma_group(gamma, tol: float = 1e-6) -> np.ndarray:
    """WETR Table 8 groups: ``DW`` (gamma < 1), ``NEU`` (gamma = 1 within tol), ``UW`` (gamma > 1)."""
    g = np.asarray(gamma, dtype=np.float64)
    return np.where(g < 1 - tol, "DW", np.where(g > 1 + tol, "UW", "NEU"))


def contribution_shift(lm, samples: Sequence, task, before, after, *, batch_size: int = 16):
    """WETR Table 8: each retained candidate token's decision contribution before and after STR.

    ``after`` is a single-trigger STR method, ``before`` the same selection without reweighting (``nts``
    with the same NTS parameters). Contribution of token i = p_gold(method) - p_gold(method with i
    removed once), the removal being a key mask from layer l + 1 on (the layer NTS's own mask starts
    at), so the selection and the gammas decided at layer l are unchanged and only i's influence on
    later layers goes.

    Returns a DataFrame: sample, group (visual/content), index (into the layout group), gamma,
    contrib_before, contrib_after."""
    import pandas as pd

    layers = after.trigger_layers(lm.num_layers)
    if len(layers) != 1 or before.trigger_layers(lm.num_layers) != layers:
        raise ValueError("contribution_shift needs two single-trigger methods on the same layer (nts and str)")
    l = layers[0]
    prompts = after.prompts(samples, task)      # the method's own prompt (WETR's Q_pos/Q_neg spans)
    toks, base = [], {"before": [], "after": []}
    for i in range(0, len(samples), batch_size):
        s, p = samples[i:i + batch_size], prompts[i:i + batch_size]
        batch = lm.encode(s, p)
        for key, m in (("before", before), ("after", after)):
            logits, trace = m.forward(lm, batch, s, keep_captures=False)
            ans = read_answers(logits, batch.prompts, lm.option_token_ids)
            base[key] += list(gold_prob(ans, s, p))
            if key == "after":
                adm, gam = trace.decisions["admitted"], trace.decisions["gamma"][l]
                for b, lay in enumerate(batch.layouts):
                    for g in ("visual", "content"):
                        pos = getattr(lay, g)
                        for k in np.flatnonzero(adm[b, pos]):
                            toks.append((i + b, g, int(k), float(gam[b, pos[k]])))
    rs = [samples[t[0]] for t in toks]
    rp = [prompts[t[0]] for t in toks]
    rd = [{t[1]: [t[2]]} for t in toks]
    drop = {}
    for key, m in (("before", before), ("after", after)):
        ans = forward_removed(lm, rs, rp, rd, from_layer=l + 1, method=m, batch_size=batch_size)
        drop[key] = gold_prob(ans, rs, rp)
    recs = []
    for j, (si, g, k, gam) in enumerate(toks):
        recs.append({"sample": si, "group": g, "index": k, "gamma": gam,
                     "contrib_before": base["before"][si] - drop["before"][j],
                     "contrib_after": base["after"][si] - drop["after"][j]})
    df = pd.DataFrame(recs)
    if len(df):
        df["weighting"] = gamma_group(df["gamma"].values)
    return df


# =========================================================================== EMass (Fig. 6)
def evidence_set(layout) -> np.ndarray:
    """The world's ground-truth evidence set K (positions): cue visual tokens + emotion words."""
    parts = []
    if layout.cue_visual is not None:
        parts.append(layout.visual[np.asarray(layout.cue_visual, bool)])
    if layout.cue_content is not None and layout.content.size:
        parts.append(layout.content[np.asarray(layout.cue_content, bool)])
    if not parts:
        raise ValueError("this layout has no ground truth (cue_visual/cue_content); EMass on a shared set needs it")
    return np.concatenate(parts)


def emass_batch(caps: dict, layer: int, layouts) -> list:
    """WETR Fig. 6 EMass per sample at ``layer`` (see :func:`emolens.metrics.emass`): attention mass on
    the shared evidence set K (the ground truth, :func:`evidence_set`) under the emotion-seeking span
    Q_pos relative to the noise-seeking span Q_neg. Needs captures of rows ``q_pos`` and ``q_neg``."""
    from ..metrics import emass

    pos, neg = caps[("q_pos", layer)], caps[("q_neg", layer)]
    out = []
    for b, lay in enumerate(layouts):
        a_pos = pos.sample(b).mean(dim=(0, 1)).cpu().numpy()
        a_neg = neg.sample(b).mean(dim=(0, 1)).cpu().numpy()
        out.append(float(emass(a_pos, a_neg, evidence_set(lay))))
    return out


__all__ = ["token_table", "layout_runs", "capture_rows", "capture_qk", "nts_scores", "nts_keep", "alpha_matrix", "layer_output", "gold_prob",
           "removal_keep", "forward_removed", "deletion_test", "gamma_group", "contribution_shift",
           "evidence_set", "emass_batch"]
