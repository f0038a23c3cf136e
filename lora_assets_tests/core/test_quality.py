"""Quality: transparent heuristics that move with the text (never a constant)."""

from __future__ import annotations

import pytest

from lora_assets.core.aggregate import conversation_quality
from lora_assets.core.quality import (
    appropriateness_score,
    brand_voice_score,
    clarity_score,
    detect_skills,
    empathy_score,
    overall,
    score_response,
)
from lora_assets.schemas.scaffolding import CommunicationStyle
from lora_assets.schemas.training import QualityCriteria
from lora_assets_tests.core.factories import (
    CURT_GUARANTEE_ANSWER,
    EMPATHETIC_ANSWER,
    enrich_default,
    make_consultant,
    make_emotion,
    make_parsed,
    make_turns,
)

USER = "I'm really anxious about my debt and I feel stupid for letting it get this far."
ANXIETY = make_emotion("anxiety", 0.8, ("shame",))


def test_empathetic_clear_answer_beats_curt_guaranteeing_one_on_every_criterion() -> None:
    consultant = make_consultant()
    good = score_response(EMPATHETIC_ANSWER, USER, ANXIETY, consultant)
    bad = score_response(CURT_GUARANTEE_ANSWER, USER, ANXIETY, consultant)
    assert good.empathy_score > bad.empathy_score
    assert good.clarity_score > bad.clarity_score
    assert good.appropriateness_score > bad.appropriateness_score
    assert good.brand_voice_alignment > bad.brand_voice_alignment
    assert overall(good) >= 4.0 > 2.5 > overall(bad)


def test_scores_are_in_range_with_one_decimal() -> None:
    for text in (EMPATHETIC_ANSWER, CURT_GUARANTEE_ANSWER, "Ok.", "x " * 500):
        criteria = score_response(text, USER, ANXIETY, make_consultant())
        for value in criteria.model_dump().values():
            assert 1.0 <= value <= 5.0
            assert round(value, 1) == value


def test_not_a_constant() -> None:
    texts = [
        EMPATHETIC_ANSWER,
        CURT_GUARANTEE_ANSWER,
        "Let's look at your budget together.",
        "I hear you. First, list your debts; then we pay $100 extra a month on the 9% card.",
    ]
    scores = {overall(score_response(t, USER, ANXIETY, make_consultant())) for t in texts}
    assert len(scores) >= 3


# --- Empathy ----------------------------------------------------------------------------------


def test_acknowledging_the_feeling_first_scores_higher_than_after_the_advice() -> None:
    advice = "Put an extra $200 a month toward the 7% loan."
    first = empathy_score(f"That makes sense. {advice} It cuts years off.", USER, ANXIETY)
    later = empathy_score(f"{advice} It cuts years off. That makes sense.", USER, ANXIETY)
    none = empathy_score(f"{advice} It cuts years off.", USER, ANXIETY)
    assert first > later > none


def test_naming_the_clients_emotion_counts() -> None:
    plain = "Let's go through the numbers and build a plan for the loan."
    named = "Feeling anxious about this is understandable. Let's go through the numbers and build a plan."
    assert empathy_score(named, USER, ANXIETY) > empathy_score(plain, USER, ANXIETY)


def test_emotion_stems_match_inflections() -> None:
    overwhelmed = make_emotion("overwhelmed")
    text = "It is overwhelming, and that is okay."
    assert empathy_score(text, "help", overwhelmed) > empathy_score(text, "help", make_emotion("curiosity"))


def test_dismissive_language_lowers_empathy() -> None:
    base = "I hear you. Many people feel this way about your debt. What worries you most?"
    assert empathy_score(base + " Calm down, it's no big deal.", USER, ANXIETY) < empathy_score(base, USER, ANXIETY)


# --- Clarity ------------------------------------------------------------------------------------


def test_numbers_and_steps_improve_clarity() -> None:
    vague = "You could think about maybe paying things down a bit faster over some period of time if that works."
    concrete = "First, pay $150 extra each month on the 22% card. Next, move to the 6% loan when it is gone."
    assert clarity_score(concrete) > clarity_score(vague)


