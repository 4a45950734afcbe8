"""Tiny random-initialised instances of the architectures emolens supports, built offline from configs.

Every builder returns ``(model, inputs, layouts)``:

* ``model``: the model in eval mode, float32, loaded with ``attn_implementation="sdpa"`` (the stock
  reference; tests switch it with :func:`emolens.attention.install`).
* ``inputs``: keyword arguments for ``model(**inputs)`` / ``model.generate(**inputs)``: a batch of 2
  rows, LEFT padded (row 1 carries ``PAD`` extra padding tokens), with image tokens and the media
  tensors the family needs (``pixel_values``, ``image_grid_thw``, ``mm_token_type_ids``).
* ``layouts``: one :class:`emolens.layout.TokenLayout` per row; visual positions are derived from the
  config's image token id, every other non-pad token is ``instruction``, and a ``q_pos`` span, a
  ``question`` span and an ``options`` span are marked inside the text after the image.

Sizes: hidden 32-64, 2-4 decoder layers, GQA (num_key_value_heads < num_attention_heads), vocab 128.
"""
from __future__ import annotations

import numpy as np
import torch

from emolens.layout import TokenLayout

VOCAB = 128
IMG = 100          # image token id used by every family here
VSTART, VEND = 101, 102
PAD_ID = 0
PAD = 3            # extra left padding of row 1
SEED = 0


def _text_ids(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(3, 90, (n,), generator=gen)


def _row(prefix: int, n_img: int, suffix: int, gen, vstart=False) -> torch.Tensor:
    parts = [_text_ids(prefix, gen)]
    if vstart:
        parts.append(torch.tensor([VSTART]))
    parts.append(torch.full((n_img,), IMG))
    if vstart:
        parts.append(torch.tensor([VEND]))
    parts.append(_text_ids(suffix, gen))
    return torch.cat(parts)


def _pad_batch(rows: list) -> tuple:
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, L - len(r):] = r
        mask[b, L - len(r):] = 1
    return ids, mask


def layouts_from_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int) -> list:
    """One TokenLayout per row: visual = positions holding the image token id; spans inside the text
    that follows the last visual token (q_pos: 2 tokens, question: 3 tokens, options: 2 tokens)."""
    out = []
    L = input_ids.shape[1]
    for b in range(input_ids.shape[0]):
        pad = int((attention_mask[b] == 0).sum())
        ids = input_ids[b].numpy()
        valid = np.arange(pad, L)
        visual = valid[ids[pad:] == image_token_id]
        instruction = valid[ids[pad:] != image_token_id]
        after = instruction[instruction > (visual.max() if visual.size else pad)]
        after = after[:-1]  # keep the answer position out of the spans
        spans = {"q_pos": after[:2], "question": after[2:5], "options": after[5:7]}
        out.append(TokenLayout(seq_len=L, pad=pad, visual=visual, instruction=instruction,
                               spans=spans, answer=L - 1))
    return out


def _finish(model, inputs, image_token_id):
    model.eval()
    layouts = layouts_from_ids(inputs["input_ids"], inputs["attention_mask"], image_token_id)
    for lay in layouts:
        lay.validate()
    return model, inputs, layouts


