"""Physical token pruning: the ``prune=True`` form of a key mask (issue 13).

A ``KeyMask`` (static, or set by an ``AfterLayer`` callback with ``ctx.mask_keys``) excludes keys from a
layer ``l`` and every later layer, for every row: no kept token ever reads a dropped one again. Such
tokens can be *removed*: from layer ``l`` on the decoder processes only the kept tokens, so every later
layer's attention and MLP cost shrink with the kept fraction (FastV / PyramidDrop's speed-up, here
without rewriting any forward).

How (no forward is rewritten): a forward pre-hook *with kwargs* on every decoder layer
(``register_forward_pre_hook(..., with_kwargs=True)``), driven by the intervention session's plan:

* prefill, at the pre-hook of layer ``j``: the combined keep vector of layer ``j`` (original
  positions, ``[B, L]``) restricted to the tokens still present; when it drops any, gather the kept
  hidden states ``[B, n, D]`` and, for this and every later layer, the matching slices of what the
  model precomputed once for all layers: ``position_embeddings`` (``cos, sin``: ``[.., B, L, d]``,
  mrope's ``[3, B, L, d]`` included), ``position_ids`` (``[.., B, L]``, 3-D mrope ids included) and the
  attention mask (``[B, 1, L, L]`` -> ``[B, 1, n, n]``; None stays None: causal order is kept because
  kept positions stay sorted). Position ids are the *original* ones (no renumbering), so RoPE sees
  the same relative distances as in mask mode.
* the same keep count for every row of a batch (nothing is re-padded): a row that keeps fewer tokens
  than the batch's largest keep count keeps some of its dropped tokens physically present, still
  excluded by the key mask (exactly mask mode for them). Left padding stays masked by the mask.
* decode steps of ``generate()``: a pruned layer's KV cache holds only the kept prompt tokens (the
  prefill wrote ``n`` entries; there is no extra scoring forward, so no duplicate entry); the
  attention mask of width ``L + t`` that transformers builds is cut to the cache's ``n + t`` columns
  (kept prompt columns + every generated token). New tokens' positions continue the original
  numbering: transformers takes the past length from layer 0's cache; when layer 0 itself is pruned
  (SEPM's VTA) the methods pass position ids explicitly (emolens-tiny derives them from the attention
  mask), which continue from ``L``.
* inside a pruned layer the attention function sees compact tensors. Layers with no capture / edit /
  callback run SDPA on the kept tokens (no mask built when there is no padding). Layers with ops
  (WETR's later triggers) compute their rows in original coordinates: q/k/v are scattered into
  zero-filled ``[.., L, D]`` tensors (dropped keys are masked, so the zeros are never read by a kept
  row), so every capture, edit and callback sees exactly what it sees in mask mode.

Limits: models that add to the hidden states between decoder layers at fixed positions (Qwen3-VL's
deepstack visual embeddings after its first layers) run those layers in mask mode and prune after
them; layer 0 always runs in mask mode (its cache length is what transformers numbers new positions
from); the default ``DynamicCache`` only.
"""
from __future__ import annotations

from typing import Optional

import torch


def _expand_batch(t: torch.Tensor, bdim: int, B: int) -> torch.Tensor:
    if t.shape[bdim] == B:
        return t
    shape = list(t.shape)
    shape[bdim] = B
    return t.expand(*shape)


def take(t: torch.Tensor, idx: torch.Tensor, seq_dim: int) -> torch.Tensor:
    """Gather ``idx [B, n]`` along ``seq_dim`` of ``t``, whose batch axis is the one right before it
    (``[.., B, L]`` position ids, ``[.., B, L, d]`` cos/sin, ``[B, L, D]`` hidden states). A batch axis of
    size 1 (shared by every row) is expanded first."""
    nd = t.dim()
    sd = seq_dim % nd
    bd = sd - 1
    B, n = idx.shape
    t = _expand_batch(t, bd, B)
    shape = [1] * nd
    shape[bd], shape[sd] = B, n
    ix = idx.view(shape)
    full = list(t.shape)
    full[sd] = n
    return t.gather(sd, ix.expand(*full))


