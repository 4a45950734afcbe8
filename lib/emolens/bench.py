"""Overhead of the emolens attention mechanism against the plain SDPA forward, side by side.

Two random-initialised Qwen3-style decoders (GQA), fed token ids, batch 1, no padding (so the plain
forward takes SDPA's fastest causal path):

* ``small``: hidden 128, 8 layers, ~300 tokens (200 "visual" positions);
* ``mid``: hidden 1024, 12 layers, ~2000 tokens (1700 "visual" positions).

Variants (each a plan under ``intervene``):

* ``installed``: the model switched to ``"emolens"`` without an intervention (dispatch cost only);
* ``capture``: ``Capture`` of the 10 ``q_pos`` rows at 4 trigger layers;
* ``key_mask``: ``KeyMask`` dropping half of the visual tokens from the first trigger layer on;
* ``row_edit``: ``RowEdit`` (re-weight visual keys, renormalise) at the answer row on every layer;
* ``after_layer``: WETR-style one-pass NTS + STR: capture at a trigger layer, a callback that picks
  the visual tokens to keep, masks the rest from the next layer and scales the kept ones' residual.

Timing: after one warm-up forward of every variant, ``repeats`` rounds each run every variant once
(the order rotates per round); the ratio of a variant is the median over rounds of
``t(variant) / t(plain)`` within the round.

On CPU the same ratio is also computed from process CPU time (``time.process_time``), which is far
less sensitive to other processes sharing the cores than wall time.

Peak memory: the peak of bytes allocated by torch during one forward, above what was allocated
before it (weights and inputs excluded, i.e. the activation peak; the stricter ratio). On CUDA:
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. On CPU: the allocator events
recorded by ``torch.profiler`` (``profile_memory=True``), whose running total is replayed in time
order and its maximum taken. Compared: plain SDPA, emolens capture, and eager attention with
``output_attentions=True`` (the usual way to read attention).
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from typing import Optional

import numpy as np
import torch

from . import attention as A
from .intervene import AfterLayer, Capture, KeyMask, RowEdit, intervene
from .layout import TokenLayout

CONFIGS = {
    "small": dict(hidden=128, layers=8, heads=4, kv_heads=2, head_dim=32, inter=384, vocab=512,
                  seq=300, visual=200, q_rows=10),
    "mid": dict(hidden=1024, layers=12, heads=16, kv_heads=4, head_dim=64, inter=2816, vocab=1024,
                seq=2000, visual=1700, q_rows=10),
}


def _device(device: str = "auto"):
    from .models.base import resolve_device

    return resolve_device(device)


def build(cfg: dict, device, dtype, seed: int = 0):
    """A random-initialised Qwen3 decoder, token ids ``[1, seq]`` and its TokenLayout."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    conf = Qwen3Config(vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], intermediate_size=cfg["inter"],
                       num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
                       num_key_value_heads=cfg["kv_heads"], head_dim=cfg["head_dim"],
                       max_position_embeddings=4 * cfg["seq"], tie_word_embeddings=False)
    model = Qwen3ForCausalLM._from_config(conf, attn_implementation="sdpa", dtype=dtype).to(device).eval()
    L, nv, nq = cfg["seq"], cfg["visual"], cfg["q_rows"]
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(3, cfg["vocab"], (1, L), generator=g).to(device)
    v0 = 20
    visual = np.arange(v0, v0 + nv)
    q_pos = np.arange(v0 + nv + 5, v0 + nv + 5 + nq)
    instruction = np.setdiff1d(np.arange(L), visual)
    layout = TokenLayout(seq_len=L, visual=visual, instruction=instruction, spans={"q_pos": q_pos}, answer=L - 1)
    return model, {"input_ids": ids, "use_cache": False}, layout


def _reweight(p, ctx):
    p = p * torch.where(ctx.keys_in("visual")[:, None, None, :], 1.5, 1.0)
    return p / p.sum(-1, keepdim=True)


