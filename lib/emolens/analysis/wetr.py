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


# =========================================================================== notebooks 01 / 02: scoring against the ground truth
# (added for issue 14: WETR Table 2 / Fig. 7 selection precision and STR's gamma scored against the
# world's cue words, with intervals; the "What we found" verdict word; the exercises' check)
def verdict(lo: float, hi: float, direction: int = +1) -> str:
    """A claim's word from the 95 % interval of its statistic (the rule of ``benchmarks/verdicts.py``):
    ``"HELD"`` when [lo, hi] excludes 0 in the claimed ``direction`` (+1: the statistic should be > 0),
    ``"FAILED"`` when it excludes 0 the other way, ``"UNRESOLVED"`` when it contains 0 or is undefined."""
    if direction not in (+1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction!r}")
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "UNRESOLVED"
    a, b = sorted((direction * lo, direction * hi))
    return "HELD" if a > 0 else "FAILED" if b < 0 else "UNRESOLVED"


def combine_verdicts(words: Sequence[str]) -> str:
    """A claim made of several comparisons: HELD iff every one held, FAILED if any failed, else UNRESOLVED."""
    words = list(words)
    if words and all(w == "HELD" for w in words):
        return "HELD"
    return "FAILED" if "FAILED" in words else "UNRESOLVED"


def _first_trigger(pred: dict) -> dict:
    recs = (pred.get("extra") or {}).get("nts")
    if not recs:
        raise ValueError("a prediction holds no NTS record (extra['nts']); score the result of a token-selecting "
                         "method (nts, its baselines, str or wetr), not zero-shot")
    return recs[0]


def _check_aligned(result: dict, layouts) -> list:
    preds = result["predictions"]
    if len(preds) != len(layouts):
        raise ValueError(f"{len(preds)} predictions but {len(layouts)} layouts; encode the same samples the result "
                         "scored (lm.encode(samples[:n], method.prompts(samples[:n], task)).layouts)")
    for lay in layouts:
        if lay.cue_visual is None or lay.cue_content is None:
            raise ValueError("a layout has no ground truth (cue_visual / cue_content); scoring needs a world dataset")
    return preds


def selection_table(result: dict, layouts):
    """Per sample, what a selecting method kept at its first trigger (the one that drops tokens) against
    the world's ground truth (WETR Table 2 / Fig. 7 precision and recall, with counts so intervals can be
    bootstrapped over samples with :func:`share_ci`).

    Args:
        result: an ``evaluate`` / ``cached_evaluate`` result of nts / random-select / query-select /
            qpos-select / str / wetr (its predictions' ``extra["nts"][0]["kept_visual"|"kept_content"]``).
        layouts: the samples' :class:`~emolens.layout.TokenLayout` in the same order (ground truth
            ``cue_visual``, ``cue_content``; encoding is enough, no forward).
    Returns:
        DataFrame, one row per sample: ``n_visual``, ``cue_visual`` (cue tokens), ``kept_visual``,
        ``hit_visual`` (kept cue tokens), and the same four for ``content`` (subtitle words).
    """
    import pandas as pd

    rows = []
    for p, lay in zip(_check_aligned(result, layouts), layouts):
        rec = _first_trigger(p)
        row = {"uid": p.get("uid")}
        for g in ("visual", "content"):
            cue = np.asarray(getattr(lay, f"cue_{g}"), bool)
            kept = np.asarray(rec[f"kept_{g}"], dtype=np.int64)
            row |= {f"n_{g}": cue.size, f"cue_{g}": int(cue.sum()), f"kept_{g}": int(kept.size),
                    f"hit_{g}": int(cue[kept].sum()) if kept.size else 0}
        rows.append(row)
    return pd.DataFrame(rows)


