"""Device-clean notebooks and analysis helpers (issue 16), checked on any machine.

A notebook run with ``device="auto"`` gets CUDA tensors from a GPU model. Two mistakes then crash the
first GPU run although every CPU run passes:

* ``.numpy()`` on a tensor that was never brought to the CPU (``t.numpy()`` instead of
  ``t.cpu().numpy()`` or ``emolens.analysis.as_numpy(t)``);
* comparing a model tensor with a tensor built on the CPU (``torch.allclose(x, torch.ones(n))``
  without ``device=``).

The static check below parses notebooks/*.py (the jupytext sources) and lib/emolens/analysis/*.py
and reports both patterns; it is itself tested on planted snippets, so it can fail. The runtime
half (``test_helpers_return_cpu``) runs the analysis helpers on emolens-tiny in bfloat16 on the CPU
(``.numpy()`` of a bf16 tensor fails like a CUDA one does) and, where CUDA exists, on CUDA, and asserts
that every tensor they return is on the CPU.
"""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")) + sorted((ROOT / "lib/emolens/analysis").glob("*.py"))

#: calls that bring a tensor to the CPU (method names on the receiver chain, or helper functions)
TO_CPU_METHODS = {"cpu"}
TO_CPU_FUNCS = {"to_cpu", "as_numpy"}
#: torch constructors that build on the CPU unless given device=
CONSTRUCTORS = {"ones", "zeros", "ones_like_cpu", "tensor", "as_tensor", "full", "arange", "eye", "rand", "randn"}
COMPARE = {"allclose", "equal", "isclose", "assert_close"}


def _chain_has_cpu(node: ast.AST) -> bool:
    """Does the expression's call chain (a.b().c[...].d()) pass through .cpu() or to_cpu()/as_numpy()?"""
    while True:
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in TO_CPU_METHODS:
                return True
            if isinstance(f, ast.Name) and f.id in TO_CPU_FUNCS:
                return True
            if isinstance(f, ast.Attribute) and f.attr in TO_CPU_FUNCS:
                return True
            node = f.value if isinstance(f, ast.Attribute) else None
        elif isinstance(node, ast.Attribute):
            node = node.value
        elif isinstance(node, ast.Subscript):
            node = node.value
        else:
            return False
        if node is None:
            return False


def _cpu_constructor(node: ast.AST) -> bool:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return False
    f = node.func
    return (isinstance(f.value, ast.Name) and f.value.id == "torch" and f.attr in CONSTRUCTORS
            and not any(k.arg == "device" for k in node.keywords))


