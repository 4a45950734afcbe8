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
    t.add_argument("--from", dest="base", default=None,
                   help="derive from this checkpoint instead of training from scratch: with --audio-tokens N a "
                        "token-count variant (emolens-tiny-audioN), with --finetune DATASET the supervised upper bound")
    t.add_argument("--finetune", default=None, metavar="DATASET",
                   help="with --from: fine-tune on DATASET's train split (emolens-tiny-ft: world-mer)")
    t.add_argument("--word-answers", type=float, default=1.0,
                   help="recipe v2: share of perception questions answered by the option's word, else its letter (shipped: 1.0)")
    t.add_argument("--lookup", action="store_true", help="recipe v2: add the option look-up task (not in the shipped model)")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default 3e-3 from scratch, 1e-3 with --from)")
    t.add_argument("--card", action="store_true", help="also measure held-out accuracy and write model_card.json (v2 recipe: the regime card of `emolens card`)")
    t.add_argument("--card-n", type=int, default=300)
    t.add_argument("--readme", default=None, help="with --card: also rewrite this README's model-card block")
    t.set_defaults(fn=run)


def run(a) -> int:
    from ..models.train import derive_variant, finetune_tiny, train_tiny

    if a.finetune and not a.base:
        raise SystemExit("emolens train-tiny: --finetune needs --from BASE (the checkpoint to fine-tune)")
    if a.base:
        from ..models import shipped_tiny

        base = shipped_tiny(a.base) or a.base
        lr = a.lr if a.lr is not None else 1e-3
        if a.finetune:
            log = finetune_tiny(base, a.out, dataset=a.finetune, steps=a.steps, batch_size=a.batch_size, lr=lr, seed=a.seed)
        else:
            log = derive_variant(base, a.out, audio_tokens=a.audio_tokens, steps=a.steps, batch_size=a.batch_size,
                                 lr=lr, seed=a.seed, word_p=a.word_answers, lookup=a.lookup)
    else:
        log = train_tiny(a.out, seed=a.seed, steps=a.steps, batch_size=a.batch_size, vision_steps=a.vision_steps,
                         time_budget_s=a.time_budget, recipe=a.recipe, audio_tokens=a.audio_tokens,
                         word_p=a.word_answers, lookup=a.lookup,
                         **({"lr": a.lr} if a.lr is not None else {}))
    print(f"trained emolens-tiny in {log['train_seconds']} s ({log['steps_done']} steps, {log['n_params']} params), "
          f"final loss {log['final_loss_mean_last50']:.4f} -> {a.out}")
    if a.card and log.get("recipe") == "v2":  # the regime card (emolens card's JSON) with the pretraining statistics
        from ..models.regime import write_regime_card

        print(write_regime_card(a.out, n=a.card_n, readme=a.readme)["summary"])
    elif a.card:
        from ..models.card import write_card

        card = write_card(a.out, n=a.card_n)
        print(card["summary"])
    return 0
