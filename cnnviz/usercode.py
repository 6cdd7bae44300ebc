"""Your own model, from your own code: ``module:function`` (the CLI, the app) or a model object (``cnnviz.show``).

:func:`load` imports ``module`` from the current folder or ``PYTHONPATH`` (as ``python -m`` would), calls
``function()`` for an ``nn.Module``, optionally fills it with a state dict (``torch.save(model.state_dict(), f)``) and
names its classes from a text file; :func:`from_module` takes a model object. Both check the model once, with a dry
forward pass of a blank image, and refuse anything the app could not show with one :class:`UserModelError` sentence.

The app runs in one process, so a model is handed to it through a registry here: :func:`register` before the server
starts (``cnnviz.show``), or the ``CNNVIZ_*`` environment variables (:data:`ENV`) that ``cnnviz app --model`` sets,
read once by :func:`registered`. Either way the model is shared by every session, read-only.
"""

from __future__ import annotations

import copy
import importlib
import math
import os
import re
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnviz import files, probe
from cnnviz.text import brief as _brief
from cnnviz.checkpoint import MAX_CLASS_NAME, MAX_TITLE, MIN_STD
from cnnviz.data import DatasetInfo

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NAME = "your-model"  # DatasetInfo.name of every user model: it was trained on data cnnviz does not have
INPUT_SIZES = (8, 1024)  # smallest and largest side of the square input; Inception takes 299, EfficientNet-B7 600
MAX_CLASSES = 10_000  # beyond this the app's class lists stop being usable
CLASSES_MAX_BYTES = 1024 * 1024
MAX_QUOTE = 160  # characters of an exception's message quoted in ours

# The environment variables through which `cnnviz app --model` hands its options to the server process.
ENV = {"target": "CNNVIZ_MODEL", "weights": "CNNVIZ_WEIGHTS", "classes": "CNNVIZ_CLASSES",
       "input_size": "CNNVIZ_INPUT_SIZE", "mean": "CNNVIZ_MEAN", "std": "CNNVIZ_STD"}

_TARGET = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class UserModelError(ValueError):
    """A user's model that cnnviz cannot show; the message says, in one sentence, what was expected."""


@dataclass
class UserModel:
    """A user's model, ready to explain: ``model`` in eval mode, its input and classes (``info``) and its source."""

    model: nn.Module
    info: DatasetInfo
    source: str  # in words: "your code mypkg.models:make" (plain text: pages escape it)


def load(target: str, *, weights: str | os.PathLike | None = None, classes: str | os.PathLike | None = None,
         input_size: int = 224, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
         channels: int | None = None) -> UserModel:
    """The model that ``function()`` returns for ``target`` ``"module:function"``, checked, in eval mode.

    ``weights``: a state dict file, loaded safely (``weights_only=True``) and strictly (every key, every shape).
    ``classes``: a text file with one class name per line (blank lines ignored); without it, "class 0", "class 1", ….
    Inputs are ``(1, channels, input_size, input_size)`` images normalised with ``mean`` and ``std`` (pixels in
    [0, 1]); ``channels`` defaults to the length of ``mean``, else the first ``Conv2d``'s input channels, and
    ``mean``/``std`` to ImageNet's for 3 channels. Raises :class:`UserModelError`.
    """
    module_name, function_name = _parse_target(target)
    function = _function(module_name, function_name, target)
    try:
        model = function()
    except Exception as e:  # the user's code may raise anything; say what and where
        raise UserModelError(f"Expected {target}() to build a model, but calling it raised {_quote(e)}.") from e
    _check_module(model, f"{target}()")
    if weights is not None:
        _load_weights(model, Path(weights), target)
    names = read_classes(classes) if classes is not None else None
    return _checked(model, names, input_size, mean, std, channels, title=target,
                    source=f"your code {target}", what=f"{target}()")


def from_module(model: nn.Module, *, classes: Sequence[str] | None = None, input_size: int = 224,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None, channels: int | None = None,
                title: str | None = None) -> UserModel:
    """A model object, checked as :func:`load` checks one; the result holds a copy in eval mode, so the app never
    changes ``model`` (and later changes to ``model`` do not reach the app). Raises :class:`UserModelError`."""
    _check_module(model, "the model")
    try:
        own = copy.deepcopy(model)
    except Exception as e:  # a module holding an open file, a lock or a generator cannot be copied
        raise UserModelError(f"Expected a model that copy.deepcopy can copy (the app works on its own copy), but "
                             f"copying it raised {_quote(e)}.") from e
    name = type(model).__name__
    if isinstance(classes, str):  # list("cat") would be three classes
        raise UserModelError(f"Expected the class names as a list of names, got one name, {_brief(classes)}.")
    names = None if classes is None else _check_names(list(classes), "the class names")
    return _checked(own, names, input_size, mean, std, channels, title=title or name,
                    source=f"your model object {name}", what=f"your {name}")


