"""ipywidgets explorers for JupyterLab.

Each explorer is ``ipywidgets.interactive`` in manual mode: nothing runs until the reader moves a
slider and presses "Run", so headless papermill/nbval executions display the controls and compute
nothing (inert), while a reader in JupyterLab can explore (keep ratio, n_r, tau, ...).
"""
from __future__ import annotations

from typing import Callable, Sequence


def explorer(fn: Callable, description: str = "Run", **controls):
    """Wrap ``fn(**kwargs)`` with sliders/dropdowns.

    ``controls`` maps a keyword of ``fn`` to a list of values (a selection slider) or to an ipywidgets
    widget. Returns the ``interactive`` widget (display it as the last expression of a cell).
    """
    import ipywidgets as W

    widgets = {}
    for k, v in controls.items():
        if isinstance(v, W.Widget):
            widgets[k] = v
        elif isinstance(v, Sequence) and not isinstance(v, str):
            vals = list(v)
            widgets[k] = W.SelectionSlider(options=vals, value=vals[len(vals) // 2], description=k,
                                           continuous_update=False)
        else:
            raise ValueError(f"control {k!r}: give a list of values or an ipywidgets widget, got {type(v).__name__}")
    w = W.interactive(fn, {"manual": True, "manual_name": description}, **widgets)
    return w
