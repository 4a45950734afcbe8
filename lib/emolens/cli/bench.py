"""``emolens bench``: overhead ratios of each mechanism against the plain forward; ``--methods``: every
method's end-to-end cost against zero-shot (``emolens.bench_methods``)."""
from __future__ import annotations


def register(sub) -> None:
    b = sub.add_parser("bench", help="overhead ratios of each mechanism (or, with --methods, each method) against "
                                     "the plain forward / zero-shot")
    b.add_argument("--json", default=None, help="write the results JSON here")
    b.add_argument("--quick", action="store_true", help="small model only, few repeats")
    b.add_argument("--methods", action="store_true", help="method-level cost: every method vs zero-shot, "
                                                          "on emolens-tiny and the mid-size bench model")
    b.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: CUDA (events, bf16) when present, else CPU (float32)")
    b.add_argument("--repeats", type=int, default=None, help="interleaved timing rounds")
    b.add_argument("--batch", type=int, default=2, help="--methods: samples per predict call")
    b.add_argument("--new-tokens", type=int, default=8, help="--methods: greedy tokens of the total (generate) run")
    b.set_defaults(fn=run)


def run(a) -> int:
    from ..bench import main_bench

    main_bench(json_path=a.json, quick=a.quick, methods=a.methods, device=a.device, repeats=a.repeats,
               batch=a.batch, new_tokens=a.new_tokens)
    return 0
