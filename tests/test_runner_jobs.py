"""`emolens notebooks --jobs N`: the process pool returns results in the notebooks' order whatever order they
start in, starts the longest (last measured) first, and refuses a non-positive job count in one line."""
import json
import operator

import pytest

from emolens import runner


def test_parallel_keeps_the_given_order_whatever_the_start_order():
    args = [(2, 3), (4, 5), (6, 7)]
    assert runner._parallel(operator.mul, 2, args, "t", order=[2, 0, 1]) == [6, 20, 42]
    assert runner._parallel(operator.mul, 1, args, "t") == [6, 20, 42]


def test_parallel_rejects_zero_jobs():
    with pytest.raises(ValueError, match="--jobs must be a positive integer"):
        runner._parallel(operator.mul, 0, [(1, 2), (3, 4)], "t")


def test_longest_first_uses_the_recorded_durations(tmp_path, monkeypatch):
    d = tmp_path / "durations.json"
    d.write_text(json.dumps({"a.ipynb": 10.0, "b.ipynb": 300.0, "c.ipynb": 50.0}))
    monkeypatch.setattr(runner, "DURATIONS", d)
    assert runner._longest_first(["x/a.ipynb", "x/b.ipynb", "x/c.ipynb", "x/new.ipynb"]) == [3, 1, 2, 0]
    d.write_text("not json")
    assert runner._longest_first(["a.ipynb", "b.ipynb"]) == [0, 1]   # unreadable: as given
