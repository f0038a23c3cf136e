"""`core.minhash` and the vectorised paths of dedup / leakage give exactly what they replace:
datasketch's MinHash signatures and LSH band choice, `BandIndex.candidates` one query at a time,
the regex normaliser and the callback name masker."""

from __future__ import annotations

import random
import re
import unicodedata
import zlib

import numpy as np
import pytest

from lora_assets.core.dedup import BandIndex, normalise_text, shingles_of_words, word_shingles
from lora_assets.core.leakage import _FIRST_WORD, _MONEY, _NAME, _NUMBER, mask_template
from lora_assets.core.minhash import MinHasher, crc32_hashes, optimal_bands


def _shingle_sets(rng: random.Random, count: int) -> list[set[bytes]]:
    words = [f"w{i}" for i in range(40)]
    return [{" ".join(rng.choices(words, k=3)).encode() for _ in range(rng.randint(0, 300))} for _ in range(count)]


def _sha1_hashes(shingles: object) -> np.ndarray:
    """datasketch's default input hash (`sha1_hash32`: SHA-1's first 4 bytes, little endian),
    vectorised: the scheme does not depend on the hash."""
    import hashlib

    return np.array([int.from_bytes(hashlib.sha1(s).digest()[:4], "little") for s in shingles],  # type: ignore[attr-defined]
                    dtype=np.uint32)


@pytest.mark.parametrize(("num_perm", "seed", "hashfunc", "ours"), [
    (128, 1, zlib.crc32, crc32_hashes), (64, 1, None, _sha1_hashes), (32, 7, zlib.crc32, crc32_hashes)])
def test_signatures_are_datasketch_hashvalues(num_perm: int, seed: int, hashfunc: object, ours: object) -> None:
    from datasketch import MinHash

    hasher = MinHasher(num_perm, seed, ours)  # type: ignore[arg-type]
    sets = _shingle_sets(random.Random(num_perm), 120)
    for shingles in sets:
        m = MinHash(num_perm=num_perm, seed=seed, **({} if hashfunc is None else {"hashfunc": hashfunc}))
        if shingles:
            m.update_batch(sorted(shingles))
        assert np.array_equal(hasher.signature(shingles), m.hashvalues.astype(np.uint32))
    # several sets in one pass, empty ones included
    flat: list[bytes] = []
    bounds = [0]
    for shingles in sets[:30]:
        flat.extend(shingles)
        bounds.append(len(flat))
    hashes = ours(flat) if flat else np.empty(0, np.uint32)  # type: ignore[operator]
    together = hasher.signatures_of_hashes(hashes, bounds)
    assert all(np.array_equal(row, hasher.signature(s)) for row, s in zip(together, sets[:30], strict=True))


def test_band_choice_is_datasketchs() -> None:
    from datasketch.lsh import _optimal_param

    for num_perm in (16, 64, 128):
        for threshold in np.arange(0.05, 0.951, 0.05):
            for weights in ((0.5, 0.5), (0.2, 0.8)):
                assert optimal_bands(float(threshold), num_perm, *weights) == _optimal_param(float(threshold), num_perm, *weights)


def test_band_index_pairs_are_candidates_of_each_row() -> None:
    rng = np.random.default_rng(3)
    index = BandIndex(16, 4, 64)
    base = rng.integers(0, 50, size=(40, 64), dtype=np.uint32)
    kept = base[rng.integers(0, 40, size=600)].copy()
    kept[rng.random(kept.shape) < 0.3] = 99  # partial overlaps: some bands agree, some do not
    for signature in kept:
        index.insert(signature)
    queries = base[rng.integers(0, 40, size=300)].copy()
    queries[rng.random(queries.shape) < 0.3] = 98
    rows, candidates = index.pairs(queries)
    got: dict[int, list[int]] = {}
    for r, c in zip(rows.tolist(), candidates.tolist(), strict=True):
        got.setdefault(r, []).append(c)
    assert sum(map(len, got.values())) > 100
    for r, q in enumerate(queries):
        assert got.get(r, []) == index.candidates(q)


