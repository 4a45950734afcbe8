"""Method-level cost (``emolens bench --methods``): every method's end-to-end cost as a ratio to
zero-shot, measured side by side (interleaved rounds) in one run (issue 13).

Models:

* ``tiny``: the shipped emolens-tiny (hidden 128, 8 layers, ~100 tokens, 64 visual);
* ``mid``: the emolens-tiny architecture, random-initialised at hidden 1024, 12 layers (16 / 4 heads,
  MLP 2816), frames resized to 21 x 21 tokens each: world-mer's 2-frame clips give 882 visual tokens of
  ~930 (a 7B VLM input's visual share, half its length; 4-frame data would give 1764 of ~1870).
  Random weights: the cost is what is measured, not accuracy.

Per method (every name in ``methods.registry()``, two compositions, and ``NAME+prune`` for every
method with a ``prune`` parameter):

* ``prefill_ratio``: ``predict`` with ``answer=logits`` (all the forwards a method makes to read its
  answer: SEPM's two stages, NTS's one) over ``t(zero-shot)`` measured in the same round; median
  over rounds; methods' order rotates per round.
* ``ratio``: the same with ``answer=generate`` (``max_new_tokens`` greedy steps; EOS may stop a
  method early, so this mixes decode lengths: ``decode_steps`` is reported).
* ``limit``: the FLOPs ratio the processed token counts imply, from the prefill run: every decoder
  layer call on ``n`` tokens costs ``2 n P_layer + 2 n^2 d`` (weights, causal attention), counted
  with a forward hook on each decoder layer, over zero-shot's count. Mask mode's limit is its number
  of full forwards; physical pruning lowers it (``l/L + (1 - l/L) kept`` per forward).
* ``efficiency``: ``prefill_ratio / limit`` (1 = the method costs exactly what its token counts imply).
* ``peak_memory_ratio``: activation peak of the prefill run over zero-shot's (``bench._peak``'s method:
  CUDA max_memory_allocated or CPU profiler allocator events).

``prune_equivalence_max_abs_logit_diff``: the largest |logit difference| between ``prune=true`` and
mask mode, over NTS / WETR / SparseVLM answer logits and SEPM's option probabilities, on both models.
"""
from __future__ import annotations

import statistics
import time
from typing import Optional

import numpy as np
import torch

from . import attention as A

MID = dict(hidden_size=1024, num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=4, head_dim=64,
           intermediate_size=2816, max_position_embeddings=4096)
MID_IMAGE = 168          # 8-px patches: 21 x 21 per frame (world-mer: 2 frames -> 882 visual tokens)
COMPOSITIONS = ("sepm+wetr", "ar+nts")
#: SEPM before/after the stage sharing (issue 13): ``/recompute`` = ``reuse_prefix=false`` (stage 2 recomputes
#: everything under a key mask); ``/no-vta`` = CCI + FP only (stage 2 continues stage 1's prefix KV cache)
SEPM_VARIANTS = {"sepm/recompute": {"reuse_prefix": False}, "sepm/no-vta": {"vta": False},
                 "sepm/no-vta/recompute": {"vta": False, "reuse_prefix": False}}


def _lm_tiny(device, dtype):
    from .models import load_model

    return load_model("emolens-tiny", device=str(device), dtype=dtype)


def _lm_mid(device, dtype, seed: int = 0):
    """The mid-size bench model: emolens-tiny's architecture and processor at 7B-input proportions."""
    from .models import load_model
    from .models.base import LoadedModel
    from .models.tiny import TinyProcessor, build_model

    tiny = load_model("emolens-tiny", device="cpu", dtype=torch.float32)
    tok = tiny.processor.tokenizer
    model = build_model(tok, seed=seed, image_size=MID_IMAGE, vision_encoder=tiny.model.config.vision_encoder, **MID)
    model = model.to(device=device, dtype=dtype).eval()
    A.install(model)
    proc = TinyProcessor(tok, model.config)
    return LoadedModel(model=model, processor=proc, family="emolens-tiny", device=device, dtype=dtype,
                       encoder=lambda s, p: proc(s, p, device=device), letter_ids=proc.letter_ids, name="bench-mid")


