"""xlmrxl.XLMRobertaTokenizer on bad input and bad files: lone surrogates, impossible truncation lengths, bad
argument types, broken ``sentencepiece.bpe.model`` / ``tokenizer_config.json`` files; and a bounded ``hypothesis``
fuzz of the public call against transformers' slow XLMRobertaTokenizer (4.x) where it exists."""

import json
import logging
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xlmrxl.tokenizer import XLMRobertaTokenizer

transformers = pytest.importorskip("transformers")
# transformers 5.x has no sentencepiece "slow" tokenizer: there the fuzz checks only that errors are clear ones
HAS_SLOW = int(transformers.__version__.split(".")[0]) < 5

LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:cfc8146abe2a0488e9e2a0c56de7952f7c11ab059eca145a0a727afce0db2865\n"
    "size 5069051\n"
)


@pytest.fixture(scope="module")
def ours(spm_dir):
    return XLMRobertaTokenizer.from_pretrained(spm_dir)


@pytest.fixture(scope="module")
def slow(spm_dir):
    if not HAS_SLOW:
        return None
    return transformers.XLMRobertaTokenizer.from_pretrained(str(spm_dir))


def _copy(spm_dir, tmp_path):
    d = tmp_path / "tok"
    d.mkdir()
    shutil.copyfile(spm_dir / "sentencepiece.bpe.model", d / "sentencepiece.bpe.model")
    return d


# -- lone surrogates --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, kwargs, where, pos",
    [
        (("ab\ud800c",), {}, "text", 2),
        (("\udcff",), {}, "text", 0),
        ((["fine", "still fine", "x\udc80"],), {}, r"text\[2\]", 1),
        ((["a", "b"], ["c", "dd\ud83d"]), {}, r"text_pair\[1\]", 2),
        (("ok", "p\udfffq"), {}, "text_pair", 1),
        (([("a", "b"), ("\ud800", "c")],), {}, r"text\[1\]\[0\]", 0),
        (([("a", "b"), ("c", "d\ud800")],), {}, r"text\[1\]\[1\]", 1),
    ],
)
def test_lone_surrogate_names_input_and_position(ours, args, kwargs, where, pos):
    # transformers' slow tokenizer fails here with pybind11's "Unable to cast Python instance", the fast one with
    # "TextEncodeInput must be ...": neither says which input or which character
    pattern = rf"^{where} holds a lone surrogate U\+D[89A-F][0-9A-F]{{2}} at position {pos}"
    with pytest.raises(ValueError, match=pattern):
        ours(*args, **kwargs)


def test_lone_surrogate_in_tokenize_and_encode(ours):
    for fn in (ours.tokenize, ours.encode):
        with pytest.raises(ValueError, match="lone surrogate U\\+D800 at position 1.*replace"):
            fn("a\ud800")
    # a surrogate *pair* written as one astral character is fine
    assert ours("\U0001f600")["input_ids"][0] == 0


def test_control_characters_and_nul_are_text(ours, slow):
    for text in ["x\x00y", "a\x07b\x1f", "\x7f", "\u200b\u200e"]:
        got = ours(text)["input_ids"]
        if slow is not None:
            assert got == slow(text)["input_ids"], repr(text)


# -- truncation lengths -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("hello world",), dict(truncation=True, max_length=1), "a text takes 2 special tokens"),
        (("hello world",), dict(truncation=True, max_length=0), "a text takes 2 special tokens"),
        (("hello world",), dict(max_length=1), "max_length >= 2"),  # max_length alone truncates, as transformers
        (("a b", "c d"), dict(truncation=True, max_length=3), "a pair takes 4 special tokens"),
        (("a b", "c d"), dict(truncation="only_second", max_length=2), "a pair takes 4"),
        ((["a", "b c"],), dict(truncation=True, max_length=1, padding=True), "max_length >= 2"),
        (("hello",), dict(truncation=True, max_length=0, add_special_tokens=False), "no tokens would be left"),
    ],
)
def test_truncation_below_special_tokens_raises(ours, args, kwargs, match):
    # transformers 4.56.2 (slow) logs an error and returns the input untruncated here: a silently overlong input
    with pytest.raises(ValueError, match=match):
        ours(*args, **kwargs)


