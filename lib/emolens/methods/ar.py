"""MoSEAR's Attention Reallocation (AR, seed 003 Sec. 5.2, Algorithm 1, Appendix A) and the PAI
baseline it is compared with (seed 003 Table 7; PAI = Liu et al. 2024 [49]).

Symbols (seed 003 Sec. 5.2). At one decoding step, head ``h`` of a layer gives attention weights
``w_h(x)`` over the previous tokens ``x``. For a token set ``X``, ``S_h(w, X) = sum_{x in X} w_h(x)``.
MoSEAR's source set is the audio tokens ``A``, its target the visual tokens ``V``; here both are
parameters (any two disjoint token groups of a :class:`~emolens.layout.TokenLayout`).

=================  ==========================================================================
``group_mass``     ``S_h(w, X)``
``head_ratio``     ``c_h(w) = S_h(w, A) / S_h(w, V)``                                  (Eq. 5)
``layer_ratio``    ``c(w) = sum_h S_h(w, A) / sum_h S_h(w, V)``                         (Eq. 6)
``biased_heads``   ``H_bias = {h | c(w) > tau and c_h(w) > c(w)}``                      (Eq. 7)
``reallocate_head``  the closed form of Eqs. (8)-(11):                                 (Eq. 12-14)
                   ``w'_h(a) = w_h(a) (1 - D_h / S_h(w, A))``, ``w'_h(v) = w_h(v) (1 + D_h / S_h(w, V))``,
                   ``D_h = (S_h(w, A) - c(w) S_h(w, V)) / (1 + c(w))``
``reallocate``     Algorithm 1 for one layer, vectorised over batch, heads and rows
=================  ==========================================================================

What the closed form guarantees (tested in tests/test_ar.py): ``c_h(w') = c(w)`` (Eq. 8); the
source+target mass of the head is unchanged, so every row still sums to 1 (Eq. 9); the shares of each
token within its group are unchanged (Eqs. 10-11); every other key keeps its weight exactly.

Edge cases and choices (the paper does not discuss them):

* ``S(w, V) = sum_h S_h(w, V) = 0`` (the row gives no attention to the target group at all): ``c`` is
  undefined (``x / 0``), the layer is reported as not biased and left untouched (``c`` recorded as NaN).
* ``S_h(w, V) = 0`` for one head: ``c_h`` is undefined (``inf`` when ``S_h(w, A) > 0``). Eq. (13)
  would divide by zero and Eq. (11) (mass shared in proportion to the existing visual weights) has no
  solution, so the head is left untouched and not counted as biased.
* ``c_h <= c``: Algorithm 1 line 9, ``w'_h = w_h``. (Applying Eq. 14 there would give ``D_h <= 0``,
  i.e. moving mass from the target back to the source; AR never does that.) For a biased head
  ``c_h > c > tau >= 0`` implies ``0 < D_h < S_h(w, A)``, so no weight becomes negative.
* ``c <= tau``: the layer is untouched (Algorithm 1 line 13). The comparison is strict as in Eq. (7);
  ``tau = 0`` (Table 8's first row) therefore touches every layer whose ``c > 0``.
* Rows: Eq. (6) aggregates the heads of one decoding step, so ``c`` is computed per (sample, query row).
  Padding rows (all zeros) have ``S(w, V) = 0`` and stay untouched.
* The source and target groups must be disjoint (a ValueError otherwise).
* Arithmetic in float64, result cast back to the input dtype: untouched weights are bit-identical.

Where AR acts (:class:`AR`): a ``RowEdit(stage="probs")`` on the decoding-step row (``rows="last"``:
the answer row at prefill and the new token's row on every ``generate()`` step) of every layer
(Algorithm 1 "is repeated for all Transformer layers"; ``layers`` can restrict it). The edited row's
output is recomputed as ``P' V`` by :mod:`emolens.intervene`.

PAI (:class:`PAI`), as implemented by its authors (github.com/LALBJ/PAI, ``attention.py``,
``llama_new_forward``): in layers ``range(start_layer, end_layer)``, on the last query row of each
forward and for every head, the scaled pre-softmax scores of the image keys become
``s <- s + alpha * |s|`` (``attn_weights[:, :, -1, img] = attn_weights[:, :, -1, img].abs() * alpha +
attn_weights[:, :, -1, img]``) before the softmax; everything else is unchanged. This is Eq. (3) of the
paper (arXiv 2407.21771: ``A~ = A + alpha |A|`` on image tokens). Here: ``RowEdit(stage="logits")`` on
``rows="last"``; the scores are ``q.k * scaling`` as in PAI's code (``/ sqrt(head_dim)``). PAI adds the
causal/padding mask before its edit; emolens applies masks after the edit, which gives the same result
because every target key of the answer row is allowed. Defaults: ``alpha = 0.5`` (the paper's Sec. 5.1
value for LLaVA-1.5; 0.6 for Shikra, 0.2 for MiniGPT-4's resampler, and 0.2 is also the code's CLI
default), layers ``"all"``: MoSEAR (Sec. 5.2) describes PAI as treating "the visual attention of all
layers indiscriminately", which is the PAI it compares against; ``layers="2:"`` gives PAI's own code
setting ``--start-layer 2 --end-layer 32`` on a 32-layer LLaMA (layers 2..7 of emolens-tiny's 8). PAI's
second component (classifier-free-guidance style logit refinement against a text-only forward) is not
part of the comparison in MoSEAR Table 7, which describes PAI as "amplifying the attention weights
assigned to visual tokens", and is not implemented.

``uap_profile`` gives MoSEAR's Sec. 4 analysis: UAP_v / UAP_a per layer at the answer row (Eq. 1,
Fig. 3a) and per-token attention averaged over the middle layers (Fig. 3b), with the predictions of
the same forward so failure cases can be selected.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..intervene import Capture, Plan, RowEdit
from ..layout import SPAN_NAMES
from .base import Method, Param, Task
from .common import fine_prompts, run, to_predictions

#: token groups a source/target/group parameter may name (TokenLayout.group names)
GROUPS: tuple = ("visual", "audio", "content", "subtitle", "text", "instruction") + tuple(SPAN_NAMES)

#: token group -> the dataset modalities (manifest vocabulary) that provide it; None = the prompt itself
GROUP_MODALITY: dict = {"visual": ("video", "image", "visual"), "audio": ("audio",),
                        "content": ("text",), "subtitle": ("text",), "text": ("text",)}

_TINY = 1e-300


# =========================================================================== the equations
def _t(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _key_mask(keys, w: torch.Tensor) -> torch.Tensor:
    """``keys``: a bool mask broadcastable to ``w`` along its last (key) axis (``[K]``, ``[B, K]`` for
    ``w [B, H, R, K]``, or already ``[B, 1, 1, K]``), or an integer index array ``[n]`` into the key
    axis. Returns a bool tensor broadcastable to ``w``."""
    k = _t(keys).to(w.device)
    K = w.shape[-1]
    if k.dtype != torch.bool:
        idx = k.reshape(-1).long()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= K):
            raise ValueError(f"key indices span [{int(idx.min())}, {int(idx.max())}] outside the {K} keys")
        m = torch.zeros(K, dtype=torch.bool, device=w.device)
        m[idx] = True
        return m
    if k.shape[-1] != K:
        raise ValueError(f"key mask has {k.shape[-1]} keys but the attention rows have {K}")
    if k.dim() == 2 and w.dim() == 4:          # [B, K] -> [B, 1, 1, K]
        k = k[:, None, None, :]
    elif k.dim() == 2 and w.dim() == 3:        # [B, K] with w [B, H, K] -> [B, 1, K]
        k = k[:, None, :]
    return k


def group_mass(w, keys) -> torch.Tensor:
    """``S_h(w, X) = sum_{x in X} w_h(x)`` (seed 003 Sec. 5.2): the attention mass on a token set.

    Args:
        w: attention weights ``[..., K]`` (e.g. ``[B, H, R, K]``), torch or numpy.
        keys: the token set ``X``: bool mask over the keys (``[K]``, ``[B, K]`` or broadcastable) or an
            integer index array.
    Returns:
        ``[...]`` (the key axis summed), float64.
    """
    w = _t(w).double()
    return (w * _key_mask(keys, w).to(w.dtype)).sum(-1)


def head_ratio(w, src, tgt) -> torch.Tensor:
    """Head-level attention ratio ``c_h(w) = S_h(w, A) / S_h(w, V)`` (Eq. 5), per head (and row).

    ``w [..., K]`` -> ``[...]`` float64; ``inf`` where ``S_h(w, V) = 0 < S_h(w, A)`` and NaN where both
    are 0 (undefined: :func:`reallocate` leaves such heads untouched).
    """
    return group_mass(w, src) / group_mass(w, tgt)


def _head_axis(head_dim: int) -> int:
    """Axis of the heads in a mass tensor (the key axis of ``w`` summed away)."""
    return head_dim + 1 if head_dim < 0 else head_dim


def layer_ratio(w, src, tgt, head_dim: int = -3) -> torch.Tensor:
    """Layer-level attention ratio ``c(w) = sum_h S_h(w, A) / sum_h S_h(w, V)`` (Eq. 6).

    Args:
        w: attention weights with a head axis at ``head_dim`` of ``w`` (default -3: ``[B, H, R, K]``
            or ``[H, R, K]``; pass ``head_dim=-2`` for a single row ``[H, K]``).
    Returns:
        the head axis and the key axis reduced (``[B, R]`` for ``[B, H, R, K]``), float64; ``inf`` /
        NaN where ``sum_h S_h(w, V) = 0`` (undefined).
    """
    ax = _head_axis(head_dim)
    return group_mass(w, src).sum(ax) / group_mass(w, tgt).sum(ax)


def biased_heads(w, src, tgt, tau: float, head_dim: int = -3) -> torch.Tensor:
    """``H_bias = {h | c(w) > tau and c_h(w) > c(w)}`` (Eq. 7) as a bool tensor of ``c_h``'s shape
    (``[B, H, R]`` for ``w [B, H, R, K]``). Heads whose ratio is undefined (``S_h(w, V) = 0``) and layers
    whose ratio is undefined (``sum_h S_h(w, V) = 0``) are never biased (see the module docstring)."""
    _check_tau(tau)
    ax = _head_axis(head_dim)
    s_a, s_v = group_mass(w, src), group_mass(w, tgt)
    A, V = s_a.sum(ax, keepdim=True), s_v.sum(ax, keepdim=True)
    c = A / V.clamp_min(_TINY)
    c_h = s_a / s_v.clamp_min(_TINY)
    return (V > 0) & (c > tau) & (s_v > 0) & (c_h > c)


def _eq14(s_a: torch.Tensor, s_v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``D_h = (S_h(w, A) - c(w) S_h(w, V)) / (1 + c(w))`` (Eq. 14 / Appendix A Eq. 21)."""
    return (s_a - c * s_v) / (1.0 + c)