def take_mask(mask, rows: Optional[torch.Tensor], cols: torch.Tensor):
    """Cut an attention mask ``[B|1, 1|H, Q, K]`` (or a dict of them, or None) to ``rows [B, n]`` query
    rows (None: all) and ``cols [B, m]`` key columns."""
    if mask is None:
        return None
    if isinstance(mask, dict):
        return {k: take_mask(v, rows, cols) for k, v in mask.items()}
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        return mask
    B = cols.shape[0]
    m = _expand_batch(mask, 0, B)
    m = m.gather(3, cols[:, None, None, :].expand(B, m.shape[1], m.shape[2], cols.shape[1]))
    if rows is not None:
        m = m.gather(2, rows[:, None, :, None].expand(B, m.shape[1], rows.shape[1], m.shape[3]))
    return m


def select(present_keep: torch.Tensor) -> torch.Tensor:
    """Indices ``[B, n]`` (ascending) into the present tokens of the ones to keep physically, ``n`` the
    largest keep count of the batch: rows keeping fewer also keep their earliest dropped tokens (still
    masked), so every row has ``n`` (no re-padding)."""
    B, N = present_keep.shape
    n = int(present_keep.sum(1).max())
    ar = torch.arange(N, device=present_keep.device)
    key = (~present_keep).long() * N + ar[None]
    return key.topk(n, dim=1, largest=False).indices.sort(dim=1).values


def deepstack_layers(model) -> int:
    """How many leading decoder layers get visual features added after them (Qwen3-VL deepstack); a
    prune must start at or after that layer."""
    cfg = getattr(model, "config", None)
    vc = getattr(cfg, "vision_config", None)
    return len(getattr(vc, "deepstack_visual_indexes", None) or ())


