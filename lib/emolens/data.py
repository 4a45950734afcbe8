"""Dataset manifests: load and validate them, iterate samples, check a local copy of a benchmark.

Every dataset emolens knows is described by one YAML file in ``data_manifests/`` (schema:
``lib/emolens/manifest_schema.yaml``). Two kinds:

``kind: world``
    A view of the synthetic emotion world (:class:`emolens.world.EmoWorld`): the ``world`` block
    holds the constructor arguments; samples are generated on demand, nothing is read from disk.
``kind: local``
    A real benchmark (MER2023, MAFW, CH-SIMS, DFEW, EmoSet, Emotion6, WebEmo, Abstract, CA-MER,
    EMER). These machines cannot download it: the user points ``root=`` at a copy they already
    have, laid out as the manifest's ``local_copy`` block says (one annotation file + a media
    folder). ``emolens data check NAME --root DIR`` (:func:`data_check_main`) says whether a copy
    is complete before anything runs on it.

Both kinds yield the same :class:`emolens.sample.Sample`, so every method runs unchanged on either.

Public API::

    list_manifests() -> list[str]
    load_manifest(name_or_path) -> Manifest                       # raises ManifestError / ValueError
    load_dataset(name_or_manifest, split="test", *, root=None, limit=None, seed=0, subset=None,
                 **overrides) -> Dataset
    check_local_copy(manifest, root, *, sample=None, seed=0) -> CheckReport
    data_check_main(argv) -> int                                  # `emolens data check`

Conventions (documented choices)
--------------------------------
- Manifest folder: ``$EMOLENS_MANIFESTS`` if set, else ``<repo>/data_manifests`` found as
  ``Path(__file__).resolve().parents[2] / "data_manifests"``.
- Splits: ``splits`` maps a split name to its expected size: an int (checked exactly), an object
  ``{count, tolerance, source}`` (``|observed - count| <= tolerance * count``), or null (unknown,
  reported but never a problem). Names ``fold1..foldK`` are K-fold cross-validation (MAFW, DFEW): the
  annotation has one ``fold`` column saying in which fold's *test* part a row is; ``split="fold3"``
  selects those rows and ``split="fold3/train"`` all the others. ``split="all"`` always selects every
  row. A manifest with a single split needs no split column (every row belongs to it). Split values
  in the annotation are compared case-insensitively; ``val``/``valid``/``dev`` mean ``validation``.
- Labels: raw annotation values go through ``label_map`` (official spellings, numeric codes, a
  fine -> coarse hierarchy), else they must equal a label (case-insensitive).
- Sentiment regression (CH-SIMS): the label is derived from the score with the manifest's
  ``neutral_band`` b: negative if s < -b, neutral if -b <= s <= b, positive if s > b (the same rule
  as :func:`emolens.metrics.sentiment_classes`); ``Sample.score`` keeps the score.
- Video: ``frames`` (T, default 8) frames sampled uniformly as the centres of T equal segments of
  the clip (TSN-style; a clip shorter than T repeats frames, so every sample has exactly T);
  ``size`` resizes (int -> square, (H, W) tuple) or keeps the native size (None, default).
- Audio: mono float32 waveform at the file's own sample rate (``meta["sample_rate"]``); from a
  separate file with soundfile, or from the video's own track with PyAV when the manifest says
  ``local_copy.audio.source: track`` (the default when ``audio`` is a modality).
- ``seed``: for world views it offsets the manifest's world seed (``seed=0`` reproduces the manifest
  exactly); local datasets are read in annotation order, and ``limit`` keeps the first ``limit`` rows
  of the split, so ``seed`` does not change them.
- ``check_local_copy`` never writes anything under ``root`` (files are only opened for reading).
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .sample import Sample

__all__ = [
    "ManifestError", "Manifest", "Dataset", "Problem", "CheckReport",
    "manifests_dir", "list_manifests", "load_manifest", "load_dataset", "check_local_copy",
    "data_check_main", "PROBLEM_KINDS", "SCHEMA_PATH",
]

SCHEMA_PATH = Path(__file__).resolve().with_name("manifest_schema.yaml")

#: the kinds of problem :func:`check_local_copy` reports, and what ``Problem.where`` is for each.
PROBLEM_KINDS: Dict[str, str] = {
    "missing-root": "root folder does not exist or is not a folder (where: the root as given)",
    "missing-annotation": "annotation file absent (where: its root-relative path)",
    "unparseable-annotation": "annotation unreadable (where: file, or file:line for one bad line)",
    "missing-column": "a column the manifest maps is absent from the header (where: annotation file)",
    "missing-value": "a required cell is empty (where: file:line)",
    "duplicate-id": "two rows share an id (where: file:line of the later row)",
    "unknown-label": "label not in the label set after label_map (where: file:line)",
    "bad-score": "score not a number or outside [min, max] (where: file:line)",
    "bad-split": "split / fold value not one the manifest declares (where: file:line)",
    "bad-subset": "subset value not one the manifest declares (where: file:line)",
    "missing-media": "referenced media or audio file absent (where: root-relative path)",
    "undecodable-media": "file present but cannot be decoded (where: root-relative path)",
    "missing-audio": "the manifest requires audio from the video's track and it has none (where: video path)",
    "split-size": "number of rows in a split differs from the manifest (where: 'split NAME')",
    "subset-size": "number of rows in a subset differs from the manifest (where: 'subset NAME')",
}

_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}
_FOLD_RE = re.compile(r"^fold(\d+)$")
_WORLD_KEYS = ("eps", "conflict", "informative", "frames", "size", "p_text_emotion")
_LOCAL_OPTIONS = ("frames", "size", "audio")
_DEFAULT_FRAMES = 8
_EXTRA = "\0extra"  # csv.DictReader restkey: fields beyond the header


# ==============================================================================================
# manifests
# ==============================================================================================
class ManifestError(ValueError):
    """A manifest does not follow the schema. The message is one line:
    ``<file>: field <json path>: expected <what>[, got <what>]``."""

    def __init__(self, file: Union[str, Path], field_path: str, expected: str):
        self.file = str(file)
        self.field = field_path
        self.expected = expected
        super().__init__(f"{self.file}: field {field_path}: {expected}")


def manifests_dir() -> Path:
    """The manifest folder: ``$EMOLENS_MANIFESTS`` or ``<repo>/data_manifests``."""
    env = os.environ.get("EMOLENS_MANIFESTS")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "data_manifests"


def list_manifests() -> List[str]:
    """Names (file stems) of the manifests in :func:`manifests_dir`, sorted."""
    d = manifests_dir()
    if not d.is_dir():
        return []
    names = {p.stem for p in d.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()}
    return sorted(names)


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    import yaml

    with open(SCHEMA_PATH, "r", encoding="utf-8") as f:
        return yaml.safe_load(f)


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = _schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@dataclass
class Manifest:
    """A validated manifest. ``raw`` is the YAML as a dict; the other fields are its top-level keys
    (absent optional ones get empty defaults)."""

    name: str
    kind: str
    title: str
    description: str
    modalities: List[str]
    labels: List[str]
    valence_groups: Dict[str, List[str]]
    metrics: List[str]
    splits: Dict[str, Any]
    path: Optional[Path] = None
    raw: Dict[str, Any] = field(default_factory=dict)
    task: Optional[str] = None
    protocol: Optional[str] = None
    local_copy: Optional[Dict[str, Any]] = None
    obtain: Optional[Dict[str, Any]] = None
    reported: List[Dict[str, Any]] = field(default_factory=list)
    notes: str = ""
    reference: str = ""
    world: Optional[Dict[str, Any]] = None
    subsets: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    label_map: Dict[str, str] = field(default_factory=dict)
    score: Optional[Dict[str, Any]] = None
    metric_options: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    open_vocabulary: bool = False

    # ---- convenience -------------------------------------------------------------------------
    @property
    def is_world(self) -> bool:
        return self.kind == "world"

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    @property
    def folds(self) -> int:
        """K for a K-fold protocol (split names fold1..foldK), else 0."""
        return sum(1 for s in self.splits if _FOLD_RE.match(s))

    def split_names(self) -> List[str]:
        return list(self.splits)

    def split_spec(self, split: str) -> Tuple[Optional[int], float]:
        """(expected count or None when unknown, relative tolerance) of a declared split."""
        return _count_spec(self.splits[split])

    def expected_size(self, split: str) -> Optional[int]:
        return self.split_spec(split)[0] if split in self.splits else None

    def valence_of(self, label: str) -> Optional[str]:
        for g, members in self.valence_groups.items():
            if label in members:
                return g
        return None

    def map_label(self, raw: Any) -> Optional[str]:
        """Raw annotation value -> label of this manifest (None when it is not one)."""
        if raw is None:
            return None
        key = str(raw).strip().lower()
        if not key:
            return None
        lm = {str(k).strip().lower(): v for k, v in self.label_map.items()}
        if key in lm:
            return lm[key]
        for lab in self.labels:
            if lab.lower() == key:
                return lab
        return None

    def label_from_score(self, s: float) -> str:
        b = float((self.score or {}).get("neutral_band", 0.0))
        return "negative" if s < -b else ("positive" if s > b else "neutral")

    def __repr__(self) -> str:
        return (f"Manifest(name={self.name!r}, kind={self.kind!r}, labels={len(self.labels)}, "
                f"splits={list(self.splits)}, path={str(self.path) if self.path else None!r})")


def _count_spec(v: Any) -> Tuple[Optional[int], float]:
    if v is None:
        return None, 0.0
    if isinstance(v, dict):
        c = v.get("count")
        return (None if c is None else int(c)), float(v.get("tolerance", 0.0))
    return int(v), 0.0


def _describe_error(err) -> Tuple[str, str]:
    """(json path, expectation) for one jsonschema ValidationError."""
    path = getattr(err, "json_path", None) or "$" + "".join(
        f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
    v, inst = err.validator, err.instance
    got = _short(inst)
    if v == "required":
        m = re.search(r"'([^']+)' is a required property", err.message)
        name = m.group(1) if m else "?"
        return f"{path}.{name}" if path != "$" else f"$.{name}", "required field is missing"
    if v == "additionalProperties":
        names = re.findall(r"'([^']+)'", err.message.split("(")[-1]) if "(" in err.message else []
        allowed = sorted((err.schema.get("properties") or {}).keys())
        bad = names[0] if names else "?"
        return (f"{path}.{bad}" if path != "$" else f"$.{bad}",
                "unknown field" + (f" (allowed here: {', '.join(allowed)})" if allowed else ""))
    if v == "type":
        t = err.validator_value
        t = " or ".join(t) if isinstance(t, list) else t
        return path, f"expected {t}, got {type(inst).__name__} {got}"
    if v == "enum":
        return path, f"expected one of {list(err.validator_value)}, got {got}"
    if v == "const":
        return path, f"expected {err.validator_value!r}, got {got}"
    if v == "pattern":
        return path, f"expected a string matching {err.validator_value}, got {got}"
    if v in ("oneOf", "anyOf"):
        if isinstance(err.schema, dict) and err.schema is _schema()["$defs"]["count"]:
            return path, ("expected a split size: an integer >= 0, null (unknown), or "
                          f"{{count: N, tolerance: 0..1, source: text}}, got {got}")
        return path, f"expected one of the allowed forms ({err.message[:120]})"
    if v == "propertyNames":
        return path, f"expected names matching the allowed pattern, got {got}"
    return path, f"expected {v} {err.validator_value!r}, got {got}"


def _short(x: Any, n: int = 60) -> str:
    s = repr(x)
    return s if len(s) <= n else s[: n - 3] + "..."


def _validate(raw: Any, file: str) -> None:
    if not isinstance(raw, dict):
        raise ManifestError(file, "$", f"expected a mapping at the top level, got {type(raw).__name__}")
    import jsonschema

    errors = list(_validator().iter_errors(raw))
    if errors:
        err = max(errors, key=jsonschema.exceptions.relevance)
        path, expected = _describe_error(err)
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ManifestError(file, path, expected + more)
    _semantic_checks(raw, file)


def _semantic_checks(raw: dict, file: str) -> None:
    """What JSON Schema cannot say: cross-field consistency."""
    labels = list(raw["labels"])
    open_vocab = bool(raw.get("open_vocabulary", False))
    if not open_vocab and len(labels) < 2:
        raise ManifestError(file, "$.labels", f"expected at least 2 labels (or open_vocabulary: true), got {len(labels)}")
    for g, members in raw["valence_groups"].items():
        for i, lab in enumerate(members):
            if lab not in labels:
                raise ManifestError(file, f"$.valence_groups.{g}[{i}]",
                                    f"expected a label from `labels` {labels}, got {lab!r}")
    for k, v in (raw.get("label_map") or {}).items():
        if v not in labels:
            raise ManifestError(file, f"$.label_map.{k}", f"expected a label from `labels` {labels}, got {v!r}")
    if raw["kind"] == "world":
        return
    # ---- local benchmarks --------------------------------------------------------------------
    lc = raw["local_copy"]
    cols = lc["columns"]
    mods = raw["modalities"]
    mk = lc["media"]["kind"]
    if mk not in mods:
        raise ManifestError(file, "$.local_copy.media.kind", f"expected a kind listed in modalities {mods}, got {mk!r}")
    task = raw["task"]
    if task == "classification" and "label" not in cols:
        raise ManifestError(file, "$.local_copy.columns.label", "required field is missing (task: classification)")
    if task == "sentiment-regression":
        if "score" not in cols:
            raise ManifestError(file, "$.local_copy.columns.score", "required field is missing (task: sentiment-regression)")
        if "score" not in raw:
            raise ManifestError(file, "$.score", "required field is missing (task: sentiment-regression)")
        if sorted(labels) != ["negative", "neutral", "positive"]:
            raise ManifestError(file, "$.labels", f"expected [negative, neutral, positive] for sentiment-regression, got {labels}")
        if not raw["score"]["min"] < raw["score"]["max"]:
            raise ManifestError(file, "$.score.max", "expected max > min")
    if task == "reasoning" and not ({"label", "label_set"} & set(cols)):
        raise ManifestError(file, "$.local_copy.columns.label", "required field is missing (task: reasoning needs label or label_set)")
    if open_vocab and (task != "reasoning" or "label_set" not in cols):
        raise ManifestError(file, "$.local_copy.columns.label_set",
                            "required field is missing (open_vocabulary needs task: reasoning and a label_set column)")
    if "score" in raw and task != "sentiment-regression":
        raise ManifestError(file, "$.score", f"unexpected for task {task!r} (only sentiment-regression)")
    splits = list(raw["splits"])
    folds = [s for s in splits if _FOLD_RE.match(s)]
    if folds:
        if len(folds) != len(splits):
            raise ManifestError(file, "$.splits", f"expected only fold1..foldK names in a fold protocol, got {splits}")
        want = [f"fold{i}" for i in range(1, len(folds) + 1)]
        if sorted(folds, key=lambda s: int(s[4:])) != want:
            raise ManifestError(file, "$.splits", f"expected folds {want}, got {folds}")
        if "fold" not in cols:
            raise ManifestError(file, "$.local_copy.columns.fold", "required field is missing (splits are folds)")
    elif len(splits) > 1 and "split" not in cols:
        raise ManifestError(file, "$.local_copy.columns.split", f"required field is missing ({len(splits)} splits declared)")
    if "all" in splits:
        raise ManifestError(file, "$.splits.all", "'all' is reserved (it always means every row)")
    for sname, sub in (raw.get("subsets") or {}).items():
        for col in sub["where"]:
            if col not in cols:
                raise ManifestError(file, f"$.subsets.{sname}.where.{col}",
                                    f"expected a field mapped in local_copy.columns {sorted(cols)}, got {col!r}")
    audio = lc.get("audio")
    if audio is not None and "audio" not in mods:
        raise ManifestError(file, "$.local_copy.audio", "unexpected: 'audio' is not among the modalities")
    if "audio" in mods and (audio or {}).get("source") == "file" and "audio_path" not in cols:
        raise ManifestError(file, "$.local_copy.columns.audio_path", "required field is missing (audio.source: file)")
    if "audio_path" in cols and (audio or {}).get("source", "track") != "file":
        raise ManifestError(file, "$.local_copy.audio.source", "expected 'file' when columns.audio_path is mapped")
    if "audio" in mods and mk not in ("video", "audio") and (audio or {}).get("source", "track") == "track":
        raise ManifestError(file, "$.local_copy.audio.source", f"expected 'file': {mk} media have no audio track")


def load_manifest(name_or_path: Union[str, Path, Manifest]) -> Manifest:
    """Load and validate a manifest by name (a file in :func:`manifests_dir`) or by path.

    Raises:
        ManifestError: the file is not valid YAML or breaks the schema (one line: file, field, expectation).
        ValueError: unknown name (the message lists the available manifests).
    """
    if isinstance(name_or_path, Manifest):
        return name_or_path
    s = str(name_or_path)
    p = Path(s).expanduser()
    looks_like_path = s.endswith((".yaml", ".yml")) or os.sep in s or "/" in s
    if not looks_like_path:
        d = manifests_dir()
        cand = [d / f"{s}.yaml", d / f"{s}.yml"]
        hit = next((c for c in cand if c.is_file()), None)
        if hit is None:
            avail = list_manifests()
            raise ValueError(f"unknown dataset manifest {s!r}; available in {d}: "
                             f"{', '.join(avail) if avail else '(none)'}")
        p = hit
    elif not p.is_file():
        raise ValueError(f"manifest file {s!r} does not exist; available by name: {', '.join(list_manifests()) or '(none)'}")
    import yaml

    try:
        with open(p, "r", encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        prob = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ManifestError(p, "$", f"expected valid YAML{where}: {prob}") from None
    except UnicodeDecodeError as e:
        raise ManifestError(p, "$", f"expected UTF-8 text: {e.reason}") from None
    _validate(raw, str(p))
    if raw["name"] != p.stem:
        raise ManifestError(p, "$.name", f"expected the file name {p.stem!r}, got {raw['name']!r}")
    return Manifest(
        name=raw["name"], kind=raw["kind"], title=raw["title"], description=raw["description"],
        modalities=list(raw["modalities"]), labels=list(raw["labels"]),
        valence_groups={k: list(v) for k, v in raw["valence_groups"].items()},
        metrics=list(raw["metrics"]), splits=dict(raw["splits"]), path=p.resolve(), raw=raw,
        task=raw.get("task"), protocol=raw.get("protocol"), local_copy=raw.get("local_copy"),
        obtain=raw.get("obtain"), reported=list(raw.get("reported") or []), notes=raw.get("notes") or "",
        reference=raw.get("reference") or "", world=raw.get("world"), subsets=dict(raw.get("subsets") or {}),
        label_map={str(k): v for k, v in (raw.get("label_map") or {}).items()}, score=raw.get("score"),
        metric_options=dict(raw.get("metric_options") or {}), open_vocabulary=bool(raw.get("open_vocabulary", False)),
    )


# ==============================================================================================
# reading a local copy: annotation -> records
# ==============================================================================================
@dataclass
class Problem:
    """One thing wrong with a local copy. ``kind`` is a key of :data:`PROBLEM_KINDS`."""

    kind: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind:<22} {self.where}: {self.detail}"


@dataclass
class _Row:
    line: int
    data: Dict[str, Any]


@dataclass
class _Record:
    line: int
    id: str
    path: str                       # relative to the media dir, as written in the annotation
    label: Optional[str]
    raw_label: Any
    label_set: Optional[List[str]]
    score: Optional[float]
    split: Optional[str]            # declared split name, or None
    fold: Optional[int]
    fields: Dict[str, Any]          # logical field -> raw value (subtitle, subset, reasoning, audio_path, ...)


def _read_annotation(path: Path, fmt: str, rel: str) -> Tuple[List[_Row], List[str], List[Problem]]:
    """Rows, header (column names) and parse problems. Opens the file read-only."""
    rows: List[_Row] = []
    problems: List[Problem] = []
    header: List[str] = []
    try:
        if fmt == "csv":
            with open(path, "r", encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f, restkey=_EXTRA, restval=None)
                if reader.fieldnames is None:
                    return [], [], [Problem("unparseable-annotation", rel, "empty file (no header line)")]
                header = [h.strip() for h in reader.fieldnames]
                reader.fieldnames = header
                for rec in reader:
                    line = reader.line_num
                    if _EXTRA in rec:
                        n = len(header) + len(rec[_EXTRA])
                        problems.append(Problem("unparseable-annotation", f"{rel}:{line}",
                                                f"{n} fields, the header has {len(header)}"))
                        continue
                    if any(v is None for v in rec.values()):
                        n = sum(v is not None for v in rec.values())
                        problems.append(Problem("unparseable-annotation", f"{rel}:{line}",
                                                f"{n} fields, the header has {len(header)}"))
                        continue
                    rows.append(_Row(line, {k: v.strip() if isinstance(v, str) else v for k, v in rec.items()}))
        elif fmt == "jsonl":
            seen: Dict[str, None] = {}
            with open(path, "r", encoding="utf-8-sig") as f:
                for i, text in enumerate(f, 1):
                    if not text.strip():
                        continue
                    try:
                        obj = json.loads(text)
                    except json.JSONDecodeError as e:
                        problems.append(Problem("unparseable-annotation", f"{rel}:{i}", f"not JSON: {e.msg}"))
                        continue
                    if not isinstance(obj, dict):
                        problems.append(Problem("unparseable-annotation", f"{rel}:{i}",
                                                f"expected a JSON object, got {type(obj).__name__}"))
                        continue
                    for k in obj:
                        seen.setdefault(k, None)
                    rows.append(_Row(i, obj))
            header = list(seen)
        else:  # pragma: no cover - the schema forbids it
            raise ValueError(f"unknown annotation format {fmt!r}")
    except UnicodeDecodeError as e:
        return [], [], [Problem("unparseable-annotation", rel, f"not UTF-8 text ({e.reason} at byte {e.start})")]
    except csv.Error as e:
        return [], [], [Problem("unparseable-annotation", rel, f"CSV error: {e}")]
    return rows, header, problems


def _cell(row: _Row, col: Optional[str]) -> Any:
    if col is None:
        return None
    v = row.data.get(col)
    if isinstance(v, str):
        v = v.strip()
        return v if v != "" else None
    return v


def _norm_split(v: Any) -> str:
    s = str(v).strip().lower()
    return _SPLIT_ALIASES.get(s, s)


def _parse_fold(v: Any) -> Optional[int]:
    m = re.search(r"(\d+)\s*$", str(v).strip())
    return int(m.group(1)) if m else None


def _build_records(m: Manifest, rows: List[_Row], rel: str) -> Tuple[List[_Record], List[Problem]]:
    """Rows -> records, with the row-level problems (kinds: missing-value, duplicate-id,
    unknown-label, bad-score, bad-split, bad-subset). Rows with a problem still become records
    (they count in their split) unless their split is unknown."""
    cols = m.local_copy["columns"]
    problems: List[Problem] = []
    out: List[_Record] = []
    seen_ids: Dict[str, int] = {}
    split_names = list(m.splits)
    K = m.folds
    single = split_names[0] if len(split_names) == 1 and K == 0 else None
    sub_values: Dict[str, set] = {}
    for sname, sub in m.subsets.items():
        for col, val in sub["where"].items():
            sub_values.setdefault(col, set()).add(str(val).strip().lower())
    for r in rows:
        where = f"{rel}:{r.line}"
        path = _cell(r, cols["path"])
        if path is None:
            problems.append(Problem("missing-value", where, f"empty {cols['path']!r} (media path)"))
            continue
        path = str(path)
        rid = _cell(r, cols.get("id"))
        rid = str(rid) if rid is not None else Path(path).with_suffix("").as_posix()
        if rid in seen_ids:
            problems.append(Problem("duplicate-id", where, f"id {rid!r} already used on line {seen_ids[rid]}"))
        else:
            seen_ids[rid] = r.line
        # split / fold
        split: Optional[str] = None
        fold: Optional[int] = None
        if K:
            raw = _cell(r, cols["fold"])
            fold = _parse_fold(raw) if raw is not None else None
            if fold is None or not 1 <= fold <= K:
                problems.append(Problem("bad-split", where, f"fold {raw!r} is not one of 1..{K}"))
                continue
            split = f"fold{fold}"
        elif single is not None and "split" not in cols:
            split = single
        else:
            raw = _cell(r, cols.get("split"))
            s = _norm_split(raw) if raw is not None else None
            if s not in m.splits:
                problems.append(Problem("bad-split", where, f"split {raw!r} is not one of {split_names}"))
                continue
            split = s
        # label / score / label set
        label: Optional[str] = None
        raw_label = None
        score: Optional[float] = None
        label_set: Optional[List[str]] = None
        if m.task == "sentiment-regression":
            raw_score = _cell(r, cols["score"])
            try:
                score = float(raw_score)
                if not math.isfinite(score):
                    raise ValueError
            except (TypeError, ValueError):
                problems.append(Problem("bad-score", where, f"score {raw_score!r} is not a number"))
                score = None
            if score is not None:
                lo, hi = float(m.score["min"]), float(m.score["max"])
                if not lo <= score <= hi:
                    problems.append(Problem("bad-score", where, f"score {score:g} outside [{lo:g}, {hi:g}]"))
                label = m.label_from_score(min(max(score, lo), hi))
        if "label" in cols:
            raw_label = _cell(r, cols["label"])
            if raw_label is None:
                problems.append(Problem("missing-value", where, f"empty {cols['label']!r} (label)"))
            else:
                label = m.map_label(raw_label)
                if label is None:
                    problems.append(Problem("unknown-label", where,
                                            f"{raw_label!r} is not in the label set {m.labels} (nor in label_map)"))
        if "label_set" in cols:
            raw_set = _cell(r, cols["label_set"])
            if isinstance(raw_set, list):
                label_set = [str(x).strip() for x in raw_set if str(x).strip()]
            elif raw_set is None:
                label_set = []
            else:
                label_set = [t.strip() for t in re.split(r"[;,]", str(raw_set)) if t.strip()]
            if not label_set:
                problems.append(Problem("missing-value", where, f"empty {cols['label_set']!r} (label set)"))
        fields: Dict[str, Any] = {}
        for logical in ("subtitle", "subset", "reasoning", "audio_path"):
            if logical in cols:
                fields[logical] = _cell(r, cols[logical])
        for col, allowed in sub_values.items():
            v = fields.get(col, _cell(r, cols.get(col)))
            if v is None or str(v).strip().lower() not in allowed:
                problems.append(Problem("bad-subset", where, f"{cols[col]} {v!r} is not one of {sorted(allowed)}"))
        if "audio_path" in cols and fields.get("audio_path") is None:
            problems.append(Problem("missing-value", where, f"empty {cols['audio_path']!r} (audio path)"))
        out.append(_Record(r.line, rid, path, label, raw_label, label_set, score, split, fold, fields))
    return out, problems


def _select(m: Manifest, records: List[_Record], split: str, subset: Optional[str]) -> List[_Record]:
    K = m.folds
    s = _norm_split(split)
    if s == "all":
        sel = list(records)
    elif K and re.match(r"^fold\d+(/train)?$", s):
        k = int(re.match(r"^fold(\d+)", s).group(1))
        if not 1 <= k <= K:
            raise ValueError(f"dataset {m.name}: fold {k} out of range 1..{K}")
        sel = [r for r in records if (r.fold != k if s.endswith("/train") else r.fold == k)]
    elif s in m.splits:
        sel = [r for r in records if r.split == s]
    else:
        if K:
            raise ValueError(f"dataset {m.name} uses {K}-fold cross-validation: pass split='fold1'..'fold{K}' "
                             f"(the test part of that fold), 'foldK/train' (the other folds), or 'all'; got {split!r}")
        raise ValueError(f"dataset {m.name} has no split {split!r}; splits: {', '.join(list(m.splits) + ['all'])}")
    if subset is not None:
        sub = _subset_spec(m, subset)
        for col, val in sub["where"].items():
            want = str(val).strip().lower()
            sel = [r for r in sel if str(r.fields.get(col) or "").strip().lower() == want]
    return sel


def _subset_spec(m: Manifest, subset: str) -> Dict[str, Any]:
    if subset not in m.subsets:
        avail = ", ".join(m.subsets) if m.subsets else "(none)"
        raise ValueError(f"dataset {m.name} has no subset {subset!r}; subsets: {avail}")
    return m.subsets[subset]


# ==============================================================================================
# media decoding
# ==============================================================================================
def _size_hw(size: Any) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def segment_indices(n: int, t: int) -> np.ndarray:
    """Indices of ``t`` frames sampled uniformly from ``n``: the centres of ``t`` equal segments
    (``floor((i + 0.5) * n / t)``). ``n < t`` repeats frames. ``[t]`` int64."""
    if n <= 0:
        raise ValueError("a clip with no frames")
    if t <= 0:
        raise ValueError("frames must be >= 1")
    return np.minimum(((np.arange(t) + 0.5) * n / t).astype(np.int64), n - 1)


def read_image(path: Union[str, Path], size: Any = None) -> np.ndarray:
    """An image file -> ``[1, H, W, 3]`` uint8 RGB (Pillow)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        hw = _size_hw(size)
        if hw is not None:
            im = im.resize((hw[1], hw[0]), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)[None].copy()


