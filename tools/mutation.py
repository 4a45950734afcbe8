"""Mutation testing of the equation functions (issue 18): ``make mutation``.

Each equation function of ``lib/emolens/methods/`` and ``lib/emolens/metrics.py`` listed in
:data:`TARGETS` is mutated one operator at a time (AST: ``+``<->``-``, ``*``<->``/``, ``**``->``*``,
comparison flips ``>``<->``>=``, ``<``<->``<=``, ``==``<->``!=``, ``and``<->``or``, a unary minus or
``not`` removed, a number constant n -> n + 1, ``True``<->``False``, and the reductions
``max``<->``min``, ``maximum``<->``minimum``, ``mean``->``sum``, ``argmax``<->``argmin``), and each
mutant is run against its module's test file(s) (the selection in :data:`TARGETS`, fast tests first,
``-x``). A mutant is *killed* when the tests fail or time out, *survived* when they pass.

Why hand-written and not mutmut 3 (installed, and the first choice): mutmut 3.8 derives a mutant's
module name from its file path relative to ``./``, ``src/`` or ``source/`` and puts only
``mutants/``, ``mutants/src`` and ``mutants/source`` on ``sys.path``; this package lives in ``lib/``
and is installed editable, so under mutmut the tests import the *unmutated* ``lib/emolens`` (or, with
``source_paths = ["lib"]``, record trampoline hits under ``emolens.*`` while the mutants are keyed
``lib.emolens.*`` and mutmut stops). It also mutates whole files, while the target here is a named
list of equation functions. This driver does the same job in ~150 lines: one parent process imports
torch / transformers / emolens / pytest once; per mutant it forks, swaps the function's ``__code__``
in place (so every ``from .nts import top_p`` alias sees the mutant too) and runs ``pytest.main`` on
the module's tests in the child.

Usage: ``python tools/mutation.py [--jobs 2] [--only nts.top_p] [--list] [--json runs/mutation.json]``.
Not part of CI (minutes to an hour on 2 cores).
"""
from __future__ import annotations

import argparse
import ast
import copy
import importlib
import inspect
import json
import os
import sys
import textwrap
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
ROOT = Path(__file__).resolve().parents[1]

T = "tests/"
EDGES = T + "test_equation_edges.py"
NTS_T = [EDGES, T + "test_nts_str.py::test_norm_hand_cases", T + "test_nts_str.py::test_contrastive_utility_and_score_hand_cases",
         T + "test_nts_str.py::test_top_p_hand_cases", T + "test_nts_str.py::test_selection_mask_keeps_everything_outside_the_candidates",
         T + "test_mutation_targets.py::test_contrastive_utility_ranks_by_a_pos_minus_a_neg",
         T + "test_references.py::test_nts_keep_set_equals_an_eager_numpy_reference",
         T + "test_nts_str.py::test_nts_keeps_ceil_p_n_and_every_instruction_and_audio_token"]
STR_T = [EDGES, T + "test_nts_str.py::test_str_symbols_hand_cases", T + "test_references.py::test_str_gamma_equals_a_numpy_reference",
         T + "test_nts_str.py::test_str_anchors_are_clamped"]
AR_T = [EDGES, T + "test_mutation_targets.py::test_biased_heads_at_c_equal_tau_exactly",
        T + "test_mutation_targets.py::test_a_head_at_the_layer_ratio_is_not_biased",
        T + "test_ar.py::test_worked_example_and_edge_cases", T + "test_ar.py::test_reallocate_head_is_the_closed_form",
        T + "test_ar.py::test_reallocate_errors_are_one_line",
        T + "test_mutation_targets.py::test_biased_heads_and_reallocate_follow_eq7_at_observed_ratios",
        T + "test_ar.py::test_reallocate_properties"]
SEPM_T = [EDGES, T + "test_sepm.py::test_equations_on_small_arrays", T + "test_mutation_targets.py::test_confidence_hand_values",
          T + "test_mutation_targets.py::test_confidence_is_the_population_variance_of_the_two_probabilities",
          T + "test_sepm.py::test_confidence_is_eq4_of_the_vocab_softmax",
          T + "test_sepm.py::test_significance_and_dropping_map_match_eager_attention",
          T + "test_sepm.py::test_random_strategy_is_seeded"]