class Pruner:
    """Physical pruning of one intervention session (see the module docstring).

    ``keep_for(layer, K, device) -> [B, K] bool | None`` gives the combined key-keep vector of a layer in
    original coordinates (the session's); ``L`` is the prompt length.

    State: ``index[layer]``: ``[B, n]`` original positions of the prompt tokens present in that layer
    (set in prefill, reused on decode steps); absent = the layer is not pruned.
    """

    def __init__(self, keep_for, L: int, n_layers: int, min_layer: int = 0):
        self.keep_for = keep_for
        self.L = L
        self.n_layers = n_layers
        self.min_layer = min_layer
        self.index: dict = {}
        self.phase = None
        self._cur = None
        self._full_mask = None
        self._sliced = None

    # ------------------------------------------------------------------ hooks
    def install(self, layers) -> list:
        return [layer.register_forward_pre_hook(self._hook(j), with_kwargs=True) for j, layer in enumerate(layers)]

    def _hook(self, j: int):
        def hook(module, args, kwargs):
            return self.pre_layer(j, args, kwargs)
        return hook

    def pre_layer(self, j, args, kwargs):
        h = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(h, torch.Tensor) or h.dim() != 3:
            return None
        if j == 0:
            self.phase = "prefill" if h.shape[1] == self.L else "decode"
            if self.phase == "prefill":
                self.index.clear()
                self._cur = None
                self._sliced = None
            self._full_mask = kwargs.get("attention_mask")
        if self.phase == "prefill":
            h = self._prune_prefill(j, h)
            cur = self._cur
            if cur is None:
                return None
            self.index[j] = cur
            kwargs = dict(kwargs)
            if self._sliced is None or self._sliced[0] is not cur:   # recut once per new present set
                self._sliced = (cur, self._slice_inputs(cur, kwargs))
            kwargs.update(self._sliced[1])
        else:
            idx = self.index.get(j)
            if idx is None:
                return None
            mask = kwargs.get("attention_mask")
            if mask is None:
                return None
            kwargs = dict(kwargs)
            K_full = _mask_width(mask)
            gen = torch.arange(self.L, K_full, device=idx.device)[None].expand(idx.shape[0], -1)
            kwargs["attention_mask"] = take_mask(mask, None, torch.cat([idx, gen], 1))
        if args:
            args = (h,) + tuple(args[1:])
        else:
            kwargs["hidden_states"] = h
        return args, kwargs

    def _prune_prefill(self, j, h):
        if j < self.min_layer:       # mask mode below min_layer (the session's attention applies the mask)
            return h
        keep = self.keep_for(j, self.L, h.device)
        if keep is None:
            return h
        cur = self._cur
        pk = keep if cur is None else keep.gather(1, cur)
        n_cur = pk.shape[1]
        if bool(pk.all()):
            return h
        sel = select(pk)
        if sel.shape[1] == n_cur:     # some row keeps every present token: nothing can go
            return h
        self._cur = sel if cur is None else cur.gather(1, sel)
        return take(h, sel, 1)

    def _slice_inputs(self, cur, kwargs):
        """What the model precomputed for all layers, cut to the present tokens ``cur [B, n]``."""
        out = {}
        pe = kwargs.get("position_embeddings")
        if isinstance(pe, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in pe):
            out["position_embeddings"] = tuple(take(t, cur, -2) if t.dim() >= 3 and t.shape[-2] == self.L else t
                                               for t in pe)
        pid = kwargs.get("position_ids")
        if isinstance(pid, torch.Tensor) and pid.dim() >= 2 and pid.shape[-1] == self.L:
            out["position_ids"] = take(pid, cur, -1)
        if "attention_mask" in kwargs:
            out["attention_mask"] = take_mask(self._full_mask, cur, cur)
        cp = kwargs.get("cache_position")
        if isinstance(cp, torch.Tensor) and cp.dim() == 1 and cp.shape[0] == self.L:
            out["cache_position"] = cur[0] if bool((cur == cur[:1]).all()) else torch.arange(cur.shape[1], device=cp.device)
        return out

    # ------------------------------------------------------------------ what the attention function needs
    def view(self, layer: int, Q: int, K: int):
        """For a pruned layer: ``(key_pos [B, K] original positions of the cache's keys, Q_full, K_full)``;
        else None."""
        idx = self.index.get(layer)
        if idx is None:
            return None
        n = idx.shape[1]
        if self.phase == "prefill" and K == n:
            return idx, self.L, self.L
        K_full = self.L + (K - n)
        gen = torch.arange(self.L, K_full, device=idx.device)[None].expand(idx.shape[0], -1)
        return torch.cat([idx, gen], 1), Q, K_full

    @property
    def full_mask(self):
        return self._full_mask

    def kept_fraction(self) -> Optional[dict]:
        """layer -> present prompt tokens / L (after the last prefill)."""
        return {j: idx.shape[1] / self.L for j, idx in sorted(self.index.items())}


def _mask_width(mask) -> int:
    if isinstance(mask, dict):
        return _mask_width(next(iter(mask.values())))
    return int(mask.shape[-1])


def scatter_full(x: torch.Tensor, pos: torch.Tensor, n_full: int) -> torch.Tensor:
    """``x [B, H, n, D]`` at original positions ``pos [B, n]`` -> zero-filled ``[B, H, n_full, D]``."""
    B, H, n, D = x.shape
    out = x.new_zeros(B, H, n_full, D)
    out.scatter_(2, pos[:, None, :, None].expand(B, H, n, D), x)
    return out


def inverse(pos: torch.Tensor, n_full: int) -> torch.Tensor:
    """``pos [B, n]`` original positions -> ``[B, n_full]`` compact index (-1 where absent)."""
    B, n = pos.shape
    inv = torch.full((B, n_full), -1, dtype=torch.long, device=pos.device)
    inv.scatter_(1, pos, torch.arange(n, device=pos.device)[None].expand(B, n))
    return inv


