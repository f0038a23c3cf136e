"""Phrase banks the simulator composes its conversations from, chosen by a hash of the request key.

Templates use `str.format` slots filled in `content.compose_conversation`: name, first, topic,
topic_l (the topic mid-sentence), topic_desc, arc, start, end, demographics, background,
emotion, and the figures income, amount, monthly, rate, years, projection, contributions, share;
the advisor's banks also fact_label / fact_value (one line of the persona's financial background),
concept (a clause of the topic description) and who (the persona as a noun phrase).
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
# --- The advisor: a grammar, not a list of sentences --------------------------------------------
# `[a|b|c]` picks one option (an empty option drops the part), expanded left to right by the
# conversation's seeded generator before the `{slots}` are filled (see `content.expand`). A few
# choices per part multiply into thousands of sentences per template, so two conversations about
# the same persona rarely say the same sentence word for word — as with a model's answers.

#: The advisor's first sentence: the client's feeling, named, before any figure (rule 6 of the
#: system prompt); always addresses the client by first name.
ADVISOR_ACKS = (
    "[{first}, thank you|Thank you, {first},|Thanks, {first},] for [being so open|being this honest|saying that out loud|"
    "putting it into words|telling me straight] about the {emotion}[| you're carrying| you feel| that comes up].",
    "I can [hear|sense|tell there's] [the|some|a real] {emotion} in [what you just said|how you put that|your question], "
    "{first}[, and it makes sense| and it's understandable|; that's a reasonable place to be|, which is fair].",
    "[It takes courage|It's not easy|It says a lot] to [name|admit to|talk about] {emotion} [out loud|openly|"
    "this early|with someone you've just met], {first}[.|, so thank you.|, and I'm glad you did.]",
    "[Feeling|Noticing|Sitting with] {emotion} [here|about this|at this point] [doesn't mean|isn't a sign] you've "
    "[done anything wrong|made a mistake|fallen behind], {first}[; it means you care about getting it right|; it usually "
    "means this matters to you|. It's a sign you're taking it seriously].",
    "That {emotion} is [worth listening to|telling us something|useful information], {first}[, because it points at| since it "
    "shows us| and it tells me] [the questions to answer first|where to start|what matters most to you].",
    "{first}, [a lot of|many|plenty of] [people|clients|families I work with] [feel|describe|run into] {emotion} [at exactly "
    "this point|when they first look at this|around this stage][, so you're in good company|, and it passes|].",
    "[Let's|I'd like to|We can] [slow down|take a breath|pause] for a [second|moment|minute], {first}: {emotion} is a "
    "[normal|natural|very human|completely reasonable] [reaction|response|place to be] [when this much is at stake|when the "
    "stakes feel this high|with something this personal].",
    "[I appreciate|I'm glad|It helps] that you [told me about|mentioned|were upfront about] the {emotion}, {first}[; we'll "
    "work with it, not around it|. It shapes how we go about this|, because it changes where I'd start].",
    "[Okay|Alright|Right], {first}, [so |]there's {emotion} [in the mix|underneath this|behind that question][, and that's "
    "fine|, which is worth naming|. Good to know].",
    "[Hearing|Knowing] that you [feel|are feeling|still feel] {emotion} [helps me|tells me a lot|is useful], {first}[, "
    "because we can pace this around it|; let's keep that in view as we go|, and we'll take it one step at a time].",
)
#: Turns that say how the advisor will proceed (no figures; optional after the acknowledgement).
ADVISOR_BRIDGES = (
    "[Let's|Let me|I'd like to] [take this|break this down|walk through this] [one piece at a time|in small steps|"
    "in plain terms|slowly] [so nothing gets lost|so it's easier to hold|so you can see how the pieces fit|].",
    "[Before we get to|Ahead of] [any|the] [numbers|details|products], I [want|'d like] to [make sure|check] we're "
    "[looking at|solving|answering] the [right|same] [question|problem] for {topic_l}.",
    "[There are|I see] [two|three|a couple of] [parts|pieces|angles] to {topic_l} [here|in your case|worth separating], "
    "and [we can|I'd suggest we|it helps to] [take them in order|start with the simplest one|look at each on its own].",
    "[Nothing|None of this] [has to|needs to] be [decided|settled|locked in] today; [the goal|what I want|my aim] "
    "[right now |today |]is [clarity|a clear picture|a plan you understand|a first step you're comfortable with].",
)
#: Body sentences. Each uses the conversation's own numbers, the persona's own background
#: (`fact_label` / `fact_value`) and the topic (`topic_l`, `concept`).
ADVISOR_FACTS = (
    "[You mentioned|You told me|From what you've shared,|Looking at your notes,] [that |]your {fact_label} [is|comes to|"
    "stands at] {fact_value}[, which|. That] [gives us|is|makes] a [solid|real|useful|workable] [starting point|"
    "foundation|base] for {topic_l}.",
    "[If you|Suppose you|Say you] [put|set aside|direct|automate] {monthly} a month [toward|into] [this|{topic_l}|that "
    "goal] at [an assumed|a conservative|a modest|a middle-of-the-road] {rate} [annual |]return, [you'd have|that grows "
    "to|you're looking at] [roughly|about|around|close to] {projection} [in|after|over] {years} years.",
    "{monthly} a month for {years} years [is|adds up to|comes to] {contributions} [in contributions alone|of your own "
    "money|before any growth|before a single dollar of return][, which surprises most people|, and that part is fully in "
    "your control|].",
    "[On|With] {income} [a year|of income|coming in], {monthly} [a month |]is [about|roughly|around|just under] {share} of "
    "[gross|your gross|your] income[, a pace most households can keep up|, which leaves room for everything else|; "
    "sustainable, not heroic|].",
    "[The key idea|The part that matters most|What tends to matter|The piece people often miss|The heart of it] "
    "[with|in|about] {topic_l} is {concept}[.|, more than anything else.|, and it's simpler than it sounds.]",
    "[When I look at|Thinking about|If we weigh] {concept}, [your|the] {fact_label} ({fact_value}) [matters|"
    "changes the picture|is the number I'd keep in mind|is what I'd anchor on] [more than the headlines do|for "
    "{topic_l}|here].",
    "[Even at|Even if returns are only|At] half of {rate}, [starting from|building on|with] {amount} [you'd still|you would "
    "still|you'd] [be ahead of|beat|come out ahead of] waiting [another|a few more|one more] [year|years|cycle].",
    "[A useful|One practical|A simple] rule of thumb [for {topic_l} |]is to [keep|hold] [three|four|six] months of "
    "[expenses|spending|essentials] [easy to reach|in cash|somewhere boring] before [taking more risk|investing more|"
    "stretching further][, and {amount} already covers part of that|].",
    "[In your case|For you|Given your situation], the gap between {rate} and a more [cautious|conservative|pessimistic] "
    "assumption is [a few hundred dollars a year|small in any single year|real but manageable], not [a disaster|a crisis|"
    "something to lose sleep over].",
    "[Consistency|Showing up every month|A steady habit] [beats|matters more than|outweighs] [timing|picking the perfect "
    "moment|clever moves] [with|for|in] {topic_l}[, especially over {years} years|, which is good news for you|].",
    "[As|Since you're|Being] {who}, [you're|you are] [in a better spot than it feels|further along than you think|"
    "not starting from zero] on {topic_l}[, honestly|, from what I can see|].",
    "[What I'd|What I would|The first thing I'd] [look at|check|want to understand] is {concept}, [because|since] "
    "[it drives|it shapes|everything else follows from] [the rest of the plan|the other decisions|how much risk makes sense].",
    "[Your|The] {fact_label} ({fact_value}) [and|plus] {monthly} a month [give us|make|are] [two|a couple of] "
    "[levers|dials|numbers] we can [actually control|adjust without drama|move as life changes].",
    "[Over|Across] {years} years, the [difference|gap] between [doing nothing|waiting|starting now] and {monthly} a month "
    "[is|comes to] [roughly|about|something like] {projection}[ at {rate}|, assuming {rate}|].",
)
#: Questions back to the client (the advisor's last sentence in a middle turn).
ADVISOR_QUESTIONS = (
    "[What|Which] [part|piece] of [that|this|the plan] [feels|seems] [most uncertain|least clear|hardest|most uncomfortable] "
    "[to you|right now|for you|so far]?",
    "[Does that|Does this|Does any of that] [match|fit|line up with] what you [were picturing|had in mind|expected|hoped]"
    "[, {first}|]?",
    "Would it [help|be useful|make it easier] if we [mapped out|sketched|wrote down] the [first|next] [three months|few "
    "weeks|couple of steps] [together|right now|before you leave]?",
    "How does [that|this|all of that] [land|sit|feel] [for you|with you|so far][, {first}|]?",
    "What would make [this|{topic_l}|the plan] feel [more doable|more manageable|less heavy|more like yours]?",
    "[Which|What] [of those numbers|part of the math|figure] would you like to [look at|go through|test] [more closely|"
    "again|together|with different assumptions]?",
    "[Is there|Do you have] [a|any] [worry|question|scenario] [about {topic_l} |]that we [haven't touched yet|should "
    "look at next|skipped over]?",
    "[How would|What would] [your family|your partner|the people at home] [think|say] about [this|that approach|"
    "a plan like this]?",
)
#: The last advisor turn: the ending feeling first, then a recap with the figures, then a sign-off.
ADVISOR_CLOSERS = (
    "[I'm really glad|I'm so glad|It's good|It's wonderful] [to hear|that you're feeling|to see] {end} [now|today|"
    "where there was {start}], {first}.",
    "{first}, you did the hard part [today|in this conversation|this afternoon] by [looking at this directly|facing "
    "it|asking the questions][, and that {end} is earned|; the {end} you feel is earned|, and it shows in the "
    "{end} you describe].",
    "[Hold on to|Keep hold of|Remember] that {end}, {first}[; it came from understanding, not luck|, because you built "
    "it yourself today|: it's based on real numbers now].",
    "[Thank you|Thanks] for [trusting me|working through this|sticking with it], {first}; [hearing|that shift to] {end} "
    "[in your voice |]is [exactly what I hoped for|the best outcome of today|what matters most].",
)
ADVISOR_RECAPS = (
    "[To recap|So, to sum up|Here's the plan in short|Let me summarise]: [automate|set up|start] {monthly} a month, "
    "[keep|leave] {amount} [where it is|as your base|untouched for now], and [we'll review|we'll revisit|let's check] "
    "{topic_l} [together |]in [six months|the spring|a few months].",
    "[Next steps|Your next steps|What happens next]: [set up|schedule] the {monthly} transfer, [note|write down] the {rate} "
    "assumption, and [check back|we'll talk again|let's review] [after your next pay review|in six months|before year end].",
    "[Your plan for {topic_l} is simple on purpose|The plan is deliberately simple|Nothing fancy]: {monthly} a month, a "
    "{years}-year horizon, and a check-in [twice a year|every six months|once a year].",
    "With {amount} to start and {monthly} a month, you're [on track for|heading toward|looking at] [roughly|about|around] "
    "{projection} in {years} years[ at {rate}|, if returns average {rate}|].",
)
ADVISOR_SIGNOFFS = (
    "[I'll send|You'll get|I'll email] a [written|short|one-page] summary [today|tonight|by tomorrow][ so you can share it|"
    " with every number we used|].",
    "[Call me|Reach out|Send me a note] [any time|whenever|if] [something changes|questions come up|life shifts the "
    "numbers][, that's what I'm here for|; we'll adjust together|].",
    "[You've got this|You're ready for this|This is very doable], {first}[.|, and I'll be here for the check-ins.]",
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
