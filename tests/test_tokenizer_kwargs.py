"""Honour or refuse (issue 18): every keyword argument transformers 4.56.2's XLM-R tokenizers take in ``__call__``,
``encode``, ``encode_plus``, ``batch_encode_plus``, ``pad``, ``decode``, ``batch_decode`` and ``tokenize`` (read from
their signatures, so a new one fails here until it has a case) gives transformers' result on real multilingual
sentences, or raises a TypeError naming it. The oracle is the slow tokenizer, which ours mirrors, except for what
only the fast one does (overflowing windows with ``overflow_to_sample_mapping``, offsets)."""

import inspect
import logging
from pathlib import Path

import pytest
from _tok_cases import LONG, PAIRS, SHORT, WORDS, same

from xlmrxl.tokenizer import XLMRobertaTokenizer

transformers = pytest.importorskip("transformers")
if int(transformers.__version__.split(".")[0]) >= 5:
    pytest.skip("the oracle is transformers 4.x's slow (sentencepiece) tokenizer", allow_module_level=True)

METHODS = ["__call__", "encode", "encode_plus", "batch_encode_plus", "pad", "decode", "batch_decode", "tokenize"]
HELPERS = [
    "get_special_tokens_mask",
    "build_inputs_with_special_tokens",
    "create_token_type_ids_from_sequences",
    "convert_ids_to_tokens",
    "from_pretrained",
    "save_pretrained",
    "prepare_for_model",
]
# keywords transformers reads from **kwargs (documented, not in the signatures)
HIDDEN = {
    "__call__": ["split_special_tokens"],
    "encode_plus": ["split_special_tokens"],
    "decode": ["spaces_between_special_tokens", "use_source_tokenizer"],
    "batch_decode": ["spaces_between_special_tokens", "use_source_tokenizer"],
    "tokenize": ["split_special_tokens", "is_split_into_words"],
}
POSITIONAL = {"self", "kwargs", "text", "text_pair", "batch_text_or_text_pairs", "encoded_inputs", "token_ids"}
POSITIONAL |= {"save_directory", "sequences", "token_ids_0", "token_ids_1", "ids", "init_inputs"}
POSITIONAL |= {"pretrained_model_name_or_path", "pair_ids"}


@pytest.fixture(scope="module")
def toks(spm_dir):
    slow = transformers.XLMRobertaTokenizer.from_pretrained(str(spm_dir))
    fast = transformers.XLMRobertaTokenizerFast.from_pretrained(str(spm_dir))
    return XLMRobertaTokenizer.from_pretrained(spm_dir), slow, fast


def kwargs_of(method: str) -> list[str]:
    names = []
    for cls in (transformers.XLMRobertaTokenizer, transformers.XLMRobertaTokenizerFast):
        names += [p for p in inspect.signature(getattr(cls, method)).parameters if p not in POSITIONAL]
    names += HIDDEN.get(method, [])
    return sorted(set(names))


def inputs():
    """(args, label) of single texts, pairs and batches of both."""
    yield (LONG[1],), "single"
    yield PAIRS[0], "pair"
    yield (LONG + SHORT,), "batch"
    yield ([a for a, _ in PAIRS], [b for _, b in PAIRS]), "batch of pairs"