def plans(cfg: dict, layout: TokenLayout) -> dict:
    n = cfg["layers"]
    trig = [n // 4, n // 4 + 1, n // 2, n // 2 + 1]
    keep = np.ones((1, layout.seq_len), dtype=bool)
    keep[0, layout.visual[::2]] = False
    half = len(layout.visual) // 2

    def decide(ctx):
        p = ctx.captures["q_pos"].sample(0).mean((0, 1))[torch.as_tensor(layout.visual, device=ctx.device)]
        order = torch.argsort(p, descending=True)
        k = torch.ones(1, layout.seq_len, dtype=torch.bool, device=ctx.device)
        k[0, torch.as_tensor(layout.visual, device=ctx.device)[order[half:]]] = False
        gamma = torch.ones(1, layout.seq_len, device=ctx.device)
        gamma[0, torch.as_tensor(layout.visual, device=ctx.device)[order[:half]]] = 1.2
        ctx.mask_keys(k)
        ctx.scale_residual(gamma)

    return {
        "installed": [],
        "capture": [Capture(layers=trig, rows="q_pos")],
        "key_mask": [KeyMask(from_layer=trig[0], keep=keep)],
        "row_edit": [RowEdit(layers="all", rows="answer", fn=_reweight)],
        "after_layer": [Capture(layers=[trig[0]], rows="q_pos"), AfterLayer(trig[0], decide)],
    }


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _run(model, inputs, layout, plan, impl):
    """One forward: impl 'sdpa' (plain), 'eager' (output_attentions) or 'emolens' (under plan)."""
    with torch.no_grad():
        if impl == "emolens" and plan is not None:
            with intervene(model, layout, plan):
                return model(**inputs)
        if impl == "eager":
            return model(**inputs, output_attentions=True)
        return model(**inputs)


def _set(model, impl):
    if A.attn_implementation(model) != impl:
        A.install(model, text_impl=impl)


def _timed(model, inputs, layout, plan, impl, device):
    """(wall seconds, process CPU seconds) of one forward."""
    _set(model, impl)
    _sync(device)
    c, t = time.process_time(), time.perf_counter()
    out = _run(model, inputs, layout, plan, impl)
    _sync(device)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    del out
    return dt, dc


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ start/stop lines (written to file descriptor 2)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (e.g. some notebook kernels)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _peak(model, inputs, layout, plan, impl, device) -> int:
    """Activation peak (bytes above what was allocated before the forward)."""
    _set(model, impl)
    return _peak_fn(lambda: _run(model, inputs, layout, plan, impl), device)


def _peak_fn(fn, device) -> int:
    """Activation peak of ``fn()`` (bytes above what was allocated before it): CUDA
    ``max_memory_allocated``, or on CPU the profiler's allocator events replayed in time order."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return int(peak)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    events = []

    def walk(node):
        if type(node.extra_fields).__name__ == "_ExtraFields_Allocation":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        for c in node.children:
            walk(c)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    events.sort()
    cur = peak = 0
    for _, size in events:
        cur += size
        peak = max(peak, cur)
    return int(peak)


def bench_config(name: str, cfg: dict, repeats: int, device, dtype) -> dict:
    model, inputs, layout = build(cfg, device, dtype)
    variants = plans(cfg, layout)
    names = ["plain"] + list(variants)

    def run(v):
        if v == "plain":
            return _timed(model, inputs, layout, None, "sdpa", device)
        return _timed(model, inputs, layout, variants[v], "emolens", device)

    for v in names:  # warm-up
        run(v)
    times = {v: [] for v in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for v in order:
            times[v].append(run(v))
    ratios = {v: statistics.median(t[0] / p[0] for t, p in zip(times[v], times["plain"])) for v in variants}
    cpu_ratios = {v: statistics.median(t[1] / p[1] for t, p in zip(times[v], times["plain"])) for v in variants}
    ms = {v: 1e3 * statistics.median(t[0] for t in times[v]) for v in names}

    peak = {"plain": _peak(model, inputs, layout, None, "sdpa", device),
            "capture": _peak(model, inputs, layout, variants["capture"], "emolens", device),
            "key_mask": _peak(model, inputs, layout, variants["key_mask"], "emolens", device),
            "row_edit": _peak(model, inputs, layout, variants["row_edit"], "emolens", device),
            "eager_output_attentions": _peak(model, inputs, layout, None, "eager", device)}
    _set(model, "sdpa")
    mem = {f"{k}_vs_plain": peak[k] / peak["plain"] for k in peak if k != "plain"}
    del model
    res = {"ratios": ratios, "ms": ms, "peak_bytes": peak, "peak_memory_ratio": mem}
    if device.type == "cpu":
        res["cpu_time_ratios"] = cpu_ratios
    return res


def run_bench(quick: bool = False, repeats: Optional[int] = None, device: str = "auto") -> dict:
    """Measure overhead ratios (median over repeats) and activation-peak memory ratios.

    ``quick=True``: the small config only, 2 repeats (for a test that the bench runs).
    Returns ``{"ratios": {config: {variant: ratio}}, "peak_memory_ratio": {config: {...}},
    "config": {...}, "ms": {...}, "peak_bytes": {...}}`` plus ``"cpu_time_ratios"`` on CPU.
    """
    device = _device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    reps = repeats or (2 if quick else 5)
    names = ["small"] if quick else ["small", "mid"]
    out = {"ratios": {}, "peak_memory_ratio": {}, "ms": {}, "peak_bytes": {},
           "config": {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "repeats": reps,
                      "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "models": {n: CONFIGS[n] for n in names},
                      "timing": "median over rounds of t(variant)/t(plain), variants interleaved per round",
                      "memory": ("torch.cuda.max_memory_allocated" if device.type == "cuda" else
                                 "torch.profiler allocator events (running total), CPU")
                      + ": activation peak above the pre-forward allocation"}}
    try:
        import transformers
        out["config"]["transformers"] = transformers.__version__
    except Exception:  # pragma: no cover
        pass
    for n in names:
        r = bench_config(n, CONFIGS[n], reps, device, dtype)
        for k in ("ratios", "peak_memory_ratio", "ms", "peak_bytes", "cpu_time_ratios"):
            if k in r:
                out.setdefault(k, {})[n] = r[k]
    return out


def format_table(res: dict) -> str:
    lines = []
    for n, ratios in res["ratios"].items():
        ms = res["ms"][n]
        lines.append(f"[{n}] plain SDPA forward: {ms['plain']:.1f} ms  ({res['config']['device']}, "
                     f"{res['config']['dtype']})")
        cpu = res.get("cpu_time_ratios", {}).get(n)
        lines.append(f"  {'variant':<26}{'time ratio':>12}{'median ms':>12}" + (f"{'cpu-time ratio':>16}" if cpu else ""))
        for v, r in ratios.items():
            lines.append(f"  {v:<26}{r:>12.3f}{ms[v]:>12.1f}" + (f"{cpu[v]:>16.3f}" if cpu else ""))
        lines.append(f"  {'peak memory (activations)':<26}{'ratio':>12}{'MiB':>12}")
        pb = res["peak_bytes"][n]
        lines.append(f"  {'plain':<26}{1.0:>12.3f}{pb['plain'] / 2**20:>12.1f}")
        for k, r in res["peak_memory_ratio"][n].items():
            v = k[: -len("_vs_plain")]
            lines.append(f"  {v:<26}{r:>12.3f}{pb[v] / 2**20:>12.1f}")
    return "\n".join(lines)


def main_bench(json_path: Optional[str] = None, quick: bool = False, methods: bool = False,
               device: str = "auto", repeats: Optional[int] = None, batch: int = 2, new_tokens: int = 8) -> dict:
    """Run the benchmark (mechanisms, or ``methods=True``: method-level cost, ``bench_methods``), print the
    table, optionally write JSON. ``quick``: emolens-tiny / the small config only. Returns the result dict."""
    if methods:
        from .bench_methods import format_methods, run_methods

        res = run_methods(models=("tiny",) if quick else ("tiny", "mid"), repeats=repeats or (1 if quick else 3),
                          device=device, batch=batch, new_tokens=new_tokens, memory=not quick)
        print(format_methods(res))
    else:
        res = run_bench(quick=quick, repeats=repeats, device=device)
        print(format_table(res))
    if json_path:
        from pathlib import Path

        p = Path(json_path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(res, indent=2))
        print(f"wrote {p}")
    return res