def method_names() -> list:
    from .methods import registry

    reg = registry()
    names = sorted(reg)
    names += [c for c in COMPOSITIONS]
    # sepm's default (reuse_prefix=true) already prunes VTA's drop: "sepm+prune" would be the same run
    names += [f"{n}+prune" for n in sorted(reg) if "prune" in reg[n].PARAMS and n != "sepm"]
    names += list(SEPM_VARIANTS)
    return names


def make(name: str, **params):
    from .methods import get_method

    if name in SEPM_VARIANTS:
        return get_method("sepm", **SEPM_VARIANTS[name], **params)
    if name.endswith("+prune"):
        return get_method(name[: -len("+prune")], prune=True, **params)
    return get_method(name, **params)


class _Clock:
    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.a, self.b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.a.record()
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.b.record()
            torch.cuda.synchronize()
            self.s = self.a.elapsed_time(self.b) / 1e3
        else:
            self.s = time.perf_counter() - self.t


class _Flops:
    """Counts ``2 n P + 2 n^2 d`` per decoder-layer call (prefill-sized calls: n > 1)."""

    def __init__(self, model):
        self.layers = A.decoder_layers(model)
        cfg = A.text_config(model)
        self.P = sum(p.numel() for p in self.layers[0].parameters())
        self.d = int(cfg.num_attention_heads) * int(getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads))
        self.total = 0.0
        self.handles = []

    def __enter__(self):
        def hook(mod, args, out):
            h = out[0] if isinstance(out, tuple) else out
            n, B = h.shape[1], h.shape[0]
            if n > 1:
                self.total += B * (2.0 * n * self.P + 2.0 * n * n * self.d)
        self.handles = [l.register_forward_hook(hook) for l in self.layers]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def bench_model(label: str, lm, samples, task, names, repeats: int, new_tokens: int) -> dict:
    from .bench import _peak_fn

    device = lm.device
    methods = {n: (make(n), make(n, answer="generate", max_new_tokens=new_tokens)) for n in names}
    # warm-up (one untimed generate, then) prefill with the FLOPs count; decode lengths from the timed rounds
    flops, steps = {}, {}
    with torch.no_grad():
        methods["zero-shot"][1].predict(lm, samples, task)
    for n, (m, g) in methods.items():
        with torch.no_grad(), _Flops(lm.model) as f:
            m.predict(lm, samples, task)
        flops[n] = f.total
    pre = {n: [] for n in names}
    tot = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            m, g = methods[n]
            with torch.no_grad(), _Clock(device) as c:
                m.predict(lm, samples, task)
            pre[n].append(c.s)
            with torch.no_grad(), _Clock(device) as c:
                preds = g.predict(lm, samples, task)
            tot[n].append(c.s)
            steps[n] = float(np.mean([len((p.generated or "").split()) for p in preds]))
    z = "zero-shot"
    peaks = {n: _peak_fn(lambda _m=methods[n][0]: _m.predict(lm, samples, task), device) for n in names}
    out = {}
    for n in names:
        pr = statistics.median(a / b for a, b in zip(pre[n], pre[z]))
        tr = statistics.median(a / b for a, b in zip(tot[n], tot[z]))
        lim = flops[n] / flops[z]
        out[n] = {"ratio": round(tr, 4), "prefill_ratio": round(pr, 4), "limit": round(lim, 4),
                  "efficiency": round(pr / lim, 4), "peak_memory_ratio": round(peaks[n] / max(1, peaks[z]), 4),
                  "prefill_ms": round(1e3 * statistics.median(pre[n]), 2),
                  "total_ms": round(1e3 * statistics.median(tot[n]), 2),
                  "peak_mib": round(peaks[n] / 2**20, 2), "generated_words": steps[n]}
    return out


def prune_equivalence(lm, samples, task) -> dict:
    """Per method, max |prune=true - mask mode|: NTS / WETR / SparseVLM answer logits, SEPM's option
    probabilities (``reuse_prefix=false`` with and without ``prune``)."""
    from .intervene import Plan
    from .methods.common import fine_prompts, forward_logits
    from .prune import Prune

    worst = {}
    for n in ("nts", "wetr", "sparsevlm"):
        m = make(n)
        if n == "sparsevlm":
            batch = lm.encode(samples, fine_prompts(samples, task))
            ops = m.ops_for(lm, batch, samples)
        else:
            batch = lm.encode(samples, m.prompts(samples, task))
            ops = m.plan_for(lm, batch, samples).ops
        a, _ = forward_logits(lm, batch, Plan(list(ops)))
        b, _ = forward_logits(lm, batch, Plan(list(ops) + [Prune()]))
        worst[n] = float((a.float() - b.float()).abs().max())
    p0 = make("sepm", reuse_prefix=False).predict(lm, samples, task)
    p1 = make("sepm+prune", reuse_prefix=False).predict(lm, samples, task)
    worst["sepm"] = _max_prob_diff(p0, p1)
    return worst


