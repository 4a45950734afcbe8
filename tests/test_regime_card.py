"""`emolens card` (issue 12): the regime card's JSON keys and one-line errors, on the real emolens-tiny."""
import json

import pytest

from emolens.cli import main
from emolens.models.regime import criteria


def test_card_json_keys(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["card", "--model", "emolens-tiny", "--seed", "4242", "--n", "6", "--split", "validation",
                 "--json", str(out)]) == 0
    card = json.loads(out.read_text())
    cal, pr = card["calibration"], card["premises"]
    assert set(cal) == {"world-mer", "world-emoset", "world-camer", "single_modality", "option_order"}
    assert set(cal["option_order"]) == {"in_order", "shuffled"}
    assert cal["option_order"]["in_order"] == cal["world-mer"]["war"]
    assert set(cal["world-camer"]) == {"consistent", "audio-aligned", "video-aligned"}
    assert {"visual", "audio", "text"} <= set(cal["single_modality"])
    assert set(pr["wetr_nuisance_mass"]) == {"wrong", "right"}
    assert set(pr["mosear_mid_layer_per_token"]) == {"audio", "visual", "n_failures"}
    assert isinstance(pr["sepm_coarse_minus_fine"], float)
    assert card["visual_tokens_per_clip"] == 128                     # world v2: 2 frames x 8 x 8 patches
    assert 0 < card["cue_token_fraction"] < 1
    assert all(0 <= v <= 1 for v in cal["world-camer"].values())
    crit = criteria(card)
    assert len(crit) == 11 and all(isinstance(v, bool) for v in crit.values())
    assert "world-mer" in capsys.readouterr().out


def test_card_bad_n_one_line(capsys):
    assert main(["card", "--n", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--n must be a positive integer" in err


def test_card_bad_prefix_one_line(capsys):
    assert main(["card", "--prefix", "nope-", "--n", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no manifest named nope-mer" in err


def test_default_is_v2_and_reads_128_visual_tokens():
    """The default emolens-tiny is the v2 recipe's model; on world-mer (version 2) a clip is 128 tokens."""
    from emolens import load_model
    from emolens.data import load_dataset
    from emolens.methods.base import Task
    from emolens.methods.common import fine_prompts

    lm = load_model("emolens-tiny")
    assert lm.model.config.image_size == 64
    assert json.loads((__import__("pathlib").Path(lm.info["path"]) / "train_log.json").read_text())["recipe"] == "v2"
    ds = load_dataset("world-mer", "validation", limit=2)
    ss = [ds[0], ds[1]]
    prompts = fine_prompts(ss, Task.from_dataset(ds))
    batch = lm.encode(ss, prompts)
    assert [len(l.visual) for l in batch.layouts] == [128, 128]
    assert lm.verbalizer == "word"
    ids = lm.option_token_ids(dict(prompts[0].options))  # letter -> the label word's ids (survey Eq. 25)
    tok = lm.processor.tokenizer
    assert {k: tok.convert_ids_to_tokens(v[0]).lower() for k, v in ids.items()} == dict(prompts[0].options)
    with pytest.raises((ValueError, OSError, FileNotFoundError)):
        load_model("emolens-tiny-v9-missing")


@pytest.mark.parametrize("name,audio", [("emolens-tiny-audio4", 4), ("emolens-tiny-audio16", 16),
                                        ("emolens-tiny-audio64", 64), ("emolens-tiny-ft", 1)])
def test_variants_load_by_name(name, audio):
    """MoSEAR Fig. 3c's token-count variants and the supervised upper bound load by name, and a clip
    really carries that many audio tokens."""
    from emolens import load_model
    from emolens.data import load_dataset
    from emolens.methods.base import Task
    from emolens.methods.common import fine_prompts

    lm = load_model(name)
    assert lm.model.config.audio_tokens == audio
    ds = load_dataset("world-mer", "validation", limit=1)
    batch = lm.encode([ds[0]], fine_prompts([ds[0]], Task.from_dataset(ds)))
    assert len(batch.layouts[0].audio) == audio
    log = json.loads((__import__("pathlib").Path(lm.info["path"]) / "train_log.json").read_text())
    assert log["derived_from"] == "emolens-tiny"
    assert ("finetuned_on" in log) == (name == "emolens-tiny-ft")


def test_readme_card_block_is_the_shipped_card():
    """The README's model-card block is rendered from the shipped model_card.json (and the variants'):
    re-rendering it changes nothing, and it names the pretraining statistics, premises and variants."""
    from pathlib import Path

    from emolens.models import TINY_DIR
    from emolens.models.regime import README_END, README_START, markdown, shipped_variants

    card = json.loads((TINY_DIR / "model_card.json").read_text())
    block = markdown(card, shipped_variants())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    got = readme[readme.index(README_START) + len(README_START):readme.index(README_END)].strip()
    assert got == block.strip()
    for word in ("pretraining statistic", "premise", "emolens-tiny-audio64", "emolens-tiny-ft", "MoSEAR"):
        assert word in block
