"""Tiny random-initialised checkpoints of the real VLM families, built offline from configs.

Each builder writes a complete Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer
files, image-processor and processor configs, chat template) so ``emolens.models.hf.load_hf(folder)``
exercises exactly the path a downloaded checkpoint takes. Nothing is fetched: the tokenizer is a small
BPE trained here on the prompt vocabulary (byte-level for the Qwen-based families, SentencePiece-style
Metaspace with a BOS post-processor for LLaVA/Llama), carrying the family's special tokens; the image
processor is the family's PIL class constructed from defaults scaled down to 32-64 px inputs.

Sizes: text hidden 64, 2 layers, 4 query heads / 2 KV heads (GQA), vision towers of width 32 with
2 layers. Each build + save takes well under a second on a CPU once transformers is imported.

    from tests.hf_checkpoints import build_tiny
    folder = build_tiny("qwen2_vl", tmp_path / "qwen2_vl")
"""
from __future__ import annotations

import json
import string
from pathlib import Path

FAMILIES = ("llava", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl")

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)

# subtitles and words the tests use (anything else still tokenises: byte-level never fails, and the
# Metaspace vocabulary covers every printable ASCII character)
SUBTITLES = (
    "I can't believe you did that!",
    "Fine.",
    "Well, I suppose it is a nice day after all, isn't it?",
    "Leave me alone, I am so angry right now.",
    "This is the happiest day of my life.",
    "I miss her so much.",
)
EMOTIONS = ("anger", "happiness", "sadness", "neutral", "surprise", "fear", "disgust", "worry",
            "positive", "negative")

# ----------------------------------------------------------------------------- chat templates
# Shapes follow the public checkpoints' templates (llava-hf/llava-1.5, Qwen2-VL-Instruct,
# Qwen3-VL-Instruct, InternVL3-hf), trimmed to the user/assistant turns emolens renders.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
QWEN2_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN3_TEMPLATE = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{ message['content'] }}{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif content['type'] == 'text' %}{{ content['text'] }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{ '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


def _corpus() -> list:
    from emolens.prompts import coarse_query, fine_query, vocabulary

    lines = [" ".join(vocabulary())]
    for labels in (EMOTIONS[:3], EMOTIONS[:4], EMOTIONS[:8]):
        lines.append(fine_query(list(labels), foe=True, cot=True, ambiguity="The emotion may be positive or negative.").text)
    lines.append(coarse_query({"positive": ["happiness"], "negative": ["anger", "sadness"]}).text)
    lines += [f'Subtitle: "{s}"' for s in SUBTITLES]
    lines += [" ".join(EMOTIONS), "USER: ASSISTANT: user assistant system You are a helpful assistant.",
              " ".join(f"{c}. {c}" for c in string.ascii_uppercase), "Frame1: Frame2: seconds 0.5 1.0 2.0",
              " ".join(string.printable.strip()), "\n\n"]
    return lines * 3


def _bpe(specials, *, metaspace: bool, vocab_size: int = 700):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if metaspace:  # Llama / SentencePiece-style: "▁word", BOS added by the post-processor
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    else:  # Qwen2-style byte-level BPE, no BOS
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    if metaspace:
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", bos)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _fast(tok, **kw):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=4096, **kw)


def _qwen_tokenizer(extra=None):
    tok = _bpe(QWEN_SPECIALS + list((extra or {}).values()), metaspace=False)
    kw = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>")
    if extra:
        kw["extra_special_tokens"] = dict(extra)
    return _fast(tok, **kw)


def _vocab(tokenizer) -> int:
    n = len(tokenizer)
    return (n + 63) // 64 * 64  # padded embedding rows, as real checkpoints have


def _torch_seed(seed):
    import torch

    torch.manual_seed(seed)


def _save(model, processor, folder) -> str:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def _save_parts(model, tokenizer, image_processor, chat_template, processor_class, folder, **extra) -> str:
    """What ``processor.save_pretrained`` writes, without building the processor object: the Qwen and
    InternVL processor classes insist on a video processor, which needs torchvision (absent here)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cfg = {"image_processor": image_processor.to_dict(), "processor_class": processor_class, **extra}
    (folder / "processor_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (folder / "chat_template.jinja").write_text(chat_template)
    return str(folder)


# ----------------------------------------------------------------------------- families
def build_llava(folder, seed: int = 0) -> str:
    """LLaVA-1.5 shape: CLIP ViT (32 px, patch 8 -> 16 patch tokens + CLS, 'default' drops CLS),
    Llama decoder, Metaspace BPE with <s> BOS and an ``<image>`` placeholder."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    _torch_seed(seed)
    tok = _fast(_bpe(["<unk>", "<s>", "</s>", "<pad>", "<image>"], metaspace=True),
                bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                extra_special_tokens={"image_token": "<image>"})
    image_token_id = tok.convert_tokens_to_ids("<image>")
    cfg = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
                           projection_dim=32),
        text_config=dict(model_type="llama", vocab_size=_vocab(tok), head_dim=16, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **TEXT),
        image_token_index=image_token_id, image_seq_length=16, vision_feature_layer=-2,
        vision_feature_select_strategy="default", pad_token_id=tok.pad_token_id,
    )
    model = LlavaForConditionalGeneration(cfg).eval()
    ip = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE, image_token="<image>")
    return _save(model, proc, folder)


