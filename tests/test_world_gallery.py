"""Notebook 00's view of the world (``emolens.analysis.usage``): what the audio alone says, the gallery
of samples across noise levels / CA-MER subsets, and the label-overlap measurement the notebooks assert."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from emolens.analysis import usage  # noqa: E402
from emolens.world import EmoWorld  # noqa: E402
from emolens.world.prosody import PROTOTYPES, audio_bayes_accuracy  # noqa: E402

LABELS = ["neutral", "anger", "happiness", "sadness", "worry", "surprise"]


def test_prosody_emotion_decodes_each_prototype_and_matches_the_bayes_rate():
    for e in LABELS:
        assert usage.prosody_emotion(PROTOTYPES[e], LABELS) == e
    # on clean world audio the decoder is the Bayes rule: its hit rate matches audio_bayes_accuracy
    w = EmoWorld("mer", eps=0.0, version=2)
    ss = w.samples("test", 300)
    hits = np.mean([usage.prosody_emotion(s.audio, LABELS) == s.labels_by_modality["audio"] for s in ss])
    assert abs(hits - audio_bayes_accuracy(LABELS, 0.0)) < 0.08, hits
    # restricted candidates: the answer is always one of them
    assert usage.prosody_emotion(PROTOTYPES["anger"], ["happiness", "sadness"]) in ("happiness", "sadness")


@pytest.mark.parametrize("features, labels, match", [
    (np.zeros(5), LABELS, "8 prosody features"),
    (np.zeros(8), ["anger", "joyfulness"], "no prosody prototype"),
    (np.zeros(8), [], "no prosody prototype"),
])
def test_prosody_emotion_refuses_bad_input_in_one_line(features, labels, match):
    with pytest.raises(ValueError, match=match) as e:
        usage.prosody_emotion(features, labels)
    assert "\n" not in str(e.value)


def test_world_gallery_draws_every_sample_without_overlapping_labels():
    w = EmoWorld("mer", version=2)
    eps_grid = [0.0, 1.0, 2.0, 3.0, 5.0, 7.0]
    ss = [EmoWorld("mer", eps=e, version=2).sample("test", 3) for e in eps_grid]
    assert len({s.label for s in ss}) == 1  # the same index keeps z_e across eps
    fig = usage.world_gallery(ss, [f"eps = {e:g}" for e in eps_grid], list(w.labels), suptitle="gallery")
    axes = np.array(fig.axes).reshape(2, len(ss))
    assert all(len(ax.images) == 1 for ax in axes[0])          # one frame per column
    assert all(len(ax.patches) == 8 for ax in axes[1])         # 8 prosody bars per column
    assert len({ax.get_xlim() for ax in axes[1]}) == 1         # one shared prosody scale
    for s, ax in zip(ss, axes[1]):
        assert ax.get_title() == f"audio says: {usage.prosody_emotion(s.audio, w.labels)}"
    assert usage.overlapping_texts(fig) == []
    plt.close(fig)
    # a still view without audio: one row, no prosody panels
    e = EmoWorld("emoset", version=2)
    fig = usage.world_gallery(e.samples("test", 2), ["a", "b"], list(e.labels))
    assert len(fig.axes) == 2 and usage.overlapping_texts(fig) == []
    plt.close(fig)
    with pytest.raises(ValueError, match="one title per sample"):
        usage.world_gallery(ss, ["only one"], list(w.labels))


def test_overlapping_texts_finds_a_collision_and_only_that():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.text(0.5, 0.5, "first label", transform=ax.transAxes)
    assert usage.overlapping_texts(fig) == []
    ax.text(0.52, 0.5, "second label", transform=ax.transAxes)
    assert usage.overlapping_texts(fig) == [("first label", "second label")]
    plt.close(fig)


def test_overlapping_texts_ignores_what_is_not_drawn():
    """Tick labels outside the view limits and a twin axis's hidden x labels are not collisions."""
    fig, ax = plt.subplots(figsize=(4, 2.5), layout="constrained")
    ax.plot([0, 1], [0, 1])
    ax.set_ylim(0, 1.05)
    ax.set_title("a title just above the top tick")
    right = ax.twinx()
    right.set_yticks([0.2, 0.8], ["+1.00 [0.5, 1.5]", "-2.00 [-3.0, -1.0]"])
    assert usage.overlapping_texts(fig) == []
    plt.close(fig)
