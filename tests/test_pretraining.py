"""Issue 12: the pretraining world of emolens-tiny (recipe v2) is distinct from the benchmarks and free of the
methods' prompt text; world v2 keeps the ground truth and meets its token budget."""
import numpy as np
import pytest

from emolens import prompts as P
from emolens.models import pretrain
from emolens.world import EmoWorld

#: sentences that belong to a method (WETR, SEPM, CoT): none may be seen in training, not even 4 words of one
METHOD_SENTENCES = [P.Q_POS, P.Q_NEG, P.FOE, P.COT, P.SEPM_COT,
                    *(P.SEPM_QUESTION.format(subject=s) for s in ("image", "video", "person")),
                    "Positive emotions include", "Negative emotions include",
                    P.ambiguity_description({})]
#: the benchmark query itself (every method's answer instruction and question): never verbatim
BENCHMARK_SENTENCES = [P.ANSWER, "Which emotion does the person show?", "Which emotion does the video show?",
                       "What is the background colour?", "How many objects are there?"]


def _words(t):
    return [w.lower() for w in P.split_words(t)]


def _ngrams(words, n):
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _drawn_prompts(n=400, seed=0, **kw):
    ws = pretrain.pretraining_worlds(seed)
    rng = np.random.default_rng(seed)
    return [pretrain.make_pretraining_example(ws, rng, **kw) for _ in range(n)]


def test_no_method_sentence_in_templates():
    texts = pretrain.all_texts()
    assert len(texts) >= 25
    for t in texts:
        tw = _words(t)
        for m in METHOD_SENTENCES:
            shared = _ngrams(tw, 4) & _ngrams(_words(m), 4)
            assert not shared, f"training template {t!r} shares {shared} with the method sentence {m!r}"
        for b in BENCHMARK_SENTENCES:
            assert " ".join(_words(b)) not in " ".join(tw), f"benchmark sentence {b!r} in template {t!r}"


def test_no_method_sentence_in_drawn_prompts():
    """The same scan over prompts actually drawn from the mixture (options included)."""
    for s, p in _drawn_prompts(300):
        text = " ".join(_words(p.text))
        for m in METHOD_SENTENCES + BENCHMARK_SENTENCES:
            assert " ".join(_words(m)) not in text, (m, p.text)
        assert p.kind == "pretraining"
        assert p.target in p.options or p.target in p.options.values()  # a letter, or the option's word


def test_answer_forms_and_lookup():
    """Perception questions are answered by letter or by the option's word (both halves present), and the
    look-up task names an option word that sits under the answered letter."""
    forms = {"letter": 0, "word": 0, "lookup": 0}
    for s, p in _drawn_prompts(400, word_p=0.5, lookup=True):
        q = dict(p.segments)["question"]
        if any(q.startswith(t.split("{w}")[0]) for t in pretrain.LOOKUP_TEMPLATES):
            forms["lookup"] += 1
            assert p.options[p.target] in q
        elif p.target in p.options:
            forms["letter"] += 1
        else:
            forms["word"] += 1
            assert p.target in p.options.values()
    assert min(forms.values()) >= 30, forms
    # the shipped recipe: every answer is a word, no look-up
    assert all(p.target not in p.options and p.target in p.options.values() for _, p in _drawn_prompts(200))


def test_scan_catches_a_method_sentence():
    """The scan is not vacuous: a template holding WETR's Q_pos (or 4 of its words) is caught."""
    bad = "Now, " + P.Q_POS
    assert _ngrams(_words(bad), 4) & _ngrams(_words(P.Q_POS), 4)
    assert not _ngrams(_words("Look at the yellow face: which mood does it show?"), 4) & _ngrams(_words(P.Q_POS), 4)


def test_options_shuffled_and_read():
    """Options are drawn in random order: one emotion sits under many letters, and the option count varies."""
    letters, sizes = {}, set()
    for s, p in _drawn_prompts(400, word_p=0.0):
        if p.target not in p.options:  # a word answer
            continue
        lab = p.options[p.target]
        letters.setdefault(lab, set()).add(p.target)
        sizes.add(len(p.options))
    common = [l for l in letters if l in ("anger", "happiness", "sadness", "neutral")]
    assert common and all(len(letters[l]) >= 3 for l in common), letters
    assert len(sizes) >= 4


def test_statistics_documented():
    st = pretrain.PRETRAINING_STATISTICS
    assert st["informative"]["audio only"] > 0 and max(st["eps"]) <= 1.0
    assert abs(sum(st["informative"].values()) - 1) < 1e-9 and abs(sum(st["question_kinds"].values()) - 1) < 1e-9


@pytest.mark.parametrize("view", ["mer", "emoset", "camer"])
def test_world_v2_keeps_ground_truth(view):
    """Same label, per-modality labels and subtitle as version 1 for the same index; 13-px face."""
    w1, w2 = EmoWorld(view, eps=2.0, seed=3), EmoWorld(view, eps=2.0, seed=3, version=2)
    for i in range(20):
        a, b = w1.sample("validation", i), w2.sample("validation", i)
        assert (a.label, a.labels_by_modality, a.subtitle, a.subtitle_cue_words) == \
               (b.label, b.labels_by_modality, b.subtitle, b.subtitle_cue_words)
        assert b.frames.shape[1:] == (64, 64, 3) and b.meta["face"]["size"] == 13


def test_world_v2_token_budget():
    """>= 128 visual tokens per 2-frame clip at the 8-px patch, the face <= 10 % of them on average,
    decoys with real expressions present at the benchmark's default eps."""
    w = EmoWorld("mer", eps=2.0, version=2)
    ss = w.samples("test", 40)
    cue = np.asarray([s.cue_patches(8) for s in ss])
    assert cue.shape[1] * cue.shape[2] * cue.shape[3] >= 128
    assert cue.mean() <= 0.10 and cue.reshape(40, -1).any(1).all()
    assert np.mean([s.meta["n_decoys"] for s in ss]) >= 1
    with pytest.raises(ValueError, match="version must be 1"):
        EmoWorld("mer", version=3)


def test_recipe_v2_smoke(tmp_path):
    """train-tiny's v2 recipe runs end to end: 64-px model, chosen audio tokens, recipe in the log."""
    import json

    from emolens.models.train import train_tiny
    from emolens import load_model

    log = train_tiny(str(tmp_path / "m"), steps=2, batch_size=2, vision_steps=0, recipe="v2", audio_tokens=4,
                     progress=False)
    assert log["recipe"] == "v2" and log["steps_done"] == 2 and log["audio_tokens"] == 4
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["image_size"] == 64 and cfg["audio_tokens"] == 4
    lm = load_model(str(tmp_path / "m"))
    s = EmoWorld("mer", version=2).sample("test", 0)
    lay = lm.encode([s], [P.fine_query(["anger", "neutral"])]).layouts[0]
    assert len(lay.visual) == 128 and len(lay.audio) == 4
    with pytest.raises(ValueError, match="recipe must be"):
        train_tiny(str(tmp_path / "n"), steps=1, recipe="v3", progress=False)
