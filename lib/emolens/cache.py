"""One cached evaluation, so every notebook reports the same number for the same quantity.

:func:`cached_evaluate` wraps :func:`emolens.evaluate.evaluate`: the first call runs it and stores the
whole result (metrics *and* per-sample predictions, so intervals can be bootstrapped later with
:func:`result_ci` / :func:`result_delta`); any later call with the same key reads the stored JSON
without touching the model.

The key is the sha256 of a canonical JSON of what decides the result:

* the model: its name, its checkpoint folder (``lm.info["path"]``) with the size and mtime of every
  ``*.safetensors`` file in it (a retrained checkpoint gets new keys), and its dtype;
* the dataset *as resolved*: manifest name and a hash of the manifest's YAML, split, subset, the number
  of samples after ``limit``, the world parameters it was built with, ``root``;
* the method as resolved (``Method.describe()``: the name and every hyperparameter, the ``params`` given
  merged over the defaults, so ``params={}`` and ``params={"p_v": <its default>}`` share an entry),
  the seed, the ``world`` overrides, ``shuffle_options``;
* ``emolens.__version__`` and a sha256 of the library's own source (every ``emolens/**/*.py``, read once
  per process), so an edited method never returns numbers computed by the code before the edit (nbval
  and ``make notebooks`` run in notebooks/ and would otherwise reuse ``notebooks/runs/cache``).

``batch_size``, ``progress`` and ``out`` are passed through but are not part of the key (they do not
change which samples are scored or how). The stored ``latency_s`` is that of the run that filled the
entry.

Where the cache lives: ``cache_dir=``, else ``$EMOLENS_CACHE_DIR``, else ``runs/cache`` relative to the
current working directory. Notebooks run with ``cwd=notebooks/`` under papermill, so the runner must set
``EMOLENS_CACHE_DIR``: :func:`emolens.runner.run_collection` sets it to ``<out>/cache`` (absolute) for
the kernels it starts when the caller has not set it.

Writes are atomic (a temporary file in the cache folder, then ``os.replace``), so a crashed or parallel
run never leaves half a file under a key. A file that cannot be read back (truncated, not JSON, or
stored under another identity) gives one warning line (:class:`CacheWarning`) and is recomputed.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional, Tuple, Union

__all__ = ["CacheWarning", "cached_evaluate", "cache_identity", "default_cache_dir", "result_ci", "result_delta"]

ENV = "EMOLENS_CACHE_DIR"
#: evaluate() keywords that do not change the result (passed through, left out of the key)
_NOT_KEYED = ("batch_size", "progress", "out")


class CacheWarning(UserWarning):
    """A cache entry could not be used and is being recomputed."""


def default_cache_dir() -> Path:
    """``$EMOLENS_CACHE_DIR`` if set, else ``runs/cache`` under the current working directory."""
    env = os.environ.get(ENV)
    return Path(env).expanduser() if env else Path.cwd() / "runs" / "cache"


def _canonical(obj: Any) -> str:
    from .evaluate import _jsonable

    def default(o):
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        if isinstance(o, Path):
            return str(o)
        try:
            return _jsonable(o)
        except TypeError:
            return repr(o)

    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=default)


def _model_fingerprint(lm) -> dict:
    info = getattr(lm, "info", None) or {}
    fp = {"name": str(getattr(lm, "name", "") or ""), "dtype": str(getattr(lm, "dtype", ""))}
    path = info.get("path")
    if path:
        folder = Path(path)
        fp["path"] = str(folder)
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        fp["weights"] = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return fp


def _dataset_fingerprint(ds, n: int) -> dict:
    man = getattr(ds, "manifest", None)
    raw = getattr(man, "raw", None)
    return {"name": str(getattr(ds, "name", "")), "split": getattr(ds, "split", None),
            "subset": getattr(ds, "subset", None), "n": int(n),
            "options": dict(getattr(ds, "options", None) or {}),
            "root": None if getattr(ds, "root", None) is None else str(ds.root),
            "manifest_sha256": hashlib.sha256(_canonical(raw).encode()).hexdigest() if raw else None}


@functools.lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    """sha256 over the path and bytes of every ``.py`` file of the installed emolens package (what this
    process runs: edits after import do not apply to it, so one reading per process is right)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def cache_identity(lm, ds, m, *, split: str, limit: Optional[int], seed: int,
                   world: Optional[dict] = None, shuffle_options: bool = False) -> dict:
    """The dict whose canonical JSON is hashed into the key (model, dataset and method already resolved)."""
    from . import __version__

    n = len(ds) if limit is None else min(int(limit), len(ds))
    ident = {"model": _model_fingerprint(lm), "dataset": _dataset_fingerprint(ds, n), "split": split,
             "limit": limit, "method": m.describe(), "seed": int(seed),
             "world": dict(sorted((world or {}).items())),
             "shuffle_options": bool(shuffle_options), "emolens": __version__, "code": _code_fingerprint()}
    return json.loads(_canonical(ident))  # JSON types: compares equal to what a cache file stores


