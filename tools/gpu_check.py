"""The prepared GPU smoke test (issue 16): every path a first GPU run takes, in one process, with a
summary JSON. ``tools/gpu_check.sh`` installs what the device machine lacks and calls this.

Steps (each recorded as ``{"ok": bool, "seconds": s, ...}``; one failure never stops the others):

* ``env``: torch / transformers versions, the device's name, the dtype ``load_model`` resolves.
* ``eval/emolens-tiny/<method>``: ``emolens eval --device D`` (the CLI, in-process) for every method
  on the emotion world.
* ``eval/<family>/<method>``: the same on each tiny real family (LLaVA, Qwen2-VL, Qwen2.5-VL, Qwen3-VL,
  InternVL), built offline from configs (tests/hf_checkpoints.py) and a fake EmoSet copy
  (tests/fakedata.py); 2-layer settings as tests/test_real_e2e.py uses them.
* ``generate``: ``generate()`` under KeyMask + Capture (decode steps offloaded to the CPU) + AR.
* ``notebooks/<name>``: notebooks 00-07 through papermill with small parameters and ``device=D``.
* ``bench``: ``emolens bench --methods --device D`` when that command exists.

``--quick`` (what ``make test`` runs on the CPU, under 90 s): emolens-tiny with every method, one real
family with two methods, generate; no notebooks (tests/test_notebooks.py runs them) and no bench.

    python tools/gpu_check.py --device cuda --out runs/gpu_check.json
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the offline checkpoint and dataset builders

LIMIT = 2
QUICK_FAMILIES = ("llava",)
QUICK_FAMILY_METHODS = ("zero-shot", "nts")
#: notebook parameters: small, on the chosen device (declared names only are passed)
NB_SMALL = {"n_samples": 8, "n_eval": 8, "n_sweep": 6}


def _step(summary: dict, name: str, fn, *args, **kw) -> bool:
    t0 = time.perf_counter()
    rec = {"ok": False}
    try:
        got = fn(*args, **kw)
        rec.update(ok=True, **(got or {}))
    except BaseException as e:  # noqa: BLE001 - record and go on: the summary lists every failure
        if isinstance(e, KeyboardInterrupt):
            raise
        rec["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        rec["trace"] = traceback.format_exc()[-2000:]
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    summary["steps"][name] = rec
    print(f"{'ok  ' if rec['ok'] else 'FAIL'} {name} ({rec['seconds']} s){'' if rec['ok'] else ': ' + rec['error']}",
          flush=True)
    return rec["ok"]


def _env(device: str) -> dict:
    import torch
    import transformers

    from emolens.models import resolve_device, resolve_dtype

    dev = resolve_device(device)
    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "device": str(dev), "dtype": str(resolve_dtype("auto", dev)).replace("torch.", "")}
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
        out["bf16_supported"] = bool(torch.cuda.is_bf16_supported())
    return out


def _cli(argv: list) -> dict:
    """``emolens <argv>`` in-process; the result JSON's metrics and latency, and peak GPU memory."""
    import torch

    from emolens.cli import main

    out = Path(tempfile.mkdtemp(prefix="gpu_check_")) / "r.json"
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main([*argv, "--out", str(out), "--quiet"])
    if rc != 0:
        raise RuntimeError(f"emolens {' '.join(argv)} exited {rc}: {buf.getvalue()[-300:]}")
    r = json.loads(out.read_text())
    got = {"war": r["metrics"]["war"], "n": r["config"]["n"], "device": r["config"].get("device"),
           "dtype": r["config"].get("dtype"), "ms_per_sample": round(1000 * r["latency_s"]["per_sample"], 2)}
    if torch.cuda.is_available():
        got["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return got


def _generate(device: str) -> dict:
    import numpy as np
    import torch

    from emolens.intervene import Capture, KeyMask, intervene
    from emolens.methods import Task, get_method
    from emolens.methods.common import fine_prompts
    from emolens.models import load_model
    from emolens.world import EmoWorld

    lm = load_model("emolens-tiny", device=device)
    w = EmoWorld("mer", eps=0.0)
    samples = [w.sample("test", i) for i in range(2)]
    batch = lm.encode(samples, fine_prompts(samples, Task.from_dataset(w)))
    keep = np.ones((len(samples), batch.layouts[0].seq_len), dtype=bool)
    for b, lay in enumerate(batch.layouts):
        keep[b, lay.visual[::2]] = False
    ar = get_method("ar", source="audio", target="visual")
    ops = [KeyMask(from_layer=2, keep=keep), Capture(layers=[1, 3], rows="last", steps="all", offload="cpu"),
           *ar.ops_for(lm, batch, samples)]
    new = 4
    with intervene(lm.model, batch.layouts, ops) as tr, torch.no_grad():
        seq = lm.model.generate(**batch.inputs, max_new_tokens=new, do_sample=False)
    if seq.shape[1] != batch.inputs["input_ids"].shape[1] + new:
        raise AssertionError(f"generate made {seq.shape[1] - batch.inputs['input_ids'].shape[1]} tokens, asked {new}")
    steps = tr.decode_captures
    devs = {c.probs.device.type for s in steps for c in s.values()}
    if len(steps) != new - 1 or devs != {"cpu"}:
        raise AssertionError(f"decode captures: {len(steps)} steps on {devs}; expected {new - 1} on the CPU")
    p = tr.get("last", 3).probs
    dropped = max(float(p[b][:, :, lay.visual[::2]].abs().max()) for b, lay in enumerate(batch.layouts))
    if not torch.isfinite(p).all() or dropped != 0.0:
        raise AssertionError("the prefill capture is not finite or a masked key got attention")
    return {"tokens": int(seq.shape[1]), "decode_steps": len(steps)}


def _families(tmp: Path, families) -> dict:
    import fakedata as fd
    import hf_checkpoints as ck

    models = {fam: ck.build_tiny(fam, tmp / fam) for fam in families}
    return {"models": models, "emoset": fd.make_emoset_copy(tmp / "emoset")}


def _notebook(path: Path, out_dir: Path, device: str) -> dict:
    from emolens.runner import execute

    res = execute(path, out_dir, {**NB_SMALL, "device": device})
    return {k: v for k, v in (res or {}).items() if isinstance(v, (int, float, str, bool))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda | cpu")
    ap.add_argument("--quick", action="store_true", help="small CPU run for make test (no notebooks, no bench)")
    ap.add_argument("--out", default="runs/gpu_check/summary.json")
    a = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from emolens.methods import available

    summary = {"device": a.device, "quick": a.quick, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": {}}
    t_all = time.perf_counter()
    _step(summary, "env", _env, a.device)
    summary["env"] = summary["steps"]["env"]
    methods = list(available())
    for m in methods:
        _step(summary, f"eval/emolens-tiny/{m}", _cli, ["eval", "--method", m, "--limit", str(LIMIT), "--device", a.device])

    import test_real_e2e as e2e  # 2-layer settings for the tiny real families

    fams = QUICK_FAMILIES if a.quick else e2e.ck.FAMILIES
    with tempfile.TemporaryDirectory(prefix="gpu_check_hf_") as tmp:
        built = {}
        if _step(summary, "build/tiny-families", lambda: built.update(_families(Path(tmp), fams)) or {"families": list(fams)}):
            fc = built["emoset"]
            for fam in fams:
                for m in (QUICK_FAMILY_METHODS if a.quick else methods):
                    _step(summary, f"eval/{fam}/{m}", _cli,
                          ["eval", "--model", built["models"][fam], "--dataset", str(fc.manifest_path), "--root", str(fc.root),
                           "--method", m, "--limit", str(LIMIT), "--device", a.device, *e2e._settings(m, "emoset")])
    _step(summary, "generate", _generate, a.device)
    if not a.quick:
        from emolens.runner import notebook_paths

        out_dir = Path(a.out).resolve().parent / "notebooks"
        for nb in notebook_paths():
            _step(summary, f"notebooks/{nb.stem}", _notebook, nb, out_dir, a.device)
        from emolens.cli import main as cli_main

        with contextlib.redirect_stdout(io.StringIO()):
            try:
                has_methods = "--methods" in _help("bench")
            except SystemExit:
                has_methods = False
        if has_methods:
            bench_json = Path(a.out).resolve().parent / "bench.json"
            _step(summary, "bench", lambda: {"rc": cli_main(["bench", "--methods", "--device", a.device, "--json", str(bench_json)])})
        else:
            summary["steps"]["bench"] = {"ok": None, "skipped": "`emolens bench --methods --device` does not exist yet"}
    steps = summary["steps"].values()
    summary["passed"] = sum(1 for s in steps if s.get("ok") is True)
    summary["failed"] = sorted(k for k, s in summary["steps"].items() if s.get("ok") is False)
    summary["seconds"] = round(time.perf_counter() - t_all, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(summary, indent=1, default=str))
    print(f"{summary['passed']} passed, {len(summary['failed'])} failed in {summary['seconds']} s; wrote {a.out}")
    return 1 if summary["failed"] else 0


def _help(cmd: str) -> str:
    """The ``--help`` text of an emolens subcommand (to check which options it has)."""
    from emolens.cli import main as cli_main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            cli_main([cmd, "--help"])
        except SystemExit:
            pass
    return buf.getvalue()


if __name__ == "__main__":
    sys.exit(main())
