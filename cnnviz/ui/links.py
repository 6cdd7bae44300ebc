"""Shareable links: a view's settings live in the URL's query parameters, so a link opens the same state.

A page calls :func:`restore` before its widgets (values from the URL become the widgets' starting values when they
are valid) and :func:`publish` after them (the current values go back into the URL).

A link is text from outside: anyone can write ``?explore_cam_alpha=nan``. Every key a page restores has a spec in
:data:`SPECS` that knows its widget's type and range, so a value that would break a widget (or torch) is dropped
before it reaches one. The model-dependent part (is ``conv3`` a layer of *this* model? is channel 40 within this
layer?) is checked by the page with :func:`valid` once it knows the model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import streamlit as st

from cnnviz import data, gradcam, images, lessons, models, train

MAX_TEXT = 64  # longer than any value a link carries (layer, class, option names); longer ones are dropped unread
MAX_INDEX = 4096  # above any channel count or map side the app builds or loads; pages check the real size
# torch.Generator.manual_seed takes up to 2**64 - 1; stopping one short of int64's maximum leaves room for the
# image picker's "Another one" (+1) and keeps the seed an int64 wherever it goes.
MAX_SEED = 2**63 - 2

_INT = re.compile(r"[+-]?[0-9]{1,19}")  # ASCII digits only: int() would also take '1_000', ' 7 ' and '٣'
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?")
_NAME = re.compile(r"[A-Za-z0-9_.]+")  # a layer name: a dotted module path such as conv1 or layer2.0.conv1


@dataclass(frozen=True)
class Int:
    """A whole number in ``[lo, hi]``, written in ASCII digits (``3``, ``-1``; not ``3.0``, ``1e3`` or ``٣``)."""

    lo: int
    hi: int

    def __call__(self, text: str) -> int:
        if not _INT.fullmatch(text):
            raise ValueError(f"expected a whole number, got {text!r}")
        value = int(text)
        if not self.lo <= value <= self.hi:
            raise ValueError(f"expected a number in [{self.lo}, {self.hi}], got {value}")
        return value


@dataclass(frozen=True)
class Float:
    """A finite number in ``[lo, hi]`` (no ``nan``, ``inf`` or ``1e999``); ``-0`` reads as ``0.0``."""

    lo: float
    hi: float

    def __call__(self, text: str) -> float:
        if not _FLOAT.fullmatch(text):
            raise ValueError(f"expected a number, got {text!r}")
        value = float(text) + 0.0  # + 0.0 turns -0.0 into 0.0, so a widget never shows "-0"
        if not (math.isfinite(value) and self.lo <= value <= self.hi):
            raise ValueError(f"expected a number in [{self.lo}, {self.hi}], got {value}")
        return value


@dataclass(frozen=True)
class Choice:
    """One of ``options`` (all str, all int or all float); numbers compare by value, so ``5e-4`` is ``0.0005``."""

    options: tuple

    def __call__(self, text: str) -> object:
        kind = type(self.options[0])
        if kind is str:
            value: object = text
        else:
            low, high = min(self.options), max(self.options)
            value = Int(low, high)(text) if kind is int else Float(low, high)(text)
        if value not in self.options:
            raise ValueError(f"expected one of {', '.join(map(str, self.options))}, got {text!r}")
        return self.options[self.options.index(value)]


@dataclass(frozen=True)
class Text:
    """Printable text of at most ``max_len`` characters, matching ``pattern`` when one is given."""

    max_len: int = MAX_TEXT
    pattern: re.Pattern | None = None

    def __call__(self, text: str) -> str:
        if not (0 < len(text) <= self.max_len and text.isprintable()):
            raise ValueError(f"expected printable text of 1 to {self.max_len} characters, got {text!r}")
        if self.pattern is not None and not self.pattern.fullmatch(text):
            raise ValueError(f"expected text matching {self.pattern.pattern}, got {text!r}")
        return text


@dataclass(frozen=True)
class Flag:
    """On or off: ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``, in any case."""

    def __call__(self, text: str) -> bool:
        word = text.lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected on or off, got {text!r}")


Spec = Int | Float | Choice | Text | Flag


def flag(text: str) -> bool:
    return text.lower() in ("1", "true", "yes", "on")


LAYER = Text(pattern=_NAME)  # which names exist depends on the model: the page's valid() checks that
INDEX = Int(0, MAX_INDEX)
# Every key a page restores from a link, with its widget's type and range (the widgets' own bounds).
SPECS: dict[str, Spec] = {
    # Train (pages/train.py)
    "train_dataset": Choice((*data.DATASETS, "yours")),
    "train_size": Choice(("200", "1,000", "5,000", "all")),  # the page offers those smaller than the dataset
    "train_preset": Choice(tuple(models.PRESETS)),
    "train_epochs": Int(1, 50),
    "train_batch": Choice((32, 64, 128, 256)),
    "train_lr": Choice((0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0)),
    "train_opt": Choice(train.OPTIMIZERS),
    "train_seed": Int(0, 10_000),
    "train_augment": Flag(),
    # Explore (pages/explore.py)
    "explore_filter_layer": LAYER,
    "explore_filter_index": INDEX,
    "explore_map_layer": LAYER,
    "explore_channel": INDEX,
    "explore_pool_layer": LAYER,
    "explore_pool_channel": INDEX,
    "explore_cam_method": Choice(tuple(gradcam.METHODS)),
    "explore_cam_layer": LAYER,
    "explore_cam_class": Int(-1, MAX_INDEX),  # -1: the predicted class
    "explore_cam_alpha": Float(0.0, 1.0),
    "explore_resize": Choice(images.RESIZE_POLICIES),
    "explore_invert": Choice(("auto", "on", "off")),
    "explore_view": Choice(("Filters", "Feature maps", "Pooling", "Grad-CAM")),
    "explore_map_order": Choice(("most active first", "channel number")),
    # The image picker (cnnviz/ui/widgets.py, key "explore") on Explore and Convolution step by step. A teacher's link
    # with ?explore_source=Upload opens a class straight on the uploader (the picker drops a source its model lacks).
    "explore_source": Choice(("Test set", "Upload", "Draw", "Camera")),
    "explore_class": Text(),  # a class name of the model's dataset: checked by the picker's valid()
    "explore_seed": Int(0, MAX_SEED),
    # Convolution step by step (pages/convolution.py)
    "conv_layer": LAYER,
    "conv_channel": INDEX,
    "conv_row": INDEX,
    "conv_col": INDEX,
    "pool_layer": LAYER,
    "pool_channel": INDEX,
    "pool_row": INDEX,
    "pool_col": INDEX,
    # What each layer learns (pages/hierarchy.py)
    "hier_layer": LAYER,
    # Lessons (pages/lessons.py); the page clamps the step to the chosen lesson's length
    "lesson": Choice(tuple(x.id for x in lessons.LESSONS)),
    "step": Int(0, max(len(x.steps) for x in lessons.LESSONS) - 1),
    # Every page (the sidebar)
    "presenter": Flag(),
}


def _page(*keys: str) -> dict[str, Spec]:
    return {key: SPECS[key] for key in keys}


# The settings of each page that a link carries: widget key → spec of its URL text.
TRAIN = _page("train_dataset", "train_size", "train_preset", "train_epochs", "train_batch", "train_lr", "train_opt",
              "train_seed", "train_augment")
EXPLORE = _page("explore_filter_layer", "explore_filter_index", "explore_map_layer", "explore_channel",
                "explore_pool_layer", "explore_pool_channel", "explore_cam_method", "explore_cam_layer",
                "explore_cam_class", "explore_cam_alpha", "explore_resize", "explore_invert", "explore_view",
                "explore_map_order")
CONVOLUTION = _page("conv_layer", "conv_channel", "conv_row", "conv_col", "pool_layer", "pool_channel", "pool_row",
                    "pool_col")
HIERARCHY = _page("hier_layer")
# Widget values kept when the user goes to another page and back.
KEPT = (*TRAIN, *EXPLORE, *CONVOLUTION, *HIERARCHY, "explore_source", "explore_class")


def dataset_defaults(name: str) -> dict[str, object]:
    """The Train page's settings a dataset of ours starts from: its recommended architecture, epochs, batch size and
    learning rate (``DatasetInfo``), and no augmentation."""
    chosen = data.DATASETS[name]
    return {"train_preset": chosen.preset, "train_epochs": chosen.epochs, "train_augment": False,
            "train_batch": chosen.batch_size, "train_lr": chosen.lr}


def open_train(label: str, values: dict[str, object], key: str) -> None:
    """A button that opens the Train page set up with ``values`` (``train_*`` widget keys; a ``train_dataset`` brings
    its :func:`dataset_defaults` first), whatever the student chose there before. A link's query parameters could not
    do that: :func:`restore` only seeds widgets that have no value yet, and the session keeps the student's."""
    if st.button(label, key=key, icon=":material/model_training:"):
        if values.get("train_dataset") in data.DATASETS:
            st.session_state.update(dataset_defaults(values["train_dataset"]))
            st.session_state.pop("_own_defaults_for", None)
        st.session_state.update(values)
        st.switch_page("pages/train.py")


