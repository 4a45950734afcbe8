"""Tiny fake local copies of real benchmarks, for testing emolens.data without the real data.

Each builder writes, under a fresh folder:

- ``<base>/copy/``: a local copy laid out exactly as the real manifest's ``local_copy`` block says
  (annotation file + media), with a handful of samples: images written with Pillow (PNG and JPEG),
  MP4 clips written with PyAV (mpeg4 video + an AAC audio track, or no track and separate WAV files
  written with soundfile), scores for CH-SIMS, JSONL for CA-MER / EMER;
- ``<base>/manifests/<name>.yaml``: the real manifest with ``splits`` (and subset counts) replaced by
  the fake copy's sizes, plus any layout override (e.g. audio from WAV files).

A ``variant`` plants exactly one problem; :attr:`FakeCopy.planted` lists the ``(kind, where)`` pairs
that ``check_local_copy`` must report (empty for ``"clean"``):

================================  ====================================================
variant                           planted problem
================================  ====================================================
clean                             none
missing-file                      the last row's media file deleted -> missing-media
unknown-label                     the last row's label is "boredom" -> unknown-label
bad-score                         (CH-SIMS) the last row's score is 1.7 -> bad-score
unparseable-annotation            a row with too many fields (CSV) / a broken JSON line
wrong-split-size                  the last row dropped from the annotation -> split-size
truncated-video                   a valid MP4 cut to 60% of its bytes -> undecodable-media
corrupt-image                     an image file overwritten with junk -> undecodable-media
missing-audio-file                (audio="file") the last row's WAV deleted -> missing-media
no-audio-track                    the last row's MP4 written without audio -> missing-audio
duplicate-id                      (id column) the last row reuses the first row's id -> duplicate-id
bad-split                         (split column) the last row's split is "holdout" -> bad-split
bad-subset                        (subsets) the last row's subset is "no-such-subset" -> bad-subset
missing-value                     the last row's label cell is empty -> missing-value
================================  ====================================================

The four row-level variants keep the manifest's sizes consistent with what the check counts (a row
with a bad split counts in no split; a row with a bad subset in no subset), so each plants exactly one
problem.

Nothing here needs a network or the real data; everything is deterministic.
"""
from __future__ import annotations

import copy
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from emolens.data import load_manifest

VARIANTS = ("clean", "missing-file", "unknown-label", "bad-score", "unparseable-annotation", "wrong-split-size",
            "truncated-video", "corrupt-image", "missing-audio-file", "no-audio-track",
            "duplicate-id", "bad-split", "bad-subset", "missing-value")


@dataclass
class FakeCopy:
    name: str                       # manifest name
    root: Path                      # the local copy
    manifest_path: Path             # the adjusted manifest (same layout, fake sizes)
    planted: List[Tuple[str, str]]  # expected (kind, where) problems, sorted
    records: List[Dict[str, Any]]   # what was written (logical fields), in annotation order
    variant: str = "clean"
    splits: Dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# media writers
