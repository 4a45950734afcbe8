"""tools/gpu_check.sh, the prepared GPU smoke test, runs here on the CPU (``--quick``) in every
``make test``, so the script a GPU session will run never rots: every method through ``emolens eval``
on emolens-tiny, one tiny real family, generate() under KeyMask + Capture(offload) + AR."""
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_quick_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    r = subprocess.run([str(ROOT / "tools/gpu_check.sh"), "--device", "cpu", "--quick", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads(out.read_text())
    assert s["failed"] == [] and s["env"]["device"] == "cpu" and s["env"]["dtype"] == "float32"
    from emolens.methods import available

    evals = [k for k in s["steps"] if k.startswith("eval/emolens-tiny/")]
    assert sorted(evals) == sorted(f"eval/emolens-tiny/{m}" for m in available())
    assert s["steps"]["generate"]["decode_steps"] == 3 and any(k.startswith("eval/llava/") for k in s["steps"])


def test_gpu_check_rejects_unknown_option():
    r = subprocess.run([str(ROOT / "tools/gpu_check.sh"), "--devcie", "cuda"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown option --devcie" in r.stderr