def device_problems(source: str, where: str = "<snippet>") -> list:
    """Lines of ``source`` that would crash on a GPU model: ``.numpy()`` on a tensor not passed through
    ``.cpu()`` / ``to_cpu`` / ``as_numpy``, and a torch comparison with a CPU-built tensor. A line
    ending in ``# device: cpu`` is exempt (a value known to be built on the CPU, e.g. from numpy)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        line = lines[node.lineno - 1]
        if line.rstrip().endswith("# device: cpu"):
            continue
        f = node.func
        if f.attr == "numpy" and not node.args and not _chain_has_cpu(f.value):
            out.append(f"{where}:{node.lineno}: .numpy() on a tensor not brought to the CPU "
                       f"(write .cpu().numpy() or emolens.analysis.as_numpy(...)): {line.strip()}")
        elif f.attr in COMPARE and any(_cpu_constructor(a) for a in list(node.args) + [k.value for k in node.keywords]):
            out.append(f"{where}:{node.lineno}: comparison with a tensor built on the CPU (pass device=... "
                       f"or compare CPU copies): {line.strip()}")
    return sorted(out)


# --------------------------------------------------------------------------- the checker itself
PLANTED_BAD = '''
probs = trace.get("answer", 3).probs
row = probs[0].mean(0).numpy()
ok = torch.allclose(row_t.sum(-1), torch.ones(row_t.shape[0]), atol=1e-5)
'''
PLANTED_GOOD = '''
probs = trace.get("answer", 3).probs
row = probs[0].mean(0).cpu().numpy()
row2 = probs[0].detach().float().cpu()[1:].numpy()
row3 = as_numpy(probs[0])
row4 = emolens.analysis.as_numpy(probs)
ok = torch.allclose(row_t.sum(-1), torch.ones(row_t.shape[0], device=row_t.device), atol=1e-5)
frame = df["x"].to_numpy()
base = torch.from_numpy(arr).numpy()  # device: cpu
'''


def test_checker_fails_on_planted_device_tensor():
    got = device_problems(PLANTED_BAD)
    assert len(got) == 2, got
    assert ":3: .numpy() on a tensor not brought to the CPU" in got[0]
    assert ":4: comparison with a tensor built on the CPU" in got[1]


def test_checker_passes_converted_code():
    assert device_problems(PLANTED_GOOD) == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_notebooks_and_analysis_are_device_clean(path):
    assert device_problems(path.read_text(), path.name) == []


# --------------------------------------------------------------------------- runtime: what helpers return
CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here"))


def _non_cpu(x, path="out") -> list:
    """Paths of tensors in ``x`` (walked like analysis.to_cpu) that are not CPU tensors."""
    if isinstance(x, torch.Tensor):
        return [] if x.device.type == "cpu" else [f"{path} on {x.device}"]
    if isinstance(x, dict):
        return [p for k, v in x.items() for p in _non_cpu(v, f"{path}[{k!r}]")]
    if isinstance(x, (list, tuple)):
        return [p for i, v in enumerate(x) for p in _non_cpu(v, f"{path}[{i}]")]
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return [p for f in dataclasses.fields(x) for p in _non_cpu(getattr(x, f.name), f"{path}.{f.name}")]
    return []


@pytest.fixture(scope="module", params=["cpu", CUDA])
def lm_env(request):
    from emolens.methods import Task
    from emolens.methods.common import fine_prompts
    from emolens.models import load_model
    from emolens.world import EmoWorld

    # bf16 on the CPU: .numpy() of a bf16 tensor fails there just as a CUDA tensor's does
    lm = load_model("emolens-tiny", device=request.param, dtype="bfloat16")
    w = EmoWorld("mer", eps=0.0)
    samples = [w.sample("test", i) for i in range(2)]
    task = Task.from_dataset(w)
    return lm, samples, task, fine_prompts(samples, task, contrastive=True)


def test_helpers_return_cpu(lm_env):
    """Each analysis helper that hands model tensors to a notebook returns them on the CPU, in a dtype
    numpy takes."""
    from emolens.analysis import usage, wetr
    from emolens.methods import get_method

    lm, samples, task, prompts = lm_env
    batch, rows, logits = usage.answer_attention(lm, samples, prompts, layers=[1, 2])
    assert _non_cpu((rows, logits)) == []
    assert logits.numpy().dtype == np.float32 and rows[1].numpy().shape[0] == 2
    _, caps, logits = usage.method_attention(lm, samples, prompts, method=get_method("str"), layers=[2])
    assert _non_cpu((caps, logits)) == []
    m = get_method("str")
    l = m.trigger_layers(lm.num_layers)[0]
    batch = lm.encode(samples, prompts)
    _, trace = m.forward(lm, batch, samples)
    probs, pos = wetr.capture_rows(trace, "vc", l)
    q, k, qpos = wetr.capture_qk(trace, l)
    assert _non_cpu((probs, q, k)) == [] and probs.numpy().ndim == 3
    lay = batch.layouts[0]
    iv = np.flatnonzero(np.isin(qpos, lay.visual))[:3]
    ic = np.flatnonzero(np.isin(qpos, lay.content))[:3]
    alpha = wetr.alpha_matrix(q, k, iv, ic)
    assert isinstance(alpha, np.ndarray) and np.allclose(alpha.sum(-1), 1.0)
