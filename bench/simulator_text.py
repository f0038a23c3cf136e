"""How model-like is the loopback simulator's text? Composes N conversations the way the scale
benchmark plans them (the bundled persona × arc × topic combinations in order, repeated once all
have one), splits them as a training-file build does (grouped, stratified, fraction 0.1, seed 0)
and prints the leakage check's figures on the assistant turns: verbatim validation sentences found
in train, exact duplicate turns, distinct-1/2, template rate and the top template's share.

No server, no database: `content.compose_conversation` is what the simulator answers with, so
these are the figures a build of a simulated batch records.

    .venv/bin/python bench/simulator_text.py --n 2000 [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
from typing import Any

from lora_assets.core.aggregate import MemberSummary
from lora_assets.core.leakage import LeakageStats, LeakageThresholds
from lora_assets.core.prompt import parse_scaffolding_block, scaffolding_block, template_variables, turn_count_for
from lora_assets.core.split import grouped_split, turn_keys
from lora_assets.generation.simulator.content import compose_conversation
from lora_assets.store.scaffolding_files import load_bundle


def measure(n: int, *, validation_fraction: float = 0.1, seed: int = 0) -> dict[str, Any]:
    """The leakage and diversity figures of `n` simulated conversations (see the module docstring)."""
    bundle = load_bundle()
    combos = list(itertools.product(bundle.personas, bundle.emotional_arcs, bundle.training_topics))
    members: list[MemberSummary] = []
    answers: dict[str, list[dict[str, str]]] = {}
    for i in range(n):
        persona, arc, topic = combos[i % len(combos)]
        item = f"item-{i:05d}"
        variables = template_variables(persona, arc, topic, bundle.consultant_profile, turn_count_for(item))
        # What the simulator reads: the prompt's scaffolding block, not the variables themselves.
        conv = compose_conversation(parse_scaffolding_block(scaffolding_block(variables)), item)
        answers[item] = [{"role": t["role"], "content": t["content"]} for t in conv["turns"]]
        members.append(MemberSummary(conversation_id=item, persona_key=persona.persona_key, arc_key=arc.arc_key,
                                     topic_key=topic.topic_key))
    keys = {cid: turn_keys(m["content"] for m in msgs if m["role"] == "assistant") for cid, msgs in answers.items()}
    split = grouped_split(members, validation_fraction=validation_fraction, seed=seed, keys=keys)
    stats = LeakageStats()
    for m in members:
        stats.add(answers[m.conversation_id], split.sides[m.conversation_id], conversation_id=m.conversation_id,
                  cell=(m.persona_key, m.arc_key, m.topic_key))
    report = stats.result()
    blocking, warnings = report.problems(LeakageThresholds())
    d, o = report.diversity, report.overlap
    return {
        "n": n,
        "train": report.train_examples,
        "validation": report.validation_examples,
        "split_groups": split.report.shared_turn_groups,
        "verbatim_sentence_rate": round(o.verbatim_rate, 4),
        "exact_duplicate_turns": o.exact_duplicate_turns,
        "near_duplicate_turn_rate": round(o.near_duplicate_rate, 4),
        "assistant_words": d.assistant_words,
        "distinct_1": round(d.distinct_1, 4),
        "distinct_2": round(d.distinct_2, 4),
        "template_rate": round(d.template_rate, 4),
        "top_template_share": round(d.top_template_count / d.sentences, 4) if d.sentences else 0.0,
        "top_template": d.top_template,
        "blocking": blocking,
        "warnings": warnings,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    figures = measure(args.n)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:>26}: {value}")
    return figures


if __name__ == "__main__":
    main()
