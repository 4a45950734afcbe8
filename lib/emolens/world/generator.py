"""The emotion world: a generative model that mirrors WETR's world-model view of MER (seed 000, Sec. 3.2).

WETR abstracts a video-text pair as

    V = g_v(z_e, eps_v),   T = g_t(z_e, eps_t)                                   (Eq. 1)

with a latent emotional state z_e and modality-specific nuisance eps. :class:`EmoWorld` implements these
mappings explicitly (plus audio, A = g_a(z_e, eps_a), for the MER2023 and CA-MER views) so that every
sample knows which pixels and which words carry z_e:

- z_e: one emotion name drawn uniformly from the view's labels (``label=`` forces it).
- g_v (frames ``[T, H, W, 3]`` uint8): a background of one of :data:`BG_COLORS`, 1-4 countable objects
  (squares/discs in other palette colours), and the true speaker's face: a yellow disc with a dark
  outline, 13 px across on 32 px frames, whose expression (mouth, brows, eyes; table in
  :mod:`emolens.world.taxonomy`) encodes the visual emotion. The face sits at a random position that is
  never aligned to the 4-px patch grid, moves by 1-2 px between frames, and its expression is strongest
  on a random apex frame. ``cue_mask`` marks exactly the pixels the face occupies (disc, outline,
  features), per frame.
- g_a (audio ``[8]`` float32 prosody features, ``audio_kind="features"``): see
  :mod:`emolens.world.prosody`.
- g_t (subtitle): see :mod:`emolens.world.text`.

Nuisance. One scalar ``eps`` in [0, 7] (WETR's robustness sweep goes up to eps = 7) scales all of it:

=====================  =============================================================================
visual texture         sinusoidal stripes of amplitude 6*eps (RGB units) over a mild gradient
visual clutter         round(2*eps) random 1-px lines and dots in random (non-yellow) colours
pixel noise            Gaussian, std 2 + 4*eps, fresh per frame
decoy faces            eps > 0: between floor(eps/3) and min(3, ceil(eps/2)) face-shaped decoys in
                       grey / cyan / pink with random expressions (never the label, never in cue_mask)
glyph intensity        apex frame 1 - 0.04*eps; other frames uniform in [0.75 - 0.06*eps, 0.9 - 0.04*eps]
audio noise            std 0.75 * (1 + 0.25*eps) per feature
subtitle filler        about eps extra filler words
=====================  =============================================================================

Version 2 (``version=2``, opt-in; issue 12, closer to real clips). Ground truth (label, per-modality
label, cue_mask, cue words, the random streams) is generated exactly as in version 1; only the rendering
changes: frames are 64 px by default (2 frames x 8 x 8 = 128 visual tokens per clip at emolens-tiny's
8-px patch) while the face stays 13 px (never scaled), so the evidence covers about 6-9 of a frame's
64 tokens; the scene has 2-6 objects' worth of clutter per 32 px tile (nuisance scales with the frame
area); decoys appear from eps > 0 in larger numbers (between max(1, floor(eps/2)) and min(6, ceil(1.5*eps))),
wear the expressions of real emotions (never the label's) and may be orange, close to the true face's
yellow; the expression fades faster with eps (apex 1 - 0.08*eps, other frames in
[0.7 - 0.08*eps, 0.85 - 0.06*eps], floored at 0.15), so the one-feature close pairs become confusable.

At eps = 0 a clip is a near-plain background (gradient of +-10, pixel noise std 2), the objects and the
face: the cues are crisp and consistent, so a small model can learn them; higher eps is a genuine
test-time shift of every modality at once.

Determinism. A sample is a pure function of (seed, view, split, index) (and the constructor's
parameters). Independent streams, each a numpy Generator seeded from
``SeedSequence([seed, crc32(view), crc32(split), index, stream])``, draw (0) the label, (1) the conflict
partner, (2) the scene (background, face path, apex, objects), (3) the visual nuisance, (4) the audio
noise, (5) the utterance, (6) the subtitle filler, (7) the decoys. Changing eps therefore changes only
the nuisance of a sample: the same index at eps = 0 and eps = 5 shows the same scene, label, face path and
utterance. Splits use different crc32 values, so train/validation/test never share a stream.

Conflicts (CA-MER, seed 003 Sec. 3). ``"consistent"``: every modality expresses the label.
``"video-aligned"``: the label is the face's emotion and the audio expresses another emotion;
``"audio-aligned"``: the label is the audio's emotion and the face shows another. The other emotion has
a different valence with probability 0.8 (a same-valence one otherwise, where the view has one). In all
modes the subtitle follows the label with probability ``p_text_emotion`` and is filler otherwise (text
never takes sides in the audio-visual conflict).

Informative modalities. A modality left out of ``informative`` carries no evidence: the face is drawn
with a blank expression (eyes only, no mouth or brows), the audio is the emotion-neutral mean prosody
plus noise, the subtitle is filler only. Its entry in ``labels_by_modality`` is None. For the EmoSet view
(no audio) "audio" is accepted and dropped, so ``EmoWorld("emoset").informative == ("visual", "text")``.
"""
from __future__ import annotations

