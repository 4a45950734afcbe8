"""``emolens card``: the regime card of a model (calibration criteria, the papers' premises, token counts).

Zero-shot only, no method runs (issue 12; criteria preregistered in benchmarks/preregistration.yaml).
"""
from __future__ import annotations


def register(sub) -> None:
    t = sub.add_parser("card", help="measure a model's regime: calibration, premises, token counts (zero-shot only)")
    t.add_argument("--model", default="emolens-tiny", help="a model name (emolens-tiny, emolens-tiny-v2, ...) or folder")
    t.add_argument("--seed", type=int, default=4242, help="world seed offset of the measured samples")
    t.add_argument("--n", type=int, default=600, help="samples per cell")
    t.add_argument("--split", default="test", choices=("validation", "test"),
                   help="test (the card); validation (calibration only)")
    t.add_argument("--prefix", default=None,
                   help="dataset prefix: world-v2- or world- (default: from the checkpoint's training recipe)")
    t.add_argument("--json", default=None, help="write the card to this JSON file")
    t.set_defaults(fn=run)


def run(a) -> int:
    import json
    from pathlib import Path

    from ..models import load_model
    from ..models.regime import measure_regime, table

    if a.n < 1:
        raise ValueError(f"--n must be a positive integer, got {a.n}")
    if a.prefix not in (None, "world-", "world-v2-"):
        raise ValueError(f"--prefix must be world- or world-v2-, got {a.prefix!r}")
    lm = load_model(a.model)
    card = measure_regime(lm, n=a.n, seed=a.seed, split=a.split, prefix=a.prefix)
    print(table(card))
    if a.json:
        Path(a.json).write_text(json.dumps(card, indent=2))
        print(f"wrote {a.json}")
    return 0
