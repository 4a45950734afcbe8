"""emolens.data: manifests (schema + cross-field rules), loaders on tiny fake local copies,
check_local_copy (exactly the planted problems, nothing written), `emolens data check` exit codes,
and the world views once emolens.world exists."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fakedata as fd  # noqa: E402
from emolens import data  # noqa: E402
from emolens.sample import Sample  # noqa: E402

MANIFESTS = data.list_manifests()
LOCAL = [n for n in MANIFESTS if data.load_manifest(n).kind == "local"]


# ==============================================================================================
# manifests
# ==============================================================================================
def test_manifest_folder_is_found_and_holds_the_benchmarks(monkeypatch):
    monkeypatch.delenv("EMOLENS_MANIFESTS", raising=False)
    assert data.manifests_dir() == Path(data.__file__).resolve().parents[3] / "data_manifests"  # lib/emolens/data/__init__.py
    names = data.list_manifests()
    for name in ["mer2023", "mafw", "ch-sims", "dfew", "emoset", "emotion6", "webemo-7", "webemo-25",
                 "abstract", "ca-mer", "emer"]:
        assert name in names


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_manifest_validates(name):
    m = data.load_manifest(name)
    assert m.name == name and m.path.stem == name
    assert m.kind in ("world", "local")
    assert isinstance(m.raw, dict) and m.raw["name"] == name
    for g, members in m.valence_groups.items():
        assert set(members) <= set(m.labels), g
    if m.kind == "world":
        assert m.world and "view" in m.world
    else:
        assert m.task in ("classification", "sentiment-regression", "reasoning")
        assert m.reported, "local manifests copy some reported numbers from the seeds"
        assert m.obtain["citation"] and m.obtain["page"] and m.obtain["steps"]
        assert m.notes and m.protocol
    # loading by path gives the same manifest
    assert data.load_manifest(m.path).raw == m.raw


@pytest.mark.parametrize("name", LOCAL)
def test_classification_valence_groups_partition_the_labels(name):
    m = data.load_manifest(name)
    if m.open_vocabulary:
        assert m.labels == [] and m.valence_groups == {}
        return
    seen = [lab for members in m.valence_groups.values() for lab in members]
    assert len(seen) == len(set(seen)), "a label in two valence groups"
    assert sorted(seen) == sorted(m.labels), "every label has a valence"
    assert {"positive", "negative"} <= set(m.valence_groups)


def test_label_sets_follow_the_papers():
    lab = lambda n: data.load_manifest(n).labels  # noqa: E731
    assert lab("mer2023") == ["neutral", "anger", "happiness", "sadness", "worry", "surprise"]
    assert lab("mafw") == ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise",
                           "contempt", "anxiety", "helplessness", "disappointment"]
    assert sorted(lab("dfew")) == sorted(["happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear"])
    mikels = {"amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness"}
    for n in ("emoset", "abstract"):
        m = data.load_manifest(n)
        assert set(m.labels) == mikels
        assert set(m.valence_groups["positive"]) == {"amusement", "awe", "contentment", "excitement"}
        assert set(m.valence_groups["negative"]) == {"anger", "disgust", "fear", "sadness"}
    assert len(lab("emotion6")) == 6 and len(lab("webemo-7")) == 7 and len(lab("webemo-25")) == 25
    assert sorted(lab("ch-sims")) == ["negative", "neutral", "positive"]
    assert len(lab("ca-mer")) == 9


def test_fold_protocols_and_subsets():
    for n in ("mafw", "dfew"):
        m = data.load_manifest(n)
        assert m.folds == 5 and list(m.splits) == [f"fold{k}" for k in range(1, 6)]
    ca = data.load_manifest("ca-mer")
    assert set(ca.subsets) == {"video-aligned", "audio-aligned", "consistent"}
    assert all(s["count"] == 500 for s in ca.subsets.values())
    assert ca.expected_size("test") == 1500
    emer = data.load_manifest("emer")
    assert emer.task == "reasoning" and emer.open_vocabulary and emer.expected_size("test") == 332
    assert set(emer.metrics) == {"set_accuracy", "set_recall", "set_average"}


def test_ch_sims_states_its_acc2_convention():
    m = data.load_manifest("ch-sims")
    assert m.task == "sentiment-regression" and m.score == {"min": -1.0, "max": 1.0, "neutral_band": 0.1}
    assert m.metric_options["acc2"]["convention"] in ("non-negative", "non-zero", "non-positive")
    assert "Acc-2 convention" in m.notes
    assert m.label_from_score(-0.2) == "negative" and m.label_from_score(0.0) == "neutral"
    assert m.label_from_score(0.1) == "neutral" and m.label_from_score(0.4) == "positive"


def test_webemo_hierarchy_is_consistent():
    m7, m25 = data.load_manifest("webemo-7"), data.load_manifest("webemo-25")
    for fine in m25.labels:
        coarse = m7.map_label(fine)
        assert coarse in m7.labels, fine
        assert m7.valence_of(coarse) == m25.valence_of(fine), fine
    # the release's index codes and misspellings
    for i, fine in enumerate(m25.labels):
        assert m25.map_label(str(i)) == fine
        assert m7.map_label(str(i)) == m7.map_label(fine)
    assert m25.map_label("cheerfullness") == "cheerfulness" and m7.map_label("irritabilty") == "anger"


def test_reported_numbers_are_copied_from_the_seeds():
    mer = data.load_manifest("mer2023")
    rows = {(r.get("setting"), row["method"]): row for r in mer.reported for row in r["rows"]}
    assert rows[("InternVL3.5-8B, frozen", "WETR")] == {"method": "WETR", "war": 68.13, "uar": 63.24, "f1": 68.48}
    emo = data.load_manifest("emoset")
    assert any(row.get("accuracy") == 56.24 for r in emo.reported for row in r["rows"])
    ca = data.load_manifest("ca-mer")
    assert any(row.get("all_avg") == 61.14 for r in ca.reported for row in r["rows"])


# ---- malformed manifests ----------------------------------------------------------------------
WORLD_MER = {
    "name": "world-mer", "kind": "world", "title": "Emotion world, MER2023 view", "description": "...",
    "modalities": ["video", "audio", "text"],
    "labels": ["neutral", "anger", "happiness", "sadness", "worry", "surprise"],
    "valence_groups": {"positive": ["happiness", "surprise"], "negative": ["anger", "sadness", "worry"],
                       "neutral": ["neutral"]},
    "metrics": ["war", "uar", "f1"], "splits": {"train": 20000, "validation": 300, "test": 600},
    "world": {"view": "mer", "frames": 2, "size": 32, "eps": 0.0, "conflict": "consistent", "seed": 0},
    "subsets": {}, "reference": "...",
}


def _write(tmp_path: Path, raw, name: str = "world-mer") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False) if not isinstance(raw, str) else raw, encoding="utf-8")
    return p


def test_world_view_format_is_accepted(tmp_path):
    m = data.load_manifest(_write(tmp_path, WORLD_MER))
    assert m.kind == "world" and m.world["view"] == "mer" and m.expected_size("test") == 600
    camer = dict(WORLD_MER, name="world-camer", world=dict(WORLD_MER["world"], view="camer"),
                 subsets={"video-aligned": {"conflict": "video-aligned"}, "audio-aligned": {"conflict": "audio-aligned"},
                          "consistent": {"conflict": "consistent"}})
    assert data.load_manifest(_write(tmp_path, camer, "world-camer")).subsets["video-aligned"] == {"conflict": "video-aligned"}


def _drop(d, key):
    d = dict(d)
    d.pop(key)
    return d


BAD = {
    "missing-field": (_drop(WORLD_MER, "labels"), "$.labels", "required"),
    "wrong-type": (dict(WORLD_MER, splits={"train": 20000, "validation": "300", "test": 600}), "$.splits.validation", "split size"),
    "valence-label-not-in-labels": (dict(WORLD_MER, valence_groups={"positive": ["happiness", "joy"]}),
                                    "$.valence_groups.positive[1]", "'joy'"),
    "unknown-field": (dict(WORLD_MER, lables=["a"]), "$.lables", "unknown field"),
    "bad-enum": (dict(WORLD_MER, world=dict(WORLD_MER["world"], conflict="sideways")), "$.world.conflict", "one of"),
    "metrics-not-a-list": (dict(WORLD_MER, metrics="war"), "$.metrics", "expected array"),
    "name-mismatch": (dict(WORLD_MER, name="world-other"), "$.name", "file name"),
    "not-yaml": ("name: x\n  bad: [\n", "$", "valid YAML"),
    "world-without-world": (_drop(WORLD_MER, "world"), "$.world", "required"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_manifest_names_file_and_field(tmp_path, case):
    raw, field_path, expected = BAD[case]
    p = _write(tmp_path, raw)
    with pytest.raises(data.ManifestError) as ei:
        data.load_manifest(p)
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(p) in msg
    assert f"field {field_path}:" in msg
    assert expected in msg
    assert ei.value.field == field_path and isinstance(ei.value, ValueError)


def test_malformed_local_manifests(tmp_path):
    raw = yaml.safe_load(data.load_manifest("mer2023").path.read_text(encoding="utf-8"))
    bad = dict(raw, label_map={"happy": "joy"})
    with pytest.raises(data.ManifestError, match=r"field \$\.label_map\.happy: .*'joy'"):
        data.load_manifest(_write(tmp_path, bad, "mer2023"))
    lc = dict(raw["local_copy"], columns={k: v for k, v in raw["local_copy"]["columns"].items() if k != "split"})
    with pytest.raises(data.ManifestError, match=r"field \$\.local_copy\.columns\.split: required"):
        data.load_manifest(_write(tmp_path, dict(raw, local_copy=lc), "mer2023"))
    with pytest.raises(data.ManifestError, match=r"field \$\.task: required"):
        data.load_manifest(_write(tmp_path, _drop(raw, "task"), "mer2023"))


def test_unknown_manifest_lists_available():
    with pytest.raises(ValueError) as ei:
        data.load_manifest("no-such-dataset")
    assert not isinstance(ei.value, data.ManifestError)
    assert "no-such-dataset" in str(ei.value) and "mer2023" in str(ei.value)


def test_env_var_overrides_the_manifest_folder(tmp_path, monkeypatch):
    _write(tmp_path, WORLD_MER)
    monkeypatch.setenv("EMOLENS_MANIFESTS", str(tmp_path))
    assert data.list_manifests() == ["world-mer"]
    assert data.load_manifest("world-mer").path == (tmp_path / "world-mer.yaml").resolve()


# ==============================================================================================
# check_local_copy on fake copies
# ==============================================================================================
CASES = [
    ("emoset", v) for v in ("clean", "missing-file", "unknown-label", "unparseable-annotation",
                            "wrong-split-size", "corrupt-image")
] + [
    ("mer2023", v) for v in ("clean", "missing-file", "unknown-label", "truncated-video",
                             "unparseable-annotation", "wrong-split-size", "no-audio-track")
] + [
    ("mer2023-wav", v) for v in ("clean", "missing-audio-file")
] + [
    ("ch-sims", v) for v in ("clean", "bad-score", "missing-file", "unparseable-annotation", "wrong-split-size")
] + [
    ("dfew", v) for v in ("clean", "unknown-label", "wrong-split-size")
] + [
    ("ca-mer", v) for v in ("clean", "unparseable-annotation", "wrong-split-size")
] + [
    ("emer", "clean"),
]

BUILDERS = {
    "emoset": fd.make_emoset_copy,
    "mer2023": fd.make_mer2023_copy,
    "mer2023-wav": lambda base, v: fd.make_mer2023_copy(base, v, audio="file"),
    "ch-sims": fd.make_sims_copy,
    "dfew": fd.make_dfew_copy,
    "ca-mer": fd.make_camer_copy,
    "emer": fd.make_emer_copy,
}


@pytest.mark.parametrize("which,variant", CASES, ids=[f"{a}-{b}" for a, b in CASES])
def test_check_reports_exactly_the_planted_problems(tmp_path, which, variant):
    fc = BUILDERS[which](tmp_path, variant)
    before = fd.tree_digest(fc.root)
    rep = data.check_local_copy(fc.manifest_path, fc.root)
    assert rep.kinds() == fc.planted, rep.to_text()
    assert rep.ok == (variant == "clean")
    assert all(p.kind in data.PROBLEM_KINDS for p in rep.problems)
    assert fd.tree_digest(fc.root) == before, "check_local_copy modified the local copy"
    text = rep.to_text()
    assert ("result: OK" in text) == rep.ok
    for kind, where in fc.planted:
        assert kind in text and where in text


def test_check_counts_and_random_sample(tmp_path):
    fc = fd.make_mer2023_copy(tmp_path)
    rep = data.check_local_copy(fc.manifest_path, fc.root)
    assert rep.counts["rows"] == 6 and rep.counts["media_checked"] == 6 == rep.counts["media_decoded"]
    assert rep.counts["splits"]["test"] == {"observed": 3, "expected": 3, "tolerance": 0.0, "ok": True}
    assert rep.counts["labels"]["worry"] == 1
    rep2 = data.check_local_copy(fc.manifest_path, fc.root, sample=2, seed=1)
    assert rep2.ok and rep2.counts["media_checked"] == 2 and "random sample" in rep2.to_text()
    # the sample is reproducible and a truncated file outside it goes unnoticed only by decoding
    fc2 = fd.make_mer2023_copy(tmp_path / "t", "truncated-video")
    hits = [data.check_local_copy(fc2.manifest_path, fc2.root, sample=3, seed=s).kinds() for s in range(16)]
    assert all(h in ([], fc2.planted) for h in hits) and fc2.planted in hits


def test_check_split_tolerance_and_unknown_sizes(tmp_path):
    fc = fd.make_emoset_copy(tmp_path, "wrong-split-size")
    raw = yaml.safe_load(fc.manifest_path.read_text(encoding="utf-8"))
    raw["splits"]["test"] = {"count": 3, "tolerance": 0.5, "source": "approximate"}
    fc.manifest_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert data.check_local_copy(fc.manifest_path, fc.root).ok
    raw["splits"]["test"] = None
    fc.manifest_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    rep = data.check_local_copy(fc.manifest_path, fc.root)
    assert rep.ok and "size not in the manifest" in rep.to_text()


def test_check_real_manifest_against_a_small_copy_flags_sizes(tmp_path):
    fc = fd.make_emoset_copy(tmp_path)
    rep = data.check_local_copy("emoset", fc.root)
    assert rep.kinds() == [("split-size", "split test"), ("split-size", "split train"), ("split-size", "split validation")]


def test_check_missing_root_and_annotation(tmp_path):
    rep = data.check_local_copy("emoset", tmp_path / "nope")
    assert rep.kinds() == [("missing-root", str(tmp_path / "nope"))] and not rep.ok
    rep = data.check_local_copy("emoset", tmp_path)
    assert rep.kinds() == [("missing-annotation", "emoset.csv")]
    (tmp_path / "emoset.csv").write_bytes(b"image,emotion,split\n\xff\xfe broken\n")
    assert data.check_local_copy("emoset", tmp_path).kinds() == [("unparseable-annotation", "emoset.csv")]
    (tmp_path / "emoset.csv").write_text("image,label\nx.png,awe\n", encoding="utf-8")
    assert data.check_local_copy("emoset", tmp_path).kinds() == [("missing-column", "emoset.csv")] * 2


def test_check_refuses_world_views(tmp_path):
    p = _write(tmp_path, WORLD_MER)
    with pytest.raises(ValueError, match="synthetic emotion world"):
        data.check_local_copy(p, tmp_path)


# ---- the command ------------------------------------------------------------------------------
def test_data_check_main_exit_codes(tmp_path, capsys):
    clean = fd.make_emoset_copy(tmp_path / "a")
    broken = fd.make_emoset_copy(tmp_path / "b", "missing-file")
    before = fd.tree_digest(broken.root)
    assert data.data_check_main([str(clean.manifest_path), "--root", str(clean.root)]) == 0
    out = capsys.readouterr().out
    assert "result: OK" in out and "emoset" in out
    assert data.data_check_main(["check", str(broken.manifest_path), "--root", str(broken.root), "--sample", "2"]) == 1
    out = capsys.readouterr().out
    assert "missing-media" in out and broken.planted[0][1] in out
    usage = [
        [str(clean.manifest_path)],                                   # no --root
        ["no-such-dataset", "--root", str(clean.root)],               # unknown manifest
        [str(clean.manifest_path), "--root", str(tmp_path / "nope")], # root is not a folder
        [str(_write(tmp_path, WORLD_MER)), "--root", str(clean.root)],  # a world view
        [str(clean.manifest_path), "--root", str(clean.root), "--sample", "x"],
        [str(_write(tmp_path / "a", dict(WORLD_MER, lables=[]))), "--root", str(clean.root)],  # malformed
    ]
    for argv in usage:
        assert data.data_check_main(argv) == 2, argv
        cap = capsys.readouterr()
        err = cap.err.strip()
        assert err.count("\n") == 0 and err.startswith("emolens data check: error:"), err
        assert "Traceback" not in cap.err + cap.out
    assert data.data_check_main(["--help"]) == 0
    assert "--root" in capsys.readouterr().out
    assert fd.tree_digest(broken.root) == before


# ==============================================================================================
# loaders
# ==============================================================================================
def test_video_loader_with_audio_track(tmp_path):
    fc = fd.make_mer2023_copy(tmp_path)
    ds = data.load_dataset(fc.manifest_path, "test", root=fc.root)
    assert len(ds) == 3 and ds.name == "mer2023" and ds.split == "test" and ds.labels[0] == "neutral"
    assert ds.valence_groups["positive"] == ["happiness", "surprise"]
    samples = list(ds)
    assert [s.label for s in samples] == ["happiness", "worry", "surprise"]  # raw happy / worried mapped
    for s in samples:
        assert isinstance(s, Sample)
        assert s.frames.shape == (8, 32, 32, 3) and s.frames.dtype == np.uint8
        assert s.audio_kind == "waveform" and s.audio.dtype == np.float32 and s.audio.ndim == 1
        assert s.meta["sample_rate"] == 16000 and 0.5 * 16000 < s.audio.size < 1.0 * 16000
        assert s.subtitle.startswith("subtitle number") and "," in s.subtitle
        assert s.meta["source"].endswith(".mp4") and s.meta["n_frames"] == 6
        assert s.uid.startswith("mer2023/test/sample_")
    assert not np.array_equal(samples[0].frames[0], samples[0].frames[-1])
    small = data.load_dataset(fc.manifest_path, "train", root=fc.root, frames=3, size=(16, 20), limit=1)
    assert len(small) == 1 and small[0].frames.shape == (3, 16, 20, 3)
    assert data.load_dataset(fc.manifest_path, "test", root=fc.root, audio=False)[0].audio is None
    assert [len(b) for b in ds.batches(2)] == [2, 1]
    assert ds[-1].uid == samples[-1].uid and [s.uid for s in ds[0:2]] == [s.uid for s in samples[:2]]
    with pytest.raises(IndexError):
        ds[3]


def test_video_loader_with_wav_files(tmp_path):
    fc = fd.make_mer2023_copy(tmp_path, audio="file")
    s = data.load_dataset(fc.manifest_path, "test", root=fc.root)[0]
    assert s.audio.shape == (8000,) and s.meta["sample_rate"] == 16000 and s.meta["audio_source"].endswith(".wav")
    assert s.frames.shape == (8, 32, 32, 3)


def test_image_loader(tmp_path):
    fc = fd.make_emoset_copy(tmp_path)
    sizes = {sp: len(data.load_dataset(fc.manifest_path, sp, root=fc.root)) for sp in ("train", "validation", "test", "all")}
    assert sizes == {"train": 2, "validation": 1, "test": 3, "all": 6}  # "val" in the CSV reads as validation
    ds = data.load_dataset(fc.manifest_path, root=fc.root)
    for s, lab in zip(ds, ["contentment", "sadness", "excitement"]):
        assert s.frames.shape == (1, 24, 32, 3) and s.frames.dtype == np.uint8
        assert s.label == lab and s.audio is None and s.audio_kind is None and s.subtitle == ""
        assert s.meta["valence"] == ("negative" if lab == "sadness" else "positive")
    assert data.load_dataset(fc.manifest_path, root=fc.root, size=8)[0].frames.shape == (1, 8, 8, 3)


def test_sims_loader_scores_and_labels(tmp_path):
    fc = fd.make_sims_copy(tmp_path)
    ds = data.load_dataset(fc.manifest_path, "all", root=fc.root)
    got = [(s.score, s.label) for s in ds]
    assert got == [(-0.8, "negative"), (0.6, "positive"), (0.0, "neutral"), (-0.2, "negative"), (1.0, "positive")]
    s = ds[0]
    assert s.uid == "ch-sims/all/video_0001/0001" and s.subtitle == "我不想放开你" and s.audio is not None
    assert len(data.load_dataset(fc.manifest_path, "validation", root=fc.root)) == 1


def test_fold_loader(tmp_path):
    fc = fd.make_dfew_copy(tmp_path)
    f1 = data.load_dataset(fc.manifest_path, "fold1", root=fc.root)
    assert [s.label for s in f1] == ["happiness", "fear"]  # codes 1 and 7
    assert f1[1].audio is None and f1[0].audio is not None  # audio optional for DFEW
    assert len(data.load_dataset(fc.manifest_path, "fold1/train", root=fc.root)) == 4
    assert len(data.load_dataset(fc.manifest_path, "all", root=fc.root)) == 6
    with pytest.raises(ValueError, match="5-fold"):
        data.load_dataset(fc.manifest_path, "test", root=fc.root)


def test_subsets_and_open_vocabulary(tmp_path):
    ca = fd.make_camer_copy(tmp_path / "ca")
    va = data.load_dataset(ca.manifest_path, root=ca.root, subset="video-aligned")
    assert [s.label for s in va] == ["anger", "neutral"]
    assert va[0].meta["subset"] == "video-aligned" and va[0].meta["label_set"] == ["anger"]
    assert va[0].meta["reasoning"] == "because of clue 0"
    assert len(data.load_dataset(ca.manifest_path, root=ca.root)) == 6
    with pytest.raises(ValueError, match="subsets: video-aligned"):
        data.load_dataset(ca.manifest_path, root=ca.root, subset="nope")
    em = fd.make_emer_copy(tmp_path / "em")
    ds = data.load_dataset(em.manifest_path, root=em.root)
    assert [s.meta["label_set"] for s in ds] == [["frustrated", "angry"], ["happy"], ["worried", "nervous", "sad"]]
    assert all(s.label is None for s in ds)


def test_loader_errors(tmp_path):
    with pytest.raises(ValueError, match=r"local benchmark: pass root=DIR .*cannot download"):
        data.load_dataset("mer2023")
    fc = fd.make_mer2023_copy(tmp_path)
    with pytest.raises(ValueError, match="no split 'validation'"):
        data.load_dataset(fc.manifest_path, "validation", root=fc.root)
    with pytest.raises(TypeError, match="unknown option"):
        data.load_dataset(fc.manifest_path, root=fc.root, eps=0.3)
    with pytest.raises(ValueError, match="not a folder"):
        data.load_dataset(fc.manifest_path, root=tmp_path / "nope")
    bad = fd.make_mer2023_copy(tmp_path / "bad", "unknown-label")
    assert len(data.load_dataset(bad.manifest_path, "train", root=bad.root)) == 2  # other splits still load
    with pytest.raises(ValueError, match=r"unknown-label .*data check"):
        data.load_dataset(bad.manifest_path, "test", root=bad.root)
    gone = fd.make_mer2023_copy(tmp_path / "gone", "missing-file")
    ds = data.load_dataset(gone.manifest_path, "test", root=gone.root)
    with pytest.raises(Exception):
        ds[-1]


def test_segment_indices():
    assert data.segment_indices(8, 4).tolist() == [1, 3, 5, 7]
    assert data.segment_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]
    assert data.segment_indices(100, 1).tolist() == [50]
    with pytest.raises(ValueError):
        data.segment_indices(0, 4)


# ==============================================================================================
# world views
# ==============================================================================================
def _world_or_skip():
    try:
        from emolens.world import EmoWorld  # noqa: F401
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"emolens.world is not importable yet ({type(e).__name__}: {e}); the lead re-runs this")


def test_world_view_loads():
    _world_or_skip()
    if "world-mer" not in MANIFESTS:
        pytest.skip("data_manifests/world-mer.yaml is not written yet")
    ds = data.load_dataset("world-mer", limit=3)
    assert len(ds) == 3 and ds.name == "world-mer"
    samples = list(ds)
    for s in samples:
        assert isinstance(s, Sample) and s.label in ds.labels and s.frames.ndim == 4
    again = data.load_dataset("world-mer", limit=3)
    assert [s.uid for s in again] == [s.uid for s in samples]
    assert np.array_equal(again[0].frames, samples[0].frames)
    m = data.load_manifest("world-mer")
    assert len(data.load_dataset("world-mer", split="validation")) == m.expected_size("validation")
    noisy = data.load_dataset("world-mer", limit=2, eps=0.5)
    assert noisy.options["eps"] == 0.5 and isinstance(noisy[0], Sample)
    with pytest.raises(TypeError, match="unknown world override"):
        data.load_dataset("world-mer", limit=1, colour="red")


def test_world_subsets():
    _world_or_skip()
    if "world-camer" not in MANIFESTS:
        pytest.skip("data_manifests/world-camer.yaml is not written yet")
    m = data.load_manifest("world-camer")
    for sub, over in m.subsets.items():
        ds = data.load_dataset("world-camer", limit=2, subset=sub)
        assert len(ds) == 2 and isinstance(ds[0], Sample)
        for k, v in over.items():
            assert ds.options[k] == v