def read_classes(path: str | os.PathLike) -> list[str]:
    """Class names from a UTF-8 text file, one per line; surrounding spaces and blank lines are ignored."""
    path = Path(path)
    try:
        raw = files.read_capped(path, CLASSES_MAX_BYTES)
    except files.TooBig:
        raise UserModelError(f"Expected a class names file of at most {CLASSES_MAX_BYTES // 1024} KB, but {path} is "
                             f"larger.") from None
    except OSError as e:
        raise UserModelError(f"Expected a class names file at {path}, but it could not be read "
                             f"({e.strerror or e}).") from None
    try:
        content = raw.decode("utf-8-sig")  # a byte-order mark, as Windows editors write it, is not part of a name
    except UnicodeDecodeError:
        raise UserModelError(f"Expected a UTF-8 text file of class names, one per line, but {path} is not "
                             f"UTF-8 text.") from None
    return _check_names([line.strip() for line in content.splitlines() if line.strip()], str(path))


def parse_numbers(text: str, what: str) -> tuple[float, ...]:
    """``"0.485,0.456,0.406"`` → ``(0.485, 0.456, 0.406)``; ``what`` names the value in the error message."""
    try:
        numbers = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise UserModelError(f"Expected {what} as numbers separated by commas, like 0.485,0.456,0.406, got "
                             f"{_brief(text)}.") from None
    if not all(math.isfinite(n) for n in numbers):
        raise UserModelError(f"Expected {what} to be finite numbers, got {_brief(text)}.")
    return numbers


def to_env(target: str, *, weights: str | os.PathLike | None = None, classes: str | os.PathLike | None = None,
           input_size: int | None = None, mean: Sequence[float] | None = None,
           std: Sequence[float] | None = None) -> dict[str, str]:
    """The :data:`ENV` variables that make :func:`from_env` (and so :func:`registered`) load this model."""
    env = {ENV["target"]: target}
    # Absolute: the server process may be started from another folder than the command that named the files.
    for key, path in (("weights", weights), ("classes", classes)):
        if path is not None:
            env[ENV[key]] = str(Path(path).resolve())
    if input_size is not None:
        env[ENV["input_size"]] = str(input_size)
    for key, numbers in (("mean", mean), ("std", std)):
        if numbers is not None:
            env[ENV[key]] = ",".join(repr(float(n)) for n in numbers)
    return env


def from_env(environ: Mapping[str, str] | None = None) -> UserModel | None:
    """The model the :data:`ENV` variables name, None when ``CNNVIZ_MODEL`` is unset; raises
    :class:`UserModelError`."""
    environ = os.environ if environ is None else environ
    values = {key: environ.get(name, "").strip() for key, name in ENV.items()}
    if not values["target"]:
        stray = [ENV[key] for key, value in values.items() if value]
        if stray:
            raise UserModelError(f"Expected {ENV['target']} to name the model (module:function) that "
                                 f"{', '.join(stray)} {'is' if len(stray) == 1 else 'are'} for, but it is not set.")
        return None
    input_size = 224
    if values["input_size"]:
        try:
            input_size = int(values["input_size"])
        except ValueError:
            raise UserModelError(f"Expected {ENV['input_size']} to be a whole number of pixels, got "
                                 f"{_brief(values['input_size'])}.") from None
    return load(values["target"], weights=values["weights"] or None, classes=values["classes"] or None,
                input_size=input_size,
                mean=parse_numbers(values["mean"], ENV["mean"]) if values["mean"] else None,
                std=parse_numbers(values["std"], ENV["std"]) if values["std"] else None)


_lock = threading.Lock()
_registered: UserModel | None = None
_env_read = False
_env_error: str | None = None


def register(user_model: UserModel | None) -> None:
    """Make ``user_model`` the one the app starts every session with; None forgets it (and lets :func:`registered`
    read the environment again)."""
    global _registered, _env_read, _env_error
    if user_model is not None and not isinstance(user_model, UserModel):
        raise TypeError(f"expected a UserModel (from usercode.load or usercode.from_module), got "
                        f"a {type(user_model).__name__}")
    with _lock:
        _registered, _env_read, _env_error = user_model, False, None


