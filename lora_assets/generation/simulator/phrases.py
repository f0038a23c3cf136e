"""Phrase banks the simulator composes its conversations from, chosen by a hash of the request key.

Templates use `str.format` slots filled in `content.compose_conversation`: name, first, topic,
topic_l (the topic mid-sentence), topic_desc, arc, start, end, demographics, background,
emotion, and the figures income, amount, monthly, rate, years, projection, contributions, share.
"""

from __future__ import annotations

#: Scaffolding used for any field the prompt's `<scaffolding>` block leaves out or empty.
GENERIC = {
    "persona_name": "Jordan Avery",
    "persona_archetype": "The Cautious Planner",
    "persona_demographics": "Age 41, married, two children",
    "persona_financial_background": "Household income $92,000; $14,000 in savings",
    "arc_name": "Anxiety → Confidence",
    "arc_starting_emotion": "anxiety",
    "arc_ending_emotion": "confidence",
    "topic_name": "Building an emergency fund",
    "topic_description": "How much cash to keep for emergencies, where to hold it and how to build it up.",
}

SESSION_CONTEXTS = (
    "{name} ({demographics}) is meeting the advisor to work through {topic_l}; the session follows the {arc} arc.",
    "First planning session on {topic_l} for {name}. Background: {background}. Emotional arc: {arc}.",
    "{name} booked this meeting after months of worrying about {topic_l}, arriving with {start} and hoping for {end} ({arc}).",
    "Video call with {name}, {demographics}, focused on {topic_l}. The client starts in {start} and the arc is {arc}.",
    "{name} was referred by a friend for help with {topic_l} ({background}); expected arc: {arc}.",
)
PHASES = (
    "Discovery: exploring {topic_l} while moving from {start} toward {end}",
    "Education and planning on {topic_l} ({arc})",
    "Initial consultation on {topic_l}, arc {arc}",
    "Goal-setting session for {topic_l}: from {start} to {end}",
)
OUTCOMES = (
    "{first} leaves with a written plan for {topic_l} and a sense of {end} in place of {start}.",
    "{first} understands {topic_l}, commits to {monthly} a month, and moves from {start} to {end}.",
    "A concrete first step on {topic_l} agreed, with {first}'s {start} giving way to {end} ({arc}).",
    "{first} can explain the plan for {topic_l} in their own words and feels {end} rather than {start}.",
)
USER_OPENERS = (
    "Hi, I'm {first}. I've been putting off this conversation about {topic_l} for months. "
    "We have about {amount} to work with and, if I had to name the feeling, I'd say {start}.",
    "Thanks for making time. I need help with {topic_l}. I keep looking at {amount} in our accounts "
    "and I don't know what the right move is. Mostly I feel {start}.",
    "So, {topic_l}. That's why I'm here. My partner thinks I'm overthinking it, but with {amount} on "
    "the line there's a lot of {start}, and I want to get it right.",
    "I'll be upfront: {topic_l} is something I've avoided. I'm putting away roughly {monthly} a month "
    "and I have no idea whether that's enough. It's mostly {start}, honestly.",
    "My name's {first}, and a friend said you explain things without judgment. I want to understand "
    "{topic_l}; I've got around {amount} and a lot of {start} about what to do with it.",
    "I'm {first}. Every time I read about {topic_l} I end up more confused. We earn about {income} a "
    "year and I still feel {start} when I think about it.",
)
USER_FOLLOWUPS = (
    "Okay, that helps a little. I'd call where I am now {emotion}. But what if the {rate} assumption "
    "turns out to be wrong?",
    "So if I set aside {monthly} a month, how long before I'd see a real difference? "
    "I'm somewhere around {emotion} right now.",
    "I didn't realise it worked that way. Could you walk me through what {amount} looks like over {years} years?",
    "That makes sense on paper. My worry is that I'll start and then life gets in the way. "
    "Is {monthly} a month realistic on {income} a year?",
    "Right. And how does this fit with everything else? I don't want {topic_l} to crowd out our other goals.",
    "Hm. If I had to put a word on it now, it's {emotion}. What would the very first step be?",
    "Can I ask a basic question? Where exactly would the {monthly} go each month, and who can touch it?",
)
USER_CLOSERS = (
    "This is the first time {topic_l} has felt manageable. What I feel now is {end}. Can we write those steps down?",
    "Okay. {monthly} a month, and a review in six months. There's real {end} where the {start} used to be.",
    "Thank you. I came in with so much {start}, and now it's closer to {end}. I know what to do on Monday.",
    "I can actually explain this to my family now. {amount}, {monthly} a month, check in twice a year. "
    "That feels like {end}.",
    "Honestly, I expected to leave more stressed. Instead it's {end}. Let's set up the {monthly} transfer.",
)
ADVISOR_ACKS = (
    "{first}, thank you for being so open about the {emotion}. That's a completely normal reaction "
    "when this much is at stake.",
    "I can hear the {emotion} in what you're saying, {first}, and it makes sense: {topic_l} touches "
    "your security and your family's.",
    "It takes courage to name {emotion} out loud, {first}. Let's slow down and take this one piece at a time.",
    "Feeling {emotion} here doesn't mean you've done anything wrong, {first}; it means you care about "
    "getting it right.",
    "That {emotion} is worth listening to, {first}. It points at the questions we should answer first.",
    "I really appreciate you telling me that, {first}. A lot of people feel {emotion} at exactly this point.",
)
ADVISOR_FACTS = (
    "Here's the big picture on {topic_l}. {topic_desc} Now the numbers: if you put {monthly} a month toward it at an "
    "assumed {rate} annual return, that grows to roughly {projection} over {years} years.",
    "Let's put numbers on it. Starting from {amount} and adding {monthly} a month, you'd have about "
    "{projection} in {years} years at {rate}, and even at half that return you'd be well ahead of waiting.",
    "The key idea with {topic_l} is that consistency beats timing. {monthly} a month for {years} years "
    "is {contributions} in contributions alone, before any growth.",
    "A useful rule of thumb: keep three to six months of expenses easy to reach before taking more "
    "risk. With {amount} already set aside, you're closer to that than it feels.",
    "Let me frame {topic_l} first. {topic_desc} In your case the gap between a {rate} return and a more "
    "cautious assumption is a few hundred dollars a year, not a disaster.",
    "On {income} a year, {monthly} a month is about {share} of gross income, which is a sustainable "
    "pace for {topic_l} without squeezing your day-to-day budget.",
)
ADVISOR_QUESTIONS = (
    "What part of that feels most uncertain to you?",
    "Does that match what you were picturing?",
    "Would it help if we mapped out the first three months together?",
    "How does that land for you?",
    "What would make this feel more doable?",
    "Which of those numbers would you like to look at more closely?",
)
ADVISOR_CLOSERS = (
    "I'm really glad you're feeling {end} now, {first}. To recap: automate {monthly} a month, keep the "
    "{amount} where it is for now, and we'll review {topic_l} together in six months.",
    "{first}, you did the hard part today by looking at this directly, and that {end} is earned. "
    "Next steps: set up the {monthly} transfer, note the {rate} assumption, and check back after your next pay review.",
    "It's wonderful to hear that {end} in your voice, {first}. Your plan for {topic_l} is simple on purpose: {monthly} a "
    "month, a {years}-year horizon, and a check-in twice a year. I'll send a written summary today.",
    "Thank you for trusting me with this, {first}. Hold on to that {end}: with {amount} to start and "
    "{monthly} a month, you're on track for roughly {projection} in {years} years.",
)
EARLY_EMOTIONS = ("cautious curiosity", "guarded hope", "uncertainty", "tentative interest", "hesitation")
LATE_EMOTIONS = ("growing relief", "cautious optimism", "emerging clarity", "steadiness", "reassurance")
SECONDARY = ("self-doubt", "worry", "frustration", "curiosity", "embarrassment", "overwhelm", "hope")
REFUSALS = (
    "I'm not able to help with writing this conversation as requested.",
    "I can't help with that request.",
    "I'm sorry, but I can't create this content.",
)
WRAP_BEFORE = (
    "Here is the conversation you asked for:",
    "Sure! Below is the training conversation in JSON format.",
    "I've written the conversation following the scaffolding.",
)
WRAP_AFTER = (
    "Let me know if you'd like any adjustments.",
    "I hope this is useful for your training data.",
    "The emotional arc moves gradually across the client turns.",
)
