"""emolens-tiny: a small LLaVA-shaped multimodal LM trained here on the emotion world.

Architecture (all transformers parts, no vendored model code):

* vision: each 4x4 RGB patch of each frame -> a 2-layer MLP -> hidden, plus learned frame, row and
  column embeddings. A visual token sees only its own 16 pixels, so which tokens carry the emotion
  is exactly the ground truth the world knows (the glyph's patches); combining them is left to the
  decoder's attention, which is what the methods act on.
* audio: the world's prosody vector ``[F]`` -> MLP -> ``audio_tokens`` tokens (default 1, mirroring
  Emotion-LLaMA's 1 audio token that MoSEAR blames for audio bias).
* decoder: a Qwen3 decoder (GQA, q/k norm, RoPE) built from a config: ``Qwen3Model`` + an untied
  ``lm_head`` (untied so safetensors round-trips without tied-weight special cases).

The processor (:class:`TinyProcessor`) lays a sample out as::

    <bos> <image> x (T*64) <audio> x A Subtitle : <words...> <sep> <prompt words...>

and the model predicts the answer letter as the next token.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, GenerationMixin, PreTrainedConfig, PreTrainedModel
try:  # transformers >= 5.2x declares sub-configs by spec; older 5.x builds them in __post_init__
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # pragma: no cover - exercised on the GPU machine's transformers 5.17
    SubConfigSpec = None
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..compat import cache_kw, output_cache
from ..layout import TokenLayout
from ..prompts import WORD_PATTERN
from .base import Batch

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>", "<sep>", "<image>", "<audio>"]
PATCH = 8


class EmolensTinyConfig(PreTrainedConfig):
    """Config of emolens-tiny. ``text_config`` is a Qwen3 config (the decoder)."""

    model_type = "emolens_tiny"
    if SubConfigSpec is not None:
        sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen3")}
    else:  # pragma: no cover - older transformers (see the import)
        sub_configs = {"text_config": AutoConfig}

        def __post_init__(self, **kwargs):
            from transformers import CONFIG_MAPPING

            if isinstance(self.text_config, dict):
                tc = dict(self.text_config)
                self.text_config = CONFIG_MAPPING[tc.pop("model_type", "qwen3")](**tc)
            elif self.text_config is None:
                self.text_config = CONFIG_MAPPING["qwen3"]()
            super().__post_init__(**kwargs)

    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 5
    audio_token_id: int = 6
    patch_size: int = PATCH
    image_size: int = 32
    max_frames: int = 4
    audio_dim: int = 8
    audio_tokens: int = 1
    vision_hidden: int = 128
    vision_encoder: str = "mlp"
    tie_word_embeddings: bool = False
    #: how answers are read (``LoadedModel.verbalizer``): "letter" (recipe v1) or "word" (recipe v2's
    #: pretraining names answers; see the model card)
    verbalizer: str = "letter"


class PatchEncoder(nn.Module):
    """``[N_frames, 3, S, S]`` float in [0, 1] -> ``[N_frames, (S/p)^2, hidden]`` visual tokens.

    ``vision_encoder="conv"`` (the shipped model): two 3x3 convolutions then a p x p stride-p patch
    convolution, so token i sees its own p x p patch plus a 2-pixel margin (receptive field p + 4);
    translation-equivariant features make the glyph learnable in minutes on a CPU. ``"mlp"``: a
    per-patch MLP (a token sees exactly its own pixels).
    """

    def __init__(self, cfg: EmolensTinyConfig, hidden: int):
        super().__init__()
        p, g = cfg.patch_size, cfg.image_size // cfg.patch_size
        self.p, self.g = p, g
        self.kind = cfg.vision_encoder
        c = cfg.vision_hidden
        if self.kind == "conv":
            self.conv = nn.Sequential(nn.Conv2d(3, c // 4, 3, padding=1), nn.GELU(), nn.Conv2d(c // 4, c // 2, 3, padding=1),
                                      nn.GELU(), nn.Conv2d(c // 2, hidden, p, stride=p))
        elif self.kind == "mlp":
            self.mlp = nn.Sequential(nn.Linear(3 * p * p, c), nn.GELU(), nn.Linear(c, hidden))
        else:
            raise ValueError(f"vision_encoder must be 'conv' or 'mlp', got {self.kind!r}")
        self.row = nn.Embedding(g, hidden)
        self.col = nn.Embedding(g, hidden)
        self.frame = nn.Embedding(cfg.max_frames, hidden)

    def forward(self, pixel_values: torch.Tensor, frame_index: torch.Tensor) -> torch.Tensor:
        n, c, s, _ = pixel_values.shape
        p, g = self.p, self.g
        if self.kind == "conv":
            x = self.conv(pixel_values).flatten(2).transpose(1, 2)  # [n, g*g, hidden], row-major
        else:
            x = pixel_values.reshape(n, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, c * p * p)
            x = self.mlp(x)
        rows = torch.arange(g, device=x.device).repeat_interleave(g)
        cols = torch.arange(g, device=x.device).repeat(g)
        return x + self.row(rows)[None] + self.col(cols)[None] + self.frame(frame_index)[:, None]


class EmolensTinyForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """LLaVA-shaped: media encoders fill the ``<image>``/``<audio>`` placeholder embeddings, a Qwen3
    decoder reads ``inputs_embeds``. Inputs: ``input_ids [B, L]``, ``attention_mask [B, L]``,
    ``pixel_values [N_frames, 3, S, S]`` (frames of all samples in order), ``frame_index [N_frames]``,
    ``audio_values [N_audio, F]``."""

    config_class = EmolensTinyConfig
    base_model_prefix = ""
    _supports_sdpa = True
    _supports_attention_backend = True
    _supports_flash_attn = False
    _skip_keys_device_placement = ["past_key_values", "cache"]

    def __init__(self, config: EmolensTinyConfig):
        super().__init__(config)
        from transformers import Qwen3Model

        tc = config.text_config
        self.language_model = Qwen3Model(tc)
        self.vision = PatchEncoder(config, tc.hidden_size)
        h = tc.hidden_size
        self.audio = nn.Sequential(nn.Linear(config.audio_dim, h), nn.GELU(), nn.Linear(h, h * config.audio_tokens))
        self.lm_head = nn.Linear(h, tc.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value):
        self.language_model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def embed(self, input_ids, pixel_values=None, frame_index=None, audio_values=None) -> torch.Tensor:
        """``[B, L]`` ids -> ``[B, L, hidden]`` embeddings with media placeholders filled."""
        emb = self.language_model.embed_tokens(input_ids)
        cfg = self.config
        # generate() keeps passing media kwargs on decode steps (only pixel_values is dropped by
        # transformers): media are embedded only where the ids hold their placeholders.
        if pixel_values is not None and bool((input_ids == cfg.image_token_id).any()):
            if frame_index is None:
                frame_index = torch.zeros(pixel_values.shape[0], dtype=torch.long, device=pixel_values.device)
            vis = self._vision_features(pixel_values.to(emb.dtype), frame_index).reshape(-1, emb.shape[-1])
            m = input_ids == cfg.image_token_id
            if int(m.sum()) != vis.shape[0]:
                raise ValueError(f"{int(m.sum())} <image> tokens but {vis.shape[0]} visual features; encode inputs with the emolens-tiny processor")
            emb = emb.masked_scatter(m[..., None], vis.to(emb.dtype))
        if audio_values is not None and bool((input_ids == cfg.audio_token_id).any()):
            aud = self.audio(audio_values.to(emb.dtype)).reshape(-1, emb.shape[-1])
            m = input_ids == cfg.audio_token_id
            if int(m.sum()) != aud.shape[0]:
                raise ValueError(f"{int(m.sum())} <audio> tokens but {aud.shape[0]} audio features; encode inputs with the emolens-tiny processor")
            emb = emb.masked_scatter(m[..., None], aud.to(emb.dtype))
        return emb

    #: frames whose features are kept for reuse in CPU inference (~32 KB each)
    VISION_CACHE_SIZE = 8192

    def _vision_features(self, pixel_values: torch.Tensor, frame_index: torch.Tensor) -> torch.Tensor:
        """``[N, 3, S, S]`` frames, ``[N]`` frame positions -> ``[N, g*g, hidden]`` patch features.

        CPU inference encodes each frame on its own and keeps its features for reuse: a notebook scores the
        same clips under many methods, all of which act after the encoder, and on CPU the conv encoder is
        about 40 % of a zero-shot forward. One frame at a time makes a frame's features a function of that
        frame alone (a batched conv may differ in the last bits with the batch's size), so a cached and a
        fresh call return identical tensors and results never depend on what ran before. The cache is
        emptied whenever a vision weight changes in place (optimizer steps and load_state_dict bump torch's
        version counters); autograd on, train mode and non-CPU devices use the batched encoder directly."""
        if torch.is_grad_enabled() or self.training or pixel_values.device.type != "cpu":
            return self.vision(pixel_values, frame_index)
        import hashlib
        from collections import OrderedDict

        state = (pixel_values.dtype,) + tuple(p._version for p in self.vision.parameters())
        cache = getattr(self, "_vis_cache", None)
        if cache is None or self._vis_state != state:
            cache = self._vis_cache = OrderedDict()
            self._vis_state = state
        px = pixel_values.contiguous()
        out = []
        for i in range(px.shape[0]):
            key = (hashlib.blake2b(px[i].view(torch.uint8).numpy().tobytes(), digest_size=16).digest(),  # any dtype (bf16 too)
                   int(frame_index[i]))
            feat = cache.get(key)
            if feat is None:
                feat = cache[key] = self.vision(px[i:i + 1], frame_index[i:i + 1])[0]
                if len(cache) > self.VISION_CACHE_SIZE:
                    cache.popitem(last=False)
            else:
                cache.move_to_end(key)
            out.append(feat)
        return torch.stack(out)

    def forward(self, input_ids=None, pixel_values=None, frame_index=None, audio_values=None, attention_mask=None,
                position_ids=None, past_key_values=None, inputs_embeds=None, labels=None, use_cache=None,
                logits_to_keep: int = 0, cache=None, **kwargs):
        """The KV cache comes as ``cache`` (transformers >= 5.24) or ``past_key_values`` (before); it is
        handed to the decoder under the one name the installed version takes (emolens.compat)."""
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, pixel_values, frame_index, audio_values)
        kv = cache if cache is not None else past_key_values
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                                  use_cache=use_cache, **{cache_kw(): kv}, **kwargs)
        h = out.last_hidden_state
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                               labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{cache_kw(): output_cache(out)})


AutoConfig.register("emolens_tiny", EmolensTinyConfig, exist_ok=True)


# ---------------------------------------------------------------------------------------------
# Tokenizer and processor
# ---------------------------------------------------------------------------------------------

def build_tokenizer(words: Sequence[str]):
    """A word-level fast tokenizer over ``words`` (case kept; see emolens.prompts.split_words)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in sorted(set(words)):
        if w not in vocab:
            vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"<[a-z]+>"), behavior="isolated"),
        pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated"),
        pre_tokenizers.WhitespaceSplit(),
    ])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", sep_token="<sep>", additional_special_tokens=["<image>", "<audio>"])
    fast.padding_side = "left"
    return fast