def reallocate_head(w_h, src, tgt, c):
    """The closed-form solution of Eqs. (8)-(11) for one head (or any batch of heads/rows): Eqs. (12)-(14).

    ``w'_h(a) = w_h(a) (1 - D_h / S_h(w, A))`` for source keys, ``w'_h(v) = w_h(v) (1 + D_h / S_h(w, V))``
    for target keys, every other key unchanged, with ``D_h`` of Eq. (14).

    This is the formula alone, applied whatever ``c_h`` is: :func:`reallocate` (Algorithm 1) applies it
    to biased heads only. It needs ``S_h(w, A) > 0`` and ``S_h(w, V) > 0`` (else a ValueError: the
    proportional split of Eqs. 10-11 does not exist) and ``c >= 0``.

    Args:
        w_h: ``[..., K]`` attention weights of the head(s).
        src, tgt: key masks / index arrays of the source (A) and target (V) groups.
        c: the layer-level ratio ``c(w)`` (float or a tensor broadcastable to ``w_h[..., 0]``).
    Returns:
        ``(w'_h [..., K] in w_h's dtype, D_h [...] float64)``.
    """
    w = _t(w_h)
    wd = w.double()
    sm, tm = _key_mask(src, wd), _key_mask(tgt, wd)
    if bool((sm & tm).any()):
        raise ValueError("source and target token groups overlap; AR moves mass between two disjoint groups")
    s_a, s_v = group_mass(wd, sm), group_mass(wd, tm)
    if bool((s_a <= 0).any()) or bool((s_v <= 0).any()):
        raise ValueError("the closed form (Eq. 12-14) needs S_h(w, A) > 0 and S_h(w, V) > 0 for every head")
    c = _t(c).to(device=wd.device, dtype=torch.float64)
    if bool((c < 0).any()) or not bool(torch.isfinite(c).all()):
        raise ValueError("the layer ratio c must be finite and >= 0")
    d = _eq14(s_a, s_v, c)
    fa = (1.0 - d / s_a)[..., None]
    fv = (1.0 + d / s_v)[..., None]
    out = wd * torch.where(sm, fa, torch.where(tm, fv, torch.ones_like(fa)))
    return out.to(w.dtype), d


