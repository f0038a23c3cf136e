"""Chat templates rendered as transformers renders them: where they are found, the generation
spans, the trained-token rules, and the errors a user can act on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from lora_assets.core.chat_template import (
    ChatTemplateError,
    compile_chat_template,
    find_chat_template,
    render_with_generation_spans,
    trained_spans,
)
from lora_assets.core.tokens import LengthStats, TokenizerLoadError, token_counter

MESSAGES = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "Should I pay off the loan?"},
    {"role": "assistant", "content": "It makes sense to ask."},
    {"role": "user", "content": "And then?"},
    {"role": "assistant", "content": "Then we look at the rate."},
]


def _tokenizer(folder: Path) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([m["content"] for m in MESSAGES] * 5,
                            trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_generation_spans_cover_what_the_block_rendered_with_trim_and_lstrip_blocks() -> None:
    template_text = (
        "{% for m in messages %}\n"
        "    {% if m.role == 'assistant' %}\n"
        "A: {% generation %}{{ m.content }}<END>{% endgeneration %}\n"
        "    {% else %}\n"
        "{{ m.role[0] | upper }}: {{ m.content }}\n"
        "    {% endif %}\n"
        "{% endfor %}"
    )
    template = compile_chat_template(template_text)
    text, spans = render_with_generation_spans(template, MESSAGES, {})
    # trim_blocks / lstrip_blocks: block tags leave no indentation, and no newline after them.
    assert text == ("S: Be kind.\nU: Should I pay off the loan?\nA: It makes sense to ask.<END>"
                    "U: And then?\nA: Then we look at the rate.<END>")
    assert [text[a:b] for a, b in spans] == ["It makes sense to ask.<END>", "Then we look at the rate.<END>"]
    # The same text and spans as transformers' own renderer.
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    [reference], [reference_spans] = utils.render_jinja_template(
        conversations=[MESSAGES], chat_template=template_text, return_assistant_tokens_mask=True)
    assert (text, spans) == (reference, [tuple(s) for s in reference_spans])


def test_transformers_globals_and_filters_are_there() -> None:
    template = compile_chat_template("{{ messages | tojson }}|{{ eos_token }}")
    text, spans = render_with_generation_spans(template, [{"role": "user", "content": "<b>é</b>"}], {"eos_token": "</s>"})
    assert text == '[{"role": "user", "content": "<b>é</b>"}]|</s>' and spans == []  # no HTML escaping, no \\u00e9
    failing = compile_chat_template("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ChatTemplateError, match="roles must alternate") as err:
        render_with_generation_spans(failing, MESSAGES, {})
    assert isinstance(err.value, ValueError)  # the build turns it into a BuildError naming the file
    with pytest.raises(ChatTemplateError, match="cannot be compiled"):
        compile_chat_template("{% generation %}never closed")


class _Encoding:
    """An encoding whose characters map to tokens as given (None: no token, e.g. trimmed space)."""

    def __init__(self, char_tokens: list[int | None], tokens: int) -> None:
        self._map, self.ids = char_tokens, list(range(tokens))

    def char_to_token(self, char: int) -> int | None:
        return self._map[char] if char < len(self._map) else None


def test_trained_spans_follow_transformers_mask_rules() -> None:
    # 10 characters, two per token: tokens 0..4.
    enc = _Encoding([0, 0, 1, 1, 2, 2, 3, 3, 4, 4], 5)
    assert trained_spans(enc, [(2, 6)]) == ([(1, 3)], [2])
    # Overlapping blocks are one mask (counted once); each block keeps its own count.
    assert trained_spans(enc, [(2, 6), (4, 8)]) == ([(1, 4)], [2, 2])
    # A block whose first character has no token ends the marking (transformers' `break`).
    gap = _Encoding([0, 0, 1, 1, None, 2, 3, 3, 4, 4], 5)
    assert trained_spans(gap, [(2, 4), (4, 6), (6, 10)]) == ([(1, 2)], [1])
    # transformers reads a last token of 0 as "none" and marks to the end: so do we.
    assert trained_spans(enc, [(0, 2)]) == ([(0, 5)], [5])
    # A last character without a token marks to the end of the sequence.
    end = _Encoding([0, 0, 1, 1, 2, 2, 3, 3, None, None], 5)
    assert trained_spans(end, [(6, 10)]) == ([(3, 5)], [2])


def test_template_locations_and_named_templates(tmp_path: Path) -> None:
    folder = _tokenizer(tmp_path / "named")
    config = {"eos_token": {"content": "<|im_end|>", "special": True}, "bos_token": None,
              "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    found = find_chat_template(folder)
    assert found is not None and found.text == "D" and found.special_tokens == {"eos_token": "<|im_end|>"}
    assert find_chat_template(_tokenizer(tmp_path / "none")) is None


def test_bad_templates_are_load_errors_and_a_failing_one_a_value_error(tmp_path: Path) -> None:
    bad = _tokenizer(tmp_path / "bad")
    (bad / "chat_template.jinja").write_text("{% for m in messages %}")
    with pytest.raises(TokenizerLoadError, match="cannot be compiled"):
        token_counter(bad)
    broken = _tokenizer(tmp_path / "broken")
    (broken / "tokenizer_config.json").write_text("{nope")
    with pytest.raises(TokenizerLoadError, match="tokenizer_config.json.*cannot be read"):
        token_counter(broken)

    strict = _tokenizer(tmp_path / "strict")
    (strict / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "{{ m.content }}{% endfor %}")
    stats = LengthStats(token_counter(strict))
    stats.add(MESSAGES)
    with pytest.raises(ValueError, match="the chat template failed on an example: no system role"):
        stats.result()


def test_a_template_without_generation_trains_nothing_and_the_card_says_so(tmp_path: Path) -> None:
    from lora_assets.core.card import dataset_card
    from lora_assets_tests.core.test_card import CLAUDE, _inputs

    folder = _tokenizer(tmp_path / "plain")
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
    stats = LengthStats(token_counter(folder))
    stats.add(MESSAGES)
    report = stats.result()
    assert report.examples.max > 0 and report.assistant_tokens == 0
    stats_in, export, _ = _inputs()
    card = dataset_card(name="x", stats=stats_in, export=export, sources=[CLAUDE], lengths=report)
    assert "has no `{% generation %}` block" in card
