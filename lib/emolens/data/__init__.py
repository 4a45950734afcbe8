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

Modules (everything public is re-exported here, so ``from emolens.data import load_dataset`` works)::

    manifest.py   the schema, load_manifest, reading an annotation file into records
    loaders.py    media decoding: Pillow (images), PyAV (video frames, audio tracks), soundfile (audio)
    views.py      Dataset and load_dataset: world views and local copies
    check.py      check_local_copy and `emolens data check`

Public API::

    list_manifests() -> list[str]
    load_manifest(name_or_path) -> Manifest                       # raises ManifestError / ValueError
    load_dataset(name_or_manifest, split="test", *, root=None, limit=None, seed=0, subset=None,
                 **overrides) -> Dataset
    check_local_copy(manifest, root, *, sample=None, seed=0) -> CheckReport
    data_check_main(argv) -> int                                  # `emolens data check`

Conventions (documented choices)
--------------------------------
- Manifest folder: ``$EMOLENS_MANIFESTS`` if set, else ``<repo>/data_manifests`` (found from
  ``lib/emolens/data/manifest.py`` as ``parents[3] / "data_manifests"``).
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

from .check import CheckReport, check_local_copy, data_check_main
from .loaders import read_audio, read_image, read_video, read_video_audio, segment_indices
from .manifest import (PROBLEM_KINDS, SCHEMA_PATH, Manifest, ManifestError, Problem, list_manifests, load_manifest,
                       manifests_dir)
from .views import Dataset, load_dataset

__all__ = [
    "ManifestError", "Manifest", "Dataset", "Problem", "CheckReport",
    "manifests_dir", "list_manifests", "load_manifest", "load_dataset", "check_local_copy",
    "data_check_main", "PROBLEM_KINDS", "SCHEMA_PATH",
    "segment_indices", "read_image", "read_video", "read_video_audio", "read_audio",
]