def _max_prob_diff(p0, p1) -> float:
    return max(abs(x.option_probs[k] - y.option_probs[k]) for x, y in zip(p0, p1) for k in x.option_probs)


def sepm_reuse_equivalence(lm, samples, task) -> float:
    """max |option prob| difference of SEPM with ``reuse_prefix`` against recomputation (default and no-VTA)."""
    worst = 0.0
    for a, b in (("sepm", "sepm/recompute"), ("sepm/no-vta", "sepm/no-vta/recompute")):
        worst = max(worst, _max_prob_diff(make(a).predict(lm, samples, task), make(b).predict(lm, samples, task)))
    return worst


def run_methods(models=("tiny", "mid"), repeats: int = 3, batch: int = 2, new_tokens: int = 8,
                device: str = "auto", only: Optional[list] = None, memory: bool = True) -> dict:
    from .data import load_dataset
    from .methods import Task
    from .models.base import resolve_device

    dev = resolve_device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    ds = load_dataset("world-mer", limit=batch)
    samples, task = [ds[i] for i in range(len(ds))], Task.from_dataset(ds)
    names = only or method_names()
    if "zero-shot" not in names:
        names = ["zero-shot"] + list(names)
    res = {"methods": {}, "by_model": {}, "prune_equivalence_max_abs_logit_diff": 0.0,
           "prune_equivalence_by_method": {}, "sepm_reuse_max_abs_prob_diff": 0.0,
           "config": {"device": str(dev), "dtype": str(dtype).replace("torch.", ""), "repeats": repeats,
                      "batch": batch, "dataset": "world-mer", "max_new_tokens": new_tokens,
                      "torch": torch.__version__, "threads": torch.get_num_threads(), "models": {},
                      "timing": ("CUDA events" if dev.type == "cuda" else "wall clock (perf_counter)")
                      + "; median over rounds of t(method)/t(zero-shot), methods interleaved per round",
                      "limit": "FLOPs 2nP + 2n^2 d per decoder-layer call from the processed token counts"}}
    for label in models:
        lm = _lm_tiny(dev, dtype) if label == "tiny" else _lm_mid(dev, dtype)
        from .methods.common import fine_prompts

        lay = lm.encode(samples[:1], fine_prompts(samples[:1], task)).layouts[0]
        cfg = A.text_config(lm.model)
        res["config"]["models"][label] = {"hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers,
                                          "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
                                          "tokens": int(lay.seq_len), "visual": int(lay.visual.size)}
        res["by_model"][label] = bench_model(label, lm, samples, task, names, repeats, new_tokens)
        eq = prune_equivalence(lm, samples, task)
        res["prune_equivalence_by_method"][label] = eq
        res["prune_equivalence_max_abs_logit_diff"] = max([res["prune_equivalence_max_abs_logit_diff"]] + list(eq.values()))
        res["sepm_reuse_max_abs_prob_diff"] = max(res["sepm_reuse_max_abs_prob_diff"],
                                                  sepm_reuse_equivalence(lm, samples, task))
        del lm
    if memory:
        res["memory_7b"] = memory_7b(device)
    # the headline table: the largest model measured
    res["methods"] = res["by_model"][models[-1]]
    return res