def _check_tau(tau) -> None:
    try:
        t = float(tau)
    except (TypeError, ValueError):
        t = float("nan")
    if isinstance(tau, bool) or not t >= 0:
        raise ValueError(f"tau = {tau!r} is out of range; the threshold of Eq. (7) must be a number >= 0")


def reallocate(probs, src_mask, tgt_mask, tau: float = 1.0):
    """Algorithm 1 (Attention Reallocation) for one layer, vectorised over batch, heads and rows.

    Args:
        probs: ``[B, H, R, K]`` post-softmax attention rows (the decoding-step rows of one layer).
        src_mask: ``[B, K]`` (or ``[K]``) bool, the source group A (MoSEAR: audio tokens).
        tgt_mask: ``[B, K]`` (or ``[K]``) bool, the target group V (MoSEAR: visual tokens).
        tau: threshold of Eq. (7), >= 0.
    Returns:
        ``(probs' [B, H, R, K] in probs' dtype, info)``; ``info`` holds float64/bool tensors:
        ``c [B, R]`` (Eq. 6, NaN where undefined), ``c_h [B, H, R]`` (Eq. 5, inf/NaN where undefined),
        ``layer_biased [B, R]`` (``c > tau``), ``biased [B, H, R]`` (Eq. 7), ``delta [B, H, R]`` (Eq. 14
        on biased heads, 0 elsewhere), ``n_biased [B, R]`` (number of biased heads) and
        ``moved [B, R]`` (head-averaged mass moved from source to target, ``(1/H) sum_h D_h``).
    """
    _check_tau(tau)
    p = _t(probs)
    if p.dim() != 4:
        raise ValueError(f"probs must be [B, H, R, K], got shape {tuple(p.shape)}")
    w = p.double()
    sm, tm = _key_mask(src_mask, w), _key_mask(tgt_mask, w)
    if bool((sm & tm).any()):
        raise ValueError("source and target token groups overlap; AR moves mass between two disjoint groups")
    s_a = (w * sm.to(w.dtype)).sum(-1)                           # S_h(w, A)  [B, H, R]
    s_v = (w * tm.to(w.dtype)).sum(-1)                           # S_h(w, V)  [B, H, R]
    A, V = s_a.sum(1, keepdim=True), s_v.sum(1, keepdim=True)    # [B, 1, R]
    defined = V > 0
    nan = torch.full_like(A, float("nan"))
    c = torch.where(defined, A / V.clamp_min(_TINY), nan)        # Eq. (6)
    c_h = s_a / s_v                                              # Eq. (5): inf / NaN where S_h(V) = 0
    layer_biased = defined & (c > tau)                           # Algorithm 1 line 3
    biased = layer_biased & (s_v > 0) & (c_h > c)                # Eq. (7) (+ c_h defined)
    c0 = torch.where(defined, c, torch.zeros_like(c))
    d = torch.where(biased, _eq14(s_a, s_v, c0), torch.zeros_like(s_a))     # Eq. (14)
    fa = torch.where(biased, 1.0 - d / s_a.clamp_min(_TINY), torch.ones_like(d))[..., None]   # Eq. (12)
    fv = torch.where(biased, 1.0 + d / s_v.clamp_min(_TINY), torch.ones_like(d))[..., None]   # Eq. (13)
    factor = torch.where(sm, fa, torch.where(tm, fv, torch.ones_like(fa)))
    out = (w * factor).to(p.dtype)
    info = {"c": c[:, 0], "c_h": c_h, "layer_biased": layer_biased[:, 0], "biased": biased, "delta": d,
            "n_biased": biased.sum(1), "moved": d.mean(1)}
    return out, info


