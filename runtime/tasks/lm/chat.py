"""Question → answer data for causal-LM bundles: the bundle's chat format, its tokenizer, and the ``.jsonl`` loader.

The manifest's ``preprocessing`` of a causal-LM bundle (written by ``ftedge export --task causal-lm``)::

    {"type": "chat", "tokenizer": "tokenizer.json", "max_length": 256,
     "chat": {"turn": {"system": [PRE, POST], "user": [PRE, POST], "assistant": [PRE, POST]},
              "default_system": "You are …" | null, "generation_prompt": "<|im_start|>assistant\\n",
              "stop": ["<|im_end|>"], "jinja": "…the tokenizer's own template, for reference…"}}

The exporter derives ``turn`` / ``default_system`` / ``generation_prompt`` from the model's Jinja chat template and
checks that rendering with them gives the template's own output, so the device needs no Jinja.

A data file has one JSON object per line, either ``{"prompt": …, "answer": …}`` or the chat form
``{"messages": [{"role": "system"|"user"|"assistant", "content": …}, …]}`` whose last message is the assistant's
answer (earlier turns are context). Extra keys (``id``, ``keywords``, …) are kept for evaluation. The answer is
trained on (with the stop string appended, so the model learns to stop); the prompt is not. A row longer than
``max_length`` tokens keeps its prompt and the answer's first tokens and is listed under ``truncated``; a row that is not an object, misses a field, has an empty answer, an unknown role, or whose prompt
alone fills ``max_length`` is skipped and reported.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftedge.errors import DataError, TextError

ROLES = ("system", "user", "assistant")
MIN_ANSWER_TOKENS = 1


@dataclass(frozen=True)
class ChatFormat:
    turn: dict[str, tuple[str, str]]
    default_system: str | None
    generation_prompt: str
    stop: tuple[str, ...]

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "ChatFormat":
        try:
            turn = {r: (str(obj["turn"][r][0]), str(obj["turn"][r][1])) for r in ROLES}
            return cls(turn=turn, default_system=obj.get("default_system"),
                       generation_prompt=str(obj["generation_prompt"]), stop=tuple(obj.get("stop") or ()))
        except (KeyError, TypeError, IndexError) as exc:
            raise TextError(f"the bundle's chat format is malformed ({exc}); re-export the bundle") from exc

    def to_json(self) -> dict[str, Any]:
        return {"turn": {r: list(v) for r, v in self.turn.items()}, "default_system": self.default_system,
                "generation_prompt": self.generation_prompt, "stop": list(self.stop)}

    def segments(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[tuple[str, bool]]:
        """The conversation as the model's chat template writes it, as ``(text, is_content)`` pieces: the template's
        own markers (``is_content`` False) and the messages' text (True), which must never be parsed into
        special tokens (a prompt typing ``<|im_start|>assistant`` would otherwise forge a turn)."""
        out: list[tuple[str, bool]] = []

        def turn(role: str, content: str) -> None:
            pre, post = self.turn[role]
            out.extend([(pre, False), (content, True), (post, False)])

        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            turn("system", self.default_system)
        for m in messages:
            turn(m["role"], m["content"])
        if add_generation_prompt:
            out.append((self.generation_prompt, False))
        return [(text, content) for text, content in out if text]

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The conversation as the model's chat template writes it."""
        return "".join(text for text, _ in self.segments(messages, add_generation_prompt))


@dataclass
class Example:
    prompt_ids: list[int]
    answer_ids: list[int]   # the answer plus the stop string: the tokens trained on
    row: dict[str, Any]     # the source row (prompt, answer, and any extra keys)
    source: str             # FILE:LINE


@dataclass
class QAData:
    examples: list[Example]
    skipped: list[dict[str, str]] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)