def _qwen_image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    # patch 4, merge 2 -> factor 8: a 32x32 frame gives an 8x8 patch grid = 16 merged tokens
    return Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                    size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64})


def _qwen_ids(tok) -> dict:
    c = tok.convert_tokens_to_ids
    return dict(image_token_id=c("<|image_pad|>"), video_token_id=c("<|video_pad|>"),
                vision_start_token_id=c("<|vision_start|>"), vision_end_token_id=c("<|vision_end|>"))


def _qwen_text(tok, **extra) -> dict:
    return dict(vocab_size=_vocab(tok), bos_token_id=None, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, **TEXT, **extra)


def build_qwen2_vl(folder, seed: int = 0) -> str:
    """Qwen2-VL shape: ViT with 3-D patches (patch 4, temporal 2, merge 2), M-RoPE decoder, tied embeddings."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    _torch_seed(seed)
    tok = _qwen_tokenizer()
    cfg = Qwen2VLConfig(
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=2),
        text_config=_qwen_text(tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                     "mrope_section": [2, 3, 3]}),
        tie_word_embeddings=True, **_qwen_ids(tok),
    )
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    return _save_parts(model, tok, _qwen_image_processor(), QWEN2_TEMPLATE, "Qwen2VLProcessor", folder)


def build_qwen2_5_vl(folder, seed: int = 0) -> str:
    """Qwen2.5-VL shape: windowed ViT (window 16 px = 2 merged tokens, full attention in block 1)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    _torch_seed(seed)
    tok = _qwen_tokenizer()
    cfg = Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2, window_size=16,
                           fullatt_block_indexes=[1], tokens_per_second=2),
        text_config=_qwen_text(tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                     "mrope_section": [2, 3, 3]}),
        **_qwen_ids(tok),
    )
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    return _save_parts(model, tok, _qwen_image_processor(), QWEN2_TEMPLATE, "Qwen2_5_VLProcessor", folder)


def build_qwen3_vl(folder, seed: int = 0) -> str:
    """Qwen3-VL shape: ViT with learned position grid and DeepStack, interleaved M-RoPE, q/k-norm decoder."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    _torch_seed(seed)
    tok = _qwen_tokenizer()
    cfg = Qwen3VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                           deepstack_visual_indexes=[0]),
        text_config=_qwen_text(tok, head_dim=16, rope_parameters={
            "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True}),
        **_qwen_ids(tok),
    )
    model = Qwen3VLForConditionalGeneration(cfg).eval()
    return _save_parts(model, tok, _qwen_image_processor(), QWEN3_TEMPLATE, "Qwen3VLProcessor", folder)


def build_internvl(folder, seed: int = 0) -> str:
    """InternVL3-hf shape: InternViT (64 px tile, patch 8 -> 8x8, pixel-shuffle 0.5 -> 16 tokens),
    Qwen2 decoder with tied embeddings, ``<img><IMG_CONTEXT>*16</img>`` per tile."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    _torch_seed(seed)
    extra = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}
    tok = _qwen_tokenizer(extra)
    cfg = InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=[64, 64], patch_size=[8, 8]),
        text_config=dict(model_type="qwen2", vocab_size=_vocab(tok), bos_token_id=None,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **TEXT),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=16, downsample_ratio=0.5,
        vision_feature_layer=-1, vision_feature_select_strategy="default", tie_word_embeddings=True,
    )
    model = InternVLForConditionalGeneration(cfg).eval()
    ip = GotOcr2ImageProcessorPil(size={"height": 64, "width": 64}, crop_to_patches=False, max_patches=4)
    return _save_parts(model, tok, ip, INTERNVL_TEMPLATE, "InternVLProcessor", folder, image_seq_length=16)


BUILDERS = {"llava": build_llava, "qwen2_vl": build_qwen2_vl, "qwen2_5_vl": build_qwen2_5_vl,
            "qwen3_vl": build_qwen3_vl, "internvl": build_internvl}


def build_tiny(family: str, folder, seed: int = 0) -> str:
    """Build and save a tiny ``family`` checkpoint (one of :data:`FAMILIES`) into ``folder``."""
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
    return BUILDERS[family](folder, seed=seed)
