"""`load_model()`: the embedded emolens-tiny, or a real Hugging Face VLM from a local path or cache.

Every model is returned with its text attention on emolens' registered attention function (SDPA
until an intervention is active: identical outputs to the stock model) and any vision tower on SDPA.
"""
from __future__ import annotations

import os
from pathlib import Path

from .base import Batch, LoadedModel, resolve_device, resolve_dtype

TINY_NAME = "emolens-tiny"
TINY_DIR = Path(__file__).resolve().parents[1] / "checkpoints" / TINY_NAME
CHECKPOINTS = TINY_DIR.parent


def shipped_tiny(name) -> Path | None:
    """The folder of a shipped emolens-tiny checkpoint by name (``emolens-tiny``, ``emolens-tiny-audio4``,
    ``emolens-tiny-ft`` ...: any folder under ``emolens/checkpoints``), else None."""
    if name is None:
        return TINY_DIR
    if isinstance(name, str) and name.startswith(TINY_NAME) and "/" not in name and (CHECKPOINTS / name / "config.json").is_file():
        return CHECKPOINTS / name
    return None

__all__ = ["load_model", "Batch", "LoadedModel", "TINY_NAME", "TINY_DIR", "resolve_device", "resolve_dtype"]


def _is_tiny_folder(p: Path) -> bool:
    import json

    cfg = p / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "emolens_tiny"
    except ValueError:
        return False


def load_model(name_or_path: str = TINY_NAME, device: str = "auto", dtype="auto", *, attn: str = "emolens",
               device_map=None) -> LoadedModel:
    """Load a model for emolens.

    Args:
        name_or_path: ``"emolens-tiny"`` (the embedded default, shipped in the package), another shipped
            checkpoint by name (``"emolens-tiny-audio4"``/``-audio16``/``-audio64``, ``"emolens-tiny-ft"``), a folder
            holding an emolens-tiny checkpoint (e.g. from ``emolens train-tiny``), or a local folder /
            locally cached Hugging Face id of a LLaVA, Qwen2-VL, Qwen2.5-VL, Qwen3-VL or InternVL model.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``.
        dtype: ``"auto"`` (bf16 on CUDA where supported, else fp16; fp32 on CPU) or a dtype name.
        device_map: real checkpoints only: ``None`` (weights read straight onto ``device``), ``"auto"``
            (shard over every visible GPU, for models larger than one card) or a dict; see
            :func:`emolens.models.hf.load_hf`. emolens-tiny always loads whole onto ``device``.
        attn: text attention implementation; ``"emolens"`` (default; needed by every intervention)
            or ``"sdpa"``/``"eager"`` for reference runs.

    Returns:
        :class:`LoadedModel` (also unpacks as ``model, processor, encode``).
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    shipped = shipped_tiny(name_or_path)
    if name_or_path == TINY_NAME or shipped is not None or _is_tiny_folder(Path(os.path.expanduser(str(name_or_path)))):
        from .tiny import load_tiny, read_card

        path = shipped or (TINY_DIR if name_or_path == TINY_NAME else Path(os.path.expanduser(str(name_or_path))))
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"the embedded emolens-tiny checkpoint is missing at {path}; reinstall emolens or run "
                f"`emolens train-tiny --out {path}`")
        model, proc = load_tiny(path, dev, dt)
        if attn == "emolens":
            from ..attention import install

            install(model)
        elif attn != "sdpa":
            model.set_attn_implementation(attn)
        return LoadedModel(model=model, processor=proc, family="emolens-tiny", device=dev, dtype=dt,
                           encoder=lambda s, p: proc(s, p, device=dev), letter_ids=proc.letter_ids,
                           name=str(name_or_path), info={"path": str(path), "card": read_card(path)},
                           verbalizer=getattr(model.config, "verbalizer", "letter"), word_ids=proc.word_ids)
    from .hf import load_hf

    return load_hf(name_or_path, device=device, dtype=dtype, attn=attn, device_map=device_map)
