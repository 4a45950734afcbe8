"""emolens-tiny: the processor's layouts match the token sequence; the shipped checkpoint reloads
identically; the training recipe runs (a short smoke version); the model card shows it really
uses its inputs (above chance per single modality)."""
import json

import numpy as np
import pytest
import torch

from emolens import prompts as P
from emolens.models import TINY_DIR, load_model
from emolens.world import EmoWorld


@pytest.fixture(scope="module")
def lm():
    return load_model("emolens-tiny", device="cpu")


def _batch(lm, n=3, view="mer", **kw):
    w = EmoWorld(view, **{"version": 2, **kw})  # the default model's world
    samples = [w.sample("test", i) for i in range(n)]
    # different prompts -> different lengths -> left padding
    prompts = [P.fine_query(w.labels, foe=(i % 2 == 0), contrastive=(i != 1)) for i in range(n)]
    return samples, prompts, lm.encode(samples, prompts)


def test_layout_matches_token_sequence(lm):
    samples, prompts, batch = _batch(lm)
    ids = batch.inputs["input_ids"]
    tok = lm.processor.tokenizer
    cfg = lm.model.config
    for b, (s, p, lay) in enumerate(zip(samples, prompts, batch.layouts)):
        row = ids[b]
        assert (row[: lay.pad] == tok.pad_token_id).all() and lay.pad == int((batch.inputs["attention_mask"][b] == 0).sum())
        assert np.array_equal(np.flatnonzero((row == cfg.image_token_id).numpy()), lay.visual)
        assert np.array_equal(np.flatnonzero((row == cfg.audio_token_id).numpy()), lay.audio)
        assert tok.decode(row[lay.content]).split() == s.subtitle.split()
        for name, (a, e) in p.span_chars().items():
            assert tok.decode(row[lay.spans[name]]).replace(" ", "") == p.text[a:e].replace(" ", "")
        # groups partition the non-pad positions
        parts = np.concatenate([lay.visual, lay.audio, lay.content, lay.instruction])
        assert np.array_equal(np.sort(parts), lay.valid)
        assert lay.answer == ids.shape[1] - 1
        # ground-truth cue tokens are the glyph's patches
        assert np.array_equal(lay.cue_visual, s.cue_patches(cfg.patch_size).reshape(-1))
        words = s.subtitle.split()
        assert [words[k] for k in np.flatnonzero(lay.cue_content)] == [words[k] for k in s.subtitle_cue_words]


def test_emoset_has_no_audio_tokens(lm):
    _, _, batch = _batch(lm, n=2, view="emoset")
    assert all(l.audio.size == 0 for l in batch.layouts)
    assert all(l.visual.size == 64 for l in batch.layouts)  # world v2: one 64x64 image, 8 px patches


def test_batched_equals_single(lm):
    samples, prompts, batch = _batch(lm)
    with torch.no_grad():
        full = lm.model(**batch.inputs).logits[:, -1]
        for b in range(len(samples)):
            one = lm.encode([samples[b]], [prompts[b]])
            single = lm.model(**one.inputs).logits[:, -1]
            assert torch.allclose(full[b], single[0], atol=1e-4), (b, (full[b] - single[0]).abs().max())


