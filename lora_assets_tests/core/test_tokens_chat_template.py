"""Token lengths against the trainer's own numbers: transformers' `apply_chat_template(...,
return_assistant_tokens_mask=True)` — what TRL's `assistant_only_loss` trains — on a tiny
ByteLevel BPE tokenizer trained here (nothing downloaded) with a ChatML template that marks the
assistant turns with ``{% generation %}``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from lora_assets.core.card import dataset_card
# Only names the counting had before the chat template: the first tests run (and fail) on it too.
from lora_assets.core.tokens import ESTIMATE_METHOD, CharEstimateCounter, LengthStats, TokenizerCounter, token_counter
from lora_assets.generation.simulator.content import compose_conversation
from lora_assets_tests.core.test_card import CLAUDE, _inputs

transformers = pytest.importorskip("transformers")

SYSTEM = ("You are Elena Marquez, a warm and precise financial planner. Acknowledge the client's feelings "
          "before facts, explain trade-offs in plain numbers and never promise returns.")

#: ChatML with the assistant content and its turn end inside `generation` (what TRL's docs use for
#: assistant-only loss). Written over several lines: trim_blocks / lstrip_blocks must apply.
CHATML = """{%- for message in messages %}
    {%- if message['role'] == 'assistant' %}
{{- '<|im_start|>assistant\n' }}
        {%- generation %}
{{- message['content'] + '<|im_end|>' }}
        {%- endgeneration %}
{{- '\n' }}
    {%- else %}
{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\n' }}
{%- endif %}
"""


def _examples(n: int = 40) -> list[list[dict[str, str]]]:
    """`n` exported-style examples (system + alternating turns) of the simulator's varied
    conversations: realistic lengths, numbers and names."""
    out = []
    for i in range(n):
        turns = compose_conversation({}, f"tokens-{i}")["turns"]
        out.append([{"role": "system", "content": SYSTEM},
                    *({"role": t["role"], "content": t["content"]} for t in turns)])
    return out


EXAMPLES = _examples()


def _tokenizer_dir(folder: Path, *, special_markers: bool, template_in_config: bool) -> Path:
    """A ByteLevel BPE tokenizer trained on the examples' texts, saved with a ChatML template:
    in `chat_template.jinja`, or (older layout) as `chat_template` in `tokenizer_config.json`.
    Without `special_markers`, `<|im_start|>` / `<|im_end|>` are plain text the BPE splits (the
    issue's tokenizer: `<|im_start|>system\\n` is 7 tokens)."""
    specials = ["<|im_start|>", "<|im_end|>"] if special_markers else []
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if special_markers:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    texts = [m["content"] for messages in EXAMPLES for m in messages]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1500, show_progress=False, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config: dict[str, object] = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
                                 "model_max_length": 100_000}
    if template_in_config:
        config["chat_template"] = CHATML
    else:
        (folder / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


VARIANTS = {
    "special-markers-jinja-file": {"special_markers": True, "template_in_config": False},
    "split-markers-config-template": {"special_markers": False, "template_in_config": True},
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def tokenizer_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tokenizer_dir(tmp_path_factory.mktemp(request.param), **VARIANTS[request.param])


def _trainer_counts(folder: Path) -> list[tuple[list[int], list[int]]]:
    """(input_ids, assistant_masks) of every example, from transformers as TRL calls it."""
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(str(folder))
    out = []
    for messages in EXAMPLES:
        enc = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        out.append((list(enc["input_ids"]), list(enc["assistant_masks"])))
    return out


@pytest.fixture(scope="module")
def trainer(tokenizer_dir: Path) -> list[tuple[list[int], list[int]]]:
    return _trainer_counts(tokenizer_dir)


def _one(counter_dir: Path, messages: list[dict[str, str]], max_length: int):
    stats = LengthStats(token_counter(counter_dir))
    stats.add(messages)
    return stats.result(max_length=max_length)


def test_every_example_counts_what_apply_chat_template_counts(tokenizer_dir: Path, trainer) -> None:
    """Per example: the whole length and the trained (assistant) tokens, turn ends included."""
    for messages, (ids, mask) in zip(EXAMPLES, trainer, strict=True):
        assert sum(mask) > 0
        report = _one(tokenizer_dir, messages, max_length=len(ids))
        assert report.examples.max == len(ids)
        assert report.truncation is not None
        assert report.truncation.assistant_tokens_total == sum(mask)
        assert report.truncation.assistant_tokens_cut == 0 and report.truncation.examples_over == 0


def test_the_card_states_the_trainers_max_and_trained_tokens_and_max_length_cuts_nothing(
        tokenizer_dir: Path, trainer) -> None:
    stats = LengthStats(token_counter(tokenizer_dir))
    for messages in EXAMPLES:
        stats.add(messages)
    report = stats.result()
    longest = max(len(ids) for ids, _ in trainer)
    trained = sum(sum(mask) for _, mask in trainer)
    assert report.examples.max == longest and report.assistant_tokens == trained
    assert report.counting == "chat_template" and report.chat_template is not None

    stats_in, export, _ = _inputs()
    card = dataset_card(name="x", stats=stats_in, export=export, sources=[CLAUDE], lengths=report)
    section = card.split("## Token lengths")[1].split("## Quality")[0]
    row = re.search(r"\| examples \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|", section)
    assert row is not None and int(row.group(1)) == len(EXAMPLES) and int(row.group(5)) == longest
    assert f"**Trained (assistant) tokens:** {trained:,}" in section
    assert "chat template" in section and report.chat_template in section

    # TRL truncates each example to max_length, keeping the start: at the recommendation nothing
    # is cut, neither tokens nor trained tokens.
    max_length = report.recommended_max_length
    assert report.recommended_sequence_len == max_length
    assert sum(max(0, len(ids) - max_length) for ids, _ in trainer) == 0
    assert sum(sum(mask[max_length:]) for _, mask in trainer) == 0
    assert f"**Recommended TRL `max_length`:** {max_length}" in section


def test_a_shorter_max_length_cuts_exactly_what_the_trainer_would_lose(tokenizer_dir: Path, trainer) -> None:
    """The trained tokens' positions agree too: the cut at a limit below the longest example is
    the masked tokens TRL's truncation drops."""
    stats = LengthStats(token_counter(tokenizer_dir))
    for messages in EXAMPLES:
        stats.add(messages)
    lengths = sorted(len(ids) for ids, _ in trainer)
    for limit in (lengths[len(lengths) // 2], lengths[-1] - 17):
        cut = stats.over(limit)
        assert cut.examples_over == sum(1 for n in lengths if n > limit)
        assert cut.assistant_tokens_cut == sum(sum(mask[limit:]) for _, mask in trainer) > 0


def test_the_template_is_found_where_transformers_looks(tmp_path: Path) -> None:
    from lora_assets.core.tokens import ChatTemplateCounter, find_chat_template

    jinja = _tokenizer_dir(tmp_path / "a", special_markers=True, template_in_config=False)
    config = _tokenizer_dir(tmp_path / "b", special_markers=True, template_in_config=True)
    assert find_chat_template(jinja).origin == str(jinja / "chat_template.jinja")
    assert find_chat_template(config).origin.startswith(str(config / "tokenizer_config.json"))
    assert find_chat_template(jinja).special_tokens == {"eos_token": "<|im_end|>"}
    # The template file wins over tokenizer_config.json, as in transformers.
    (config / "chat_template.jinja").write_text("{{ 'x' }}")
    assert find_chat_template(config).text == "{{ 'x' }}"
    # A tokenizer.json path finds the template beside it; without one the overhead counter is used.
    assert isinstance(token_counter(jinja / "tokenizer.json"), ChatTemplateCounter)
    (jinja / "chat_template.jinja").unlink()
    (jinja / "tokenizer_config.json").unlink()
    assert isinstance(token_counter(jinja), TokenizerCounter)


def test_without_a_tokenizer_the_estimate_is_stated_and_never_below_the_trainers_count(
        tokenizer_dir: Path, trainer) -> None:
    """The chars/4 + margin estimate is an upper bound of the template count on this test set,
    example by example, for lengths and trained tokens; at the longest example it stays close."""
    from lora_assets.core.tokens import ESTIMATE_MARGIN

    estimates = CharEstimateCounter().count_examples(EXAMPLES)
    ratios = []
    for est, (ids, mask) in zip(estimates, trainer, strict=True):
        assert est.length >= len(ids)
        assert sum(end - start for start, end in est.trained) >= sum(mask)
        ratios.append(est.length / len(ids))
    longest = max(range(len(EXAMPLES)), key=lambda i: len(trainer[i][0]))
    # How close (measured 1.09 / 1.21 at the longest example, ≤ 1.23 anywhere): a margin that only
    # makes the bound looser fails here.
    assert 1.0 <= estimates[longest].length / len(trainer[longest][0]) < 1.25
    assert max(ratios) < 1.3

    stats = LengthStats()  # no tokenizer named
    for messages in EXAMPLES:
        stats.add(messages)
    report = stats.result()
    assert report.method == ESTIMATE_METHOD and report.estimate_margin == ESTIMATE_MARGIN
    assert report.examples.max >= max(len(ids) for ids, _ in trainer)
    stats_in, export, _ = _inputs()
    card = dataset_card(name="x", stats=stats_in, export=export, sources=[CLAUDE], lengths=report)
    section = card.split("## Token lengths")[1].split("## Quality")[0]
    assert f"`{ESTIMATE_METHOD}` — an **estimate**" in section
    assert "plus a 10% margin" in section