# -- the cases: kwarg -> the keyword sets it is tried with ------------------------------------------------------
SLOW_CASES = {
    "add_special_tokens": [dict(add_special_tokens=False), dict(add_special_tokens=True)],
    "padding": [dict(padding=True), dict(padding="longest"), dict(padding="max_length", max_length=90)],
    "truncation": [
        dict(truncation=t, max_length=n) for t in (True, "longest_first", "only_first", False) for n in (12, 40)
    ],
    "max_length": [dict(max_length=20), dict(max_length=33, truncation=True, padding="max_length")],
    "pad_to_multiple_of": [dict(padding=True, pad_to_multiple_of=8), dict(padding=True, pad_to_multiple_of=5)],
    "padding_side": [dict(padding=True, padding_side="left"), dict(padding=True, padding_side="right")],
    "return_tensors": [dict(padding=True, return_tensors=t) for t in ("pt", "np", None)],
    "return_token_type_ids": [dict(return_token_type_ids=v, padding=True) for v in (True, False, None)],
    "return_attention_mask": [dict(return_attention_mask=v, padding=True) for v in (True, False, None)],
    "return_special_tokens_mask": [dict(return_special_tokens_mask=True, padding=True, truncation=True, max_length=20)],
    "return_length": [dict(return_length=True), dict(return_length=True, padding=True)],
    "verbose": [dict(verbose=False), dict(verbose=True, truncation=True, max_length=30)],
    "split_special_tokens": [dict(split_special_tokens=True), dict(split_special_tokens=False)],
    "stride": [dict(stride=3, truncation=True, max_length=16)],  # without overflow stride changes nothing
}


@pytest.mark.parametrize("method", METHODS + HELPERS)
def test_every_transformers_kwarg_has_a_case(method):
    covered = set(SLOW_CASES) | set(SPECIAL)
    missing = [k for k in kwargs_of(method) if k not in covered]
    assert not missing, f"{method}: no honour-or-refuse case for {missing}"


@pytest.mark.parametrize("kwarg", sorted(SLOW_CASES))
def test_call_kwarg_matches_slow(toks, kwarg):
    ours, slow, _ = toks
    logging.disable(logging.WARNING)
    try:
        for kw in SLOW_CASES[kwarg]:
            for args, label in inputs():
                if kw.get("return_tensors") and "padding" not in kw:
                    continue
                if kw.get("truncation") == "only_first" and label in ("single", "batch"):
                    continue
                if kwarg == "split_special_tokens" and label.startswith("batch"):
                    # slow honours split_special_tokens for one input only (its batch path drops it), fast never:
                    # ours honours it everywhere, so a batch equals its inputs one by one
                    want = [slow(*one, **kw)["input_ids"] for one in zip(*args)]
                    assert ours(*args, **kw)["input_ids"] == want
                    continue
                same(ours(*args, **kw), slow(*args, **kw), (kwarg, kw, label))
                if label in ("single", "pair"):
                    same(ours.encode_plus(*args, **kw), slow.encode_plus(*args, **kw), ("encode_plus", kw, label))
                    enc_kw = {k: v for k, v in kw.items() if k != "return_tensors" or v is not None}
                    same(ours.encode(*args, **enc_kw), slow.encode(*args, **enc_kw), ("encode", kw, label))
                else:
                    batch = list(zip(*args)) if len(args) == 2 else args[0]
                    want = slow.batch_encode_plus(batch, **kw)
                    same(ours.batch_encode_plus(batch, **kw), want, ("batch_encode_plus", kw, label))
    finally:
        logging.disable(logging.NOTSET)


def test_only_second(toks):
    ours, slow, _ = toks
    for n in (12, 30):
        for a, b in PAIRS:
            kw = dict(truncation="only_second", max_length=n)
            same(ours(a, b, **kw), slow(a, b, **kw), n)


def test_padding_side_per_call_overrides_the_setting(toks):
    ours, slow, _ = toks
    got = ours(LONG[:3], padding=True, padding_side="left")
    assert got["input_ids"][1][0] == ours.pad_token_id and ours.padding_side == "right"
    with pytest.raises(ValueError, match="padding_side='middle'"):
        ours("x", padding=True, padding_side="middle")