def format_methods(res: dict) -> str:
    lines = []
    for label, rows in res["by_model"].items():
        c = res["config"]["models"][label]
        lines.append(f"[{label}] hidden {c['hidden']}, {c['layers']} layers, {c['tokens']} tokens "
                     f"({c['visual']} visual); {res['config']['device']} {res['config']['dtype']}")
        lines.append(f"  {'method':<22}{'prefill':>9}{'total':>9}{'limit':>8}{'effic.':>8}{'peak mem':>10}")
        for n, r in rows.items():
            lines.append(f"  {n:<22}{r['prefill_ratio']:>9.3f}{r['ratio']:>9.3f}{r['limit']:>8.3f}"
                         f"{r['efficiency']:>8.3f}{r['peak_memory_ratio']:>10.3f}")
    lines.append(f"prune_equivalence_max_abs_logit_diff: {res['prune_equivalence_max_abs_logit_diff']:.2e} "
                 f"(by model and method: {res.get('prune_equivalence_by_method')})")
    lines.append(f"sepm_reuse_max_abs_prob_diff: {res.get('sepm_reuse_max_abs_prob_diff', float('nan')):.2e}")
    if "memory_7b" in res:
        lines.append(_memory_line(res["memory_7b"]))
    return "\n".join(lines)


def _memory_line(m: dict) -> str:
    c = m["config"]
    b, a = m["before"], m["after"]
    return (f"NTS cross-modal capture, LLaVA-7B-shaped (hidden {c['hidden']}, {c['layers']} layers, {c['visual']} visual "
            f"of {c['seq']} tokens, batch {c['batch']}; EXTRAPOLATED from {c['built_layers']} built layer(s)): stored "
            f"{b['stored_mib_per_trigger']:.1f} MiB -> {a['stored_mib_per_trigger']:.1f} MiB per trigger layer; extra "
            f"peak {b['extra_peak_mib_per_trigger']:.1f} -> {a['extra_peak_mib_per_trigger']:.1f} MiB per trigger; "
            f"NTS {b['nts_extra_peak_mib']:.1f} -> {a['nts_extra_peak_mib']:.1f} MiB, WETR {b['wetr_extra_peak_mib']:.1f} "
            f"-> {a['wetr_extra_peak_mib']:.1f} MiB (reduce={b['reduce']} -> {a['reduce']!r})")


