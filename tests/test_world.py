"""The synthetic emotion world (emolens.world): determinism, ground truth, conflicts, nuisance, errors,
vocabulary and the world-view manifests."""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from emolens.sample import Sample
from emolens.world import EMOTIONS, VIEWS, EmoWorld, vocabulary
from emolens.world import taxonomy as tx
from emolens.world.glyphs import GLYPH, face_template
from emolens.world.prosody import PROTOTYPES, audio_bayes_accuracy, audio_sigma
from emolens.world.text import FILLER_WORDS

MANIFESTS = Path(__file__).resolve().parents[1] / "data_manifests"


# ---------------------------------------------------------------------------------------- taxonomy
def test_taxonomy_constants():
    assert len(EMOTIONS) == 12 and len(set(EMOTIONS)) == 12
    assert set(tx.VALENCE) == set(EMOTIONS) and tx.VALENCE["surprise"] == "positive"
    assert set(tx.VALENCE.values()) == {"positive", "negative", "neutral"}
    assert set(tx.EXPRESSIONS) == set(EMOTIONS)
    assert len(set(tx.EXPRESSIONS.values())) == 12
    assert len(tx.CLOSE_PAIRS) >= 2
    close = {frozenset(p) for p in tx.CLOSE_PAIRS}
    for a, b in itertools.combinations(EMOTIONS, 2):
        d = tx.feature_distance(a, b)
        if frozenset((a, b)) in close:
            assert d == 1, (a, b)
        else:
            assert d >= 2, (a, b)
    seen = set()
    for e, words in tx.EMOTION_WORDS.items():
        assert 3 <= len(words) <= 4
        for w in words:
            assert re.fullmatch(r"[a-z]+", w) and w not in seen and w not in FILLER_WORDS and w not in EMOTIONS
            seen.add(w)
    assert set(tx.EMOTION_WORDS) == set(EMOTIONS)
    assert 5 <= len(tx.BG_COLORS) <= 8 and all(len(rgb) == 3 for _, rgb in tx.BG_COLORS)


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_valence_groups_partition_labels(view):
    w = EmoWorld(view)
    flat = [l for g in w.valence_groups.values() for l in g]
    assert sorted(flat) == sorted(w.labels) and len(flat) == len(set(flat))
    for g, labs in w.valence_groups.items():
        assert all(tx.VALENCE[l] == g for l in labs)
    assert w.patch == 4 and EmoWorld(f"world-{view}").labels == w.labels


def test_view_definitions():
    assert EmoWorld("mer").labels == ("neutral", "anger", "happiness", "sadness", "worry", "surprise")
    assert EmoWorld("camer").labels == EmoWorld("mer").labels
    em = EmoWorld("emoset")
    assert em.valence_groups == {"positive": ["amusement", "awe", "contentment", "excitement"],
                                 "negative": ["anger", "disgust", "fear", "sadness"]}
    assert em.modalities == ("image", "text") and EmoWorld("mer").modalities == ("video", "audio", "text")


# ---------------------------------------------------------------------------------------- samples
def test_shapes_and_types():
    s = EmoWorld("mer").sample("test", 0)
    assert isinstance(s, Sample)
    assert s.frames.shape == (2, 32, 32, 3) and s.frames.dtype == np.uint8
    assert s.audio.shape == (8,) and s.audio.dtype == np.float32 and s.audio_kind == "features"
    assert s.cue_mask.shape == (2, 32, 32) and s.cue_mask.dtype == bool
    assert s.uid == "world-mer/test/000000"
    e = EmoWorld("emoset").sample("train", 5)
    assert e.frames.shape == (1, 32, 32, 3) and e.audio is None and e.audio_kind is None
    assert e.labels_by_modality["audio"] is None
    big = EmoWorld("camer", frames=4, size=64).sample("validation", 1)
    assert big.frames.shape == (4, 64, 64, 3) and big.cue_mask.shape == (4, 64, 64)
    assert big.cue_mask[0].sum() == (face_template("flat", "flat", "normal", 2) > 0).sum()
    v = EmoWorld("camer", conflict="video-aligned").sample("test", 3)
    assert v.uid == "world-camer/test/video-aligned/000003"


