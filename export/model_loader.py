"""Resolve a MODEL spec (``pkg.module:attr`` or ``path/file.py:attr``) to an ``nn.Module``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch.nn as nn

from ftedge.errors import ModelLoadError, UsageError


def _import_target(module_part: str) -> Any:
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        path = Path(module_part).expanduser().resolve()
        if not path.is_file():
            raise ModelLoadError(f"model file {module_part!r} does not exist; check the path before the ':'")
        mod_name = f"ftedge_user_model_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise ModelLoadError(f"cannot import {path}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        sys.path.insert(0, str(path.parent))  # let the file import its siblings
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(mod_name, None)
            raise ModelLoadError(f"importing {path} failed: {type(exc).__name__}: {exc}; fix the file and retry") from exc
        finally:
            sys.path.remove(str(path.parent))
        return module
    try:
        return importlib.import_module(module_part)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot import module {module_part!r}: {type(exc).__name__}: {exc}; "
            "check the name, that it is installed, or pass path/to/file.py:attr instead"
        ) from exc


def load_model(spec: Any) -> nn.Module:
    """Return the ``nn.Module`` named by ``spec`` (or ``spec`` itself if it is one)."""
    if isinstance(spec, nn.Module):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise UsageError(
            f"MODEL {spec!r} must be 'package.module:attr' or 'path/to/file.py:attr' "
            "(attr: an nn.Module or a zero-argument callable returning one)"
        )
    module_part, _, attr_path = spec.rpartition(":")
    obj: Any = _import_target(module_part)
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"{module_part!r} has no attribute {attr_path!r}; check the name after the ':'")
        obj = getattr(obj, part)
    if not isinstance(obj, nn.Module) and callable(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise ModelLoadError(f"calling {spec} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(
            f"{spec} gave a {type(obj).__name__}, not a torch.nn.Module; point at a module or a function returning one"
        )
    return obj