def test_truncation_at_special_token_count(ours, slow):
    # exactly the special tokens: the text is emptied (fast's result; slow refuses, leaving 16 tokens for 2)
    assert ours("hello world foo", truncation=True, max_length=2)["input_ids"] == [0, 2]
    assert ours("hello world", "foo bar", truncation=True, max_length=4)["input_ids"] == [0, 2, 2, 2]
    assert len(ours("hello world", add_special_tokens=False, truncation=True, max_length=1)["input_ids"]) == 1
    if slow is not None:
        assert slow("hello world", "foo bar", truncation=True, max_length=4)["input_ids"] == [0, 2, 2, 2]
    # max_length=0 without truncation (padding only) stays a no-op, as in transformers
    assert ours("hi", max_length=0, padding="longest", truncation=False)["input_ids"] == ours("hi")["input_ids"]


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(max_length="8", truncation=True), TypeError, "max_length must be an int, got str"),
        (dict(max_length=8.5, truncation=True), TypeError, "max_length must be an int, got float"),
        (dict(max_length=True, truncation=True), TypeError, "max_length must be an int, got bool"),
        (dict(max_length=-1), ValueError, "max_length=-1 is out of range"),
        (dict(padding=True, pad_to_multiple_of=0), ValueError, "pad_to_multiple_of=0 is out of range"),
        (dict(padding=True, pad_to_multiple_of="8"), TypeError, "pad_to_multiple_of must be an int"),
        (dict(padding=3), ValueError, "padding=3 is not valid"),
        (dict(truncation=[1]), ValueError, "truncation=\\[1\\] is not valid"),
    ],
)
def test_bad_argument_types(ours, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ours("some text here", **kwargs)


def test_integral_argument_types_accepted(ours):
    import numpy as np

    want = ours("some text here", truncation=True, max_length=4)["input_ids"]
    assert ours("some text here", truncation=True, max_length=np.int64(4))["input_ids"] == want
    assert ours("some text here", truncation=True, max_length=4.0)["input_ids"] == want
    assert ours("some text here", truncation=True, max_length=torch.tensor(4))["input_ids"] == want


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["nested"]])
def test_non_string_text_names_index(ours, bad):
    with pytest.raises(TypeError, match=rf"text\[1\] is {type(bad).__name__}"):
        ours(["fine", bad])
    with pytest.raises(TypeError, match=rf"text_pair\[0\] is {type(bad).__name__}"):
        ours(["fine"], [bad])


# -- broken files -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "is empty \\(0 bytes\\)"),
        (LFS_POINTER.encode(), "is a git-LFS pointer.*git lfs pull"),
        (b"\x00\x13garbage\xff" * 40, "is not a SentencePiece model: sentencepiece could not parse it"),
        (b"<!DOCTYPE html><html><body>Sign in</body></html>", "looks like an HTML page"),
    ],
)
def test_broken_sentencepiece_model_names_file(tmp_path, content, match):
    d = tmp_path / "ckpt"
    d.mkdir()
    model = d / "sentencepiece.bpe.model"
    model.write_bytes(content)
    for load in (lambda: XLMRobertaTokenizer.from_pretrained(d), lambda: XLMRobertaTokenizer(model)):
        with pytest.raises(ValueError, match=match) as info:
            load()
        assert str(model) in str(info.value)


def test_sentencepiece_model_path_is_a_directory(tmp_path):
    (tmp_path / "sentencepiece.bpe.model").mkdir()
    with pytest.raises(FileNotFoundError, match="is a directory"):
        XLMRobertaTokenizer(tmp_path / "sentencepiece.bpe.model")


@pytest.mark.parametrize(
    "name, content, exc, match",
    [
        ("tokenizer_config.json", b'{"model_max_length": 512,', ValueError, "is not valid JSON: .* line 1, column"),
        ("tokenizer_config.json", b"[1, 2]", ValueError, "must hold a JSON object .* but holds an array"),
        ("tokenizer_config.json", b'"text"', ValueError, "but holds a string"),
        ("tokenizer_config.json", b"null", ValueError, "but holds null"),
        ("tokenizer_config.json", b"", ValueError, "is not valid JSON"),
        ("tokenizer_config.json", b"\xff\xfe{}", ValueError, "is not UTF-8 text"),
        ("tokenizer_config.json", LFS_POINTER.encode(), ValueError, "git-LFS pointer"),
        ("tokenizer_config.json", b'{"model_max_length": "512"}', TypeError, "model_max_length in .* must be an int"),
        ("tokenizer_config.json", b'{"model_max_length": -5}', ValueError, "model_max_length=-5 in .* out of range"),
        ("tokenizer_config.json", b'{"padding_side": "up"}', ValueError, "padding_side='up' in .* not valid"),
        ("tokenizer_config.json", b'{"clean_up_tokenization_spaces": "yes"}', TypeError, "true or false"),
        ("special_tokens_map.json", b"{not json}", ValueError, "is not valid JSON"),
        ("special_tokens_map.json", b"[]", ValueError, "but holds an array"),
    ],
)
def test_broken_json_names_file(spm_dir, tmp_path, name, content, exc, match):
    d = _copy(spm_dir, tmp_path)
    (d / name).write_bytes(content)
    with pytest.raises(exc, match=match) as info:
        XLMRobertaTokenizer.from_pretrained(d)
    assert str(d / name) in str(info.value)