def test_meta_fields():
    w = EmoWorld("mer", eps=2.0)
    for i in range(10):
        s = w.sample("train", i)
        m = s.meta
        for k in ("view", "split", "index", "eps", "conflict", "informative", "bg_color", "n_objects", "valence"):
            assert k in m
        assert m["view"] == "mer" and m["split"] == "train" and m["index"] == i and m["eps"] == 2.0
        assert m["bg_color"] in dict(tx.BG_COLORS) and isinstance(m["n_objects"], int) and 1 <= m["n_objects"] <= 4
        assert m["n_objects"] == len(m["objects"]) and m["valence"] == tx.VALENCE[s.label]
        assert all(o["color"] != m["bg_color"] for o in m["objects"])
        json.dumps(m)  # serialisable


def test_determinism_and_split_separation():
    a, b = EmoWorld("mer", eps=3.0), EmoWorld("mer", eps=3.0)
    for i in (0, 7):
        s, t = a.sample("train", i), b.sample("train", i)
        assert np.array_equal(s.frames, t.frames) and np.array_equal(s.audio, t.audio)
        assert np.array_equal(s.cue_mask, t.cue_mask) and s.subtitle == t.subtitle and s.label == t.label
        assert s.meta == t.meta
    s = a.sample("train", 0)
    for other in (a.sample("test", 0), a.sample("validation", 0), a.sample("train", 1),
                  EmoWorld("mer", eps=3.0, seed=1).sample("train", 0), EmoWorld("camer", eps=3.0).sample("train", 0)):
        assert not np.array_equal(s.frames, other.frames)
        assert not np.array_equal(s.audio, other.audio)
    assert [x.uid for x in a.samples("test", 3, start=5)] == [f"world-mer/test/{i:06d}" for i in (5, 6, 7)]


def test_eps_changes_only_nuisance():
    s0, s5 = EmoWorld("mer", eps=0.0).sample("test", 11), EmoWorld("mer", eps=5.0).sample("test", 11)
    assert s0.label == s5.label and s0.labels_by_modality == s5.labels_by_modality
    assert s0.meta["face"]["path"] == s5.meta["face"]["path"] and s0.meta["bg_color"] == s5.meta["bg_color"]
    assert s0.meta["objects"] == s5.meta["objects"] and np.array_equal(s0.cue_mask, s5.cue_mask)
    # audio: same noise draw, scaled
    mu = PROTOTYPES[s0.labels_by_modality["audio"]]
    assert np.allclose((s0.audio - mu) / audio_sigma(0.0), (s5.audio - mu) / audio_sigma(5.0), atol=1e-4)
    # more eps = more pixel deviation from the clean scene
    assert np.abs(s5.frames.astype(int) - s0.frames).mean() > 10


def test_label_forcing_and_balance():
    w = EmoWorld("mer")
    for lab in w.labels:
        s = w.sample("test", 2, label=lab)
        assert s.label == lab and s.labels_by_modality["visual"] == lab
        assert s.meta["face"]["expression"] == list(tx.EXPRESSIONS[lab])
    counts = {l: 0 for l in w.labels}
    for s in w.samples("train", 600):
        counts[s.label] += 1
    assert min(counts.values()) >= 60 and max(counts.values()) <= 150


# ---------------------------------------------------------------------------------------- visual ground truth
@pytest.mark.parametrize("view,eps", [("mer", 0.0), ("mer", 5.0), ("emoset", 7.0), ("camer", 2.5)])
def test_cue_mask_is_exactly_the_glyph(view, eps):
    w = EmoWorld(view, eps=eps)
    full = int((face_template("flat", "flat", "normal") > 0).sum())
    for i in range(12):
        s, bare = w.sample("test", i), w.sample("test", i, glyph=False)
        assert not bare.meta["glyph"] and np.array_equal(s.cue_mask, bare.cue_mask)
        diff = (s.frames != bare.frames).any(-1)  # [T, H, W]
        assert diff.any() and not (diff & ~s.cue_mask).any()  # the face changes only cue pixels
        assert (diff.sum(axis=(1, 2)) > 0.5 * s.cue_mask.sum(axis=(1, 2))).all()  # and most of them
        for t in range(s.frames.shape[0]):
            assert s.cue_mask[t].sum() == full  # the whole 13-px glyph, inside the frame
            y, x = s.meta["face"]["path"][t]
            assert y % 4 and x % 4  # never aligned to the patch grid
            ys, xs = np.nonzero(s.cue_mask[t])
            assert ys.min() >= y and xs.min() >= x and ys.max() < y + GLYPH and xs.max() < x + GLYPH


