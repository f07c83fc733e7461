"""GLIPv2's understanding tasks on the shared grounded trunk: VQA and image captioning."""

from .captioning import CaptionHead, beam_search, greedy_search
from .vqa import VQAHead

__all__ = ["CaptionHead", "VQAHead", "beam_search", "greedy_search"]
