"""Audio of the emotion world: prosody feature vectors, A = g_a(z_e, eps_a).

WETR's Eq. (1) abstracts a video-text pair as V = g_v(z_e, eps_v), T = g_t(z_e, eps_t); the MER2023 and
CA-MER views add audio in the same form, A = g_a(z_e, eps_a). Here g_a is

    A = mu[z_a] + sigma(eps) * n,   n ~ N(0, I_8),

with one prototype ``mu[e]`` per emotion over the 8 prosody features :data:`FEATURES`
(standardised units: 0 is the population mean, 1 about one standard deviation).

Prototypes. :data:`RAW_PROTOTYPES` writes down a plausible prosodic profile per emotion (anger: loud,
bright, little pausing; sadness: low, quiet, slow, many pauses; fear/worry: high jitter; surprise/awe:
wide pitch range ...). The generator uses them centred (mean over the 12 emotions subtracted) and
rescaled to a common norm :data:`PROTOTYPE_NORM`, so the all-zero vector -- the emotion-neutral mean
prosody used when audio is not informative -- is equidistant from every prototype and carries no
evidence about z_e. Close pairs (:data:`emolens.world.taxonomy.CLOSE_PAIRS`) have closer prototypes
than the average pair (checked by the tests).

Noise. ``sigma(eps) = SIGMA0 * (1 + NOISE_SLOPE * eps)`` = 0.75 * (1 + 0.25 * eps). The nearest-prototype
(Bayes) decision on audio alone is right for about 84% of the MER view's six classes at eps = 0 (well
above the 17% chance, not perfect), 74% at eps = 1, 60% at eps = 3 and 43% at eps = 7 (12 classes: 66%
at eps = 0). :func:`audio_bayes_accuracy` measures it.
"""
from __future__ import annotations

import numpy as np

from .taxonomy import EMOTIONS

FEATURES: tuple = ("pitch", "energy", "tempo", "pitch_range", "jitter", "shimmer", "pause_ratio", "spectral_tilt")

#: emotion -> raw profile over FEATURES (before centring and normalisation).
RAW_PROTOTYPES: dict = {
    #              pitch energy tempo range jitter shimmer pause tilt
    "neutral":     (0.0, -0.3, 0.0, -1.5, -0.5, -0.5, 0.3, -0.5),
    "anger":       (0.5, 1.8, 0.8, 0.8, 0.8, 1.2, -0.8, 1.5),
    "disgust":     (0.0, 1.1, 0.1, 0.5, 0.7, 1.2, -0.1, 0.9),
    "happiness":   (1.2, 1.0, 0.8, 1.2, -0.3, -0.2, -0.6, 0.6),
    "contentment": (0.8, 0.5, 0.4, 1.0, -0.4, -0.4, -0.3, 0.3),
    "amusement":   (1.1, 0.8, 1.4, 1.6, 0.6, 0.2, -0.9, 0.4),
    "excitement":  (1.6, 1.4, 1.7, 1.4, 0.4, 0.5, -1.2, 1.0),
    "sadness":     (-1.2, -1.4, -1.2, -0.8, 0.4, 0.6, 1.4, -1.2),
    "worry":       (0.6, -0.4, 0.6, -0.2, 1.2, 0.8, 0.6, -0.4),
    "fear":        (1.0, -0.2, 1.0, 0.2, 1.6, 1.0, 0.8, -0.2),
    "surprise":    (1.8, 0.8, 0.0, 2.0, 0.2, 0.0, 0.6, 0.5),
    "awe":         (1.2, 0.2, -0.6, 1.6, 0.0, -0.2, 1.2, 0.0),
}

PROTOTYPE_NORM = 2.0
SIGMA0 = 0.75
NOISE_SLOPE = 0.25


def _prototypes() -> dict:
    raw = np.array([RAW_PROTOTYPES[e] for e in EMOTIONS], np.float64)
    c = raw - raw.mean(axis=0, keepdims=True)
    c = PROTOTYPE_NORM * c / np.linalg.norm(c, axis=1, keepdims=True)
    return {e: c[i].astype(np.float32) for i, e in enumerate(EMOTIONS)}


#: emotion -> centred, equal-norm prototype [8] float32.
PROTOTYPES: dict = _prototypes()
#: the emotion-neutral mean prosody (no evidence about z_e).
MEAN_PROSODY = np.zeros(len(FEATURES), np.float32)


def audio_sigma(eps: float) -> float:
    """Standard deviation of the per-feature Gaussian noise at nuisance level ``eps``."""
    return SIGMA0 * (1.0 + NOISE_SLOPE * float(eps))


def audio_bayes_accuracy(labels, eps: float, n: int = 20000, seed: int = 0) -> float:
    """Monte-Carlo accuracy of the nearest-prototype (Bayes, for equal priors) decision on audio alone."""
    rng = np.random.default_rng(seed)
    mu = np.stack([PROTOTYPES[e] for e in labels])
    y = rng.integers(0, len(labels), n)
    x = mu[y] + audio_sigma(eps) * rng.standard_normal((n, mu.shape[1]))
    d = ((x[:, None, :] - mu[None]) ** 2).sum(-1)
    return float((d.argmin(1) == y).mean())