# -- the others ------------------------------------------------------------------------------------------------
def test_is_split_into_words(toks):
    ours, slow, fast = toks
    for args in ((WORDS[0],), (WORDS,), (WORDS[0], WORDS[1]), (WORDS, WORDS[::-1])):
        for kw in (dict(), dict(padding=True, return_tensors="pt"), dict(truncation=True, max_length=8)):
            same(ours(*args, is_split_into_words=True, **kw), slow(*args, is_split_into_words=True, **kw), (args, kw))
            same(ours(*args, is_split_into_words=True, **kw), fast(*args, is_split_into_words=True, **kw), (args, kw))
    assert ours.encode(WORDS[0], is_split_into_words=True) == slow.encode(WORDS[0], is_split_into_words=True)
    assert ours.tokenize(LONG[0], is_split_into_words=True) == slow.tokenize(LONG[0], is_split_into_words=True)


def test_text_target(toks):
    ours, slow, fast = toks
    for kw in (dict(), dict(padding=True, truncation=True, max_length=12, return_tensors="pt")):
        for tok in (slow, fast):
            same(ours(LONG[:2], text_target=SHORT[:2], **kw), tok(LONG[:2], text_target=SHORT[:2], **kw), kw)
            same(ours(text_target=LONG[2], **kw), tok(text_target=LONG[2], **kw), kw)
            got = ours(LONG[0], SHORT[0], text_target=LONG[1], text_pair_target=SHORT[1], **kw)
            same(got, tok(LONG[0], SHORT[0], text_target=LONG[1], text_pair_target=SHORT[1], **kw), kw)
    with pytest.raises(ValueError, match="text_target"):
        ours()
    with pytest.raises(ValueError, match="text_pair_target"):  # transformers drops it silently
        ours(LONG[0], text_pair_target=SHORT[0])


def test_transformers5_keywords(toks):
    """transformers 5's ``tokenizer_kwargs`` (a dict of more keywords, winning over the others) and
    ``max_target_length`` (the labels' max_length; 4.56 ignores it): as 5.x does them."""
    ours, slow, _ = toks
    for kw in (dict(padding="max_length", max_length=40), dict(truncation=True, max_length=9, padding_side="left")):
        same(ours(LONG[:3], padding=True, tokenizer_kwargs=kw), slow(LONG[:3], **dict(dict(padding=True), **kw)), kw)
    with pytest.raises(TypeError, match="not_a_kwarg"):
        ours(LONG[0], tokenizer_kwargs={"not_a_kwarg": 1})
    for kw in (dict(truncation=True, max_length=12), dict(padding="max_length", truncation=True, max_length=12), {}):
        got = ours(LONG[:2], text_target=LONG[2:4], max_target_length=7, **kw)
        labels = [r[:6] + [2] if kw else r for r in slow(LONG[2:4])["input_ids"]]  # no truncation asked: none
        same(got, dict(slow(LONG[:2], **kw), labels=labels), kw)


def test_pad(toks):
    ours, slow, _ = toks
    rows = ours(LONG[:4], return_special_tokens_mask=True, return_token_type_ids=True)
    listed = [{k: v[i] for k, v in rows.items()} for i in range(4)]
    cases = [
        dict(),
        dict(padding="max_length", max_length=70),
        dict(pad_to_multiple_of=16),
        dict(padding_side="left"),
        dict(return_attention_mask=False),
        dict(return_tensors="pt"),
        dict(return_tensors="np", padding_side="left"),
        dict(padding=False),
        dict(verbose=False),
    ]
    for kw in cases:
        for data in (rows, listed, listed[0]):
            same(ours.pad(data, **kw), slow.pad(data, **kw), kw)
    tensors = ours(LONG[:2], padding=True, return_tensors="pt")
    same(ours.pad(tensors), slow.pad(tensors), "tensors in")
    for data in ({"input_ids": []}, [{"input_ids": [0, 5, 2], "labels": [1, 2]}, {"input_ids": [0, 2], "labels": [3]}]):
        for kw in (dict(), dict(return_attention_mask=True), dict(padding="max_length", max_length=6)):
            same(ours.pad(data, **kw), slow.pad(data, **kw), (data, kw))
    limited = XLMRobertaTokenizer.from_pretrained(ours.vocab_file, model_max_length=40)
    slow40 = transformers.XLMRobertaTokenizer.from_pretrained(str(Path(ours.vocab_file).parent), model_max_length=40)
    same(limited.pad(rows, padding="max_length"), slow40.pad(rows, padding="max_length"), "model_max_length")


