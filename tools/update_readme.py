"""Fill README.md's generated sections from measured files (model card, bench JSON, own-checkpoint doc).
Usage: python tools/update_readme.py [--bench runs/bench.json]"""
import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def replace(text: str, key: str, body: str) -> str:
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    pat = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    return pat.sub(lambda m: f"{start}\n{body.strip()}\n{end}", text)


def card_md(card: dict) -> str:
    v, e, s = card["views"], card["eps"], card["single_modality"]
    t = card.get("training", {})
    lines = [f"Held-out accuracy (WAR, zero-shot fine query, world test split, n = {card['n_per_cell']} per cell; "
             f"chance: world-mer {card['chance']['world-mer']:.3f}, world-emoset {card['chance']['world-emoset']:.3f}). "
             f"Measured by `emolens train-tiny --card`, stored in `lib/emolens/checkpoints/emolens-tiny/model_card.json`.", "",
             "| view / subset | WAR |", "|---|---:|"]
    lines += [f"| {k} | {x:.3f} |" for k, x in v.items()]
    lines += [f"| world-camer {k} | {x:.3f} |" for k, x in card["camer_subsets"].items()]
    lines += ["", "| world-mer, only one modality informative | WAR |", "|---|---:|"]
    lines += [f"| only {k} | {x:.3f} |" for k, x in s.items()]
    lines += [f"| world-emoset, only {k} | {x:.3f} |" for k, x in card.get("single_modality_emoset", {}).items()]
    lines += ["", "| eps (world-mer) | " + " | ".join(e) + " |", "|---|" + "---:|" * len(e),
              "| WAR | " + " | ".join(f"{x:.3f}" for x in e.values()) + " |"]
    oo = card.get("option_order")
    if oo:  # zero-shot with the options in the template's order vs shuffled per sample (letter-position bias)
        lines += ["", "| zero-shot WAR | options in order | options shuffled per sample |", "|---|---:|---:|"]
        lines += [f"| {k} | {x['in_order']:.3f} | {x['shuffled']:.3f} |" for k, x in oo.items()]
        lines += ["", "Shuffled accuracy at chance: this model answers by the options' *positions* (it was trained "
                      "with one letter per emotion), not by reading them; see the verdicts below and issue 12."]
    if t:
        lines += ["", f"Training: seed {t.get('seed')}, {t.get('steps_done')} steps of batch {t.get('batch_size')}, "
                      f"{t.get('n_params'):,} parameters, final loss {t.get('final_loss_mean_last50', float('nan')):.3f}."]
    return "\n".join(lines)


def bench_md(b: dict) -> str:
    lines = ["Median ratio to the plain SDPA forward, measured side by side in one run (`emolens bench`):", "",
             "| measurement | ratio |", "|---|---:|"]
    def walk(prefix, d):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k} / ", v)
            elif isinstance(v, (int, float)):
                lines.append(f"| {prefix}{k} | {v:.3f} |")
    walk("", b.get("ratios", {}))
    lines += ["", "| peak memory | ratio |", "|---|---:|"]
    n = len(lines)
    walk("", b.get("peak_memory_ratio", {}))
    lines[n:] = [l for l in lines[n:]]
    cfg = b.get("config", {})
    if cfg:
        lines += ["", "Config: `" + json.dumps(cfg)[:600] + "`"]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default=None)
    a = ap.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    card = ROOT / "lib/emolens/checkpoints/emolens-tiny/model_card.json"
    if card.is_file():
        text = replace(text, "card", card_md(json.loads(card.read_text())))
    if a.bench and Path(a.bench).is_file():
        text = replace(text, "bench", bench_md(json.loads(Path(a.bench).read_text())))
    own = ROOT / "docs/own_checkpoint.md"
    if own.is_file():
        body = own.read_text()
        body = re.sub(r"^## Using your own checkpoint and dataset\s*\n", "", body)
        text = replace(text, "own", body)
    readme.write_text(text)


if __name__ == "__main__":
    main()
