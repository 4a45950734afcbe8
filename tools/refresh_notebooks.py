"""Execute notebooks in place with their default parameters so the committed outputs are real
(nbval compares against them). Usage: python tools/refresh_notebooks.py [PATTERN]"""
import sys
import time
from pathlib import Path

import papermill as pm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from emolens.runner import notebook_paths  # noqa: E402

only = sys.argv[1] if len(sys.argv) > 1 else None
total = 0.0
for p in notebook_paths(only):
    t0 = time.time()
    pm.execute_notebook(str(p), str(p), kernel_name="python3", cwd=str(p.parent), progress_bar=False)
    dt = time.time() - t0
    total += dt
    print(f"{p.name:<40} {dt:7.1f} s", flush=True)
print(f"{'total':<40} {total:7.1f} s")