def test_band_index_insert_many_is_inserting_each_row() -> None:
    rng = np.random.default_rng(5)
    base = rng.integers(0, 50, size=(40, 64), dtype=np.uint32)
    kept = base[rng.integers(0, 40, size=700)].copy()
    kept[rng.random(kept.shape) < 0.3] = 99
    one_by_one, many = BandIndex(16, 4, 64), BandIndex(16, 4, 64)
    for signature in kept:
        one_by_one.insert(signature)
    for signature in kept[:100]:  # some recent rows first, then more than the signatures held
        many.insert(signature)
    many.insert_many(kept[100:600])
    for signature in kept[600:]:
        many.insert(signature)
    queries = base[rng.integers(0, 40, size=200)].copy()
    queries[rng.random(queries.shape) < 0.3] = 98
    assert all(np.array_equal(a, b) for a, b in zip(one_by_one.pairs(queries), many.pairs(queries), strict=True))
    assert all(one_by_one.candidates(q) == many.candidates(q) for q in queries)
    assert sum(map(len, map(one_by_one.candidates, queries))) > 100


def _old_normalise(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


def test_normalise_text_is_the_regex_one_on_every_whitespace() -> None:
    spaces = [chr(c) for c in range(0x3100) if chr(c).isspace() or re.match(r"\s", chr(c))]
    rng = random.Random(1)
    for _ in range(500):
        text = "".join(rng.choice([*spaces, "a", "B", "ß", "ﬁ", "1", ".", " "]) for _ in range(rng.randint(0, 30)))
        assert normalise_text(text) == _old_normalise(text)
    assert word_shingles("a b c d", 3) == shingles_of_words(["a", "b", "c", "d"], 3) == {"a b c", "b c d"}


def _old_mask(sentence: str) -> str:
    masked = _MONEY.sub("<MONEY>", sentence.strip())
    masked = _NUMBER.sub("<NUM>", masked)
    first = _FIRST_WORD.match(masked)
    first_end = first.end() if first else 0
    if first and re.match(r"[A-Z][a-z]+(?:[-'][A-Z]?[a-z]+)*,", masked[first.end() - 1 :]):
        first_end = 0
    masked = _NAME.sub(lambda m: m.group(0) if m.start() < first_end else "<NAME>", masked)
    return _old_normalise(masked)


def test_mask_template_is_the_callback_one() -> None:
    fixed = ["David, your $1,200 a month is fine.", "Let us look at Sarah's 401k.", "5Smith owes 3 dollars",
             "  'Mary-Jane O'Neil, 12% is 3rd.", "I think Bob and Alice agree.", "Yes, Tom.", "...", "", "Consider",
             "Well, $5k or 5 thousand USD?", "Mc Donald's 2nd plan", "«Émile», hello", "X, y", "Ab,", "A1 Bc"]
    rng = random.Random(2)
    pieces = ["David", "Let", ",", " ", "$", "1,000", "5", "k", "%", "Mary-Jane", "O'Neil", "the", "I", "3rd", ".",
              "'", "(", "USD", "dollars", "Émile", "x2", "twenty"]
    generated = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 12))) for _ in range(3000)]
    for sentence in fixed + generated:
        assert mask_template(sentence) == _old_mask(sentence), sentence


def test_masking_patterns_are_their_readable_forms() -> None:
    """`_MONEY`, `_NUMBER`, `_NAME` and `_SENTENCE_END` start with a character class (fast to scan
    for) where their readable forms start with `\\b` or a lookbehind: they substitute (split) the
    same text. The sentence word count's possessive pattern agrees with counting `\\w+` runs."""
    readable = {
        _MONEY: re.compile(r"(?:[$€£]\s?\d[\d,]*(?:\.\d+)?(?:\s?(?:[kKmMbB]|thousand|million|billion)\b)?)"
                           r"|(?:\b\d[\d,]*(?:\.\d+)?\s?(?:dollars|USD|EUR|GBP)\b)"),
        _NUMBER: re.compile(r"\b\d[\d,]*(?:\.\d+)?(?:\s?%|\s?percent\b|st\b|nd\b|rd\b|th\b|[kK]\b)?"),
        _NAME: re.compile(r"\b[A-Z][a-z]+(?:[-'][A-Z]?[a-z]+)*\b"),
    }
    from lora_assets.core.leakage import _SENTENCE_END, LeakageStats

    readable_end = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
    word = re.compile(r"\w+")
    rng = random.Random(5)
    ends = ["a", "B.", "!", "?", " ", "\n", "\n\n", '"', "'", ")", "]", "\t", ". ", ".\n", "\u2028", "x"]
    for _ in range(20_000):
        text = "".join(rng.choice(ends) for _ in range(rng.randint(0, 14)))
        assert _SENTENCE_END.split(text) == readable_end.split(text), text
        for n in (0, 1, 4):
            assert (LeakageStats(min_sentence_words=n)._enough_words.match(text) is not None) == (
                len(word.findall(text)) >= n), (n, text)
    pieces = ["$", "€", "£", " ", "1", "23", ",", ".", "5", "k", "K", "m", "thousand", "million", "dollars", "USD",
              "a", "x1", "_", "\n", "%", "percent", "st", "th", "\x00", "Ab", "É", "Mary-Jane", "O'Neil", "²", "-", "'"]
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        for fast, slow in readable.items():
            assert fast.sub("<X>", text) == slow.sub("<X>", text), (fast.pattern, text)