# ----------------------------------------------------------------------------------------------
def _frame(label_idx: int, t: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(1000 * label_idx + t)
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (40 * label_idx) % 256
    img[..., 1] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    img[..., 2] = (30 * t) % 256
    img[h // 4: h // 2, w // 4: w // 2] = rng.integers(0, 255, 3, dtype=np.uint8)
    return img


def write_image(path: Path, label_idx: int, size: Tuple[int, int] = (24, 32)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_frame(label_idx, 0, *size)).save(path)


def tone(seconds: float = 0.5, sr: int = 16000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_mp4(path: Path, label_idx: int, *, frames: int = 6, size: Tuple[int, int] = (32, 32), fps: int = 8,
              audio: bool = True, sr: int = 16000) -> None:
    """A short MP4 (mpeg4 video, optional mono AAC track) with PyAV."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    with av.open(str(path), mode="w") as out:
        vs = out.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        ast = None
        if audio:
            ast = out.add_stream("aac", rate=sr)
            ast.layout = "mono"
        for t in range(frames):
            fr = av.VideoFrame.from_ndarray(_frame(label_idx, t, h, w), format="rgb24")
            for pkt in vs.encode(fr):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
        if ast is not None:
            wave = tone(frames / fps, sr, 220.0 + 40 * label_idx)
            pts = 0
            for s in range(0, len(wave), 1024):
                chunk = wave[s: s + 1024][None]
                af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                af.sample_rate = sr
                af.pts = pts
                pts += chunk.shape[1]
                for pkt in ast.encode(af):
                    out.mux(pkt)
            for pkt in ast.encode():
                out.mux(pkt)


def write_wav(path: Path, label_idx: int, sr: int = 16000, seconds: float = 0.5) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(seconds, sr, 220.0 + 40 * label_idx), sr, subtype="PCM_16")


def truncate(path: Path, fraction: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


# ----------------------------------------------------------------------------------------------
# the generic builder
# ----------------------------------------------------------------------------------------------
def _deep_update(d: dict, u: dict) -> dict:
    for k, v in u.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            _deep_update(d[k], v)
        else:
            d[k] = v
    return d


def build_copy(base: Path, name: str, records: Sequence[Dict[str, Any]], *, variant: str = "clean",
               audio: str = "track", manifest_overrides: Optional[dict] = None,
               frames: int = 6, size: Tuple[int, int] = (32, 32)) -> FakeCopy:
    """Write a fake copy of manifest ``name`` holding ``records`` (logical fields: path, label,
    score, label_set, split, subtitle, subset, reasoning, id) and the adjusted manifest.

    ``audio``: "track" (MP4s carry AAC audio, as the real manifests say) or "file" (MP4s without
    audio + WAV files under audio/, and a manifest override saying so).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")
    base = Path(base)
    root = base / "copy"
    root.mkdir(parents=True, exist_ok=False)
    raw = copy.deepcopy(load_manifest(name).raw)
    if audio == "file":
        _deep_update(raw, {"local_copy": {"audio": {"source": "file", "dir": "audio", "required": True},
                                          "columns": {"audio_path": "audio"}}})
    if manifest_overrides:
        _deep_update(raw, manifest_overrides)
    lc = raw["local_copy"]
    cols = lc["columns"]
    kind = lc["media"]["kind"]
    media_dir = root / lc["media"]["dir"]
    labels = raw["labels"] or ["x"]
    recs = [dict(r) for r in records]
    target = len(recs) - 1
    planted: List[Tuple[str, str]] = []
    media_rel = Path(lc["media"]["dir"])
    # ---- media -------------------------------------------------------------------------------
    for i, r in enumerate(recs):
        lab = r.get("label")
        li = labels.index(lab) if lab in labels else i % len(labels)
        p = media_dir / r["path"]
        if kind == "image":
            write_image(p, li)
        elif kind == "video":
            with_track = (audio == "track" and not r.get("no_track")
                          and not (variant == "no-audio-track" and i == target))
            write_mp4(p, li, frames=frames, size=size, audio=with_track)
        if audio == "file":
            r["audio_path"] = Path(r["path"]).with_suffix(".wav").as_posix()
            write_wav(root / "audio" / r["audio_path"], li)
    # ---- row-level variants that change what the check counts ---------------------------------
    t = recs[target]
    t_where_media = (media_rel / t["path"]).as_posix()
    line_of = (lambda i: i + 2) if lc["format"] == "csv" else (lambda i: i + 1)
    t_where_row = f"{lc['annotation']}:{line_of(target)}"
    needs = {"duplicate-id": ("id", "an id column"), "bad-split": ("split", "a split column"),
             "missing-value": ("label", "a label column")}
    if variant in needs and needs[variant][0] not in cols:
        raise ValueError(f"variant {variant!r} needs a manifest with {needs[variant][1]}; {name} has none")
    if variant == "bad-subset" and not raw.get("subsets"):
        raise ValueError(f"variant 'bad-subset' needs a manifest with subsets; {name} has none")
    if variant == "duplicate-id":
        t["id"] = recs[0].get("id", Path(recs[0]["path"]).stem)
    elif variant == "bad-split":
        t["split_raw"] = "holdout"
    elif variant == "bad-subset":
        t["subset"] = "no-such-subset"
    elif variant == "missing-value":
        t["label"] = ""
    if variant in ("duplicate-id", "bad-split", "bad-subset", "missing-value"):
        planted.append((variant, t_where_row))
    counted = [r for i, r in enumerate(recs) if not (variant == "bad-split" and i == target)]
    # ---- split sizes (before any row is dropped) ---------------------------------------------
    sizes: Dict[str, int] = {}
    for r in counted:
        sizes[r["split"]] = sizes.get(r["split"], 0) + 1
    raw["splits"] = {s: sizes.get(s, 0) for s in raw["splits"]}
    for sname, sub in (raw.get("subsets") or {}).items():
        if "where" in sub:
            col, val = next(iter(sub["where"].items()))
            sub["count"] = sum(1 for r in counted if str(r.get(col)) == str(val))
    # ---- variants on the rows ----------------------------------------------------------------
    if variant == "unknown-label":
        t["label"] = "boredom"
        planted.append(("unknown-label", f"{lc['annotation']}:{line_of(target)}"))
    elif variant == "bad-score":
        t["score"] = 1.7
        planted.append(("bad-score", f"{lc['annotation']}:{line_of(target)}"))
    write_rows = list(recs)
    if variant == "wrong-split-size":
        write_rows = recs[:-1]
        planted.append(("split-size", f"split {t['split']}"))
        if raw.get("subsets"):
            for sname, sub in raw["subsets"].items():
                col, val = next(iter(sub["where"].items()))
                if str(t.get(col)) == str(val):
                    planted.append(("subset-size", f"subset {sname}"))
    # ---- annotation --------------------------------------------------------------------------
    ann = root / lc["annotation"]
    ann.parent.mkdir(parents=True, exist_ok=True)
    header = list(dict.fromkeys(cols.values()))
    logical_of = {v: k for k, v in cols.items()}

    def cell(r: dict, col: str) -> Any:
        k = logical_of[col]
        if k == "fold":
            return int(r["split"][4:])
        if k == "split":
            return r.get("split_raw", r["split"])
        if k == "id":
            return r.get("id", Path(r["path"]).stem)
        return r.get(k, "")

    if lc["format"] == "csv":
        with open(ann, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for r in write_rows:
                w.writerow([cell(r, c) for c in header])
            if variant == "unparseable-annotation":
                w.writerow([cell(t, c) for c in header] + ["an unquoted, extra field"])
        if variant == "unparseable-annotation":
            planted.append(("unparseable-annotation", f"{lc['annotation']}:{len(write_rows) + 2}"))
    else:
        with open(ann, "w", encoding="utf-8") as f:
            for r in write_rows:
                f.write(json.dumps({c: cell(r, c) for c in header}, ensure_ascii=False) + "\n")
            if variant == "unparseable-annotation":
                f.write('{"name": "broken", "video": \n')
        if variant == "unparseable-annotation":
            planted.append(("unparseable-annotation", f"{lc['annotation']}:{len(write_rows) + 1}"))
    # ---- variants on the files ---------------------------------------------------------------
    if variant == "missing-file":
        (media_dir / t["path"]).unlink()
        planted.append(("missing-media", t_where_media))
    elif variant == "truncated-video":
        assert kind == "video"
        truncate(media_dir / t["path"])
        planted.append(("undecodable-media", t_where_media))
    elif variant == "corrupt-image":
        assert kind == "image"
        (media_dir / t["path"]).write_bytes(b"this is not an image\n" * 8)
        planted.append(("undecodable-media", t_where_media))
    elif variant == "missing-audio-file":
        assert audio == "file"
        (root / "audio" / t["audio_path"]).unlink()
        planted.append(("missing-media", f"audio/{t['audio_path']}"))
    elif variant == "no-audio-track":
        assert audio == "track" and kind == "video"
        planted.append(("missing-audio", t_where_media))
    # ---- manifest ----------------------------------------------------------------------------
    mdir = base / "manifests"
    mdir.mkdir(parents=True, exist_ok=True)
    mpath = mdir / f"{name}.yaml"
    with open(mpath, "w", encoding="utf-8") as f:
        yaml.safe_dump(raw, f, allow_unicode=True, sort_keys=False)
    return FakeCopy(name=name, root=root, manifest_path=mpath, planted=sorted(planted), records=recs,
                    variant=variant, splits=dict(raw["splits"]))


# ----------------------------------------------------------------------------------------------
# ready-made copies
# ----------------------------------------------------------------------------------------------
def make_emoset_copy(base: Path, variant: str = "clean") -> FakeCopy:
    """EmoSet: 6 images (PNG and JPEG) in train 2 / validation 1 / test 3."""
    plan = [("train", "amusement"), ("train", "fear"), ("validation", "awe"),
            ("test", "contentment"), ("test", "sadness"), ("test", "excitement")]
    recs = []
    for i, (split, lab) in enumerate(plan):
        ext = ".png" if i % 2 == 0 else ".jpg"
        # the release writes "val": the loader reads it as validation
        recs.append({"path": f"{lab}/{lab}_{i:05d}{ext}", "label": lab, "split": split,
                     "split_raw": "val" if split == "validation" else split})
    return build_copy(base, "emoset", recs, variant=variant)


def make_mer2023_copy(base: Path, variant: str = "clean", audio: str = "track") -> FakeCopy:
    """MER2023: 6 MP4 clips (mpeg4 + AAC, or + WAV files) with subtitles; raw labels use the release's
    spellings (happy, worried, ...) to exercise label_map."""
    plan = [("train", "neutral"), ("train", "angry"), ("test", "happy"), ("test", "worried"),
            ("test-noise", "sad"), ("test", "surprise")]
    recs = [{"path": f"sample_{i:08d}.mp4", "id": f"sample_{i:08d}", "label": lab, "split": split,
             "subtitle": f"subtitle number {i}, with a comma"} for i, (split, lab) in enumerate(plan)]
    fc = build_copy(base, "mer2023", recs, variant=variant, audio=audio)
    return fc


def make_sims_copy(base: Path, variant: str = "clean") -> FakeCopy:
    """CH-SIMS: 5 clips in nested folders (video_000k/000j.mp4) with scores and Chinese subtitles."""
    plan = [("train", -0.8), ("train", 0.6), ("validation", 0.0), ("test", -0.2), ("test", 1.0)]
    recs = [{"path": f"video_{i // 2 + 1:04d}/{i % 2 + 1:04d}.mp4", "score": s, "split": split,
             "subtitle": "我不想放开你" if s < 0 else "那也好"} for i, (split, s) in enumerate(plan)]
    return build_copy(base, "ch-sims", recs, variant=variant)


def make_dfew_copy(base: Path, variant: str = "clean") -> FakeCopy:
    """DFEW: 6 clips over 5 folds (fold 1 has two), labels as the release's codes 1-7, no audio
    needed (audio.required is false: two clips have no track)."""
    plan = [(1, "1"), (1, "7"), (2, "3"), (3, "4"), (4, "happy"), (5, "6")]
    recs = [{"path": f"{i:05d}.mp4", "id": f"{i:05d}", "label": lab, "split": f"fold{k}", "no_track": i in (1, 3)}
            for i, (k, lab) in enumerate(plan)]
    return build_copy(base, "dfew", recs, variant=variant)


def make_camer_copy(base: Path, variant: str = "clean") -> FakeCopy:
    """CA-MER: 6 clips (JSONL), two per subset, with reasoning texts."""
    subsets = ["video-aligned", "audio-aligned", "consistent"]
    labs = ["angry", "happy", "doubt", "neutral", "sad", "contempt"]
    recs = [{"path": f"sample_{i:08d}.mp4", "id": f"sample_{i:08d}", "label": lab, "split": "test",
             "subset": subsets[i % 3], "subtitle": f"line {i}", "reasoning": f"because of clue {i}"}
            for i, lab in enumerate(labs)]
    return build_copy(base, "ca-mer", recs, variant=variant)


def make_emer_copy(base: Path, variant: str = "clean") -> FakeCopy:
    """EMER: 3 clips (JSONL) with open-vocabulary label sets."""
    sets = [["frustrated", "angry"], ["happy"], ["worried", "nervous", "sad"]]
    recs = [{"path": f"sample_{i:08d}.mp4", "id": f"sample_{i:08d}", "label_set": s, "split": "test",
             "subtitle": f"line {i}", "reasoning": f"clues {i}"} for i, s in enumerate(sets)]
    return build_copy(base, "emer", recs, variant=variant)


def tree_digest(root: Path) -> Dict[str, Tuple[int, str]]:
    """relative path -> (size, sha256) of every file under root (to prove a check changed nothing)."""
    import hashlib

    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            out[p.relative_to(root).as_posix()] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        elif p.is_dir():
            out[p.relative_to(root).as_posix() + "/"] = (0, "dir")
    return out