def test_shipped_checkpoint_reloads_identically(lm, tmp_path):
    samples, prompts, batch = _batch(lm)
    lm.model.save_pretrained(tmp_path)
    lm.processor.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path), device="cpu")
    with torch.no_grad():
        a = lm.model(**batch.inputs).logits
        b = again.model(**again.encode(samples, prompts).inputs).logits
    assert torch.equal(a, b)
    for (n1, p1), (n2, p2) in zip(lm.model.state_dict().items(), again.model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_letters_resolve_from_tokenizer(lm):
    ids = lm.option_token_ids(["A", "B", "C"])
    tok = lm.processor.tokenizer
    assert all(tok.convert_ids_to_tokens(v[0]) == k for k, v in ids.items())
    with pytest.raises(ValueError, match="not in the emolens-tiny vocabulary"):
        lm.option_token_ids(["zz"])


def test_model_card_shows_each_modality_used():
    """The shipped regime card: each modality alone is used (a preregistered criterion), and the card's
    criteria are recomputed from its own numbers (not stored verdicts)."""
    from emolens.models.regime import criteria

    card = json.loads((TINY_DIR / "model_card.json").read_text())
    sm = card["calibration"]["single_modality"]
    for m in ("visual", "audio", "text"):
        assert sm[m] > sm["chance"] + 0.15, (m, sm[m])
    assert card["criteria"] == criteria(card)
    assert card["split"] == "test" and card["n_per_cell"] >= 600


def test_all_shipped_checkpoints_fit_the_budget():
    """Issue 12: all shipped checkpoints together <= 60 MB."""
    total = sum(f.stat().st_size for f in TINY_DIR.parent.rglob("*") if f.is_file())
    assert total <= 60 * 2**20, total / 2**20


def test_model_is_small():
    n = sum(p.numel() for p in load_model("emolens-tiny", device="cpu", attn="sdpa").model.parameters())
    assert n <= 5_000_000
    size = sum(f.stat().st_size for f in TINY_DIR.iterdir())
    assert size <= 20 * 2**20


def test_training_recipe_smoke(tmp_path):
    from emolens.models.train import train_tiny

    log = train_tiny(str(tmp_path / "m"), steps=3, batch_size=4, vision_steps=2, progress=False)
    assert log["steps_done"] == 3 and np.isfinite(log["final_loss_mean_last50"])
    again = load_model(str(tmp_path / "m"), device="cpu")
    assert again.model.config.text_config.num_hidden_layers >= 8
    with pytest.raises(FileExistsError, match="not empty"):
        train_tiny(str(tmp_path / "m"), steps=1, batch_size=2, vision_steps=1, progress=False)


def test_emolens_attention_is_identical_to_stock_sdpa(lm):
    """Identity on the embedded model: the registered attention with no plan (and with an empty plan)
    gives the stock SDPA model's logits, batched with left padding, and identical generate() tokens."""
    from emolens.intervene import Plan, intervene

    stock = load_model("emolens-tiny", device="cpu", attn="sdpa")
    samples, prompts, batch = _batch(lm)
    with torch.no_grad():
        ref = stock.model(**batch.inputs).logits
        got = lm.model(**batch.inputs).logits
        with intervene(lm.model, batch.layouts, Plan([])):
            got_plan = lm.model(**batch.inputs).logits
        gen_ref = stock.model.generate(**batch.inputs, max_new_tokens=4, do_sample=False)
        gen = lm.model.generate(**batch.inputs, max_new_tokens=4, do_sample=False)
    assert torch.allclose(ref, got, atol=1e-5) and torch.allclose(ref, got_plan, atol=1e-5)
    assert torch.equal(gen_ref, gen)


@pytest.mark.filterwarnings("error::FutureWarning")
@pytest.mark.filterwarnings("error::DeprecationWarning")
def test_generate_emits_no_deprecation_warning(lm):
    """emolens-tiny's generate() hands the KV cache to its decoder under one keyword only (no
    'Both `past_key_values` and `cache` are set', no deprecated-name warning on transformers >= 5.24)."""
    samples, prompts, batch = _batch(lm)
    with torch.no_grad():
        seq = lm.model.generate(**batch.inputs, max_new_tokens=3, do_sample=False)
    assert seq.shape[1] == batch.inputs["input_ids"].shape[1] + 3


def test_cue_tokens_follow_the_model_grid_for_resized_frames(lm):
    """A version-1 clip (32 px frames) fed to the 64 px default: its frames are resized, and its ground-truth
    cue tokens are read on the model's own 8 x 8 grid (one per visual token), equal to the cue patches of the
    mask upscaled to 64 px."""
    from emolens.data import load_dataset
    from emolens.methods.base import Task
    from emolens.methods.common import fine_prompts

    s = EmoWorld("mer", eps=0.0, version=1).sample("test", 0)
    assert s.frames.shape[1] != lm.model.config.image_size
    task = Task.from_dataset(load_dataset("world-mer", "test", limit=1))
    lay = lm.encode([s], fine_prompts([s], task)).layouts[0]
    up = np.repeat(np.repeat(s.cue_mask, 2, axis=1), 2, axis=2)  # 32 -> 64 px, nearest
    p = lm.model.config.patch_size
    t, h, ww = up.shape
    want = up.reshape(t, h // p, p, ww // p, p).any(axis=(2, 4)).reshape(-1)
    assert lay.cue_visual.size == lay.visual.size == want.size
    assert np.array_equal(np.asarray(lay.cue_visual, bool), want)


def test_vision_feature_reuse_is_exact_and_follows_the_weights():
    """CPU inference encodes frame by frame and reuses a frame's features
    (EmolensTinyForConditionalGeneration._vision_features): cold and warm calls are identical and equal the
    encoder on that frame alone, whatever else is in the batch; a changed frame is re-encoded; an in-place
    weight change empties the cache."""
    m = load_model("emolens-tiny").model
    w = EmoWorld("mer", version=2)
    px = torch.stack([torch.from_numpy(f).permute(2, 0, 1).float() / 255
                      for i in range(2) for f in w.sample("test", i).frames])          # [4, 3, 64, 64]
    fi = torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        alone = torch.stack([m.vision(px[i:i + 1], fi[i:i + 1])[0] for i in range(4)])
        cold = m._vision_features(px, fi)
        warm = m._vision_features(px[[2, 3, 0, 1]], fi[[2, 3, 0, 1]])                 # other order: cache hits
        assert torch.equal(cold, alone) and torch.equal(warm, alone[[2, 3, 0, 1]])
        torch.testing.assert_close(cold, m.vision(px, fi), rtol=1e-5, atol=1e-5)      # the batched encoder
        px2 = px.clone()
        px2[0, :, :8, :8] = 0.0
        changed = m._vision_features(px2, fi)
        assert torch.equal(changed[1:], alone[1:]) and not torch.equal(changed[0], alone[0])
        orig = m.vision.row.weight.clone()
        m.vision.row.weight.add_(1.0)  # in place: bumps the version counter
        try:
            assert not torch.equal(m._vision_features(px, fi), alone)
        finally:
            m.vision.row.weight.copy_(orig)
        assert torch.equal(m._vision_features(px, fi), alone)
