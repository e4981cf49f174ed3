"""transformers-version compatibility of ``xlmrxl.accelerate``: the patched encoder must read the cache under the name
transformers' encoder actually takes (``past_key_values`` in 4.x, ``cache`` from 5.24 on) and return it under the
name its output class has, so an accelerated causal LM keeps using the cache it is given. Runs in ``make test``
(4.56.2) and ``make test-hf5`` (the newest 5.x, tests/requirements-hf5.txt); also checks that requirements file
against pyproject's test extra."""

import inspect
import re
from pathlib import Path

import pytest
import torch
from _oracle import FastPathSpy
from conftest import tiny_config_kwargs

from xlmrxl import accelerate

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parent.parent


def _cache_kw(model) -> str:
    """The keyword transformers' forward takes the cache under (read from its signature, as users' code must)."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out):
    return out["cache"] if "cache" in type(out).__dataclass_fields__ else out["past_key_values"]


def _causal_lm(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.XLMRobertaXLConfig(**tiny_config_kwargs(num_hidden_layers=2, is_decoder=True))
    cfg._attn_implementation = "sdpa"
    model = transformers.XLMRobertaXLForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1 + 0.2 * torch.randn_like(p)) if name.endswith("LayerNorm.weight") else 0.1 * torch.randn_like(p))
    return model


class _Notices:
    """Counts transformers' cache-rename deprecation notices: FutureWarnings and its ``warning_once`` logger calls
    (which a plain log capture would see once per process only)."""

    def __init__(self, monkeypatch):
        self.n = 0
        try:
            from transformers.utils import generic
        except ImportError:  # pragma: no cover
            return
        logger = getattr(generic, "logger", None)
        if logger is not None and hasattr(logger, "warning_once"):
            real = logger.warning_once

            def count(msg, *a, **k):
                if "deprecated" in str(msg):
                    self.n += 1
                return real(msg, *a, **k)

            monkeypatch.setattr(logger, "warning_once", count)


def _decode(model, ids, prefix, monkeypatch):
    """Prefill ``ids[:, :prefix]`` then one token a step, no attention_mask, passing the cache back each step."""
    kw = _cache_kw(model)
    notices = _Notices(monkeypatch)
    logits, handed_back = [], []
    with torch.no_grad(), _no_future_warning():
        out = model(ids[:, :prefix], use_cache=True)
        logits.append(out.logits)
        cache = first = _out_cache(out)
        for t in range(prefix, ids.shape[1]):
            out = model(ids[:, t : t + 1], use_cache=True, **{kw: cache})
            logits.append(out.logits)
            handed_back.append(_out_cache(out) is cache)
            cache = _out_cache(out)
    return logits, first, all(handed_back), notices.n


class _no_future_warning:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        self.records = self._cm.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        if exc[0] is None:
            msgs = [str(w.message) for w in self.records if issubclass(w.category, FutureWarning)]
            msgs = [m for m in msgs if "past_key_values" in m or "cache" in m]
            assert not msgs, f"deprecation warnings about the cache argument: {msgs[:2]}"
        return False


def test_accelerated_causal_lm_uses_the_cache_it_is_given(monkeypatch):
    """Cached steps without an attention_mask on an accelerated causal LM equal transformers' own, every step runs
    the cached fast path, and the cache grows in place. On transformers 5.24+ (encoder argument renamed to ``cache``)
    this fails until accelerate's patch reads the cache by the signature's name: each step then builds a fresh cache
    (length 1 after every step) and the logits drift by ~2.5."""
    model = _causal_lm()
    ids = torch.randint(3, 300, (2, 8))
    ref, ref_cache, ref_same, ref_notices = _decode(model, ids, 5, monkeypatch)
    assert ref_same, "transformers hands back the cache it is given"
    accelerate(model, backend="reference")
    spy = FastPathSpy(monkeypatch)
    got, cache, same, notices = _decode(model, ids, 5, monkeypatch)
    errs = [(a - b).abs().max().item() for a, b in zip(got, ref)]
    assert max(errs) <= 1e-5, f"cached logits differ from transformers' per step: {[f'{e:.3g}' for e in errs]}"
    assert same and cache.get_seq_length() == ref_cache.get_seq_length() == 8, (
        f"the cache given holds {cache.get_seq_length()} positions after 8 tokens "
        f"(transformers: {ref_cache.get_seq_length()}); handed back the same object each step: {same}"
    )
    assert spy.decoder == 4, f"prefill and 3 cached steps must run the fused path, ran {spy.decoder}"
    assert notices <= ref_notices, f"the patch triggers {notices - ref_notices} cache-rename deprecation notices"


def test_accelerated_greedy_generate_same_tokens_without_mask():
    model = _causal_lm(seed=2)
    torch.manual_seed(102)  # a model and prompt whose greedy tokens are not one token repeated
    ids = torch.randint(3, 300, (2, 7))
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=1, eos_token_id=None)
    with torch.no_grad():
        before = model.generate(ids, **kw)
    accelerate(model, backend="reference")
    with torch.no_grad():
        after = model.generate(ids, **kw)
    assert torch.equal(after, before), f"greedy tokens differ:\n{after[:, 7:].tolist()}\nvs\n{before[:, 7:].tolist()}"


def test_hf5_requirements_track_the_test_extra():
    """tests/requirements-hf5.txt is the test extra with only the transformers pin replaced (by a 5.x one)."""
    tomllib = pytest.importorskip("tomllib")
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    lines = [
        ln.strip() for ln in (ROOT / "tests" / "requirements-hf5.txt").read_text().splitlines() if ln.strip()[:1] > "#"
    ]

    def name(req):
        return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower()

    want = {name(r): r for r in extra if name(r) != "transformers"}
    have = {name(r): r for r in lines if name(r) != "transformers"}
    assert have == want, f"requirements-hf5.txt {sorted(have.values())} vs test extra {sorted(want.values())}"
    pins = [r for r in lines if name(r) == "transformers"]
    assert len(pins) == 1 and re.fullmatch(r"transformers==5\.\d+\.\d+", pins[0]), pins
