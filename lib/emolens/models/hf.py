"""Adapters for real Hugging Face vision-language models: LLaVA, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL.

``load_hf(name_or_path)`` loads a checkpoint from a local folder or from the local Hugging Face cache
(this machine never downloads), puts its text decoder on emolens' registered attention function and
its vision tower on SDPA, and returns a :class:`~emolens.models.base.LoadedModel` whose ``encode``
renders samples + structured prompts with the family's own chat template and builds one
:class:`~emolens.layout.TokenLayout` per row.

How a row is built (every family):

1. the user turn is ``[media placeholders] Subtitle: "<subtitle>"\\n<prompt text>`` (the subtitle line
   only when the sample has one), rendered with the checkpoint's chat template with the generation
   prompt appended;
2. each media placeholder the template emitted is expanded here to the family's token run (the same
   strings the family's HF processor produces), with the pixels made by the checkpoint's image
   processor (PIL backend; torchvision is never needed);
3. the expanded string is tokenised once with ``return_offsets_mapping=True``, left-padded;
4. visual positions are where ``input_ids`` equals the config's ``image_token_id`` / ``video_token_id``
   (never a hard-coded id); a text token is *content* when its characters overlap the subtitle,
   belongs to a prompt span when they overlap that span (``Prompt.span_chars()`` shifted to where the
   prompt sits in the templated string), and is *instruction* otherwise (chat-template tokens, BOS,
   ``Subtitle:``, quotes, ``<img>``/``</img>``, Qwen3 timestamps and vision start/end markers included).
   The answer position is the last token. ``audio`` is always empty: these families take no audio
   input here, so a sample's audio is ignored (a real waveform would need an audio-LM family).

Family table (``frames_as="auto"``):

===========  ==========================  ==================================  ====================
family       placeholder -> expansion     T > 1 frames                        extra inputs
===========  ==========================  ==================================  ====================
llava        ``<image>`` -> image token   T images, one ``<image>`` each       --
             x (H/p)(W/p) (+1 CLS for     (LLaVA-1.5 has no video format)
             ``full`` strategy)
qwen2_vl     ``<|image_pad|>`` x          one video: ``<|video_pad|>`` x       ``mm_token_type_ids``
             t*h*w/merge^2                t*h*w/merge^2, frames paired by      (1 image, 2 video)
                                          ``temporal_patch_size``
qwen2_5_vl   same as qwen2_vl             same, plus ``second_per_grid_ts``    ``mm_token_type_ids``
                                          = temporal_patch_size / fps
qwen3_vl     same as qwen2_vl             per temporal patch ``<t seconds>``   ``mm_token_type_ids``
                                          ``<|vision_start|>`` video tokens
                                          ``<|vision_end|>`` (timestamps are
                                          instruction tokens)
internvl     ``<IMG_CONTEXT>`` ->         the family's video format:           --
             ``<img>`` ctx x seq*tiles    ``FrameK: <img>`` ctx x seq
             ``</img>`` (dynamic tiles)   ``</img>`` per frame, one tile each
===========  ==========================  ==================================  ====================

``frames_as="images"`` feeds every frame as its own image for all families; a single frame is
always an image, and a checkpoint whose chat template has no video placeholder gets images too.
Qwen video pixels are made from the image processor's per-frame patches grouped
``temporal_patch_size`` frames at a time (the layout of ``Qwen2VLVideoProcessor``; the last frame is
repeated to fill a group); frame size follows the image processor's ``size`` (not the video
processor's, which needs torchvision). ``fps`` comes from ``sample.meta["fps"]`` (default
:data:`DEFAULT_FPS`). The HF processor classes are not used (the Qwen and InternVL ones refuse to
build without torchvision's video processor); ``LoadedModel.processor`` is an :class:`HFProcessor`
holding the checkpoint's tokenizer, image processor and chat template. For LLaVA the tests check
token-for-token parity with ``LlavaProcessor``.

``visual_grid`` gives ``(frame, row, col)`` per visual token, ``frame`` indexing ``sample.frames``
(for a Qwen video token: the first frame of its temporal patch). It is None for rows holding an
InternVL image split into several tiles, and for LLaVA's ``full`` strategy (CLS token). ``cue_visual``
maps the world's ``cue_mask`` onto the same grid (True when any glyph pixel falls under the token's
receptive field in the original frame), and ``cue_content`` marks content tokens overlapping the
subtitle's cue words.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..layout import TokenLayout
from .base import Batch, LoadedModel, resolve_device, resolve_dtype

#: model_type -> (family label, transformers model class)
SUPPORTED = {
    "llava": ("LLaVA", "LlavaForConditionalGeneration"),
    "qwen2_vl": ("Qwen2-VL", "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": ("Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration"),
    "qwen3_vl": ("Qwen3-VL", "Qwen3VLForConditionalGeneration"),
    "internvl": ("InternVL", "InternVLForConditionalGeneration"),
}
QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
IMAGE_TOKEN_FIELDS = ("image_token_id", "image_token_index")
VIDEO_TOKEN_FIELDS = ("video_token_id", "video_token_index")
#: frames per second assumed for a clip whose ``sample.meta`` has no ``fps`` (qwen-vl-utils' default)
DEFAULT_FPS = 2.0

__all__ = ["load_hf", "resolve_checkpoint", "HFProcessor", "SUPPORTED", "DEFAULT_FPS"]


# =============================================================================== locating a checkpoint
def resolve_checkpoint(name_or_path) -> Path:
    """A local folder, or the snapshot folder of a Hugging Face id in the local cache.

    Raises FileNotFoundError (one line, naming every place looked at) when neither exists; nothing
    is ever downloaded."""
    raw = str(name_or_path)
    p = Path(os.path.expanduser(raw))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p.resolve()} has no config.json; point --model at the folder holding "
                                    f"config.json, the weights and the tokenizer files")
        return p
    looked = [str(p.resolve())]
    try:
        from huggingface_hub import constants, snapshot_download

        cache = str(constants.HF_HUB_CACHE)
        looked.append(f"the Hugging Face cache {cache} (id {raw!r})")
        try:
            snap = Path(snapshot_download(raw, local_files_only=True))
            if (snap / "config.json").is_file():
                return snap
        except Exception:  # not a valid id, not cached, or an incomplete snapshot
            pass
    except ImportError:
        pass
    raise FileNotFoundError(
        f"model {raw!r} not found: looked at {' and '.join(looked)}; this machine cannot download "
        f"checkpoints, so pass --model /path/to/folder (a local copy with config.json, weights and tokenizer)")


def _read_config_json(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except ValueError as e:
        raise ValueError(f"{folder / 'config.json'} is not valid JSON ({e}); re-copy the checkpoint") from None


def _check_family(raw: dict, folder: Path) -> str:
    mt = raw.get("model_type")
    if mt not in SUPPORTED:
        fams = ", ".join(f"{label} ({k})" for k, (label, _) in SUPPORTED.items())
        raise ValueError(f"unsupported architecture model_type={mt!r} in {folder / 'config.json'}; "
                         f"supported families: {fams}, and emolens-tiny")
    return mt


def _first_field(raw: dict, fields: Sequence[str]) -> Optional[int]:
    for f in fields:
        v = raw.get(f)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return v
    return None


# =============================================================================== loading
def load_hf(name_or_path, device="auto", dtype="auto", *, attn: str = "emolens",
            frames_as: str = "auto", device_map=None) -> LoadedModel:
    """Load a LLaVA / Qwen2-VL / Qwen2.5-VL / Qwen3-VL / InternVL checkpoint for emolens.

    Args:
        name_or_path: a local folder, or a Hugging Face model id already in the local cache.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda[:N]"``.
        dtype: ``"auto"`` (bf16 on CUDA where supported, else fp16; fp32 on CPU) or a dtype name.
        device_map: where the weights go as they are read (transformers/accelerate ``device_map``):
            default ``None`` = all on ``device`` (no CPU copy first; a device string is the same);
            ``"auto"`` shards a model larger
            than one card over every visible GPU (and CPU RAM after them); or an explicit
            ``{module name: device}`` dict. Inputs go to the device of the input embeddings;
            the attention function runs on each layer's own device (captures live there).
        attn: text-decoder attention: ``"emolens"`` (default; what interventions need; identical to
            SDPA while none is active), ``"sdpa"`` or ``"eager"``. Vision towers always run SDPA.
        frames_as: ``"auto"`` (multi-frame samples as a video where the family has a video format,
            see the module table), or ``"images"`` (every frame its own image).

    Raises:
        FileNotFoundError: no such folder and no cached copy (one line, with the places looked at).
        ValueError: unsupported ``model_type``; no image token id in ``config.json``; the config's
            image token is not in the tokenizer; no chat template.
    """
    if frames_as not in ("auto", "images"):
        raise ValueError(f"frames_as must be 'auto' or 'images', got {frames_as!r}")
    if attn not in ("emolens", "sdpa", "eager"):
        raise ValueError(f"attn must be 'emolens', 'sdpa' or 'eager', got {attn!r}")
    folder = resolve_checkpoint(name_or_path)
    raw = _read_config_json(folder)
    mt = _check_family(raw, folder)
    image_id = _first_field(raw, IMAGE_TOKEN_FIELDS)
    if image_id is None:
        raise ValueError(f"{folder / 'config.json'} ({mt}) has no image token id: looked at fields "
                         f"{', '.join(IMAGE_TOKEN_FIELDS)}; add the id of the image placeholder token there")
    video_id = _first_field(raw, VIDEO_TOKEN_FIELDS)

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if isinstance(device_map, str) and device_map != "auto":  # one device: the same as device=...
        dev = resolve_device(device_map)
        device_map = None
    if device_map is None:
        device_map = str(dev)
    elif not (device_map == "auto" or isinstance(device_map, dict)):
        raise ValueError(f"device_map must be None, 'auto', a device or a {{module: device}} dict, got {device_map!r}")

    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    processor = HFProcessor.from_folder(folder, mt, config, image_id, video_id, frames_as=frames_as)

    cls = getattr(transformers, SUPPORTED[mt][1])
    # everything on SDPA first (vision towers stay there); the text decoder is then switched
    # weights are placed on their device as they are read (device_map), never loaded on the CPU and copied
    model = cls.from_pretrained(folder, config=config, dtype=dt, attn_implementation="sdpa",
                                device_map=device_map).eval()
    if device_map != str(dev):  # sharded: inputs go where the embeddings are
        dev = model.get_input_embeddings().weight.device
    if attn != "sdpa":
        from ..attention import install

        install(model, text_impl=attn)
    processor.device, processor.dtype = dev, dt
    info = {"path": str(folder), "model_type": mt, "image_token_id": image_id, "video_token_id": video_id,
            "attention": attn, "frames_as": frames_as,
            "device_map": dict(getattr(model, "hf_device_map", None) or {}) or device_map, "audio": "not used (no audio input in this family)"}
    return LoadedModel(model=model, processor=processor, family=mt, device=dev, dtype=dt,
                       encoder=processor.__call__, letter_ids=processor.letter_ids, name=str(name_or_path),
                       info=info)


def _load_chat_template(folder: Path, tokenizer) -> str:
    """The processor's chat template (``chat_template.jinja``, then ``chat_template.json``), else the
    tokenizer's: multimodal checkpoints often keep a text-only template in ``tokenizer_config.json``."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        try:
            tpl = json.loads((folder / "chat_template.json").read_text()).get("chat_template")
        except ValueError:
            tpl = None
        if tpl:
            return tpl
    tpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tpl, dict):
        tpl = tpl.get("default") or next(iter(tpl.values()), None)
    if tpl:
        return tpl
    raise ValueError(f"no chat template in {folder}: looked at chat_template.jinja, chat_template.json and "
                     f"tokenizer_config.json; copy the checkpoint's chat template file into the folder")


