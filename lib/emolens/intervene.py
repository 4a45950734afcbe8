"""Intervention plans and the ``intervene`` context manager.

A plan is plain data: a list of ops, each a dataclass::

    plan = Plan([
        Capture(layers=[3, 4], rows="q_pos", qk_positions="visual"),   # record attention rows (+ q, k)
        KeyMask(from_layer=5, keep=keep),                             # drop keys from layer 5 on
        RowEdit(layers="all", rows="answer", fn=reallocate),          # replace rows' probabilities
        ResidualScale(layer=4, gamma=gamma),                          # h_i <- gamma_i h_i after layer 4
        AfterLayer(layer=4, fn=decide),                               # decide inside the same forward
    ])
    with intervene(model, layouts, plan) as trace:
        out = model(**inputs)
    trace.captures[("q_pos", 3)].probs        # [B, H, R, K]

How it acts (see ``attention.py``): the model's text attention is the single ``"emolens"``
attention function; ``intervene`` registers a session for each decoder layer's attention module in
a module-level registry and, for residual-stream edits, forward hooks on decoder layers. Both are
removed on exit, also when the body raises, so the model afterwards is exactly the stock model.
Inside, the session hands each plan kind to its own handler (``_CaptureOps``, ``_KeyMaskOps``,
``_RowEditOps``, ``_ResidualScaleOps``, ``_AfterLayerOps``); the session itself only keeps the
per-forward bookkeeping (prefill / decode step) and makes the attention call.

Semantics, in one place:

* Positions are absolute indices into the left-padded row (``TokenLayout``), which are also key
  indices (the KV cache starts at 0).
* ``steps``: ``"prefill"`` is the forward over the whole prompt (``Q == K == seq_len``); a decode step
  is a forward with a cache holding at least the prompt (``generate()``: one new row per step).
  On decode steps, the rows of ``Capture``/``RowEdit`` are the new query rows (older rows' queries are
  not recomputed by the model), whatever ``rows`` says.
* ``rows``: ``"last"`` = the last query row of each forward (the answer row at prefill, the new token
  at each decode step); ``"answer"`` = ``layout.answer``; any ``TokenLayout.group`` name (``"visual"``,
  ``"q_pos"``, ...); or a list of per-sample position arrays. Samples may have different row counts:
  rows are padded to ``R = max`` with ``positions = -1`` and ``row_valid = False`` (probabilities 0).
* ``KeyMask``: keys with ``keep = False`` are excluded from ``from_layer`` and every later layer, on the
  prefill and on every decode step (keys beyond the prompt, i.e. generated tokens, are always kept).
  Each query row always keeps its own (diagonal) key, so no row is ever fully masked: kept rows attend
  kept keys only, and a dropped token's own row attends its own key only (its hidden state stays
  finite and isolated). No other token attends to a dropped token, which is exactly "removing it" for
  every other token (tested against physically deleting the tokens with the same position ids).
  Layers ``< from_layer`` are untouched. Without padding (no mask from transformers) the prefill runs
  SDPA's causal kernel over the kept tokens only (no N x N mask is built); otherwise the layer's bool
  mask is combined with the keep vector once per forward.
* ``RowEdit``: ``stage="probs"``: ``fn(probs [B, H, R, K], ctx) -> probs'`` replaces the softmax
  probabilities (masked keys are 0; the returned values are used as they are, not renormalised);
  ``stage="logits"``: ``fn(scores [B, H, R, K], ctx) -> scores'`` edits the scaled pre-softmax scores
  ``q.k * scaling`` *before* masking; causal, padding and key masks are applied after ``fn``. The
  edited rows' outputs are recomputed as ``P' V`` (float32) and written into the SDPA output of the
  layer, whose other rows are untouched. Rows of several ``RowEdit`` s on one layer are computed from
  the same unedited probabilities; where rows overlap the later op wins.
* ``ResidualScale``: ``h_i <- gamma_i h_i`` on the decoder layer's output for the prefill positions.
  On decode steps the prefill hidden states already live in the KV cache, so the scaling acts on the
  prefill and is carried through the cache; new tokens are not scaled.
* ``AfterLayer``: ``fn(ctx)`` runs right after layer ``l``'s attention output is computed (inside the
  same forward), with ``ctx.captures`` (this layer's captures by name), ``ctx.layouts``,
  ``ctx.decisions`` and ``ctx.mask_keys(keep, from_layer=l+1)`` / ``ctx.scale_residual(gamma, layer=l)``:
  one forward captures, decides and applies (WETR's NTS + STR at a trigger layer). Masks and scales set
  by callbacks persist through the decode steps of the same ``generate()`` and are cleared when a new
  prefill starts.
* Captures are detached, float32, on the layer's device. Inference only: attention dropout is ignored
  on edited rows. Supported caches: transformers' default ``DynamicCache`` (key index == position).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from . import attention as _attn
from .layout import TokenLayout

STEPS = ("prefill", "decode", "all")
STAGES = ("probs", "logits")

Rows = Union[str, Sequence]


# =========================================================================== plan ops
@dataclass
class Capture:
    """Record softmax probabilities of chosen query rows against all keys, head-resolved.

    Args:
        layers: decoder layer indices or ``"all"``.
        rows: ``"last"``, ``"answer"``, a ``TokenLayout.group`` name, or per-sample position arrays.
        name: key in ``trace.captures`` (default: ``rows`` when it is a string, else ``"rows"``).
        qk_positions: a group name (or per-sample arrays): also record the query vectors of the rows
            (``q [B, H, R, D]``) and the key vectors at these positions (``k [B, Hkv, R', D]``).
        qk_rope: ``"post"`` (default): q and k as the attention function receives them (after any
            q/k norm, after RoPE); ``"pre"``: the same vectors with the rotary embedding undone, i.e.
            the frozen projections' output after any q/k norm and *before* RoPE (WETR Eq. 9's reading).
            The layer's ``position_embeddings`` (cos, sin) are read by a forward pre-hook on the
            decoder layer and RoPE is inverted exactly (x = x' cos - rotate_half(x') sin, on the
            rotary dimensions). Prefill only.
        steps: ``"prefill"``, ``"decode"`` or ``"all"``.
        reduce: ``None`` (default): the full ``probs [B, H, R, K]``; ``"heads"``: the mean over heads,
            ``probs [B, R, K]``; ``"mean"``: the mean over heads and the valid rows, ``probs [B, K]``
            (a span's per-key attention, WETR's ``a_{I->i}``). The reduction runs inside the attention
            function in chunks of rows (:data:`REDUCE_CHUNK_BYTES` of float32 scores at a time), so the
            full ``[B, H, R, K]`` tensor is never stored: on LLaVA-7B (32 heads, ~600 visual + content
            rows) that is 32x less for ``"heads"``. ``None`` keeps the full capture (before/after runs).
        offload: ``None`` or ``"cpu"``: move this op's records to the CPU as they are made (decode-step
            captures of a long ``generate()`` then grow in host memory, not on the GPU).
    """

    layers: Union[Sequence[int], str] = "all"
    rows: Rows = "answer"
    name: Optional[str] = None
    qk_positions: Optional[Rows] = None
    steps: str = "prefill"
    reduce: Optional[str] = None
    offload: Optional[str] = None
    qk_rope: str = "post"


REDUCES = (None, "heads", "mean")
QK_ROPES = ("post", "pre")
OFFLOADS = (None, "cpu")
#: bytes of float32 scores a reducing capture materialises at a time ([B, H, chunk, K])
REDUCE_CHUNK_BYTES = 64 * 2**20


@dataclass
class KeyMask:
    """Exclude keys with ``keep = False`` (``[B, L]`` bool, or ``[L]`` for every row) from ``from_layer``
    and every later layer (prefill and decode steps)."""

    from_layer: int
    keep: Any


@dataclass
class RowEdit:
    """Replace chosen rows' attention: ``stage="probs"``: ``fn(probs, ctx) -> probs'``;
    ``stage="logits"``: ``fn(scores, ctx) -> scores'`` (pre-softmax, before masking).
    ``name``: also record the edited probabilities in ``trace.captures[(name, layer)]``."""

    layers: Union[Sequence[int], str]
    rows: Rows
    fn: Callable
    stage: str = "probs"
    steps: str = "prefill"
    name: Optional[str] = None


@dataclass
class ResidualScale:
    """``h_i <- gamma_i h_i`` on decoder layer ``layer``'s output (prefill positions); ``gamma``:
    ``[B, L]`` float (or ``[L]`` for every row)."""

    layer: int
    gamma: Any


@dataclass
class AfterLayer:
    """``fn(ctx: LayerContext)`` right after layer ``layer``'s attention output is computed."""

    layer: int
    fn: Callable
    steps: str = "prefill"