# =========================================================================== layers and groups
def _layer_spec(method: str, spec):
    """Validate and normalise a ``layers`` parameter: ``"all"``; ``"a-b"`` (inclusive); ``"a:b"``
    (end exclusive, either end optional); ``"a,b,c"``; an int; a list/tuple/range of ints."""
    bad = (f"{method}: layers={spec!r} is not understood; use 'all', 'a-b' (inclusive), 'a:b' (end "
           f"exclusive, either end optional), 'a,b,c' or a list of layer indices")
    if isinstance(spec, str):
        s = spec.strip().replace(" ", "")
        if s == "all":
            return "all"
        try:
            if ":" in s:
                a, b = s.split(":")
                lo, hi = (int(a) if a else 0), (int(b) if b else None)
                if lo < 0 or (hi is not None and hi <= lo):
                    raise ValueError
            elif "-" in s[1:]:
                a, b = s.split("-")
                if int(a) < 0 or int(b) < int(a):
                    raise ValueError
            else:
                if any(int(x) < 0 for x in s.split(",")):
                    raise ValueError
        except ValueError:
            raise ValueError(bad) from None
        return s
    if isinstance(spec, (bool, float)):
        raise ValueError(bad)
    if isinstance(spec, (int, np.integer)):
        spec = [int(spec)]
    try:
        out = tuple(int(x) for x in spec)
    except (TypeError, ValueError):
        raise ValueError(bad) from None
    if not out or any(x < 0 for x in out) or any(isinstance(x, bool) for x in spec):
        raise ValueError(bad)
    return out


