"""Choose what trains: find or replace the head, select trainable parameters, set modes."""

from __future__ import annotations

import re
from typing import Iterable

import torch
import torch.nn as nn

from ftedge.errors import ExportError, UsageError


def find_head(model: nn.Module, head: str | None) -> tuple[str, nn.Module]:
    """The module named ``head``, or the last ``nn.Linear`` registered in the model."""
    modules = dict(model.named_modules())
    if head is not None:
        if head not in modules or head == "":
            linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
            raise ExportError(
                f"--head {head!r} is not a submodule of the model; "
                f"nn.Linear modules are: {', '.join(linears[-8:]) or '(none)'}"
            )
        return head, modules[head]
    last = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)]
    if not last:
        raise ExportError("the model has no nn.Linear to use as the head; name one with --head or pass --trainable")
    return last[-1]


def _last_linear(module: nn.Module) -> tuple[str, nn.Linear] | None:
    if isinstance(module, nn.Linear):
        return "", module
    found = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    return found[-1] if found else None


def replace_head(model: nn.Module, head_name: str, num_classes: int, seed: int) -> str:
    """Replace the head's (last) Linear with a fresh ``num_classes``-way Linear.

    Returns the qualified name of the new Linear.
    """
    head = model.get_submodule(head_name)
    found = _last_linear(head)
    if found is None:
        raise ExportError(f"--head {head_name!r} contains no nn.Linear to replace for --num-classes/--labels")
    sub, old = found
    full = f"{head_name}.{sub}" if sub else head_name
    gen = torch.Generator().manual_seed(seed)
    new = nn.Linear(old.in_features, num_classes, bias=True)
    with torch.no_grad():
        bound = 1.0 / max(1, old.in_features) ** 0.5
        new.weight.uniform_(-bound, bound, generator=gen)
        new.bias.uniform_(-bound, bound, generator=gen)  # nonzero: never tied to another zero bias
    parent_name, _, attr = full.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new.to(old.weight.dtype))
    return full


def select_trainable(model: nn.Module, patterns: Iterable[str], head_name: str | None) -> list[str]:
    """Names of the parameters that train: those matching any regex, else the head's."""
    names = [n for n, _ in model.named_parameters()]
    patterns = list(patterns)
    if patterns:
        chosen: list[str] = []
        for pat in patterns:
            try:
                rx = re.compile(pat)
            except re.error as exc:
                raise UsageError(f"--trainable {pat!r} is not a valid regular expression: {exc}") from exc
            hits = [n for n in names if rx.search(n)]
            if not hits:
                raise ExportError(
                    f"--trainable {pat!r} matches no parameter; parameter names look like: "
                    + ", ".join(names[:3] + (["…"] if len(names) > 6 else []) + names[-3:])
                )
            chosen.extend(h for h in hits if h not in chosen)
        return [n for n in names if n in chosen]
    if head_name is None:
        raise ExportError("nothing to train: pass --head or --trainable")
    prefix = head_name + "."
    chosen = [n for n in names if n.startswith(prefix)]
    if not chosen:
        raise ExportError(f"--head {head_name!r} has no parameters to train")
    return chosen


def set_modes(model: nn.Module, trainable: list[str], head: str | None = None) -> list[str]:
    """Freeze everything but ``trainable``; eval mode for frozen modules, train mode for the rest.

    Frozen BatchNorm then uses running statistics and frozen dropout disappears,
    while dropout inside trainable modules stays in the training graph.
    When everything that trains lies in the ``head`` module, the whole head (dropout included) is put in
    training mode. Returns the names of the modules put in training mode.
    """
    wanted = set(trainable)
    for name, p in model.named_parameters():
        p.requires_grad_(name in wanted)
    model.eval()
    owners = sorted({n.rpartition(".")[0] for n in trainable})
    if head is not None and all(n.startswith(head + ".") for n in trainable):
        owners = [head]  # the whole head trains as a unit: its dropout is active in training steps
    for owner in owners:
        (model.get_submodule(owner) if owner else model).train()
    return owners
