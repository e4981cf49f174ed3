"""XLM-RoBERTa tokenizer on ``sentencepiece``, id-for-id equal to transformers' slow one (contract: tokenizer.py)."""

from .tokenizer import CORPUS_PATH, BatchEncoding, XLMRobertaTokenizer, train_sentencepiece

__all__ = ["CORPUS_PATH", "BatchEncoding", "XLMRobertaTokenizer", "train_sentencepiece"]
