"""Names of the emotion world: emotions, valence, glyph expressions, subtitle words, colours, views.

Everything here is a constant; the generator (:mod:`emolens.world.generator`) only reads it.

Emotions
    The union of MER2023's six classes (neutral, anger, happiness, sadness, worry, surprise) and
    EmoSet's eight (amusement, awe, contentment, excitement | anger, disgust, fear, sadness; seed 001,
    SEPM, splits EmoSet into these 4 positive / 4 negative categories): 12 names in :data:`EMOTIONS`.

Valence
    :data:`VALENCE` maps each emotion to ``"positive"``, ``"negative"`` or ``"neutral"``. Surprise counts
    as positive (as in the MER2023 valence grouping used by the coarse stage of SEPM's coarse-to-fine
    inference).

Glyph expressions (the visual cue of z_e)
    The true speaker's face carries the emotion through three features, each drawn with a fixed pixel
    pattern (see :mod:`emolens.world.glyphs`):

    ============  =======  =========  =======
    emotion       mouth    brows      eyes
    ============  =======  =========  =======
    neutral       flat     flat       normal
    anger         flat     furrowed   narrow
    disgust       wavy     furrowed   narrow
    happiness     smile    raised     normal
    contentment   smile    raised     narrow
    amusement     grin     flat       narrow
    excitement    grin     flat       wide
    surprise      open     raised     wide
    awe           flat     raised     wide
    sadness       frown    slanted    narrow
    worry         wavy     slanted    normal
    fear          wavy     slanted    wide
    ============  =======  =========  =======

    mouth: flat = straight line, smile = thin U, frown = thin inverted U, grin = filled "D" (open smile),
    open = filled "O", wavy = a sine-like line. brows: flat = straight bars, raised = arches (^ ^),
    furrowed = inner ends down (\\ /), slanted = inner ends up (/ \\). eyes: normal = 2x2 dark dots,
    wide = 3x3 white with a dark pupil, narrow = 3x1 slits.

    Every two emotions differ in at least two features, except the pairs in :data:`CLOSE_PAIRS`,
    which differ in exactly one (the "semantically similar categories" that SEPM's coarse-to-fine
    stage targets). The test suite checks this property. Within the MER view every pair differs in
    at least two features; the close pairs live across or inside the EmoSet view.

Subtitle words
    :data:`EMOTION_WORDS` gives 4 lowercase adjectives per emotion; no word belongs to two emotions,
    and none is an emotion name or a filler word.

Views
    :data:`VIEWS` describes the three datasets the world stands in for: ``"mer"`` (MER2023: video,
    audio, subtitle, six labels), ``"emoset"`` (EmoSet: one still image plus a caption-like subtitle,
    eight labels, no audio) and ``"camer"`` (CA-MER, seed 003 Sec. 3: MER2023's six labels, with the
    video-aligned / audio-aligned / consistent conflict subsets).
"""
from __future__ import annotations

EMOTIONS: tuple = (
    "neutral", "anger", "happiness", "sadness", "worry", "surprise",
    "amusement", "awe", "contentment", "excitement", "disgust", "fear",
)

VALENCE: dict = {
    "neutral": "neutral",
    "anger": "negative", "sadness": "negative", "worry": "negative", "disgust": "negative", "fear": "negative",
    "happiness": "positive", "surprise": "positive", "amusement": "positive", "awe": "positive",
    "contentment": "positive", "excitement": "positive",
}

MOUTHS: tuple = ("flat", "smile", "frown", "grin", "open", "wavy")
BROWS: tuple = ("flat", "raised", "furrowed", "slanted")
EYES: tuple = ("normal", "wide", "narrow")

#: emotion -> (mouth, brows, eyes); see the module docstring for the table.
EXPRESSIONS: dict = {
    "neutral": ("flat", "flat", "normal"),
    "anger": ("flat", "furrowed", "narrow"),
    "disgust": ("wavy", "furrowed", "narrow"),
    "happiness": ("smile", "raised", "normal"),
    "contentment": ("smile", "raised", "narrow"),
    "amusement": ("grin", "flat", "narrow"),
    "excitement": ("grin", "flat", "wide"),
    "surprise": ("open", "raised", "wide"),
    "awe": ("flat", "raised", "wide"),
    "sadness": ("frown", "slanted", "narrow"),
    "worry": ("wavy", "slanted", "normal"),
    "fear": ("wavy", "slanted", "wide"),
}

#: the "no evidence" face used when the visual modality is not informative: eyes only, no mouth/brows.
BLANK_EXPRESSION: tuple = (None, None, "normal")

