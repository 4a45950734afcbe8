"""WETR: World-Model inspired Emotion-aware Token Refinement (seed 000, Sec. 3.2-3.4).

At every trigger layer l in L_reg = {l | l mod n_r = 0} WETR updates both factors of the token-usage
weight w_i = m_i gamma_i (Eq. 2): NTS (``nts.py``, Eq. 4-7) re-selects m_i and STR (``reweight.py``,
Eq. 9-11) rescales the admitted tokens' hidden states; non-trigger layers are untouched and the answer
is read by standard decoding (the next-token logits at the answer position). Everything happens in one
forward: each trigger layer has its captures and an ``AfterLayer`` callback that masks keys from
l + 1 on and scales layer l's output.

Choices the paper leaves open (documented defaults)
---------------------------------------------------
* **n_r** (default 2): the paper uses n_r = 9 on 36-layer InternVL3.5-8B, i.e. a trigger every quarter
  of the depth; scaled to the embedded 8-layer model that is 8 * 9/36 = 2. For a real checkpoint set
  n_r yourself (e.g. 9 for 36 layers, 7 for 28).
* **Layer 0 is not a trigger by default** (``include_layer0=False``), although 0 mod n_r = 0 literally:
  at layer 0 the Q_pos / Q_neg rows attend on raw embeddings (they have not read any context, so their
  contrast carries no evidence about z_e), and because keep-set sizes are fractions of the original
  modality (below), the first trigger fixes the whole selection: including layer 0 would make every
  NTS decision on embedding-level attention. With the default, WETR's first trigger is the ``nts``
  method's default layer (2 of 8), so ``wetr(use_str=False)`` equals ``nts``. ``include_layer0=True``
  gives the literal set.
* **The last layer is never a trigger**: a mask or scale after it cannot act on any later layer.
  Triggers for 8 layers and n_r = 2: {2, 4, 6}. A setting with no trigger layer is a ValueError.
* **Repeated selection**: at every trigger the keep-set sizes are fractions of the *original* modality
  size (ceil(p_v |I_v|), ceil(p_t |I_con|)), chosen among the tokens still admitted (the scores are
  recomputed at that layer, with Norm over the admitted tokens); dropped tokens never come back (m_i
  composes by AND). With these sizes a later trigger keeps as many tokens as are admitted, so only the
  first trigger drops tokens; STR re-reads the (then masked) attention at every trigger.
* **gamma composes multiplicatively**: each trigger scales the hidden state it sees at that layer's
  output (h_i <- gamma_i^(l) h_i); nothing is reset, so the part of h_i carried through the residual
  stream from an earlier trigger is scaled by the product of the gammas.
* **Module ablation** (WETR Table 3): ``use_nts=False`` keeps every token (K = all, the scores still
  feed STR's gate and anchors); ``use_str=False`` leaves gamma = 1; both False is the frozen model (the
  captures and callbacks still run but change nothing: logits equal zero-shot).
* **Selection noise** (WETR Table 5, ``noise_r``): after NTS's selection at each trigger, a fraction
  noise_r of each modality's kept tokens is swapped for dropped candidates of the same modality
  (``metrics.swap_selection_noise``: round(r * n_kept) tokens, so with one kept visual token the visual
  selection changes only for r >= 0.5). With ``use_nts=False`` (the Table 5 baseline row) a random
  round(r * n) tokens of each modality are dropped at the first trigger (``metrics.error_propagation``).
"""
from __future__ import annotations

from .base import Param
from .nts import NTS_PARAMS
from .reweight import STR, STR_PARAMS

WETR_PARAMS = {
    **{k: v for k, v in NTS_PARAMS.items() if k != "layer"},
    **STR_PARAMS,
    "n_r": Param(2, int, low=1, doc="trigger interval: layers with l mod n_r == 0 (9 of 36 scaled to 8 layers -> 2)"),
    "include_layer0": Param(False, bool, doc="count layer 0 as a trigger layer (the literal l mod n_r = 0 set)"),
    "use_nts": Param(True, bool, doc="NTS module (WETR Table 3)"),
    "use_str": Param(True, bool, doc="STR module (WETR Table 3)"),
    "noise_r": Param(0.0, float, low=0.0, high=1.0, doc="post-NTS selection noise ratio r (WETR Table 5)"),
}


class WETR(STR):
    """NTS + STR at every trigger layer l mod n_r == 0 (see the module docstring)."""

    name = "wetr"
    PARAMS = WETR_PARAMS

    @property
    def use_str(self) -> bool:
        return bool(self.params["use_str"])

    def trigger_layers(self, n_layers: int) -> list:
        n_r = int(self.params["n_r"])
        first = 0 if self.params["include_layer0"] else 1
        layers = [l for l in range(first, n_layers - 1) if l % n_r == 0]
        if not layers:
            raise ValueError(f"wetr: n_r = {n_r} gives no trigger layer in a {n_layers}-layer model (triggers are "
                             f"{first}..{n_layers - 2} with l mod n_r == 0); use a smaller n_r or include_layer0=true")
        return layers