# =============================================================================== the processor
@dataclass
class _Row:
    text: str  # expanded string
    sub: Optional[tuple]  # subtitle char range in ``text``
    prompt_at: int  # where the prompt text starts in ``text``
    cue_words: Optional[list]  # char ranges of the subtitle's cue words in ``text`` (None: no ground truth)
    grid: Optional[np.ndarray]  # [n_visual, 3] or None
    cue: Optional[np.ndarray]  # [n_visual] bool or None
    media: dict  # tensors for this row


@dataclass
class HFProcessor:
    """Tokenizer + image processor + chat template of one checkpoint, and the encoder that turns
    samples and prompts into model inputs with layouts (see the module docstring).

    Attributes: ``tokenizer``, ``image_processor``, ``chat_template``, ``family`` (model_type),
    ``image_token_id`` / ``video_token_id`` (from the config), ``image_token`` / ``video_token``
    (their strings in this tokenizer), ``frames_as``.
    """

    tokenizer: object = field(repr=False)
    image_processor: object = field(repr=False)
    chat_template: str = field(repr=False)
    family: str
    config: object = field(repr=False)
    image_token_id: int
    video_token_id: Optional[int] = None
    frames_as: str = "auto"
    extra: dict = field(default_factory=dict, repr=False)  # processor_config.json
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_folder(cls, folder: Path, family: str, config, image_id: int, video_id: Optional[int],
                    frames_as: str = "auto") -> "HFProcessor":
        from transformers import AutoImageProcessor, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder)
        if not getattr(tok, "is_fast", True):
            raise ValueError(f"the tokenizer in {folder} has no fast (tokenizers) version, which emolens needs for "
                             f"character offsets; add tokenizer.json to the folder")
        ip = AutoImageProcessor.from_pretrained(folder)
        tpl = _load_chat_template(folder, tok)
        pcfg = {}
        if (folder / "processor_config.json").is_file():
            try:
                pcfg = json.loads((folder / "processor_config.json").read_text())
            except ValueError:
                pcfg = {}
        p = cls(tokenizer=tok, image_processor=ip, chat_template=tpl, family=family, config=config,
                image_token_id=image_id, video_token_id=video_id, frames_as=frames_as, extra=pcfg)
        p._check_tokens(folder)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
        return p

    def _token_str(self, tid: Optional[int]) -> Optional[str]:
        if tid is None or tid >= len(self.tokenizer):
            return None
        s = self.tokenizer.convert_ids_to_tokens(int(tid))
        return s if isinstance(s, str) else None

    def _check_tokens(self, folder: Path) -> None:
        s = self._token_str(self.image_token_id)
        if s is None or self.tokenizer.convert_tokens_to_ids(s) != self.image_token_id:
            raise ValueError(f"config.json image token id {self.image_token_id} is not a token of the tokenizer in "
                             f"{folder} ({len(self.tokenizer)} tokens); the config and tokenizer do not match")
        self.image_token = s
        self.video_token = self._token_str(self.video_token_id)
        if self.video_token is None:
            self.video_token_id = None
        tk = self.tokenizer
        if self.family == "internvl":
            self.start_image_token = getattr(tk, "start_image_token", None) or "<img>"
            self.end_image_token = getattr(tk, "end_image_token", None) or "</img>"
            self.internvl_video_token = getattr(tk, "video_token", None) or "<video>"
        if self.family == "qwen3_vl":
            self.vision_start = self._token_str(getattr(self.config, "vision_start_token_id", None)) or "<|vision_start|>"
            self.vision_end = self._token_str(getattr(self.config, "vision_end_token_id", None)) or "<|vision_end|>"

    # ------------------------------------------------------------------ rendering
    def _video_mode(self, n_frames: int) -> bool:
        if self.frames_as == "images" or n_frames < 2:
            return False
        if self.family in QWEN:
            return self.video_token_id is not None
        return self.family == "internvl"

    def render(self, sample, prompt, video: bool) -> tuple[str, str]:
        """The templated (unexpanded) string and the user text inside it."""
        t = sample.frames.shape[0]
        media = [{"type": "video"}] if video else [{"type": "image"} for _ in range(t)]
        user = (f'Subtitle: "{sample.subtitle}"\n' if sample.subtitle else "") + prompt.text
        conv = [{"role": "user", "content": media + [{"type": "text", "text": user}]}]
        text = self.tokenizer.apply_chat_template(conv, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=True)
        if isinstance(text, list):
            text = text[0]
        return text, user

    def _video_placeholder(self) -> str:
        return self.internvl_video_token if self.family == "internvl" else (self.video_token or "")

    # ------------------------------------------------------------------ media
    @staticmethod
    def _pil(frames: np.ndarray) -> list:
        from PIL import Image

        return [Image.fromarray(np.ascontiguousarray(f.astype(np.uint8))) for f in frames]

    def _ip(self, images, **kw) -> dict:
        out = self.image_processor(images=images, return_tensors="pt", **kw)
        return {k: (v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))) for k, v in out.items()}

    def _media(self, sample, video: bool) -> tuple[dict, list, Optional[np.ndarray], Optional[np.ndarray], str]:
        """Pixel tensors, the expansion string of each placeholder, the visual grid, the cue per visual
        token, and the placeholder string the template uses."""
        fam = self.family
        frames = sample.frames
        T, H, W = frames.shape[:3]
        cue = getattr(sample, "cue_mask", None)
        cue = np.asarray(cue, dtype=bool) if cue is not None else None
        if cue is not None and cue.shape[:3] != (T, H, W):
            cue = None
        if fam == "llava":
            return self._media_llava(frames, cue)
        if fam in QWEN:
            return self._media_qwen(sample, frames, cue, video)
        return self._media_internvl(frames, cue, video)

    def _media_llava(self, frames, cue):
        T, H, W = frames.shape[:3]
        out = self._ip(self._pil(frames))
        pv = out["pixel_values"]
        vc = self.config.vision_config
        patch = int(getattr(vc, "patch_size", 14))
        strategy = getattr(self.config, "vision_feature_select_strategy", "default")
        if "num_additional_image_tokens" in self.extra:
            extra = int(self.extra["num_additional_image_tokens"])
        else:  # CLIP towers prepend a CLS token, SigLIP towers do not
            extra = 1 if "clip" in str(getattr(vc, "model_type", "")) else 0
        ph, pw = pv.shape[-2] // patch, pv.shape[-1] // patch
        n = ph * pw + extra - (1 if strategy == "default" else 0)
        reps = [self.image_token * n] * T
        grid = cuev = None
        if n == ph * pw:
            grid = _grid(T, ph, pw)
            if cue is not None:
                region = _resize_crop_region(H, W, self.image_processor, pv.shape[-2], pv.shape[-1])
                cuev = np.concatenate([_cue_grid(cue[t], region, ph, pw).reshape(-1) for t in range(T)])
        return {"pixel_values": pv}, reps, grid, cuev, self.image_token

    def _media_qwen(self, sample, frames, cue, video):
        T, H, W = frames.shape[:3]
        ip = self.image_processor
        m = int(getattr(ip, "merge_size", getattr(self.config.vision_config, "spatial_merge_size", 2)))
        tp = int(getattr(ip, "temporal_patch_size", getattr(self.config.vision_config, "temporal_patch_size", 2)))
        out = self._ip(self._pil(frames))
        pv, thw = out["pixel_values"], out["image_grid_thw"]
        gh, gw = int(thw[0, 1]), int(thw[0, 2])
        mh, mw = gh // m, gw // m
        region = (0.0, 0.0, float(H), float(W))
        if not video:
            reps = [self.image_token * (gh * gw // (m * m))] * T
            grid = _grid(T, mh, mw)
            cuev = None if cue is None else np.concatenate(
                [_cue_grid(cue[t], region, mh, mw).reshape(-1) for t in range(T)])
            return {"pixel_values": pv, "image_grid_thw": thw}, reps, grid, cuev, self.image_token
        # a video: per-frame patches [T, N, C, tp, p, p] (frame broadcast over tp) -> pairs of frames
        n = gh * gw
        per = pv.reshape(T, n, -1)
        p = int(getattr(ip, "patch_size", 14))
        c = per.shape[-1] // (tp * p * p)
        one = per.reshape(T, n, c, tp, p, p)[:, :, :, 0]  # [T, N, C, p, p]
        idx = list(range(T)) + [T - 1] * (-T % tp)
        gt = len(idx) // tp
        vid = one[idx].reshape(gt, tp, n, c, p, p).permute(0, 2, 3, 1, 4, 5).reshape(gt * n, c * tp * p * p)
        vthw = torch.tensor([[gt, gh, gw]], dtype=torch.long)
        fps = float((getattr(sample, "meta", None) or {}).get("fps") or DEFAULT_FPS)
        media = {"pixel_values_videos": vid.contiguous(), "video_grid_thw": vthw}
        per_t = mh * mw
        if self.family == "qwen3_vl":
            # timestamps as Qwen3VLProcessor: mean time of the frames in each temporal patch
            ts = [(idx[g * tp] / fps + idx[g * tp + tp - 1] / fps) / 2 for g in range(gt)]
            rep = "".join(f"<{s:.1f} seconds>" + self.vision_start + self.video_token * per_t + self.vision_end
                          for s in ts)
        else:
            rep = self.video_token * (gt * per_t)
            if self.family == "qwen2_5_vl":
                media["second_per_grid_ts"] = torch.tensor([tp / fps], dtype=torch.float32)
        grid = _grid(gt, mh, mw)
        grid[:, 0] *= tp  # frame index of the first frame each temporal patch covers
        cuev = None
        if cue is not None:
            cuev = np.concatenate([
                np.logical_or.reduce([_cue_grid(cue[idx[g * tp + k]], region, mh, mw) for k in range(tp)]).reshape(-1)
                for g in range(gt)])
        return media, [rep], grid, cuev, self.video_token

    def _media_internvl(self, frames, cue, video):
        T, H, W = frames.shape[:3]
        cfg = self.config
        vc = cfg.vision_config
        size = vc.image_size if isinstance(vc.image_size, (list, tuple)) else (vc.image_size, vc.image_size)
        patch = vc.patch_size if isinstance(vc.patch_size, (list, tuple)) else (vc.patch_size, vc.patch_size)
        ratio = float(getattr(cfg, "downsample_ratio", 0.5))
        gh, gw = int(size[0] // patch[0] * ratio), int(size[1] // patch[1] * ratio)
        seq = int(self.extra.get("image_seq_length") or getattr(cfg, "image_seq_length", 0) or gh * gw)
        if seq != gh * gw:
            gh = gw = None
        crop = (T == 1) and not video  # a still image: the family's dynamic tiling; frames: one tile each
        out = self._ip(self._pil(frames), crop_to_patches=crop)
        pv = out["pixel_values"]
        tiles = [int(x) for x in out.get("num_patches", torch.ones(T, dtype=torch.long)).reshape(-1).tolist()]
        ctx, s, e = self.image_token, self.start_image_token, self.end_image_token
        one_tile = all(x == 1 for x in tiles) and gh is not None
        grid = _grid(T, gh, gw) if one_tile else None
        cuev = None
        if one_tile and cue is not None:
            region = (0.0, 0.0, float(H), float(W))
            cuev = np.concatenate([_cue_grid(cue[t], region, gh, gw).reshape(-1) for t in range(T)])
        if video:
            rep = "\n".join(f"Frame{i + 1}: {s}{ctx * seq}{e}" for i in range(T))
            return {"pixel_values": pv}, [rep], grid, cuev, self.internvl_video_token
        reps = [f"{s}{ctx * (seq * k)}{e}" for k in tiles]
        return {"pixel_values": pv}, reps, grid, cuev, self.image_token

    # ------------------------------------------------------------------ one row
    def _row(self, sample, prompt) -> _Row:
        T = sample.frames.shape[0]
        video = self._video_mode(T)
        text, user = self.render(sample, prompt, video)
        if video and self._video_placeholder() not in text:  # a template without a video format
            video = False
            text, user = self.render(sample, prompt, video)
        at = text.rfind(user)
        if at < 0:
            raise ValueError(f"the chat template of this {self.family} checkpoint changed the user text, so prompt "
                             f"spans cannot be located; use a template that inserts message text verbatim")
        media, reps, grid, cue, placeholder = self._media(sample, video)
        # expand placeholders left to right, tracking how far each original character moves
        hits = [mm.start() for mm in re.finditer(re.escape(placeholder), text)]
        if len(hits) != len(reps):
            kind = "video" if video else "image"
            raise ValueError(f"the chat template rendered {len(hits)} {placeholder!r} placeholder(s) for {len(reps)} "
                             f"{kind}(s); this checkpoint's template and config image/video token disagree")
        if any(h >= at for h in hits):
            raise ValueError("the chat template placed media after the user text; emolens expects media first")
        pieces, last, shift = [], 0, 0
        for h, r in zip(hits, reps):
            pieces += [text[last:h], r]
            last = h + len(placeholder)
            shift += len(r) - len(placeholder)
        pieces.append(text[last:])
        out = "".join(pieces)
        at += shift
        sub = None
        cue_words = None if getattr(sample, "subtitle_cue_words", None) is None else []
        if sample.subtitle:
            s0 = at + len('Subtitle: "')
            sub = (s0, s0 + len(sample.subtitle))
            words = list(re.finditer(r"\S+", sample.subtitle))
            for k in (sample.subtitle_cue_words or []):
                if 0 <= k < len(words):
                    cue_words.append((s0 + words[k].start(), s0 + words[k].end()))
            prompt_at = sub[1] + 2  # '"\n'
        else:
            prompt_at = at
        return _Row(text=out, sub=sub, prompt_at=prompt_at, cue_words=cue_words, grid=grid, cue=cue, media=media)

    # ------------------------------------------------------------------ the batch
    def __call__(self, samples: Sequence, prompts: Sequence) -> Batch:
        rows = [self._row(s, p) for s, p in zip(samples, prompts)]
        tk = self.tokenizer
        texts = [r.text for r in rows]
        add_special = not (tk.bos_token is not None and all(t.startswith(tk.bos_token) for t in texts))
        enc = tk(texts, padding=True, padding_side="left", return_offsets_mapping=True,
                 add_special_tokens=add_special, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        offsets = enc["offset_mapping"].numpy()
        vis_ids = [self.image_token_id] + ([self.video_token_id] if self.video_token_id is not None else [])
        is_vis = torch.isin(ids, torch.tensor(vis_ids)).numpy()
        layouts = []
        for b, (r, p) in enumerate(zip(rows, prompts)):
            layouts.append(self._layout(b, r, p, ids[b].numpy(), mask[b].numpy(), offsets[b], is_vis[b]))
        inputs = {"input_ids": ids, "attention_mask": mask}
        # media in row order (the models consume features in placeholder order across the batch); a
        # Qwen batch may hold both images (one-frame samples) and videos
        keys = list(dict.fromkeys(k for r in rows for k in r.media))
        for key in keys:
            inputs[key] = torch.cat([r.media[key] for r in rows if key in r.media], 0)
        if self.family in QWEN:
            tt = torch.zeros_like(ids)
            tt[ids == self.image_token_id] = 1
            if self.video_token_id is not None:
                tt[ids == self.video_token_id] = 2
            inputs["mm_token_type_ids"] = tt
        for k, v in list(inputs.items()):
            if torch.is_floating_point(v) and k != "second_per_grid_ts":
                v = v.to(self.dtype)
            inputs[k] = v.to(self.device)
        return Batch(inputs=inputs, layouts=layouts, prompts=list(prompts))

    def _layout(self, b, r: _Row, prompt, ids, mask, offs, is_vis) -> TokenLayout:
        L = len(ids)
        pad = int((mask == 0).sum()) if mask[0] == 0 else 0
        pos = np.arange(L)
        real = pos >= pad
        a, e = offs[:, 0], offs[:, 1]
        has_chars = (e > a) & real & ~is_vis

        def overlap(lo, hi):
            return has_chars & (a < hi) & (e > lo)

        visual = pos[real & is_vis]
        content_m = overlap(*r.sub) if r.sub else np.zeros(L, bool)
        instr_m = real & ~is_vis & ~content_m
        spans = {}
        for name, (s0, s1) in prompt.span_chars().items():
            spans[name] = pos[overlap(r.prompt_at + s0, r.prompt_at + s1) & instr_m]
        content = pos[content_m]
        cue_c = None
        if r.sub is not None and r.cue_words is not None and content.size:
            cw = np.zeros(L, bool)
            for lo, hi in r.cue_words:
                cw |= overlap(lo, hi)
            cue_c = cw[content]
        grid, cue_v = r.grid, r.cue
        if grid is not None and len(grid) != len(visual):
            grid = cue_v = None
        if cue_v is not None and len(cue_v) != len(visual):
            cue_v = None
        return TokenLayout(seq_len=L, pad=pad, visual=visual, visual_grid=grid, audio=None, content=content,
                           instruction=pos[instr_m], spans=spans, answer=L - 1, cue_visual=cue_v,
                           cue_content=cue_c, options=dict(prompt.options)).validate()

    # ------------------------------------------------------------------ option letters
    def letter_ids(self, letters: Sequence[str]) -> dict:
        """``{letter: [token ids]}``: every id whose decoded text, stripped, equals the letter (bare and
        space-prefixed spellings alike). Raises ValueError when a letter is no single token."""
        tk = self.tokenizer
        if not hasattr(self, "_vocab_index"):
            special = set(tk.all_special_ids)
            idx: dict = {}
            for tokstr, i in tk.get_vocab().items():
                if i in special or len(tokstr) > 6:
                    continue
                core = tokstr.strip().lstrip("Ġ▁").strip()
                if len(core) > 3:
                    continue
                d = tk.decode([i]).strip()
                if d:
                    idx.setdefault(d, set()).add(i)
            self._vocab_index = idx
        out = {}
        for L in letters:
            ids = set(self._vocab_index.get(L, ()))
            tried = {}
            for v in (L, " " + L):
                enc = tk.encode(v, add_special_tokens=False)
                tried[v] = enc
                if len(enc) == 1 and tk.decode(enc).strip() == L:
                    ids.add(int(enc[0]))
            if not ids:
                raise ValueError(f"option letter {L!r} is not a single token of this tokenizer "
                                 f"(encodings: {tried}); use letters the tokenizer has as single tokens")
            out[L] = sorted(int(i) for i in ids)
        return out


# =============================================================================== geometry helpers
def _grid(frames: int, rows: int, cols: int) -> np.ndarray:
    """``[frames*rows*cols, 3]`` (frame, row, col), row-major within a frame."""
    return np.stack(np.meshgrid(np.arange(frames), np.arange(rows), np.arange(cols), indexing="ij"),
                    -1).reshape(-1, 3).astype(np.int64)


def _cue_grid(mask: np.ndarray, region: tuple, rows: int, cols: int) -> np.ndarray:
    """``[rows, cols]`` bool: any True pixel of ``mask [H, W]`` inside each cell of ``region``
    ``(y0, x0, y1, x1)`` (original-frame pixels) split into ``rows x cols`` cells."""
    y0, x0, y1, x1 = region
    H, W = mask.shape
    ys = np.linspace(y0, y1, rows + 1)
    xs = np.linspace(x0, x1, cols + 1)
    out = np.zeros((rows, cols), bool)
    for i in range(rows):
        r0, r1 = max(0, int(np.floor(ys[i]))), min(H, int(np.ceil(ys[i + 1])))
        if r1 <= r0:
            continue
        band = mask[r0:r1]
        for j in range(cols):
            c0, c1 = max(0, int(np.floor(xs[j]))), min(W, int(np.ceil(xs[j + 1])))
            out[i, j] = c1 > c0 and bool(band[:, c0:c1].any())
    return out


def _resize_crop_region(H: int, W: int, ip, out_h: int, out_w: int) -> tuple:
    """The part of an ``H x W`` frame that a resize(shortest edge) + center-crop image processor keeps,
    in original pixels. Falls back to the whole frame when the processor does not crop."""
    size = getattr(ip, "size", None)
    short = getattr(size, "shortest_edge", None) if size is not None else None
    if short is None and isinstance(size, dict):
        short = size.get("shortest_edge")
    if not getattr(ip, "do_center_crop", False) or not short:
        return (0.0, 0.0, float(H), float(W))
    s = float(short) / min(H, W)
    rh, rw = H * s, W * s
    top, left = (rh - out_h) / 2, (rw - out_w) / 2
    return (top / s, left / s, (top + out_h) / s, (left + out_w) / s)