def test_long_sentences_hurt_clarity() -> None:
    short = "Pay the card first. It costs 22%. Then the car loan. It costs 6%. That order saves the most money."
    long = (
        "Paying the card first, which costs you about twenty two percent every year on the balance that you "
        "carry from month to month, and then moving on to the car loan afterwards, which costs less, is the "
        "order that in most cases and for most households saves the most money over the full life of the debts."
    )
    assert clarity_score(short) > clarity_score(long)


def test_jargon_wall_hurts_clarity() -> None:
    plain = "We split your savings between safer and growth investments and check the mix once a year, okay?"
    wall = (
        "We optimise asset allocation, duration risk, expense ratio, cost basis, liquidity and beta exposure "
        "with annual rebalancing."
    )
    assert clarity_score(wall) < clarity_score(plain)


def test_curt_answer_is_unclear() -> None:
    assert clarity_score("Pay it off.") < clarity_score(EMPATHETIC_ANSWER)


# --- Appropriateness ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "This fund is guaranteed to return 10% a year.",
        "It's a risk-free way to grow your money.",
        "You should buy Tesla stock now.",
        "Sell VTSAX and buy NVDA today.",
        "Honestly that was irresponsible, you should have saved more.",
    ],
)
def test_guarantees_security_picks_and_shaming_lower_appropriateness(bad: str) -> None:
    neutral = "Paying the card first usually saves the most interest."
    assert appropriateness_score(bad) < appropriateness_score(neutral)


def test_caveats_raise_appropriateness() -> None:
    bare = "Pay the mortgage early."
    hedged = "Paying early can make sense, but it depends on your situation; a tax professional can confirm it."
    assert appropriateness_score(hedged) > appropriateness_score(bare)


# --- Brand voice -----------------------------------------------------------------------------


def test_brand_voice_rewards_the_consultants_techniques() -> None:
    consultant = make_consultant()
    with_techniques = (
        "I hear how stressful this is. Would it help if I explained how it works? Think of your mortgage like a "
        "hill: every extra $100 shortens the climb. You've already paid down 20%, which is real progress."
    )
    without = "Paying extra on the mortgage shortens it."
    assert brand_voice_score(with_techniques, consultant) > brand_voice_score(without, consultant)
    assert brand_voice_score(with_techniques, consultant) == 5.0


def test_brand_voice_punishes_the_avoid_list() -> None:
    consultant = make_consultant()
    clean = "I hear you. Paying $100 more a month ends the loan two years early."
    violating = clean + " As you know, that was a careless decision. Everything will be fine."
    # 2.9 − 3 violations (assumption, judgment, platitude), clamped at the floor
    assert brand_voice_score(clean, consultant) == 2.9
    assert brand_voice_score(violating, consultant) == 1.0


def test_brand_voice_uses_the_given_consultant() -> None:
    # Same text, different consultant techniques → different brand score.
    text = "Imagine your debt like a snowball rolling downhill."
    metaphors = make_consultant(
        communication_style=CommunicationStyle(tone="warm", techniques=["use metaphors"], avoid=[])
    )
    numbers = make_consultant(
        communication_style=CommunicationStyle(tone="warm", techniques=["provide specific numbers"], avoid=[])
    )
    assert brand_voice_score(text, metaphors) > brand_voice_score(text, numbers)


def test_unknown_technique_falls_back_to_its_words() -> None:
    consultant = make_consultant(
        communication_style=CommunicationStyle(tone="warm", techniques=["mention the household budget spreadsheet"])
    )
    assert brand_voice_score("Open the household budget spreadsheet together.", consultant) > brand_voice_score(
        "Let's talk.", consultant
    )


# --- Overall, skills, conversation -----------------------------------------------------------------


def test_overall_is_the_documented_weighted_mean() -> None:
    # The seed's example: 4 / 3.5 / 4 / 3.5 → 3.8
    seed = QualityCriteria(empathy_score=4, clarity_score=3.5, appropriateness_score=4, brand_voice_alignment=3.5)
    assert overall(seed) == 3.8
    lopsided = QualityCriteria(empathy_score=5, clarity_score=1, appropriateness_score=1, brand_voice_alignment=1)
    assert overall(lopsided) == 2.2


