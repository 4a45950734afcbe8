"""The method contract: a method is a name + validated hyperparameters that, given a loaded model, a
batch of samples and the task (label set, valence groups), returns one :class:`Prediction` per sample.

Methods are describable as plain dicts (``{"method": "nts", "p_v": 0.03, ...}``) so papermill ``-p``
and ``emolens sweep`` can drive them (:func:`emolens.methods.from_dict`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Sequence


@dataclass
class Task:
    """What is being recognised: the label set (option order) and its valence groups."""

    labels: tuple
    valence_groups: dict
    name: str = ""
    modalities: tuple = ()

    @classmethod
    def from_dataset(cls, ds) -> "Task":
        return cls(tuple(ds.labels), dict(ds.valence_groups), getattr(ds, "name", ""),
                   tuple(getattr(ds, "modalities", ()) or ()))

    @property
    def subject(self) -> str:
        """What SEPM's question names: "video" for video data, else "image" (SEPM's own wording)."""
        return "video" if "video" in self.modalities else "image"


@dataclass
class Prediction:
    """One sample's result. ``extra`` holds method-specific, JSON-serialisable details (confidence,
    kept/dropped token indices, gamma statistics...). ``selected_visual`` / ``selected_content`` are
    bool lists over the sample's visual / content tokens when the method selects tokens."""

    label: str
    letter: str = ""
    option_probs: dict = field(default_factory=dict)
    selected_visual: Optional[list] = None
    selected_content: Optional[list] = None
    extra: dict = field(default_factory=dict)
    #: the generated text (``answer=generate``; zero-shot-CoT by default), else None
    generated: Optional[str] = None
    #: the query text of each stage as encoded (a string; a list for multi-stage methods such as SEPM)
    prompt: Optional[Any] = None

    def to_dict(self) -> dict:
        d = {"label": self.label, "letter": self.letter,
             "option_probs": {k: round(float(v), 6) for k, v in self.option_probs.items()}}
        if self.prompt is not None:
            d["prompt"] = self.prompt
        if self.generated is not None:
            d["generated"] = self.generated
            d["parsed"] = self.label is not None
        if self.extra:
            d["extra"] = self.extra
        return d


@dataclass
class Param:
    """A hyperparameter: default, type, allowed range (inclusive bounds unless open_low/open_high)."""

    default: Any
    type: type = float
    low: Optional[float] = None
    high: Optional[float] = None
    open_low: bool = False
    open_high: bool = False
    choices: Optional[tuple] = None
    doc: str = ""

    def check(self, method: str, name: str, value: Any) -> Any:
        if self.type is bool and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{method}: {name} must be true or false, got {value!r}")
            value = value.lower() in ("true", "1", "yes")
        elif self.type in (int, float) and not isinstance(value, bool):
            try:
                value = self.type(value)
            except (TypeError, ValueError):
                raise ValueError(f"{method}: {name} must be a {self.type.__name__}, got {value!r}") from None
            if self.type is int and isinstance(value, float):
                value = int(value)
        elif self.type in (str, tuple, list) and self.type is not str and isinstance(value, str):
            value = tuple(v for v in value.split("+") if v) if self.type is tuple else value
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{method}: {name} must be one of {list(self.choices)}, got {value!r}")
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            raise ValueError(f"{method}: {name} = {value} is out of range; allowed {self._range()}")
        if self.high is not None and (value > self.high or (self.open_high and value == self.high)):
            raise ValueError(f"{method}: {name} = {value} is out of range; allowed {self._range()}")
        return value

    def _range(self) -> str:
        lo = "-inf" if self.low is None else self.low
        hi = "inf" if self.high is None else self.high
        return f"{'(' if self.open_low or self.low is None else '['}{lo}, {hi}{')' if self.open_high or self.high is None else ']'}"


#: how every method reads its answer (added to each method's PARAMS)
ANSWERS = ("logits", "generate")
ANSWER_PARAMS = {
    "answer": Param("logits", str, choices=ANSWERS,
                    doc="logits: the option letter with the highest next-token logit; generate: greedy "
                        "generation up to max_new_tokens, parsed (unparseable counts wrong)"),
    "max_new_tokens": Param(64, int, low=1, doc="generation length limit (answer=generate)"),
}


class Method:
    """Base class. Subclasses set ``name``, ``PARAMS`` and implement :meth:`predict`.
    Every method also takes :data:`ANSWER_PARAMS` (``answer``, ``max_new_tokens``)."""

    name: ClassVar[str] = ""
    PARAMS: ClassVar[dict] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "PARAMS" in cls.__dict__:
            cls.PARAMS = {**cls.PARAMS, **{k: v for k, v in ANSWER_PARAMS.items() if k not in cls.PARAMS}}
    #: modalities the method needs in the data ("audio", "visual", "text")
    needs: ClassVar[tuple] = ()

    def __init__(self, **params):
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            raise ValueError(f"{self.name}: unknown hyperparameter(s) {unknown}; known: {sorted(self.PARAMS)}")
        self.params = {k: p.check(self.name, k, params.get(k, p.default)) for k, p in self.PARAMS.items()}
        self.validate()

    def validate(self) -> None:
        """Cross-parameter checks (override)."""

    def describe(self) -> dict:
        """The plain-dict form: ``{"method": name, **params}``."""
        out = {"method": self.name}
        for k, v in self.params.items():
            out[k] = list(v) if isinstance(v, tuple) else v
        return out

    def check_data(self, modalities: Sequence[str]) -> None:
        """Raise a one-line error when the dataset lacks a modality this method needs. Dataset
        modalities ``video``/``image`` count as ``visual``, ``text`` as ``text``/``content``."""
        alias = {"video": "visual", "image": "visual", "text": "text"}
        have = {alias.get(m, m) for m in modalities} | set(modalities)
        if "text" in have:
            have |= {"content", "subtitle"}
        for m in self.needs:
            if m not in have:
                raise ValueError(f"method {self.name} needs {m} input but the dataset has only {list(modalities)}; "
                                 f"pick a dataset with {m} or change the method's token groups")

    def predict(self, lm, samples: Sequence, task: Task) -> list:  # pragma: no cover - interface
        raise NotImplementedError