def _to_rgb(frame, hw: Optional[Tuple[int, int]]) -> np.ndarray:
    if hw is not None:
        frame = frame.reformat(width=hw[1], height=hw[0], format="rgb24")
        return frame.to_ndarray()
    return frame.to_ndarray(format="rgb24")


def _video_pass(path: Path, idx: Optional[np.ndarray], hw) -> Tuple[Dict[int, np.ndarray], int]:
    import av

    want = set(int(i) for i in idx) if idx is not None else set()
    got: Dict[int, np.ndarray] = {}
    n = 0
    with av.open(str(path), mode="r") as c:
        if not c.streams.video:
            raise ValueError(f"{path}: no video stream")
        st = c.streams.video[0]
        st.thread_type = "AUTO"
        for i, fr in enumerate(c.decode(st)):
            if i in want:
                got[i] = _to_rgb(fr, hw)
            n = i + 1
    return got, n


def read_video(path: Union[str, Path], frames: int = _DEFAULT_FRAMES, size: Any = None) -> Tuple[np.ndarray, Dict[str, Any]]:
    """A video file -> (``[T, H, W, 3]`` uint8 RGB frames, info) with PyAV.

    T = ``frames`` frames sampled uniformly (:func:`segment_indices`); ``size`` resizes (None keeps
    the native size). ``info``: ``n_frames`` (decoded count), ``frame_indices``, ``fps``.
    """
    import av

    path = Path(path)
    hw = _size_hw(size)
    with av.open(str(path), mode="r") as c:
        if not c.streams.video:
            raise ValueError(f"{path}: no video stream")
        st = c.streams.video[0]
        declared = int(st.frames or 0)
        fps = float(st.average_rate) if st.average_rate else None
    n = declared
    if n <= 0:
        _, n = _video_pass(path, None, hw)
    idx = segment_indices(n, frames)
    got, actual = _video_pass(path, idx, hw)
    if actual != n:  # the container's frame count was off: sample again from the true count
        n = actual
        idx = segment_indices(n, frames)
        got, _ = _video_pass(path, idx, hw)
    arr = np.stack([got[int(i)] for i in idx])
    return arr, {"n_frames": n, "frame_indices": idx.tolist(), "fps": fps}