def registered() -> UserModel | None:
    """The registered model; else, the first time, the one the :data:`ENV` variables name (loaded once per process,
    so ``streamlit run app.py`` with them set works too); None when there is neither.

    Raises :class:`UserModelError`, on every call, when the variables name a model that could not be loaded.
    """
    global _registered, _env_read, _env_error
    with _lock:  # sessions are threads of one server: the first one loads, the others wait for it
        if _registered is None and not _env_read:
            _env_read = True
            try:
                _registered = from_env()
            except UserModelError as e:
                _env_error = str(e)
        if _env_error is not None:
            raise UserModelError(_env_error)
        return _registered


def _parse_target(target: str) -> tuple[str, str]:
    if not isinstance(target, str) or not _TARGET.fullmatch(target.strip()):
        raise UserModelError(f"Expected the model as module:function, like mypkg.models:make (a Python module you "
                             f"can import, a colon, a function that returns an nn.Module), got {_brief(target)}.")
    module_name, _, function_name = target.strip().partition(":")
    return module_name, function_name


def _function(module_name: str, function_name: str, target: str):
    """The object ``function_name`` (dotted attributes allowed) of ``module_name``, imported as ``python -m`` would."""
    # `python -m` and `python script.py` put the current folder first on sys.path; a console script does not.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise UserModelError(f"Expected a module {module_name} in the current folder ({os.getcwd()}) or on "
                                 f"PYTHONPATH, but Python could not import it ({e}).") from e
        raise UserModelError(f"Expected module {module_name} to import, but it raised {_quote(e)}.") from e
    except Exception as e:  # a syntax error or any exception raised by the module's own code
        raise UserModelError(f"Expected module {module_name} to import, but it raised {_quote(e)}.") from e
    found: object = module
    for part in function_name.split("."):
        if not hasattr(found, part):
            public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                            and getattr(v, "__module__", None) == module.__name__)
            listed = f" (it defines: {', '.join(public[:10])})" if public else ""
            raise UserModelError(f"Expected module {module_name} to have a function {function_name}, but it does "
                                 f"not{listed}.")
        found = getattr(found, part)
    if not callable(found):
        raise UserModelError(f"Expected {target} to be a function that returns an nn.Module, got "
                             f"{_brief(found)}.")
    return found


def _check_module(model: object, what: str) -> None:
    if not isinstance(model, nn.Module):
        raise UserModelError(f"Expected {what} to be a torch nn.Module, got a {type(model).__name__}.")
    # Refused rather than shown half-empty: every view in cnnviz (feature maps, filters, pooling, Grad-CAM) looks
    # at a convolution layer, so a model without one would leave the app with nothing to show.
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        raise UserModelError(f"Expected a CNN, but {what} has no nn.Conv2d layer, and every view in cnnviz looks at "
                             f"one.")