from .prune import Prune  # noqa: E402  (physical pruning: its own plan kind, handled in prune.py)

OPS = (Capture, KeyMask, RowEdit, ResidualScale, AfterLayer, Prune)


def _describe_value(v):
    if isinstance(v, str) or v is None or isinstance(v, (bool, int, float)):
        return v
    if callable(v):
        return getattr(v, "__qualname__", getattr(v, "__name__", type(v).__name__))
    if isinstance(v, (np.ndarray, torch.Tensor)):
        return {"shape": list(v.shape), "dtype": str(v.dtype)}
    if isinstance(v, (list, tuple)):
        if all(isinstance(x, (int, np.integer)) for x in v):
            return [int(x) for x in v]
        return {"per_sample": [int(np.asarray(x).size) for x in v]}
    return repr(v)


@dataclass
class Plan:
    """An ordered list of plan ops."""

    ops: list = field(default_factory=list)

    def __post_init__(self):
        if isinstance(self.ops, OPS):
            self.ops = [self.ops]
        self.ops = list(self.ops)
        for op in self.ops:
            if not isinstance(op, OPS):
                raise ValueError(f"unknown plan op {type(op).__name__}; use Capture, KeyMask, RowEdit, "
                                 f"ResidualScale, AfterLayer or Prune")

    def describe(self) -> dict:
        """Plain-dict description (JSON-serialisable)."""
        out = []
        for op in self.ops:
            d = {"op": type(op).__name__}
            for k, v in op.__dict__.items():
                d[k] = _describe_value(v)
            out.append(d)
        return {"ops": out}


