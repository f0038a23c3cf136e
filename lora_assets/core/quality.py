"""Quality: a transparent heuristic score for one advisor response (and one conversation).

Nothing here is a model or a black box: every point comes from a word list or a count you can
read below, so a reviewer can explain any score. The scores triage data (seed examples, the
quality summary of a training file); they do not replace human review.

Every criterion is a number from 1.0 to 5.0, rounded to one decimal. "Response" is the target
(advisor) response; "opening" is its first two sentences.

**Empathy** — does the advisor meet the feeling before the facts?
    1.0
    + 1.5 an acknowledgement phrase ("I hear", "that makes sense", "it's completely normal", …)
          in the opening; + 0.75 if only later (feelings after advice count less)
    + 1.0 names the client's emotion: the turn's primary/secondary emotion or a feeling word the
          client used (matched on word stems, so "anxious" matches "anxiety")
    + 0.5 normalises ("many people", "you're not alone", "very common", …)
    + 0.5 speaks to the client ("you"/"your" at least twice)
    + 0.5 invites the client in (a question)
    − 1.0 per dismissive phrase ("calm down", "don't worry", "no big deal", …), at most − 2.0

**Clarity** — can the client follow and act on it?
    3.0
    + 0.5 mean sentence length ≤ 20 words; − 0.5 if > 25; − 1.0 if > 32
    + 0.5 concrete numbers (digits, $, %)
    + 0.5 steps ("first", "next", "step", numbered or bulleted lines)
    + 0.25 explains a term ("which means", "in other words", "think of it as", …)
    − 0.5 per jargon term beyond the first two (a "jargon wall"), at most − 1.5
    − 1.0 fewer than 15 words (too curt to teach); − 0.5 more than 350 words (overwhelming)

**Appropriateness** — safe, non-judgmental, properly hedged advice?
    4.0
    − 1.5 per guarantee ("guaranteed", "risk-free", "can't lose", …), at most − 3.0
    − 1.5 a directive to trade a specific security ("you should buy …", an all-caps ticker after
          buy/sell)
    − 1.0 per shaming phrase ("irresponsible", "you should have", "bad with money", …), at most − 2.0
    + 0.5 one caveat ("depends on", "your situation", "tax professional", …); + 1.0 for two or more

**Brand voice** — does it sound like *this* consultant?
    With techniques: 1.5 + 3.5 × (share of the consultant's `techniques` the response shows)
    Without techniques: 3.0
    − 1.0 per item of the consultant's `avoid` list the response does
    Each technique / avoid item is matched by theme (emotions, metaphors, numbers, permission,
    celebration, jargon, judgment, overwhelm, platitudes, assumptions); an item with no known
    theme counts as shown when most of its content words appear in the response.

**Overall** = 0.30 × empathy + 0.25 × clarity + 0.25 × appropriateness + 0.20 × brand voice,
rounded to one decimal (the seed's example 4 / 3.5 / 4 / 3.5 gives 3.8). A pair without a
target response has nothing to learn from and scores 1.0 everywhere.
A conversation's quality (the mean over its answered pairs) is `core.aggregate.conversation_quality`.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from lora_assets.schemas import ConsultantProfile, EmotionalContext
from lora_assets.schemas.training import QualityCriteria

#: Weights of `overall`; they sum to 1.
WEIGHTS: dict[str, float] = {
    "empathy_score": 0.30,
    "clarity_score": 0.25,
    "appropriateness_score": 0.25,
    "brand_voice_alignment": 0.20,
}

ACKNOWLEDGEMENTS: tuple[str, ...] = (
    "i hear",
    "i can hear",
    "i can tell",
    "i understand",
    "sounds like",
    "it sounds",
    "makes sense",
    "understandable",
    "it's natural",
    "it is natural",
    "it's normal",
    "it is normal",
    "completely normal",
    "thank you for sharing",
    "thanks for sharing",
    "thank you for telling",
    "i appreciate you",
    "that's a lot",
    "that is a lot",
    "valid",
    "of course you feel",
    "no wonder",
)
NORMALISING: tuple[str, ...] = (
    "many people",
    "lots of people",
    "so many people",
    "not alone",
    "very common",
    "so common",
    "really common",
    "most people",
    "you're not the only",
    "happens to",
)
DISMISSIVE: tuple[str, ...] = (
    "calm down",
    "don't worry",
    "do not worry",
    "no big deal",
    "stop worrying",
    "it's easy",
    "it is easy",
    "obviously",
    "just relax",
    "get over",
)
FEELING_STEMS: tuple[str, ...] = (
    "anxi",
    "worr",
    "fear",
    "afraid",
    "scar",
    "nervous",
    "stress",
    "overwhelm",
    "shame",
    "asham",
    "embarrass",
    "guilt",
    "frustrat",
    "angr",
    "confus",
    "lost",
    "uncertain",
    "unsure",
    "hopeless",
    "sad",
    "excit",
    "hope",
    "relie",
    "confiden",
    "proud",
    "curio",
    "panic",
    "dread",
)
EXPLAINERS: tuple[str, ...] = (
    "which means",
    "this means",
    "that means",
    "in other words",
    "think of it as",
    "think of it like",
    "in plain terms",
    "simply put",
    "put simply",
    "imagine",
    "picture",
    "like a",
)
JARGON: tuple[str, ...] = (
    "amortization",
    "amortisation",
    "basis points",
    "liquidity",
    "fiduciary",
    "asset allocation",
    "marginal rate",
    "marginal tax",
    "capital gains",
    "cost basis",
    "expense ratio",
    "standard deviation",
    "sharpe",
    "beta",
    "alpha",
    "duration risk",
    "yield curve",
    "rebalancing",
    "tax-loss harvesting",
    "roth conversion",
    "backdoor roth",
    "rmd",
    "required minimum distribution",
    "annuitization",
    "escrow",
    "arbitrage",
    "derivative",
    "equities",
    "fixed income",
    "dollar-cost averaging",
    "irrevocable trust",
    "revocable trust",
    "probate",
    "step-up in basis",
)
GUARANTEES: tuple[str, ...] = (
    "guarantee",
    "guaranteed",
    "risk-free",
    "risk free",
    "no risk",
    "can't lose",
    "cannot lose",
    "can't go wrong",
    "sure thing",
    "100% safe",
    "will definitely",
    "definitely will",
    "always goes up",
    "never lose",
)
SHAMING: tuple[str, ...] = (
    "irresponsible",
    "foolish",
    "stupid",
    "you should have",
    "you should've",
    "should have known",
    "what were you thinking",
    "bad with money",
    "careless",
    "your fault",
    "reckless",
    "lazy",
    "ridiculous",
)
CAVEATS: tuple[str, ...] = (
    "depends on",
    "it depends",
    "your situation",
    "your specific",
    "every situation",
    "trade-off",
    "tradeoff",
    "consider",
    "might",
    "may want",
    "tax professional",
    "tax advisor",
    "accountant",
    "attorney",
    "estate lawyer",
    "no guarantee",
    "not guaranteed",
    "past performance",
    "options",
    "we can look at",
    "let's look at",
)
PERMISSION: tuple[str, ...] = (
    "would it help",
    "would you like",
    "would it be okay",
    "is it okay if",
    "is it ok if",
    "may i",
    "can i share",
    "can i walk",
    "do you mind if",
    "would you be open",
    "want me to",
)
CELEBRATION: tuple[str, ...] = (
    "great question",
    "well done",
    "congratulations",
    "that's a win",
    "big step",
    "real progress",
    "proud of",
    "you've already",
    "you have already",
    "good news",
    "already doing",
    "celebrate",
)
METAPHOR: tuple[str, ...] = (
    "like a",
    "think of it as",
    "think of it like",
    "imagine",
    "picture",
    "it's as if",
    "similar to",
    "the way a",
)
PLATITUDES: tuple[str, ...] = (
    "everything will be fine",
    "everything will be okay",
    "it'll all work out",
    "it will all work out",
    "stay positive",
    "don't worry",
    "it is what it is",
    "money isn't everything",
)
ASSUMPTIONS: tuple[str, ...] = (
    "as you know",
    "obviously",
    "of course you know",
    "everyone knows",
    "as you probably know",
)

_SECURITY_DIRECTIVE = re.compile(
    r"\byou (?:should|must|need to) "
    r"(?:buy|sell|short|invest (?:all|everything) in|put (?:all|everything) (?:in|into))\b"
    r"|\b(?:buy|sell) (?:shares of )?[A-Z]{2,5}\b"
)
#: Every match of `_SECURITY_DIRECTIVE` holds one of these: a text without any is not searched.
_SECURITY_CUES = ("you should ", "you must ", "you need to ", "buy ", "sell ")
_SECURITY_WORDS = frozenset({"should", "must", "need", "buy", "sell"})
_NUMBER = re.compile(r"\d|\$|%")
_STEP_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+", re.M)
_STEP_WORDS = re.compile(r"\b(?:first|second|third|next|then|finally|step)\b", re.I)
_STEP_WORD_SET = frozenset({"first", "second", "third", "next", "then", "finally", "step"})
# Sentence breaks: whitespace after . ! or ?, or a run of newlines; i.e. `(?<=[.!?])\s+|\n+`,
# written to start with `\s` so the regex engine skips to whitespace instead of trying the
# lookbehind at every character (same splits, about twice as fast).
_SENTENCE_SPLIT = re.compile(r"\s(?:(?<=[.!?]\s)\s*|(?<=\n)\n*)")
_WORD = re.compile(r"[\w'’-]+", re.U)


@functools.lru_cache(maxsize=256)
def _round1(value: float) -> float:
    """Round half-up to one decimal (Python's round() is half-even and float-fragile). Scores take
    few distinct values, so the Decimal arithmetic runs once per value."""
    return float(Decimal(str(value)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def _clamp(value: float, low: float = 1.0, high: float = 5.0) -> float:
    return _round1(min(high, max(low, value)))


# Scoring runs on every pair of every batch, and one response meets the same tests several times
# (an acknowledgement counts for empathy, for a brand-voice technique and as a skill): what is
# derived from a text is kept for the few texts scored last. Texts are hashed once per object.
_PER_TEXT = 64


@functools.lru_cache(maxsize=_PER_TEXT)
def _norm(text: str) -> str:
    # Curly apostrophes are common in model output; match them like straight ones.
    return text.lower().replace("’", "'")


_TOKEN = re.compile(r"\w+")

# On ASCII text `\w` is exactly [A-Za-z0-9_]. Translating with a table that keeps those
# characters (and "'", "-") and blanks every other one, then `str.split()`, yields the same words
# as the regexes `\w+` and `[\w'’-]+` several times faster (most model output is ASCII); other
# text takes the regexes. The table is a 256-byte one for `bytes.translate`, several times faster
# again than `str.translate` with a dict.
_ASCII_WORD_CHARS = frozenset(string.ascii_letters + string.digits + "_")
_WORD_BYTES = bytes(b if chr(b) in _ASCII_WORD_CHARS or chr(b) in "'-" else ord(" ") for b in range(256))


@functools.lru_cache(maxsize=_PER_TEXT)
def _ascii_split(text: str) -> tuple[tuple[str, ...], int]:
    """The `\\w+` runs of ASCII `text`, and how many `[\\w'’-]+` runs it has: one translate serves
    both (the `\\w+` runs are the others cut at their apostrophes and hyphens)."""
    spaced = text.encode("ascii").translate(_WORD_BYTES).decode("ascii")
    return tuple(spaced.replace("'", " ").replace("-", " ").split()), len(spaced.split())


@functools.lru_cache(maxsize=_PER_TEXT)
def _token_list(text: str) -> tuple[str, ...]:
    """The whole words (`\\w+` runs) of `text`, in order."""
    if text.isascii():
        return _ascii_split(text)[0]
    return tuple(_TOKEN.findall(text))


@functools.lru_cache(maxsize=_PER_TEXT)
def _tokens(text: str) -> frozenset[str]:
    """The whole words (`\\w+` runs) of `text`."""
    return frozenset(_token_list(text))


def _is_word_char(char: str) -> bool:
    """`\\w` of a str regex: `str.isalnum()` or "_"."""
    return char.isalnum() or char == "_"


def _occurs(phrase: str, text: str) -> bool:
    """`(?<!\\w)phrase(?!\\w)` matches `text`: an occurrence of `phrase` with no word character
    either side. (`str.find` jumps to the few occurrences; the regex, starting with a lookbehind,
    has no literal prefix to search for and was tried at every position.)"""
    at = text.find(phrase)
    while at != -1:
        end = at + len(phrase)
        if (at == 0 or not _is_word_char(text[at - 1])) and (end == len(text) or not _is_word_char(text[end])):
            return True
        at = text.find(phrase, at + 1)
    return False


class _PhraseIndex:
    """Every phrase of the word lists above, indexed by its words. A phrase can only occur
    (`(?<!\\w)phrase(?!\\w)`) where each of its `\\w+` runs is a whole word of the text (the
    phrase's own other characters, or the lookarounds, bound every run), so set operations on the
    text's words (`_tokens`) leave the few phrases worth matching: each phrase is keyed by its
    longest word and kept only if all its words are in the text; a one-word phrase kept is an
    occurrence, the others are looked for (`_occurs`, in `_found`). Each phrase is matched once
    per text whatever the lists it is in: the same answers as trying every phrase of every list."""

    def __init__(self, lists: tuple[tuple[str, ...], ...]) -> None:
        phrases = list(dict.fromkeys(p for phrase_list in lists for p in phrase_list))
        # longest word → [(phrase, its words, whether it is that one word alone)]
        self.by_key: dict[str, list[tuple[str, frozenset[str], bool]]] = {}
        self.unindexed: list[str] = []  # phrases without any word character: always tried
        for phrase in phrases:
            words = _TOKEN.findall(phrase)
            if not words:
                self.unindexed.append(phrase)
                continue
            key = max(words, key=len)
            self.by_key.setdefault(key, []).append((phrase, frozenset(words), phrase == key))
        self.keys = frozenset(self.by_key)
        self.members = {id(pl): frozenset(pl) for pl in lists}  # id of a list → its phrases
        # phrase → the positions in `lists` of the lists holding it (once per entry of each)
        self.owners: dict[str, tuple[int, ...]] = {
            p: tuple(i for i, pl in enumerate(lists) for entry in pl if entry == p) for p in phrases}
        self.ack = frozenset(ACKNOWLEDGEMENTS)
        self.ack_keys = frozenset(key for key, entries in self.by_key.items() if any(p in self.ack for p, _, _ in entries))


def _lists() -> tuple[tuple[str, ...], ...]:
    return (ACKNOWLEDGEMENTS, NORMALISING, DISMISSIVE, EXPLAINERS, JARGON, GUARANTEES, SHAMING, CAVEATS,
            PERMISSION, CELEBRATION, METAPHOR, PLATITUDES, ASSUMPTIONS)


_INDEX: _PhraseIndex | None = None


def _index() -> _PhraseIndex:
    global _INDEX
    if _INDEX is None:
        _INDEX = _PhraseIndex(_lists())
    return _INDEX


@functools.lru_cache(maxsize=_PER_TEXT)
def _found(text: str) -> frozenset[str]:
    """The phrases of the word lists that occur in `text`."""
    index = _index()
    words = _tokens(text)
    hits = {phrase for key in index.keys.intersection(words) for phrase, needs, alone in index.by_key[key]
            if alone or (needs <= words and _occurs(phrase, text))}
    hits.update(p for p in index.unindexed if _occurs(p, text))
    return frozenset(hits)


def _has(text: str, phrases: Iterable[str]) -> bool:
    # The lists above are module constants, alive as long as the index: their ids cannot be reused.
    members = _index().members.get(id(phrases))
    if members is not None:
        return not _found(text).isdisjoint(members)
    return any(_occurs(p, text) for p in phrases)


@functools.lru_cache(maxsize=_PER_TEXT)
def _sentence_tuple(text: str) -> tuple[str, ...]:
    if text.isascii() and text.isprintable():
        # The only whitespace is " " (no newline, tab or other control character): the breaks are
        # the spaces after . ! ?, and the spaces after the first go with the strip below. Marking
        # them with str.replace (NUL, never in a printable text) is about twice as fast as the regex.
        parts = text.replace(". ", ".\0").replace("! ", "!\0").replace("? ", "?\0").split("\0")
    else:
        parts = _SENTENCE_SPLIT.split(text)
    return tuple([s for s in map(str.strip, parts) if _WORD.search(s)])


@functools.lru_cache(maxsize=_PER_TEXT)
def _opening(response: str) -> str:
    """The first two sentences of the normalised `response`, joined by a space."""
    if response.isascii():
        # Lowercasing ASCII moves no sentence boundary: the sentences of the response (which
        # clarity counts) lowercased are those of its normalised text, split once instead of twice.
        return " ".join(_sentence_tuple(response)[:2]).lower()
    return " ".join(_sentence_tuple(_norm(response))[:2])


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


@functools.lru_cache(maxsize=_PER_TEXT)
def _word_count(text: str) -> int:
    """len(_words(text))."""
    if text.isascii():
        return _ascii_split(text)[1]
    return len(_WORD.findall(text))


def _has_step_line(response: str) -> bool:
    # `^` (multiline) matches only at the start and after a newline: a text of one line is
    # tried at its start only, not at every character.
    if "\n" not in response:
        return _STEP_LINE.match(response) is not None
    return _STEP_LINE.search(response) is not None


@functools.lru_cache(maxsize=_PER_TEXT)
def _has_steps(response: str) -> bool:
    if _has_step_line(response):
        return True
    if response.isascii():
        # On ASCII, the case-insensitive `\bword\b` is a whole word of the lowercased text.
        return not _STEP_WORD_SET.isdisjoint(_tokens(_norm(response)))
    return _STEP_WORDS.search(response) is not None


#: What `_NUMBER` matches in ASCII text (`\d` is [0-9] there).
_ASCII_NUMBER_CHARS = tuple("0123456789$%")


@functools.lru_cache(maxsize=_PER_TEXT)
def _has_number(response: str) -> bool:
    if response.isascii():
        # A substring test per character is a C memchr; the regex tries every position in Python's
        # regex engine, about ten times slower on a typical response.
        for char in _ASCII_NUMBER_CHARS:
            if char in response:
                return True
        return False
    return bool(_NUMBER.search(response))


def _security_directive(text: str) -> bool:
    return any(cue in text for cue in _SECURITY_CUES) and _SECURITY_DIRECTIVE.search(text) is not None


def _directs_a_trade(response: str, text: str) -> bool:
    """`_SECURITY_DIRECTIVE` matches the response or its normalised text. Every match holds one of
    `_SECURITY_WORDS` as a whole word, and on ASCII a word of the response is a word of the
    lowercased text, lowercased: a text without any of them is not searched at all."""
    if response.isascii() and _SECURITY_WORDS.isdisjoint(_tokens(text)):
        return False
    return _security_directive(response) or _security_directive(text)


def _starts_a_word(stem: str, text: str) -> bool:
    """`(?<!\\w)stem` matches `text`: some occurrence of `stem` follows no word character. (The
    regex, having no literal prefix, is tried at every position; `str.find` jumps to the few
    occurrences. A word character of a str pattern is `str.isalnum()` or "_".)"""
    at = text.find(stem)
    while at != -1:
        if at == 0 or not (text[at - 1].isalnum() or text[at - 1] == "_"):
            return True
        at = text.find(stem, at + 1)
    return False


@functools.lru_cache(maxsize=256)
def _feeling_stems(user: str) -> frozenset[str]:
    """The `FEELING_STEMS` the (normalised) client text uses at the start of a word."""
    # (`stem in user` first: most stems are absent, and the substring test is a cheap C filter.)
    return frozenset(stem for stem in FEELING_STEMS if stem in user and _starts_a_word(stem, user))


@functools.lru_cache(maxsize=256)
def _stems_of_emotions(emotions: tuple[str, ...]) -> frozenset[str]:
    """Stems of emotion labels (a turn's primary and secondary emotions)."""
    stems: set[str] = set()
    for emotion in emotions:
        for word in _words(_norm(emotion)):
            if len(word) >= 4:
                # Dropping up to 3 letters (never below 4) tolerates inflection:
                # "anxious" ~ "anxiety", "overwhelmed" ~ "overwhelming", "confusion" ~ "confused".
                stems.add(word[: max(4, len(word) - 3)])
    return frozenset(stems)


def _mentions_stem(text: str, stems: Iterable[str]) -> bool:
    """Some stem occurs at the start of a word of `text` (`(?<!\\w)stem`)."""
    return any(stem in text and _starts_a_word(stem, text) for stem in stems)


def _names_a_feeling(text: str, user_input: str, emotional_context: EmotionalContext | None) -> bool:
    """`text` names a feeling the client expressed: a stem of the turn's emotions or of a feeling
    word the client used. The emotions come first: they are few and usually named, so the client's
    words are searched for feeling words only when they are not."""
    if emotional_context is not None and _mentions_stem(
        text, _stems_of_emotions((emotional_context.primary_emotion, *emotional_context.secondary_emotions))
    ):
        return True
    return _mentions_stem(text, _feeling_stems(_norm(user_input)))


def _you_count(text: str) -> int:
    """Matches of `\\byour?\\b`: the whole words "you" and "your"."""
    words = _token_list(text)
    return words.count("you") + words.count("your")


def _acknowledges(opening: str, text: str) -> bool:
    """An acknowledgement phrase occurs in `opening`, the first sentences of `text`. The opening is
    a text of its own (joined sentences), but its words are words of `text`: only phrases whose
    words all occur in `text` are tried."""
    words = _tokens(text)
    index = _index()
    return any(_occurs(phrase, opening)
               for key in index.ack_keys.intersection(words) for phrase, needs, _ in index.by_key[key]
               if phrase in index.ack and needs <= words)


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field through object.__setattr__
class _Response:
    """What the criteria and the skills read of one response, derived once: the four scores and
    `detect_skills` ask many of the same questions of it (an acknowledgement counts for empathy,
    for a brand-voice technique and as a skill). Phrase counts are of the word lists' entries."""

    response: str
    text: str  # normalised
    acknowledgements: int
    acknowledges_early: bool  # an acknowledgement in the opening
    normalising: int
    dismissive: int
    explainers: int
    jargon: int
    guarantees: int
    shaming: int
    caveats: int
    permission: int
    celebration: int
    metaphor: int
    platitudes: int
    assumptions: int
    addresses_client: bool  # "you"/"your" at least twice
    question: bool
    because: bool
    words: int
    sentences: int
    number: bool
    steps: bool
    security_directive: bool


@functools.lru_cache(maxsize=_PER_TEXT)
def _response(response: str) -> _Response:
    text = _norm(response)
    # Each list's count from the phrases found once: `_count` of every list.
    counts = [0] * len(_lists())
    owners = _index().owners
    for phrase in _found(text):
        for position in owners[phrase]:
            counts[position] += 1
    (acknowledgements, normalising, dismissive, explainers, jargon, guarantees, shaming, caveats, permission,
     celebration, metaphor, platitudes, assumptions) = counts
    return _Response(
        response=response,
        text=text,
        acknowledgements=acknowledgements,
        acknowledges_early=_acknowledges(_opening(response), text),
        normalising=normalising,
        dismissive=dismissive,
        explainers=explainers,
        jargon=jargon,
        guarantees=guarantees,
        shaming=shaming,
        caveats=caveats,
        permission=permission,
        celebration=celebration,
        metaphor=metaphor,
        platitudes=platitudes,
        assumptions=assumptions,
        addresses_client=_you_count(text) >= 2,
        question="?" in text,
        because=" because " in text,
        words=_word_count(text),
        sentences=len(_sentence_tuple(response)),
        number=_has_number(response),
        steps=_has_steps(response),
        security_directive=_directs_a_trade(response, text),
    )


def empathy_score(response: str, user_input: str, emotional_context: EmotionalContext | None) -> float:
    """Acknowledgement before advice, naming the client's feeling, normalising, inviting."""
    r = _response(response)
    score = 1.0
    if r.acknowledges_early:
        score += 1.5
    elif r.acknowledgements:
        score += 0.75
    if _names_a_feeling(r.text, user_input, emotional_context):
        score += 1.0
    if r.normalising:
        score += 0.5
    if r.addresses_client:
        score += 0.5
    if r.question:
        score += 0.5
    score -= min(2.0, 1.0 * r.dismissive)
    return _clamp(score)


def jargon_terms(text: str) -> list[str]:
    """The jargon terms of `JARGON` that occur in `text`."""
    found = _found(_norm(text))
    return [term for term in JARGON if term in found]


def clarity_score(response: str) -> float:
    """Short sentences, concrete numbers and steps, explained terms; no jargon walls."""
    r = _response(response)
    words = r.words
    score = 3.0
    if r.sentences:
        mean_length = words / r.sentences
        if mean_length <= 20:
            score += 0.5
        elif mean_length > 32:
            score -= 1.0
        elif mean_length > 25:
            score -= 0.5
    if r.number:
        score += 0.5
    if r.steps:
        score += 0.5
    if r.explainers:
        score += 0.25
    score -= min(1.5, 0.5 * max(0, r.jargon - 2))
    if words < 15:
        score -= 1.0
    elif words > 350:
        score -= 0.5
    return _clamp(score)


def appropriateness_score(response: str) -> float:
    """No guarantees, no security picks, no shaming; caveats where advice depends on the person."""
    r = _response(response)
    score = 4.0
    score -= min(3.0, 1.5 * r.guarantees)
    if r.security_directive:
        score -= 1.5
    score -= min(2.0, 1.0 * r.shaming)
    if r.caveats >= 2:
        score += 1.0
    elif r.caveats == 1:
        score += 0.5
    return _clamp(score)


# Themes a consultant's technique / avoid text can name, each with how to detect it in a response.
_Detector = Callable[[_Response], bool]

_TECHNIQUE_THEMES: tuple[tuple[tuple[str, ...], _Detector], ...] = (
    (("emotion", "feeling", "acknowledg", "validat", "empath"), lambda r: r.acknowledgements > 0),
    (("metaphor", "stor", "analog", "example"), lambda r: r.metaphor > 0),
    (("number", "specific", "concrete", "figure"), lambda r: r.number),
    (("permission",), lambda r: r.permission > 0),
    (("celebrat", "progress", "win", "praise", "encourag"), lambda r: r.celebration > 0),
    (("normaliz", "normalis"), lambda r: r.normalising > 0),
    (("question", "curious", "ask"), lambda r: r.question),
    (("step", "plan", "action"), lambda r: r.steps),
    (("educat", "teach", "explain", "why"), lambda r: r.explainers > 0 or r.because),
)

_AVOID_THEMES: tuple[tuple[tuple[str, ...], _Detector], ...] = (
    # Jargon is only a violation when it is left unexplained.
    (("jargon", "technical"), lambda r: r.jargon > 0 and not r.explainers),
    (("judg", "shame", "blame", "criticiz", "criticis"), lambda r: r.shaming > 0),
    (
        ("overwhelm", "too many", "options"),
        lambda r: len(_STEP_LINE.findall(r.response)) > 5 or r.words > 350,
    ),
    (("platitude", "generic", "cliche", "cliché"), lambda r: r.platitudes > 0),
    (("assum", "condescend", "knowledge level"), lambda r: r.assumptions > 0),
    (("guarantee", "promise"), lambda r: r.guarantees > 0),
)

_STOPWORDS = frozenset(
    "about above after again against their there these those which while would could should with "
    "without never always other every being before below between through during into over under "
    "than then that this what when where your from have more most much very".split()
)


def _theme_detector(item: str, themes: tuple[tuple[tuple[str, ...], _Detector], ...]) -> _Detector | None:
    lowered = _norm(item)
    for keywords, detector in themes:
        if any(k in lowered for k in keywords):
            return detector
    return None


def _literal_detector(item: str) -> _Detector:
    """Fallback for an item of no known theme: most of its content words occur in the response."""
    content = [w for w in _words(_norm(item)) if len(w) >= 5 and w not in _STOPWORDS]
    prefixes = [w[:6] for w in content]
    if not content:
        return _never

    def detect(r: _Response) -> bool:
        text = r.text
        hits = 0
        for prefix in prefixes:  # a plain loop: runs for every response, a generator costs more
            if prefix in text:
                hits += 1
        return hits * 2 > len(content)

    return detect


def _never(r: _Response) -> bool:
    return False


@functools.lru_cache(maxsize=64)
def _voice_detectors(techniques: tuple[str, ...], avoid: tuple[str, ...]) -> tuple[list[_Detector], list[_Detector]]:
    """How to detect each technique and each avoid item of a consultant: decided once per
    consultant style, not once per response."""
    return ([_theme_detector(t, _TECHNIQUE_THEMES) or _literal_detector(t) for t in techniques],
            [_theme_detector(a, _AVOID_THEMES) or _literal_detector(a) for a in avoid])


def brand_voice_score(response: str, consultant: ConsultantProfile) -> float:
    """Share of the consultant's techniques shown, minus each `avoid` item the response does."""
    r = _response(response)
    style = consultant.communication_style
    techniques, avoid = _voice_detectors(tuple(style.techniques), tuple(style.avoid))
    if techniques:
        shown = 0
        for detect in techniques:
            if detect(r):
                shown += 1
        score = 1.5 + 3.5 * shown / len(techniques)
    else:
        score = 3.0
    for detect in avoid:
        if detect(r):
            score -= 1.0
    return _clamp(score)


def score_response(
    target_response: str | None,
    user_input: str,
    emotional_context: EmotionalContext | None,
    consultant: ConsultantProfile,
) -> QualityCriteria:
    """The four criteria for one advisor response to `user_input` (see the module docstring)."""
    if target_response is None or not target_response.strip():
        # Nothing to learn from: the lowest score, so such pairs never become seed examples.
        return QualityCriteria(
            empathy_score=1.0, clarity_score=1.0, appropriateness_score=1.0, brand_voice_alignment=1.0
        )
    return QualityCriteria(
        empathy_score=empathy_score(target_response, user_input, emotional_context),
        clarity_score=clarity_score(target_response),
        appropriateness_score=appropriateness_score(target_response),
        brand_voice_alignment=brand_voice_score(target_response, consultant),
    )


def overall(criteria: QualityCriteria) -> float:
    """Weighted mean of the four criteria (`WEIGHTS`), one decimal."""
    return _round1(sum(weight * getattr(criteria, name) for name, weight in WEIGHTS.items()))


_SKILLS: tuple[tuple[str, Callable[[_Response], bool]], ...] = (
    ("emotional_validation", lambda r: r.acknowledgements > 0),
    ("normalization", lambda r: r.normalising > 0),
    ("permission_asking", lambda r: r.permission > 0),
    ("metaphor_or_story", lambda r: r.metaphor > 0),
    ("concept_explanation", lambda r: r.explainers > 0 or r.because),
    ("specific_numbers", lambda r: r.number),
    ("actionable_steps", lambda r: r.steps),
    ("celebrating_progress", lambda r: r.celebration > 0),
    ("open_questions", lambda r: r.question),
    ("appropriate_caveats", lambda r: r.caveats > 0),
)


def detect_skills(target_response: str | None) -> list[str]:
    """Advisor skills a response demonstrates, in a fixed order (empty for no response)."""
    if not target_response:
        return []
    r = _response(target_response)
    return [name for name, shown in _SKILLS if shown(r)]