def test_no_target_response_scores_lowest() -> None:
    criteria = score_response(None, USER, ANXIETY, make_consultant())
    assert set(criteria.model_dump().values()) == {1.0}


def test_detect_skills() -> None:
    assert detect_skills(None) == []
    skills = detect_skills(EMPATHETIC_ANSWER)
    for skill in ("emotional_validation", "normalization", "permission_asking", "specific_numbers", "actionable_steps"):
        assert skill in skills
    assert "celebrating_progress" not in skills


def test_conversation_quality_is_the_mean_of_answered_pairs() -> None:
    enriched = enrich_default(make_parsed(turns=make_turns(5)))
    answered = [p.training_metadata.quality_score for p in enriched.training_pairs if p.target_response]
    assert len(answered) == 2 and len(enriched.training_pairs) == 3
    assert conversation_quality(enriched) == pytest.approx(sum(answered) / len(answered), abs=0.005)


def test_has_finds_exactly_what_testing_every_phrase_finds() -> None:
    """`_has` stops at the first phrase found; it must agree with testing every phrase
    on word boundaries, including phrases glued to letters (no match) or to punctuation (match)."""
    import random

    from lora_assets.core import quality

    rng = random.Random(7)
    lists = [quality.ACKNOWLEDGEMENTS, quality.NORMALISING, quality.DISMISSIVE, quality.CAVEATS, quality.JARGON,
             quality.PERMISSION, quality.PLATITUDES, quality.GUARANTEES]
    words = [p for phrases in lists for p in phrases] + ["money", "plan", "okay", "x", "s"]
    for _ in range(400):
        text = "".join(rng.choice(words) + rng.choice([" ", "", ", ", "s ", ".", "\n"]) for _ in range(rng.randint(1, 6)))
        for phrases in lists:
            expected = any(quality._occurs(p, text) for p in phrases)
            assert quality._has(text, phrases) == expected, (text, phrases)


def test_occurs_is_the_word_boundary_regex() -> None:
    """`_occurs` finds a phrase with str.find and checks its neighbours; it must answer as the
    regex `(?<!\\w)phrase(?!\\w)`, also next to non-ASCII letters, digits and marks."""
    import random
    import re

    from lora_assets.core import quality

    rng = random.Random(11)
    alphabet = [*"ab _-'’.!?\n0$%", "²", "½", "é", "ß", "\u0301", "ǅ", "ab", "a b"]
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        phrase = rng.choice(["ab", "a b", "b", "b-a", "’", "ab'", "0", "$", "a."])
        expected = re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None
        assert quality._occurs(phrase, text) == expected, (phrase, text)


def test_text_shortcuts_answer_as_their_regexes() -> None:
    """The ASCII / one-line shortcuts (sentences by str.replace, words by bytes.translate, number
    and step-line tests, the trade-directive prefilter) give what the regexes they replace give."""
    import random
    import re

    from lora_assets.core import quality

    rng = random.Random(5)
    pieces = ["You should buy AAPL", "sell shares of MSFT", "you must ", "rebuy ", "First", "1. ", "- ", "\n",
              "\n\n", "\t", "  ", ". ", "? ", "! ", "...", "$5", "12%", "it's", "it’s", "self-doubt", "x", "word",
              "é", "½", "Ⅻ", "_", ",", "'", "-", "0", "in 2030", "٣"]
    for _ in range(5_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        norm = quality._norm(text)
        regex_sentences = tuple(s for s in (p.strip() for p in quality._SENTENCE_SPLIT.split(text)) if quality._WORD.search(s))
        assert quality._sentence_tuple(text) == regex_sentences, text
        assert quality._token_list(norm) == tuple(re.findall(r"\w+", norm)), text
        assert quality._word_count(norm) == len(re.findall(r"[\w'’-]+", norm)), text
        assert quality._has_number(text) == bool(quality._NUMBER.search(text)), text
        assert quality._has_step_line(text) == bool(quality._STEP_LINE.search(text)), text
        assert quality._directs_a_trade(text, norm) == (
            quality._security_directive(text) or quality._security_directive(norm)), text
