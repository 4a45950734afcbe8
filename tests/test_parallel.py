"""Data-parallel and resumable evaluation (emolens.parallel): rank detection, per-rank jsonl, merge equal
to the single-process result, resume after an injected crash and after a real SIGKILL, and a
2-process `accelerate launch --cpu` run whose JSON equals one process's."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import emolens
from emolens.evaluate import _jsonable, evaluate
from emolens.methods import get_method
from emolens.parallel import Ranks, process_state, rank_file, ranks_from_env, read_records

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lm():
    return emolens.load_model("emolens-tiny", device="cpu")


def _plain(result: dict) -> dict:
    """A result as its JSON file reads back (numpy -> lists), without latency (timings differ)."""
    r = json.loads(json.dumps(result, default=_jsonable))
    r.pop("latency_s")
    return r


def _prediction_lines(path: Path) -> list:
    recs = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "uid" in rec:
            recs.append(rec["uid"])
    return recs


def _env() -> dict:
    # the children are single-process evals unless a launcher says otherwise; one thread each
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return env | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def test_ranks_from_env_reads_torchrun_and_accelerate_variables():
    assert ranks_from_env({}) == Ranks(0, 1, 0)
    r = ranks_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (r.rank, r.world, r.local_rank, r.is_main) == (3, 4, 1, False)
    with pytest.raises(ValueError, match="outside WORLD_SIZE"):
        ranks_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="must be integers"):
        ranks_from_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_multi_process_without_accelerate_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # import accelerate -> ImportError
    with pytest.raises(ValueError, match=r"needs accelerate: pip install -e \.\[cluster\]") as e:
        process_state(Ranks(0, 2, 0))
    assert "\n" not in str(e.value)
    assert process_state(Ranks(0, 1, 0)).num_processes == 1  # one process never needs it


def test_out_streams_rank_file_and_equals_in_memory_run(lm, tmp_path):
    ref = evaluate(lm, "world-mer", "wetr", limit=8, batch_size=4, progress=False)
    out = tmp_path / "p.json"
    res = evaluate(lm, "world-mer", "wetr", limit=8, batch_size=4, progress=False, out=out)
    assert _plain(res) == _plain(ref)
    assert _plain(json.loads(out.read_text())) == _plain(ref)
    assert _prediction_lines(rank_file(out, 0)) == [p["uid"] for p in ref["predictions"]]
    assert res["latency_s"]["per_rank"][0]["n"] == 8
    # a different run must not be mixed into these rank files
    with pytest.raises(ValueError, match=r"different run \(differs in \['method'\]\)"):
        evaluate(lm, "world-mer", "nts", limit=8, batch_size=4, progress=False, out=out)


def test_resume_after_injected_crash_has_no_duplicates_and_no_lost_samples(lm, tmp_path):
    n, bs = 12, 4
    ref = evaluate(lm, "world-mer", "wetr", limit=n, batch_size=bs, progress=False)
    out = tmp_path / "p.json"

    crashing = get_method("wetr")
    real, calls = crashing.predict, []

    def crash_on_third_batch(model, chunk, task):
        calls.append(len(chunk))
        if len(calls) == 3:
            raise RuntimeError("injected crash")
        return real(model, chunk, task)

    crashing.predict = crash_on_third_batch
    with pytest.raises(RuntimeError, match="injected crash"):
        evaluate(lm, "world-mer", crashing, limit=n, batch_size=bs, progress=False, out=out)
    assert not out.exists()
    assert len(_prediction_lines(rank_file(out, 0))) == 2 * bs  # the two finished batches survived
    with open(rank_file(out, 0), "a") as fh:  # and a torn line, as a killed writer leaves
        fh.write('{"uid": "half-writ')

    resumed = get_method("wetr")
    real2, seen = resumed.predict, []
    resumed.predict = lambda model, chunk, task: seen.extend(s.uid for s in chunk) or real2(model, chunk, task)
    res = evaluate(lm, "world-mer", resumed, limit=n, batch_size=bs, progress=False, out=out)
    done_before = _prediction_lines(rank_file(out, 0))[:2 * bs]
    assert seen == [p["uid"] for p in ref["predictions"]][2 * bs:]  # only the unfinished samples ran
    uids = _prediction_lines(rank_file(out, 0))
    assert len(uids) == len(set(uids)) == n and set(done_before) <= set(uids)
    assert _plain(res) == _plain(ref)
    assert sum(r["n"] for r in res["latency_s"]["per_rank"]) == n
    assert set(read_records(out)) == {p["uid"] for p in ref["predictions"]}


@pytest.mark.slow
def test_sigkilled_eval_resumes_to_the_uninterrupted_result(lm, tmp_path):
    n, bs = 24, 4
    out = tmp_path / "k.json"
    cmd = [sys.executable, "-m", "emolens", "eval", "--model", "emolens-tiny", "--dataset", "world-mer",
           "--method", "wetr", "--limit", str(n), "--batch-size", str(bs), "--device", "cpu", "--quiet",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rf = rank_file(out, 0)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if rf.is_file() and _prediction_lines(rf):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _prediction_lines(rf)
    assert 0 < len(before) < n, f"the kill was meant to land mid-run ({len(before)} of {n} done)"
    assert not out.exists()

    subprocess.run(cmd, cwd=tmp_path, env=_env(), check=True, capture_output=True)
    uids = _prediction_lines(rf)
    assert uids[:len(before)] == before and len(uids) == len(set(uids)) == n
    ref = evaluate(lm, "world-mer", "wetr", limit=n, batch_size=bs, progress=False)
    assert _plain(json.loads(out.read_text())) == _plain(ref)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_launch_equals_one_process(tmp_path):
    """torchrun with 2 CPU processes (gloo). `accelerate launch --cpu --num_processes 2` runs ONE process in
    accelerate 1.15 (its simple launcher; multi-CPU there means mpirun), so the launch under test is torchrun;
    accelerate's PartialState still does the sharding inside."""
    args = ["-m", "emolens", "eval", "--model", "emolens-tiny", "--dataset", "world-mer", "--method", "wetr",
            "--limit", "40", "--quiet"]
    out, single = tmp_path / "p.json", tmp_path / "s.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(_free_port()), *args, "--out", str(out)]
    run = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("wrote ") == 1  # rank 0 alone prints and writes
    one = subprocess.run([sys.executable, *args, "--out", str(single)], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    merged = json.loads(out.read_text())
    assert _plain(merged) == _plain(json.loads(single.read_text()))  # order, predictions, metrics, selection
    ranks = {r["rank"]: r["n"] for r in merged["latency_s"]["per_rank"]}
    assert ranks == {0: 32, 1: 8}  # 3 batches of 16 split 2/1 between the ranks
    assert merged["latency_s"]["total"] == pytest.approx(sum(r["seconds"] for r in merged["latency_s"]["per_rank"]))
    for k in (0, 1):
        assert len(_prediction_lines(rank_file(out, k))) == ranks[k]