def resolve_layers(spec, n_layers: int, method: str = "layers") -> list:
    """A (normalised) ``layers`` parameter -> sorted list of layer indices of a model with ``n_layers``."""
    spec = _layer_spec(method, spec)
    if spec == "all":
        return list(range(n_layers))
    if isinstance(spec, tuple):
        out = sorted(set(spec))
    elif ":" in spec:
        a, b = spec.split(":")
        lo, hi = (int(a) if a else 0), (int(b) if b else n_layers)
        out = list(range(lo, hi))
    elif "-" in spec[1:]:
        a, b = spec.split("-")
        out = list(range(int(a), int(b) + 1))
    else:
        out = sorted({int(x) for x in spec.split(",")})
    if not out or out[-1] >= n_layers:
        raise ValueError(f"{method}: layers={spec!r} selects layers {out[:1] + out[-1:]} but the model has "
                         f"{n_layers} layers (0..{n_layers - 1})")
    return out


def _check_groups(method: str, layouts, groups) -> None:
    """One-line error when a sample of the batch has no token of a group (e.g. no audio)."""
    for b, lay in enumerate(layouts):
        for g in groups:
            try:
                lay.group(g)
            except ValueError as e:
                raise ValueError(f"{method}: sample {b}: {e}") from None


class _GroupsMixin:
    """``needs`` from the token-group parameters, and a ``check_data`` that maps groups to modalities."""

    _group_params: tuple = ()

    def _groups(self) -> tuple:
        return tuple(self.params[k] for k in self._group_params)

    def _set_needs(self) -> None:
        needs = []
        for g in self._groups():
            mod = {"subtitle": "text", "content": "text"}.get(g, g)
            if g in GROUP_MODALITY and mod not in needs:
                needs.append(mod)
        self.needs = tuple(needs)

    def predict(self, lm, samples, task: Task):
        """One forward of the plain fine query under this method's ops (``ops_for``), answers in the
        method's answer mode, records from ``predictions_from``."""
        p = self.params
        prompts = fine_prompts(samples, task, contrastive=p["prompt_spans"])
        batch = lm.encode(samples, prompts)
        answers, trace, _ = run(lm, samples, prompts, Plan(self.ops_for(lm, batch)), batch=batch, params=p)
        return self.predictions_from(answers, trace, batch, batch.generated)

    def check_data(self, modalities: Sequence[str]) -> None:
        have = [str(m) for m in modalities]
        for g, k in zip(self._groups(), self._group_params):
            ok = GROUP_MODALITY.get(g)
            if ok is not None and not any(m in have for m in ok):
                raise ValueError(f"method {self.name} needs {ok[0]} input for {k}={g!r} but the dataset has only "
                                 f"{have}; pick a dataset with {ok[0]} or change the method's token groups")


