"""Reading a user's text or YAML file safely (``yaml.safe_load``) and validating it, every failure one line naming the file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from picojoule.errors import PicojouleError

M = TypeVar("M", bound=BaseModel)


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of a user's file; a missing, unreadable or non-UTF-8 file raises a one-line
    :class:`PicojouleError` naming the file and ``what`` it should hold."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PicojouleError(f"{path}: {what} not found") from None
    except OSError as e:
        raise PicojouleError(f"{path}: cannot read {what}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PicojouleError(f"{path}: {what}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") \
            from None


def read_yaml(path: str | Path, what: str) -> Any:
    """The parsed content of ``path``; a missing, unreadable or non-UTF-8 file or bad YAML raises a one-line
    :class:`PicojouleError` naming the file, ``what`` it should hold and, for bad YAML, the line."""
    path = Path(path)
    text = read_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PicojouleError(f"{path}:{where} not valid YAML: {problem}") from None


def validated(model: type[M], data: Any, source: str, what: str, explain: Callable[[str, ValidationError], str]) -> M:
    """``data`` (a mapping) validated as ``model``; otherwise a one-line :class:`PicojouleError` naming ``source``
    (``explain`` words a validation error)."""
    if not isinstance(data, dict):
        raise PicojouleError(f"{source}: expected a mapping of {what}, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise PicojouleError(explain(source, e)) from None
