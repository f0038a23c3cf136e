"""Pydantic models of every JSON shape the pipeline reads or writes."""

from __future__ import annotations

from pydantic import BaseModel

from lora_assets.schemas.conversation import (
    ConversationMetadata,
    EmotionalContext,
    InputParameters,
    ParsedConversation,
    RawConversation,
    Turn,
)
from lora_assets.schemas.rows import (
    BatchItemPlan,
    BatchJobStatus,
    BatchSelection,
    EnrichmentStatus,
    GenerationRecord,
    ItemStatus,
    OpenSubmission,
    ParseStatus,
    TrainingFileStatus,
    Usage,
)
from lora_assets.schemas.scaffolding import (
    ConsultantProfile,
    EmotionalArc,
    Persona,
    PromptTemplate,
    ResolvedScaffolding,
    ScaffoldingBundle,
    TrainingTopic,
    scaffolding_id,
)
from lora_assets.schemas.training import (
    EnrichedConversation,
    PairConversationMetadata,
    TrainingFileDocument,
    TrainingFileLine,
    TrainingMetadata,
    TrainingPair,
)

#: Names accepted by `lora-assets schema NAME`.
SCHEMAS: dict[str, type[BaseModel]] = {
    "persona": Persona,
    "emotional-arc": EmotionalArc,
    "training-topic": TrainingTopic,
    "prompt-template": PromptTemplate,
    "consultant-profile": ConsultantProfile,
    "scaffolding-bundle": ScaffoldingBundle,
    "raw-conversation": RawConversation,
    "parsed-conversation": ParsedConversation,
    "enriched-conversation": EnrichedConversation,
    "training-file": TrainingFileDocument,
    "training-file-line": TrainingPair,
}

__all__ = [
    "SCHEMAS",
    "BatchItemPlan",
    "BatchJobStatus",
    "BatchSelection",
    "ConsultantProfile",
    "ConversationMetadata",
    "EmotionalArc",
    "EmotionalContext",
    "EnrichedConversation",
    "EnrichmentStatus",
    "GenerationRecord",
    "InputParameters",
    "ItemStatus",
    "OpenSubmission",
    "PairConversationMetadata",
    "ParseStatus",
    "ParsedConversation",
    "Persona",
    "PromptTemplate",
    "RawConversation",
    "ResolvedScaffolding",
    "ScaffoldingBundle",
    "TrainingFileDocument",
    "TrainingFileLine",
    "TrainingFileStatus",
    "TrainingMetadata",
    "TrainingPair",
    "TrainingTopic",
    "Turn",
    "Usage",
    "scaffolding_id",
]
