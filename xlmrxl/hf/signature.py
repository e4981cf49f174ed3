"""The replacement encoder forward's view of transformers' encoder ``forward`` signature (cache argument's name,
4.x / 5.x layout) and a binder of call arguments to it that ``torch.compile(fullgraph=True)`` can trace."""

from __future__ import annotations

import inspect

__all__ = ["CACHE_NAMES", "output_cache_field", "signature"]

_SIGNATURES: dict = {}


# The names transformers has given the encoder's cache argument (and its output field), newest first: 5.24 renamed
# ``past_key_values`` to ``cache`` (keeping a deprecated alias). The patch reads whichever the installed version's
# signature declares, so a call is never served with a cache other than the one passed in.
CACHE_NAMES = ("cache", "past_key_values")


class _Spec:
    """What the replacement forward needs of ``cls.forward``'s signature, as plain tuples (no ``inspect`` objects
    at call time: ``torch.compile(fullgraph=True)`` cannot trace ``Signature.bind`` over a mapping proxy)."""

    def __init__(self, s: inspect.Signature) -> None:
        params = list(s.parameters.values())[1:]  # drop self
        self.positional = tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
        self.keyword = frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        self.var_pos = next((p.name for p in params if p.kind is p.VAR_POSITIONAL), None)
        self.var_kw = next((p.name for p in params if p.kind is p.VAR_KEYWORD), None)
        self.legacy = "output_hidden_states" in s.parameters  # the 4.x layout
        self.text = str(s)

    def bind(self, args: tuple, kwargs: dict) -> tuple[dict, dict] | None:
        """(named arguments passed, the **kwargs extras) as ``Signature.bind`` would, or None where it would raise."""
        n = len(self.positional)
        if len(args) > n and self.var_pos is None:
            return None
        named = dict(zip(self.positional, args))
        if len(args) > n:
            named[self.var_pos] = tuple(args[n:])
        extra = {}
        for k, v in kwargs.items():
            if k in named:
                return None  # given twice
            if k in self.keyword:
                named[k] = v
            elif self.var_kw is not None:
                extra[k] = v
            else:
                return None
        return named, extra


def signature(cls: type) -> tuple[_Spec, str]:
    """(the argument spec, the cache argument's name) of ``cls.forward`` (through transformers' deprecation
    wrappers), computed once per class."""
    sig = _SIGNATURES.get(cls)
    if sig is None:
        s = inspect.signature(cls.forward)
        cache_kw = next((n for n in CACHE_NAMES if n in s.parameters), None)
        if cache_kw is None:
            raise TypeError(
                f"{cls.__module__}.{cls.__name__}.forward{s} takes none of the cache arguments xlmrxl knows "
                f"({', '.join(CACHE_NAMES)}); this transformers version is not supported by xlmrxl.accelerate"
            )
        sig = _SIGNATURES[cls] = (_Spec(s), cache_kw)
    return sig


def output_cache_field(output_cls: type) -> str:
    """The field under which ``output_cls`` (a transformers output dataclass) holds the cache in this version."""
    names = getattr(output_cls, "__dataclass_fields__", {})
    return next((n for n in CACHE_NAMES if n in names), "past_key_values")