def read_video_audio(path: Union[str, Path]) -> Optional[Tuple[np.ndarray, int]]:
    """The audio track of a video -> (mono float32 waveform ``[S]``, sample rate), or None when the
    file has no audio stream (PyAV; channels are averaged by the resampler)."""
    import av

    with av.open(str(path), mode="r") as c:
        if not c.streams.audio:
            return None
        st = c.streams.audio[0]
        sr = int(st.rate or st.codec_context.sample_rate)
        res = av.AudioResampler(format="flt", layout="mono", rate=sr)
        chunks = []
        for fr in c.decode(st):
            for o in res.resample(fr):
                chunks.append(o.to_ndarray().reshape(-1))
        for o in res.resample(None):
            chunks.append(o.to_ndarray().reshape(-1))
    wave = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return wave, sr


def read_audio(path: Union[str, Path]) -> Tuple[np.ndarray, int]:
    """An audio file -> (mono float32 waveform ``[S]``, sample rate) with soundfile (channels averaged)."""
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1).astype(np.float32), int(sr)


# ==============================================================================================
# datasets
# ==============================================================================================
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
        from .world import EmoWorld
    except ImportError as e:
        raise ImportError(f"dataset {m.name} is a view of the emotion world, but emolens.world could not be imported: {e}") from e
    world = EmoWorld(view=view, **params)
    if limit is not None:
        n = min(n, max(0, int(limit)))
    opts = dict(params, view=view)
    return Dataset(m, split, n, lambda i: world.sample(split, i), subset=subset, options=opts)


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


