"""Composition of two methods in one plan: ``get_method("sepm+wetr")``, ``get_method("ar+nts")``,
``from_dict({"method": "sepm+wetr", ...})``, ``emolens eval --method sepm+wetr``.

A composition has a **host** (the method that owns the prompt, the forwards and the answer) and a
**partner** whose plan ops run after the host's own ops in the same ``intervene`` plan:

==============================  =========================================================================
host                            partners
==============================  =========================================================================
``sepm``                        ``nts``/``str``/``wetr``/selection baselines, ``ar``, ``pai``, ``sparsevlm``
``nts``/``str``/``wetr``/...    ``ar``, ``pai``
``sparsevlm``                   ``ar``, ``pai``
==============================  =========================================================================

The host is chosen by role, not by the order of the name ("ar+nts" == "nts+ar"); the canonical name
puts the host first. Order and interactions, as implemented:

* **sepm + X**: SEPM's stage 1 (coarse query, confidence, FoE significance) runs alone; stage 2 runs
  Q_f under SEPM's ``KeyMask(from_layer=0)`` (its dropped visual tokens are removed from every layer)
  *and* X's ops. With a WETR-family partner, Q_f also carries WETR's Q_pos / Q_neg spans (after the
  FoE prefix) because NTS/STR read them. NTS's selection is seeded with SEPM's kept set: SEPM's
  dropped tokens are never candidates, so **NTS never re-admits them** (the key masks also compose by
  AND); NTS's keep counts stay fractions of the original modality size (ceil(p_v N_v)), chosen among
  SEPM's kept tokens. ``selected_visual`` is the AND of both; X's record is in ``extra[X]``.
* **nts-family + ar/pai**: one forward of WETR's prompt; NTS/STR act at their trigger layers (mask
  from l+1, scale at l), AR/PAI edit the answer row of their layers; from l+1 on AR sees the masked
  attention (dropped keys carry 0 mass, so AR reallocates among admitted tokens only).
* Answer mode (``answer``, ``max_new_tokens``) is the host's; set it once, it applies to both.

Incompatible pairs (one-line ValueError): two token selectors (``nts+wetr``, ``nts+sparsevlm``: both
decide m_i from their own scores), ``ar+pai`` (both rewrite the same answer rows; the later would
silently win), a method with itself, and ``zero-shot``/``zero-shot-cot`` (nothing to compose).

Hyperparameters: ``name.key=value`` goes to that part; a plain ``key=value`` goes to every part that
has that key (an error if none has it), e.g. ``--set beta=0.1 --set wetr.delta=2``.
"""
from __future__ import annotations

from .base import ANSWER_PARAMS, Method

SELECTORS = ("nts", "str", "wetr", "random-select", "query-select", "qpos-select", "sparsevlm")
ROW_EDITORS = ("ar", "pai")
HOSTS = {"sepm": SELECTORS + ROW_EDITORS, "sparsevlm": ROW_EDITORS,
         **{n: ROW_EDITORS for n in SELECTORS if n != "sparsevlm"}}


def split_name(name: str) -> tuple:
    parts = tuple(p.strip() for p in name.split("+"))
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"a composition names two methods joined by '+', e.g. sepm+wetr or ar+nts; got {name!r}")
    return parts


def _host_partner(a: str, b: str) -> tuple:
    if a == b:
        raise ValueError(f"cannot compose {a} with itself; pick two different methods")
    for h, p in ((a, b), (b, a)):
        if p in HOSTS.get(h, ()):
            return h, p
    why = ("both select tokens (m_i) from their own scores" if a in SELECTORS and b in SELECTORS else
           "both rewrite the answer row's attention" if a in ROW_EDITORS and b in ROW_EDITORS else
           "no composition rule pairs them")
    raise ValueError(f"methods {a} and {b} cannot be composed: {why}; compatible pairs: "
                     + ", ".join(f"{h}+{'|'.join(ps)}" for h, ps in (("sepm", ("nts", "wetr", "ar", "pai", "sparsevlm")),
                                                                      ("nts|str|wetr", ROW_EDITORS),
                                                                      ("sparsevlm", ROW_EDITORS))))


class Composition(Method):
    """Two methods through one plan (see the module docstring)."""

    name = "composition"
    PARAMS = {}

    def __init__(self, name: str, **params):
        from . import get_method

        a, b = split_name(name)
        host, partner = _host_partner(a, b)
        per = {host: {}, partner: {}}
        from . import registry

        reg = registry()
        for n in (host, partner):
            if n not in reg:
                raise ValueError(f"unknown method {n!r} in composition {name!r}; available: {', '.join(sorted(reg))}")
        for k, v in params.items():
            if "." in k:
                n, key = k.split(".", 1)
                if n not in per:
                    raise ValueError(f"{name}: {k!r} names {n!r}, which is not part of the composition ({host}, {partner})")
                per[n][key] = v
                continue
            owners = [n for n in (host, partner) if k in reg[n].PARAMS]
            if not owners:
                raise ValueError(f"{name}: unknown hyperparameter {k!r}; known: "
                                 f"{sorted(set(reg[host].PARAMS) | set(reg[partner].PARAMS))}")
            for n in owners:
                per[n][k] = v
        self.host = get_method(host, **per[host])
        self.partner = get_method(partner, **{k: v for k, v in per[partner].items()})
        self.name = f"{host}+{partner}"
        self.params = {f"{host}.{k}": v for k, v in self.host.params.items()}
        self.params.update({f"{partner}.{k}": v for k, v in self.partner.params.items() if k not in ANSWER_PARAMS})
        self.needs = tuple(dict.fromkeys(self.host.needs + self.partner.needs))

    def describe(self) -> dict:
        return {"method": self.name, self.host.name: self.host.describe(), self.partner.name: self.partner.describe()}

    def check_data(self, modalities) -> None:
        self.host.check_data(modalities)
        self.partner.check_data(modalities)

    def predict(self, lm, samples, task):
        return self.host.predict(lm, samples, task, partner=self.partner)


def from_description(d: dict) -> Composition:
    """Inverse of :meth:`Composition.describe` (also accepts flat ``name.key`` / ``key`` entries)."""
    d = dict(d)
    name = d.pop("method")
    a, b = split_name(name)
    flat = {}
    for k, v in d.items():
        if k in (a, b) and isinstance(v, dict):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items() if kk != "method"})
        else:
            flat[k] = v
    return Composition(name, **flat)
