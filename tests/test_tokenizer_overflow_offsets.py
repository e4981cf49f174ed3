"""Honour or refuse (issue 18), the fast tokenizer's part: ``return_overflowing_tokens`` with ``stride`` (every
window, ``overflow_to_sample_mapping``, ``sequence_ids``) and ``return_offsets_mapping`` against transformers
4.56.2's fast XLM-R tokenizer built from the same files (the slow one has no windows and no offsets), including
transformers' question-answering recipe and a fuzz of offsets on odd text."""

import logging

import pytest
from _tok_cases import LONG, PAIRS, SHORT, WORDS, plain, same
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xlmrxl.tokenizer import XLMRobertaTokenizer
from xlmrxl.tokenizer.checks import UnsupportedArgument

transformers = pytest.importorskip("transformers")
if int(transformers.__version__.split(".")[0]) >= 5:
    pytest.skip("the oracle is transformers 4.x's fast tokenizer (5.x changed its offsets)", allow_module_level=True)


@pytest.fixture(scope="module")
def toks(spm_dir):
    slow = transformers.XLMRobertaTokenizer.from_pretrained(str(spm_dir))
    fast = transformers.XLMRobertaTokenizerFast.from_pretrained(str(spm_dir))
    return XLMRobertaTokenizer.from_pretrained(spm_dir), slow, fast


# -- fast-only behaviour: overflowing windows, offsets ------------------------------------------------------------
OVERFLOW = [
    dict(truncation=True, max_length=16, stride=4),
    dict(truncation=True, max_length=16, stride=0),
    dict(truncation="longest_first", max_length=9, stride=2, padding=True),
    dict(truncation=True, max_length=12, stride=3, padding=True, return_tensors="pt", return_length=True),
    dict(truncation=True, max_length=12, stride=3, return_special_tokens_mask=True, return_offsets_mapping=True),
    dict(truncation=True, max_length=20, stride=5, padding="max_length", return_tensors="np"),
    dict(truncation=True, max_length=10, stride=1, add_special_tokens=False),
    dict(truncation=False, max_length=10, stride=1),
    dict(max_length=10, stride=1),
]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("kw", OVERFLOW, ids=[str(i) for i in range(len(OVERFLOW))])
def test_overflow_matches_fast(toks, kw, side):
    ours, _, fast = toks
    ours.truncation_side = fast.truncation_side = side
    logging.disable(logging.WARNING)
    try:
        for text in [LONG[1], LONG, SHORT[:4], LONG[6]]:
            same(ours(text, return_overflowing_tokens=True, **kw), fast(text, return_overflowing_tokens=True, **kw), kw)
        for trunc in ("only_first", "only_second"):
            for a, b in PAIRS:
                k = dict(kw, truncation=trunc, max_length=kw["max_length"] + 30) if kw.get("truncation") else kw
                w = fast(a, b, return_overflowing_tokens=True, **k) if _fast_ok(fast, a, b, k) else None
                longest = "truncation" not in k and len(fast(a, b)["input_ids"]) > k["max_length"]
                if w is None or longest:  # a pair under longest_first: slow refuses, fast multiplies the windows
                    with pytest.raises(ValueError):
                        ours(a, b, return_overflowing_tokens=True, **k)
                else:
                    same(ours(a, b, return_overflowing_tokens=True, **k), w, (k, a[:10]))
    finally:
        ours.truncation_side = fast.truncation_side = "right"
        logging.disable(logging.NOTSET)


def _fast_ok(fast, a, b, kw) -> bool:
    try:
        fast(a, b, return_overflowing_tokens=True, **kw)
    except BaseException as exc:  # the fast tokenizer panics (pyo3 PanicException) on some of these
        if isinstance(exc, KeyboardInterrupt):
            raise
        return False
    return True


def test_overflow_refusals(toks):
    ours, slow, _ = toks
    with pytest.raises(ValueError, match="longest_first"):  # slow refuses it too
        slow(*PAIRS[0], truncation=True, max_length=20, stride=2, return_overflowing_tokens=True)
    with pytest.raises(ValueError, match="longest_first"):
        ours(*PAIRS[0], truncation=True, max_length=20, stride=2, return_overflowing_tokens=True)
    with pytest.raises(ValueError, match="stride=6"):
        ours(LONG[0], truncation=True, max_length=8, stride=6, return_overflowing_tokens=True)
    with pytest.raises(ValueError, match="text_pair"):
        ours(LONG[0], truncation="only_second", max_length=8, return_overflowing_tokens=True)
    with pytest.raises(ValueError, match="stride=9"):  # fast checks it even where nothing overflows
        ours("short", truncation=True, max_length=10, stride=9, return_overflowing_tokens=True)
    assert len(ours("short", truncation=True, max_length=10, stride=8, return_overflowing_tokens=True).input_ids) == 1
    with pytest.raises(ValueError, match="stride=-1 is out of range"):
        ours(LONG[0], truncation=True, max_length=8, stride=-1, return_overflowing_tokens=True)


def test_overflow_keeps_every_token(toks):
    ours, _, _ = toks
    full = ours(LONG[0], add_special_tokens=False)["input_ids"]
    enc = ours(LONG[0], truncation=True, max_length=10, stride=3, return_overflowing_tokens=True)
    rows = [r[1:-1] for r in enc["input_ids"]]
    rebuilt = rows[0] + [t for r in rows[1:] for t in r[3:]]
    assert rebuilt == full and enc["overflow_to_sample_mapping"] == [0] * len(rows)