def test_decode_kwargs(toks):
    ours, slow, _ = toks
    ids = ours(LONG[:3] + SHORT[:2], padding=True)["input_ids"]
    for kw in (
        dict(skip_special_tokens=True),
        dict(clean_up_tokenization_spaces=True),
        dict(spaces_between_special_tokens=False),
        dict(use_source_tokenizer=True),
    ):
        assert ours.batch_decode(ids, **kw) == slow.batch_decode(ids, **kw), kw
        assert ours.decode(ids[0], **kw) == slow.decode(ids[0], **kw), kw


def test_tokenize_kwargs(toks):
    ours, slow, fast = toks
    for t in LONG[:2] + SHORT[:2] + ["a <mask> b</s>"]:
        assert ours.tokenize(t, split_special_tokens=True) == slow.tokenize(t, split_special_tokens=True), t
        assert ours.tokenize(t) == slow.tokenize(t), t
        # pair / add_special_tokens are fast-only; fast spells a special token with the whitespace its lstrip took
        # (" <mask>"), we keep slow's tokens ("<mask>", which convert back to its id)
        with_specials = ["<s>"] + slow.tokenize(t) + ["</s>"]
        assert ours.tokenize(t, add_special_tokens=True) == with_specials, t
        pair = with_specials + ["</s>"] + slow.tokenize(SHORT[1]) + ["</s>"]
        assert ours.tokenize(t, SHORT[1], add_special_tokens=True) == pair, t
        assert ours.tokenize(t, SHORT[1]) == slow.tokenize(t) + slow.tokenize(SHORT[1]), t
        if "<mask>" not in t:
            assert ours.tokenize(t, SHORT[1], add_special_tokens=True) == fast.tokenize(t, SHORT[1], True), t


def test_special_token_helpers(toks):
    ours, slow, _ = toks
    ids = ours(SHORT[0])["input_ids"]
    a, b = ours(LONG[0])["input_ids"], [5, 6, 7]
    for x in (ids, a):
        assert ours.get_special_tokens_mask(x, already_has_special_tokens=True) == slow.get_special_tokens_mask(
            x, already_has_special_tokens=True
        )
    for pair in (None, b):
        for name in (
            "get_special_tokens_mask",
            "build_inputs_with_special_tokens",
            "create_token_type_ids_from_sequences",
        ):
            got = getattr(ours, name)(token_ids_0=a, token_ids_1=pair)
            assert got == getattr(slow, name)(token_ids_0=a, token_ids_1=pair), name
    assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == slow.convert_ids_to_tokens(ids, True)


def test_constructor_kwargs(spm_dir):
    loading = dict(cache_dir="/nowhere", force_download=False, local_files_only=True, token=None, revision="main")
    tok = XLMRobertaTokenizer.from_pretrained(spm_dir, trust_remote_code=False, use_fast=False, **loading)
    assert tok(LONG[0])["input_ids"] == XLMRobertaTokenizer.from_pretrained(spm_dir)(LONG[0])["input_ids"]
    XLMRobertaTokenizer.from_pretrained(spm_dir, bos_token="<s>", mask_token={"content": "<mask>"}, sp_model_kwargs={})
    for bad in (dict(bos_token="[CLS]"), dict(sp_model_kwargs={"enable_sampling": True}), dict(do_lower_case=True)):
        with pytest.raises(TypeError, match=next(iter(bad))):
            XLMRobertaTokenizer.from_pretrained(spm_dir, **bad)
    slow = transformers.XLMRobertaTokenizer.from_pretrained(str(spm_dir), split_special_tokens=True)
    ours = XLMRobertaTokenizer.from_pretrained(spm_dir, split_special_tokens=True)
    for t in (SHORT[0], "a <s> b </s>"):
        assert ours(t)["input_ids"] == slow(t)["input_ids"] and ours.tokenize(t) == slow.tokenize(t), t
        assert ours(t, split_special_tokens=False)["input_ids"] == slow(t, split_special_tokens=False)["input_ids"]