METRICS_T = [EDGES, T + "test_metrics.py", T + "test_mutation_targets.py::test_confidence_hand_values",
             T + "test_mutation_targets.py::test_confidence_is_the_population_variance_of_the_two_probabilities"]

#: module -> (equation functions, the module's tests in the order they run)
TARGETS = {
    "emolens.methods.nts": (["normalize_scores", "span_attention", "contrastive_utility", "cross_modal_support",
                             "selection_score", "keep_count", "top_p", "selection_mask"], NTS_T),
    "emolens.methods.reweight": (["reconstruction_error", "normalize", "gate", "overlap_residual", "migration_gamma",
                                  "anchor_clamp"], STR_T),
    "emolens.methods.ar": (["group_mass", "head_ratio", "layer_ratio", "biased_heads", "_eq14", "reallocate_head",
                            "reallocate"], AR_T),
    "emolens.methods.sepm": (["coarse_confidence", "drop_matrix", "significance", "n_dropped", "dropping_map",
                              "random_dropping_map", "refined_visual_set"], SEPM_T),
    "emolens.metrics": (["war", "uar", "f1", "acc2", "sentiment_classes", "acc3", "uap", "emass", "selection_scores",
                         "precision_at_k", "deletion_drop", "error_propagation", "confidence_variance",
                         "confidence_from_logits"], METRICS_T),
}

BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult,
         ast.FloorDiv: ast.Div}
CMP = {ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}
NAMES = {"max": "min", "min": "max", "maximum": "minimum", "minimum": "maximum", "mean": "sum",
         "argmax": "argmin", "argmin": "argmax"}


def _sites(fn: ast.FunctionDef):
    """Every (node, kind) mutation site inside the function body (docstring and raise messages excluded)."""
    body = fn.body[1:] if fn.body and isinstance(fn.body[0], ast.Expr) and isinstance(
        getattr(fn.body[0], "value", None), ast.Constant) and isinstance(fn.body[0].value.value, str) else fn.body
    skip = set()
    for stmt in body:
        for n in ast.walk(stmt):
            if isinstance(n, ast.Raise):
                skip.update(id(x) for x in ast.walk(n))
            # reshape(-1) -> reshape(-2) is equivalent (numpy reads any negative size as "infer")
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "reshape":
                skip.update(id(x) for a in n.args if isinstance(a, ast.UnaryOp) for x in ast.walk(a.operand))
    for stmt in body:
        for n in ast.walk(stmt):
            if id(n) in skip:
                continue
            if isinstance(n, (ast.BinOp, ast.AugAssign)) and type(n.op) in BINOP:
                yield n, "binop"
            elif isinstance(n, ast.Compare):
                for i, op in enumerate(n.ops):
                    if type(op) in CMP:
                        yield (n, i), "cmp"
            elif isinstance(n, ast.BoolOp):
                yield n, "boolop"
            elif isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.Not)):
                yield n, "unary"
            elif isinstance(n, ast.Constant) and type(n.value) in (int, float) and not isinstance(n.value, bool):
                yield n, "num"
            elif isinstance(n, ast.Constant) and isinstance(n.value, bool):
                yield n, "bool"
            elif isinstance(n, ast.Attribute) and n.attr in NAMES:
                yield n, "attr"
            elif isinstance(n, ast.Name) and n.id in NAMES and n.id in ("max", "min"):
                yield n, "name"


class _Unary(ast.NodeTransformer):
    def __init__(self, target):
        self.target = target

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        return node.operand if node is self.target else node