# =========================================================================== records
@dataclass
class AttnCapture:
    """Captured attention rows of one layer.

    Attributes:
        probs: ``[B, H, R, K]`` float32 softmax probabilities (0 on invalid rows and masked keys);
            ``[B, R, K]`` (head mean) or ``[B, K]`` (head and valid-row mean) when ``reduced`` says so.
        positions: ``[B, R]`` int64 absolute row positions, ``-1`` on padding rows.
        row_valid: ``[B, R]`` bool.
        q: ``[B, H, R, D]`` query vectors of the rows when ``qk_positions`` was given (post-RoPE, or
            pre-RoPE with ``Capture.qk_rope="pre"``).
        k: ``[B, Hkv, R', D]`` key vectors at ``k_positions`` (``[B, R']``, -1 pad; ``k_valid``).
        reduced: ``None``, ``"heads"`` or ``"mean"`` (``Capture.reduce``).
    Everything is float32 (q and k too, whatever the model's dtype).
    """

    name: str
    layer: int
    step: Any
    probs: torch.Tensor
    positions: torch.Tensor
    row_valid: torch.Tensor
    q: Optional[torch.Tensor] = None
    k: Optional[torch.Tensor] = None
    k_positions: Optional[torch.Tensor] = None
    k_valid: Optional[torch.Tensor] = None
    reduced: Optional[str] = None

    def sample(self, b: int) -> torch.Tensor:
        """Probabilities of sample ``b``'s valid rows: ``[H, r_b, K]`` (``[1, r_b, K]`` for
        ``reduced="heads"``: one, already head-averaged, head; ``[K]`` for ``"mean"``)."""
        if self.reduced == "mean":
            return self.probs[b]
        if self.reduced == "heads":
            return self.probs[b][self.row_valid[b].to(self.probs.device)][None]
        return self.probs[b][:, self.row_valid[b].to(self.probs.device)]


@dataclass
class Trace:
    """What an intervention recorded.

    ``captures[(name, layer)]`` -> :class:`AttnCapture` of the (latest) prefill;
    ``decode_captures[s][(name, layer)]`` for decode step ``s`` (0 = the first generated token's
    forward); ``decisions``: a dict callbacks write into (e.g. NTS keep sets, STR gammas).
    """

    layouts: list
    plan: Plan
    captures: dict = field(default_factory=dict)
    decode_captures: list = field(default_factory=list)
    decisions: dict = field(default_factory=dict)

    def get(self, name: str, layer: int) -> AttnCapture:
        try:
            return self.captures[(name, layer)]
        except KeyError:
            have = sorted(self.captures)
            raise KeyError(f"no capture ({name!r}, {layer}); captured: {have}") from None


class RowContext:
    """What a ``RowEdit`` callback sees: ``layer``, ``step`` ('prefill' or decode index), ``layouts``,
    ``positions [B, R]``, ``row_valid [B, R]``, ``allowed [B, 1, R, K]`` (keys the rows may attend),
    ``decisions``, and ``keys_in(group) -> [B, K]`` bool (keys of a token group, per sample)."""

    def __init__(self, session, layer, step, positions, row_valid, allowed, K):
        self._s = session
        self.layer, self.step = layer, step
        self.layouts = session.layouts
        self.positions, self.row_valid, self.allowed = positions, row_valid, allowed
        self.decisions = session.trace.decisions
        self.K = K

    def keys_in(self, group: str) -> torch.Tensor:
        return self._s.group_keys(group, self.K, self.positions.device)


class LayerContext:
    """What an ``AfterLayer`` callback sees (see the module docstring)."""

    def __init__(self, session, layer, step, captures, K, device):
        self._s = session
        self.layer, self.step, self.captures = layer, step, captures
        self.layouts = session.layouts
        self.trace = session.trace
        self.decisions = session.trace.decisions
        self.n_layers = session.n_layers
        self.K = K
        self.device = device

    def keys_in(self, group: str) -> torch.Tensor:
        return self._s.group_keys(group, self.K, self.device)

    def mask_keys(self, keep, from_layer: Optional[int] = None) -> None:
        """Exclude keys with ``keep = False`` (``[B, L]``) from ``from_layer`` (default ``layer + 1``) on."""
        fl = self.layer + 1 if from_layer is None else int(from_layer)
        if fl <= self.layer or fl >= self.n_layers:
            raise ValueError(f"mask_keys from an after-layer callback at layer {self.layer} acts on later layers "
                             f"only: use {self.layer + 1} <= from_layer < {self.n_layers} (got {fl})")
        self._s.masks.add_dynamic(fl, self._s.as_rows(keep, torch.bool, "keep", self.device))

    def scale_residual(self, gamma, layer: Optional[int] = None) -> None:
        """``h_i <- gamma_i h_i`` on the output of decoder layer ``layer`` (default: this layer)."""
        lay = self.layer if layer is None else int(layer)
        if lay < self.layer or lay >= self.n_layers:
            raise ValueError(f"scale_residual from an after-layer callback at layer {self.layer} acts on this or "
                             f"later layers only: use {self.layer} <= layer < {self.n_layers} (got {lay})")
        if lay not in self._s.hooked:
            raise ValueError(f"layer {lay} has no residual hook; register AfterLayer at a layer <= {lay}")
        self._s.scales.add_dynamic(lay, self._s.as_rows(gamma, torch.float32, "gamma", self.device))


# =========================================================================== the session
class _RowsOnDevice:
    """Resolved rows for one forward: qidx [B, R] (indices into the query axis), pos [B, R] (absolute),
    valid [B, R], all_valid, and the scatter indices (bi, ri) of the valid rows."""

    __slots__ = ("qidx", "pos", "valid", "all_valid", "bi", "ri", "qi")

    def __init__(self, qidx, pos, valid, all_valid, bi, ri):
        self.qidx, self.pos, self.valid, self.all_valid, self.bi, self.ri = qidx, pos, valid, all_valid, bi, ri
        self.qi = qidx[bi, ri]  # query index of each valid row (flat, b-major)