def test_prepare_for_model(toks):
    ours, slow, _ = toks
    a = ours(LONG[0], add_special_tokens=False)["input_ids"]
    b = ours(SHORT[1], add_special_tokens=False)["input_ids"]
    cases = [
        dict(),
        dict(truncation=True, max_length=8),
        dict(padding="max_length", max_length=60, return_tensors="pt"),
        dict(return_tensors="np", prepend_batch_axis=True),
        dict(return_special_tokens_mask=True, return_length=True, add_special_tokens=False),
        dict(truncation="only_first", max_length=22, padding_side="left", padding="max_length"),
    ]
    for kw in cases:
        for args in ((a,), (a, b)):
            same(ours.prepare_for_model(*args, **kw), slow.prepare_for_model(*args, **kw), (kw, len(args)))
    for bad in ("return_overflowing_tokens", "return_offsets_mapping", "not_a_kwarg"):
        with pytest.raises(TypeError, match=bad):
            ours.prepare_for_model(a, **{bad: True})


def test_save_pretrained_kwargs(toks, tmp_path):
    ours, _, _ = toks
    ours.save_pretrained(tmp_path / "a", legacy_format=True)
    ours.save_pretrained(tmp_path / "b", legacy_format=None, push_to_hub=False)
    assert (tmp_path / "a" / "sentencepiece.bpe.model").is_file()
    assert (tmp_path / "b" / "tokenizer_config.json").is_file()
    for bad in (dict(legacy_format=False), dict(filename_prefix="x"), dict(push_to_hub=True), dict(repo_id="me/x")):
        with pytest.raises(TypeError, match=next(iter(bad))):
            ours.save_pretrained(tmp_path / "c", **bad)


SPECIAL = {
    "prepend_batch_axis": test_prepare_for_model,
    "legacy_format": test_save_pretrained_kwargs,
    "filename_prefix": test_save_pretrained_kwargs,
    "push_to_hub": test_save_pretrained_kwargs,
    "already_has_special_tokens": test_special_token_helpers,
    **{k: test_constructor_kwargs for k in ("cache_dir", "force_download", "local_files_only", "token", "revision")},
    "trust_remote_code": test_constructor_kwargs,
    "return_overflowing_tokens": "test_tokenizer_overflow_offsets.py::test_overflow_matches_fast",
    "return_offsets_mapping": "test_tokenizer_overflow_offsets.py::test_offsets_match_fast",
    "is_split_into_words": test_is_split_into_words,
    "text_target": test_text_target,
    "text_pair_target": test_text_target,
    "skip_special_tokens": test_decode_kwargs,
    "clean_up_tokenization_spaces": test_decode_kwargs,
    "spaces_between_special_tokens": test_decode_kwargs,
    "use_source_tokenizer": test_decode_kwargs,
    "pair": test_tokenize_kwargs,
    "only_second": test_only_second,
}


@pytest.mark.parametrize("method", METHODS)
def test_unknown_kwarg_is_refused_by_name(toks, method):
    ours, _, _ = toks
    arg = {
        "pad": {"input_ids": [0, 2]},
        "decode": [0, 5, 2],
        "batch_decode": [[0, 5, 2]],
        "batch_encode_plus": ["a", "b"],
    }.get(method, "some text")
    with pytest.raises(TypeError, match="not_a_kwarg"):
        getattr(ours, method)(arg, not_a_kwarg=1)
    with pytest.raises(TypeError, match="return_tensors"):
        if method in ("__call__", "encode", "encode_plus", "pad"):
            getattr(ours, method)(arg, return_tensors="tf")
        else:
            raise TypeError("return_tensors: n/a")
