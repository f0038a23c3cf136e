"""The dataset card (README.md) of a training-file version, in the Hugging Face format: YAML
front matter the Hub reads (task, language, size, data files per split), then what a person
needs to decide whether to train on it — size, quality, scaffolding balance, who generated it
(and whether that was real Claude), cost, curation, split and provenance of every source batch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lora_assets.core.aggregate import QUALITY_BUCKET_WIDTH, QUALITY_BUCKETS, AggregateStats
from lora_assets.core.dedup import DedupStats
from lora_assets.core.export import ExportStats
from lora_assets.core.leakage import LeakageReport
from lora_assets.core.split import SplitReport
from lora_assets.core.tokens import ESTIMATE_METHOD, LENGTH_MULTIPLE, LengthReport
from lora_assets.core.text import md_cell

SIMULATOR_NOTE = "simulator — not real Claude output"

_SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)


class SourceBatch(BaseModel):
    """Provenance of one batch job that contributed conversations to the training file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_id: str
    name: str
    model: str
    generator: Literal["claude", "simulator"]
    created: str | date | datetime
    conversations: int = Field(ge=0, description="Conversations of this batch in the training file.")
    cost_usd: float | None = Field(default=None, ge=0)


def size_category(n: int) -> str:
    """The Hugging Face `size_categories` bucket for `n` examples."""
    for bound, label in _SIZE_CATEGORIES:
        if n < bound:
            return label
    return "n>1B"


def _y(value: str) -> str:
    # JSON strings are valid YAML double-quoted scalars.
    return json.dumps(value, ensure_ascii=False)


def _cell(value: object) -> str:
    # Markdown table cell: no pipes or newlines may break the row.
    return md_cell(value)


def _when(value: str | date | datetime) -> str:
    return value if isinstance(value, str) else value.isoformat()


