"""Dataset manifests: the schema, loading and validating a manifest, and reading a local copy's
annotation file into records the manifest's rules accept (splits, folds, labels, scores, subsets).

Every dataset emolens knows is described by one YAML file in ``data_manifests/`` (schema:
``lib/emolens/manifest_schema.yaml``); see :mod:`emolens.data` for the conventions.
:class:`Problem` is one thing wrong with a local copy (:data:`PROBLEM_KINDS`); the annotation
reader reports them, :mod:`emolens.data.check` collects them.
"""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union


SCHEMA_PATH = Path(__file__).resolve().parents[1] / "manifest_schema.yaml"

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
_EXTRA = "\0extra"  # csv.DictReader restkey: fields beyond the header


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
    return Path(__file__).resolve().parents[3] / "data_manifests"


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


# ---------------------------------------------------------------------------------------------- annotation -> records
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