def test_batched_masking_and_normalising_are_the_one_text_at_a_time_ones() -> None:
    """`mask_templates` / `normalise_texts` work over a member's sentences joined by U+0000: each
    text comes out as `mask_template` / `normalise_text` make it alone, whatever its neighbours
    (combining marks, compatibility characters, whitespace and digits at the edges, the
    separator itself inside a text)."""
    from lora_assets.core.dedup import normalise_texts
    from lora_assets.core.leakage import mask_templates

    rng = random.Random(3)
    pieces = ["David", "Let", ",", " ", "$", "1,000", "5", "k", "%", "Mary-Jane", "O'Neil", "the", "I", "3rd", ".",
              "'", "(", "USD", "dollars", "Émile", "x2", "twenty", "\u0301", "ﬁ", "²", "\u00a0", "ß", "\n", "\t",
              "K", "thousand", "\u2028", "Ⅻ", "ｆｕｌｌ", "İ", "Å", "Tom-Smith", "Ab-cD", "Mc", "Yes", "A"]
    for _ in range(3000):
        texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 10))) for _ in range(rng.randint(0, 8))]
        assert mask_templates(texts) == [mask_template(t) for t in texts], texts
        assert normalise_texts(texts) == [normalise_text(t) for t in texts], texts
    with_separator = ["a\x00b", "Tom, $5"]
    assert mask_templates(with_separator) == [mask_template(t) for t in with_separator]
    assert normalise_texts(with_separator) == [normalise_text(t) for t in with_separator]
    assert mask_templates([]) == normalise_texts([]) == []


def test_target_shingles_are_word_shingles() -> None:
    """`TargetTexts` shingles all its words once; each target's own are sliced out of them."""
    from lora_assets.core.dedup import TargetTexts

    rng = random.Random(4)
    for _ in range(300):
        words = [[f"w{rng.randrange(9)}" for _ in range(rng.randint(0, 7))] for _ in range(rng.randint(1, 5))]
        targets = TargetTexts(tuple(" ".join(w) for w in words), tuple(" ".join(w) for w in words), tuple(words))
        size = rng.randint(1, 4)
        assert set(targets.shingles(size)) == {s.encode() for s in shingles_of_words(targets.all_words(), size)} or (
            len(targets.all_words()) <= size)
        for turn, own in enumerate(words):
            assert set(targets.turn_shingles(turn, size)) == {s.encode() for s in shingles_of_words(own, size)}


def test_a_build_process_imports_neither_datasketch_nor_scipy() -> None:
    """scipy (behind datasketch's LSH module) cost ≈ 0.7 s in every process that built a file."""
    from lora_assets_tests.core.factories import modules_loaded_by

    code = ("from lora_assets.core.dedup import Deduplicator; from lora_assets.core.leakage import "
            "LeakageStats; import lora_assets.training_build; d = Deduplicator(); s = LeakageStats(); "
            "s.add([{'role': 'assistant', 'content': 'one two three four five six seven eight nine'}], 'train', "
            "conversation_id='c'); s.result()")
    assert modules_loaded_by(code, ("scipy", "datasketch")) == []


def test_build_turn_keys_are_split_turn_keys() -> None:
    """The build computes the split's turn keys from dedup's normalised answers."""
    from lora_assets.core.dedup import TargetTexts
    from lora_assets.core.split import turn_keys
    from lora_assets.training_build import _turn_keys
    from lora_assets_tests.core.test_aggregate import make_conversation

    answers = ["Short one.", "  Eight words  are\tenough to count as a TURN here. ", "ünïcödé " * 9, "a b c d e f g h"]
    conv = make_conversation("k", pairs=4, answers=answers, unanswered_last=False)
    assert _turn_keys(TargetTexts.of(conv)) == turn_keys(p.target_response for p in conv.training_pairs)
    assert len(_turn_keys(TargetTexts.of(conv))) == 3
