"""Datasets as views: a :class:`Dataset` is one split (and subset) of a manifest, either a view of the
synthetic emotion world (``kind: world``, generated on demand by :class:`emolens.world.EmoWorld`) or
of a local copy of a real benchmark (``kind: local``, decoded lazily by :mod:`emolens.data.loaders`).
Both yield the same :class:`emolens.sample.Sample`; :func:`load_dataset` is the one entry point.
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

import numpy as np

from ..sample import Sample
from .loaders import _DEFAULT_FRAMES, read_audio, read_image, read_video, read_video_audio
from .manifest import Manifest, Problem, _build_records, _norm_split, _read_annotation, _select, _subset_spec, load_manifest

_WORLD_KEYS = ("eps", "conflict", "informative", "frames", "size", "p_text_emotion")
_LOCAL_OPTIONS = ("frames", "size", "audio")


class Dataset:
    """A sized, indexable, lazily loaded sequence of :class:`Sample` for one split (and subset).

    ``len(ds)``, ``ds[i]`` (negative indices and slices work; a slice returns a list), ``iter(ds)``,
    ``ds.batches(batch_size)`` (lists of samples; the last one may be short).
    """

    def __init__(self, manifest: Manifest, split: str, n: int, getter: Callable[[int], Sample],
                 subset: Optional[str] = None, root: Optional[Path] = None, options: Optional[dict] = None):
        self.manifest = manifest
        self.split = split
        self.subset = subset
        self.root = root
        self.options = dict(options or {})
        self._n = int(n)
        self._get = getter

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def labels(self) -> List[str]:
        return list(self.manifest.labels)

    @property
    def valence_groups(self) -> Dict[str, List[str]]:
        return {k: list(v) for k, v in self.manifest.valence_groups.items()}

    @property
    def modalities(self) -> List[str]:
        return list(self.manifest.modalities)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        i = int(i)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"index {i} out of range for {self.name}/{self.split} (len {self._n})")
        return self._get(i)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(self._n):
            yield self._get(i)

    def batches(self, batch_size: int) -> Iterator[List[Sample]]:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        for s in range(0, self._n, batch_size):
            yield [self._get(i) for i in range(s, min(s + batch_size, self._n))]

    def __repr__(self) -> str:
        sub = f", subset={self.subset!r}" if self.subset else ""
        return f"Dataset({self.name!r}, split={self.split!r}{sub}, n={self._n})"


def _world_dataset(m: Manifest, split: str, limit: Optional[int], seed: int, subset: Optional[str],
                   overrides: Dict[str, Any]) -> Dataset:
    bad = sorted(set(overrides) - set(_WORLD_KEYS))
    if bad:
        raise TypeError(f"load_dataset({m.name!r}): unknown world override(s) {bad}; allowed: {list(_WORLD_KEYS)} "
                        "(the seed is the `seed=` argument)")
    if split not in m.splits:
        raise ValueError(f"dataset {m.name} has no split {split!r}; splits: {', '.join(m.splits)}")
    n, _ = m.split_spec(split)
    if n is None:
        raise ValueError(f"dataset {m.name}: split {split!r} has no size in the manifest")
    params = dict(m.world or {})
    if subset is not None:
        params.update(_subset_spec(m, subset))
    params.update(overrides)
    params["seed"] = int(params.get("seed", 0)) + int(seed)
    if "informative" in params and params["informative"] is not None:
        params["informative"] = tuple(params["informative"])
    view = params.pop("view")
    try:
        from ..world import EmoWorld
    except ImportError as e:
        raise ImportError(f"dataset {m.name} is a view of the emotion world, but emolens.world could not be imported: {e}") from e
    world = EmoWorld(view=view, **params)
    if limit is not None:
        n = min(n, max(0, int(limit)))
    opts = dict(params, view=view)
    key = json.dumps(opts, sort_keys=True, default=str)
    _WORLDS.setdefault(key, world)
    return Dataset(m, split, n, lambda i: _fresh(_rendered(key, split, i)), subset=subset, options=opts)


# Rendered world samples, shared by every Dataset of this process with the same world parameters: a notebook
# evaluates the same n samples under many methods, and rendering a clip (~10-25 ms) costs as much as a
# zero-shot forward of it. The world is a pure function of (parameters, split, index), so a cached clip is
# the clip; callers get a deep copy, so one that edits a sample in place cannot change another's.
_WORLDS: Dict[str, Any] = {}


@functools.lru_cache(maxsize=8192)  # ~25 KB a clip: at most ~200 MB
def _rendered(key: str, split: str, i: int):
    return _WORLDS[key].sample(split, i)


def _fresh(s: Sample) -> Sample:
    """A copy of a cached clip whose arrays and dicts are its own (a deep copy of the metadata costs as much as
    rendering; one level of dict copy plus array copies is what in-place edits can reach)."""
    out = copy.copy(s)
    for k, v in vars(s).items():
        if isinstance(v, np.ndarray):
            setattr(out, k, v.copy())
        elif isinstance(v, dict):
            setattr(out, k, {a: (b.copy() if isinstance(b, (np.ndarray, list, dict)) else b) for a, b in v.items()})
    return out


def _local_dataset(m: Manifest, split: str, root: Optional[Union[str, Path]], limit: Optional[int],
                   subset: Optional[str], options: Dict[str, Any]) -> Dataset:
    if root is None:
        raise ValueError(f"dataset {m.name} is a local benchmark: pass root=DIR (a local copy laid out as "
                         f"data_manifests/{m.name}.yaml describes); this machine cannot download it")
    bad = sorted(set(options) - set(_LOCAL_OPTIONS))
    if bad:
        raise TypeError(f"load_dataset({m.name!r}): unknown option(s) {bad} for a local benchmark; "
                        f"allowed: {list(_LOCAL_OPTIONS)} (world overrides such as eps= apply to world views only)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"dataset {m.name}: root {str(root)!r} is not a folder")
    lc = m.local_copy
    rel = lc["annotation"]
    ann = root / rel
    if not ann.is_file():
        raise ValueError(f"dataset {m.name}: annotation file {rel!r} not found under {root} "
                         f"(run `emolens data check {m.name} --root {root}`)")
    rows, header, problems = _read_annotation(ann, lc["format"], rel)
    missing = [c for c in lc["columns"].values() if c not in header]
    if problems or missing:
        first = problems[0] if problems else Problem("missing-column", rel, f"columns {missing} not in the header")
        raise ValueError(f"dataset {m.name}: the annotation {rel!r} cannot be read ({first}); "
                         f"run `emolens data check {m.name} --root {root}`")
    records, rproblems = _build_records(m, rows, rel)
    sel = _select(m, records, split, subset)
    bad_lines = {p.where for p in rproblems}
    sel_bad = [p for p in rproblems if any(p.where == f"{rel}:{r.line}" for r in sel)] if bad_lines else []
    if sel_bad:
        raise ValueError(f"dataset {m.name}: {len(sel_bad)} problem(s) in split {split!r}, first: {sel_bad[0]}; "
                         f"run `emolens data check {m.name} --root {root}`")
    if limit is not None:
        sel = sel[: max(0, int(limit))]
    frames = int(options.get("frames", _DEFAULT_FRAMES))
    size = options.get("size")
    want_audio = bool(options.get("audio", True)) and "audio" in m.modalities
    media_dir = root / lc["media"]["dir"]
    audio_cfg = lc.get("audio") or {"source": "track"}
    audio_dir = root / audio_cfg.get("dir", "")
    split_name = _norm_split(split)

    def get(i: int) -> Sample:
        r = sel[i]
        src = media_dir / r.path
        meta: Dict[str, Any] = {"dataset": m.name, "split": split_name, "source": str(src),
                                "annotation_line": r.line, "raw_label": r.raw_label}
        if r.fold is not None:
            meta["fold"] = r.fold
        if subset is not None:
            meta["subset"] = subset
        for k in ("subset", "reasoning"):
            if r.fields.get(k) is not None:
                meta[k] = r.fields[k]
        if r.label_set is not None:
            meta["label_set"] = list(r.label_set)
        elif m.task == "reasoning" and r.label is not None:
            meta["label_set"] = [r.label]
        if r.label is not None and m.valence_groups:
            meta["valence"] = m.valence_of(r.label)
        kind = lc["media"]["kind"]
        if kind == "image":
            fr = read_image(src, size)
        elif kind == "video":
            fr, info = read_video(src, frames, size)
            meta.update(info)
        else:  # audio-only benchmark: a 1x1 black placeholder frame
            fr = np.zeros((1, 1, 1, 3), np.uint8)
            meta["no_visual"] = True
        audio = None
        if want_audio:
            if audio_cfg.get("source") == "file":
                apath = audio_dir / str(r.fields["audio_path"])
                audio, sr = read_audio(apath)
                meta["audio_source"] = str(apath)
                meta["sample_rate"] = sr
            elif kind == "audio":
                audio, sr = read_audio(src)
                meta["audio_source"] = str(src)
                meta["sample_rate"] = sr
            else:
                got = read_video_audio(src)
                if got is not None:
                    audio, sr = got
                    meta["audio_source"] = str(src)
                    meta["sample_rate"] = sr
        return Sample(uid=f"{m.name}/{split_name}/{r.id}", frames=fr, audio=audio,
                      audio_kind="waveform" if audio is not None else None,
                      subtitle=str(r.fields.get("subtitle") or ""), label=r.label, score=r.score, meta=meta)

    return Dataset(m, split_name, len(sel), get, subset=subset, root=root,
                   options={"frames": frames, "size": size, "audio": want_audio})


def load_dataset(name_or_manifest: Union[str, Path, Manifest], split: str = "test", *,
                 root: Optional[Union[str, Path]] = None, limit: Optional[int] = None, seed: int = 0,
                 subset: Optional[str] = None, **world_overrides: Any) -> Dataset:
    """A :class:`Dataset` of one split of a manifest's dataset.

    World views (``kind: world``): an :class:`emolens.world.EmoWorld` built from the manifest's
    ``world`` block, updated by ``subsets[subset]`` and then by ``world_overrides`` (``eps=``,
    ``conflict=``, ``informative=``, ``frames=``, ``size=``, ``p_text_emotion=``); its seed is the
    manifest's plus ``seed``. The split size comes from the manifest (``limit`` truncates).

    Local benchmarks (``kind: local``): need ``root`` (a local copy). Rows of the split (and subset)
    are read from the annotation; samples are decoded lazily on access. Options: ``frames=`` (T,
    default 8), ``size=`` (resize; default native), ``audio=`` (False skips audio decoding).
    """
    m = load_manifest(name_or_manifest)
    if limit is not None and int(limit) < 0:
        raise ValueError("limit must be >= 0")
    if m.is_world:
        return _world_dataset(m, split, limit, seed, subset, world_overrides)
    return _local_dataset(m, split, root, limit, subset, world_overrides)
