"""XLM-RoBERTa tokenizer on ``sentencepiece``, id-for-id equal to transformers' slow one (contract: tokenizer.py)."""

from .checks import UnsupportedArgument
from .decoding import clean_up_tokenization
from .encoding import BatchEncoding
from .files import SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE, VOCAB_FILE
from .tokenizer import XLMRobertaTokenizer
from .training import CORPUS_PATH, train_sentencepiece

__all__ = [
    "CORPUS_PATH",
    "SPECIAL_TOKENS_MAP_FILE",
    "TOKENIZER_CONFIG_FILE",
    "UnsupportedArgument",
    "VOCAB_FILE",
    "BatchEncoding",
    "XLMRobertaTokenizer",
    "clean_up_tokenization",
    "train_sentencepiece",
]