# =========================================================================== AR
class _ARFn:
    """The ``RowEdit(stage="probs")`` callback of AR: Algorithm 1 on the rows of one layer."""

    def __init__(self, source: str, target: str, tau: float):
        self.source, self.target, self.tau = source, target, float(tau)

    def __call__(self, probs, ctx):
        out, info = reallocate(probs, ctx.keys_in(self.source), ctx.keys_in(self.target), self.tau)
        if ctx.step == "prefill":
            ctx.decisions.setdefault("ar", {})[ctx.layer] = info
        return out


class AR(_GroupsMixin, Method):
    """MoSEAR Attention Reallocation (seed 003 Sec. 5.2, Algorithm 1): at the decoding-step row of every
    layer, heads that over-attend the source group (c_h > c > tau) give mass to the target group until
    their ratio equals the layer's (Eqs. 8-14). Training-free, one forward."""

    name = "ar"
    PARAMS = {
        "tau": Param(1.0, float, low=0.0, doc="Eq. (7) threshold: a layer is biased iff c > tau (Table 8: tau = 1 best)"),
        "source": Param("audio", str, choices=GROUPS, doc="the over-attended group A (MoSEAR: audio)"),
        "target": Param("visual", str, choices=GROUPS, doc="the group that receives the mass V (MoSEAR: visual)"),
        "layers": Param("all", str, doc="'all' (Algorithm 1: every layer), 'a-b', 'a:b', 'a,b' or a list"),
        "prompt_spans": Param(False, bool, doc="the shared prompt: add WETR's Q_pos/Q_neg spans (default: the plain query)"),
    }
    _group_params = ("source", "target")

    def validate(self) -> None:
        p = self.params
        if {"subtitle": "content", "text": "content"}.get(p["source"], p["source"]) == \
                {"subtitle": "content", "text": "content"}.get(p["target"], p["target"]):
            raise ValueError(f"ar: source and target are the same token group ({p['source']!r}); pick two groups")
        p["layers"] = _layer_spec(self.name, p["layers"])
        self._set_needs()

    def plan(self, layers: Union[str, Sequence[int]] = "all", record: bool = False) -> Plan:
        """The intervention plan. ``record=True`` also stores the rows before (``trace.captures[("ar_in",
        l)]``) and after (``("ar", l)``) the reallocation of each edited layer."""
        p = self.params
        ops = [RowEdit(layers=layers, rows="last", fn=_ARFn(p["source"], p["target"], p["tau"]), stage="probs",
                       steps="all", name="ar" if record else None)]
        if record:
            ops.insert(0, Capture(layers=layers, rows="last", name="ar_in"))
        return Plan(ops)

    wants_spans = False

    def ops_for(self, lm, batch, samples=None, admitted=None) -> list:
        """The plan ops for an encoded batch (also as a composition partner, ``methods.compose``)."""
        p = self.params
        _check_groups(self.name, batch.layouts, (p["source"], p["target"]))
        self._n_layers = lm.num_layers
        return list(self.plan(resolve_layers(p["layers"], lm.num_layers, self.name)).ops)

    def _extras(self, trace, B: int, n_layers: int) -> list:
        layers = resolve_layers(self.params["layers"], n_layers, self.name)
        rec = trace.decisions.get("ar", {})
        extras = []
        for b in range(B):
            c, lb, nb, mv = [], [], [], []
            for l in layers:
                info = rec[l]
                cv = float(info["c"][b, 0])
                c.append(None if math.isnan(cv) else cv)
                lb.append(bool(info["layer_biased"][b, 0]))
                nb.append(int(info["n_biased"][b, 0]))
                mv.append(float(info["moved"][b, 0]))
            extras.append({"ar": {"layers": list(layers), "c": c, "layer_biased": lb, "n_biased_heads": nb,
                                  "moved_mass": mv}})
        return extras

    def predictions_from(self, answers, trace, batch, texts=None) -> list:
        return to_predictions(answers, self._extras(trace, len(batch.layouts), self._n_layers), texts)