def test_good_json_still_loads(spm_dir, tmp_path):
    d = _copy(spm_dir, tmp_path)
    (d / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1e30, "padding_side": "left"}))
    (d / "special_tokens_map.json").write_text(json.dumps({"mask_token": {"content": "<mask>", "lstrip": True}}))
    tok = XLMRobertaTokenizer.from_pretrained(d)
    assert tok.padding_side == "left" and tok.model_max_length == int(1e30)


# -- fuzz -------------------------------------------------------------------------------------------------------
_CHARS = st.one_of(
    st.characters(),  # any code point but surrogates
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),  # lone surrogates
    st.characters(max_codepoint=0x1F),  # controls
    st.sampled_from(["<mask>", "<s>", "</s>", "<pad>", "<unk>", " ", "  ", "\t", "\n", "\u2581", "\u00a0", "é"]),
    st.sampled_from(list("abcdefghij .,!?")),
)
TEXT = st.lists(_CHARS, max_size=12).map("".join)
JUNK = st.sampled_from([None, 7, b"bytes", ["nested"]])
ONE = st.one_of(TEXT, TEXT, TEXT, JUNK)
INPUTS = st.one_of(
    st.tuples(ONE),  # one text
    st.tuples(ONE, ONE),  # a pair
    st.tuples(st.lists(ONE, max_size=3)),  # a batch
    st.lists(ONE, min_size=1, max_size=3).flatmap(  # a batch with a text_pair list (sometimes of another length)
        lambda xs: st.tuples(st.just(xs), st.lists(ONE, min_size=len(xs) - 1, max_size=len(xs) + 1))
    ),
    st.tuples(st.lists(st.tuples(ONE, ONE), min_size=1, max_size=3)),  # a batch of (text, pair) tuples
)
KWARGS = st.fixed_dictionaries(
    {},
    optional={
        "padding": st.sampled_from([False, True, "longest", "max_length", "do_not_pad", None, "sideways", 2]),
        "truncation": st.sampled_from(
            [None, False, True, "longest_first", "only_first", "only_second", "do_not_truncate", "middle"]
        ),
        "max_length": st.one_of(st.integers(-2, 24), st.sampled_from([None, "8", 8.5, True])),
        "pad_to_multiple_of": st.one_of(st.none(), st.integers(-1, 8)),
        "add_special_tokens": st.booleans(),
        "return_attention_mask": st.sampled_from([None, True, False]),
        "return_token_type_ids": st.sampled_from([None, True, False]),
        "return_special_tokens_mask": st.booleans(),
        "return_length": st.booleans(),
        "return_tensors": st.sampled_from([None, None, "pt", "np"]),
        "padding_side": st.sampled_from([None, "left", "right"]),
        "verbose": st.booleans(),
    },
)


def _valid_text(x) -> bool:
    if isinstance(x, str):
        try:
            x.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(x, (list, tuple)):
        return all(_valid_text(v) for v in x)
    return x is None


def _plain(enc) -> dict:
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in dict(enc).items()}


def _lengths(ids) -> list[int]:
    return [len(r) for r in ids] if ids and isinstance(ids[0], list) else [len(ids)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=INPUTS, kwargs=KWARGS)
def test_fuzz_call(ours, slow, args, kwargs):
    """Ids equal to transformers' slow tokenizer, or a ValueError / TypeError with a message: never another
    exception. Where they differ, slow must have failed to honour max_length (it logs and returns the input
    untruncated when a truncation empties a side exactly, or when max_length is below the special tokens)."""
    logging.disable(logging.CRITICAL)  # slow and ours both log warnings on many of these inputs
    try:
        try:
            got = _plain(ours(*args, **kwargs))
        except (ValueError, TypeError) as exc:
            assert str(exc), f"empty {type(exc).__name__} message for {args!r} {kwargs!r}"
            return
        if slow is None or not _valid_text(args):
            assert _valid_text(args), f"accepted invalid text {args!r}"
            return
        # where we return ids, the text was valid: slow must give the same ids, or have left max_length unmet
        try:
            want = _plain(slow(*args, **kwargs))
        except (ValueError, TypeError, ZeroDivisionError):
            # slow defines no ids here and we are more lenient: an empty batch (we return empty lists),
            # padding=None (we read it as False), token_type_ids without special tokens (we return zeros)
            return
        if got != want:
            limit = kwargs.get("max_length")
            assert limit is not None and kwargs.get("truncation") not in (False, "do_not_truncate"), (args, kwargs)
            assert max(_lengths(got["input_ids"])) <= limit < max(_lengths(want["input_ids"])), (
                f"ours {got} vs slow {want} for {args!r} {kwargs!r}"
            )
    finally:
        logging.disable(logging.NOTSET)