class TinyProcessor:
    """Turns ``Sample`` + ``Prompt`` into emolens-tiny inputs and a :class:`TokenLayout` per row.

    Sequence: ``<bos> <image>*(T*g*g) <audio>*A Subtitle : <subtitle words> <sep> <prompt>``.
    ``Subtitle :`` and ``<sep>`` are instruction (template) tokens; the subtitle's words are content.
    Batches are left-padded.
    """

    def __init__(self, tokenizer, config: EmolensTinyConfig):
        self.tokenizer = tokenizer
        self.config = config
        self.grid = config.image_size // config.patch_size

    # -- text pieces ---------------------------------------------------------------------------
    def _ids(self, text: str) -> tuple[list, list]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], enc["offset_mapping"]

    def frames_tensor(self, frames: np.ndarray) -> torch.Tensor:
        """``[T, H, W, 3]`` uint8 -> ``[T, 3, S, S]`` float in [0, 1] (resized when H, W != S)."""
        f = np.asarray(frames)
        s = self.config.image_size
        if f.shape[1] != s or f.shape[2] != s:
            from PIL import Image

            f = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(x)).resize((s, s), Image.BILINEAR)) for x in f])
        t = f.shape[0]
        if t > self.config.max_frames:  # uniform subsample
            f = f[np.linspace(0, t - 1, self.config.max_frames).round().astype(int)]
        return torch.from_numpy(np.ascontiguousarray(f)).permute(0, 3, 1, 2).float() / 255.0

    def encode_one(self, sample, prompt) -> tuple[list, TokenLayout, torch.Tensor, Optional[torch.Tensor]]:
        tk, cfg = self.tokenizer, self.config
        ids: list = [tk.bos_token_id]
        instruction: list = [0]
        pix = self.frames_tensor(sample.frames)
        n_frames = pix.shape[0]
        nv = n_frames * self.grid * self.grid
        visual = list(range(len(ids), len(ids) + nv))
        ids += [cfg.image_token_id] * nv
        audio_vals = None
        audio = []
        if sample.audio is not None:
            if sample.audio_kind != "features" or np.asarray(sample.audio).shape[-1] != cfg.audio_dim:
                raise ValueError(
                    f"emolens-tiny takes {cfg.audio_dim} prosody features as audio, got {sample.audio_kind} of shape "
                    f"{np.asarray(sample.audio).shape}; use the emotion world or drop the audio (--world audio=false, or "
                    f"load_dataset(..., audio=False))")
            audio = list(range(len(ids), len(ids) + cfg.audio_tokens))
            ids += [cfg.audio_token_id] * cfg.audio_tokens
            audio_vals = torch.as_tensor(np.asarray(sample.audio, dtype=np.float32))[None]
        head, _ = self._ids("Subtitle :")
        instruction += list(range(len(ids), len(ids) + len(head)))
        ids += head
        sub_ids, _ = self._ids(sample.subtitle or "")
        content = list(range(len(ids), len(ids) + len(sub_ids)))
        ids += sub_ids
        instruction.append(len(ids))
        ids.append(tk.sep_token_id)
        p_ids, p_off = self._ids(prompt.text)
        start = len(ids)
        instruction += list(range(start, start + len(p_ids)))
        ids += p_ids
        spans = {}
        for name, (a, b) in prompt.span_chars().items():
            spans[name] = [start + j for j, (s, e) in enumerate(p_off) if s >= a and e <= b and e > s]
        cue_v = None
        if sample.cue_mask is not None:
            # the ground truth on the model's patch grid: frames of another size are resized to image_size
            # (frames_tensor), so a patch covers (frame side / grid) pixels of the sample's own mask
            h, w = sample.cue_mask.shape[1:]
            if h % self.grid or w % self.grid:
                raise ValueError(f"sample {sample.uid}: its {h}x{w} cue mask does not tile this model's "
                                 f"{self.grid}x{self.grid} patch grid; render the world at {cfg.image_size} px")
            cue_v = sample.cue_patches(h // self.grid)[:n_frames].reshape(-1)
        cue_c = None
        if sample.subtitle_cue_words is not None:
            # the world's subtitles are single-token words: word k is content token k
            words = (sample.subtitle or "").split()
            cue_c = np.zeros(len(sub_ids), dtype=bool)
            if len(words) == len(sub_ids):
                cue_c[[k for k in sample.subtitle_cue_words if k < len(sub_ids)]] = True
        grid = np.stack(np.meshgrid(np.arange(n_frames), np.arange(self.grid), np.arange(self.grid), indexing="ij"), -1).reshape(-1, 3)
        layout = TokenLayout(seq_len=len(ids), visual=visual, visual_grid=grid, audio=audio, content=content,
                             instruction=instruction, spans=spans, answer=len(ids) - 1, cue_visual=cue_v,
                             cue_content=cue_c, options=dict(prompt.options))
        return ids, layout, pix, audio_vals

    def __call__(self, samples: Sequence, prompts: Sequence, device=None) -> Batch:
        rows = [self.encode_one(s, p) for s, p in zip(samples, prompts)]
        L = max(len(r[0]) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), L), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), L), dtype=torch.long)
        layouts, pix, fidx, aud = [], [], [], []
        for b, (ids, lay, px, av) in enumerate(rows):
            off = L - len(ids)
            input_ids[b, off:] = torch.tensor(ids)
            mask[b, off:] = 1
            layouts.append(lay.shifted(off).validate())
            pix.append(px)
            fidx.append(torch.arange(px.shape[0]))
            if av is not None:
                aud.append(av)
        inputs = {"input_ids": input_ids, "attention_mask": mask, "pixel_values": torch.cat(pix),
                  "frame_index": torch.cat(fidx)}
        if aud:
            inputs["audio_values"] = torch.cat(aud)
        if device is not None:
            inputs = {k: v.to(device) for k, v in inputs.items()}
        return Batch(inputs=inputs, layouts=layouts, prompts=list(prompts))

    def word_ids(self, labels: Sequence[str]) -> dict:
        """``{label: [ids]}``: the label word's token in each capitalisation the vocabulary has (the word
        verbalizer of a recipe-v2 emolens-tiny)."""
        out = {}
        unk = self.tokenizer.unk_token_id
        for lab in labels:
            ids = sorted({i for w in (lab, lab.lower(), lab.capitalize())
                          for i in [self.tokenizer.convert_tokens_to_ids(w)] if i is not None and i != unk})
            if not ids:
                raise ValueError(f"option label {lab!r} is not one word of the emolens-tiny vocabulary; the word "
                                 f"verbalizer needs one-word labels (use the world's labels)")
            out[lab] = ids
        return out

    def letter_ids(self, letters: Sequence[str]) -> dict:
        out = {}
        for L in letters:
            i = self.tokenizer.convert_tokens_to_ids(L)
            if i is None or i == self.tokenizer.unk_token_id:
                raise ValueError(f"option letter {L!r} is not in the emolens-tiny vocabulary")
            out[L] = [i]
        return out


