"""``emolens card``: the regime card of a model (calibration criteria, the papers' premises, token counts).

Zero-shot only, no method runs (issue 12; criteria preregistered in benchmarks/preregistration.yaml).
"""
from __future__ import annotations


def register(sub) -> None:
    t = sub.add_parser("card", help="measure a model's regime: calibration, premises, token counts (zero-shot only)")
    t.add_argument("--model", default="emolens-tiny", help="a model name (emolens-tiny, emolens-tiny-audio4, emolens-tiny-ft, ...) or folder")
    t.add_argument("--seed", type=int, default=4242, help="world seed offset of the measured samples")
    t.add_argument("--n", type=int, default=600, help="samples per cell")
    t.add_argument("--split", default="test", choices=("validation", "test"),
                   help="test (the card); validation (calibration only)")
    t.add_argument("--prefix", default=None,
                   help="dataset prefix of the three views (default world-: world-mer, world-emoset, world-camer)")
    t.add_argument("--json", default=None, help="write the card to this JSON file")
    t.add_argument("--write", action="store_true",
                   help="shipped/local emolens-tiny only: also store the card as the checkpoint's model_card.json")
    t.add_argument("--readme", default=None, help="with --write on the default model: rewrite this README's model-card block")
    t.set_defaults(fn=run)


def run(a) -> int:
    import json
    from pathlib import Path

    from ..models import load_model
    from ..models.regime import measure_regime, table

    if a.n < 1:
        raise ValueError(f"--n must be a positive integer, got {a.n}")
    if a.prefix is not None:
        from ..data.manifest import list_manifests

        missing = [f"{a.prefix}{v}" for v in ("mer", "emoset", "camer") if f"{a.prefix}{v}" not in list_manifests()]
        if missing:
            raise ValueError(f"--prefix {a.prefix!r}: no manifest named {', '.join(missing)}; see `emolens data list`")
    if a.write:
        from ..models import shipped_tiny
        from ..models.regime import write_regime_card

        path = shipped_tiny(a.model) or Path(a.model)
        if a.split != "test":
            raise ValueError("--write stores the test-split card; drop --split validation (calibration is not a card)")
        card = write_regime_card(path, n=a.n, seed=a.seed, readme=a.readme)
        print(card["summary"])
        if a.json:
            Path(a.json).write_text(json.dumps(card, indent=2))
        return 0
    lm = load_model(a.model)
    card = measure_regime(lm, n=a.n, seed=a.seed, split=a.split, prefix=a.prefix)
    print(table(card))
    if a.json:
        Path(a.json).write_text(json.dumps(card, indent=2))
        print(f"wrote {a.json}")
    return 0
