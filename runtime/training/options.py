"""Train options, declared once: type, bounds, choices, help and default of every ``ftedge train`` option.

The declarations feed the ``ftedge train`` flags (:func:`add_arguments`: types and choices), the device agent's
validation of a ``train`` command (:meth:`Option.check`: types, bounds, choices — the limits on what the fleet may
ask of a box), each task's config defaults (:meth:`OptionSet.default`) and the option
table in docs/ (:func:`markdown_table`). A task takes a subset (:func:`pick`), with its own defaults where they
differ (a detector trains 60 epochs, a causal LM 10); a task may also declare options of its own.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from ftedge.errors import Rejected
from ftedge.runtime.engines import ENGINES

_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "a JSON boolean (true or false)",
               list: "a list of names"}
MAX_LIST = 8            # names in a list option (execution providers)
MAX_NAME = 64           # characters per name


def comma_list(text: str) -> list[str]:
    """A command-line ``A,B`` list option (blanks dropped)."""
    return [p.strip() for p in text.split(",") if p.strip()]


@dataclass(frozen=True)
class Option:
    """One train option. ``name`` is the agent's key and the config field; the CLI flag is derived from it."""

    name: str
    type: type                                  # int, float (JSON ints accepted), str or bool
    help: str
    default: Any = None
    bounds: tuple[float, float] | None = None   # inclusive
    choices: tuple[str, ...] | None = None
    path: str | None = None                     # "file" or "any": a path under the agent's data root
    metavar: str | None = None
    # list options: the names this box accepts, asked when a train command is checked (the EPs its ORT has)
    available: Callable[[list[str]], list[str]] | None = None

    @property
    def flag(self) -> str:
        """``--batch-size``; a boolean that defaults to true is turned off with ``--no-<name>``."""
        dashed = self.name.replace("_", "-")
        return f"--no-{dashed}" if self.type is bool and self.default else f"--{dashed}"

    def with_default(self, default: Any) -> "Option":
        return replace(self, default=default)

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (as JSON gives it) for this option — type, bounds, choices — or None."""
        if self.type is bool:  # JSON booleans only: "false" or 0 is not a boolean
            return None if isinstance(value, bool) else f"must be {_TYPE_WORDS[bool]}, got {value!r}"
        if self.type is list:
            return self._list_problem(value)
        accepted = (int, float) if self.type is float else self.type
        if isinstance(value, bool) or not isinstance(value, accepted):
            return f"must be {_TYPE_WORDS.get(self.type, 'a value')}, got {json.dumps(value)[:60]}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
        if self.bounds is not None and not self.bounds[0] <= value <= self.bounds[1]:
            return f"must be between {self.bounds[0]:g} and {self.bounds[1]:g}, got {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, got {value!r}"
        return None

    def _list_problem(self, value: Any) -> str | None:
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_LIST or not all(
                isinstance(v, str) and 0 < len(v) <= MAX_NAME and v.replace("_", "").isalnum() for v in value):
            return (f"must be a list of 1 to {MAX_LIST} names (letters, digits, _), got "
                    f"{json.dumps(value)[:60]}")
        missing = self.available(value) if self.available else []
        return (f"names {', '.join(missing)}, which this box does not have (its meta message lists the ones it "
                "has)") if missing else None

    def check(self, value: Any) -> Any:
        """``value`` from a ``train`` command, checked; else :class:`Rejected` (``bad_args``)."""
        why = self.problem(value)
        if why:
            raise Rejected("bad_args", f"args.{self.name} {why}")
        return value


def _missing_providers(names: list[str]) -> list[str]:
    """The named execution providers this box's onnxruntime lacks (imported late: a device-side check)."""
    from ftedge.runtime.engines.ort_backend import resolve_providers

    return resolve_providers(names)[1]


