from .bert_backbone import BertLanguageBackbone
from .build import LANGUAGE_BACKBONE_REGISTRY, build_language_backbone

__all__ = ["LANGUAGE_BACKBONE_REGISTRY", "BertLanguageBackbone", "build_language_backbone"]