def keep() -> None:
    """Keep widget values across pages. Streamlit forgets a widget's value after a run that does not draw it;
    writing the value back as plain session state at the top of every run (app.py) stops that."""
    for key in KEPT:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def parse(key: str, text: str, fallback: Callable[[str], object] = str) -> object:
    """The value of ``?key=text`` for its widget, by the key's spec in :data:`SPECS` (``fallback`` for a key not
    there); raises ValueError when the value must be dropped."""
    if len(text) > MAX_TEXT:
        raise ValueError(f"{key}: a value of {len(text)} characters is longer than {MAX_TEXT}")
    spec = SPECS.get(key)
    if spec is not None:
        return spec(text)
    try:
        return fallback(text)
    except (TypeError, ValueError, ArithmeticError) as e:
        raise ValueError(f"{key}: {e}") from None


def restore(params: dict[str, Callable[[str], object]]) -> None:
    """Seed widget keys from ``?key=value``; ``params`` maps a key to a parser, used for keys :data:`SPECS` lacks.

    Only keys without a value yet read the URL, so the user's later choices win. A value its spec refuses is
    dropped silently: the widget starts from its default, as if the link had not carried it.
    """
    for key, fallback in params.items():
        if key in st.session_state or key not in st.query_params:
            continue
        try:
            st.session_state[key] = parse(key, st.query_params[key], fallback)
        except ValueError:
            pass


def valid(key: str, options: list) -> None:
    """Drop a restored value that is not among a widget's options (e.g. a layer the current model lacks)."""
    if key in st.session_state and st.session_state[key] not in options:
        del st.session_state[key]


def publish(keys: list[str]) -> None:
    """Write the current values of ``keys`` into the URL."""
    for key in keys:
        if key in st.session_state and st.session_state[key] is not None:
            value = st.session_state[key]
            if str(value) != st.query_params.get(key):
                st.query_params[key] = str(value)
