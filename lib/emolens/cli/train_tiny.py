"""``emolens train-tiny``: retrain the embedded emolens-tiny model on the emotion world."""
from __future__ import annotations


def register(sub) -> None:
    t = sub.add_parser("train-tiny", help="retrain the embedded emolens-tiny model on the emotion world")
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, default=800, help="stage-1 steps (the shipped model: 800)")
    t.add_argument("--vision-steps", type=int, default=300, help="stage-0 vision encoder steps (the shipped model: 300)")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
    t.add_argument("--recipe", choices=("v1", "v2"), default="v1",
                   help="v1: the shipped emolens-tiny's benchmark mixture; v2: issue 12's generic pretraining mixture on world v2")
    t.add_argument("--audio-tokens", type=int, default=1, help="audio tokens per clip (MoSEAR Fig. 3c variants: 4, 16, 64)")
    t.add_argument("--card", action="store_true", help="also measure held-out accuracy and write model_card.json (v2 recipe: the regime card of `emolens card`)")
    t.add_argument("--card-n", type=int, default=300)
    t.set_defaults(fn=run)


def run(a) -> int:
    from ..models.train import train_tiny

    log = train_tiny(a.out, seed=a.seed, steps=a.steps, batch_size=a.batch_size, vision_steps=a.vision_steps,
                     time_budget_s=a.time_budget, recipe=a.recipe, audio_tokens=a.audio_tokens)
    print(f"trained emolens-tiny in {log['train_seconds']} s ({log['steps_done']} steps, {log['n_params']} params), "
          f"final loss {log['final_loss_mean_last50']:.4f} -> {a.out}")
    if a.card and a.recipe == "v2":  # the regime card (emolens card's JSON) with the pretraining statistics
        from ..models.regime import write_regime_card

        print(write_regime_card(a.out, n=a.card_n)["summary"])
    elif a.card:
        from ..models.card import write_card

        card = write_card(a.out, n=a.card_n)
        print(card["summary"])
    return 0