import math
import numbers
import zlib
from typing import Optional

import numpy as np

from ..sample import Sample
from .glyphs import GLYPH, face_template, paint_face
from .prosody import MEAN_PROSODY, PROTOTYPES, audio_sigma
from .taxonomy import (BG_COLORS, BG_RGB, BLANK_EXPRESSION, BROWS, DECOY_FILLS, EMOTIONS, EXPRESSIONS, EYES,
                       FACE_DARK, FACE_FILL, FACE_OUTLINE, FACE_WHITE, MOUTHS, OBJECT_SHAPES, VALENCE, VIEWS)
from .text import make_subtitle

MODALITIES = ("visual", "audio", "text")
SPLITS = ("train", "validation", "test")
PATCH = 4
EPS_MAX = 7.0
MIN_SIZE, MAX_SIZE = 24, 512
MAX_FRAMES = 16
P_OTHER_VALENCE = 0.8

_S_LABEL, _S_CONFLICT, _S_SCENE, _S_NUIS, _S_AUDIO, _S_TEXT, _S_TEXTNOISE, _S_DECOY = range(8)


def _canonical_view(view) -> str:
    if not isinstance(view, str):
        raise ValueError(f"view must be one of {sorted(VIEWS)} (or 'world-<view>'), got {view!r}")
    v = view[len("world-"):] if view.startswith("world-") else view
    if v not in VIEWS:
        raise ValueError(f"view must be one of {sorted(VIEWS)} (or 'world-<view>'), got {view!r}")
    return v


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