# Every option any built-in task takes. A task picks from these (with its own defaults) or declares its own.
COMMON: dict[str, Option] = {o.name: o for o in (
    Option("epochs", int, "epochs", bounds=(1, 10_000)),
    Option("batch_size", int, "batch size", bounds=(1, 4096)),
    Option("embed_batch_size", int, "samples per backbone pass (default max(batch size, 64)); lower it to cut "
           "peak memory with large inputs, e.g. 224×224 images", bounds=(1, 4096), metavar="N"),
    Option("lr", float, "peak learning rate (default: the bundle's)", bounds=(0, 10)),
    Option("schedule", str, "decay after a 10% linear warm-up", default="cosine",
           choices=("cosine", "linear", "constant")),
    Option("val_fraction", float, "validation share of the samples (classification: 0.2, with --auto 0: the search "
           "cross-validates on every sample, and a share given here is held out from it and only reported)", bounds=(0, 0.95)),
    Option("weight_decay", float, "decoupled weight decay (classification: the bundle's)", bounds=(0, 10)),
    Option("class_weight", str, "balanced: weigh each class equally in the loss (imbalanced local data)",
           default="none", choices=("none", "balanced")),
    Option("auto", bool, "choose learning rate, weight decay and epochs (and class weighting on imbalanced data) "
           "by k-fold cross-validation on the embedding cache within --max-seconds (default 120 s), then fit once "
           "on all samples; promoted only if the cross-validated gain's lower bound clears --min-gain",
           default=False),
    Option("folds", int, "folds of the --auto search", default=5, bounds=(2, 50)),
    Option("max_trials", int, "trials of the --auto search at most", default=100, bounds=(1, 10_000)),
    Option("patience", int, "stop after N epochs without improvement; 0: off", default=0, bounds=(0, 10_000)),
    Option("seed", int, "seed for split, shuffling and dropout", default=0, bounds=(0, 2**31 - 1)),
    Option("max_seconds", float, "time budget; stops cleanly at an epoch boundary", bounds=(0, 7 * 86400)),
    Option("mode", str, "cached: backbone once per sample, head trains on the cache; full: backbone every step "
           "(or the merged graph of a --no-split bundle); auto: cached when the bundle is split", default="auto",
           choices=("auto", "cached", "full")),
    Option("engine", str, "training engine: portable (plain onnxruntime, any platform and execution provider), "
           "ort-training (onnxruntime-training 1.19.2, x86_64 + CPython <= 3.12 only); auto: portable when the "
           "bundle carries it, else ort-training", default="auto", choices=("auto", *ENGINES)),
    Option("backbone", str, "backbone variant (int8 needs export --quantize-backbone int8)", default="fp32",
           choices=("fp32", "int8")),
    Option("providers", list, "execution providers for every session of the run (backbone, training step, head), "
           "in order, e.g. OpenVINO,CPU or CUDA; the CPU EP always comes last (default: CPU; a train command "
           "naming one this box lacks is refused, the CLI warns and leaves it out)", metavar="P1,P2",
           available=_missing_providers),
    Option("step_providers", list, "execution providers for the training step and head alone (default: "
           "--providers), e.g. --providers OpenVINO --step-providers CPU: an NPU-class EP runs the frozen (int8) "
           "backbone, the CPU trains", metavar="P1,P2", available=_missing_providers),
    Option("min_gain", float, "promote only if better than the untuned model by more than this (the task's "
           "headline metric)", default=0.0, bounds=(0, 1000)),
    Option("eval_data", str, "held-out data for validation and the gate: causal LMs, prompts with reference "
           "answers (FILE.jsonl); detectors, labelled images (their 'val' split)", path="any", metavar="PATH"),
    Option("general", str, "general prompts the fine-tune must not forget: retention of the untuned answers",
           path="file", metavar="FILE.jsonl"),
    Option("off_topic", str, "prompts that are not the site's own (e.g. general questions, never the --general "
           "set): a router fitted on them and the training prompts applies the adapter only to the site's "
           "questions, so the untuned model keeps answering everything else", path="file", metavar="FILE.jsonl"),
    Option("min_retention", float, "with --general: promote only if at least this share of untuned answers is "
           "kept", default=0.9, bounds=(0, 1)),
    Option("max_new_tokens", int, "answer budget when evaluating", default=48, bounds=(1, 512)),
    Option("warm_start", str, "continue from a model this box has: a model version (STATE/models/vNNNN) or a "
           "finished run directory of the same bundle; the trainable part starts from its weights (fresh optimizer), "
           "and the result is promoted only if it also beats that model on the same validation split (portable "
           "engine)", metavar="DIR"),
    Option("flip", bool, "horizontal-flip augmentation (a random half of each epoch's images mirrored; the "
           "backbone's maps of the mirrored images are cached too)", default=True),
)}


