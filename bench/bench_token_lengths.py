"""Per-example cost of the build's token-length count, by method, on simulator conversations.

    .venv/bin/python bench/bench_token_lengths.py [--n 10000] [--out FILE.json]

A ByteLevel BPE tokenizer is trained here on the conversations' texts (nothing is downloaded) and
saved with a ChatML `chat_template.jinja` that marks assistant turns with `{% generation %}`.
Each method counts every example through `LengthStats`, as the build does; transformers'
`apply_chat_template(..., return_assistant_tokens_mask=True)` (what TRL runs) is timed beside
it as the reference when transformers is installed (the dev extras).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from lora_assets.core.tokens import LengthStats, token_counter
from lora_assets.generation.simulator.content import compose_conversation

SYSTEM = ("You are Elena Marquez, a warm and precise financial planner. Acknowledge the client's feelings "
          "before facts, explain trade-offs in plain numbers and never promise returns.")
CHATML = (
    "{%- for message in messages %}{%- if message['role'] == 'assistant' %}{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}{{- '\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
)


def examples(n: int) -> list[list[dict[str, str]]]:
    """`n` messages-export examples of the simulator's conversations."""
    out = []
    for i in range(n):
        turns = compose_conversation({}, f"bench-{i}")["turns"]
        out.append([{"role": "system", "content": SYSTEM},
                    *({"role": t["role"], "content": t["content"]} for t in turns)])
    return out


def tokenizer_dirs(texts: list[str], root: Path) -> tuple[Path, Path]:
    """(directory with tokenizer.json + chat_template.jinja, directory with tokenizer.json only)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=4000, show_progress=False,
                                                       special_tokens=["<|im_start|>", "<|im_end|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    templated, plain = root / "templated", root / "plain"
    for folder in (templated, plain):
        folder.mkdir()
        tok.save(str(folder / "tokenizer.json"))
    (templated / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    return templated, plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data = examples(args.n)
    chars = sum(len(m["content"]) for e in data for m in e)
    with tempfile.TemporaryDirectory() as tmp:
        templated, plain = tokenizer_dirs([m["content"] for e in data[:2000] for m in e], Path(tmp))
        results: dict[str, dict[str, float | int]] = {}
        for label, path in (("estimate", None), ("tokenizer_no_template", plain), ("chat_template", templated)):
            counter = token_counter(path)
            started = time.perf_counter()
            stats = LengthStats(counter)
            for e in data:
                stats.add(e)
            report = stats.result()
            seconds = time.perf_counter() - started
            results[label] = {"seconds": round(seconds, 2), "us_per_example": round(seconds / args.n * 1e6, 1),
                              "max": report.examples.max, "trained_tokens": report.assistant_tokens}
        try:
            import transformers
        except ImportError:
            transformers = None
        if transformers is not None:
            tok = transformers.PreTrainedTokenizerFast.from_pretrained(str(templated))
            started = time.perf_counter()
            for i in range(0, args.n, 256):
                tok.apply_chat_template(data[i:i + 256], tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
            seconds = time.perf_counter() - started
            results["transformers_apply_chat_template"] = {"seconds": round(seconds, 2),
                                                           "us_per_example": round(seconds / args.n * 1e6, 1)}
    out = {"examples": args.n, "chars_per_example": round(chars / args.n), "methods": results}
    text = json.dumps(out, indent=2)
    if args.out is not None:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
