"""`emolens card` (issue 12): the regime card's JSON keys and one-line errors; emolens-tiny-v2 (the papers'
regime, opt-in) and its variants load by name; the README's v2 card block is the shipped card."""
import json
from pathlib import Path

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
    assert set(cal["world-camer"]) == {"consistent", "audio-aligned", "video-aligned"}
    assert {"visual", "audio", "text"} <= set(cal["single_modality"])
    assert cal["option_order"]["in_order"] == cal["world-mer"]["war"]
    assert set(pr["wetr_nuisance_mass"]) == {"wrong", "right"}
    assert set(pr["mosear_mid_layer_per_token"]) == {"audio", "visual", "n_failures"}
    assert isinstance(pr["sepm_coarse_minus_fine"], float)
    assert card["visual_tokens_per_clip"] == 32                      # v1: 2 frames x 4 x 4 patches
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


def test_v2_loads_by_name_and_reads_128_visual_tokens():
    """emolens-tiny-v2 is a shipped checkpoint loadable by name, read by the option word; on world-v2-mer a
    clip is 128 tokens."""
    from emolens import load_model
    from emolens.data import load_dataset
    from emolens.methods.base import Task
    from emolens.methods.common import fine_prompts
    from emolens.models.regime import world_prefix

    lm = load_model("emolens-tiny-v2")
    assert lm.model.config.image_size == 64 and world_prefix(lm) == "world-v2-" and lm.verbalizer == "word"
    ds = load_dataset("world-v2-mer", "validation", limit=2)
    ss = [ds[0], ds[1]]
    prompts = fine_prompts(ss, Task.from_dataset(ds))
    batch = lm.encode(ss, prompts)
    assert [len(l.visual) for l in batch.layouts] == [128, 128]
    ids = lm.option_token_ids(dict(prompts[0].options))  # letter -> the label word's ids
    tok = lm.processor.tokenizer
    assert {k: tok.convert_ids_to_tokens(v[0]).lower() for k, v in ids.items()} == dict(prompts[0].options)
    v1 = load_model("emolens-tiny")
    assert world_prefix(v1) == "world-" and v1.verbalizer == "letter"
    with pytest.raises((ValueError, OSError, FileNotFoundError)):
        load_model("emolens-tiny-v9-missing")


@pytest.mark.parametrize("name,audio", [("emolens-tiny-v2-audio4", 4), ("emolens-tiny-v2-audio16", 16),
                                        ("emolens-tiny-v2-audio64", 64), ("emolens-tiny-v2-ft", 1)])
def test_variants_load_by_name(name, audio):
    """MoSEAR Fig. 3c's token-count variants and the supervised upper bound load by name, and a clip
    really carries that many audio tokens."""
    from emolens import load_model
    from emolens.data import load_dataset
    from emolens.methods.base import Task
    from emolens.methods.common import fine_prompts

    lm = load_model(name)
    assert lm.model.config.audio_tokens == audio
    ds = load_dataset("world-v2-mer", "validation", limit=1)
    batch = lm.encode([ds[0]], fine_prompts([ds[0]], Task.from_dataset(ds)))
    assert len(batch.layouts[0].audio) == audio
    log = json.loads((Path(lm.info["path"]) / "train_log.json").read_text())
    assert log["derived_from"] == "emolens-tiny-v2"
    assert ("finetuned_on" in log) == (name == "emolens-tiny-v2-ft")


def test_all_shipped_checkpoints_fit_the_budget():
    """Issue 12: all shipped checkpoints together <= 60 MB."""
    from emolens.models import CHECKPOINTS

    total = sum(f.stat().st_size for f in CHECKPOINTS.rglob("*") if f.is_file())
    assert total <= 60 * 2**20, total / 2**20


def test_readme_card_block_is_the_shipped_card():
    """The README's emolens-tiny-v2 card block is rendered from the shipped model_card.json (and the
    variants' logs): re-rendering changes nothing, and it names pretraining statistics, premises, variants."""
    from emolens.models import CHECKPOINTS
    from emolens.models.regime import README_END, README_START, markdown, shipped_variants

    card = json.loads((CHECKPOINTS / "emolens-tiny-v2" / "model_card.json").read_text())
    block = markdown(card, shipped_variants())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    got = readme[readme.index(README_START) + len(README_START):readme.index(README_END)].strip()
    assert got == block.strip()
    for word in ("pretraining statistic", "premise", "emolens-tiny-v2-audio64", "emolens-tiny-v2-ft", "MoSEAR"):
        assert word in block
