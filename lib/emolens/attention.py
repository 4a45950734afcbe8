"""The one attention function emolens registers with transformers' ``AttentionInterface``.

A model whose text attention implementation is ``"emolens"`` (see :func:`install`) calls
:func:`emolens_attention` at every decoder layer. With no active intervention for that layer it
delegates to transformers' own SDPA function (``transformers.integrations.sdpa_attention``), so its
outputs are bit-identical to a model loaded with ``attn_implementation="sdpa"``. When
:func:`emolens.intervene.intervene` is active, the function hands the call to the intervention
session registered for the attention module, which captures, masks or edits attention rows (see
``intervene.py`` for the plan types).

The session is found through a module-level registry (:data:`_REGISTRY`, a ``WeakKeyDictionary``
from attention module to ``(session, layer index)``), filled on entering ``intervene`` and emptied
on exit. Model modules are never given new attributes and their ``forward`` methods are never
patched.

Also here: the row-level maths shared by captures and row edits (:func:`row_scores`,
:func:`row_allowed`, :func:`rows_output`), key-masked attention (:func:`full_allowed`,
:func:`compact_attention`) and the model utilities :func:`decoder_layers`, :func:`text_config`,
:func:`attn_implementation` and :func:`install`.

Limits: key indices are absolute positions, which holds for transformers' default ``DynamicCache``
(not for static/sliding-window caches that drop or offset keys); ``output_attentions=True`` returns
nothing under ``"emolens"`` (use ``Capture``); attention dropout is not applied to edited rows
(inference only); softcapping / attention sinks are not supported (as with SDPA).
"""
from __future__ import annotations

import weakref
from typing import Optional

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "emolens"

#: attention module -> (session, layer index); filled by ``intervene`` and emptied on exit.
_REGISTRY: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


# --------------------------------------------------------------------------- the attention function
def emolens_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Optional[torch.Tensor], scaling: Optional[float] = None,
                      dropout: float = 0.0, **kwargs):
    """transformers attention-interface function.

    Args:
        module: the attention module (``module.layer_idx`` is its decoder layer).
        query: ``[B, H, Q, D]`` (post-RoPE); key, value: ``[B, Hkv, K, D]`` (post-RoPE, cache included).
        attention_mask: what the ``"emolens"`` mask interface built (transformers' ``sdpa_mask``): a
            bool ``[B, 1, Q, K]`` mask (True = attend) or None (pure causal, no padding).

    Returns:
        ``(attn_output [B, Q, H, D], None)``.
    """
    entry = _REGISTRY.get(module) if len(_REGISTRY) else None
    if entry is None or getattr(module, "layer_idx", None) is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    session, layer = entry
    return session.attend(layer, module, query, key, value, attention_mask, scaling, dropout, kwargs)


def sdpa(module, query, key, value, attention_mask, scaling, dropout, kwargs) -> torch.Tensor:
    """transformers' SDPA attention (the stock path); returns ``[B, Q, H, D]``."""
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, **kwargs)[0]


AttentionInterface.register(NAME, emolens_attention)
# Without a registered mask function transformers builds no mask at all for an unknown
# implementation name, and padding would be silently ignored.
AttentionMaskInterface.register(NAME, sdpa_mask)


# --------------------------------------------------------------------------- row maths
def _scaling(module, query, scaling):
    if scaling is not None:
        return float(scaling)
    return float(getattr(module, "scaling", query.shape[-1] ** -0.5))


def row_queries(query: torch.Tensor, qidx: torch.Tensor) -> torch.Tensor:
    """Query vectors of chosen rows: ``query [B, H, Q, D]``, ``qidx [B, R]`` (indices into the Q axis)
    -> ``[B, H, R, D]``."""
    B, H, _, D = query.shape
    R = qidx.shape[1]
    return query.gather(2, qidx[:, None, :, None].expand(B, H, R, D))


