"""A tokenizer directory's chat template, rendered as transformers renders it for training.

transformers' ``apply_chat_template(..., return_assistant_tokens_mask=True)`` — what TRL's
`assistant_only_loss` trains on — finds the template (`find_chat_template`), compiles it in a
sandboxed jinja2 environment (`compile_chat_template`), renders each conversation while a
``{% generation %}`` tag records the character spans of the assistant parts
(`render_with_generation_spans`), tokenises the text and marks the tokens of those spans
(`trained_spans`). This module does each step the same way with jinja2 and the `tokenizers`
package, without transformers (and without its import time), so `core/tokens.py` counts what the
trainer counts; lora_assets_tests/core/test_tokens_chat_template.py checks the two agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any


class ChatTemplateError(ValueError):
    """A chat template (or the tokenizer_config.json holding it) that cannot be read, compiled or
    rendered."""


#: Where a tokenizer directory keeps its chat template (transformers ≥ 4.43 saves it here).
CHAT_TEMPLATE_FILE = "chat_template.jinja"
#: The tokenizer's settings; older directories keep `chat_template` in it.
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
#: Special tokens transformers passes to a chat template as variables (`special_tokens_map`).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def tokenizer_config(folder: Path) -> dict[str, Any]:
    """The directory's `tokenizer_config.json` ({} when it has none)."""
    config_file = folder / TOKENIZER_CONFIG_FILE
    if not config_file.is_file():
        return {}
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ChatTemplateError(f"{str(config_file)!r} cannot be read: {exc}") from exc
    if not isinstance(config, dict):
        raise ChatTemplateError(f"{str(config_file)!r} is not a JSON object")
    return config


@dataclass(frozen=True)
class ChatTemplateSource:
    """A tokenizer directory's chat template text, where it came from, and the special tokens
    transformers passes it as variables."""

    text: str
    origin: str
    special_tokens: dict[str, str]


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json writes a special token as a string or as an AddedToken dict.
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def find_chat_template(directory: str | Path) -> ChatTemplateSource | None:
    """The chat template of a tokenizer directory, as transformers loads it: `chat_template.jinja`
    first, else `chat_template` in `tokenizer_config.json` (a string, or a list of named templates
    of which "default" is used). None when the directory has none."""
    folder = Path(directory)
    config_file = folder / TOKENIZER_CONFIG_FILE
    config = tokenizer_config(folder)
    special = {name: text for name in SPECIAL_TOKEN_NAMES if (text := _token_text(config.get(name))) is not None}
    jinja_file = folder / CHAT_TEMPLATE_FILE
    if jinja_file.is_file():
        return ChatTemplateSource(jinja_file.read_text(encoding="utf-8"), str(jinja_file), special)
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: transformers uses "default" without tools
        template = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}.get("default")
    if isinstance(template, str) and template.strip():
        return ChatTemplateSource(template, f"{config_file} (chat_template)", special)
    return None


def compile_chat_template(text: str) -> Any:
    """`text` compiled once as transformers compiles chat templates (`_compile_jinja_template`):
    a sandboxed jinja2 environment with `trim_blocks` / `lstrip_blocks`, loop controls, its
    `tojson`, `raise_exception` and `strftime_now`, and a ``{% generation %}`` tag that records the
    character span of what it renders while `generation_spans` is active."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTracker(jinja2.ext.Extension):
        """``{% generation %}…{% endgeneration %}``: renders its body, recording where it sits."""

        tags = {"generation"}

        def __init__(self, environment: jinja2.Environment) -> None:
            super().__init__(environment)
            environment.extend(generation_spans=self.generation_spans)
            self._blocks: list[str] | None = None
            self._spans: list[tuple[int, int]] | None = None

        def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_generation"), [], [], body).set_lineno(lineno)

        def _generation(self, caller: Any) -> str:
            rendered = caller()
            if self._blocks is not None and self._spans is not None:
                # The text streamed so far ends where this block starts (as transformers counts it).
                start = sum(map(len, self._blocks))
                self._spans.append((start, start + len(rendered)))
            return rendered

        @contextmanager
        def generation_spans(self, blocks: list[str], spans: list[tuple[int, int]]) -> Iterator[None]:
            self._blocks, self._spans = blocks, spans
            try:
                yield
            finally:
                self._blocks = self._spans = None

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        # transformers' filter: no HTML escaping (jinja's own tojson escapes <, >, &).
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"the chat template cannot be compiled: {exc}") from exc


def render_with_generation_spans(template: Any, messages: Sequence[Mapping[str, str]],
                                 variables: Mapping[str, str]) -> tuple[str, list[tuple[int, int]]]:
    """`messages` rendered through a `compile_chat_template` template (no generation prompt), and
    the character spans of its ``{% generation %}`` blocks."""
    import jinja2

    blocks: list[str] = []
    spans: list[tuple[int, int]] = []
    try:
        with template.environment.generation_spans(blocks, spans):
            # Streamed block by block: a generation block's start is the length streamed before it.
            for block in template.generate(messages=[dict(m) for m in messages], tools=None, documents=None,
                                           add_generation_prompt=False, **variables):
                blocks.append(block)
    except jinja2.TemplateError as exc:  # raise_exception(), an undefined name, the sandbox
        raise ChatTemplateError(f"the chat template failed on an example: {exc}") from exc
    return "".join(blocks), spans


def trained_spans(encoding: Any, char_spans: Sequence[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[int]]:
    """Token spans [start, end) of `char_spans` in `encoding`, as transformers'
    `return_assistant_tokens_mask` marks them (merged where they overlap), and the tokens each
    span marks. Its rules, kept so the counts agree: a span runs from the token of its first
    character to the token of its last (to the end of the sequence when that character has no
    token), and the first span whose first character has no token ends the marking."""
    total = len(encoding.ids)
    marked: list[tuple[int, int]] = []
    per_block: list[int] = []
    for start_char, end_char in char_spans:
        start = encoding.char_to_token(start_char)
        if start is None:
            break
        end = encoding.char_to_token(end_char - 1)
        stop = end + 1 if end else total  # transformers: `end_token + 1 if end_token else len(...)`
        per_block.append(max(0, stop - start))
        if stop > start:
            marked.append((start, stop))
    marked.sort()
    merged: list[tuple[int, int]] = []
    for start, stop in marked:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged, per_block