#: pairs of semantically close emotions whose glyphs differ in exactly one feature (and whose audio
#: prototypes are closer than average).
CLOSE_PAIRS: tuple = (
    ("worry", "fear"),            # eyes: normal vs wide
    ("happiness", "contentment"), # eyes: normal vs narrow
    ("anger", "disgust"),         # mouth: flat vs wavy
    ("amusement", "excitement"),  # eyes: narrow vs wide
    ("surprise", "awe"),          # mouth: open vs flat
)

EMOTION_WORDS: dict = {
    "neutral": ["indifferent", "unmoved", "impassive", "detached"],
    "anger": ["angry", "furious", "mad", "irritated"],
    "happiness": ["happy", "glad", "joyful", "cheerful"],
    "sadness": ["sad", "unhappy", "miserable", "gloomy"],
    "worry": ["worried", "anxious", "nervous", "uneasy"],
    "surprise": ["surprised", "shocked", "astonished", "startled"],
    "amusement": ["amused", "entertained", "tickled", "playful"],
    "awe": ["awed", "humbled", "reverent", "spellbound"],
    "contentment": ["content", "satisfied", "peaceful", "relaxed"],
    "excitement": ["excited", "thrilled", "eager", "pumped"],
    "disgust": ["disgusted", "revolted", "sickened", "repulsed"],
    "fear": ["afraid", "scared", "terrified", "frightened"],
}

#: background colours (name, RGB). Objects take one of these colours too (never the background's).
BG_COLORS: tuple = (
    ("white", (236, 236, 232)),
    ("black", (28, 28, 32)),
    ("red", (196, 48, 44)),
    ("green", (46, 150, 70)),
    ("blue", (48, 76, 196)),
    ("purple", (128, 56, 160)),
)
BG_RGB: dict = dict(BG_COLORS)

#: the true speaker's face: yellow fill, dark brown outline and features.
FACE_FILL = (246, 206, 44)
FACE_OUTLINE = (70, 44, 10)
FACE_DARK = (40, 24, 8)
FACE_WHITE = (255, 255, 255)
#: decoy faces (eps > 0): same shape, another colour, random expressions, never the label.
DECOY_FILLS: tuple = (("grey", (150, 150, 150)), ("cyan", (96, 196, 222)), ("pink", (232, 150, 186)))

OBJECT_SHAPES: tuple = ("square", "disc")
NUMBER_WORDS: tuple = ("one", "two", "three", "four")
#: ``str(meta["n_objects"])`` -- how an object count is answered (digits; the words above are also in the vocabulary).
NUMBER_DIGITS: tuple = ("1", "2", "3", "4")

_MER_LABELS = ("neutral", "anger", "happiness", "sadness", "worry", "surprise")
_MER_GROUPS = {"positive": ["happiness", "surprise"], "negative": ["anger", "sadness", "worry"], "neutral": ["neutral"]}
_EMOSET_LABELS = ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness")
_EMOSET_GROUPS = {"positive": ["amusement", "awe", "contentment", "excitement"],
                  "negative": ["anger", "disgust", "fear", "sadness"]}

CONFLICTS: tuple = ("consistent", "video-aligned", "audio-aligned")

#: view name -> description. ``modalities`` uses the manifest vocabulary (video/image, audio, text);
#: ``frames`` is the default clip length; ``conflicts`` the conflict modes the view accepts.
VIEWS: dict = {
    "mer": {
        "title": "Emotion world, MER2023 view",
        "labels": _MER_LABELS,
        "valence_groups": _MER_GROUPS,
        "modalities": ("video", "audio", "text"),
        "frames": 2,
        "audio": True,
        "conflicts": CONFLICTS,
    },
    "emoset": {
        "title": "Emotion world, EmoSet view",
        "labels": _EMOSET_LABELS,
        "valence_groups": _EMOSET_GROUPS,
        "modalities": ("image", "text"),
        "frames": 1,
        "audio": False,
        "conflicts": ("consistent",),
    },
    "camer": {
        "title": "Emotion world, CA-MER view",
        "labels": _MER_LABELS,
        "valence_groups": _MER_GROUPS,
        "modalities": ("video", "audio", "text"),
        "frames": 2,
        "audio": True,
        "conflicts": CONFLICTS,
    },
}


def feature_distance(a: str, b: str) -> int:
    """Number of glyph features (mouth, brows, eyes) in which emotions ``a`` and ``b`` differ."""
    return sum(x != y for x, y in zip(EXPRESSIONS[a], EXPRESSIONS[b]))