class _Rows:
    """Rows of one op, resolved for the prefill from the layouts (positions [B, R], -1 pad)."""

    def __init__(self, spec, layouts, what):
        self.spec = spec
        self.B = len(layouts)
        self.kind = "last" if isinstance(spec, str) and spec == "last" else "fixed"
        self.positions = None
        self._dev = {}
        if self.kind == "last":
            return
        per = []
        for b, lay in enumerate(layouts):
            try:
                if isinstance(spec, str):
                    pos = np.asarray([lay.answer]) if spec == "answer" else lay.group(spec)
                else:
                    pos = np.asarray(spec[b], dtype=np.int64).reshape(-1)
                    if pos.size and (pos.min() < lay.pad or pos.max() >= lay.seq_len):
                        raise ValueError(f"positions span [{pos.min()}, {pos.max()}] outside the non-pad part "
                                         f"[{lay.pad}, {lay.seq_len}); give absolute positions in the padded row")
            except (ValueError, IndexError, TypeError) as e:
                raise ValueError(f"{what} (row {b}): {e}") from None
            per.append(np.asarray(pos, dtype=np.int64))
        R = max(1, max(p.size for p in per))
        P = np.full((len(per), R), -1, dtype=np.int64)
        for b, p in enumerate(per):
            P[b, :p.size] = p
        self.positions = torch.from_numpy(P)
        bi, ri = np.nonzero(P >= 0)
        self._flat = (torch.from_numpy(bi), torch.from_numpy(ri))
        self.all_valid = bool((P >= 0).all())

    def resolve(self, phase, Q, K, device) -> _RowsOnDevice:
        key = (phase == "decode" or self.kind == "last", device, Q, K)
        got = self._dev.get(key)
        if got is not None:
            return got
        if key[0]:
            n = Q if phase == "decode" else 1
            B = self.B
            qidx = torch.arange(Q - n, Q, device=device).expand(B, n)
            bi = torch.arange(B, device=device).repeat_interleave(n)
            ri = torch.arange(n, device=device).repeat(B)
            got = _RowsOnDevice(qidx, qidx + (K - Q), torch.ones(B, n, dtype=torch.bool, device=device), True, bi, ri)
        else:
            pos = self.positions.to(device)
            valid = pos >= 0
            qpos = pos - (K - Q)
            qidx = torch.where(valid, qpos, torch.zeros_like(qpos))
            got = _RowsOnDevice(qidx, torch.where(valid, pos, torch.full_like(pos, -1)), valid, self.all_valid,
                                self._flat[0].to(device), self._flat[1].to(device))
        if len(self._dev) > 8:
            self._dev.clear()
        self._dev[key] = got
        return got


def _layer_list(layers, n, what):
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"{what}: layers={layers!r}; use 'all' or a list of layer indices")
        return list(range(n))
    if isinstance(layers, (int, np.integer)):
        layers = [layers]
    out = []
    for l in layers:
        l = int(l)
        if not 0 <= l < n:
            raise ValueError(f"{what}: layer {l} is out of range: the model has {n} decoder layers (0..{n - 1})")
        out.append(l)
    return out


def _steps(s, what):
    if s not in STEPS:
        raise ValueError(f"{what}: steps={s!r}; use one of {STEPS}")
    return s


class _Forward:
    """Per-forward state."""

    def __init__(self, phase, step, Q, K):
        self.phase, self.step, self.Q, self.K = phase, step, Q, K
        self.mask_cache = {}