def markdown_methods(res: dict, targets: Optional[dict] = None) -> str:
    """The README table from a ``bench --methods`` JSON (one table per model, config line first)."""
    out = []
    cfg = res["config"]
    for label, rows in res["by_model"].items():
        c = cfg["models"][label]
        out.append(f"**{label}**: hidden {c['hidden']}, {c['layers']} layers, {c['heads']}/{c['kv_heads']} heads, "
                   f"{c['tokens']} tokens ({c['visual']} visual), batch {cfg['batch']}, {cfg['device']} {cfg['dtype']}, "
                   f"{cfg['repeats']} rounds\n")
        out.append("| method | prefill ratio | total ratio | limit | efficiency | peak memory |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for n, r in rows.items():
            out.append(f"| {n} | {r['prefill_ratio']:.3f} | {r['ratio']:.3f} | {r['limit']:.3f} | "
                       f"{r['efficiency']:.3f} | {r['peak_memory_ratio']:.3f} |")
        out.append("")
    out.append(f"prune_equivalence_max_abs_logit_diff = {res['prune_equivalence_max_abs_logit_diff']:.2e}; "
               f"sepm_reuse_max_abs_prob_diff = {res.get('sepm_reuse_max_abs_prob_diff', float('nan')):.2e}")
    if "memory_7b" in res:
        out.append("")
        out.append(_memory_line(res["memory_7b"]))
    return "\n".join(out)


# =========================================================================== the 7B-shaped memory figure
#: LLaVA-1.5-7B's decoder (Vicuna-7B: hidden 4096, 32 layers, 32 heads, no GQA, MLP 11008) and input (576
#: visual tokens after the projector; ~64 text tokens, 24 of them subtitle/content), at batch 4 (issue 16)
LLAVA7B = dict(hidden=4096, layers=32, heads=32, kv_heads=32, head_dim=128, inter=11008, vocab=1024,
               seq=640, visual=576, content=24, batch=4)


def memory_7b(device: str = "auto", built_layers: int = 1, cfg: Optional[dict] = None) -> dict:
    """Peak memory of NTS's cross-modal capture (every visual and content row against all keys, at each
    trigger layer) on a LLaVA-7B-shaped random decoder, **extrapolated** from ``built_layers`` layers.

    A random-initialised Qwen3 decoder of LLaVA-7B's width (``LLAVA7B``; ``built_layers`` layers, not 32:
    the full model does not fit the bench machine in float32) runs one forward of batch 4 without a
    capture, with ``Capture(reduce=None)`` (the full ``[B, H, R, K]`` float32 rows: the "before") and
    with ``Capture(reduce=nts.CROSS_CAPTURE_REDUCE)`` (the "after") at one layer. Per trigger layer:
    ``stored`` = the bytes the capture record keeps, ``extra_peak`` = activation peak with the capture
    minus without (``bench._peak_fn``: CUDA max_memory_allocated, or the CPU profiler's allocator events).
    The full model's figure is linear in the trigger layers: NTS acts at one layer (kept captures add
    ``stored`` per further trigger: WETR's ``n`` triggers keep ``n x stored``; the temporaries are freed
    after each layer, so the extra peak is ``(n - 1) x stored + extra_peak``).
    """
    from .bench import _device, _peak_fn, build
    from .intervene import Capture, Plan, intervene
    from .layout import TokenLayout
    from .methods import get_method
    from .methods import nts as N

    c = dict(LLAVA7B, **(cfg or {}))
    dev = _device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model, inputs, _ = build(dict(c, layers=built_layers, q_rows=1), dev, dtype)
    B, L, nv, nc = c["batch"], c["seq"], c["visual"], c["content"]
    ids = inputs["input_ids"].expand(B, L).contiguous()
    visual, content = np.arange(1, 1 + nv), np.arange(1 + nv, 1 + nv + nc)
    lay = TokenLayout(seq_len=L, visual=visual, content=content,
                      instruction=np.setdiff1d(np.arange(L), np.concatenate([visual, content])), answer=L - 1)
    layouts = [lay] * B
    rows = np.concatenate([visual, content])
    trig = 0

    def run(reduce=None, capture=True):
        plan = Plan([Capture(layers=[trig], rows=[rows] * B, name="vc", reduce=reduce)]) if capture else None
        with torch.no_grad():
            if plan is None:
                return model(input_ids=ids, use_cache=False), None
            with intervene(model, layouts, plan) as tr:
                out = model(input_ids=ids, use_cache=False)
            return out, tr

    A.install(model)
    run(capture=False)  # warm-up
    base = _peak_fn(lambda: run(capture=False)[0], dev)
    res = {}
    for label, red in (("before", None), ("after", N.CROSS_CAPTURE_REDUCE)):
        peak = _peak_fn(lambda _r=red: run(_r)[0], dev)
        _, tr = run(red)
        rec = tr.get("vc", trig)
        stored = sum(int(t.numel() * t.element_size()) for t in (rec.probs, rec.positions, rec.row_valid)
                     if isinstance(t, torch.Tensor))
        res[label] = {"reduce": red, "stored_mib_per_trigger": round(stored / 2**20, 2),
                      "extra_peak_mib_per_trigger": round(max(0, peak - base) / 2**20, 2),
                      "probs_shape": list(rec.probs.shape)}
        del tr, rec
    del model
    n_layers = c["layers"]
    trig_nts = get_method("nts").trigger_layers(n_layers)
    trig_wetr = get_method("wetr").trigger_layers(n_layers)
    for label, r in res.items():
        s, e = r["stored_mib_per_trigger"], r["extra_peak_mib_per_trigger"]
        r["nts_extra_peak_mib"] = round(e + (len(trig_nts) - 1) * s, 2)
        r["wetr_extra_peak_mib"] = round(e + (len(trig_wetr) - 1) * s, 2)
    return {"extrapolated": True,
            "how": f"measured on {built_layers} random decoder layer(s) of LLaVA-7B width (capture at one layer), "
                   f"extrapolated linearly to the {n_layers}-layer model's trigger layers (NTS {trig_nts}, WETR "
                   f"{trig_wetr}); memory: " + ("torch.cuda.max_memory_allocated" if dev.type == "cuda" else
                                                 "CPU profiler allocator events") + ", activation peak above the "
                   "no-capture forward",
            "config": {**{k: c[k] for k in ("hidden", "layers", "heads", "kv_heads", "head_dim", "inter", "seq",
                                              "visual", "content", "batch")},
                       "rows": int(rows.size), "device": str(dev), "dtype": str(dtype).replace("torch.", ""),
                       "built_layers": built_layers},
            "no_capture_peak_mib": round(base / 2**20, 2), **res}
