from .bert_layer import BertFusionLayer
from .bi_attention import BiAttentionBlock, BiMultiHeadAttention, VLFuse

__all__ = ["BertFusionLayer", "BiAttentionBlock", "BiMultiHeadAttention", "VLFuse"]