def _read(path: Path, identity: dict) -> Optional[dict]:
    """The stored result, or None (with one warning line) when the file is unusable."""
    try:
        data = json.loads(path.read_text())
        stored = data["cache"]["identity"]
        if not (isinstance(data.get("metrics"), dict) and isinstance(data.get("predictions"), list)):
            raise ValueError("no metrics/predictions")
    except (OSError, ValueError, KeyError, TypeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        warnings.warn(f"emolens cache: unreadable entry {path} ({type(e).__name__}: {reason}); recomputing it",
                      CacheWarning, stacklevel=3)
        return None
    if stored != identity:
        warnings.warn(f"emolens cache: entry {path} was stored for another run (hash collision or an edited file); "
                      "recomputing it", CacheWarning, stacklevel=3)
        return None
    return data


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_evaluate(model, dataset, method="zero-shot", params: Optional[dict] = None, *, split: str = "test",
                    limit: Optional[int] = None, seed: int = 0, cache_dir: Union[str, Path, None] = None,
                    **kw) -> dict:
    """:func:`emolens.evaluate.evaluate`, stored once per key and read back afterwards.

    Takes exactly evaluate's arguments (``batch_size``, ``root``, ``progress``, ``world``, ``out``,
    ``shuffle_options`` through ``**kw``) plus ``cache_dir`` (default :func:`default_cache_dir`).

    Returns:
        evaluate's result as stored (JSON types; identical on a miss and on every later hit), plus
        ``result["cache"] = {"key", "path", "hit", "identity"}``.
    """
    from .evaluate import _as_dataset, _as_method, _jsonable, evaluate
    from .parallel import ranks_from_env

    allowed = [p for p in inspect.signature(evaluate).parameters
               if p not in ("model", "dataset", "method", "params", "split", "limit", "seed")]
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise TypeError(f"cached_evaluate got unknown argument(s) {unknown}; it passes on evaluate's: {allowed}")
    if isinstance(model, (str, Path)):
        from .models import load_model

        model = load_model(str(model))
    m = _as_method(method, params)
    world = kw.get("world")
    ds = _as_dataset(dataset, split, limit, root=kw.get("root"), **(world or {}))
    identity = cache_identity(model, ds, m, split=split, limit=limit, seed=seed, world=world,
                              shuffle_options=kw.get("shuffle_options", False))
    key = hashlib.sha256(_canonical(identity).encode()).hexdigest()
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = folder / f"{m.name.replace('/', '_')}-{key}.json"
    if path.is_file():
        hit = _read(path, identity)
        if hit is not None:
            hit["cache"] = {"key": key, "path": str(path), "hit": True, "identity": hit["cache"]["identity"]}
            return hit
    result = evaluate(model, ds, m, None, split=split, limit=limit, seed=seed, **kw)
    result["cache"] = {"identity": identity}
    text = json.dumps(result, indent=1, default=_jsonable)
    if ranks_from_env().is_main:
        _write_atomic(path, text)
    out = json.loads(text)  # the stored form, so the first call returns what every later call reads
    out["cache"] = {"key": key, "path": str(path), "hit": False, "identity": out["cache"]["identity"]}
    return out


# ---------------------------------------------------------------------------------------------
# intervals from stored predictions (the bootstrap itself is emolens.metrics')

def _gold_pred(result: dict):
    preds = result["predictions"]
    return [p["uid"] for p in preds], [p["gold"] for p in preds], [p.get("label") for p in preds]


def result_ci(result: dict, metric: str = "war", n_boot: int = 2000, seed: int = 0,
              alpha: float = 0.05) -> Tuple[float, float, float]:
    """``(estimate, lo, hi)``: the percentile bootstrap CI (:func:`emolens.metrics.bootstrap_ci`) of one
    run's metric, resampling its stored per-sample predictions."""
    from .metrics import bootstrap_ci

    _, gold, pred = _gold_pred(result)
    return bootstrap_ci(gold, pred, metric, n=n_boot, seed=seed, alpha=alpha)


def result_delta(result_a: dict, result_b: dict, metric: str = "war", n_boot: int = 2000, seed: int = 0,
                 alpha: float = 0.05) -> Tuple[float, float, float]:
    """``(delta, lo, hi)`` of metric(a) - metric(b), paired over the same samples
    (:func:`emolens.metrics.paired_bootstrap_delta`); the two runs must hold the same sample uids in order."""
    from .metrics import paired_bootstrap_delta

    ua, gold, pa = _gold_pred(result_a)
    ub, _, pb = _gold_pred(result_b)
    if ua != ub:
        raise ValueError(f"result_delta needs two runs on the same samples; got {len(ua)} and {len(ub)} uids "
                         "that differ (evaluate both on the same dataset, split, limit and world)")
    return paired_bootstrap_delta(gold, pa, pb, metric, n=n_boot, seed=seed, alpha=alpha)
