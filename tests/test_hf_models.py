"""The real-family adapter (emolens.models.hf) on tiny random-initialised checkpoints saved to disk.

For each of LLaVA, Qwen2-VL, Qwen2.5-VL, Qwen3-VL and InternVL: build a tiny checkpoint with a working
tokenizer / image processor / chat template (tests/hf_checkpoints.py), ``load_hf(folder)``, encode a
left-padded batch of two world-like samples with a fine query, run the forward, and check every
layout against the token ids and the tokenizer's decoding. Also: the load errors (missing path,
unsupported model_type, missing image token id), option letters, LLaVA parity with the HF
processor, and the Qwen video patch layout.
"""
from __future__ import annotations

import functools
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hf_checkpoints as ck  # noqa: E402

from emolens.models.hf import QWEN, load_hf  # noqa: E402
from emolens.prompts import fine_query  # noqa: E402
from emolens.sample import Sample  # noqa: E402

LABELS = ["anger", "happiness", "sadness"]
LONG = "Leave me alone, I am so angry right now."
SHORT = "Fine."


@pytest.fixture(scope="module")
def ckdir(tmp_path_factory):
    return tmp_path_factory.mktemp("hf_ck")


@functools.lru_cache(maxsize=None)
def _folder(root: str, family: str) -> str:
    return ck.build_tiny(family, Path(root) / family)


@functools.lru_cache(maxsize=None)
def _loaded(root: str, family: str):
    return load_hf(_folder(root, family))


def world_like(uid: str, frames: int, subtitle: str, cue_words=None, seed: int = 0, hw=(32, 32)) -> Sample:
    """A clip like the emotion world's: plain background, a yellow 'face' square, its cue mask."""
    rng = np.random.default_rng(seed)
    h, w = hw
    f = np.empty((frames, h, w, 3), np.uint8)
    f[:] = rng.integers(40, 90, 3, dtype=np.uint8)
    f = np.clip(f.astype(int) + rng.normal(0, 2, f.shape), 0, 255).astype(np.uint8)
    cue = np.zeros((frames, h, w), bool)
    cue[:, 3:10, 18:26] = True  # rows 3-9, cols 18-25
    f[cue] = (230, 200, 40)
    return Sample(uid=uid, frames=f, subtitle=subtitle, cue_mask=cue, subtitle_cue_words=cue_words,
                  label="anger", audio=np.zeros(8, np.float32), audio_kind="features")


def _norm(s: str) -> str:
    return " ".join(s.split())


def _decodes_to(tok, ids, text: str) -> bool:
    """The tokens decode to ``text`` up to whitespace and one boundary token's stray punctuation."""
    got = _norm(tok.decode(ids))
    want = _norm(text)
    return want in got and len(got) - len(want) <= 2


@pytest.fixture(scope="module")
def encoded(ckdir):
    out = {}
    prompt = fine_query(LABELS)
    for fam in ck.FAMILIES:
        lm = _loaded(str(ckdir), fam)
        samples = [world_like("w/0", 2, LONG, cue_words=[6], seed=0),  # "angry"
                   world_like("w/1", 1, SHORT, seed=1)]
        batch = lm.encode(samples, [prompt, prompt])
        with torch.no_grad():
            logits = lm.model(**batch.inputs).logits
        out[fam] = (lm, samples, prompt, batch, logits)
    return out


