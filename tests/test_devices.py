"""Device and dtype hygiene (issue 16), checked on a CPU-only machine.

* ``resolve_dtype``: bf16 only where the card supports it, fp16 on older CUDA cards, fp32 on the CPU.
* ``compat.tolerances``: one atol/rtol per dtype; bounds grow with coarser dtypes.
* ``analysis.to_cpu`` / ``as_numpy``: what a notebook gets is on the CPU and numpy-convertible,
  whatever the model's device and dtype (on CUDA where present; on the CPU with bf16 everywhere).
* ``load_hf`` places weights with ``device_map`` straight onto the device (no CPU copy first), for
  every tiny real family; ``device_map`` values it does not know fail in one line.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hf_checkpoints as ck  # noqa: E402

import emolens  # noqa: E402
from emolens.analysis import as_numpy, to_cpu  # noqa: E402
from emolens.compat import tolerances  # noqa: E402
from emolens.intervene import Capture, intervene  # noqa: E402
from emolens.models import resolve_dtype  # noqa: E402
from emolens.models.hf import load_hf  # noqa: E402

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here"))
DEVICES = ["cpu", CUDA]


def test_resolve_dtype_cpu_and_names():
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'f8'"):
        resolve_dtype("f8", torch.device("cpu"))


def test_resolve_dtype_cuda_follows_bf16_support(monkeypatch):
    # the decision only reads is_bf16_supported(): both answers are checked without a card
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", torch.device("cuda")) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", torch.device("cuda")) is torch.bfloat16


def test_tolerances_per_dtype():
    t32, t16, tbf = tolerances(torch.float32), tolerances("fp16"), tolerances(torch.bfloat16)
    assert t32["atol"] < t16["atol"] < tbf["atol"] and t32["rtol"] < t16["rtol"] < tbf["rtol"]
    assert tolerances(torch.float32, scale=10)["atol"] == pytest.approx(10 * t32["atol"])
    # a bf16 rounding of a float32 tensor passes the bf16 bound and fails the float32 one
    x = torch.linspace(0.1, 3.0, 101)
    xb = x.to(torch.bfloat16).float()
    assert torch.allclose(x, xb, **tbf) and not torch.allclose(x, xb, **t32)
    with pytest.raises(ValueError, match="not a floating dtype"):
        tolerances(torch.int64)


@functools.lru_cache(maxsize=None)
def _tiny(device: str, dtype: str):
    return emolens.load_model("emolens-tiny", device=device, dtype=dtype)


def _world_batch(lm, n=2):
    from emolens.methods import Task
    from emolens.methods.common import fine_prompts
    from emolens.world import EmoWorld

    w = EmoWorld("mer", eps=0.0)
    samples = [w.sample("test", i) for i in range(n)]
    return samples, lm.encode(samples, fine_prompts(samples, Task.from_dataset(w)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_to_cpu_and_as_numpy_on_model_outputs(device, dtype):
    lm = _tiny(device, dtype)
    _, batch = _world_batch(lm)
    with intervene(lm.model, batch.layouts, [Capture(layers=[1], rows="answer", qk_positions="visual")]) as tr:
        with torch.no_grad():
            out = lm.model(**batch.inputs)
    cap = tr.get("answer", 1)
    assert cap.probs.dtype == torch.float32 and cap.q.dtype == torch.float32 and cap.k.dtype == torch.float32
    moved = to_cpu({"cap": cap, "logits": out.logits, "both": [out.logits, 3]})
    assert moved["cap"].probs.device.type == "cpu" and moved["cap"].q.device.type == "cpu"
    assert moved["logits"].device.type == "cpu" and moved["both"][1] == 3
    arr = as_numpy(out.logits[:, -1])
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32 and np.isfinite(arr).all()
    np.testing.assert_allclose(arr, out.logits[:, -1].float().cpu().numpy())


@functools.lru_cache(maxsize=None)
def _folder(root: str, family: str) -> str:
    return ck.build_tiny(family, Path(root) / family)


@pytest.fixture(scope="module")
def ckdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf_devmap"))


@pytest.mark.parametrize("family", ck.FAMILIES)
def test_load_hf_device_map_places_weights(ckdir, family, monkeypatch):
    import transformers

    from emolens.models.hf import SUPPORTED, _check_family, _read_config_json

    folder = _folder(ckdir, family)
    cls = getattr(transformers, SUPPORTED[_check_family(_read_config_json(Path(folder)), Path(folder))][1])
    ref = cls.from_pretrained(folder, dtype=torch.float32)

    def no_copy(self, *a, **k):
        raise AssertionError("the whole model was moved after loading (model.to); device_map should place it")

    monkeypatch.setattr(cls, "to", no_copy)
    lm = load_hf(folder, device="cpu", device_map="cpu")
    assert {p.device.type for p in lm.model.parameters()} == {"cpu"}
    assert lm.device == torch.device("cpu") and lm.info["device_map"] == "cpu"
    assert load_hf(folder, device="cpu").info["device_map"] == "cpu"  # the default places them too
    sd = ref.state_dict()  # same weights as the stock loader
    for name, p in lm.model.state_dict().items():
        assert torch.equal(p, sd[name]), name


def test_load_hf_bad_device_map(ckdir):
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        load_hf(_folder(ckdir, "llava"), device="cpu", device_map="gpu0")
    with pytest.raises(ValueError, match="device_map must be None, 'auto', a device"):
        load_hf(_folder(ckdir, "llava"), device="cpu", device_map=["cpu"])