# ==============================================================================================
# checking a local copy
# ==============================================================================================
@dataclass
class CheckReport:
    """Result of :func:`check_local_copy`: ``ok`` is True when ``problems`` is empty."""

    manifest: str
    root: str
    ok: bool
    problems: List[Problem] = field(default_factory=list)
    counts: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def kinds(self) -> List[Tuple[str, str]]:
        """Sorted ``(kind, where)`` pairs, handy for comparisons."""
        return sorted((p.kind, p.where) for p in self.problems)

    def to_text(self, max_per_kind: int = 20) -> str:
        c = self.counts
        lines = [f"emolens data check: {self.manifest} at {self.root}"]
        if "annotation" in c:
            lines.append(f"  annotation   {c['annotation']} ({c.get('rows', 0)} rows)")
        for sname, info in (c.get("splits") or {}).items():
            exp = info.get("expected")
            tol = info.get("tolerance", 0.0)
            if exp is None:
                status = "(size not in the manifest)"
            else:
                status = f"expected {exp}" + (f" +/-{tol:.0%}" if tol else "") + (" ok" if info.get("ok") else "  MISMATCH")
            lines.append(f"  split        {sname:<14} {info['observed']:>7}  {status}")
        for sname, info in (c.get("subsets") or {}).items():
            exp = info.get("expected")
            status = "" if exp is None else f"expected {exp}" + (" ok" if info.get("ok") else "  MISMATCH")
            lines.append(f"  subset       {sname:<14} {info['observed']:>7}  {status}")
        if "media_referenced" in c:
            which = "all present files" if c.get("media_checked") == c.get("media_present") else "a random sample"
            lines.append(f"  media        {c['media_referenced']} referenced, {c.get('media_present', 0)} present; "
                         f"decoded {c.get('media_decoded', 0)} of {c.get('media_checked', 0)} tried ({which})")
        if c.get("labels"):
            lab = ", ".join(f"{k} {v}" for k, v in c["labels"].items())
            lines.append(f"  labels       {lab}")
        for n in self.notes:
            lines.append(f"  note         {n}")
        if self.problems:
            lines.append(f"problems ({len(self.problems)}):")
            by_kind: Dict[str, List[Problem]] = {}
            for p in self.problems:
                by_kind.setdefault(p.kind, []).append(p)
            for k, ps in by_kind.items():
                for p in ps[:max_per_kind]:
                    lines.append(f"  {p}")
                if len(ps) > max_per_kind:
                    lines.append(f"  {k:<22} ... and {len(ps) - max_per_kind} more")
            lines.append(f"result: {len(self.problems)} problem(s)")
        else:
            lines.append("result: OK, no problems")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def _check_image(p: Path) -> Optional[str]:
    try:
        from PIL import Image

        with Image.open(p) as im:
            im.load()
            if im.size[0] < 1 or im.size[1] < 1:
                return "empty image"
        return None
    except Exception as e:  # noqa: BLE001 - any decoder failure is the finding
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()


