from .attention import FUSION_ATTENTION_IMPLS, get_fusion_attention, register_fusion_attention
from .bert_layer import BertFusionLayer
from .bi_attention import BiAttentionBlock, BiMultiHeadAttention, VLFuse
from .tower import DenseHeadOutputs, FusionSpec, VLDyHead

__all__ = [
    "BertFusionLayer",
    "BiAttentionBlock",
    "BiMultiHeadAttention",
    "DenseHeadOutputs",
    "FUSION_ATTENTION_IMPLS",
    "FusionSpec",
    "VLDyHead",
    "VLFuse",
    "get_fusion_attention",
    "register_fusion_attention",
]