def gamma_cue_table(result: dict, layouts):
    """STR's gamma on every retained (kept) visual / content token at the first trigger, with the world's
    ground truth: is the token a cue (a face patch / the subtitle's emotion word)?

    Args:
        result: an ``evaluate`` result of ``str`` or ``wetr`` (``extra["nts"][0]["str"]`` holds
            ``gamma_visual`` / ``gamma_content`` in the order of ``kept_visual`` / ``kept_content``).
        layouts: the samples' layouts, same order.
    Returns:
        DataFrame, one row per retained token: ``sample`` (row index), ``modality``, ``index`` (into the
        layout's group), ``gamma``, ``anchor``, ``cue`` (bool), ``weighting`` (DW / NEU / UW, :func:`gamma_group`).
    """
    import pandas as pd

    rows = []
    for i, (p, lay) in enumerate(zip(_check_aligned(result, layouts), layouts)):
        rec = _first_trigger(p)
        st = rec.get("str")
        if st is None:
            raise ValueError("the result holds no STR record (extra['nts'][0]['str']); score a str / wetr run with use_str")
        for g in ("visual", "content"):
            kept, gam, anc = rec[f"kept_{g}"], st[f"gamma_{g}"], st[f"anchor_{g}"]
            if len(kept) != len(gam):
                raise ValueError(f"sample {i}: {len(kept)} kept {g} tokens but {len(gam)} gammas")
            cue = np.asarray(getattr(lay, f"cue_{g}"), bool)
            rows += [{"sample": i, "modality": g, "index": int(k), "gamma": float(x), "anchor": bool(a),
                      "cue": bool(cue[k])} for k, x, a in zip(kept, gam, anc)]
    df = pd.DataFrame(rows, columns=["sample", "modality", "index", "gamma", "anchor", "cue"])
    df["weighting"] = gamma_group(df["gamma"].to_numpy(dtype=float)) if len(df) else []
    return df


def share_ci(num, den, num_ref=None, den_ref=None, *, n_boot: int = 1000, seed: int = 0,
             alpha: float = 0.05) -> tuple:
    """A pooled share sum(num) / sum(den) over samples (e.g. kept cue tokens / kept tokens) with its
    percentile bootstrap interval, resampling *samples* (``metrics.bootstrap_stat``: tokens of one sample
    stay together). With ``num_ref`` / ``den_ref`` (the same samples) it is the paired difference
    share - share_ref (e.g. minus the chance share of cue tokens). Resamples whose denominator is 0 are
    left out. Returns ``(value, lo, hi)``; NaN value when the full denominator is 0."""
    from ..metrics import bootstrap_stat

    n, d = np.asarray(num, np.float64), np.asarray(den, np.float64)
    if n.shape != d.shape or n.ndim != 1 or n.size == 0:
        raise ValueError(f"num and den must be equal-length 1-d per-sample counts, got {n.shape} and {d.shape}")
    ref = num_ref is not None or den_ref is not None
    if ref:
        nr, dr = np.asarray(num_ref, np.float64), np.asarray(den_ref, np.float64)
        if nr.shape != n.shape or dr.shape != n.shape:
            raise ValueError("num_ref / den_ref must have one count per sample, like num / den")

    def stat(idx):
        with np.errstate(invalid="ignore", divide="ignore"):
            v = n[idx].sum() / d[idx].sum() if d[idx].sum() > 0 else np.nan
            if ref:
                v = v - (nr[idx].sum() / dr[idx].sum() if dr[idx].sum() > 0 else np.nan)
        return v

    return bootstrap_stat(stat, n.size, n=n_boot, seed=seed, alpha=alpha)


def check_exercise(attempt, solution, reference, *, what: str, rtol: float = 1e-7, atol: float = 1e-9) -> str:
    """The check cell of a walkthrough exercise: compare the reader's ``attempt`` (None while the stub is
    left empty) -- else the collapsed ``solution`` -- with the library's ``reference`` (``np.allclose``).

    Raises an AssertionError naming the largest difference when they disagree; returns the line to print,
    saying which implementation was checked (so a headless run with the empty stub passes and says so)."""
    who = "your implementation" if attempt is not None else "the solution (your stub returned None)"
    got = solution if attempt is None else attempt
    got = np.asarray(got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else got, dtype=np.float64)
    ref = np.asarray(reference.detach().cpu().numpy() if isinstance(reference, torch.Tensor) else reference,
                     dtype=np.float64)
    if got.shape != ref.shape:
        raise AssertionError(f"{what}: {who} returned shape {got.shape}, the library {ref.shape}")
    if not np.allclose(got, ref, rtol=rtol, atol=atol):
        raise AssertionError(f"{what}: {who} differs from the library by up to {np.nanmax(np.abs(got - ref)):.3g}")
    return f"{what}: {who} equals the library's result on {ref.size} values"