def _check_video(p: Path, need_audio: bool) -> Tuple[Optional[str], Optional[str]]:
    """(decode problem or None, missing-audio problem or None)."""
    import av

    try:
        with av.open(str(p), mode="r") as c:
            if not c.streams.video:
                return "no video stream", None
            st = c.streams.video[0]
            declared = int(st.frames or 0)
            n = 0
            for _ in c.decode(st):
                n += 1
            if n == 0:
                return "no decodable video frame", None
            if declared and n < 0.9 * declared:
                return f"decoded {n} of the {declared} frames the container declares (truncated?)", None
        if need_audio:
            got = read_video_audio(p)
            if got is None:
                return None, "no audio stream"
            if got[0].size == 0:
                return "audio stream has no decodable sample", None
        return None, None
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip(), None


def _check_audio(p: Path) -> Optional[str]:
    try:
        wave, sr = read_audio(p)
        if wave.size == 0:
            return "no audio sample"
        return None
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()


def check_local_copy(manifest: Union[str, Path, Manifest], root: Union[str, Path], *,
                     sample: Optional[int] = None, seed: int = 0) -> CheckReport:
    """Check a local copy of a benchmark against its manifest, reading only.

    Checks, in order (a failure of 1-4 stops the check, since later ones would be meaningless):
    1. ``root`` is a folder; 2. the annotation file exists; 3. it parses (CSV: every row has the
    header's number of fields; JSONL: every line is a JSON object); 4. every column the manifest
    maps is present; 5. per row: media path present, label in the label set (after label_map),
    score a number within [min, max], split / fold / subset values declared, ids unique; 6. every
    referenced media (and audio) file exists; 7. files decode: all of them, or a random sample of
    ``sample`` files (seeded by ``seed``) when there are more; a video must yield frames (not fewer
    than 90% of what its container declares) and, when the manifest takes audio from the track, an
    audio stream; 8. split (and subset) sizes against the manifest: exact for an integer, within the
    relative tolerance for ``{count, tolerance}``, not checked for null.

    Returns a :class:`CheckReport`; ``problems`` use the kinds of :data:`PROBLEM_KINDS`.
    """
    m = load_manifest(manifest)
    if not m.is_local:
        raise ValueError(f"{m.name} is a view of the synthetic emotion world (kind: world): there is no local copy to check")
    root_p = Path(root).expanduser()
    rep = CheckReport(manifest=m.name, root=str(root_p), ok=False)
    probs = rep.problems
    if not root_p.is_dir():
        probs.append(Problem("missing-root", str(root), "not an existing folder"))
        return rep
    lc = m.local_copy
    rel = lc["annotation"]
    rep.counts["annotation"] = rel
    ann = root_p / rel
    if not ann.is_file():
        probs.append(Problem("missing-annotation", rel, f"expected the {lc['format']} annotation file here"))
        return rep
    rows, header, parse_probs = _read_annotation(ann, lc["format"], rel)
    rep.counts["rows"] = len(rows)
    if parse_probs:
        probs.extend(parse_probs)
        rep.notes.append("later checks skipped until the annotation parses")
        return rep
    cols = lc["columns"]
    missing = [(logical, col) for logical, col in cols.items() if col not in header]
    if missing:
        for logical, col in missing:
            probs.append(Problem("missing-column", rel, f"column {col!r} (columns.{logical}) not in the header {header}"))
        rep.notes.append("later checks skipped until the columns are present")
        return rep
    records, row_probs = _build_records(m, rows, rel)
    probs.extend(row_probs)
    # ---- media presence ----------------------------------------------------------------------
    media_dir = root_p / lc["media"]["dir"]
    media_rel = Path(lc["media"]["dir"])
    kind = lc["media"]["kind"]
    audio_cfg = lc.get("audio") or ({"source": "track", "required": True} if "audio" in m.modalities else None)
    audio_from_file = bool(audio_cfg) and audio_cfg.get("source") == "file"
    audio_from_track = bool(audio_cfg) and audio_cfg.get("source") == "track" and kind == "video"
    need_track = audio_from_track and bool(audio_cfg.get("required", True))
    audio_rel = Path(audio_cfg.get("dir", "")) if audio_cfg else Path("")
    files: Dict[str, Tuple[Path, str]] = {}   # where -> (absolute path, what: media|audio)
    for r in records:
        files.setdefault((media_rel / r.path).as_posix(), (media_dir / r.path, kind))
        if audio_from_file and r.fields.get("audio_path"):
            ap = str(r.fields["audio_path"])
            files.setdefault((audio_rel / ap).as_posix(), (root_p / audio_rel / ap, "audio"))
    present: List[str] = []
    for where, (p, what) in files.items():
        if p.is_file():
            present.append(where)
        else:
            probs.append(Problem("missing-media", where, f"{what} file not found"))
    rep.counts["media_referenced"] = len(files)
    rep.counts["media_present"] = len(present)
    # ---- decoding ----------------------------------------------------------------------------
    to_check = list(present)
    if sample is not None and 0 <= sample < len(to_check):
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(to_check), size=int(sample), replace=False)
        to_check = [to_check[i] for i in sorted(pick)]
    decoded = 0
    for where in to_check:
        p, what = files[where]
        if what == "image":
            err, aerr = _check_image(p), None
        elif what == "video":
            err, aerr = _check_video(p, need_track)
        else:
            err, aerr = _check_audio(p), None
        if err:
            probs.append(Problem("undecodable-media", where, err))
        else:
            decoded += 1
        if aerr:
            probs.append(Problem("missing-audio", where, f"{aerr} (manifest takes the audio from the video's track)"))
    rep.counts["media_checked"] = len(to_check)
    rep.counts["media_decoded"] = decoded
    # ---- counts ------------------------------------------------------------------------------
    labels: Dict[str, int] = {lab: 0 for lab in m.labels}
    for r in records:
        if r.label is not None:
            labels[r.label] = labels.get(r.label, 0) + 1
    rep.counts["labels"] = {k: v for k, v in labels.items() if v or not m.open_vocabulary}
    splits_info: Dict[str, Dict[str, Any]] = {}
    for sname in m.splits:
        obs = sum(1 for r in records if r.split == sname)
        exp, tol = m.split_spec(sname)
        ok = exp is None or abs(obs - exp) <= tol * exp
        splits_info[sname] = {"observed": obs, "expected": exp, "tolerance": tol, "ok": ok}
        if not ok:
            probs.append(Problem("split-size", f"split {sname}",
                                 f"{obs} rows, the manifest expects {exp}" + (f" (+/-{tol:.0%})" if tol else "")))
    rep.counts["splits"] = splits_info
    subsets_info: Dict[str, Dict[str, Any]] = {}
    for sname, sub in m.subsets.items():
        sel = records
        for col, val in sub["where"].items():
            want = str(val).strip().lower()
            sel = [r for r in sel if str(r.fields.get(col) or "").strip().lower() == want]
        exp, tol = _count_spec(sub.get("count"))
        ok = exp is None or abs(len(sel) - exp) <= tol * exp
        subsets_info[sname] = {"observed": len(sel), "expected": exp, "ok": ok}
        if not ok:
            probs.append(Problem("subset-size", f"subset {sname}", f"{len(sel)} rows, the manifest expects {exp}"))
    if subsets_info:
        rep.counts["subsets"] = subsets_info
    rep.ok = not probs
    return rep