# =========================================================================== PAI
class _PAIFn:
    """The ``RowEdit(stage="logits")`` callback of PAI: ``s <- s + alpha |s|`` on the target keys."""

    def __init__(self, group: str, alpha: float):
        self.group, self.alpha = group, float(alpha)

    def __call__(self, scores, ctx):
        tgt = ctx.keys_in(self.group)[:, None, None, :]
        edited = scores + torch.where(tgt, self.alpha * scores.abs(), torch.zeros_like(scores))
        if ctx.step == "prefill":
            allowed = ctx.allowed
            before = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1)
            after = torch.softmax(edited.masked_fill(~allowed, float("-inf")), -1)
            tf = tgt.to(before.dtype)
            ctx.decisions.setdefault("pai", {})[ctx.layer] = {
                "mass_before": (before * tf).sum(-1).mean(1), "mass_after": (after * tf).sum(-1).mean(1)}
        return edited


class PAI(_GroupsMixin, Method):
    """PAI (Liu et al. 2024, [49] in seed 003): amplify the pre-softmax attention scores of the target
    group (image tokens) at the last query row, all heads, a range of layers: ``s <- s + alpha |s|``."""

    name = "pai"
    PARAMS = {
        "alpha": Param(0.5, float, low=0.0, doc="amplification (PAI Sec. 5.1: 0.5 for LLaVA-1.5; code default 0.2)"),
        "group": Param("visual", str, choices=GROUPS, doc="the token group whose scores are amplified (PAI: image)"),
        "layers": Param("all", str, doc="'all' (MoSEAR's description of PAI: every layer); '2:' = PAI's own code "
                                        "(start_layer=2 .. end_layer=n_layers)"),
        "prompt_spans": Param(False, bool, doc="the shared prompt: add WETR's Q_pos/Q_neg spans (default: the plain query)"),
    }
    _group_params = ("group",)

    def validate(self) -> None:
        self.params["layers"] = _layer_spec(self.name, self.params["layers"])
        self._set_needs()

    def plan(self, layers: Union[str, Sequence[int]] = "all", record: bool = False) -> Plan:
        """The intervention plan; ``record=True`` also stores the rows before (``("pai_in", l)``) and
        after (``("pai", l)``) the edit."""
        p = self.params
        ops = [RowEdit(layers=layers, rows="last", fn=_PAIFn(p["group"], p["alpha"]), stage="logits", steps="all",
                       name="pai" if record else None)]
        if record:
            ops.insert(0, Capture(layers=layers, rows="last", name="pai_in"))
        return Plan(ops)

    wants_spans = False

    def ops_for(self, lm, batch, samples=None, admitted=None) -> list:
        """The plan ops for an encoded batch (also as a composition partner, ``methods.compose``)."""
        p = self.params
        _check_groups(self.name, batch.layouts, (p["group"],))
        self._n_layers = lm.num_layers
        return list(self.plan(resolve_layers(p["layers"], lm.num_layers, self.name)).ops)

    def predictions_from(self, answers, trace, batch, texts=None) -> list:
        layers = resolve_layers(self.params["layers"], self._n_layers, self.name)
        rec = trace.decisions.get("pai", {})
        extras = [{"pai": {"layers": list(layers),
                           "mass_before": [float(rec[l]["mass_before"][b, 0]) for l in layers],
                           "mass_after": [float(rec[l]["mass_after"][b, 0]) for l in layers]}}
                  for b in range(len(batch.layouts))]
        return to_predictions(answers, extras, texts)



