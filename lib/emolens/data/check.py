"""Checking a local copy of a benchmark before anything runs on it: :func:`check_local_copy` (every
annotation row, media file and split size against the manifest; never writes under ``root``) and
its command line ``emolens data check MANIFEST --root DIR`` (:func:`data_check_main`).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .loaders import read_audio, read_video_audio
from .manifest import Manifest, PROBLEM_KINDS, Problem, _build_records, _count_spec, _read_annotation, load_manifest

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


# ---------------------------------------------------------------------------------------------- `emolens data check`
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