__all__ += ["verdict", "combine_verdicts", "selection_table", "gamma_cue_table", "share_ci", "check_exercise"]


# =========================================================================== notebook 03: EMass and the masking tautology
# (added for issue 14: WETR Fig. 6's EMass read honestly. A run that masks tokens measures attention over
# what the mask left, so EMass(WETR) mixes two things: which tokens were removed, and how the surviving
# tokens share the attention. The decomposition below separates them on the same samples.)
def attention_and_mask(lm, batch, samples, method=None, *, layer: int = -1,
                       rows: Sequence[str] = ("q_pos", "q_neg", "answer")):
    """Span-mean attention of each row group in ``rows`` at ``layer`` while ``method`` acts, and the
    selection factor m_i in force there.

    ``a[row][b, j]`` is WETR Eq. 4's ``a_{I->j}``: the attention from the span's rows to key j, averaged
    over heads and rows (``Capture(reduce="mean")``); masked keys and padding get 0.

    Args:
        batch: an encoded batch (``lm.encode(samples, prompts)``) whose prompts hold the spans in ``rows``.
        method: None (the frozen model) or an NTS-family method (nts, str, wetr, selection baselines).
        layer: the decoder layer read (negative counts from the end). With a method it must come after the
            method's last trigger layer, where m_i is final.
    Returns:
        ``(a, admitted, logits)``: ``a`` row name -> ``[B, L]`` float64 numpy; ``admitted`` ``[B, L]`` bool
        (m_i; all True for the frozen model and for a method that drops nothing); ``logits`` ``[B, V]``
        float32 on the CPU.
    """
    from ..intervene import Capture

    n = lm.num_layers
    if not -n <= int(layer) < n:
        raise ValueError(f"layer = {layer} is out of range for a {n}-layer model; use 0..{n - 1} or -1 for the last")
    layer = int(layer) % n
    B, L = len(batch.layouts), batch.layouts[0].seq_len
    ops = [Capture(layers=[layer], rows=r, name=f"readout:{r}", reduce="mean", offload="cpu") for r in rows]
    if method is None:
        with intervene(lm.model, batch.layouts, Plan(ops)) as trace:
            logits = answer_logits(lm.model, batch)
        admitted = np.ones((B, L), dtype=bool)
    else:
        if not hasattr(method, "forward") or not hasattr(method, "trigger_layers"):
            raise ValueError(f"method {getattr(method, 'name', method)!r} has no single-forward plan; use nts, str, "
                             "wetr or a selection baseline")
        last = max(method.trigger_layers(n))
        if layer <= last:
            raise ValueError(f"layer {layer} is not after {method.name}'s last trigger layer {last}: its mask is not "
                             f"final there; read a layer in {last + 1}..{n - 1} (-1 = the last)")
        logits, trace = method.forward(lm, batch, samples, extra_ops=ops, keep_captures=False)
        admitted = np.asarray(trace.decisions.get("admitted", np.ones((B, L), dtype=bool)), dtype=bool)
    a = {r: to_cpu(trace.captures[(f"readout:{r}", layer)].probs).double().numpy() for r in rows}
    return a, admitted, to_cpu(logits, float32=True)


def _share(row: np.ndarray, on: np.ndarray) -> float:
    tot = row.sum()
    return float(row[on].sum() / tot) if tot > 0 else float("nan")


