"""`emolens data check` on the four row-level problems planted in ``tests/fakedata.py``: duplicate id,
bad split, bad subset, missing value. Each fake copy plants exactly one problem; the check must report
exactly that (kind and file:line) and exit 1, through the library call and through the command."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fakedata as fd  # noqa: E402
from emolens.data import check_local_copy, data_check_main  # noqa: E402

CASES = [("mer2023", "duplicate-id"), ("emoset", "bad-split"), ("mer2023", "bad-split"),
         ("ca-mer", "bad-subset"), ("emoset", "missing-value"), ("ca-mer", "missing-value")]
MAKERS = {"mer2023": fd.make_mer2023_copy, "emoset": fd.make_emoset_copy, "ca-mer": fd.make_camer_copy}


@pytest.mark.parametrize("which,variant", CASES, ids=[f"{a}-{b}" for a, b in CASES])
def test_data_check_reports_the_planted_row_problem(tmp_path, capsys, which, variant):
    fc = MAKERS[which](tmp_path, variant)
    assert [k for k, _ in fc.planted] == [variant]                 # exactly one problem planted
    rep = check_local_copy(fc.manifest_path, fc.root)
    assert rep.kinds() == fc.planted, rep.to_text()
    assert not rep.ok
    assert data_check_main(["check", str(fc.manifest_path), "--root", str(fc.root)]) == 1
    out = capsys.readouterr().out
    assert variant in out and fc.planted[0][1] in out


def test_the_emolens_command_detects_a_planted_problem(tmp_path):
    fc = fd.make_mer2023_copy(tmp_path, "duplicate-id")
    exe = Path(sys.executable).with_name("emolens")
    r = subprocess.run([str(exe), "data", "check", str(fc.manifest_path), "--root", str(fc.root)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "duplicate-id" in r.stdout and fc.planted[0][1] in r.stdout


@pytest.mark.parametrize("which,variant", [("emoset", "duplicate-id"), ("emoset", "bad-subset"),
                                           ("ca-mer", "bad-split")])
def test_a_variant_the_manifest_cannot_hold_is_refused(tmp_path, which, variant):
    with pytest.raises(ValueError, match=variant):
        MAKERS[which](tmp_path, variant)