def mutants(module, name: str):
    """Yield ``(description, lineno, code object)`` for every mutant of ``module.name``."""
    fn = getattr(module, name)
    src = textwrap.dedent(inspect.getsource(fn))
    _, first = inspect.getsourcelines(fn)
    tree0 = ast.parse(src)
    n_sites = len(list(_sites(tree0.body[0])))
    for k in range(n_sites):
        tree = copy.deepcopy(tree0)
        site, kind = list(_sites(tree.body[0]))[k]
        if kind == "binop":
            old = type(site.op)
            site.op = BINOP[old]()
            desc, line = f"{old.__name__} -> {BINOP[old].__name__}", site.lineno
        elif kind == "cmp":
            node, i = site
            old = type(node.ops[i])
            node.ops[i] = CMP[old]()
            desc, line = f"{old.__name__} -> {CMP[old].__name__}", node.lineno
        elif kind == "boolop":
            old = type(site.op)
            site.op = ast.Or() if old is ast.And else ast.And()
            desc, line = f"{old.__name__} -> {'Or' if old is ast.And else 'And'}", site.lineno
        elif kind == "unary":
            desc, line = f"drop unary {type(site.op).__name__}", site.lineno
            tree = _Unary(site).visit(tree)
        elif kind == "num":
            desc, line = f"{site.value!r} -> {site.value + 1!r}", site.lineno
            site.value = site.value + 1
        elif kind == "bool":
            desc, line = f"{site.value} -> {not site.value}", site.lineno
            site.value = not site.value
        elif kind == "attr":
            desc, line = f".{site.attr} -> .{NAMES[site.attr]}", site.lineno
            site.attr = NAMES[site.attr]
        else:
            desc, line = f"{site.id} -> {NAMES[site.id]}", site.lineno
            site.id = NAMES[site.id]
        ast.fix_missing_locations(tree)
        ast.increment_lineno(tree, first - 1)
        ns = dict(vars(module))
        exec(compile(tree, inspect.getsourcefile(fn), "exec"), ns)
        yield desc, line + first - 1, ns[name].__code__


def run_one(module_name: str, name: str, code, tests, timeout: float) -> str:
    """Fork; in the child swap the code and run the tests. Returns killed / survived / timeout."""
    pid = os.fork()
    if pid == 0:
        try:
            import pytest

            fn = getattr(importlib.import_module(module_name), name)
            fn.__code__ = code
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            rc = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests])
        except BaseException:
            rc = 99
        os._exit(int(rc))
    t0 = time.time()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "survived" if os.waitstatus_to_exitcode(status) == 0 else "killed"
        if time.time() - t0 > timeout:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.05)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="module.function substring filter, e.g. nts.top_p")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant (a timeout counts as killed)")
    ap.add_argument("--json", default="runs/mutation.json")
    ap.add_argument("--rerun", help="a previous --json: run only the mutants that survived there")
    a = ap.parse_args(argv)
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT / "tests"))
    import pytest  # noqa: F401  (imported once in the parent: the children fork with it loaded)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    jobs = []
    for mod_name, (names, tests) in TARGETS.items():
        mod = importlib.import_module(mod_name)
        for name in names:
            if a.only and a.only not in f"{mod_name}.{name}":
                continue
            for desc, line, code in mutants(mod, name):
                jobs.append((mod_name, name, desc, line, code, tests))
    if a.rerun:
        from collections import Counter

        left = Counter((r["module"], r["function"], r["line"], r["mutation"])
                       for r in json.loads(Path(a.rerun).read_text())["mutants"] if r["verdict"] == "survived")
        keep = []
        for j in jobs:
            key = (j[0], j[1], j[3], j[2])
            if left[key] > 0:
                left[key] -= 1
                keep.append(j)
        jobs = keep
    print(f"{len(jobs)} mutants in {len({(j[0], j[1]) for j in jobs})} functions", flush=True)
    if a.list:
        for j in jobs:
            print(f"{j[0]}.{j[1]}:{j[3]}  {j[2]}")
        return 0
    results, running, queue = [], {}, list(jobs)
    t_start = time.time()
    # a small process pool: at most --jobs children at a time
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
        futs = {ex.submit(run_one, j[0], j[1], j[4], j[5], a.timeout): j for j in queue}
        for f in cf.as_completed(futs):
            j = futs[f]
            verdict = f.result()
            results.append({"module": j[0], "function": j[1], "line": j[3], "mutation": j[2], "verdict": verdict})
            if verdict == "survived":
                print(f"SURVIVED {j[0]}.{j[1]}:{j[3]}  {j[2]}", flush=True)
    del running
    killed = sum(r["verdict"] != "survived" for r in results)
    rate = killed / max(1, len(results))
    print(f"killed {killed} / {len(results)} = {rate:.1%} in {time.time() - t_start:.0f} s", flush=True)
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    results.sort(key=lambda r: (r["module"], r["function"], r["line"], r["mutation"]))
    out.write_text(json.dumps({"killed": killed, "total": len(results), "rate": rate, "mutants": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