# =========================================================================== the plan op and its handler
from dataclasses import dataclass  # noqa: E402


@dataclass
class Prune:
    """Plan op: the plan's key masks (``KeyMask`` and ``ctx.mask_keys``) remove the excluded tokens
    physically from the first layer > 0 at which they apply (see the module docstring). Layer 0 always
    runs in mask mode: it writes the cache entries transformers counts to number new positions."""

    min_layer: int = 1


class PrunedAttention:
    """What the attention registry holds for a pruning session: pruned layers run on the kept tokens;
    everything else (and every capture, edit and callback) goes to the session in original coordinates."""

    def __init__(self, session, pruner: Pruner):
        self.session, self.pruner = session, pruner

    def _has_ops(self, layer) -> bool:
        s = self.session
        return bool(s.caps[layer] or s.edits[layer] or s.afters[layer])

    def attend(self, layer, module, query, key, value, attention_mask, scaling, dropout, kwargs):
        from . import attention as A

        s, pr = self.session, self.pruner
        B, H, Q, D = query.shape
        K = key.shape[2]
        view = pr.view(layer, Q, K) if layer > 0 else None
        if view is None:
            return s.attend(layer, module, query, key, value, attention_mask, scaling, dropout, kwargs)
        key_pos, Qf, Kf = view
        if self._has_ops(layer):
            qf = scatter_full(query, key_pos, Qf) if Qf != Q else query
            out_f, _ = s.attend(layer, module, qf, scatter_full(key, key_pos, Kf), scatter_full(value, key_pos, Kf),
                                pr.full_mask, scaling, dropout, kwargs)
            if Qf != Q:
                out_f = out_f.gather(1, key_pos[:, :, None, None].expand(B, Q, out_f.shape[2], out_f.shape[3]))
            return out_f, None
        keep_f = s._keep_for(layer, Kf, query.device)
        keep = None if keep_f is None else keep_f.gather(1, key_pos)
        if keep is None or bool(keep.all()):
            return A.sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                            scaling=scaling, **kwargs)
        if attention_mask is None and Q == K:
            idx = A.compact_index(keep)
            if idx is not None:
                return A.compact_attention(module, query, key, value, idx, scaling, dropout, kwargs), None
        mask = A.full_allowed(attention_mask, B, Q, K, keep)
        return A.sdpa(module, query, key, value, mask, scaling, dropout, kwargs), None

    def post_hook(self, layer):
        """``ResidualScale`` on a pruned layer's output (the session's own hook acts on full-length outputs)."""
        def hook(module, args, output):
            pr = self.pruner
            idx = pr.index.get(layer)
            if pr.phase != "prefill" or idx is None:
                return None
            h = output[0] if isinstance(output, tuple) else output
            if not isinstance(h, torch.Tensor) or h.dim() != 3 or h.shape[1] != idx.shape[1]:
                return None
            g = self.session._gamma_for(layer, h.device)
            if g is None:
                return None
            h = h * take(g, idx, 1)[:, :, None].to(h.dtype)
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
        return hook


def install(model, session, ops) -> Optional[tuple]:
    """Handle the plan's :class:`Prune` ops: ``(attention handler, hook handles)`` or None when the plan
    has none. The caller registers the handler in the attention registry and removes the hooks on exit."""
    prunes = [op for op in ops if isinstance(op, Prune)]
    if not prunes:
        return None
    min_layer = max([1, deepstack_layers(model)] + [int(op.min_layer) for op in prunes])
    pruner = Pruner(session._keep_for, session.L, session.n_layers, min_layer=min_layer)
    handler = PrunedAttention(session, pruner)
    handles = pruner.install(session.layers)
    for j in range(session.n_layers):
        handles.append(session.layers[j].register_forward_hook(handler.post_hook(j)))
    session.pruner = pruner
    return handler, handles