# ------------------------------------------------------------------ one handler per plan kind
# The session below routes each op to the handler of its kind; a handler validates its ops, keeps
# their per-layer state and does its part of the attention call (or of the residual hook).
class _CaptureOps:
    """``Capture``: records attention rows (and q / k) inside the attention call."""

    def __init__(self, n_layers):
        self.by_layer = {l: [] for l in range(n_layers)}
        self.pre_rope_layers = set()   # layers whose (cos, sin) a pre-hook keeps for qk_rope="pre"
        self.rope = {}                 # layer -> (cos, sin) of the current prefill, full length

    def add(self, session, op, what):
        rows = session._rows(op.rows, what)
        qk = session._rows(op.qk_positions, what + " qk_positions") if op.qk_positions is not None else None
        if op.qk_rope not in QK_ROPES:
            raise ValueError(f"{what}: qk_rope={op.qk_rope!r}; use 'post' or 'pre'")
        if op.qk_rope == "pre" and op.steps != "prefill":
            raise ValueError(f"{what}: qk_rope='pre' is for prefill captures (steps='prefill')")
        name = op.name or (op.rows if isinstance(op.rows, str) else "rows")
        _steps(op.steps, what)
        if op.reduce not in REDUCES:
            raise ValueError(f"{what}: reduce={op.reduce!r}; use None, 'heads' or 'mean'")
        if op.offload not in OFFLOADS:
            raise ValueError(f"{what}: offload={op.offload!r}; use None or 'cpu'")
        for l in _layer_list(op.layers, session.n_layers, what):
            self.by_layer[l].append((op, name, rows, qk))
            if qk is not None and op.qk_rope == "pre":
                self.pre_rope_layers.add(l)

    def rope_hook(self, layer):
        """Forward pre-hook (with kwargs) on decoder layer ``layer``: keep its ``position_embeddings``.
        Installed first (prepend), so it sees the full-length (cos, sin) even when pruning slices them."""
        def hook(module, args, kwargs):
            pe = kwargs.get("position_embeddings")
            if pe is not None:
                self.rope[layer] = pe
            return None
        return hook

    def unrope(self, layer, x, pos):
        """Undo RoPE on ``x [B, heads, R, D]`` at absolute positions ``pos [B, R]`` (-1: padding).

        RoPE maps x -> x cos + rotate_half(x) sin (per position); its inverse is the rotation by -theta,
        x = x' cos - rotate_half(x') sin, applied to the first ``cos.shape[-1]`` (rotary) dimensions."""
        pe = self.rope.get(layer)
        if pe is None:
            raise RuntimeError(f"layer {layer}: qk_rope='pre' needs the decoder layer's position_embeddings "
                               "(cos, sin) and this model passed none; use qk_rope='post'")
        cos, sin = pe
        if cos.dim() == 2:
            cos, sin = cos[None], sin[None]
        if cos.dim() != 3:
            raise ValueError(f"layer {layer}: qk_rope='pre' expects cos/sin [B, L, d], got {tuple(cos.shape)} "
                             "(a multimodal RoPE applied inside the attention); use qk_rope='post'")
        B, R = pos.shape
        d = cos.shape[-1]
        idx = pos.clamp(min=0).to(cos.device)
        cos = cos.expand(B, -1, -1).gather(1, idx[:, :, None].expand(B, R, d)).float()[:, None]
        sin = sin.expand(B, -1, -1).gather(1, idx[:, :, None].expand(B, R, d)).float()[:, None]
        xr = x[..., :d]
        half = d // 2
        rot = torch.cat((-xr[..., half:], xr[..., :half]), dim=-1)   # rotate_half
        return torch.cat((xr * cos - rot * sin, x[..., d:]), dim=-1)

    def run(self, session, caps, fwd, layer, query, key, attention_mask, keep, sc, layer_recs):
        B, H, Q, D = query.shape
        K = key.shape[2]
        dev = query.device
        phase, step = fwd.phase, fwd.step
        neg_inf = float("-inf")
        with torch.no_grad():
            for op, name, rows, qk in caps:
                r = rows.resolve(phase, Q, K, dev)
                blocked = session._allowed(fwd, r, attention_mask, K, keep)[1]
                if op.reduce is None:
                    scores = _attn.row_scores(query, key, r.qidx, sc)
                    probs = torch.softmax(scores.masked_fill_(blocked, neg_inf), -1)
                    if not r.all_valid:
                        probs = probs.masked_fill_(~r.valid[:, None, :, None], 0.0)
                else:
                    probs = _reduced_probs(query, key, r, blocked, sc, op.reduce)
                rec = session._record(name, layer, step, probs, r)
                rec.reduced = op.reduce
                if qk is not None:  # float32 as documented, whatever the model's dtype
                    rec.q = _attn.row_queries(query, r.qidx).detach().float()
                    kr = qk.resolve("prefill", K, K, dev) if qk.kind == "fixed" else qk.resolve(phase, Q, K, dev)
                    Hkv = key.shape[1]
                    rec.k = key.gather(2, kr.pos.clamp(min=0)[:, None, :, None].expand(B, Hkv, kr.pos.shape[1], D)).detach().float()
                    rec.k_positions, rec.k_valid = kr.pos, kr.valid
                    if op.qk_rope == "pre":
                        rec.q = self.unrope(layer, rec.q, r.qidx)
                        rec.k = self.unrope(layer, rec.k, kr.pos)
                session._store(rec, op.offload)
                layer_recs[name] = rec


def _cached(cache: dict, tag, objs: tuple, make):
    """``cache`` keyed by the identity of ``objs`` (tensors, row sets): the entry keeps the objects
    themselves alive, so their ``id``s cannot be reused by other (freed and reallocated) objects while
    the entry exists, which would return a stale mask for a different tensor."""
    ck = (tag,) + tuple(id(o) for o in objs)
    got = cache.get(ck)
    if got is None or any(a is not b for a, b in zip(got[0], objs)):
        got = cache[ck] = (objs, make())
    return got[1]


class _KeyMaskOps:
    """``KeyMask`` (static, from the plan) and ``LayerContext.mask_keys`` (dynamic, from a callback;
    cleared at each prefill): the combined keep vector per layer and the masked attention call."""

    def __init__(self, session):
        self.s = session
        self.static = []   # (from_layer, keep [B, L] bool cpu)
        self.dynamic = []  # the same, set by AfterLayer callbacks during a forward
        self.cache = {}

    def add(self, session, op, what):
        fl = _layer_list([op.from_layer], session.n_layers, what)[0]
        self.static.append((fl, session.as_rows(op.keep, torch.bool, "keep", "cpu", what)))

    def add_dynamic(self, from_layer, keep):
        self.dynamic.append((from_layer, keep))
        self.cache.clear()

    def reset_dynamic(self):
        self.dynamic = []
        self.cache.clear()

    def keep_for(self, layer, K, device):
        """Combined key-keep vector [B, K] for a layer (None when no mask is active)."""
        active = [i for i, (fl, _) in enumerate(self.static) if fl <= layer]
        dyn = [i for i, (fl, _) in enumerate(self.dynamic) if fl <= layer]
        if not active and not dyn:
            return None
        key = (tuple(active), tuple(dyn), K, device)
        got = self.cache.get(key)
        if got is None:
            s = self.s
            keep = None
            for i in active:
                m = self.static[i][1].to(device)
                keep = m if keep is None else keep & m
            for i in dyn:
                m = self.dynamic[i][1].to(device)
                keep = m if keep is None else keep & m
            if K > s.L:
                keep = torch.cat([keep, torch.ones(s.B, K - s.L, dtype=torch.bool, device=device)], 1)
            got = self.cache[key] = keep[:, :K]
        return got

    def attention(self, fwd, module, query, key, value, attention_mask, scaling, dropout, kwargs, keep):
        B, _, Q, _ = query.shape
        K = key.shape[2]
        if attention_mask is None and Q == K and kwargs.get("sliding_window") is None:
            idx = _cached(self.cache, "compact", (keep,), lambda: _attn.compact_index(keep))
            if idx is not None:
                return _attn.compact_attention(module, query, key, value, idx, scaling, dropout, kwargs)
        mask = _cached(fwd.mask_cache, "full", (keep, attention_mask), lambda: _attn.full_allowed(attention_mask, B, Q, K, keep))
        return _attn.sdpa(module, query, key, value, mask, scaling, dropout, kwargs)


