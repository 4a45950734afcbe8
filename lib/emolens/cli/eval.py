"""``emolens eval``: evaluate a method on a dataset; prints metrics, writes JSON."""
from __future__ import annotations

from .args import key_values


def register(sub) -> None:
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
    e.add_argument("--out", default=None, help="result JSON; predictions stream to OUT.rankK.jsonl and a rerun resumes "
                   "(under accelerate launch / torchrun the samples are sharded by rank)")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(fn=run)


def run(a) -> int:
    from ..data import load_dataset
    from ..evaluate import evaluate, metrics_table
    from ..methods import get_method
    from ..models import load_model
    from ..runner import _coerce

    world = {}
    for k, v in key_values(a.world, "--world").items():
        world[k] = float(v) if k == "eps" else (tuple(v.split("+")) if k == "informative" else _coerce(v))
    # validate everything cheap before loading the model, so bad input fails in a second
    method = get_method(a.method, **key_values(a.set))
    ds = load_dataset(a.dataset, split=a.split, limit=a.limit, root=a.root, **world)
    method.check_data(getattr(ds, "modalities", ()) or ())
    from ..parallel import process_state, rank_device, ranks_from_env

    ranks = ranks_from_env()
    process_state(ranks)  # under accelerate/torchrun: the process group, before the model takes a GPU
    lm = load_model(a.model, device=rank_device(a.device, ranks))
    res = evaluate(lm, ds, method, split=a.split, limit=a.limit, seed=a.seed, batch_size=a.batch_size,
                   progress=not a.quiet, world=world or None, out=a.out)
    if ranks.is_main:  # every rank holds the merged result; rank 0 reports it (evaluate wrote --out)
        print(metrics_table(res))
        if a.out:
            print(f"wrote {a.out}")
    return 0