class EmoWorld:
    """A view of the synthetic emotion world (see the module docstring for the generative model).

    Args:
        view: ``"mer"``, ``"emoset"`` or ``"camer"`` (``"world-mer"`` etc. accepted).
        eps: nuisance level in [0, 7], scaling every modality's noise.
        conflict: ``"consistent"``, ``"video-aligned"`` or ``"audio-aligned"`` (views with audio only
            accept the latter two).
        informative: the modalities that carry emotion evidence (subset of visual, audio, text).
        frames: clip length T (default 2 for mer/camer, which need T >= 2; emoset is a still, T = 1).
        size: frame side in pixels, a multiple of 4 (the visual patch) in [24, 512]; 32 gives 8 x 8 = 64
            patches per frame. The face template is scaled by ``max(1, size // 32)``.
        p_text_emotion: probability that the subtitle contains an emotion word (else filler only).
        seed: world seed (non-negative int).
        version: 1 (default world) or 2 (64-px frames, unscaled 13-px face, area-scaled clutter, more
            and realistic decoys; see the module docstring). ``size`` defaults to 32 (v1) / 64 (v2).
    """

    patch = PATCH

    def __init__(self, view: str = "mer", *, eps: float = 0.0, conflict: str = "consistent",
                 informative=("visual", "audio", "text"), frames: Optional[int] = None, size: Optional[int] = None,
                 p_text_emotion: float = 0.5, seed: int = 0, version: int = 1) -> None:
        self.view = _canonical_view(view)
        if version not in (1, 2) or isinstance(version, bool):
            raise ValueError(f"version must be 1 (the default world) or 2 (issue 12's larger, noisier clips), got {version!r}")
        self.version = int(version)
        if size is None:
            size = 64 if self.version == 2 else 32
        spec = VIEWS[self.view]
        if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not math.isfinite(eps) \
                or not 0.0 <= float(eps) <= EPS_MAX:
            raise ValueError(f"eps must be in [0, 7], got {eps!r}")
        self.eps = float(eps)
        if conflict not in spec["conflicts"]:
            raise ValueError(f"conflict must be one of {list(spec['conflicts'])} for view {self.view!r}, got {conflict!r}")
        self.conflict = conflict
        if isinstance(informative, str):
            informative = (informative,)
        try:
            inf = set(informative)
        except TypeError:
            raise ValueError(f"informative must be a subset of {list(MODALITIES)}, got {informative!r}") from None
        if not inf <= set(MODALITIES):
            raise ValueError(f"informative must be a subset of {list(MODALITIES)}, got {sorted(map(str, inf))!r}")
        has_audio = bool(spec["audio"])
        # canonical order; "audio" is dropped for views without audio (it has nothing to inform)
        self.informative = tuple(m for m in MODALITIES if m in inf and (m != "audio" or has_audio))
        if frames is None:
            frames = spec["frames"]
        if not _is_int(frames):
            raise ValueError(f"frames must be an integer, got {frames!r}")
        frames = int(frames)
        if self.view == "emoset" and frames != 1:
            raise ValueError(f"frames must be 1 for view 'emoset' (a still image), got {frames}")
        if self.view != "emoset" and not 2 <= frames <= MAX_FRAMES:
            raise ValueError(f"frames must be in [2, {MAX_FRAMES}] for video view {self.view!r}, got {frames}")
        self.frames = frames
        if not _is_int(size) or size % PATCH != 0 or not MIN_SIZE <= size <= MAX_SIZE:
            raise ValueError(f"size must be a multiple of {PATCH} in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}")
        self.size = int(size)
        if not isinstance(p_text_emotion, numbers.Real) or isinstance(p_text_emotion, bool) \
                or not 0.0 <= float(p_text_emotion) <= 1.0:
            raise ValueError(f"p_text_emotion must be in [0, 1], got {p_text_emotion!r}")
        self.p_text_emotion = float(p_text_emotion)
        if not _is_int(seed) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)

        self.labels: tuple = tuple(spec["labels"])
        self.valence_groups: dict = {g: list(v) for g, v in spec["valence_groups"].items()}
        self.modalities: tuple = tuple(spec["modalities"])
        self.has_audio: bool = bool(spec["audio"])
        self.scale = 1 if self.version == 2 else max(1, self.size // 32)
        self.glyph_size = GLYPH * self.scale

    # ------------------------------------------------------------------ helpers
    @property
    def name(self) -> str:
        return f"world-{self.view}"

    @property
    def config(self) -> dict:
        """The constructor arguments (JSON-serialisable), e.g. for recording a run."""
        return {"view": self.view, "eps": self.eps, "conflict": self.conflict,
                "informative": list(self.informative), "frames": self.frames, "size": self.size,
                "p_text_emotion": self.p_text_emotion, "seed": self.seed,
                **({"version": self.version} if self.version != 1 else {})}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items() if k != "view")
        return f"EmoWorld({self.view!r}, {args})"

    def _rngs(self, split: str, index: int):
        base = [self.seed, zlib.crc32(self.view.encode()), zlib.crc32(split.encode()), int(index)]
        ss = np.random.SeedSequence(base)
        return [np.random.default_rng(c) for c in ss.spawn(8)]

    def _other(self, rng: np.random.Generator, label: str) -> str:
        diff = [l for l in self.labels if VALENCE[l] != VALENCE[label]]
        same = [l for l in self.labels if l != label and VALENCE[l] == VALENCE[label]]
        u = rng.random()
        pool = same if (same and (u >= P_OTHER_VALENCE or not diff)) else diff
        return pool[int(rng.integers(len(pool)))]

    # ------------------------------------------------------------------ sampling
    def sample(self, split: str, index: int, label: Optional[str] = None, *, glyph: bool = True) -> Sample:
        """The sample ``index`` of ``split`` (deterministic).

        ``label`` forces the emotion z_e (it must be one of :attr:`labels`). ``glyph=False`` renders the
        same clip without the true face (a counterfactual for deletion tests; ``cue_mask`` still marks
        where the face would be and ``meta["glyph"]`` is False).
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if not _is_int(index) or index < 0:
            raise ValueError(f"index must be a non-negative integer, got {index!r}")
        index = int(index)
        r = self._rngs(split, index)

        # z_e
        drawn = self.labels[int(r[_S_LABEL].integers(len(self.labels)))]
        if label is None:
            label = drawn
        elif label not in self.labels:
            known = "an emotion of another view" if label in EMOTIONS else "an unknown emotion"
            raise ValueError(f"label must be one of {list(self.labels)} for view {self.view!r}, got {label!r} ({known})")

        # what each modality expresses
        other = self._other(r[_S_CONFLICT], label)
        v_emo, a_emo = label, label
        if self.conflict == "video-aligned":
            a_emo = other
        elif self.conflict == "audio-aligned":
            v_emo = other
        t_emo = label if r[_S_TEXT].random() < self.p_text_emotion else None
        if "visual" not in self.informative:
            v_emo = None
        if "audio" not in self.informative or not self.has_audio:
            a_emo = None
        if "text" not in self.informative:
            t_emo = None

        frames, cue_mask, vmeta = self._render(r[_S_SCENE], r[_S_NUIS], r[_S_DECOY], v_emo, glyph)

        audio = None
        if self.has_audio:
            mu = PROTOTYPES[a_emo] if a_emo is not None else MEAN_PROSODY
            audio = (mu + audio_sigma(self.eps) * r[_S_AUDIO].standard_normal(mu.shape[0])).astype(np.float32)

        subtitle, cue_words = make_subtitle(r[_S_TEXT], r[_S_TEXTNOISE], t_emo, self.eps)

        tag = "" if self.conflict == "consistent" else f"{self.conflict}/"
        meta = {
            "view": self.view, "split": split, "index": index, "eps": self.eps, "conflict": self.conflict,
            "informative": list(self.informative), "valence": VALENCE[label], "seed": self.seed,
            "glyph": bool(glyph), **vmeta,
        }
        return Sample(
            uid=f"{self.name}/{split}/{tag}{index:06d}",
            frames=frames,
            audio=audio,
            audio_kind="features" if audio is not None else None,
            subtitle=subtitle,
            label=label,
            labels_by_modality={"visual": v_emo, "audio": a_emo, "text": t_emo},
            cue_mask=cue_mask,
            subtitle_cue_words=cue_words,
            meta=meta,
        )

    def samples(self, split: str, n: int, start: int = 0) -> list:
        """``[sample(split, start), ..., sample(split, start + n - 1)]``."""
        if not _is_int(n) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        if not _is_int(start) or start < 0:
            raise ValueError(f"start must be a non-negative integer, got {start!r}")
        return [self.sample(split, start + i) for i in range(int(n))]

    # ------------------------------------------------------------------ g_v
    def _face_path(self, rng: np.random.Generator):
        """Top-left corners of the face per frame: never on the 4-px grid, 1-2 px moves, inside the frame."""
        g, n = self.glyph_size, self.size
        lo, hi = 2, n - g - 2  # inclusive range for the first frame (leaves room for motion)
        coords = [c for c in range(lo, hi + 1) if c % PATCH != 0]
        y = int(coords[int(rng.integers(len(coords)))])
        x = int(coords[int(rng.integers(len(coords)))])
        path = [(y, x)]
        steps = [-2, -1, 0, 1, 2]
        for _ in range(1, self.frames):
            for _try in range(64):
                dy, dx = int(rng.choice(steps)), int(rng.choice(steps))
                ny, nx = y + dy, x + dx
                if (dy or dx) and 0 <= ny <= n - g and 0 <= nx <= n - g and ny % PATCH and nx % PATCH:
                    break
            else:  # pragma: no cover - always finds a move in practice
                ny, nx = y, x
            y, x = ny, nx
            path.append((y, x))
        return path

    def _render(self, rs: np.random.Generator, rn: np.random.Generator, rd: np.random.Generator,
                v_emo: Optional[str], glyph: bool):
        n, T, s, g, eps = self.size, self.frames, self.scale, self.glyph_size, self.eps

        # ---- scene (eps-independent)
        bg_i = int(rs.integers(len(BG_COLORS)))
        bg_name, bg_rgb = BG_COLORS[bg_i]
        path = self._face_path(rs)
        apex = int(rs.integers(T))
        u_int = rs.random(T)
        theta_grad = rs.random() * 2 * np.pi
        n_obj_target = int(rs.integers(1, 5))
        ys = [p[0] for p in path]
        xs = [p[1] for p in path]
        face_box = (min(ys), min(xs), max(ys) + g, max(xs) + g)
        boxes = [face_box]
        objects = []
        obj_colours = [c for c in BG_COLORS if c[0] != bg_name]
        for _ in range(n_obj_target):
            shape = OBJECT_SHAPES[int(rs.integers(len(OBJECT_SHAPES)))]
            cname, crgb = obj_colours[int(rs.integers(len(obj_colours)))]
            o = s * int(rs.integers(4, 6))
            for _try in range(100):
                oy, ox = int(rs.integers(0, n - o + 1)), int(rs.integers(0, n - o + 1))
                box = (oy, ox, oy + o, ox + o)
                if not any(_overlap(box, b, margin=1) for b in boxes):
                    break
            else:
                continue
            boxes.append(box)
            objects.append({"shape": shape, "color": cname, "rgb": crgb, "y": oy, "x": ox, "size": o})

        # ---- background: gradient (+-10) + eps texture + eps clutter
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / max(n - 1, 1)
        grad = (np.cos(theta_grad) * (xx - 0.5) + np.sin(theta_grad) * (yy - 0.5)) * 20.0
        canvas = np.empty((n, n, 3), np.float32)
        canvas[:] = np.asarray(bg_rgb, np.float32)
        canvas += grad[..., None]
        v2 = self.version == 2
        area = (n / 32.0) ** 2 if v2 else 1.0  # v2: nuisance per 32-px tile
        n_clutter = int(round(2 * eps * area))
        if eps > 0:
            th = rn.random() * np.pi
            period = rn.uniform(3.0, 8.0) * s
            phase = rn.random() * 2 * np.pi
            direction = rn.uniform(-1.0, 1.0, 3).astype(np.float32)
            px = np.mgrid[0:n, 0:n].astype(np.float32)
            stripes = np.sin(2 * np.pi * (np.cos(th) * px[1] + np.sin(th) * px[0]) / period + phase)
            canvas += (6.0 * eps) * stripes[..., None] * direction
            for _ in range(n_clutter):
                col = _clutter_colour(rn)
                if rn.random() < 0.6:  # a line
                    y0, x0, y1, x1 = (int(v) for v in rn.integers(0, n, 4))
                    m = max(abs(y1 - y0), abs(x1 - x0), 1)
                    ly = np.round(np.linspace(y0, y1, m + 1)).astype(int)
                    lx = np.round(np.linspace(x0, x1, m + 1)).astype(int)
                    canvas[ly, lx] = col
                else:  # a dot
                    d = int(rn.integers(1, 3)) * s
                    dy, dx = int(rn.integers(0, n - d + 1)), int(rn.integers(0, n - d + 1))
                    canvas[dy:dy + d, dx:dx + d] = col

        # ---- objects
        for ob in objects:
            o, oy, ox = ob["size"], ob["y"], ob["x"]
            if ob["shape"] == "square":
                canvas[oy:oy + o, ox:ox + o] = ob["rgb"]
            else:
                c = (o - 1) / 2
                dy_, dx_ = np.mgrid[0:o, 0:o]
                disc = (dy_ - c) ** 2 + (dx_ - c) ** 2 <= (o / 2) ** 2 + 0.25
                canvas[oy:oy + o, ox:ox + o][disc] = ob["rgb"]

        # ---- decoys (eps > 0)
        decoys = []
        if eps > 0:
            if v2:
                lo, hi = max(1, int(eps // 2)), min(6, int(math.ceil(1.5 * eps)))
            else:
                lo, hi = int(eps // 3), min(3, int(math.ceil(eps / 2)))
            n_dec = int(rd.integers(lo, hi + 1))
            fills = DECOY_FILLS + ((("orange", (236, 166, 60)),) if v2 else ())
            others = [e for e in EXPRESSIONS if e != v_emo]
            for _ in range(n_dec):
                fname, frgb = fills[int(rd.integers(len(fills)))]
                if v2:  # a real emotion's expression, never the one the true face shows
                    expr = tuple(EXPRESSIONS[others[int(rd.integers(len(others)))]])
                else:
                    expr = (MOUTHS[int(rd.integers(len(MOUTHS)))], BROWS[int(rd.integers(len(BROWS)))],
                            EYES[int(rd.integers(len(EYES)))])
                inten = float(rd.uniform(0.6, 1.0))
                off = g // 2  # a decoy may be cut by the frame border by up to half its size
                for _try in range(200):
                    dy, dx = int(rd.integers(-off, n - g + off + 1)), int(rd.integers(-off, n - g + off + 1))
                    box = (dy, dx, dy + g, dx + g)
                    if not any(_overlap(box, b, margin=1) for b in boxes):
                        break
                else:
                    continue
                boxes.append(box)  # later decoys avoid it too
                paint_face(canvas, face_template(*expr, scale=s), dy, dx, frgb, FACE_OUTLINE, FACE_DARK,
                           FACE_WHITE, intensity=inten)
                decoys.append({"color": fname, "expression": list(expr), "y": dy, "x": dx})

        # ---- the true face, per frame, then pixel noise
        expr = EXPRESSIONS[v_emo] if v_emo is not None else BLANK_EXPRESSION
        code = face_template(*expr, scale=s)
        if self.version == 2:
            apex_int = max(0.15, 1.0 - 0.08 * eps)
            lo_i, hi_i = max(0.15, 0.7 - 0.08 * eps), max(0.15, 0.85 - 0.06 * eps)
        else:
            apex_int = 1.0 - 0.04 * eps
            lo_i, hi_i = 0.75 - 0.06 * eps, 0.9 - 0.04 * eps
        intensity = [apex_int if t == apex else float(lo_i + u_int[t] * (hi_i - lo_i)) for t in range(T)]
        noise_std = 2.0 + 4.0 * eps
        out = np.empty((T, n, n, 3), np.uint8)
        mask = np.zeros((T, n, n), bool)
        for t in range(T):
            frame = canvas.copy()
            y, x = path[t]
            if glyph:
                paint_face(frame, code, y, x, FACE_FILL, FACE_OUTLINE, FACE_DARK, FACE_WHITE,
                           intensity=intensity[t], mask=mask[t])
            else:
                paint_face(np.zeros_like(frame), code, y, x, FACE_FILL, FACE_OUTLINE, FACE_DARK, FACE_WHITE,
                           intensity=intensity[t], mask=mask[t])
            frame += rn.normal(0.0, noise_std, frame.shape).astype(np.float32)
            out[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)

        meta = {
            "bg_color": bg_name,
            "n_objects": len(objects),
            "objects": [{k: v for k, v in ob.items() if k != "rgb"} for ob in objects],
            "n_decoys": len(decoys),
            "decoys": decoys,
            "face": {"path": [list(p) for p in path], "size": g, "apex": apex,
                     "intensity": [round(float(i), 4) for i in intensity],
                     "expression": [e for e in expr]},
        }
        return out, mask, meta


def _overlap(a, b, margin: int = 0) -> bool:
    """Do boxes (y0, x0, y1, x1) overlap (after growing ``a`` by ``margin``)?"""
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def _clutter_colour(rng: np.random.Generator) -> np.ndarray:
    """A random RGB colour not close to the true face's yellow (clutter must not mimic the face)."""
    face = np.asarray(FACE_FILL, np.float32)
    for _ in range(32):
        c = rng.uniform(0, 255, 3).astype(np.float32)
        if np.linalg.norm(c - face) > 90:
            return c
    return np.asarray((90.0, 90.0, 90.0), np.float32)