class _RowEditOps:
    """``RowEdit``: replaces rows' probabilities (or pre-softmax scores) and their outputs ``P' V``."""

    def __init__(self, n_layers):
        self.by_layer = {l: [] for l in range(n_layers)}

    def add(self, session, op, what):
        if op.stage not in STAGES:
            raise ValueError(f"{what}: stage={op.stage!r}; use 'probs' or 'logits'")
        if not callable(op.fn):
            raise ValueError(f"{what}: fn must be callable (probs|scores, ctx) -> same shape")
        _steps(op.steps, what)
        rows = session._rows(op.rows, what)
        for l in _layer_list(op.layers, session.n_layers, what):
            self.by_layer[l].append((op, rows))

    def run(self, session, edits, fwd, layer, query, key, value, attention_mask, keep, sc, out, layer_recs):
        Q, K = query.shape[2], key.shape[2]
        dev = query.device
        phase, step = fwd.phase, fwd.step
        neg_inf = float("-inf")
        for op, rows in edits:
            r = rows.resolve(phase, Q, K, dev)
            scores = _attn.row_scores(query, key, r.qidx, sc)
            allowed, blocked = session._allowed(fwd, r, attention_mask, K, keep)
            ctx = RowContext(session, layer, step, r.pos, r.valid, allowed, K)
            if op.stage == "logits":
                scores = op.fn(scores, ctx)
                probs = torch.softmax(scores.masked_fill(blocked, neg_inf), dim=-1)
            else:
                probs = torch.softmax(scores.masked_fill_(blocked, neg_inf), dim=-1)
                if not r.all_valid:  # padding rows of R: zeros, not NaN, for the callback
                    probs = probs.masked_fill_(~r.valid[:, None, :, None], 0.0)
                probs = op.fn(probs, ctx)
            o = _attn.rows_output(probs, value).to(out.dtype)            # [B, R, H, D]
            out[r.bi, r.qi] = o.flatten(0, 1) if r.all_valid else o[r.bi, r.ri]
            if op.name:
                if not r.all_valid:
                    probs = probs.masked_fill(~r.valid[:, None, :, None], 0.0)
                rec = session._record(op.name, layer, step, probs.detach(), r)
                session._store(rec)
                layer_recs[op.name] = rec


class _ResidualScaleOps:
    """``ResidualScale`` (static) and ``LayerContext.scale_residual`` (dynamic, cleared at each prefill):
    ``h_i <- gamma_i h_i`` by a forward hook on the decoder layer, at the prefill only."""

    def __init__(self, session):
        self.s = session
        self.static = {}   # layer -> gamma [B, L] float32 cpu
        self.dynamic = {}
        self.hooked = set()

    def add(self, session, op, what):
        l = _layer_list([op.layer], session.n_layers, what)[0]
        g = session.as_rows(op.gamma, torch.float32, "gamma", "cpu", what)
        self.static[l] = g if l not in self.static else self.static[l] * g
        self.hooked.add(l)

    def add_dynamic(self, layer, g):
        prev = self.dynamic.get(layer)
        self.dynamic[layer] = g if prev is None else prev * g

    def gamma_for(self, layer, device):
        g = self.static.get(layer)
        d = self.dynamic.get(layer)
        if g is None and d is None:
            return None
        g = g.to(device) if g is not None else None
        if d is not None:
            g = d.to(device) if g is None else g * d.to(device)
        return g

    def make_hook(self, layer):
        s = self.s

        def hook(module, args, output):
            fwd = s.fwd
            if fwd is None or fwd.phase != "prefill":
                return None
            h = output[0] if isinstance(output, tuple) else output
            if not isinstance(h, torch.Tensor) or h.dim() != 3 or h.shape[1] != s.L:
                return None
            g = self.gamma_for(layer, h.device)
            if g is None:
                return None
            h = scale_rows(h, g)
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
        return hook


class _AfterLayerOps:
    """``AfterLayer``: callbacks right after a layer's attention output (they may mask keys of later
    layers and scale this or later layers' residual stream, so every later layer is hooked)."""

    def __init__(self, n_layers):
        self.by_layer = {l: [] for l in range(n_layers)}

    def add(self, session, op, what):
        n = session.n_layers
        l = _layer_list([op.layer], n, what)[0]
        if not callable(op.fn):
            raise ValueError(f"{what}: fn must be callable (ctx) -> None")
        _steps(op.steps, what)
        self.by_layer[l].append(op)
        session.scales.hooked.update(range(l, n))

    def run(self, session, afters, fwd, layer, K, device, layer_recs):
        ctx = LayerContext(session, layer, fwd.step, layer_recs, K, device)
        for op in afters:
            op.fn(ctx)