OFFSET_TEXTS = (
    LONG
    + SHORT
    + [
        "Hello world",
        "a  b   c    d",
        "\tTabs\tand  double  spaces ",
        "nb\u00a0sp and zero\u200bwidth and ideographic\u3000space",
        "full-width ＡＢＣ １２３ and ligature ﬁ",
        "a <mask> b <mask><mask> c",
        "Hello<mask>!",
        "<s> a </s> b <pad> <unk>",
        "x <mask>. y <mask>",
        "Pizza 🍕 👨\u200d👩\u200d👧\u200d👦 👍🏽",
        "``quoted'' and \"quoted\"",
        " ",
        "   ",
        "\u2581already",
        "line\nbreaks\r\nhere and a\r\n\r\nb",
        "soft\u00adhyphen \u00adstart a\u0000b\u0007c x\ufe0f y 👍🏽",
        "Ame\u0301lie n\u0303 x\u0301\u0302\u0303\u0304 \u200d\u200dx Å Ω ℃ ½ ①②",
        "   a   \u3000\u3000a a \u00a0 b a\u200b\u200bb",
        "<mask> x",
        " <mask>",
        "\t<mask>",
    ]
)
# where the fast tokenizer normalizes otherwise than sentencepiece (its ids differ from ours): no exact offsets exist
# for our tokens, and they are refused
UNREACHABLE = ["ﬁ\u0301 x", "ｶﾞ", "a\u0308\u0301b", "o\u0308\u0308"]
# the same for a normalized text that differs where the ids happen to agree (conjoining jamo: sentencepiece composes
# them into one syllable, fast keeps three chars; both make one <unk>): refused too
UNSURE = ["\u1100\u1161\u11a8 한국어"]


def test_offsets_match_fast(toks):
    ours, _, fast = toks
    for t in OFFSET_TEXTS:
        same(ours(t, return_offsets_mapping=True), fast(t, return_offsets_mapping=True), t)
    for t in UNREACHABLE + UNSURE:
        assert fast(t)["input_ids"] != ours(t)["input_ids"] or t in UNSURE, t
        with pytest.raises(UnsupportedArgument, match="return_offsets_mapping"):
            ours(t, return_offsets_mapping=True)
    for kw in (dict(padding=True), dict(padding=True, return_tensors="pt"), dict(truncation=True, max_length=9)):
        same(ours(LONG[:3], return_offsets_mapping=True, **kw), fast(LONG[:3], return_offsets_mapping=True, **kw), kw)
    a, b = PAIRS[1]
    same(ours(a, b, return_offsets_mapping=True), fast(a, b, return_offsets_mapping=True), "pair")
    with pytest.raises(TypeError, match="return_offsets_mapping"):
        ours(WORDS[0], is_split_into_words=True, return_offsets_mapping=True)


# -- fuzz: offsets on odd text -----------------------------------------------------------------------------------
_CHARS = st.one_of(
    st.characters(exclude_categories=("Cs",)),
    st.sampled_from(["<mask>", "</s>", " ", "  ", "\t", "\n", "\r\n", "\u2581", "\u00a0", "e\u0301", "ﬁ", "Ａ"]),
    st.sampled_from(["\u200b", "\u00ad", "\x14", "\x85", "🏽", "\u200d", "한", "\u1100\u1161"]),
    st.sampled_from(list("abcdefghij .,!?")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.lists(_CHARS, max_size=16).map("".join))
def test_fuzz_offsets_exact_or_refused(toks, text):
    """Fast's offsets wherever our ids are fast's; otherwise a refusal naming return_offsets_mapping (or, where the
    ids differ, offsets of our own tokens)."""
    ours, _, fast = toks
    want = fast(text, return_offsets_mapping=True)
    try:
        got = ours(text, return_offsets_mapping=True)
    except UnsupportedArgument as exc:
        assert "return_offsets_mapping" in str(exc)
        return
    if got["input_ids"] == want["input_ids"]:
        assert plain(got["offset_mapping"]) == plain(want["offset_mapping"]), text
    assert len(got["offset_mapping"]) == len(got["input_ids"])


def test_question_answering_preprocessing_matches_fast(toks):
    """transformers' QA recipe: question + context, only_second, stride, overflow, offsets, padding, and
    ``sequence_ids(i)`` of each window to find the context's tokens."""
    ours, _, fast = toks
    questions = ["Where does the bakery open?", "Wer fährt?", SHORT[1]]
    contexts = [LONG[0], LONG[2], LONG[4]]
    kw = dict(max_length=40, truncation="only_second", stride=6, return_overflowing_tokens=True)
    kw.update(return_offsets_mapping=True, padding="max_length")
    for side in ("right", "left"):
        got, want = (
            ours(questions, contexts, padding_side=side, **kw),
            fast(questions, contexts, padding_side=side, **kw),
        )
        same(got, want, side)
        assert [got.sequence_ids(i) for i in range(len(want["input_ids"]))] == [
            want.sequence_ids(i) for i in range(len(want["input_ids"]))
        ]
    assert (
        ours(LONG[0], SHORT[0], add_special_tokens=False).sequence_ids()
        == fast(LONG[0], SHORT[0], add_special_tokens=False).sequence_ids()
    )
    with pytest.raises(ValueError, match="sequence_ids"):
        ours.pad(ours(LONG[:2])).sequence_ids(0)
