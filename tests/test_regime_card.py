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
    assert len(crit) == 11 and all(isinstance(v, bool) for v in crit.values())
    assert "world-mer" in capsys.readouterr().out


def test_card_bad_n_one_line(capsys):
    assert main(["card", "--n", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--n must be a positive integer" in err