def _fmt_q(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return out


def _histogram(stats: AggregateStats, width: int = 40) -> list[str]:
    peak = max(stats.quality_histogram, default=0)
    lines = []
    for index, count in enumerate(stats.quality_histogram):
        low = index * QUALITY_BUCKET_WIDTH
        high = low + QUALITY_BUCKET_WIDTH
        closing = "]" if index == QUALITY_BUCKETS - 1 else ")"
        bar = "█" * (round(count * width / peak) if peak else 0)
        lines.append(f"[{low:.1f}, {high:.1f}{closing} {count:>7} {bar}".rstrip())
    return lines


def _generator_line(sources: Sequence[SourceBatch]) -> str:
    if not sources:
        return "unknown (no source batches were recorded)"
    simulated = sum(s.conversations for s in sources if s.generator == "simulator")
    claude_models = sorted({s.model for s in sources if s.generator == "claude"})
    if simulated and not claude_models:
        return f"**{SIMULATOR_NOTE}** (the loopback Claude simulator; model label(s): {', '.join(sorted({s.model for s in sources}))})"
    if simulated:
        return (
            f"mixed: Claude ({', '.join(claude_models)}) and the **{SIMULATOR_NOTE}** "
            f"for {simulated} conversation(s)"
        )
    return f"Claude ({', '.join(claude_models)})"


def _pct(part: int, whole: int) -> str:
    return f"{part:,} of {whole:,} ({part / whole:.1%})" if whole else f"{part:,} of 0"


def _counted_how(lengths: LengthReport) -> str:
    """The sentence saying how the token figures were counted (method, framing, margin)."""
    if lengths.counting == "chat_template":
        return (
            f"Counted with the tokenizer `{lengths.method}`, each example (system + all turns) rendered through "
            f"its own chat template `{lengths.chat_template}` as transformers' `apply_chat_template` renders it "
            "for TRL (`assistant_only_loss=True`). Trained tokens are those inside the template's "
            "`{% generation %}` blocks, turn-end tokens included."
        )
    if lengths.method == ESTIMATE_METHOD:
        margin = f"{lengths.estimate_margin:.0%}" if lengths.estimate_margin is not None else "no"
        how = (f"`{ESTIMATE_METHOD}` — an **estimate** (characters / 4 plus a {margin} margin), not a tokenizer "
               "count; no tokenizer was named")
    else:
        how = f"the tokenizer `{lengths.method}` (no chat template next to it)"
    return (
        f"Counted with {how}. Each example is counted as the messages export renders it (system + all turns), "
        f"plus {lengths.message_overhead_tokens} chat-template tokens per message; an assistant turn trains its "
        f"content and its turn-end token. Name a tokenizer directory with its chat template for exact figures."
    )


def _token_lengths_section(lengths: LengthReport | None) -> list[str]:
    """"Token lengths" section lines (empty when no report was passed)."""
    if lengths is None:
        return []
    # Exact only through the chat template; otherwise the claim holds for the stated count.
    nothing = "nothing" if lengths.counting == "chat_template" else "nothing by this count"
    out = [
        "",
        "## Token lengths",
        "",
        _counted_how(lengths),
        "",
        *_table(
            ["tokens", "count", "p50", "p95", "p99", "max"],
            [
                [label, p.count, p.p50, p.p95, p.p99, p.max]
                for label, p in (
                    ("examples", lengths.examples),
                    ("turns (user + assistant" + (", content only)" if lengths.counting == "chat_template"
                                                  else ", with template tokens)"), lengths.turns),
                    ("trained tokens per assistant turn (turn end included)", lengths.assistant_turns),
                )
            ],
        ),
        "",
        f"- **Trained (assistant) tokens:** {lengths.assistant_tokens:,} (turn-end tokens included)",
        f"- **Recommended Axolotl `sequence_len`:** {lengths.recommended_sequence_len} "
        f"(the longest example rounded up to a multiple of {LENGTH_MULTIPLE}: drops or truncates {nothing})",
        f"- **Recommended TRL `max_length`:** {lengths.recommended_max_length} "
        f"(the longest example rounded up to a multiple of {LENGTH_MULTIPLE}: truncates {nothing})",
    ]
    if lengths.counting == "chat_template" and lengths.examples.count and not lengths.assistant_tokens:
        out.append("- **Warning:** the chat template has no `{% generation %}` block around assistant turns: TRL's "
                   "`assistant_only_loss` would train nothing with it (transformers marks no assistant token)")
    t = lengths.truncation
    if t is not None:
        out.append(
            f"- **At max_length {t.max_length}:** {t.examples_over:,} example(s) exceed it; "
            f"{_pct(t.assistant_tokens_cut, t.assistant_tokens_total)} trained (assistant) tokens would be cut "
            "(never trained)"
        )
    return out


#: Cells shown on the card (lowest template rate first); the rest are counted.
_CARD_CELLS = 20


def _leakage_section(leakage: LeakageReport | None) -> list[str]:
    """"Overlap and diversity" section lines (empty when no report was passed)."""
    if leakage is None:
        return []
    o, d = leakage.overlap, leakage.diversity
    rows: list[list[object]] = [
        [f"validation assistant sentences found verbatim in train (≥ {leakage.min_sentence_words} words)",
         _pct(o.verbatim_sentences, o.validation_sentences)],
        [f"validation assistant turns identical to a train turn (≥ {leakage.min_turn_words} words)",
         _pct(o.exact_duplicate_turns, o.validation_turns)],
        [f"validation assistant turns near-duplicating a train turn (MinHash Jaccard ≥ {o.near_duplicate_jaccard:g})",
         _pct(o.near_duplicate_turns, o.validation_turns)],
        ["assistant words (not tokens)", f"{d.assistant_words:,}"],
        ["distinct-1 / distinct-2 (assistant words)", f"{d.distinct_1:.3f} / {d.distinct_2:.3f}"],
        ["template rate (distinct sentences after masking names and numbers / sentences)",
         f"{d.template_rate:.2f} ({d.distinct_templates:,} of {d.sentences:,})"],
        ["most repeated template", "—" if d.top_template is None else f"“{d.top_template}” ({d.top_template_count:,}×)"],
    ]
    out = ["", "## Overlap and diversity", "", *_table(["measure", "value"], rows)]
    if leakage.cells:
        cells = sorted(leakage.cells, key=lambda c: (c.template_rate, c.persona, c.arc, c.topic))
        out += [
            "",
            "Per persona × arc × topic cell (lowest template rate first):",
            "",
            *_table(
                ["persona", "arc", "topic", "conversations", "distinct-1", "distinct-2", "template rate"],
                [
                    [c.persona, c.arc, c.topic, c.conversations, f"{c.distinct_1:.3f}", f"{c.distinct_2:.3f}",
                     f"{c.template_rate:.2f}"]
                    for c in cells[:_CARD_CELLS]
                ],
            ),
        ]
        if len(cells) > _CARD_CELLS:
            out += ["", f"… and {len(cells) - _CARD_CELLS} more cell(s)."]
    return out


def dataset_card(
    *,
    name: str,
    stats: AggregateStats,
    sources: Sequence[SourceBatch],
    export: ExportStats | None = None,
    dedup: DedupStats | None = None,
    min_quality: float | None = None,
    quality_filtered_out: int = 0,
    min_judge_score: float | None = None,
    judge_filtered_out: int = 0,
    validation_fraction: float | None = None,
    split_seed: int | None = None,
    version: int | None = None,
    description: str | None = None,
    created_date: str | date | datetime | None = None,
    total_cost_usd: float | None = None,
    train_file: str = "train.messages.jsonl",
    validation_file: str | None = "validation.messages.jsonl",
    language: str = "en",
    license: str | None = None,
    lengths: LengthReport | None = None,
    leakage: LeakageReport | None = None,
    filters_run: Sequence[str] | None = None,
    review_rejected_out: int | None = None,
    split_report: SplitReport | None = None,
) -> str:
    """The README.md of a training-file version.

    `stats` describes the aggregate, `export` the fine-tuning files (their split counts),
    `dedup` / `min_quality` / `quality_filtered_out` / `min_judge_score` / `judge_filtered_out`
    the curation before aggregation (a member never judged counts as below `min_judge_score`), `sources`
    every batch that contributed conversations. `total_cost_usd` defaults to the sum of the
    batches' costs when all are known. When any source was produced by the simulator the card
    says so prominently: such a dataset must never be mistaken for Claude output.

    Optional sections: `lengths` (token-length percentiles, how they were counted, recommended
    `sequence_len` / `max_length`, and what a configured max_length cuts when the report carries
    one), `leakage` (train/validation overlap and diversity figures), `filters_run` (the names of
    the filters the build ran, listed under Curation), `review_rejected_out` (members left out
    because a human reviewer rejected them).
    """
    simulated = any(s.generator == "simulator" for s in sources)
    examples = (
        export.conversations_train + export.conversations_validation if export is not None else stats.conversation_count
    )
    has_validation = validation_file is not None and (export is None or export.conversations_validation > 0)

    tags = ["synthetic", "lora", "conversational", "financial-planning"]
    if simulated:
        tags.append("simulated")
    front = ["---", f"pretty_name: {_y(name)}", "language:", f"- {language}"]
    if license:
        front.append(f"license: {_y(license)}")
    front += [
        "task_categories:",
        "- text-generation",
        "tags:",
        *[f"- {t}" for t in tags],
        "size_categories:",
        f"- {size_category(examples)}",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        f"    path: {_y(train_file)}",
    ]
    if has_validation:
        front += ["  - split: validation", f"    path: {_y(validation_file)}"]  # type: ignore[arg-type]
    front.append("---")

    title = f"# {name}" + (f" (v{version})" if version is not None else "")
    body: list[str] = ["", title, ""]
    if simulated:
        body += [
            f"> **Warning:** conversations in this dataset were produced by the {SIMULATOR_NOTE}.",
            "> They are schema-valid placeholders for testing the pipeline, not training data.",
            "",
        ]
    body += [
        description
        or "Synthetic multi-turn conversations between financial-planning clients and an emotionally "
        "intelligent advisor, for LoRA fine-tuning. Built from scaffolding: client personas × "
        "emotional arcs × training topics.",
        "",
        f"- **Generator:** {_generator_line(sources)}",
    ]
    cost = total_cost_usd
    if cost is None and sources and all(s.cost_usd is not None for s in sources):
        cost = sum(s.cost_usd for s in sources)  # type: ignore[misc]
    body.append(f"- **Total generation cost:** {'unknown' if cost is None else f'${cost:,.4f}'}")
    if created_date is not None:
        body.append(f"- **Created:** {_when(created_date)}")
    body.append("- **Format:** v4.0 aggregated JSON + JSONL (one training pair per line), plus fine-tuning exports")

    q = stats.quality_summary
    body += [
        "",
        "## Size",
        "",
        *_table(
            ["measure", "value"],
            [
                ["conversations", stats.conversation_count],
                ["training pairs (JSONL lines)", stats.total_training_pairs],
                ["turns", stats.total_turns],
                ["estimated tokens, per-pair JSONL (chars / 4)", f"{stats.estimated_tokens:,}"],
                *(
                    [
                        ["estimated tokens, chat examples train (chars / 4)", f"{export.estimated_tokens_train:,}"],
                        ["estimated tokens, chat examples validation (chars / 4)", f"{export.estimated_tokens_validation:,}"],
                    ]
                    if export is not None
                    else []
                ),
                ["legacy conversations (no scaffolding recorded)", stats.legacy_conversations],
            ],
        ),
        *_token_lengths_section(lengths),
        "",
        "## Quality",
        "",
        "Conversation quality is the mean `quality_score` of its training pairs (0–5).",
        "",
        *_table(
            ["average", "minimum", "maximum", "human reviewed"],
            [[_fmt_q(q.avg_quality_score), _fmt_q(q.min_quality_score), _fmt_q(q.max_quality_score), q.human_reviewed_count]],
        ),
        "",
        "```text",
        *_histogram(stats),
        "```",
        "",
        "## Scaffolding distribution",
        "",
        "Conversations per scaffolding key.",
    ]
    dist = stats.scaffolding_distribution
    for heading, counts in (
        ("Personas", dist.personas),
        ("Emotional arcs", dist.emotional_arcs),
        ("Training topics", dist.training_topics),
    ):
        body += ["", f"### {heading}", ""]
        if counts:
            ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            body += _table(["key", "conversations", "share"], [[k, v, f"{v / max(stats.conversation_count, 1):.1%}"] for k, v in ordered])
        else:
            body.append("(none)")

    body += ["", "## Curation", ""]
    curation: list[list[object]] = []
    if review_rejected_out is not None:
        curation.append(["excluded: rejected in human review", review_rejected_out])
    if min_quality is not None:
        curation.append([f"excluded below quality {min_quality:g}", quality_filtered_out])
    else:
        curation.append(["quality filter", "none"])
    if min_judge_score is not None:
        curation.append([f"excluded below Claude-judge score {min_judge_score:g} or never judged", judge_filtered_out])
    else:
        curation.append(["Claude-judge score filter", "none"])
    if dedup is not None:
        curation += [
            ["conversations checked for duplicates", dedup.checked],
            ["exact duplicates removed", dedup.exact_duplicates],
            [f"near duplicates removed (MinHash Jaccard ≥ {dedup.threshold:g})", dedup.near_duplicates],
            ["kept", dedup.kept],
        ]
    else:
        curation.append(["deduplication", "not run"])
    body += _table(["step", "conversations"], curation)
    if filters_run is not None:
        body += ["", "Filters that ran: " + (", ".join(f"`{f}`" for f in filters_run) if filters_run else "none") + "."]

    body += ["", "## Split", ""]
    if export is not None:
        rows: list[list[object]] = [
            ["train", export.conversations_train, export.pairs_train, export.messages_train, f"`{train_file}`"],
            [
                "validation",
                export.conversations_validation,
                export.pairs_validation,
                export.messages_validation,
                f"`{validation_file}`" if has_validation else "—",
            ],
        ]
        body += _table(["split", "conversations", "training pairs", "chat examples", "file"], rows)
        if export.skipped_without_answer:
            body += ["", f"{export.skipped_without_answer} conversation(s) had no answered turn and produced no chat example."]
        if export.openai_untrained_turns:
            body += ["", f"OpenAI export: {export.openai_untrained_turns} assistant turn(s) below the quality bar carry `weight: 0`."]
    else:
        body.append("No fine-tuning export was written for this version.")
    notes = []
    if validation_fraction is not None:
        notes.append(f"validation fraction {validation_fraction:g}")
    if split_seed is not None:
        notes.append(f"seed {split_seed}")
    body += [
        "",
        "Split by conversation (never one conversation on both sides), stratified by "
        "persona × arc × topic" + (f"; {', '.join(notes)}." if notes else "."),
    ]
    body += _split_groups_section(split_report)

    body += _leakage_section(leakage)

    body += ["", "## Source batches", ""]
    if sources:
        body += _table(
            ["batch id", "name", "model", "generator", "created", "conversations", "cost (USD)"],
            [
                [
                    s.batch_id,
                    s.name,
                    s.model,
                    SIMULATOR_NOTE if s.generator == "simulator" else "Claude",
                    _when(s.created),
                    s.conversations,
                    "—" if s.cost_usd is None else f"{s.cost_usd:.4f}",
                ]
                for s in sources
            ],
        )
    else:
        body.append("(no source batches recorded)")

    body += [
        "",
        "## Usage",
        "",
        "```python",
        "from datasets import load_dataset",
        "ds = load_dataset(\"json\", data_files={"
        + f"\"train\": {_y(train_file)}"
        + (f", \"validation\": {_y(validation_file)}" if has_validation else "")
        + "})",
        "```",
        "",
    ]
    return "\n".join(front + body)


def _split_groups_section(report: SplitReport | None) -> list[str]:
    """Card lines on duplicate groups: conversations sharing an assistant turn stay on one side,
    and what that cost the validation share (`split_report`; nothing when not given)."""
    if report is None:
        return []
    lines = [
        "",
        f"Conversations sharing an identical assistant turn are kept on one side: {report.shared_turn_groups} "
        f"group(s) of {report.grouped_conversations} conversation(s) (largest {report.largest_group}); "
        f"validation {report.validation} of {report.validation_wanted} wanted"
        + (f" ({report.validation_lost} place(s) lost to grouping)." if report.validation_lost else " (nothing lost)."),
    ]
    if report.line():
        lines += ["", f"**{report.line()}**"]
    return lines
