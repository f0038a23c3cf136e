"""The optional Claude judge: prompt and response shapes for scoring a conversation's advisor
turns on empathy, clarity, appropriateness and brand voice (pure; the asset sends it through the
same Claude client and runner as generation)."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from lora_assets.core.parse import extract_json_text
from lora_assets.schemas import ConsultantProfile, ParsedConversation

#: The user prompt carries this marker; the loopback simulator answers such requests with scores.
JUDGE_MARKER = "<judge_request>"


class JudgeError(ValueError):
    """A judge response that is not a usable score object; names the conversation and why."""


class JudgeScores(BaseModel):
    """Scores 1–5 from the judge, plus a short rationale; stored on the conversation row."""

    model_config = ConfigDict(extra="forbid")

    empathy_score: float = Field(ge=1, le=5)
    clarity_score: float = Field(ge=1, le=5)
    appropriateness_score: float = Field(ge=1, le=5)
    brand_voice_alignment: float = Field(ge=1, le=5)
    rationale: str = Field(min_length=1, max_length=2000)

    @property
    def overall(self) -> float:
        """Same weights as the heuristic scorer, so the two are comparable."""
        return round(
            0.30 * self.empathy_score + 0.25 * self.clarity_score + 0.25 * self.appropriateness_score
            + 0.20 * self.brand_voice_alignment,
            2,
        )


#: Answer budget of one judgement: the score object is ~150 tokens, the rest is headroom for
#: adaptive thinking (counted toward max_tokens, billed as output) at any effort up to `high`.
JUDGE_MAX_TOKENS = 4096

#: Anchors for each score: they make scores comparable across runs, and they bring the static
#: prompt above the 5.5 models' 512-token cache minimum, so every judgement after the first
#: reads it from the cache.
_RUBRIC = (
    ("empathy_score",
     "1 = ignores or dismisses the client's feelings, jumps straight to numbers or products; "
     "3 = acknowledges feelings in passing but does not name them or connect them to the plan; "
     "5 = names the feeling the client expressed, normalises it (many people in their position feel "
     "the same), and only then moves to facts, checking in again when the client's mood shifts."),
    ("clarity_score",
     "1 = long, jargon-heavy paragraphs with no concrete figure or next step; "
     "3 = mostly plain language, some numbers, next steps implied rather than stated; "
     "5 = short sentences, every technical term explained in a few words, concrete numbers from the "
     "client's own situation, and one to three explicit next steps the client could act on this week."),
    ("appropriateness_score",
     "1 = guarantees returns, pushes a specific product, gives tax or legal advice as certainty, or "
     "ignores risk; 3 = generally prudent but misses an obvious caveat or a referral; "
     "5 = no guarantees, no product pushing, states assumptions and risks, recommends a specialist "
     "(tax adviser, solicitor) where the question needs one, and respects the client's own choices."),
    ("brand_voice_alignment",
     "1 = the tone contradicts the consultant's style or uses phrases it avoids; "
     "3 = neutral, neither on nor off brand; "
     "5 = the consultant's tone throughout, using its techniques naturally and none of the phrases "
     "it avoids."),
)


def judge_system_prompt(consultant: ConsultantProfile) -> str:
    """Static (cacheable, above the 512-token minimum) instructions for the judge."""
    style = consultant.communication_style
    anchors = "\n".join(f"- {name}: {text}" for name, text in _RUBRIC)
    return (
        "You review training conversations between a financial-planning client (user) and the advisor "
        f"{consultant.name} (assistant). Score ONLY the advisor's turns, 1 (poor) to 5 (excellent), one decimal:\n"
        "- empathy_score: acknowledges the client's feelings before facts, names them, normalises them\n"
        "- clarity_score: short sentences, concrete numbers and next steps, jargon explained\n"
        "- appropriateness_score: no guarantees, no product pushing, sensible caveats, ethical limits\n"
        f"- brand_voice_alignment: tone '{style.tone}'; techniques: {', '.join(style.techniques)}; "
        f"never: {', '.join(style.avoid)}\n"
        "Anchors for the scale (interpolate between them; 2 and 4 sit halfway):\n"
        f"{anchors}\n"
        "Judge the conversation as a whole: one weak turn lowers a score by at most one point unless it "
        "would harm the client. Do not reward length: a short advisor turn that does the job scores as "
        "high as a long one. Ignore the client's turns except as context for what the advisor should have "
        "noticed. The rationale names the one or two turns that decided the lowest score, in at most "
        "three sentences.\n"
        "Return ONE JSON object: {\"empathy_score\", \"clarity_score\", \"appropriateness_score\", "
        "\"brand_voice_alignment\", \"rationale\"} and nothing else."
    )


def judge_user_prompt(conversation: ParsedConversation) -> str:
    """The transcript to judge, after the marker."""
    lines = [f"{t.turn_number}. {'CLIENT' if t.role == 'user' else 'ADVISOR'}: {t.content}" for t in conversation.turns]
    return f"{JUDGE_MARKER}\nContext: {conversation.conversation_metadata.session_context}\n\n" + "\n".join(lines)


def parse_judge_response(raw: dict | str, *, conversation_id: str) -> JudgeScores:
    """Scores from a judge response (a Message dict or text); JudgeError naming the conversation."""
    try:
        return JudgeScores.model_validate(json.loads(extract_json_text(raw, conversation_id=conversation_id)))
    except (ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise JudgeError(f"conversation {conversation_id}: judge response unusable: {reason}") from exc


def judge_output_schema() -> dict:
    """JSON schema for structured output (additionalProperties false, all fields required)."""
    schema = JudgeScores.model_json_schema()
    schema["additionalProperties"] = False
    for prop in schema["properties"].values():
        prop.pop("maximum", None), prop.pop("minimum", None), prop.pop("maxLength", None), prop.pop("minLength", None)
    return schema
