# %% [markdown]
# # 06 · All methods side by side, and the verdict on the papers' claims
#
# **What you will see:**
#
# 1. every method of the collection on the world's views with the same prompt and samples — WAR, UAR,
#    F1 and latency per sample (a WETR Table 1 analogue on emolens-tiny);
# 2. the verdict table: each claim of WETR, SEPM and MoSEAR that this collection tests, the paper's
#    number, ours (each with its 95 % CI), and *reproduced / not reproduced / unresolved*. The table is
#    produced by `python benchmarks/verdicts.py` (1000 test samples per run, paired bootstrap); this
#    notebook shows the committed result and can recompute it (`recompute_verdicts = True`, ~20 minutes).

# %% tags=["parameters"]
model: str = "emolens-tiny"  # model name or local checkpoint folder
dataset: str = "world-mer"  # main dataset manifest for the side-by-side table
split: str = "test"  # dataset split
n_samples: int = 96  # samples per method in the side-by-side table
methods: list[str] = ["zero-shot", "zero-shot-cot", "random-select", "query-select", "qpos-select", "nts", "str", "wetr", "sepm", "pai", "ar"]  # methods compared
extra_datasets: list[str] = ["world-emoset"]  # further views (methods needing audio are skipped there)
recompute_verdicts: bool = False  # rerun benchmarks/verdicts.py (slow) instead of reading its committed JSON
verdict_n: int = 1000  # samples per run when recomputing verdicts
seed: int = 0  # evaluation seed
device: str = "auto"  # auto | cpu | cuda
out_dir: str = "../runs/notebooks/06_results"  # where figures and results.json go

# %%
import json, pathlib
import pandas as pd
import emolens
from emolens.compat import quiet_third_party_deprecations
from emolens import plots
from emolens.evaluate import evaluate
from emolens.methods import get_method
quiet_third_party_deprecations()  # upstream deprecation notices are for developers (README: the lock)

lm = emolens.load_model(model, device=device)
def side_by_side(ds_name):
    rows = []
    for name in methods:
        try:
            r = evaluate(lm, ds_name, name, limit=n_samples, seed=seed, progress=False)
        except ValueError as e:  # e.g. AR's audio group on a view without audio: say so, skip
            print(f"{name} on {ds_name}: skipped ({e})")
            continue
        rows.append({"dataset": ds_name, "method": name, "WAR": r["metrics"]["war"], "UAR": r["metrics"]["uar"],
                     "F1": r["metrics"]["f1"], "ms/sample": 1000 * r["latency_s"]["per_sample"]})
    return rows

table = pd.DataFrame(sum((side_by_side(d) for d in [dataset, *extra_datasets]), []))
table.drop(columns="ms/sample").round(4)

# %%
# NBVAL_IGNORE_OUTPUT
table[["dataset", "method", "ms/sample"]].round(1)

# %%
fig = plots.bars(table, "method", "WAR", hue="dataset", title="WAR per method (same prompt, same samples)", ylim=(0, 1))
fig.axes[0].tick_params(axis="x", rotation=45)
plots.save(fig, out_dir, "side_by_side")

# %% [markdown]
# ## The verdict table
#
# Decision rule (in `benchmarks/verdicts.py`): a claim is split into its comparisons. A comparison
# **holds** when the 95 % paired-bootstrap CI of the difference excludes 0 in the claimed direction, is
# **reversed** when it excludes 0 the other way, and is **unresolved** otherwise. The claim is
# *reproduced* only when every part holds, *not reproduced* when any part is reversed, and *unresolved*
# otherwise. Nothing was tuned; the methods run with the papers' defaults scaled to the model's depth.

# %%
vpath = pathlib.Path("../benchmarks/results/verdicts.json")
if recompute_verdicts:
    import subprocess, sys
    subprocess.run([sys.executable, "../benchmarks/verdicts.py", "--n", str(verdict_n)], check=True)
verdicts = json.loads(vpath.read_text())
vt = pd.DataFrame(verdicts["claims"])[["claim", "paper", "ours", "verdict"]]
print(f"n = {verdicts['n']} test samples per run")
pd.set_option("display.max_colwidth", None)
vt

# %% [markdown]
# ## Checks that fail loudly
#
# * every method produced one prediction per sample and metrics within [0, 1];
# * the verdict table covers every claim the collection tests, each with one of the three verdicts.

# %%
assert table[["WAR", "UAR", "F1"]].stack().between(0, 1).all()
assert set(table[table.dataset == dataset].method) == set(methods), set(methods) - set(table.method)
assert set(vt.verdict) <= {"reproduced", "not reproduced", "unresolved"}
assert len(vt) >= 9
print("checks passed")

# %%
summary = {f"war_{r.method}": float(r.WAR) for r in table[table.dataset == dataset].itertuples()}
summary.update({f"verdict_{c['id']}": c["verdict"] for c in verdicts["claims"]})
results = {"notebook": "06_results", "parameters": {"model": model, "dataset": dataset, "split": split,
           "n_samples": n_samples, "methods": methods, "seed": seed}, "summary": summary,
           "table": table.to_dict(orient="list")}
pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
pathlib.Path(out_dir, "results.json").write_text(json.dumps(results, indent=1))
{k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}