# ==============================================================================================
# command line: `emolens data check MANIFEST --root DIR`
# ==============================================================================================
class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block, no SystemExit
        raise _UsageError(message)


def data_check_main(argv: Optional[Sequence[str]] = None) -> int:
    """``emolens data check MANIFEST --root DIR [--sample N] [--seed S]``.

    Prints the report; returns 0 when the copy is clean, 1 when it has problems, 2 on a usage
    error (missing --root, unknown or malformed manifest, root not a folder, a world view), with a
    one-line message on stderr.
    """
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in and args_in[0] == "check":
        args_in = args_in[1:]
    p = _Parser(prog="emolens data check",
                description="Validate a local copy of a benchmark against its manifest (reads only).")
    p.add_argument("manifest", help="manifest name (see data_manifests/) or path to a manifest YAML")
    p.add_argument("--root", required=True, help="folder holding the local copy")
    p.add_argument("--sample", type=int, default=None,
                   help="decode only a random sample of N media files (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sample")
    try:
        a = p.parse_args(args_in)
        if a.sample is not None and a.sample < 0:
            raise _UsageError("--sample must be >= 0")
        m = load_manifest(a.manifest)
        if not m.is_local:
            raise _UsageError(f"{m.name} is a view of the synthetic emotion world: nothing to check on disk")
        if not Path(a.root).expanduser().is_dir():
            raise _UsageError(f"--root {a.root!r} is not an existing folder")
        rep = check_local_copy(m, a.root, sample=a.sample, seed=a.seed)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except (_UsageError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"emolens data check: error: {msg}", file=sys.stderr)
        return 2
    print(rep.to_text())
    return 0 if rep.ok else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(data_check_main())