class _Session:
    """One ``intervene`` block: the plan's ops sorted to their handlers (one per plan kind), per-forward
    bookkeeping (prefill / decode step), and the attention call every hooked layer makes."""

    def __init__(self, model, layouts, plan: Plan, trace: Trace):
        self.layers = _attn.decoder_layers(model)
        self.n_layers = n = len(self.layers)
        self.layouts = layouts
        self.B = len(layouts)
        self.L = layouts[0].seq_len
        self.trace = trace
        self.captures, self.row_edits, self.after_layer = _CaptureOps(n), _RowEditOps(n), _AfterLayerOps(n)
        self.masks, self.scales = _KeyMaskOps(self), _ResidualScaleOps(self)
        handlers = {Capture: self.captures, RowEdit: self.row_edits, KeyMask: self.masks,
                    ResidualScale: self.scales, AfterLayer: self.after_layer}
        # what the attention call and prune.py read per layer
        self.caps, self.edits, self.afters = self.captures.by_layer, self.row_edits.by_layer, self.after_layer.by_layer
        self.hooked = self.scales.hooked
        self.group_cache = {}
        self.fwd = None
        self.hooks = []
        for i, op in enumerate(plan.ops):
            for kind, h in handlers.items():
                if isinstance(op, kind):
                    h.add(self, op, f"{type(op).__name__} (op {i})")
                    break

    # ------------------------------------------------------------------ helpers
    def _rows(self, spec, what):
        return _Rows(spec, self.layouts, what)

    def as_rows(self, x, dtype, label, device, what="callback"):
        """A per-sample vector over the prompt: ``[B, L]`` (or ``[L]``, broadcast) -> tensor."""
        t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        t = t.to(device=device, dtype=dtype)
        if t.dim() == 1:
            t = t[None].expand(self.B, -1)
        if tuple(t.shape) != (self.B, self.L):
            raise ValueError(f"{what}: {label} has shape {tuple(t.shape)} but the batch is [{self.B}, {self.L}] "
                             f"(one value per token of each padded row)")
        return t.contiguous()

    def group_keys(self, group, K, device):
        key = (group, K, device)
        if key not in self.group_cache:
            m = torch.zeros(self.B, K, dtype=torch.bool)
            for b, lay in enumerate(self.layouts):
                pos = np.asarray([lay.answer]) if group == "answer" else lay.group(group)
                m[b, torch.from_numpy(np.asarray(pos, dtype=np.int64))] = True
            self.group_cache[key] = m.to(device)
        return self.group_cache[key]

    def _keep_for(self, layer, K, device):
        """Combined key-keep vector [B, K] for a layer (None when no mask is active)."""
        return self.masks.keep_for(layer, K, device)

    def _gamma_for(self, layer, device):
        return self.scales.gamma_for(layer, device)

    def make_hook(self, layer):
        return self.scales.make_hook(layer)

    # ------------------------------------------------------------------ forward bookkeeping
    def begin_forward(self, B, Q, K):
        if B != self.B:
            raise ValueError(f"the batch has {B} rows but the intervention got {self.B} layouts; pass one "
                             f"TokenLayout per batch row (beam search / num_return_sequences > 1 are not supported)")
        if K == Q:
            if Q != self.L:
                raise ValueError(f"the model got {Q} tokens per row but the layouts describe {self.L}; build the "
                                 f"layouts from the same padded inputs")
            self.fwd = _Forward("prefill", "prefill", Q, K)
            self.masks.reset_dynamic()
            self.scales.dynamic = {}
            self.trace.decode_captures.clear()
        elif K - Q >= self.L:
            step = K - Q - self.L
            if self.fwd is not None and self.fwd.K != K:  # per-length caches: keep them bounded
                self.masks.cache.clear()
                self.group_cache.clear()
            self.fwd = _Forward("decode", step, Q, K)
            while len(self.trace.decode_captures) <= step:
                self.trace.decode_captures.append({})
            self.trace.decode_captures[step] = {}
        else:
            raise ValueError(f"a forward of {Q} tokens over a cache of {K - Q} (prompt {self.L}) is not supported "
                             f"(chunked prefill); run the whole prompt in one forward")

    @staticmethod
    def _wants(steps, phase):
        return steps == "all" or steps == phase

    def _store(self, rec, offload=None):
        if offload == "cpu":
            for f in ("probs", "positions", "row_valid", "q", "k", "k_positions", "k_valid"):
                v = getattr(rec, f)
                if isinstance(v, torch.Tensor):
                    setattr(rec, f, v.to("cpu", non_blocking=True))
        if self.fwd.phase == "prefill":
            self.trace.captures[(rec.name, rec.layer)] = rec
        else:
            self.trace.decode_captures[self.fwd.step][(rec.name, rec.layer)] = rec

    def _allowed(self, fwd, rows: _RowsOnDevice, attention_mask, K, keep):
        """(allowed, ~allowed) [B, 1, R, K] for these rows, computed once per forward."""
        def make():
            allowed = _attn.row_allowed(attention_mask, rows.qidx, rows.pos, K, keep)
            return allowed, ~allowed
        return _cached(fwd.mask_cache, ("rows", K), (rows, attention_mask, keep), make)

    def _record(self, name, layer, step, probs, rows: _RowsOnDevice):
        return AttnCapture(name=name, layer=layer, step=step, probs=probs, positions=rows.pos, row_valid=rows.valid)

    # ------------------------------------------------------------------ the attention call
    def attend(self, layer, module, query, key, value, attention_mask, scaling, dropout, kwargs):
        B, H, Q, D = query.shape
        K = key.shape[2]
        if layer == 0 or self.fwd is None:
            self.begin_forward(B, Q, K)
        fwd = self.fwd
        phase = fwd.phase
        caps = [c for c in self.caps[layer] if self._wants(c[0].steps, phase)]
        edits = [e for e in self.edits[layer] if self._wants(e[0].steps, phase)]
        afters = [a for a in self.afters[layer] if self._wants(a.steps, phase)]
        dev = query.device
        keep = self.masks.keep_for(layer, K, dev)
        if keep is None and not caps and not edits and not afters:
            return _attn.sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                                scaling=scaling, **kwargs)
        if keep is None:
            out = _attn.sdpa(module, query, key, value, attention_mask, scaling, dropout, kwargs)
        else:
            out = self.masks.attention(fwd, module, query, key, value, attention_mask, scaling, dropout, kwargs, keep)
        sc = _attn._scaling(module, query, scaling)
        layer_recs = {}
        if caps:
            self.captures.run(self, caps, fwd, layer, query, key, attention_mask, keep, sc, layer_recs)
        if edits:
            self.row_edits.run(self, edits, fwd, layer, query, key, value, attention_mask, keep, sc, out, layer_recs)
        if afters:
            self.after_layer.run(self, afters, fwd, layer, K, dev, layer_recs)
        return out, None


