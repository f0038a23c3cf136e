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
#: system prompt); always addresses the client by first name. No option ends a sentence early:
#: every sentence carries the name, the feeling and several choices.
ADVISOR_ACKS = (
    "[{first}, thank you|Thank you, {first},|Thanks, {first},|{first}, I appreciate you] for [being so open|being this "
    "honest|saying that out loud|putting it into words|telling me straight|trusting me with it] about the {emotion}"
    "[| you're carrying| you feel| that comes up| around {topic_l}][, because it helps me help you|; it tells me where "
    "to start|; that matters here|, truly|].",
    "I can [hear|sense|tell there's|pick up] [the|some|a real|a bit of] {emotion} in [what you just said|how you put "
    "that|your question|your voice][ about {topic_l}|], {first}[, and it makes sense| and it's understandable|; that's a "
    "reasonable place to be|, which is fair|, and I'm glad you said it].",
    "[It takes courage|It's not easy|It says a lot|It means something] to [name|admit to|talk about|bring up] {emotion} "
    "[out loud|openly|this early|with someone you've just met|about money], {first}[, so thank you|, and I'm glad you "
    "did|, especially about {topic_l}|; most people keep that to themselves].",
    "[Feeling|Noticing|Sitting with|Carrying] {emotion} [here|about this|at this point|around {topic_l}] [doesn't "
    "mean|isn't a sign|is no sign] you've [done anything wrong|made a mistake|fallen behind|missed something], {first}"
    "[; it means you care about getting it right|; it usually means this matters to you|; it's a sign you're taking it "
    "seriously|, and we can work with it].",
    "That {emotion} is [worth listening to|telling us something|useful information|a good compass], {first}[, because "
    "it points at| since it shows us| and it tells me|, as it hints at] [the questions to answer first|where to "
    "start|what matters most to you|which part of {topic_l} to tackle first].",
    "{first}, [a lot of|many|plenty of|most] [people|clients|families I work with|couples] [feel|describe|run into|talk "
    "about] {emotion} [at exactly this point|when they first look at {topic_l}|around this stage|when the numbers get "
    "real][, so you're in good company|, and it does pass|, and it usually eases once there's a plan|].",
    "[Let's|I'd like to|We can] [slow down|take a breath|pause] for a [second|moment|minute], {first}[:|;] {emotion} is a "
    "[normal|natural|very human|completely reasonable] [reaction|response|place to be] [when this much is at "
    "stake|when the stakes feel this high|with something this personal|when {topic_l} is on the table].",
    "[I appreciate|I'm glad|It helps] that you [told me about|mentioned|were upfront about|named] the {emotion}, "
    "{first}[; we'll work with it, not around it|; it shapes how we go about {topic_l}|, because it changes where I'd "
    "start|, since it tells me how fast to go].",
    "[Okay|Alright|Right|I hear you], {first}[, so|,|;] there's {emotion} [in the mix|underneath this|behind that "
    "question|around {topic_l}][, and that's fine|, which is worth naming|, and that's good to know|, and we'll make "
    "room for it].",
    "[Honestly|Frankly|Truthfully], {first}, {emotion} [fits|suits|matches] [the moment|the situation|where you "
    "stand] [— money conversations stir things up|; finances are tangled up with family and identity|; few subjects are "
    "as loaded as this one|, given how much rides on {topic_l}].",
    "[You're not alone in|There's nothing unusual about|Nobody should be embarrassed by] [that|this|the] {emotion}, "
    "{first}[; I've sat across from dozens of households wrestling with {topic_l}|; seasoned professionals feel it "
    "too|; it's practically universal with {topic_l}|, believe me].",
    "[Thank you for trusting me with|I'm grateful you shared|I won't brush past] the {emotion}, {first}[; "
    "acknowledging it usually makes the arithmetic easier to absorb|; let's give it some air before any "
    "spreadsheets|, because decisions made while it's unspoken tend to unravel].",
    "[Hearing|Knowing] that you [feel|are feeling|still feel|now feel] {emotion} [helps me|tells me a lot|is "
    "useful|matters], {first}[, because we can pace {topic_l} around it|; let's keep that in view as we go|, and we'll "
    "take it one step at a time|, so thank you for saying so].",
)
#: How the advisor will proceed (no figures; optional after the acknowledgement).
ADVISOR_BRIDGES = (
    "[Let's|Let me|I'd like to|We can] [take|break|walk through|unpack] {topic_l} [one piece at a time|in small "
    "steps|in plain terms|slowly|from the ground up] [so nothing gets lost|so it's easier to hold|so you can see how the "
    "pieces fit|and keep your own numbers in front of us|].",
    "[Before we get to|Ahead of] [any|the] [numbers|details|products|options], I [want|'d like] to [make sure|check|be "
    "sure] we're [looking at|solving|answering] the [right|same] [question|problem] [for {topic_l}|about {concept}|for "
    "you and your family].",
    "[There are|I see] [two|three|a couple of] [parts|pieces|angles] to {topic_l} [here|in your case|worth "
    "separating], and [we can|I'd suggest we|it helps to] [take them in order|start with {concept}|look at each on its "
    "own|begin with the simplest one].",
    "[Nothing|None of this] [has to|needs to] be [decided|settled|locked in] [today|this week|right now] on {topic_l}"
    "[, {first}|]; [the goal|what I want|my aim] [right now |today |]is [clarity|a clear picture|a plan you "
    "understand|a first step you're comfortable with] [on {concept}|for your household|that fits your life].",
)
#: Body sentences. Each uses the conversation's own numbers, the persona's own background
#: (`fact_label` / `fact_value`) and the topic (`topic_l`, `concept`).
ADVISOR_FACTS = (
    "[You mentioned|You told me|From what you've shared,|Looking at your notes,|If I have it right,] [that |]your "
    "{fact_label} [is|comes to|stands at|amounts to] {fact_value}[, which|; that] [gives us|is|makes] a [solid|real|"
    "useful|workable|decent] [starting point|foundation|base|anchor] for {topic_l}.",
    "[If you|Suppose you|Say you|Imagine you] [put|set aside|direct|automate|move] {monthly} a month [toward|into] "
    "[this|{topic_l}|that goal|{concept}] at [an assumed|a conservative|a modest|a middle-of-the-road] {rate} [annual "
    "|]return, [you'd have|that grows to|you're looking at|it builds to] [roughly|about|around|close to] {projection} "
    "[in|after|over] {years} years.",
    "{monthly} a month for {years} years [is|adds up to|comes to|works out to] {contributions} [in contributions "
    "alone|of your own money|before any growth|before a single dollar of return][, which surprises most people|, and "
    "that part is fully in your control|, and it all counts toward {topic_l}|].",
    "[On|With] {income} [a year|of income|coming in|of household income], {monthly} [a month |]is [about|roughly|"
    "around|just under] {share} of [gross|your gross|your] income[, a pace most households can keep up|, which leaves "
    "room for everything else|; sustainable, not heroic|, a sensible share for {topic_l}].",
    "[The key idea|The part that matters most|What tends to matter|The piece people often miss|The heart of it] "
    "[with|in|about|for] {topic_l} is {concept}[, more than anything else|, and it's simpler than it sounds|, at "
    "least for a household like yours|, {first}|].",
    "[When I look at|Thinking about|If we weigh|Turning to] {concept}, [your|the] {fact_label} ({fact_value}) [matters|"
    "changes the picture|is the number I'd keep in mind|is what I'd anchor on] [more than the headlines do|for "
    "{topic_l}|here|most of all].",
    "[Even at|Even if returns are only|At] half of {rate}, [starting from|building on|with] {amount} [and {monthly} a "
    "month |]you'd [still be ahead of|still beat|come out ahead of] [waiting|holding off|doing nothing] [another|a few "
    "more|one more] [year|years|cycle] on {topic_l}.",
    "[A useful|One practical|A simple|A dependable] rule of thumb [for {topic_l} |]is to [keep|hold|park] [three|four|"
    "six] months of [expenses|spending|essentials] [easy to reach|in cash|somewhere boring] before [taking more "
    "risk|investing more|stretching further][, and {amount} already covers part of that|, which for you means "
    "roughly {monthly} a month for a while|].",
    "[In your case|For you|Given your situation], the gap between {rate} and a more [cautious|conservative|"
    "pessimistic] assumption [over {years} years|on {monthly} a month|on {amount}] is [a few hundred dollars a "
    "year|small in any single year|real but manageable], not [a disaster|a crisis|something to lose sleep over].",
    "[Consistency|Showing up every month|A steady habit|Regular saving] [beats|matters more than|outweighs] [timing|"
    "picking the perfect moment|clever moves] [with|for|in] {topic_l}[, especially over {years} years|, which is good "
    "news at {monthly} a month|, and {concept} is where that shows].",
    "[As|Since you're|Being] {who}, [you're|you are] [in a better spot than it feels|further along than you think|not "
    "starting from zero] on {topic_l}[, honestly|, from what I can see|, especially on {concept}].",
    "[What I'd|What I would|The first thing I'd] [look at|check|want to understand] [for {topic_l} |]is {concept}, "
    "[because|since] [it drives|it shapes|everything else follows from] [the rest of the plan|the other "
    "decisions|how much risk makes sense|what {monthly} a month can do].",
    "[Your|The] {fact_label} ({fact_value}) [and|plus] {monthly} a month [give us|make|are] [two|a couple of] "
    "[levers|dials|numbers] we can [actually control|adjust without drama|move as life changes] [on {topic_l}|over "
    "{years} years|].",
    "[Inflation|Rising prices|The slow creep of living costs] [quietly erodes|chips away at|nibbles at] cash, so "
    "[parking|leaving|stashing] [everything|all of] {amount} [idle|in checking|under the mattress] [carries|has] its "
    "own [risk|cost|downside] [for {topic_l}|over {years} years|even if it feels safe].",
    "[Compounding|Growth on growth|Reinvested returns] [does|handles|takes care of] [the heavy lifting|most of the "
    "work|the quiet part] [later|eventually|in the back half]: of the roughly {projection} after {years} years, "
    "{contributions} [comes from|is] your own deposits.",
    "[Taxes|The tax treatment|Which account holds the money] [can matter|often matters|sometimes matters] as much as "
    "[returns|performance|the investment itself] [with|for|in] {topic_l}[, so we'll check the wrappers before the "
    "contents|; a tax-advantaged account can stretch {monthly} a month noticeably|].",
    "[Liquidity|Being able to reach the money quickly|Access in a pinch] [deserves|needs|earns] [a seat at the "
    "table|its own line in the plan|real weight] [because|since|as] [surprises|emergencies|job changes|medical bills] "
    "[rarely|seldom|almost never] [send warning|arrive on schedule|wait politely][, {first}|].",
    "[Diversification|Spreading the money around|Not betting everything on one thing] [keeps|stops] [one bad "
    "year|a single setback|one employer's troubles] from [derailing|sinking|unravelling] {topic_l}[, which "
    "matters when {fact_label} is {fact_value}|, especially over {years} years|].",
    "[Insurance|Adequate coverage|The right policy] [protects|shields|guards] [the plan|your progress|everything "
    "we're building] [against|from] [the things savings can't absorb|a catastrophe|a disability or an early death]"
    "[, so it belongs alongside {topic_l}|; it's cheaper than most people expect|].",
    "[Automating|Scheduling|Setting up] the {monthly} [transfer|deposit|contribution] [for payday|right after "
    "payday|on the first of the month] [removes|takes away|spares you] [the monthly decision|the willpower "
    "part|the temptation to skip it][, and {concept} stays on track|; habits beat heroics|].",
    "[Revisiting|Reviewing|Checking] [the numbers|the assumptions|this plan] [annually|every spring|after any big "
    "change] [keeps|lets] {topic_l} [aligned with|in step with|responsive to] [your life|raises, moves and "
    "milestones|whatever {years} years bring].",
    "[Over|Across] {years} years, the [difference|gap] between [doing nothing|waiting|starting now] and {monthly} a month "
    "[is|comes to] [roughly|about|something like] {projection}[ at {rate}|, assuming {rate}|, before taxes].",
)
#: Questions back to the client (the advisor's last sentence in a middle turn).
ADVISOR_QUESTIONS = (
    "[What|Which] [part|piece] of [that|this|the plan for {topic_l}|the {monthly}-a-month idea|{concept}] [feels|seems] "
    "[most uncertain|least clear|hardest|most uncomfortable] [to you|right now|for you|so far][, {first}|]?",
    "[Does that|Does this|Does any of that] [match|fit|line up with] what you [were picturing|had in mind|expected|"
    "hoped] [for {topic_l}|about {concept}|at {monthly} a month][, {first}|]?",
    "Would it [help|be useful|make it easier] if we [mapped out|sketched|wrote down] the [first|next] [three months|few "
    "weeks|couple of steps] [of {topic_l}|with {monthly} a month|around {concept}] [together|right now|before you "
    "leave]?",
    "How does [that|this|all of that] [land|sit|feel] [for you|with you|so far] [given {concept}|next to your "
    "{fact_label}|with {amount} in mind][, {first}|]?",
    "What would [make|help] [this|{topic_l}|the plan|{monthly} a month|{concept}] [feel|seem|become] [more doable|more "
    "manageable|less heavy|more like yours|easier to stick with] [for you|at home|this year|over {years} years|in a "
    "busy month][, {first}|]?",
    "[Which|What] [of those numbers|part of the math|figure] [on {topic_l}|about {concept}|behind {projection}] would "
    "you like to [look at|go through|test] [more closely|again|together|with different assumptions]?",
    "[Is there|Do you have] [a|any] [worry|question|scenario] [about {topic_l}|about {concept}|around your "
    "{fact_label}] that we [haven't touched yet|should look at next|skipped over][, {first}|]?",
    "[If|Suppose] [money|cash|budget] weren't [a constraint|tight|the issue], [what|which outcome] [would you "
    "prioritise|would matter most|would you protect first] [with {topic_l}|about {concept}|over {years} years]?",
    "[Can you|Could you] [picture|imagine|describe] [a month|a year|the day] when {topic_l} [feels|is] "
    "[finished|settled|handled], and what [changed|happened|you'd notice] [first|along the way]?",
    "[Shall we|Should we|Do you want to] [stress-test|double-check|pressure-test] [the {rate} assumption|the {monthly} "
    "figure|{concept}] [against|with] a [rougher|worse|tougher] [year|scenario|stretch] before [committing|deciding|we "
    "move on]?",
    "[How would|What would] [your family|your partner|the people at home] [think|say] about [this|that approach|a plan "
    "like this] [for {topic_l}|at {monthly} a month|given {concept}]?",
)
#: The last advisor turn: the ending feeling first, then a recap with the figures, then a sign-off.
ADVISOR_CLOSERS = (
    "[I'm really glad|I'm so glad|It's good|It's wonderful] [to hear|that you're feeling|to see] {end} [now|today|"
    "where there was {start}|about {topic_l}], {first}[, and you got there yourself|; that shift matters|].",
    "{first}, you did the hard part [today|in this conversation|this afternoon] by [looking at {topic_l} "
    "directly|facing it|asking the questions][, and that {end} is earned|; the {end} you feel is earned|, and it shows "
    "in the {end} you describe].",
    "[Hold on to|Keep hold of|Remember] that {end}, {first}[; it came from understanding {topic_l}, not luck|, because "
    "you built it yourself today|: it rests on real numbers now|; {start} had every reason to be there, and so does "
    "this].",
    "[Thank you|Thanks] for [trusting me|working through this|sticking with it] on {topic_l}, {first}; [hearing|that "
    "shift to] {end} [in your voice |]is [exactly what I hoped for|the best outcome of today|what matters most].",
)
ADVISOR_RECAPS = (
    "[To recap|So, to sum up|Here's the plan in short|Let me summarise]: [automate|set up|start] {monthly} a month, "
    "[keep|leave] {amount} [where it is|as your base|untouched for now], and [we'll review|we'll revisit|let's check] "
    "{topic_l} [together |]in [six months|the spring|a few months].",
    "[Next steps|Your next steps|What happens next]: [set up|schedule] the {monthly} transfer, [note|write down] the {rate} "
    "assumption, and [check back|we'll talk again|let's review {topic_l}] [after your next pay review|in six "
    "months|before year end].",
    "[Your plan for {topic_l} is simple on purpose|The plan is deliberately simple|Nothing fancy]: {monthly} a month, a "
    "{years}-year horizon, and a check-in [twice a year|every six months|once a year][ on {concept}|].",
    "With {amount} to start and {monthly} a month, you're [on track for|heading toward|looking at] [roughly|about|around] "
    "{projection} in {years} years[ at {rate}|, if returns average {rate}|].",
)
ADVISOR_SIGNOFFS = (
    "[I'll send|You'll get|I'll email] a [written|short|one-page] summary [of {topic_l}|with the {monthly} plan|of what "
    "we covered] [today|tonight|by tomorrow][ so you can share it| with every number we used|].",
    "[Call me|Reach out|Send me a note] [any time|whenever|if] [something changes|questions come up|life shifts the "
    "numbers] [on {topic_l}|with {concept}|before the review][, that's what I'm here for|; we'll adjust together|].",
    "[You've got this|You're ready for this|This is very doable|You're in good shape], {first}[, and I'll be here for "
    "the check-ins on {topic_l}|; {topic_l} is in hand now|, one {monthly} transfer at a time|, with {amount} behind "
    "you|; {concept} no longer has to be a mystery].",
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