# --------------------------------------------------------------------------- text only
def qwen3_text(n_layers: int = 4, seed: int = SEED, lengths=(18, 15)):
    """Qwen3 causal LM with GQA (4 query heads, 2 kv heads); 'visual' = token id IMG in the ids."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                      tie_word_embeddings=False, pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2)
    model = Qwen3ForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    rows = [_row(4, lengths[0] - 10, 6, gen), _row(4, lengths[1] - 10, 6, gen)]
    ids, mask = _pad_batch(rows)
    return _finish(model, {"input_ids": ids, "attention_mask": mask}, IMG)


# --------------------------------------------------------------------------- LLaVA
def llava(text: str = "llama", seed: int = SEED):
    """LLaVA with a tiny CLIP tower (image 16, patch 4 -> 16 image tokens) and Llama or Qwen2 text."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vcfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            image_size=16, patch_size=4, projection_dim=32)
    tkw = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
               pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2)
    if text == "llama":
        from transformers import LlamaConfig
        tcfg = LlamaConfig(**tkw)
    else:
        from transformers import Qwen2Config
        tcfg = Qwen2Config(**tkw)
    cfg = LlavaConfig(vision_config=vcfg, text_config=tcfg, image_token_index=IMG, image_seq_length=16,
                      vision_feature_layer=-2, vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    rows = [_row(3, 16, 6, gen), _row(3, 16, 6 - PAD, gen)]
    ids, mask = _pad_batch(rows)
    pixel_values = torch.randn(2, 3, 16, 16, generator=gen)
    return _finish(model, {"input_ids": ids, "attention_mask": mask, "pixel_values": pixel_values},
                   cfg.image_token_id)


# --------------------------------------------------------------------------- Qwen-VL family
def _qwen_vl_inputs(cfg, gen, grids):
    """Rows with <vision_start> IMG* <vision_end>, pixel_values of the flattened patches,
    image_grid_thw and mm_token_type_ids (1 on image tokens)."""
    vc = cfg.vision_config
    merge = vc.spatial_merge_size
    n_tok = [int(t * h * w) // merge ** 2 for (t, h, w) in grids]
    rows = [_row(3, n_tok[0], 6, gen, vstart=True), _row(3, n_tok[1], 6 - PAD, gen, vstart=True)]
    ids, mask = _pad_batch(rows)
    patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
    n_patches = sum(int(t * h * w) for (t, h, w) in grids)
    pixel_values = torch.randn(n_patches, patch_dim, generator=gen)
    mm = (ids == cfg.image_token_id).int()
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixel_values,
            "image_grid_thw": torch.tensor(grids, dtype=torch.long), "mm_token_type_ids": mm}


_QWEN_TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2)
_QWEN_IDS = dict(image_token_id=IMG, video_token_id=103, vision_start_token_id=VSTART,
                 vision_end_token_id=VEND)
_GRIDS = [(1, 4, 4), (1, 4, 6)]  # -> 4 and 6 image tokens after the 2x2 merge


def qwen2_vl(seed: int = SEED):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    cfg = Qwen2VLConfig(
        text_config=dict(**_QWEN_TEXT, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                        "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=2,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        **_QWEN_IDS)
    model = Qwen2VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    return _finish(model, _qwen_vl_inputs(cfg, gen, _GRIDS), cfg.image_token_id)


def qwen2_5_vl(seed: int = SEED):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(**_QWEN_TEXT, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                        "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=2, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           window_size=8, fullatt_block_indexes=[1]),
        **_QWEN_IDS)
    model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    return _finish(model, _qwen_vl_inputs(cfg, gen, _GRIDS), cfg.image_token_id)


def qwen3_vl(seed: int = SEED):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(seed)
    cfg = Qwen3VLConfig(
        text_config=dict(**_QWEN_TEXT, head_dim=16,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [4, 2, 2], "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=2, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           num_position_embeddings=16, deepstack_visual_indexes=[0]),
        **_QWEN_IDS)
    model = Qwen3VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    return _finish(model, _qwen_vl_inputs(cfg, gen, _GRIDS), cfg.image_token_id)


# --------------------------------------------------------------------------- InternVL
def internvl(seed: int = SEED):
    """InternVL with a tiny InternViT (image 16, patch 4 -> 16 patches -> 4 tokens after pixel shuffle)."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    torch.manual_seed(seed)
    cfg = InternVLConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           image_size=[16, 16], patch_size=[4, 4]),
        text_config=dict(model_type="qwen2", **_QWEN_TEXT),
        image_token_id=IMG, image_seq_length=4, downsample_ratio=0.5)
    model = InternVLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    rows = [_row(3, 4, 6, gen), _row(3, 4, 6 - PAD, gen)]
    ids, mask = _pad_batch(rows)
    pixel_values = torch.randn(2, 3, 16, 16, generator=gen)
    return _finish(model, {"input_ids": ids, "attention_mask": mask, "pixel_values": pixel_values},
                   cfg.image_token_id)


BUILDERS = {
    "qwen3_text": qwen3_text,
    "llava_llama": lambda: llava("llama"),
    "llava_qwen2": lambda: llava("qwen2"),
    "qwen2_vl": qwen2_vl,
    "qwen2_5_vl": qwen2_5_vl,
    "qwen3_vl": qwen3_vl,
    "internvl": internvl,
}