def scale_rows(h: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``h_i <- gamma_i h_i`` (``h [B, L, d]``, ``gamma [B, L]``) computed in float32 and cast back to
    ``h``'s dtype once. In float16 a scaled state can exceed the largest finite value (65504): it is
    clamped to the dtype's finite range instead of becoming inf (documented in ``resolve_dtype``)."""
    out = h.float() * gamma.float()[:, :, None]
    if h.dtype != torch.float32:
        fi = torch.finfo(h.dtype)
        out = out.clamp_(fi.min, fi.max)
    return out.to(h.dtype)


def _reduced_probs(query, key, r: _RowsOnDevice, blocked, scaling: float, reduce: str) -> torch.Tensor:
    """Softmax rows of ``r`` reduced inside the attention call, ``REDUCE_CHUNK_BYTES`` of scores at a time:
    ``"heads"`` -> ``[B, R, K]`` (mean over heads), ``"mean"`` -> ``[B, K]`` (mean over heads and the
    valid rows; 0 for a sample without valid rows). Equal to reducing the full capture afterwards."""
    B, H = query.shape[:2]
    K = key.shape[2]
    R = r.qidx.shape[1]
    chunk = max(1, min(R, REDUCE_CHUNK_BYTES // max(1, 4 * B * H * K)))
    valid = r.valid
    out = torch.zeros(B, K, device=query.device) if reduce == "mean" else torch.empty(B, R, K, device=query.device)
    for lo in range(0, R, chunk):
        hi = min(R, lo + chunk)
        s = _attn.row_scores(query, key, r.qidx[:, lo:hi], scaling)
        p = torch.softmax(s.masked_fill_(blocked[:, :, lo:hi], float("-inf")), -1)
        p = p.masked_fill_(~valid[:, None, lo:hi, None], 0.0).mean(1)       # [B, c, K], heads averaged
        if reduce == "mean":
            out += p.sum(1)
        else:
            out[:, lo:hi] = p
    if reduce == "mean":
        out /= valid.sum(1).clamp(min=1)[:, None].to(out.dtype)
    return out


# =========================================================================== the context manager
def _as_layouts(layouts) -> list:
    if isinstance(layouts, TokenLayout):
        layouts = [layouts]
    layouts = list(layouts)
    if not layouts or not all(isinstance(l, TokenLayout) for l in layouts):
        raise ValueError("layouts must be a TokenLayout or a non-empty list of TokenLayout (one per batch row)")
    for lay in layouts:
        lay.validate()
    lens = sorted({l.seq_len for l in layouts})
    if len(lens) > 1:
        raise ValueError(f"layouts describe rows of different lengths {lens}; a padded batch has one length: "
                         f"left-pad with TokenLayout.shifted")
    return layouts


def _as_plan(plan) -> Plan:
    if plan is None:
        return Plan([])
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, OPS):
        return Plan([plan])
    return Plan(list(plan))


def check_backend(model) -> None:
    impl = _attn.attn_implementation(model)
    if impl != _attn.NAME:
        raise RuntimeError(f"unsupported attention backend '{impl}': load the model with emolens.load_model(...) "
                           f"or call emolens.attention.install(model)")


@contextlib.contextmanager
def intervene(model, layouts, plan=None):
    """Install ``plan`` on ``model`` for the rows described by ``layouts`` and yield a :class:`Trace`.

    Args:
        model: a model whose text attention is ``"emolens"`` (``emolens.load_model`` or
            :func:`emolens.attention.install`).
        layouts: one :class:`TokenLayout` per batch row (or a single layout for batch 1).
        plan: a :class:`Plan`, a list of ops, a single op, or None (empty: outputs equal the stock model).

    Everything installed (registry entries, hooks) is removed on exit, also when the body raises.
    """
    check_backend(model)
    layouts = _as_layouts(layouts)
    plan = _as_plan(plan)
    trace = Trace(layouts=layouts, plan=plan)
    session = _Session(model, layouts, plan, trace)
    mods = []
    for i, layer in enumerate(session.layers):
        for m in _attn.attention_modules(layer):
            if m in _attn._REGISTRY:
                raise RuntimeError("an intervention is already active on this model; compose the ops into one "
                                   "Plan instead of nesting intervene()")
            mods.append((m, i))
    from . import prune as _prune

    pruning = _prune.install(model, session, plan.ops)
    handler = session if pruning is None else pruning[0]
    if pruning is not None:
        session.hooks.extend(pruning[1])
    for i in sorted(session.captures.pre_rope_layers):
        session.hooks.append(session.layers[i].register_forward_pre_hook(session.captures.rope_hook(i),
                                                                          with_kwargs=True, prepend=True))
    try:
        for m, i in mods:
            _attn._REGISTRY[m] = (handler, i)
        for i in sorted(session.hooked):
            # prepend: run before transformers' own output-recording hooks, so recorded hidden states
            # (output_hidden_states=True) show the scaled residual stream
            session.hooks.append(session.layers[i].register_forward_hook(session.make_hook(i), prepend=True))
        yield trace
    finally:
        for h in session.hooks:
            h.remove()
        session.hooks.clear()
        for m, _ in mods:
            _attn._REGISTRY.pop(m, None)
        session.fwd = None