# ----------------------------------------------------------------------------- per family
@pytest.mark.parametrize("family", ck.FAMILIES)
def test_forward_and_layouts(encoded, family):
    lm, samples, prompt, batch, logits = encoded[family]
    tok = lm.processor.tokenizer
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    B, L = ids.shape
    assert lm.family == family and lm.model.training is False
    assert logits.shape[:2] == (B, L) and torch.isfinite(logits).all()
    vis_ids = [lm.info["image_token_id"]] + ([lm.info["video_token_id"]] if lm.info["video_token_id"] is not None else [])
    assert sum(lay.pad for lay in batch.layouts) > 0, "subtitles of different lengths must left-pad one row"
    for b, (lay, s) in enumerate(zip(batch.layouts, samples)):
        lay.validate(L)
        row = ids[b].numpy()
        assert lay.seq_len == L and (mask[b, :lay.pad] == 0).all() and (mask[b, lay.pad:] == 1).all()
        np.testing.assert_array_equal(lay.visual, np.flatnonzero(np.isin(row, vis_ids)))
        assert lay.visual.size > 0 and lay.audio.size == 0  # audio: not an input of these families
        # visual / content / instruction partition the non-pad positions
        parts = np.concatenate([lay.visual, lay.content, lay.instruction])
        np.testing.assert_array_equal(np.sort(parts), np.arange(lay.pad, L))
        assert lay.answer == L - 1 and lay.options == prompt.options
        # the subtitle and every prompt span decode back to their text
        assert _decodes_to(tok, row[lay.content], s.subtitle), tok.decode(row[lay.content])
        spans = prompt.span_chars()
        assert set(lay.spans) == set(spans)
        for name, (a, e) in spans.items():
            assert np.isin(lay.spans[name], lay.instruction).all()
            assert _decodes_to(tok, row[lay.spans[name]], prompt.text[a:e]), (name, tok.decode(row[lay.spans[name]]))
        # grid and ground truth
        assert lay.visual_grid is not None and lay.visual_grid.shape == (lay.visual.size, 3)
        assert lay.visual_grid[:, 0].max() < s.frames.shape[0]
        assert lay.cue_visual is not None and lay.cue_visual.shape == lay.visual.shape
        assert 0 < lay.cue_visual.sum() < lay.visual.size
    # the cue word "angry" of row 0 is marked among its content tokens; row 1 has no ground truth
    lay0 = batch.layouts[0]
    marked = ids[0].numpy()[lay0.content[lay0.cue_content]]
    assert _norm(tok.decode(marked)) == "angry"
    assert batch.layouts[1].cue_content is None