def emass_parts(base: dict, run: dict, admitted, evidence) -> dict:
    """One sample's EMass three ways (WETR Fig. 6; :func:`emolens.metrics.emass`, ratio form), on the
    world's ground-truth evidence set K (``evidence``: bool ``[L]`` or positions):

    * ``emass_base``: the frozen model, every key;
    * ``emass_method``: the method's run, i.e. over the keys its mask left (what the paper's readout gives);
    * ``emass_base_kept``: the *frozen* attention restricted to the keys the method admitted and
      renormalised -- what removing the tokens does by itself, with no re-allocation.

    So ``emass_method - emass_base = (emass_base_kept - emass_base)`` [the mask alone: the tautology]
    ``+ (emass_method - emass_base_kept)`` [how the surviving tokens share attention under the method].
    Every EMass is NaN when K gets no attention (e.g. the mask removed all of K).

    Args:
        base, run: row name -> ``[L]`` span-mean attention (``q_pos``, ``q_neg``; optional ``answer``) of
            the frozen model and of the method (:func:`attention_and_mask`, one sample).
        admitted: ``[L]`` bool, m_i of the method's run.
    Returns:
        the three EMass values, ``k_size`` (|K|), ``k_kept`` (|K and admitted|) and, when ``answer`` rows
        are given, the answer row's share of attention on K three ways (``answer_k_base``,
        ``answer_k_method``, ``answer_k_base_kept``).
    """
    from ..metrics import emass

    m = np.asarray(admitted, dtype=bool).reshape(-1)
    L = m.size
    k = np.asarray(evidence)
    on = k.astype(bool) if k.dtype == bool else np.isin(np.arange(L), k.astype(np.int64))
    if on.size != L:
        raise ValueError(f"evidence has {on.size} entries but admitted has {L}; pass one row of the same batch")
    for name, d in (("base", base), ("run", run)):
        for r in ("q_pos", "q_neg"):
            if r not in d or np.asarray(d[r]).shape != (L,):
                raise ValueError(f"{name}[{r!r}] must be a [{L}] attention row (attention_and_mask(..., rows=("
                                 "'q_pos', 'q_neg', ...)) of the same sample)")
    bp, bn = (np.asarray(base[r], np.float64) for r in ("q_pos", "q_neg"))
    out = {"emass_base": float(emass(bp, bn, on)),
           "emass_method": float(emass(np.asarray(run["q_pos"], np.float64), np.asarray(run["q_neg"], np.float64), on)),
           "emass_base_kept": float(emass(bp * m, bn * m, on)),
           "k_size": int(on.sum()), "k_kept": int((on & m).sum())}
    if "answer" in base and "answer" in run:
        ba = np.asarray(base["answer"], np.float64)
        out |= {"answer_k_base": _share(ba, on), "answer_k_method": _share(np.asarray(run["answer"], np.float64), on),
                "answer_k_base_kept": _share(ba * m, on)}
    return out


def emass_decomposition(lm, samples: Sequence, task, method, *, layer: int = -1, batch_size: int = 32):
    """WETR Fig. 6's EMass of the frozen model and of ``method`` on the same samples, with the part the
    method's mask explains by itself (:func:`emass_parts`), at ``layer`` (after the last trigger).

    Both forwards use the method's own prompt (WETR's Q_pos / Q_neg spans: EMass needs them, so the frozen
    model is read with that prompt too, not the plain zero-shot query), so the layouts and K are identical.

    Returns:
        DataFrame, one row per sample: ``uid``, the columns of :func:`emass_parts`, ``kept_visual``
        (admitted visual tokens), ``hit_visual`` (admitted ground-truth cue tokens), ``cue_visual``,
        ``n_visual`` (so precision against chance is ``hit / kept`` vs ``cue / n``).
    """
    import pandas as pd

    prompts = method.prompts(samples, task)
    recs = []
    for i in range(0, len(samples), batch_size):
        s, p = samples[i:i + batch_size], prompts[i:i + batch_size]
        batch = lm.encode(s, p)
        base, _, _ = attention_and_mask(lm, batch, s, None, layer=layer)
        run, adm, _ = attention_and_mask(lm, batch, s, method, layer=layer)
        for b, lay in enumerate(batch.layouts):
            parts = emass_parts({r: v[b] for r, v in base.items()}, {r: v[b] for r, v in run.items()}, adm[b],
                                evidence_set(lay))
            cue = np.asarray(lay.cue_visual, bool)
            kept = adm[b, lay.visual]
            recs.append({"uid": getattr(s[b], "uid", i + b), **parts, "kept_visual": int(kept.sum()),
                         "hit_visual": int((kept & cue).sum()), "cue_visual": int(cue.sum()),
                         "n_visual": int(cue.size)})
    return pd.DataFrame(recs)


__all__ += ["attention_and_mask", "emass_parts", "emass_decomposition"]
