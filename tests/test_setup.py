"""emolens.analysis.setup: the walkthroughs' shared set-up cell, on the real emolens-tiny."""
from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def S():
    from emolens.analysis.setup import setup

    return setup("emolens-tiny", "world-mer", "test", n=3, seed=7, device="cpu")


def test_setup_builds_what_the_notebook_cells_built(S):
    from emolens.data import load_dataset, load_manifest
    from emolens.methods import Task

    lm, ds, task, samples = S  # unpacks
    assert lm is S.lm and lm.family == "emolens-tiny" and lm.num_layers > 0
    ref = load_dataset("world-mer", split="test", limit=3)  # the cells' call with the manifest's own eps
    assert [s.uid for s in samples] == [ref[i].uid for i in range(3)]
    assert np.array_equal(samples[0].frames, ref[0].frames)
    assert task == Task.from_dataset(ref) and list(task.labels) == list(load_manifest("world-mer").labels)
    # eps=None: nothing passed, the manifest's nuisance level is used
    assert S.world == {} and ds.options["eps"] == load_manifest("world-mer").world["eps"]
    assert "(manifest)" in S.describe() and "3 samples" in S.describe()
    # the model answers on these samples (the set-up is usable as is)
    from emolens.methods.common import fine_prompts

    batch = lm.encode(samples[:1], fine_prompts(samples[:1], task))
    assert batch.layouts[0].visual.size > 0


def test_setup_seeds_torch_and_numpy_not_the_world(S):
    from emolens.analysis.setup import setup

    a = setup(S.lm, "world-mer", n=2, seed=11)
    t, r = torch.rand(3), np.random.rand(3)
    torch.manual_seed(11)
    np.random.seed(11)
    assert torch.equal(t, torch.rand(3)) and np.array_equal(r, np.random.rand(3))
    assert a.lm is S.lm  # a loaded model is reused, not reloaded
    assert [s.uid for s in a.samples] == [s.uid for s in S.samples[:2]]  # the data do not depend on seed
    assert np.array_equal(a.samples[0].frames, S.samples[0].frames)


def test_eps_overrides_the_world_and_subset_selects_conflicts(S):
    from emolens.analysis.setup import setup
    from emolens.data import load_manifest

    from emolens.world.generator import EPS_MAX

    # a level 3 away from the manifest's, inside the world's range [0, EPS_MAX] (v2's manifest eps is 6)
    base = float(load_manifest("world-mer").world["eps"])
    eps = base + 3.0 if base + 3.0 <= EPS_MAX else base - 3.0
    assert 0.0 <= eps <= EPS_MAX and eps != base
    noisy = setup(S.lm, "world-mer", n=2, eps=eps)
    assert noisy.world == {"eps": eps} and noisy.ds.options["eps"] == eps
    assert not np.array_equal(noisy.samples[0].frames, S.samples[0].frames)
    assert f"eps = {eps:g}" in noisy.describe() and "(manifest)" not in noisy.describe()
    va = setup(S.lm, "world-camer", n=2, subset="video-aligned")
    assert va.ds.subset == "video-aligned" and len(va.samples) == 2
    assert all(s.labels_by_modality.get("audio") != s.labels_by_modality.get("visual") for s in va.samples)


def test_bad_input_is_one_line(S):
    from emolens.analysis.setup import setup

    with pytest.raises(ValueError, match="local benchmark; pass eps=None"):
        setup(S.lm, "emoset", eps=0.0)
    with pytest.raises(ValueError, match="n >= 1"):
        setup(S.lm, "world-mer", n=0)
    with pytest.raises(TypeError, match="model must be a name"):
        setup(3, "world-mer", n=1)