def test_face_moves_between_frames():
    for s in EmoWorld("camer", frames=3).samples("test", 20):
        p = np.array(s.meta["face"]["path"])
        step = np.abs(np.diff(p, axis=0))
        assert (step.max(1) >= 1).all() and step.max() <= 2
        apex = s.meta["face"]["apex"]
        assert s.meta["face"]["intensity"][apex] == max(s.meta["face"]["intensity"])


def test_cue_patches_are_a_handful():
    for view in ("mer", "emoset"):
        for s in EmoWorld(view, eps=1.0).samples("test", 30):
            per_frame = s.cue_patches(4).sum(axis=(1, 2))
            assert ((per_frame >= 9) & (per_frame <= 16)).all(), per_frame  # of 64 tokens per frame


def test_decoys_are_not_cues():
    w = EmoWorld("mer", eps=7.0)
    n_with = 0
    for s in w.samples("test", 40):
        assert 0 <= s.meta["n_decoys"] <= 3
        for d in s.meta["decoys"]:
            n_with += 1
            assert d["color"] in dict(tx.DECOY_FILLS)
            code = face_template(*d["expression"])
            dm = np.zeros((40 + 64, 40 + 64), bool)
            dm[d["y"] + 20: d["y"] + 20 + GLYPH, d["x"] + 20: d["x"] + 20 + GLYPH] = code > 0
            dm = dm[20:52, 20:52]
            assert dm.any() and not (dm[None] & s.cue_mask).any()
    assert n_with >= 40  # eps = 7: two or three decoys on most clips
    assert all(s.meta["n_decoys"] == 0 for s in EmoWorld("mer", eps=0.0).samples("test", 20))


def test_emotions_are_visually_distinct():
    w = EmoWorld("emoset")
    crops = {}
    for lab in w.labels:
        s = w.sample("test", 4, label=lab)
        y, x = s.meta["face"]["path"][0]
        crops[lab] = s.frames[0, y:y + GLYPH, x:x + GLYPH].astype(int)
    for a, b in itertools.combinations(w.labels, 2):
        assert np.abs(crops[a] - crops[b]).sum(-1).max() > 100, (a, b)


# ---------------------------------------------------------------------------------------- conflicts / informative
def test_conflict_semantics():
    for conflict in ("consistent", "video-aligned", "audio-aligned"):
        w = EmoWorld("camer", conflict=conflict)
        other_valence = 0
        for s in w.samples("test", 100):
            lbm = s.labels_by_modality
            assert set(lbm) == {"visual", "audio", "text"} and lbm["text"] in (s.label, None)
            assert s.meta["conflict"] == conflict
            if conflict == "consistent":
                assert lbm["visual"] == lbm["audio"] == s.label
            elif conflict == "video-aligned":
                assert lbm["visual"] == s.label and lbm["audio"] != s.label and lbm["audio"] in w.labels
                other_valence += tx.VALENCE[lbm["audio"]] != tx.VALENCE[s.label]
            else:
                assert lbm["audio"] == s.label and lbm["visual"] != s.label and lbm["visual"] in w.labels
                other_valence += tx.VALENCE[lbm["visual"]] != tx.VALENCE[s.label]
            assert s.meta["face"]["expression"] == list(tx.EXPRESSIONS[lbm["visual"]])
        if conflict != "consistent":
            assert other_valence >= 65  # a different valence is preferred (80%)