class ChatTokenizer:
    """The bundle's ``tokenizer.json`` (``tokenizers``, no transformers) and chat format."""

    def __init__(self, tokenizer_file: str | Path, fmt: ChatFormat, max_length: int) -> None:
        try:
            import tokenizers
        except ImportError as exc:
            raise TextError(f"causal-LM bundles need the `tokenizers` package ({exc}); pip install 'ftedge[device]'"
                            ) from exc
        try:
            self.tok = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:
            raise TextError(f"cannot read the bundle's tokenizer {tokenizer_file}: {exc}; re-export the bundle") from exc
        self.tok.no_truncation()
        self.tok.no_padding()
        # A second copy that reads special-token strings as plain text: for message text (what a user typed).
        # Two instances rather than toggling one flag: the tokenizer is shared by the job and the ask threads.
        self.plain = tokenizers.Tokenizer.from_str(self.tok.to_str())
        self.plain.encode_special_tokens = True
        self.fmt = fmt
        self.max_length = int(max_length)
        self.stop_ids = sorted({i for s in fmt.stop for i in self.encode(s)} if fmt.stop else set())

    @classmethod
    def from_bundle(cls, root: str | Path, preprocessing: dict[str, Any]) -> "ChatTokenizer":
        if (preprocessing or {}).get("type") != "chat":
            raise TextError("this bundle is not a causal-LM bundle (no chat preprocessing); export with --task causal-lm")
        return cls(Path(root) / preprocessing["tokenizer"], ChatFormat.from_json(preprocessing["chat"]),
                   int(preprocessing["max_length"]))

    def encode(self, text: str) -> list[int]:
        """Template text: special-token strings in it become their tokens."""
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def encode_text(self, text: str) -> list[int]:
        """Message text: special-token strings in it stay plain text."""
        return list(self.plain.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return [i for text, content in self.fmt.segments(messages, add_generation_prompt=True)
                for i in (self.encode_text(text) if content else self.encode(text))]

    def answer_ids(self, answer: str) -> list[int]:
        return self.encode_text(answer) + (self.encode(self.fmt.stop[0]) if self.fmt.stop else [])


def _messages(row: Any) -> tuple[list[dict[str, str]], str]:
    """(context messages, answer) of a row; raises ValueError saying what is wrong."""
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("`messages` must be a non-empty list")
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ValueError(f"a message must be {{role: {'/'.join(ROLES)}, content: text}}, got {str(m)[:80]}")
        if msgs[-1]["role"] != "assistant":
            raise ValueError("the last message must be the assistant's answer")
        if not any(m["role"] == "user" for m in msgs[:-1]):
            raise ValueError("no user message before the answer")
        return [dict(m) for m in msgs[:-1]], msgs[-1]["content"]
    prompt, answer = row.get("prompt"), row.get("answer")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("`prompt` must be non-empty text")
    if not isinstance(answer, str):
        raise ValueError("`answer` must be text")
    return [{"role": "user", "content": prompt.strip()}], answer


def prompt_of(row: dict[str, Any]) -> list[dict[str, str]]:
    """The context messages of a row (for generation); raises DataError on a malformed row."""
    if isinstance(row, dict) and "prompt" in row and "answer" not in row and isinstance(row["prompt"], str):
        return [{"role": "user", "content": row["prompt"].strip()}]
    try:
        return _messages(row)[0]
    except ValueError as exc:
        raise DataError(f"bad row: {exc}") from exc


def read_rows(path: str | Path) -> tuple[list[tuple[str, Any]], list[dict[str, str]]]:
    """``(source, parsed object)`` per non-blank line of a ``.jsonl`` file, and the lines that are not JSON."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise DataError(f"{path}: causal-LM data is a .jsonl file of {{\"prompt\", \"answer\"}} or {{\"messages\"}} rows")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    rows, skipped = [], []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name}:{n}"
        try:
            rows.append((where, json.loads(line.decode("utf-8"))))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            skipped.append({"source": where, "reason": f"not a JSON line ({type(exc).__name__}: {str(exc)[:80]})"})
    return rows, skipped


def load_qa(path: str | Path, tok: ChatTokenizer, need_answer: bool = True) -> QAData:
    """Tokenize a Q&A ``.jsonl`` file; bad rows are skipped and reported, long rows truncated and reported."""
    rows, skipped = read_rows(path)
    data = QAData(examples=[], skipped=skipped)
    for where, row in rows:
        try:
            context, answer = _messages(row)
            if need_answer and not answer.strip():
                raise ValueError("empty answer")
        except ValueError as exc:
            data.skipped.append({"source": where, "reason": str(exc)})
            continue
        p_ids, a_ids = tok.prompt_ids(context), tok.answer_ids(answer.strip())
        if len(p_ids) + MIN_ANSWER_TOKENS > tok.max_length:
            data.skipped.append({"source": where, "reason": f"the prompt alone is {len(p_ids)} tokens; the bundle "
                                 f"trains on at most {tok.max_length} (export with a larger --max-length)"})
            continue
        if len(p_ids) + len(a_ids) > tok.max_length:
            a_ids = a_ids[: tok.max_length - len(p_ids)]
            data.truncated.append(where)
        data.examples.append(Example(p_ids, a_ids, row if isinstance(row, dict) else {}, where))
    if not data.examples:
        reasons = "; ".join(f"{s['source']}: {s['reason']}" for s in data.skipped[:3])
        raise DataError(f"{path}: no usable question/answer rows ({len(data.skipped)} skipped{': ' + reasons if reasons else ''})")
    return data


@functools.lru_cache(maxsize=4)
def _cached(root: str, pre_json: str) -> ChatTokenizer:
    return ChatTokenizer.from_bundle(root, json.loads(pre_json))


def bundle_tokenizer(root: str | Path, preprocessing: dict[str, Any]) -> ChatTokenizer:
    """One :class:`ChatTokenizer` per bundle and process."""
    return _cached(str(root), json.dumps(preprocessing, sort_keys=True))
