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


# --------------------------------------------------------------------------- capture memory options
def test_reduced_capture_equals_full_capture_reduced_after(monkeypatch):
    """Capture(reduce="heads"/"mean") computed in chunks inside the attention function equals the full
    [B, H, R, K] capture reduced afterwards (ragged rows, padding, a key mask, chunks of one row)."""
    import emolens.intervene as iv
    from emolens.intervene import KeyMask

    lm = _tiny("cpu", "float32")
    samples, batch = _world_batch(lm, n=3)
    rows = [np.concatenate([lay.visual[: 5 + 3 * b], lay.content]) for b, lay in enumerate(batch.layouts)]
    keep = np.ones((3, batch.layouts[0].seq_len), dtype=bool)
    keep[:, batch.layouts[0].visual[1::3]] = False
    monkeypatch.setattr(iv, "REDUCE_CHUNK_BYTES", 1)  # one row per chunk
    ops = [KeyMask(from_layer=1, keep=keep)]
    for red in (None, "heads", "mean"):
        ops.append(Capture(layers=[2], rows=rows, name=f"r_{red}", reduce=red))
    with intervene(lm.model, batch.layouts, ops) as tr, torch.no_grad():
        lm.model(**batch.inputs)
    full, heads, mean = tr.get("r_None", 2), tr.get("r_heads", 2), tr.get("r_mean", 2)
    B, H, R, K = full.probs.shape
    assert heads.probs.shape == (B, R, K) and mean.probs.shape == (B, K) and heads.reduced == "heads"
    torch.testing.assert_close(heads.probs, full.probs.mean(1), **tolerances(torch.float32))
    v = full.row_valid.float()
    ref = (full.probs.mean(1) * v[:, :, None]).sum(1) / v.sum(1)[:, None]
    torch.testing.assert_close(mean.probs, ref, **tolerances(torch.float32))
    from emolens.methods.nts import span_attention

    for b in range(B):
        np.testing.assert_allclose(mean.sample(b).numpy(), span_attention(full.sample(b)), **tolerances(torch.float32))
        assert heads.sample(b).shape == (1, int(full.row_valid[b].sum()), K)
    assert not bool(ref.isnan().any()) and (mean.probs.sum(-1) > 0).all()
    with pytest.raises(ValueError, match="reduce='max'; use None, 'heads' or 'mean'"):
        with intervene(lm.model, batch.layouts, [Capture(layers=[2], rows="visual", reduce="max")]):
            pass


def test_decode_captures_offload_to_cpu():
    """Capture(offload="cpu") moves every record (decode steps of generate() too) to the CPU; without
    it records stay on the layer's device (checked where CUDA exists)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    lm = _tiny(dev, "float32")
    _, batch = _world_batch(lm)
    ops = [Capture(layers=[1], rows="last", steps="all", name="off", offload="cpu", qk_positions="visual"),
           Capture(layers=[1], rows="last", steps="all", name="on")]
    with intervene(lm.model, batch.layouts, ops) as tr, torch.no_grad():
        lm.model.generate(**batch.inputs, max_new_tokens=3, do_sample=False)
    assert len(tr.decode_captures) == 2
    for caps in [tr.captures, *tr.decode_captures]:
        off, on = caps[("off", 1)], caps[("on", 1)]
        assert {t.device.type for t in (off.probs, off.positions, off.row_valid, off.q, off.k)} == {"cpu"}
        assert on.probs.device.type == dev
        torch.testing.assert_close(off.probs, on.probs.cpu())
    with pytest.raises(ValueError, match="offload='gpu'; use None or 'cpu'"):
        with intervene(lm.model, batch.layouts, [Capture(layers=[1], rows="last", offload="gpu")]):
            pass


def test_gamma_scaling_in_float32_and_clamped_in_fp16():
    from emolens.intervene import scale_rows

    h = torch.tensor([[[60000.0, -60000.0, 1.5]]], dtype=torch.float16)
    g = torch.tensor([[5.0]])
    out = scale_rows(h, g)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert float(out[0, 0, 0]) == torch.finfo(torch.float16).max and float(out[0, 0, 2]) == 7.5
    # bf16: computed in float32, rounded once (not gamma rounded to bf16 first)
    hb = torch.tensor([[[1.0, 3.0]]], dtype=torch.bfloat16)
    gb = torch.tensor([[1.0 + 1.0 / 3]])
    assert torch.equal(scale_rows(hb, gb), (hb.float() * gb.float()[:, :, None]).to(torch.bfloat16))


def test_eval_timing_synchronizes_on_cuda(monkeypatch):
    """evaluate's timed predict is wrapped in torch.cuda.synchronize() on CUDA (checked by counting the
    calls with a stand-in, no card needed); on the CPU it is the predict itself."""
    from emolens.evaluate import _synced

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: calls.append(str(d)))
    f = lambda chunk: len(chunk)  # noqa: E731
    assert _synced(f, torch.device("cpu")) is f
    assert _synced(f, "cuda:0")([1, 2]) == 2 and calls == ["cuda:0", "cuda:0"]