def row_scores(query: torch.Tensor, key: torch.Tensor, qidx: torch.Tensor, scaling: float) -> torch.Tensor:
    """Scaled pre-softmax scores of chosen query rows against all keys, float32, ``[B, H, R, K]``.

    GQA is handled by viewing the queries as ``[B, Hkv, G*R, D]`` (query head ``h`` uses kv head
    ``h // G``, as ``repeat_kv`` does); K is never repeated or copied per query head.
    """
    B, H, _, D = query.shape
    Hkv, K = key.shape[1], key.shape[2]
    R = qidx.shape[1]
    q = row_queries(query, qidx).float().reshape(B, Hkv, (H // Hkv) * R, D)
    s = torch.matmul(q, key.float().transpose(-1, -2)) * scaling
    return s.view(B, H, R, K)


def row_allowed(attention_mask: Optional[torch.Tensor], qidx: torch.Tensor, rowpos: torch.Tensor, K: int,
                keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Which keys each chosen row may attend, exactly as the real attention masks them: ``[B, 1, R, K]`` bool.

    Args:
        attention_mask: the mask the layer received (bool ``[B|1, 1|H, Q, K]``, float additive, or None
            = causal without padding: query at absolute position p attends keys ``<= p``).
        qidx: ``[B, R]`` row indices into the query axis; rowpos: ``[B, R]`` absolute positions
            (key index == absolute position: left-padded rows, cache offset 0).
        keep: optional ``[B, K]`` bool key-keep vector (False = token dropped). Kept rows attend kept
            keys only; a dropped token's own row attends its own (diagonal) key only. The diagonal stays
            allowed wherever the causal/padding mask allows it, so no row is ever fully masked.
    """
    B, R = qidx.shape
    dev = qidx.device
    kar = torch.arange(K, device=dev)
    if attention_mask is None:
        allowed = (kar[None, None, :] <= rowpos[:, :, None])[:, None]
    else:
        m = attention_mask
        if m.dtype != torch.bool:
            m = m > torch.finfo(m.dtype).min / 2
        m = m[:, :1].expand(B, 1, m.shape[2], K)
        allowed = m.gather(2, qidx[:, None, :, None].expand(B, 1, R, K))
    if keep is not None:
        diag = kar[None, None, :] == rowpos[:, :, None]
        rowkeep = keep.gather(1, rowpos.clamp(min=0))
        allowed = allowed & ((keep[:, None, :] & rowkeep[:, :, None]) | diag)[:, None]
    return allowed


def full_allowed(attention_mask: Optional[torch.Tensor], B: int, Q: int, K: int, keep: torch.Tensor) -> torch.Tensor:
    """The layer's whole bool mask ``[B, 1, Q, K]`` with a key-keep vector ``keep [B, K]`` applied
    (same rule as :func:`row_allowed`). Used for key masks when the compact path does not apply (the
    mask transformers builds for a padded batch has this very shape)."""
    dev = keep.device
    kar = torch.arange(K, device=dev)
    qpos = torch.arange(Q, device=dev) + (K - Q)
    if attention_mask is None:
        base = (kar[None, :] <= qpos[:, None])[None, None].expand(B, 1, Q, K)
    else:
        base = attention_mask
        if base.dtype != torch.bool:
            base = base > torch.finfo(base.dtype).min / 2
        base = base[:, :1].expand(B, 1, Q, K)
    diag = (kar[None, :] == qpos[:, None])[None, None]
    rowkeep = keep[:, K - Q:]
    return base & ((keep[:, None, None, :] & rowkeep[:, None, :, None]) | diag)


def compact_index(keep: torch.Tensor) -> Optional[torch.Tensor]:
    """Kept key positions ``[B, Nk]`` when every row keeps the same number of keys, else None."""
    counts = keep.sum(1)
    if keep.shape[0] > 1 and bool((counts != counts[0]).any()):
        return None
    return keep.nonzero()[:, 1].view(keep.shape[0], -1)


def compact_attention(module, query, key, value, idx, scaling, dropout, kwargs) -> torch.Tensor:
    """Key-masked causal attention without a materialised mask (prefill, no padding): SDPA's causal
    path over the kept tokens only (``idx [B, Nk]``), which is exactly causal attention restricted to
    kept keys for kept rows; dropped rows attend their own key only (output = their value).
    Returns ``[B, Q, H, D]``."""
    B, H, N, D = query.shape
    Hkv, Dv = key.shape[1], value.shape[-1]
    G = H // Hkv
    Nk = idx.shape[1]
    gi = idx[:, None, :, None]
    qc = query.gather(2, gi.expand(B, H, Nk, D))
    kc = key.gather(2, gi.expand(B, Hkv, Nk, D))
    vc = value.gather(2, gi.expand(B, Hkv, Nk, Dv))
    oc = sdpa(module, qc, kc, vc, None, scaling, dropout, kwargs)
    out = value[:, :, None].expand(B, Hkv, G, N, Dv).reshape(B, H, N, Dv).transpose(1, 2).contiguous()
    out.scatter_(1, idx[:, :, None, None].expand(B, Nk, H, Dv), oc.to(out.dtype))
    return out


def rows_output(probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``P' V`` for chosen rows: ``probs [B, H, R, K]``, ``value [B, Hkv, K, D]`` -> ``[B, R, H, D]``
    (float32; GQA by reshaping, no repeat of V)."""
    B, H, R, K = probs.shape
    Hkv, D = value.shape[1], value.shape[-1]
    o = torch.matmul(probs.reshape(B, Hkv, (H // Hkv) * R, K), value.float())
    return o.view(B, H, R, D).transpose(1, 2)


# --------------------------------------------------------------------------- model utilities
def _language_model(model: nn.Module) -> nn.Module:
    seen = set()
    m = model
    while id(m) not in seen:
        seen.add(id(m))
        lm = getattr(m, "language_model", None)
        if isinstance(lm, nn.Module):
            m = lm
            continue
        inner = getattr(m, "model", None)
        if isinstance(inner, nn.Module) and getattr(m, "layers", None) is None:
            m = inner
            continue
        break
    return m


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The text decoder's layer list, for causal LMs (``model.model.layers``) and composite
    vision-language models (``model.model.language_model.layers``; any model with a
    ``language_model``). Raises a one-line ValueError when none is found."""
    lm = _language_model(model)
    for path in ("layers", "model.layers", "decoder.layers", "transformer.h", "transformer.layers"):
        obj = lm
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj):
            return obj
    # fallback: the longest ModuleList whose blocks hold a module with a layer_idx
    best = None
    for _, mod in lm.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod):
            if any(hasattr(sub, "layer_idx") for sub in mod[0].modules()):
                if best is None or len(mod) > len(best):
                    best = mod
    if best is None:
        raise ValueError(f"could not find the decoder layers of {type(model).__name__}; "
                         f"pass a causal LM or a model with a `language_model`")
    return best


_ATTN_MODULES: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()


def attention_modules(layer: nn.Module) -> list:
    """The attention module(s) of one decoder layer: submodules carrying ``layer_idx``."""
    got = _ATTN_MODULES.get(layer)
    if got is None:
        got = [m for m in layer.modules() if hasattr(m, "layer_idx") and m is not layer] or [layer]
        _ATTN_MODULES[layer] = got
    return list(got)


def text_config(model: nn.Module):
    """The config that drives the text decoder's attention (``text_config`` of composite models,
    the model config itself for causal LMs)."""
    layers = decoder_layers(model)
    for m in attention_modules(layers[0]):
        cfg = getattr(m, "config", None)
        if cfg is not None:
            return cfg
    return model.config.get_text_config(decoder=True)


def attn_implementation(model: nn.Module) -> Optional[str]:
    """The text decoder's attention implementation name (e.g. ``"sdpa"``, ``"eager"``, ``"emolens"``)."""
    return getattr(text_config(model), "_attn_implementation", None)


def install(model: nn.Module, text_impl: str = NAME) -> nn.Module:
    """Switch the model's text decoder attention to ``"emolens"`` (or ``text_impl``) and keep every
    other sub-model (vision tower, audio encoder) on ``"sdpa"``. Returns the model.

    Without an active ``intervene`` the outputs are bit-identical to the stock SDPA model.
    """
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):  # a plain nn.Module wrapping a transformers decoder
        first = decoder_layers(model)[0]
        inner = next((m for m in model.modules() if isinstance(m, PreTrainedModel)
                      and any(sub is first for sub in m.modules())), None)
        if inner is None:
            raise ValueError(f"{type(model).__name__} holds no transformers model around its decoder layers; "
                             f"emolens needs a transformers decoder (AttentionInterface)")
        install(inner, text_impl)
        return model
    cfg = model.config
    tcfg = text_config(model)
    if tcfg is cfg:
        model.set_attn_implementation(text_impl)
    else:
        impl = {}
        for key in getattr(cfg, "sub_configs", {}) or {}:
            sub = getattr(cfg, key, None)
            if sub is None:
                continue
            impl[key] = text_impl if sub is tcfg else "sdpa"
        if not any(getattr(cfg, k, None) is tcfg for k in impl):
            raise ValueError(f"could not find the text sub-config of {type(model).__name__}; "
                             f"set attn_implementation={{<text sub-config>: {text_impl!r}}} yourself")
        model.set_attn_implementation(impl)
    got = attn_implementation(model)
    if got != text_impl:
        raise RuntimeError(f"could not switch {type(model).__name__}'s text attention to {text_impl!r} "
                           f"(it is {got!r}); the model must use transformers' AttentionInterface")
    return model
