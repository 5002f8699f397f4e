"""Where a torch model comes from: a zoo name, the offline ``digits`` default, or a user's hook; and
where a compressed model goes: a file holding the policy and the compressed weights."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from picojoule.errors import PicojouleError

_FORMAT = "picojoule-compressed"


def load_torch_model(spec: str, weights: str | os.PathLike | None = None) -> tuple[nn.Module, torch.Tensor]:
    """(model in eval mode, example input of batch 1) for a zoo name, ``digits`` (the small CNN trained
    offline on scikit-learn's digits, cached), or ``package.module:function`` returning (model, input)."""
    if spec == "digits":
        from picojoule.digits import pretrained_digits_cnn

        model, _, test = pretrained_digits_cnn(progress=False)
        return model, torch.zeros(1, *test.image_shape)
    if ":" in spec and "/" not in spec:
        return _hook(spec, weights)
    if spec.endswith(".onnx"):
        raise PicojouleError(f"{spec}: an ONNX file can be costed but not compressed; give its torch model "
                             "as a zoo name or 'package.module:function'")
    from picojoule.zoo import build_model

    return build_model(spec, weights)


def _hook(spec: str, weights: str | os.PathLike | None) -> tuple[nn.Module, torch.Tensor]:
    module_name, _, func_name = spec.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as e:
        raise PicojouleError(f"model hook '{spec}': cannot load it ({e})") from None
    finally:
        sys.path.remove(os.getcwd())
    result = func(weights) if weights is not None else func()
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module)):
        raise PicojouleError(f"model hook '{spec}': expected it to return (torch.nn.Module, example input)")
    return result[0].eval(), result[1]


def save_compressed(path: str | Path, model_spec: str, policy: Any, compressed: nn.Module) -> Path:
    """Write the policy and the compressed weights (tensors only: loadable with weights_only=True)."""
    path = Path(path)
    torch.save({"format": _FORMAT, "version": 1, "model": model_spec, "policy": policy.to_dict(),
                "state_dict": compressed.state_dict()}, path)
    return path


def load_state(model: nn.Module, state: Any, source: str = "state_dict") -> nn.Module:
    """Load ``state`` (a state_dict, or a file saved with ``torch.save(model.state_dict(), path)``, read with
    ``weights_only=True``) into ``model``, e.g. a search's fine-tuned winner (``pareto/trial_NNNNN.pt``) into the
    model its policy builds. A file that cannot be read or does not fit the model is one line naming ``source``."""
    if isinstance(state, (str, os.PathLike)):
        try:
            state = torch.load(state, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as e:
            raise PicojouleError(f"{source}: cannot read weights from {state} ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise PicojouleError(f"{source}: expected a state_dict (a mapping of tensors), got {type(state).__name__}")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise PicojouleError(f"{source}: the weights do not fit the model its policy builds "
                             f"({lines[1] if len(lines) > 1 else lines[0]})") from None
    return model


def load_compressed(path: str | Path, weights: str | os.PathLike | None = None) -> tuple[nn.Module, Any]:
    """Rebuild a model saved by :func:`save_compressed`: the architecture from its model and policy, then
    its weights. Returns (compressed model in eval mode, policy)."""
    from picojoule.spaces.apply import apply_policy
    from picojoule.policy import Policy

    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise PicojouleError(f"{path}: cannot read a compressed model ({str(e).splitlines()[0]})") from None
    if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
        raise PicojouleError(f"{path}: not a picojoule compressed model (field 'format')")
    policy = Policy.from_dict(blob["policy"], f"{path}: policy")
    model, example = load_torch_model(blob["model"], weights)
    compressed, _ = apply_policy(model, example, policy)
    load_state(compressed, blob["state_dict"], str(path))
    return compressed.eval(), policy
