"""Pixel templates of the face glyph that carries the emotion in the visual modality (g_v of WETR Eq. 1).

A face is a 13 x 13 template (at frame size 32; scaled by an integer factor ``size // 32`` for larger
frames) of codes:

- 0: transparent (not part of the glyph; the background shows through),
- 1: face fill (yellow for the true speaker, grey/cyan/pink for decoys),
- 2: outline (dark),
- 3: dark feature pixel (mouth, brows, pupils),
- 4: white feature pixel (the sclera of wide eyes).

The disc has a fill radius of 5.3 px and an outline ring out to 6.3 px, so the glyph is 13 px across.
Feature rows (template coordinates, row 0 at the top): brows rows 2-3, eyes rows 4-6 (normal 5-6,
narrow 5, wide 4-6), mouth rows 8-10;
left features around column 4, right features mirrored around column 8 (symmetric about column 6).
The patterns (see :data:`emolens.world.taxonomy.EXPRESSIONS` for which emotion uses which) are:

- brows: flat = straight 3-px bars on row 3; raised = arches (^) peaking on row 2; furrowed = inner ends
  down (\\ /: angry); slanted = inner ends up (/ \\: sad, worried);
- eyes: normal = 2x2 dark dots; wide = 3x3 white squares with a dark pupil; narrow = 3x1 dark slits;
- mouth: flat = 5-px line; smile = thin U; frown = thin inverted U; grin = filled half disc ("D" on its
  side); open = filled O; wavy = sine-like line.

Intensity: feature pixels are blended between the fill colour and the feature colour with a weight in
[0, 1] (``intensity``); the apex frame of a clip has the strongest expression.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import numpy as np

GLYPH = 13  # template side at scale 1

TRANSPARENT, FILL, OUTLINE, DARK, WHITE = 0, 1, 2, 3, 4

_BROWS = {
    "flat": [(3, 3), (3, 4), (3, 5)],
    "raised": [(3, 3), (2, 4), (3, 5)],
    "furrowed": [(2, 3), (3, 4), (3, 5)],
    "slanted": [(3, 3), (3, 4), (2, 5)],
}
_EYES_DARK = {
    "normal": [(5, 3), (5, 4), (6, 3), (6, 4)],
    "wide": [(5, 4)],
    "narrow": [(5, 3), (5, 4), (5, 5)],
}
_EYES_WHITE = {
    "normal": [],
    "wide": [(r, c) for r in (4, 5, 6) for c in (3, 4, 5) if (r, c) != (5, 4)],
    "narrow": [],
}
_MOUTHS = {
    "flat": [(9, c) for c in range(4, 9)],
    "smile": [(8, 3), (9, 4), (10, 5), (10, 6), (10, 7), (9, 8), (8, 9)],
    "frown": [(10, 3), (9, 4), (8, 5), (8, 6), (8, 7), (9, 8), (10, 9)],
    "grin": [(8, c) for c in range(3, 10)] + [(9, c) for c in range(4, 9)] + [(10, c) for c in range(5, 8)],
    "open": [(8, 5), (8, 6), (8, 7), (9, 4), (9, 5), (9, 6), (9, 7), (9, 8), (10, 5), (10, 6), (10, 7)],
    "wavy": [(9, 3), (8, 4), (8, 5), (9, 6), (10, 7), (10, 8), (9, 9)],
}


def _mirror(points):
    """Left-side feature points -> both sides (mirror about the template's centre column)."""
    out = list(points)
    out += [(r, GLYPH - 1 - c) for r, c in points]
    return out


@lru_cache(maxsize=None)
def _disc() -> np.ndarray:
    c = (GLYPH - 1) / 2
    yy, xx = np.mgrid[:GLYPH, :GLYPH]
    d = np.sqrt((yy - c) ** 2 + (xx - c) ** 2)
    code = np.zeros((GLYPH, GLYPH), np.int8)
    code[d <= 6.3] = OUTLINE
    code[d <= 5.3] = FILL
    return code


@lru_cache(maxsize=None)
def face_template(mouth: Optional[str], brows: Optional[str], eyes: Optional[str], scale: int = 1) -> np.ndarray:
    """Code template ``[13*scale, 13*scale]`` int8 of a face with the given features (None: omitted).

    Brows and eyes are mirrored left/right (so "furrowed" is \\ / and "slanted" is / \\); mouths are
    drawn as given (they are already symmetric, except "wavy").
    """
    code = _disc().copy()
    if brows is not None:
        if brows not in _BROWS:
            raise ValueError(f"brows must be one of {sorted(_BROWS)}, got {brows!r}")
        for r, c in _mirror(_BROWS[brows]):
            code[r, c] = DARK
    if eyes is not None:
        if eyes not in _EYES_DARK:
            raise ValueError(f"eyes must be one of {sorted(_EYES_DARK)}, got {eyes!r}")
        for r, c in _mirror(_EYES_WHITE[eyes]):
            code[r, c] = WHITE
        for r, c in _mirror(_EYES_DARK[eyes]):
            code[r, c] = DARK
    if mouth is not None:
        if mouth not in _MOUTHS:
            raise ValueError(f"mouth must be one of {sorted(_MOUTHS)}, got {mouth!r}")
        for r, c in _MOUTHS[mouth]:
            code[r, c] = DARK
    if scale > 1:
        code = np.kron(code, np.ones((scale, scale), np.int8))
    code.setflags(write=False)
    return code


def paint_face(canvas: np.ndarray, code: np.ndarray, y: int, x: int, fill, outline, dark, white,
               intensity: float = 1.0, mask: Optional[np.ndarray] = None) -> None:
    """Paint a face template onto ``canvas`` ([H, W, 3] float32) with its top-left corner at (y, x).

    Feature pixels (codes 3, 4) are ``fill + intensity * (feature - fill)``. Parts outside the canvas
    are clipped. When ``mask`` ([H, W] bool) is given, the glyph's pixels are set True in it.
    """
    h, w = canvas.shape[:2]
    g = code.shape[0]
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + g, h), min(x + g, w)
    if y0 >= y1 or x0 >= x1:
        return
    sub = code[y0 - y: y1 - y, x0 - x: x1 - x]
    region = canvas[y0:y1, x0:x1]
    fill = np.asarray(fill, np.float32)
    colours = {
        FILL: fill,
        OUTLINE: np.asarray(outline, np.float32),
        DARK: fill + intensity * (np.asarray(dark, np.float32) - fill),
        WHITE: fill + intensity * (np.asarray(white, np.float32) - fill),
    }
    for k, col in colours.items():
        region[sub == k] = col
    if mask is not None:
        mask[y0:y1, x0:x1] |= sub != TRANSPARENT
