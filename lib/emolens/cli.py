"""The `emolens` command. Every error the user can cause prints one line naming the fix (exit 2)."""
from __future__ import annotations

import argparse
import sys


def _kv(items) -> dict:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--set expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def cmd_eval(a) -> int:
    from .evaluate import evaluate, metrics_table, write_json
    from .models import load_model

    from .runner import _coerce

    world = {}
    for k, v in _kv(a.world).items():
        world[k] = float(v) if k == "eps" else (tuple(v.split("+")) if k == "informative" else _coerce(v))
    from .data import load_dataset
    from .methods import get_method

    # validate everything cheap before loading the model, so bad input fails in a second
    method = get_method(a.method, **_kv(a.set))
    ds = load_dataset(a.dataset, split=a.split, limit=a.limit, root=a.root, **world)
    method.check_data(getattr(ds, "modalities", ()) or ())
    lm = load_model(a.model, device=a.device)
    res = evaluate(lm, ds, method, split=a.split, limit=a.limit, seed=a.seed, batch_size=a.batch_size,
                   progress=not a.quiet, world=world or None)
    print(metrics_table(res))
    if a.out:
        print(f"wrote {write_json(res, a.out)}")
    return 0


def cmd_train(a) -> int:
    from .models.train import train_tiny

    log = train_tiny(a.out, seed=a.seed, steps=a.steps, batch_size=a.batch_size, vision_steps=a.vision_steps,
                     time_budget_s=a.time_budget)
    print(f"trained emolens-tiny in {log['train_seconds']} s ({log['steps_done']} steps, {log['n_params']} params), "
          f"final loss {log['final_loss_mean_last50']:.4f} -> {a.out}")
    if a.card:
        from .models.card import write_card

        card = write_card(a.out, n=a.card_n)
        print(card["summary"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emolens", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    e = sub.add_parser("eval", help="evaluate a method on a dataset; prints metrics, writes JSON")
    e.add_argument("--model", default="emolens-tiny")
    e.add_argument("--dataset", default="world-mer")
    e.add_argument("--method", default="zero-shot")
    e.add_argument("--set", action="append", metavar="KEY=VALUE", help="method hyperparameter (repeatable)")
    e.add_argument("--world", action="append", metavar="KEY=VALUE", help="world override: eps=3, conflict=video-aligned, informative=visual+audio")
    e.add_argument("--split", default="test")
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--root", default=None, help="local copy of a real benchmark (see data_manifests/)")
    e.add_argument("--device", default="auto")
    e.add_argument("--out", default=None)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(fn=cmd_eval)

    t = sub.add_parser("train-tiny", help="retrain the embedded emolens-tiny model on the emotion world")
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, default=800, help="stage-1 steps (the shipped model: 800)")
    t.add_argument("--vision-steps", type=int, default=300, help="stage-0 vision encoder steps (the shipped model: 300)")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
    t.add_argument("--card", action="store_true", help="also measure held-out accuracy and write model_card.json")
    t.add_argument("--card-n", type=int, default=300)
    t.set_defaults(fn=cmd_train)

    for extra in _EXTRA:
        extra(sub)
    return p


_EXTRA: list = []  # other modules' subcommands register here (see below)


def _register_extras() -> None:
    import importlib

    if _EXTRA:
        return
    for mod, fn in (("emolens.cli_extra", "register"),):
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        _EXTRA.append(getattr(m, fn))


def main(argv=None) -> int:
    _register_extras()
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return int(a.fn(a) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"emolens {a.cmd}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
