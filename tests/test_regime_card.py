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
    assert set(cal) == {"world-mer", "world-emoset", "world-camer", "single_modality"}
    assert set(cal["world-camer"]) == {"consistent", "audio-aligned", "video-aligned"}
    assert {"visual", "audio", "text"} <= set(cal["single_modality"])
    assert set(pr["wetr_nuisance_mass"]) == {"wrong", "right"}
    assert set(pr["mosear_mid_layer_per_token"]) == {"audio", "visual", "n_failures"}
    assert isinstance(pr["sepm_coarse_minus_fine"], float)
    assert card["visual_tokens_per_clip"] == 32                      # v1: 2 frames x 4 x 4 patches
    assert 0 < card["cue_token_fraction"] < 1
    assert all(0 <= v <= 1 for v in cal["world-camer"].values())
    crit = criteria(card)
    assert len(crit) == 10 and all(isinstance(v, bool) for v in crit.values())
    assert "world-mer" in capsys.readouterr().out


def test_card_bad_n_one_line(capsys):
    assert main(["card", "--n", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--n must be a positive integer" in err


def test_v2_loads_by_name_and_reads_128_visual_tokens():
    """emolens-tiny-v2 is a shipped checkpoint loadable by name; on world-v2-mer a clip is 128 tokens."""
    from emolens import load_model
    from emolens.data import load_dataset
    from emolens.methods.base import Task
    from emolens.methods.common import fine_prompts
    from emolens.models.regime import world_prefix

    lm = load_model("emolens-tiny-v2")
    assert lm.model.config.image_size == 64 and world_prefix(lm) == "world-v2-"
    ds = load_dataset("world-v2-mer", "validation", limit=2)
    ss = [ds[0], ds[1]]
    batch = lm.encode(ss, fine_prompts(ss, Task.from_dataset(ds)))
    assert [len(l.visual) for l in batch.layouts] == [128, 128]
    assert world_prefix(load_model("emolens-tiny")) == "world-"
    with pytest.raises((ValueError, OSError, FileNotFoundError)):
        load_model("emolens-tiny-v9-missing")