def _load_weights(model: nn.Module, path: Path, target: str) -> None:
    """Fill ``model`` from a state dict file, refusing (by name) the first key or shape that does not fit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserModelError(f"Expected a weights file at {path}, but there is none.") from None
    except Exception as e:  # not a torch file, a truncated one, or pickled objects weights_only refuses
        raise UserModelError(f"Expected {path} to be a state dict saved with torch.save(model.state_dict(), path), "
                             f"but it could not be loaded safely ({_quote(e)}).") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = list(state)[:3] if isinstance(state, Mapping) else []
        got = f"a dict with keys {', '.join(map(_brief, keys))}…" if keys else _brief(state)
        raise UserModelError(f"Expected {path} to hold a state dict (layer name → tensor) as saved by "
                             f"torch.save(model.state_dict(), path), got {got}.")
    expected = model.state_dict()
    for key, want in expected.items():
        if key not in state:
            raise UserModelError(f"Expected {path} to hold the weights {key!r} of {target}(), but it does not "
                                 f"(its first keys: {', '.join(map(_brief, list(state)[:3])) or 'none'}).")
        if state[key].shape != want.shape:
            raise UserModelError(f"Expected the weights {key!r} in {path} to have shape {tuple(want.shape)}, as "
                                 f"{target}() has, got {tuple(state[key].shape)}.")
    extra = [key for key in state if key not in expected]
    if extra:
        raise UserModelError(f"Expected {path} to hold only weights of {target}(), but it also holds "
                             f"{_brief(extra[0])}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else "") + ".")
    try:
        model.load_state_dict(state, strict=True)
    except Exception as e:  # what the checks above cannot see, e.g. a module's own _load_from_state_dict
        raise UserModelError(f"Expected {target}() to accept the weights in {path}, but loading them raised "
                             f"{_quote(e)}.") from None


def _checked(model: nn.Module, names: list[str] | None, input_size: int, mean: Sequence[float] | None,
             std: Sequence[float] | None, channels: int | None, *, title: str, source: str, what: str) -> UserModel:
    """``model`` in eval mode with its :class:`DatasetInfo`, once a blank image has gone through it."""
    if type(input_size) is not int or not INPUT_SIZES[0] <= input_size <= INPUT_SIZES[1]:
        raise UserModelError(f"Expected an input size of {INPUT_SIZES[0]} to {INPUT_SIZES[1]} pixels, got "
                             f"{_brief(input_size)}.")
    if channels is None:
        channels = len(mean) if mean is not None else _first_conv(model).in_channels
    if channels not in (1, 3):
        raise UserModelError(f"Expected a model of greyscale (1-channel) or colour (3-channel) images, got "
                             f"{_brief(channels)} channels.")
    if mean is None and std is None and channels == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    if mean is None or std is None:
        raise UserModelError("Expected the mean and std the model's training images were normalised with (--mean "
                             "and --std, or mean= and std=): ImageNet's, the default, are for 3 channels only and "
                             "come as a pair.")
    mean, std = _check_stats(mean, "mean", channels, 0.0), _check_stats(std, "std", channels, MIN_STD)
    model.eval()
    # Shared read-only by every session, like a zoo model: nothing trains it, and Grad-CAM and the other views take
    # gradients with respect to the image, which needs none of the weights' gradients.
    model.requires_grad_(False)
    x = torch.zeros(1, channels, input_size, input_size, device=probe.device_of(model))
    shape = f"(1, {channels}, {input_size}, {input_size})"
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # the user's forward pass may raise anything
        raise UserModelError(f"Expected {what} to take a {shape} image, but a blank one raised {_quote(e)}.") from e
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else _brief(out)
        raise UserModelError(f"Expected an image classifier that returns (1, K) class scores for a {shape} image, "
                             f"got {got}.")
    k = out.shape[1]
    if not 2 <= k <= MAX_CLASSES:
        raise UserModelError(f"Expected an image classifier of 2 to {MAX_CLASSES:,} classes, got {k} class "
                             f"score{'s' if k != 1 else ''}.")
    if not bool(torch.isfinite(out).all()):
        raise UserModelError(f"Expected finite class scores, but {what} returns infinite or missing (NaN) ones even "
                             f"for a blank image.")
    if names is None:
        names = [f"class {i}" for i in range(k)]
    elif len(names) != k:
        raise UserModelError(f"Expected {k} class names, one per class score the model returns, got {len(names)}.")
    description = f"{source}: {channels}×{input_size}×{input_size} images, {k} classes."
    info = DatasetInfo(NAME, _shorten(title, MAX_TITLE), tuple(names), channels, input_size, mean, std,
                       description=description)
    return UserModel(model, info, source)


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def _check_stats(values: Sequence[float], what: str, channels: int, low: float) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise UserModelError(f"Expected the {what} as numbers, one per channel, got {_brief(values)}.") from None
    if len(numbers) != channels:
        raise UserModelError(f"Expected {channels} {what} value{'s' if channels > 1 else ''}, one per input channel, "
                             f"got {len(numbers)}.")
    if not all(math.isfinite(n) and low <= n <= 1 for n in numbers):
        raise UserModelError(f"Expected every {what} value between {low:g} and 1 (pixels are scaled to 0–1), got "
                             f"{', '.join(f'{n:g}' for n in numbers)}.")
    return numbers


def _check_names(names: list, where: str) -> list[str]:
    for i, name in enumerate(names, start=1):
        if not isinstance(name, str) or not name.strip():
            raise UserModelError(f"Expected class names as text, got {_brief(name)} as name {i} in {where}.")
        if len(name) > MAX_CLASS_NAME:
            raise UserModelError(f"Expected class names of at most {MAX_CLASS_NAME} characters, got {len(name)} in "
                                 f"name {i} of {where} ({_brief(name)}).")
    seen: dict[str, int] = {}
    for i, name in enumerate(names, start=1):
        if name in seen:
            raise UserModelError(f"Expected different class names, but {_brief(name)} is both name {seen[name]} and "
                                 f"name {i} in {where}.")
        seen[name] = i
    return names


def _quote(e: BaseException) -> str:
    """An exception in brief for our sentence: its type and the first line of its message, shortened."""
    lines = str(e).strip().splitlines()
    message = _shorten(lines[0], MAX_QUOTE) if lines else ""
    return f"{type(e).__name__}: {message}" if message else type(e).__name__


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