# =========================================================================== the Sec. 4 analysis
def middle_layers(n_layers: int) -> list:
    """The "middle layers" of MoSEAR Sec. 4 (the paper does not say which): ``[L//4, L - L//4)``,
    i.e. layers 2..5 of 8, 8..23 of 32."""
    q = n_layers // 4
    return list(range(q, n_layers - q)) or list(range(n_layers))


def uap_profile(lm, samples, task: Task, *, groups: Sequence[str] = ("visual", "audio"),
                middle: Optional[Sequence[int]] = None, batch_size: int = 16, prompt_spans: bool = False) -> dict:
    """MoSEAR Sec. 4 on a model: UAP per layer at the answer row (Eq. 1, Fig. 3a) and the per-token
    attention averaged over the middle layers (Fig. 3b), with the zero-shot answers of the same forward.

    Eq. (1): ``UAP_g = (1/H) sum_h sum_{x in g} w_h(x)`` at the decoding step (here the answer row, whose
    next-token logits give the answer letter), computed by :func:`emolens.metrics.uap_per_layer`.

    Returns a dict (numpy arrays):
        ``layers`` ``[L]``; ``middle`` (the layers averaged; default :func:`middle_layers`);
        ``uap``: group -> ``[N, L]``; ``uap_middle``: group -> ``[N]`` (mean over ``middle``);
        ``per_token``: list of ``[K_b]`` head-averaged attention of the answer row over each sample's
        non-pad keys, averaged over ``middle`` (Fig. 3b); ``per_token_group``: group -> list of
        ``[n_g]`` (the same weights on that group's tokens, in token order);
        ``gold``, ``pred`` (labels), ``correct`` ``[N]`` bool.
    """
    from ..metrics import uap_per_layer

    samples = list(samples)
    if not samples:
        raise ValueError("uap_profile needs at least one sample")
    groups = tuple(groups)
    L = lm.num_layers
    mid = list(middle) if middle is not None else middle_layers(L)
    if not mid or min(mid) < 0 or max(mid) >= L:
        raise ValueError(f"middle layers {mid} are outside the model's {L} layers (0..{L - 1})")
    uap = {g: [] for g in groups}
    per_token, per_group = [], {g: [] for g in groups}
    gold, pred = [], []
    plan = Plan([Capture(layers="all", rows="answer", name="answer")])
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        prompts = fine_prompts(chunk, task, contrastive=prompt_spans)
        batch = lm.encode(chunk, prompts)
        _check_groups("uap_profile", batch.layouts, groups)
        answers, trace, _ = run(lm, chunk, prompts, plan, batch=batch)
        probs = torch.stack([trace.get("answer", l).probs[:, :, 0] for l in range(L)], 1)  # [B, L, H, K]
        probs = probs.double().cpu().numpy()
        for b, lay in enumerate(batch.layouts):
            pos = {g: lay.group(g) for g in groups}
            u = uap_per_layer(probs[b], pos)
            for g in groups:
                uap[g].append(u[g])
            tok = probs[b][mid].mean(1).mean(0)                                  # [K] heads, then layers
            per_token.append(tok[lay.pad:])
            for g in groups:
                per_group[g].append(tok[pos[g]])
        gold += [s.label for s in chunk]
        pred += [a.label for a in answers]
    U = {g: np.stack(v) for g, v in uap.items()}
    return {"layers": np.arange(L), "middle": np.asarray(mid), "groups": groups,
            "uap": U, "uap_middle": {g: v[:, mid].mean(1) for g, v in U.items()},
            "per_token": per_token, "per_token_group": per_group,
            "gold": gold, "pred": pred, "correct": np.asarray([g == p for g, p in zip(gold, pred)])}


__all__ = ["group_mass", "head_ratio", "layer_ratio", "biased_heads", "reallocate_head", "reallocate",
           "resolve_layers", "middle_layers", "uap_profile", "AR", "PAI", "GROUPS"]