def test_informative_modalities():
    full = EmoWorld("mer")
    vis = EmoWorld("mer", informative=("visual",))
    none = EmoWorld("mer", informative=())
    assert vis.informative == ("visual",) and EmoWorld("mer", informative="text").informative == ("text",)
    for i in range(20):
        f, v, n = full.sample("test", i), vis.sample("test", i), none.sample("test", i)
        assert v.labels_by_modality == {"visual": v.label, "audio": None, "text": None}
        assert v.subtitle_cue_words == [] and not set(v.subtitle.split()) & {w for ws in tx.EMOTION_WORDS.values() for w in ws}
        # uninformative audio = the emotion-neutral mean prosody + the same noise
        assert np.allclose(f.audio - v.audio, PROTOTYPES[f.label], atol=1e-5)
        assert n.labels_by_modality == {"visual": None, "audio": None, "text": None}
        assert n.meta["face"]["expression"] == [None, None, "normal"]  # blank face: eyes only
        assert np.array_equal(n.cue_mask, f.cue_mask)
        assert not ((n.frames != f.frames).any(-1) & ~f.cue_mask).any()
    assert EmoWorld("emoset").informative == ("visual", "text") and EmoWorld("emoset", informative="audio").informative == ()
    au = EmoWorld("mer", informative=("audio",)).sample("test", 0)
    assert au.labels_by_modality["visual"] is None and au.labels_by_modality["audio"] == au.label


# ---------------------------------------------------------------------------------------- text
def test_subtitles_and_cue_words():
    n_emotion = 0
    for view in ("mer", "emoset"):
        w = EmoWorld(view, eps=3.0)
        for s in w.samples("validation", 60):
            words = s.subtitle.split()
            assert re.fullmatch(r"[a-z ]+", s.subtitle) and " ".join(words) == s.subtitle
            t = s.labels_by_modality["text"]
            if t is None:
                assert s.subtitle_cue_words == []
            else:
                n_emotion += 1
                assert len(s.subtitle_cue_words) == 1
                assert words[s.subtitle_cue_words[0]] in tx.EMOTION_WORDS[t]
                others = [k for k, word in enumerate(words) if any(word in ws for ws in tx.EMOTION_WORDS.values())]
                assert others == s.subtitle_cue_words
    assert 35 <= n_emotion <= 85  # p_text_emotion = 0.5 of 120
    assert all(s.labels_by_modality["text"] is None for s in EmoWorld("mer", p_text_emotion=0.0).samples("test", 20))
    assert all(s.labels_by_modality["text"] == s.label for s in EmoWorld("mer", p_text_emotion=1.0).samples("test", 20))


def test_eps_adds_about_eps_filler_words():
    base = np.mean([len(s.subtitle.split()) for s in EmoWorld("mer", eps=0.0).samples("test", 50)])
    for eps in (2.0, 4.5, 7.0):
        m = np.mean([len(s.subtitle.split()) for s in EmoWorld("mer", eps=eps).samples("test", 50)])
        assert abs((m - base) - eps) < 0.6


def test_vocabulary_covers_subtitles():
    vocab = vocabulary()
    assert vocab == sorted(set(vocab)) and len(vocab) < 200
    vs = set(vocab)
    assert set(EMOTIONS) <= vs and {n for n, _ in tx.BG_COLORS} <= vs and {"1", "2", "3", "4", "one", "four"} <= vs
    assert {w for ws in tx.EMOTION_WORDS.values() for w in ws} <= vs
    seen = set()
    for view, eps in (("mer", 0.0), ("emoset", 7.0), ("camer", 3.0), ("mer", 6.0)):
        for s in EmoWorld(view, eps=eps).samples("test", 50):
            seen.update(s.subtitle.split())
            assert s.meta["bg_color"] in vs and str(s.meta["n_objects"]) in vs
    assert seen <= vs


