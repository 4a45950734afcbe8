"""Real-checkpoint acceptance, end to end on CPU (shapes and plumbing, not accuracy).

* Tiny random-initialised LLaVA and Qwen2-VL checkpoints are built from configs and saved with their
  tokenizer / image processor / chat template into a temp folder (tests/hf_checkpoints.py); fake
  local copies of two real benchmarks are written as their manifests say (tests/fakedata.py): EmoSet
  (images) and MER2023 (MP4 clips with an AAC track and subtitles).
* ``emolens eval --model FOLDER --dataset MANIFEST --root DIR --method NAME`` (``emolens.cli.main``)
  runs every method of ``emolens.methods.available()`` on both families and both copies and writes
  the documented JSON (metrics, predictions, latency_s, config).
* The tiny checkpoints have 2 decoder layers, so the methods whose defaults name layers of a deeper
  model are given 2-layer settings (WETR ``include_layer0=true``, PAI ``layers=all``); those defaults give a
  one-line error that names the fix, asserted too. AR runs between groups the data has
  (``source=instruction`` on EmoSet, ``source=content`` on MER2023); AR's default source (audio) on
  a model or dataset without audio tokens gives the one-line error instead.
* emolens-tiny takes 8 prosody features as audio, not a waveform: on a real clip with audio it fails
  with one line naming the fix; with ``load_dataset(..., audio=False)`` it runs every method.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fakedata as fd  # noqa: E402
import hf_checkpoints as ck  # noqa: E402

from emolens.cli import main  # noqa: E402
from emolens.methods import available  # noqa: E402

FAMILIES = ("llava", "qwen2_vl")
DATASETS = ("emoset", "mer2023")
METHODS = tuple(available())
LIMIT = 2

#: 2-layer settings for methods whose defaults assume a deeper model, and AR's group pairs per dataset
SETTINGS = {
    "wetr": ["include_layer0=true"],  # triggers are 0..L-2: only layer 0 on 2 layers
    "pai": ["layers=all"],
    "sparsevlm": ["ratios=0.5", "layers=0"],  # one pruning step: the schedule's 3 steps need >= 4 layers
    "ar": {"emoset": ["source=instruction", "target=visual"],  # EmoSet has no subtitle text
           "mer2023": ["source=content", "target=visual"]},
}
#: what a bare method name gives on the 2-layer checkpoints: a one-line error naming the fix
DEFAULT_ERRORS = {
    "wetr": "use a smaller n_r or include_layer0=true",
    "sparsevlm": "too shallow for a 3-step schedule",
}


def _settings(method: str, dataset: str) -> list:
    s = SETTINGS.get(method, [])
    s = s.get(dataset, []) if isinstance(s, dict) else s
    out = []
    for kv in s:
        out += ["--set", kv]
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("real_e2e")
    models = {fam: ck.build_tiny(fam, base / fam) for fam in FAMILIES}
    copies = {"emoset": fd.make_emoset_copy(base / "emoset"), "mer2023": fd.make_mer2023_copy(base / "mer2023")}
    return {"base": base, "models": models, "copies": copies}


def _eval(env, model: str, dataset: str, method: str, extra=(), out=None):
    fc = env["copies"][dataset]
    argv = ["eval", "--model", model, "--dataset", str(fc.manifest_path), "--root", str(fc.root),
            "--method", method, "--limit", str(LIMIT), "--device", "cpu", "--quiet", *extra]
    if out is not None:
        argv += ["--out", str(out)]
    return main(argv)


def _error_lines(err: str) -> list:
    """The CLI's error lines (stderr also carries transformers' weight-loading progress bars)."""
    return [ln for ln in err.splitlines() if "emolens eval: error:" in ln]


def _check_result(r: dict, fc, family: str, method: str) -> None:
    assert {"metrics", "predictions", "latency_s", "config"} <= set(r)
    assert {"war", "uar", "f1", "macro_f1"} <= set(r["metrics"])
    assert 0.0 <= r["metrics"]["war"] <= 1.0
    assert r["latency_s"]["per_sample"] > 0 and r["latency_s"]["total"] > 0
    assert r["config"]["family"] == family and r["config"]["method"]["method"] == method
    assert r["config"]["n"] == LIMIT and len(r["predictions"]) == LIMIT
    from emolens.data import load_manifest

    labels = load_manifest(fc.manifest_path).labels
    unparseable = 0
    for p in r["predictions"]:
        assert p["uid"].startswith(f"{fc.name}/test/")
        assert p["gold"] in labels and (p["label"] in labels or p["label"] is None)
        if p["label"] is None:  # a generated answer that names no option (random weights): counted, scored wrong
            unparseable += 1
            assert p.get("generated") is not None
            continue
        probs = p["option_probs"]
        # all options, or (SEPM stage 2) the options of one valence group
        assert 2 <= len(probs) <= len(labels) and abs(sum(probs.values()) - 1.0) < 1e-3
    assert r["metrics"].get("unparseable", 0) == unparseable


# ------------------------------------------------------------------------------ HF families x methods
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("family", FAMILIES)
def test_eval_every_method_on_real_family(env, family, dataset, method, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = _eval(env, env["models"][family], dataset, method, _settings(method, dataset), out)
    cap = capsys.readouterr()
    assert rc == 0, _error_lines(cap.err) or cap.err[-2000:]
    assert "WAR" in cap.out and "latency" in cap.out
    r = json.loads(out.read_text())
    _check_result(r, env["copies"][dataset], family, method)
    extras = [p.get("extra", {}) for p in r["predictions"]]
    if method in ("nts", "str", "wetr", "random-select", "query-select", "qpos-select"):
        assert all(e.get("nts") for e in extras), extras[0]
        assert all(e["n_visual"] > 0 for e in extras)
        if dataset == "mer2023":  # the subtitle is content
            assert all(e["n_content"] > 0 for e in extras)
    elif method == "ar":
        assert all(len(e["ar"]["layers"]) == 2 for e in extras)
    elif method == "pai":
        assert all(len(e["pai"]["layers"]) == 2 for e in extras)
    elif method == "sepm":  # Focus-on-Emotion dropping on the family's visual tokens: k = floor(beta N_v)
        from emolens.methods.sepm import n_dropped

        assert all(e["n_visual"] > 0 and e["k"] == n_dropped(e["n_visual"], 0.2) > 0 for e in extras), extras[0]
        assert all(len(set(e["dropped"])) == e["k"] and max(e["dropped"]) < e["n_visual"] for e in extras)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", sorted(DEFAULT_ERRORS))
def test_deep_model_defaults_give_one_line_error(env, family, method, capsys):
    rc = _eval(env, env["models"][family], "emoset", method)
    lines = _error_lines(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1 and DEFAULT_ERRORS[method] in lines[0], lines


@pytest.mark.parametrize("dataset, needle", [
    ("emoset", "needs audio input for source='audio' but the dataset has only ['image']"),  # checked before loading
    ("mer2023", "no audio tokens in this layout"),  # the data has audio; these families take none
])
@pytest.mark.parametrize("family", FAMILIES)
def test_ar_audio_source_without_audio_tokens_is_one_line(env, family, dataset, needle, capsys):
    rc = _eval(env, env["models"][family], dataset, "ar")
    lines = _error_lines(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1 and needle in lines[0], lines


@pytest.mark.parametrize("dataset", DATASETS)
def test_data_check_passes_on_fake_copies(env, dataset, capsys):
    fc = env["copies"][dataset]
    rc = main(["data", "check", str(fc.manifest_path), "--root", str(fc.root)])
    out = capsys.readouterr().out
    assert rc == 0 and "result: OK" in out, out


# ------------------------------------------------------------------------------ emolens-tiny on real data
def test_tiny_on_image_benchmark(env, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = _eval(env, "emolens-tiny", "emoset", "wetr", out=out)
    cap = capsys.readouterr()
    assert rc == 0, _error_lines(cap.err)
    _check_result(json.loads(out.read_text()), env["copies"]["emoset"], "emolens-tiny", "wetr")


def test_tiny_with_waveform_is_one_line_error_naming_the_fix(env, capsys):
    rc = _eval(env, "emolens-tiny", "mer2023", "zero-shot")
    lines = _error_lines(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1, lines
    assert "8 prosody features" in lines[0] and "waveform" in lines[0] and "drop the audio" in lines[0], lines


@pytest.fixture(scope="module")
def tiny_mer_no_audio(env):
    from emolens import load_model
    from emolens.data import load_dataset

    fc = env["copies"]["mer2023"]
    ds = load_dataset(fc.manifest_path, split="test", root=fc.root, limit=LIMIT, audio=False)
    assert all(ds[i].audio is None for i in range(len(ds)))
    return load_model("emolens-tiny", device="cpu"), ds


@pytest.mark.parametrize("method", METHODS)
def test_tiny_on_video_without_audio_runs_every_method(env, tiny_mer_no_audio, method):
    from emolens.evaluate import evaluate

    lm, ds = tiny_mer_no_audio
    params = dict(kv.split("=", 1) for kv in SETTINGS.get(method, {}).get("mer2023", [])) if method == "ar" else None
    r = evaluate(lm, ds, method, params, progress=False)
    _check_result(r, env["copies"]["mer2023"], "emolens-tiny", method)


def test_tiny_ar_audio_source_on_dropped_audio_is_one_line(tiny_mer_no_audio):
    from emolens.evaluate import evaluate

    lm, ds = tiny_mer_no_audio
    with pytest.raises(ValueError) as ei:
        evaluate(lm, ds, "ar", progress=False)
    msg = str(ei.value)
    assert "\n" not in msg and "no audio tokens" in msg, msg


def test_cli_can_drop_audio_for_tiny(env, capsys):
    """The fix the waveform error names ("drop the audio") has a CLI spelling: ``--world audio=false``
    reaches ``load_dataset(..., audio=...)`` for a local benchmark."""
    rc = _eval(env, "emolens-tiny", "mer2023", "zero-shot", ["--world", "audio=false"])
    lines = _error_lines(capsys.readouterr().err)
    assert rc == 0, lines
