"""The `emolens` command: eval writes the documented JSON; bad input gives one-line errors."""
import json
import subprocess
import sys

import pytest

from emolens.cli import main


def test_eval_writes_metrics_latency_predictions(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["eval", "--model", "emolens-tiny", "--dataset", "world-mer", "--method", "zero-shot",
               "--limit", "24", "--out", str(out), "--quiet", "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "WAR" in printed and "UAR" in printed and "F1" in printed
    r = json.loads(out.read_text())
    assert {"metrics", "latency_s", "predictions", "config"} <= set(r)
    assert {"war", "uar", "f1"} <= set(r["metrics"])
    assert len(r["predictions"]) == 24
    from sklearn.metrics import accuracy_score

    gold = [p["gold"] for p in r["predictions"]]
    pred = [p["label"] for p in r["predictions"]]
    assert r["metrics"]["war"] == pytest.approx(accuracy_score(gold, pred))
    assert r["config"]["method"] == {"method": "zero-shot", "prompt_spans": False, "answer": "logits", "max_new_tokens": 64}


@pytest.mark.parametrize("argv, needle", [
    (["eval", "--method", "no-such-method", "--limit", "2"], "unknown method"),
    (["eval", "--dataset", "no-such-dataset", "--limit", "2"], "no-such-dataset"),
    (["eval", "--model", "/nonexistent/model", "--limit", "2"], "/nonexistent/model"),
    (["eval", "--set", "prompt_spans=maybe", "--limit", "2"], "prompt_spans"),
    (["eval", "--set", "bogus=1", "--limit", "2"], "unknown hyperparameter"),
    (["eval", "--world", "eps=9", "--limit", "2"], "eps"),
])
def test_bad_input_is_one_line(argv, needle, capsys):
    rc = main(argv + ["--quiet", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and needle in err, err


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "emolens.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "eval" in r.stdout and "train-tiny" in r.stdout
