"""Rendered world clips are cached per process (emolens.data.views._rendered): a cached clip equals a fresh
render, different world parameters never share an entry, and editing one returned clip in place cannot
change another."""
import numpy as np

from emolens.data import load_dataset
from emolens.world import EmoWorld


def test_cached_clip_is_the_fresh_render_and_edits_stay_local():
    ds = load_dataset("world-mer", "test", limit=3)
    a, b = ds[1], load_dataset("world-mer", "test", limit=3)[1]          # the second comes from the cache
    w = EmoWorld(view=ds.options["view"], **{k: v for k, v in ds.options.items() if k != "view"})
    fresh = w.sample("test", 1)
    for x in (a, b):
        assert x.uid == fresh.uid and x.label == fresh.label and x.subtitle == fresh.subtitle
        assert np.array_equal(x.frames, fresh.frames) and np.array_equal(x.cue_mask, fresh.cue_mask)
        assert np.array_equal(x.audio, fresh.audio)
    b.frames[:] = 0
    b.meta["edited"] = True
    c = ds[1]
    assert np.array_equal(c.frames, fresh.frames) and "edited" not in c.meta


def test_world_overrides_get_their_own_clips():
    base = load_dataset("world-mer", "test", limit=1)[0]
    clean = load_dataset("world-mer", "test", limit=1, eps=0.0)[0]
    other_seed = load_dataset("world-mer", "test", limit=1, seed=1)[0]
    assert not np.array_equal(base.frames, clean.frames)
    assert not np.array_equal(base.frames, other_seed.frames)
