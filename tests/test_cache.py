"""emolens.cache: one cached evaluation per (model, dataset, method, parameters, seed), on the real
emolens-tiny. Model calls are counted with a forward hook on the decoder (no patched forward)."""
from __future__ import annotations

import json
import shutil

import pytest

N = 4  # samples per evaluation: enough to have predictions, cheap on 2 cores


@pytest.fixture(scope="module")
def lm():
    from emolens.models import load_model

    return load_model("emolens-tiny", device="cpu")


class Forwards:
    """Counts forward calls of a module through a registered hook (removed on exit)."""

    def __init__(self, module):
        self.module, self.n = module, 0

    def __enter__(self):
        self.h = self.module.register_forward_hook(lambda *a: setattr(self, "n", self.n + 1))
        return self

    def __exit__(self, *exc):
        self.h.remove()


def test_second_call_reads_the_cache_without_running_the_model(lm, tmp_path):
    from emolens.cache import cached_evaluate

    with Forwards(lm.model) as f1:
        a = cached_evaluate(lm, "world-mer", limit=N, cache_dir=tmp_path, progress=False)
    with Forwards(lm.model) as f2:
        b = cached_evaluate(lm, "world-mer", limit=N, cache_dir=tmp_path, progress=False)
    assert f1.n > 0 and f2.n == 0
    assert (a["cache"]["hit"], b["cache"]["hit"]) == (False, True)
    assert a["cache"]["key"] == b["cache"]["key"]
    assert a["metrics"] == b["metrics"]
    assert a["predictions"] == b["predictions"] and len(b["predictions"]) == N
    assert {"uid", "gold", "label", "option_probs"} <= set(b["predictions"][0])
    assert list(tmp_path.glob("*.tmp")) == []  # the atomic write left no temporary file
    assert len(b["cache"]["identity"]["code"]) == 64  # the library's source is part of the key
    assert json.loads(open(a["cache"]["path"]).read())["metrics"] == a["metrics"]


def test_params_seed_and_dataset_change_the_key_equivalent_params_do_not(lm, tmp_path):
    from emolens.cache import cached_evaluate

    kw = dict(limit=2, cache_dir=tmp_path, progress=False)
    base = cached_evaluate(lm, "world-mer", "zero-shot", {"prompt_spans": True}, **kw)
    other_p = cached_evaluate(lm, "world-mer", "zero-shot", {"prompt_spans": False}, **kw)
    other_seed = cached_evaluate(lm, "world-mer", "zero-shot", {"prompt_spans": True}, seed=1, **kw)
    other_eps = cached_evaluate(lm, "world-mer", "zero-shot", {"prompt_spans": True}, world={"eps": 5.0}, **kw)
    keys = [r["cache"]["key"] for r in (base, other_p, other_seed, other_eps)]
    assert len(set(keys)) == 4 and not any(r["cache"]["hit"] for r in (other_p, other_seed, other_eps))
    assert len(list(tmp_path.glob("zero-shot-*.json"))) == 4
    # the method as resolved is keyed: a default given explicitly is the same run
    same = cached_evaluate(lm, "world-mer", "zero-shot", {}, **kw)
    assert same["cache"]["hit"] and same["cache"]["key"] == keys[1]


def test_a_corrupted_entry_warns_once_and_is_recomputed(lm, tmp_path):
    from emolens.cache import CacheWarning, cached_evaluate

    a = cached_evaluate(lm, "world-mer", limit=2, cache_dir=tmp_path, progress=False)
    path = a["cache"]["path"]
    text = open(path).read()
    open(path, "w").write(text[: len(text) // 2])  # a truncated write
    with pytest.warns(CacheWarning, match="unreadable entry") as rec, Forwards(lm.model) as f:
        b = cached_evaluate(lm, "world-mer", limit=2, cache_dir=tmp_path, progress=False)
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    assert f.n > 0 and not b["cache"]["hit"] and b["metrics"] == a["metrics"]
    c = cached_evaluate(lm, "world-mer", limit=2, cache_dir=tmp_path, progress=False)  # rewritten whole
    assert c["cache"]["hit"]
    # a file stored under another identity (an edited entry) is not trusted either
    data = json.loads(open(path).read())
    data["cache"]["identity"]["seed"] = 99
    open(path, "w").write(json.dumps(data))
    with pytest.warns(CacheWarning, match="another run"):
        d = cached_evaluate(lm, "world-mer", limit=2, cache_dir=tmp_path, progress=False)
    assert not d["cache"]["hit"]


def test_retrained_checkpoint_gets_a_new_key(tmp_path):
    """The key fingerprints the weights file, not only the model's name."""
    import os

    from emolens.cache import cached_evaluate
    from emolens.models import load_model

    src = load_model("emolens-tiny", device="cpu").info["path"]
    ck = tmp_path / "ck"
    shutil.copytree(src, ck)
    kw = dict(limit=2, cache_dir=tmp_path / "cache", progress=False)
    a = cached_evaluate(load_model(str(ck), device="cpu"), "world-mer", **kw)
    st = (ck / "model.safetensors").stat()
    os.utime(ck / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    b = cached_evaluate(load_model(str(ck), device="cpu"), "world-mer", **kw)
    assert a["cache"]["key"] != b["cache"]["key"] and not b["cache"]["hit"]
    assert a["cache"]["identity"]["model"]["weights"][0][0] == "model.safetensors"


def test_cache_dir_from_the_environment_and_bad_arguments(lm, tmp_path, monkeypatch):
    from emolens.cache import cached_evaluate, default_cache_dir

    monkeypatch.setenv("EMOLENS_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    r = cached_evaluate(lm, "world-mer", limit=1, progress=False)
    assert r["cache"]["path"].startswith(str(tmp_path / "env"))
    monkeypatch.delenv("EMOLENS_CACHE_DIR")
    monkeypatch.chdir(tmp_path)
    assert default_cache_dir() == tmp_path / "runs" / "cache"
    with pytest.raises(TypeError, match="unknown argument.*'batchsize'"):
        cached_evaluate(lm, "world-mer", limit=1, batchsize=4)


def test_intervals_from_the_stored_predictions(lm, tmp_path):
    from emolens import metrics
    from emolens.cache import cached_evaluate, result_ci, result_delta

    a = cached_evaluate(lm, "world-mer", limit=N, cache_dir=tmp_path, progress=False)
    b = cached_evaluate(lm, "world-mer", "zero-shot", {"prompt_spans": True}, limit=N, cache_dir=tmp_path,
                        progress=False)
    est, lo, hi = result_ci(a, n_boot=200)
    assert est == pytest.approx(a["metrics"]["war"]) and lo <= est <= hi
    gold = [p["gold"] for p in a["predictions"]]
    assert (est, lo, hi) == metrics.bootstrap_ci(gold, [p["label"] for p in a["predictions"]], n=200)
    d, dlo, dhi = result_delta(b, a, n_boot=200)
    assert d == pytest.approx(b["metrics"]["war"] - a["metrics"]["war"]) and dlo <= d <= dhi
    c = cached_evaluate(lm, "world-mer", limit=2, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="same samples"):
        result_delta(a, c)