class OptionSet:
    """The options one task takes, by name, with that task's defaults."""

    def __init__(self, options: Iterable[Option]) -> None:
        self.by_name: dict[str, Option] = {o.name: o for o in options}

    def __iter__(self):  # noqa: ANN204
        return iter(self.by_name.values())

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def names(self) -> list[str]:
        return list(self.by_name)

    def default(self, name: str) -> Any:
        return self.by_name[name].default

    def resolved(self, given: dict[str, Any]) -> dict[str, Any]:
        """Every option of the task: ``given`` values over the declared defaults."""
        return {name: given.get(name, o.default) for name, o in self.by_name.items()}


def pick(*names: str, own: Iterable[Option] = (), **defaults: Any) -> OptionSet:
    """A task's options: ``names`` from :data:`COMMON` (``defaults`` overriding theirs) plus its ``own``."""
    unknown = [n for n in [*names, *defaults] if n not in COMMON]
    if unknown:
        raise ValueError(f"no common train option {unknown}; declare it in `own`")
    chosen = [COMMON[n].with_default(defaults[n]) if n in defaults else COMMON[n] for n in names]
    return OptionSet([*chosen, *own])


def union(sets: Iterable[OptionSet]) -> dict[str, Option]:
    """Every option of the given tasks, by name; a name declared with another type, bounds or choices is an error
    (the default, help and path kind may differ per task)."""
    out: dict[str, Option] = {}
    for s in sets:
        for o in s:
            seen = out.get(o.name)
            if seen is not None and (seen.type, seen.bounds, seen.choices) != (o.type, o.bounds, o.choices):
                raise ValueError(f"train option {o.name!r} is declared twice with different rules")
            out.setdefault(o.name, COMMON.get(o.name, o))  # the shared wording where there is one
    return out


def add_arguments(parser: argparse.ArgumentParser, options: dict[str, Option],
                  defaults: dict[str, dict[str, Any]]) -> None:
    """One flag per option; ``defaults[name][task]`` lists each task's default in the help. Flags default to
    None (argparse.SUPPRESS for booleans), so the task's own default applies and an explicit flag is known."""
    every = {t for per in defaults.values() for t in per}
    for o in options.values():
        text = (o.help + _default_note(o, defaults.get(o.name, {}), every)).replace("%", "%%")
        if o.type is bool:
            parser.add_argument(o.flag, dest=o.name, action="store_false" if o.default else "store_true",
                                default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(o.flag, dest=o.name, type=comma_list if o.type is list else o.type,
                                choices=o.choices, metavar=o.metavar, default=argparse.SUPPRESS, help=text)


def _shown(v: Any) -> str:
    return "on" if v is True else "off" if v is False else "—" if v is None else str(v)


def _default_note(o: Option, per_task: dict[str, Any], every: set[str]) -> str:
    """`` (default 20; causal-lm 10; detection 60)``-style help suffix, and which tasks take the option."""
    which = "" if set(per_task) >= every else f" [{', '.join(per_task)}]"
    values = {t: v for t, v in per_task.items() if v is not None}
    if not values:
        return which
    if len(set(map(_shown, values.values()))) == 1:
        return f" (default {_shown(next(iter(values.values())))}){which}"
    return " (default " + "; ".join(f"{t} {_shown(v)}" for t, v in values.items()) + ")" + which


def markdown_table(options: dict[str, Option], defaults: dict[str, dict[str, Any]]) -> str:
    """The options as a Markdown table (docs/train-options.md is generated from it)."""
    rows = ["| flag (agent key) | tasks | type | allowed | default | what |", "|---|---|---|---|---|---|"]
    for o in options.values():
        allowed = ", ".join(o.choices) if o.choices else (f"{o.bounds[0]:g} … {o.bounds[1]:g}" if o.bounds else
                                                          f"1 … {MAX_LIST} names" if o.type is list else "")
        per = defaults.get(o.name, {})
        dflt = "; ".join(f"{t}: {_shown(v)}" for t, v in per.items()) if len(set(map(_shown, per.values()))) > 1 \
            else _shown(next(iter(per.values()), o.default))
        rows.append(f"| `{o.flag}` (`{o.name}`) | {', '.join(per)} | {o.type.__name__} | {allowed} | {dflt} | {o.help} |")
    return "\n".join(rows)
