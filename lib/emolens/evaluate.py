"""Run a method over a dataset: predictions, metrics, latency, and token-selection quality.

``evaluate(model, dataset, method)`` is what ``emolens eval`` calls; notebooks call it too.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch


def _as_method(method, params: Optional[dict]):
    from .methods import Method, from_dict, get_method

    if isinstance(method, Method):
        if params:
            raise ValueError("pass hyperparameters either in the Method object or in params, not both")
        return method
    if isinstance(method, dict):
        return from_dict({**method, **(params or {})})
    return get_method(method, **(params or {}))


def _as_dataset(dataset, split: str, limit: Optional[int], root=None, **world):
    if hasattr(dataset, "labels") and hasattr(dataset, "__iter__"):
        return dataset
    from .data import load_dataset

    return load_dataset(dataset, split=split, limit=limit, root=root, **world)


class _PromptLog:
    """Wraps a LoadedModel's ``encode`` to record, per sample uid, the query text of every encode call
    (one per stage), and -- with ``shuffle_options`` -- to permute each prompt's options over the letters
    with a per-sample seed (``prompts.shuffle_options``; answers are read through the shuffled options)."""

    def __init__(self, model, shuffle_seed: Optional[int] = None):
        import dataclasses

        self.log: dict = {}
        self.shuffle_seed = shuffle_seed
        self.model = dataclasses.replace(model, encoder=self._encode)
        self._inner = model.encoder

    def _encode(self, samples, prompts):
        if self.shuffle_seed is not None:
            import zlib

            from .prompts import shuffle_options

            prompts = [shuffle_options(p, np.random.default_rng(
                [int(self.shuffle_seed), zlib.crc32(str(s.uid).encode()), len(self.log.get(s.uid, ()))]))
                for s, p in zip(samples, prompts)]
        for s, p in zip(samples, prompts):
            self.log.setdefault(s.uid, []).append(p.text)
        return self._inner(samples, prompts)

    def attach(self, preds, chunk):
        for p, s in zip(preds, chunk):
            texts = self.log.pop(s.uid, [])
            p.prompt = texts[0] if len(texts) == 1 else texts
        return preds


def metric_report(gold, pred, labels, manifest=None, scores=None) -> dict:
    """The metrics of one run, following the manifest's ``task`` and ``metric_options``.

    Classification: :func:`emolens.metrics.classification_report` (``f1_macro`` and ``f1_weighted``
    both, named), and ``f1`` = the average the manifest's ``metric_options.f1.average`` names (default
    weighted), recorded in ``f1_average``. ``task: sentiment-regression`` (CH-SIMS): also ``acc2``,
    ``acc3`` and ``sentiment_f1`` on scores (gold: the sample scores; predictions: negative -1,
    neutral 0, positive +1) with the manifest's conventions (MMSA's evaluation). ``unparseable``: the
    number of predictions with no label (generated text naming no option; counted wrong).
    """
    from . import metrics as M

    opts = dict(getattr(manifest, "metric_options", None) or {})
    rep = M.classification_report(gold, pred, list(labels))
    avg = str((opts.get("f1") or {}).get("average", "weighted"))
    if avg not in ("weighted", "macro"):
        raise ValueError(f"manifest metric_options.f1.average must be weighted or macro, got {avg!r}")
    rep["f1"] = rep["f1_" + avg]
    rep["f1_average"] = avg
    rep["unparseable"] = int(sum(p is None for p in pred))
    if getattr(manifest, "task", None) == "sentiment-regression":
        if scores is None or any(s is None for s in scores):
            raise ValueError("a sentiment-regression dataset needs Sample.score for every sample")
        value = {"negative": -1.0, "neutral": 0.0, "positive": 1.0}
        ps = [value.get(p, 0.0) if p is not None else float("nan") for p in pred]
        o2 = opts.get("acc2") or {}
        o3 = opts.get("acc3") or {}
        of = opts.get("sentiment_f1") or {}
        t = np.asarray(scores, dtype=np.float64)
        q = np.asarray(ps, dtype=np.float64)
        conv = o2.get("convention", "non-negative")
        pos = t >= 0 if conv == "non-negative" else t > 0
        q = np.where(np.isnan(q), np.where(pos, -1.0, 1.0), q)  # unparseable: the wrong side, counted wrong
        rep["acc2"] = M.acc2(t, q, conv)
        rep["acc3"] = M.acc3(t, q, float(o3.get("neutral_band", 0.1)))
        rep["sentiment_f1"] = M.sentiment_f1(t, q, of.get("convention", o2.get("convention", "non-negative")),
                                             of.get("average", "weighted"))
        rep["sentiment_options"] = {"acc2": o2, "acc3": o3, "sentiment_f1": of}
    return rep


def selection_quality(preds, samples) -> Optional[dict]:
    """Mean precision/recall of the selected visual tokens against the world's ground-truth cue
    tokens (only for methods that select tokens and datasets that know the cues)."""
    from .metrics import selection_scores

    rows = []
    for p, s in zip(preds, samples):
        truth = p.extra.get("_cue_visual") if p.extra else None
        if p.selected_visual is None or truth is None:
            continue
        rows.append(selection_scores(np.asarray(p.selected_visual, bool), np.asarray(truth, bool)))
    if not rows:
        return None
    keys = ("precision", "recall", "f1")
    return {k: float(np.mean([r[k] for r in rows])) for k in keys} | {"n": len(rows)}


def evaluate(model, dataset, method="zero-shot", params: Optional[dict] = None, *, split: str = "test",
             limit: Optional[int] = None, batch_size: int = 16, seed: int = 0, root=None, progress: bool = True,
             world: Optional[dict] = None, out: Union[str, Path, None] = None,
             shuffle_options: bool = False) -> dict:
    """Evaluate one method on one dataset.

    Args:
        model: a :class:`~emolens.models.base.LoadedModel` or a name/path for :func:`emolens.load_model`.
        dataset: a dataset object or a manifest name/path (``world-mer``, ``mer2023`` with ``root``...).
        method: a name, a plain dict ``{"method": ..., **hp}`` or a Method instance.
        params: hyperparameters for a method given by name.
        limit: evaluate only the first ``limit`` samples of the split.
        world: overrides for world datasets (``eps``, ``conflict``, ``informative``).
        out: the result JSON (written by rank 0). Predictions stream to ``<out>.rankK.jsonl`` as they
            finish; a rerun with the same ``out`` resumes, and under ``accelerate launch`` / ``torchrun``
            the samples are sharded by rank and merged in dataset order (see :mod:`emolens.parallel`).
        shuffle_options: permute each prompt's options over the letters, seeded by ``seed`` and the
            sample uid (letter-position bias; :func:`emolens.prompts.shuffle_options`).

    Every prediction records ``prompt``: the query text of each stage (a string, or a list for SEPM's
    two stages). Metrics follow the manifest (:func:`metric_report`).

    Returns:
        dict with ``metrics`` (war, uar, f1, macro_f1, per-class recall), ``latency_s`` (mean seconds
        per sample, total, and per rank), ``predictions`` (per sample: uid, gold, predicted, option probs, method
        extras), ``config`` and, for token-selecting methods on the world, ``selection``.
    """
    from . import metrics as M
    from .methods import Task

    if isinstance(model, (str, Path)):
        from .models import load_model

        model = load_model(str(model))
    m = _as_method(method, params)
    ds = _as_dataset(dataset, split, limit, root=root, **(world or {}))
    m.check_data(getattr(ds, "modalities", ()) or ())
    task = Task.from_dataset(ds)
    samples = [ds[i] for i in range(len(ds) if limit is None else min(limit, len(ds)))]
    if not samples:
        raise ValueError(f"dataset {getattr(ds, 'name', dataset)!r} split {split!r} has no samples")
    _warm_up(m, model, samples[:1], task)  # before the seeds: one untimed forward (kernels, allocator, caches)
    torch.manual_seed(seed)
    np.random.seed(seed)
    from .parallel import predict_resumable, ranks_from_env

    run_id = {"model": getattr(model, "name", ""), "dataset": getattr(ds, "name", str(dataset)), "split": split,
              "seed": seed, "method": m.describe(), "world": world or {}, "dtype": str(getattr(model, "dtype", ""))}
    plog = _PromptLog(model, seed if shuffle_options else None)
    run_id["shuffle_options"] = bool(shuffle_options)
    preds, latency = predict_resumable(_synced(lambda chunk: plog.attach(m.predict(plog.model, chunk, task), chunk),
                                               getattr(model, "device", None)),
                                       samples, batch_size=batch_size,
                                       out=out, identity=run_id, progress=progress, default=_jsonable,
                                       desc=f"{m.name} on {getattr(ds, 'name', '')}")
    gold = [s.label for s in samples]
    pred = [p.label for p in preds]
    report = metric_report(gold, pred, task.labels, getattr(ds, "manifest", None),
                           [getattr(s, "score", None) for s in samples])
    result = {
        "metrics": report,
        "latency_s": latency,
        "predictions": [{"uid": s.uid, "gold": s.label, **p.to_dict()} for s, p in zip(samples, preds)],
        "config": {"model": getattr(model, "name", ""), "family": getattr(model, "family", ""),
                   "dataset": getattr(ds, "name", str(dataset)), "split": split, "n": len(samples),
                   "seed": seed, "method": m.describe(), "world": world or {}, "shuffle_options": bool(shuffle_options),
                   "device": str(getattr(model, "device", "")), "dtype": str(getattr(model, "dtype", ""))},
    }
    sel = selection_quality(preds, samples)
    if sel is not None:
        result["selection"] = sel
    for p in result["predictions"]:
        p.get("extra", {}).pop("_cue_visual", None)
    if out is not None and ranks_from_env().is_main:
        write_json(result, out)
    return result


def write_json(result: dict, path: Union[str, Path]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result, indent=1, default=_jsonable))
    return p


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def metrics_table(result: dict) -> str:
    m = result["metrics"]
    cfg = result["config"]
    lines = [f"{cfg['method']['method']} on {cfg['dataset']}/{cfg['split']} (n={cfg['n']}, model={cfg['model']})",
             f"  WAR {m['war']:.4f}   UAR {m['uar']:.4f}   F1 ({m.get('f1_average', 'weighted')}) {m['f1']:.4f}   "
             f"F1-macro {m['f1_macro']:.4f}   F1-weighted {m['f1_weighted']:.4f}   unparseable {m.get('unparseable', 0)}",
             f"  latency {result['latency_s']['per_sample'] * 1000:.1f} ms/sample"]
    if "acc2" in m:
        lines.append(f"  Acc-2 {m['acc2']:.4f}   Acc-3 {m['acc3']:.4f}   F1 (sentiment) {m['sentiment_f1']:.4f}")
    if "selection" in result:
        s = result["selection"]
        lines.append(f"  selection vs ground truth: precision {s['precision']:.3f} recall {s['recall']:.3f}")
    return "\n".join(lines)


def _synced(predict, device):
    """``predict`` with a CUDA synchronize before and after, so the per-batch wall time that
    ``predict_resumable`` measures covers the GPU work of that batch (kernels run asynchronously)."""
    dev = torch.device(device) if device is not None else None
    if dev is None or dev.type != "cuda":
        return predict

    def run(chunk):
        torch.cuda.synchronize(dev)
        out = predict(chunk)
        torch.cuda.synchronize(dev)
        return out
    return run


def _warm_up(method, model, samples, task) -> None:
    """One untimed prediction on the first sample before timing starts (CUDA context, kernel selection,
    allocator growth); its result is discarded. Only on CUDA: on the CPU the first batch is not
    measurably slower and the extra forward would cost every CPU run."""
    dev = getattr(model, "device", None)
    if dev is None or torch.device(dev).type != "cuda" or not samples:
        return
    with torch.no_grad():
        method.predict(model, samples, task)
    torch.cuda.synchronize(torch.device(dev))