# ---------------------------------------------------------------------------------------- audio
def test_audio_prototypes():
    P = np.stack([PROTOTYPES[e] for e in EMOTIONS])
    assert np.allclose(np.linalg.norm(P, axis=1), np.linalg.norm(P[0]))  # mean prosody equidistant
    d = {frozenset((a, b)): np.linalg.norm(PROTOTYPES[a] - PROTOTYPES[b]) for a, b in itertools.combinations(EMOTIONS, 2)}
    mean = np.mean(list(d.values()))
    assert all(d[frozenset(p)] < mean for p in tx.CLOSE_PAIRS)
    mer = EmoWorld("mer").labels
    a0, a7 = audio_bayes_accuracy(mer, 0.0, n=4000), audio_bayes_accuracy(mer, 7.0, n=4000)
    assert 0.7 < a0 < 0.95 and a7 < a0 - 0.25 and a7 > 1 / 6


# ---------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,match", [
    (dict(view="movies"), r"view must be one of \['camer', 'emoset', 'mer'\]"),
    (dict(eps=9), r"eps must be in \[0, 7\], got 9"),
    (dict(eps=-0.5), r"eps must be in \[0, 7\], got -0.5"),
    (dict(eps=float("nan")), r"eps must be in \[0, 7\]"),
    (dict(conflict="sideways"), r"conflict must be one of \['consistent', 'video-aligned', 'audio-aligned'\]"),
    (dict(view="emoset", conflict="video-aligned"), r"conflict must be one of \['consistent'\] for view 'emoset'"),
    (dict(informative=("visual", "smell")), r"informative must be a subset of \['visual', 'audio', 'text'\]"),
    (dict(frames=1), r"frames must be in \[2, 16\] for video view 'mer', got 1"),
    (dict(view="emoset", frames=2), r"frames must be 1 for view 'emoset'"),
    (dict(frames=2.5), r"frames must be an integer"),
    (dict(size=30), r"size must be a multiple of 4 in \[24, 512\], got 30"),
    (dict(size=16), r"size must be a multiple of 4"),
    (dict(p_text_emotion=1.5), r"p_text_emotion must be in \[0, 1\], got 1.5"),
    (dict(seed=-1), r"seed must be a non-negative integer"),
])
def test_bad_constructor_arguments(kwargs, match):
    view = kwargs.pop("view", "mer")
    with pytest.raises(ValueError, match=match):
        EmoWorld(view, **kwargs)


def test_bad_sample_arguments():
    w = EmoWorld("mer")
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'validation', 'test'\], got 'dev'"):
        w.sample("dev", 0)
    with pytest.raises(ValueError, match=r"index must be a non-negative integer, got -1"):
        w.sample("test", -1)
    with pytest.raises(ValueError, match=r"label must be one of .* got 'joy' \(an unknown emotion\)"):
        w.sample("test", 0, label="joy")
    with pytest.raises(ValueError, match=r"label must be one of .* got 'awe' \(an emotion of another view\)"):
        w.sample("test", 0, label="awe")
    with pytest.raises(ValueError, match=r"n must be a non-negative integer"):
        w.samples("test", -2)


# ---------------------------------------------------------------------------------------- manifests
@pytest.mark.parametrize("view", ["mer", "emoset", "camer"])
def test_world_manifests_match_the_world(view):
    m = yaml.safe_load((MANIFESTS / f"world-{view}.yaml").read_text(encoding="utf-8"))
    w = EmoWorld(f"world-{view}")
    assert m["name"] == f"world-{view}" and m["kind"] == "world"
    assert tuple(m["labels"]) == w.labels and m["valence_groups"] == w.valence_groups
    assert tuple(m["modalities"]) == w.modalities and m["metrics"] == ["war", "uar", "f1"]
    assert set(m["splits"]) == {"train", "validation", "test"}
    params = dict(m["world"])
    mw = EmoWorld(params.pop("view"), **params)
    assert mw.labels == w.labels and mw.frames == VIEWS[view]["frames"]
    for sub, over in (m.get("subsets") or {}).items():
        s = EmoWorld(view, **{**params, **over}).sample("test", 0)
        assert s.meta["conflict"] == over["conflict"] == sub
    if view == "camer":
        assert set(m["subsets"]) == {"video-aligned", "audio-aligned", "consistent"}