def default_text_config(vocab_size: int, **over) -> dict:
    cfg = dict(vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=8,
               num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
               rms_norm_eps=1e-6, tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
               pad_token_id=0, bos_token_id=2, eos_token_id=3)
    cfg.update(over)
    return cfg


def build_model(tokenizer, *, seed: int = 0, image_size: int = 32, vision_encoder: str = "conv", audio_tokens: int = 1,
                **text_over) -> EmolensTinyForConditionalGeneration:
    from transformers import Qwen3Config

    torch.manual_seed(seed)
    tc = Qwen3Config(**default_text_config(len(tokenizer), **text_over))
    cfg = EmolensTinyConfig(text_config=tc, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                            audio_token_id=tokenizer.convert_tokens_to_ids("<audio>"), image_size=image_size,
                            vision_encoder=vision_encoder, audio_tokens=audio_tokens)
    cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = 0, 2, 3
    return EmolensTinyForConditionalGeneration(cfg)


def load_tiny(path: str | os.PathLike, device: torch.device, dtype: torch.dtype, attn_implementation: str = "sdpa"):
    """Load a saved emolens-tiny folder -> (model, TinyProcessor)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a 1-second load needs no progress bar on stderr
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no emolens-tiny checkpoint at {path} (config.json missing); retrain with `emolens train-tiny --out {path}`")
    tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    tok.padding_side = "left"
    model = EmolensTinyForConditionalGeneration.from_pretrained(str(path), dtype=dtype, attn_implementation=attn_implementation)
    model.to(device).eval()
    return model, TinyProcessor(tok, model.config)


def card_path(path: str | os.PathLike) -> Path:
    return Path(path) / "model_card.json"


def read_card(path) -> dict:
    p = card_path(path)
    return json.loads(p.read_text()) if p.is_file() else {}