@pytest.mark.parametrize("family", ck.FAMILIES)
def test_cue_lies_on_the_glyph(encoded, family):
    """Cue tokens sit where the glyph is: top rows, right half of the frame."""
    lm, samples, prompt, batch, logits = encoded[family]
    lay = batch.layouts[1]  # the single image
    g = lay.visual_grid
    rows, cols = g[:, 1].max() + 1, g[:, 2].max() + 1
    on = g[lay.cue_visual]
    assert (on[:, 1] < max(1, rows // 2) + 1).all() and (on[:, 2] >= cols // 2).all()


@pytest.mark.parametrize("family", ck.FAMILIES)
def test_attention_and_weights(ckdir, family):
    from safetensors.torch import load_file

    from emolens.attention import attn_implementation

    lm = _loaded(str(ckdir), family)
    model = lm.model
    assert attn_implementation(model) == "emolens"
    vis = model.config.vision_config
    assert vis._attn_implementation == "sdpa"
    assert lm.device.type == "cpu" and lm.dtype == torch.float32 and lm.num_layers == 2
    # weights come from the file, not a fresh init; tied heads stay tied
    sd = load_file(str(Path(_folder(str(ckdir), family)) / "model.safetensors"))
    emb = model.get_input_embeddings().weight
    key = next(k for k in sd if k.endswith("embed_tokens.weight"))
    torch.testing.assert_close(emb.detach(), sd[key])
    if model.config.tie_word_embeddings:
        assert torch.equal(model.get_output_embeddings().weight, emb)


@pytest.mark.parametrize("family", ck.FAMILIES)
def test_option_letters(encoded, family):
    lm = encoded[family][0]
    tok = lm.processor.tokenizer
    got = lm.option_token_ids(["A", "B", "C"])
    assert set(got) == {"A", "B", "C"}
    for letter, ids in got.items():
        assert ids and all(tok.decode([i]).strip() == letter for i in ids)
        for v in (letter, " " + letter):
            enc = tok.encode(v, add_special_tokens=False)
            if len(enc) == 1:
                assert enc[0] in ids
    assert len({i for v in got.values() for i in v}) == sum(len(v) for v in got.values())
    with pytest.raises(ValueError, match="not a single token"):
        lm.option_token_ids(["\u03a9\u03a9\u03a9"])


@pytest.mark.parametrize("family", QWEN)
def test_qwen_mm_token_type_ids(encoded, family):
    lm, samples, prompt, batch, logits = encoded[family]
    ids, tt = batch.inputs["input_ids"], batch.inputs["mm_token_type_ids"]
    img, vid = lm.info["image_token_id"], lm.info["video_token_id"]
    assert tt.shape == ids.shape
    assert torch.equal(tt == 1, ids == img) and torch.equal(tt == 2, ids == vid)
    assert (tt[ids != img] != 1).all() and set(tt.unique().tolist()) == {0, 1, 2}
    # row 0 (two frames) is a video, row 1 (one frame) an image
    assert (ids[0] == vid).any() and not (ids[0] == img).any() and (ids[1] == img).any()
    assert batch.inputs["video_grid_thw"].tolist() == [[1, 8, 8]]
    if family == "qwen3_vl":
        assert "seconds>" in lm.processor.tokenizer.decode(ids[0])


def test_emolens_attention_matches_sdpa(ckdir, encoded):
    """With no intervention the emolens text attention gives the stock SDPA logits (M-RoPE, padding)."""
    lm, samples, prompt, batch, logits = encoded["qwen2_5_vl"]
    ref = load_hf(_folder(str(ckdir), "qwen2_5_vl"), attn="sdpa")
    with torch.no_grad():
        torch.testing.assert_close(ref.model(**ref.encode(samples, [prompt] * 2).inputs).logits, logits)


def test_qwen_frames_as_images(ckdir):
    lm = load_hf(_folder(str(ckdir), "qwen2_vl"), frames_as="images")
    b = lm.encode([world_like("a", 3, LONG)], [fine_query(LABELS)])
    assert b.inputs["image_grid_thw"].shape[0] == 3 and "pixel_values_videos" not in b.inputs
    assert (b.inputs["mm_token_type_ids"] == 2).sum() == 0
    assert sorted(set(b.layouts[0].visual_grid[:, 0].tolist())) == [0, 1, 2]
    with torch.no_grad():
        assert torch.isfinite(lm.model(**b.inputs).logits).all()


def test_qwen_video_patch_layout(ckdir):
    """Video patches pair frames along the temporal axis exactly as Qwen2VLVideoProcessor.patchify:
    (C, temporal, p, p) per patch, the same spatial order as the image patches."""
    proc = _loaded(str(ckdir), "qwen2_vl").processor
    ip = proc.image_processor
    a, b = world_like("a", 1, "", seed=3), world_like("b", 1, "", seed=4)
    a.frames[0, :, :16] = 0  # make the two frames differ
    img = [proc._media(s, video=False)[0]["pixel_values"] for s in (a, b)]
    same = Sample(uid="s", frames=np.concatenate([a.frames, a.frames]))
    np.testing.assert_array_equal(proc._media(same, video=True)[0]["pixel_values_videos"], img[0])
    two = Sample(uid="t", frames=np.concatenate([a.frames, b.frames]))
    vid = proc._media(two, video=True)[0]["pixel_values_videos"]
    p, tp = ip.patch_size, ip.temporal_patch_size
    v = vid.reshape(vid.shape[0], 3, tp, p, p)
    np.testing.assert_array_equal(v[:, :, 0], img[0].reshape(-1, 3, tp, p, p)[:, :, 0])
    np.testing.assert_array_equal(v[:, :, 1], img[1].reshape(-1, 3, tp, p, p)[:, :, 0])


def test_llava_matches_hf_processor(ckdir):
    """On a single image, LLaVA's expansion and tokens are those of transformers' LlavaProcessor."""
    from transformers import AutoProcessor

    lm = _loaded(str(ckdir), "llava")
    s, prompt = world_like("a", 1, LONG), fine_query(LABELS, foe=True)
    mine = lm.encode([s], [prompt])
    hf = AutoProcessor.from_pretrained(_folder(str(ckdir), "llava"))
    text, _ = lm.processor.render(s, prompt, video=False)
    ref = hf(images=lm.processor._pil(s.frames), text=text, return_tensors="pt")
    assert torch.equal(mine.inputs["input_ids"], ref["input_ids"])
    torch.testing.assert_close(mine.inputs["pixel_values"], ref["pixel_values"])


def test_internvl_tiles_and_video_format(ckdir):
    lm = _loaded(str(ckdir), "internvl")
    wide = world_like("wide", 1, SHORT, hw=(32, 64))
    b = lm.encode([wide, world_like("v", 2, LONG)], [fine_query(LABELS)] * 2)
    lay = b.layouts[0]
    assert lay.visual.size == 3 * 16 and lay.visual_grid is None and lay.cue_visual is None  # 2 tiles + thumbnail
    text = lm.processor.tokenizer.decode(b.inputs["input_ids"][1])
    assert "Frame1: <img>" in text and "Frame2: <img>" in text
    with torch.no_grad():
        assert torch.isfinite(lm.model(**b.inputs).logits).all()


def test_no_subtitle_and_foe_span(ckdir):
    lm = _loaded(str(ckdir), "qwen3_vl")
    prompt = fine_query(LABELS, foe=True, cot=True)
    b = lm.encode([world_like("a", 1, "")], [prompt])
    lay, row = b.layouts[0], b.inputs["input_ids"][0].numpy()
    tok = lm.processor.tokenizer
    assert lay.content.size == 0 and "Subtitle" not in tok.decode(row)
    for name, (a, e) in prompt.span_chars().items():
        assert _decodes_to(tok, row[lay.spans[name]], prompt.text[a:e]), name


def test_loads_from_local_hf_cache(ckdir, tmp_path, monkeypatch):
    """A Hugging Face id resolves through the local cache layout (models--owner--name/snapshots/<rev>)."""
    from huggingface_hub import constants

    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--emolens--tiny-qwen2-vl"
    shutil.copytree(_folder(str(ckdir), "qwen2_vl"), repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    lm = load_hf("emolens/tiny-qwen2-vl")
    assert lm.info["path"].endswith(rev) and lm.family == "qwen2_vl"


# ----------------------------------------------------------------------------- errors
def test_missing_path_error(tmp_path):
    where = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError) as e:
        load_hf(str(where))
    msg = str(e.value)
    assert "\n" not in msg and str(where) in msg and "cannot download" in msg and "--model" in msg
    with pytest.raises(FileNotFoundError, match="Hugging Face cache"):
        load_hf("emolens-test/not-a-cached-model")


def test_unsupported_model_type_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError) as e:
        load_hf(str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "gpt2" in msg
    for fam in ("llava", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl"):
        assert fam in msg


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_missing_image_token_id_error(ckdir, tmp_path, family):
    dst = tmp_path / family
    shutil.copytree(_folder(str(ckdir), family), dst)
    cfg = json.loads((dst / "config.json").read_text())
    for k in ("image_token_id", "image_token_index"):
        cfg.pop(k, None)
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as e:
        load_hf(str(dst))
    msg = str(e.value)
    assert "\n" not in msg and "image_token_id" in msg and "image_token_index" in msg and "config.json" in msg


def test_image_token_not_in_tokenizer_error(ckdir, tmp_path):
    dst = tmp_path / "qwen3_vl"
    shutil.copytree(_folder(str(ckdir), "qwen3_vl"), dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["image_token_id"] = 10 ** 6
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not a token of the tokenizer"):
        load_hf(str(dst))
