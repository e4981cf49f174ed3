"""Autoregressive generation for ``XLMRobertaXLForCausalLM`` (``model.generate(...)`` delegates here).

    generate(model, input_ids, attention_mask=None, max_new_tokens=20, do_sample=False, temperature=1.0,
             top_k=None, top_p=None, eos_token_id=None, pad_token_id=None, num_beams=1, streamer=None,
             past_key_values=None, cache="static", generator=None, *, max_length=None, min_new_tokens=0,
             length_penalty=1.0, early_stopping=False, num_return_sequences=1, encoder_hidden_states=None,
             encoder_attention_mask=None, return_dict_in_generate=False, output_scores=False)

Returns, like transformers, the (B * num_return_sequences, S + n) LongTensor of prompt + new ids, where n is the
number of steps run (generation stops early once every row has produced an end token); rows that finished earlier
are filled with the pad id. With ``return_dict_in_generate=True`` a ``GenerateOutput`` carries ``sequences``,
``scores`` (per-step processed scores, with ``output_scores``) and ``sequences_scores`` (beam search).

- Batches are **left padded** (pad prompts on the left; the mask hides the pads). The attention mask defaults to
  ``input_ids != pad_token_id``; ``pad_token_id`` / ``eos_token_id`` default to the config's (1 / 2);
  ``eos_token_id`` may be a list, or ``-1`` for "never stop early".
- Greedy (default), sampling (``do_sample=True`` with ``temperature``, then ``top_k``, then ``top_p``, in that
  order, as transformers; reproducible with ``generator=torch.Generator(device).manual_seed(s)``), beam search
  (``num_beams > 1``: transformers' beam hypotheses, ``length_penalty``, ``early_stopping``; caches reordered in
  place with ``cache_reorder``). ``min_new_tokens`` masks the end tokens for that many steps.
- Cache: ``cache="static"`` (default) preallocates an ``xlmrxl.StaticCache`` for prompt + new tokens (written by
  the compiled ``cache_update`` op); ``"dynamic"`` uses ``DynamicCache``; ``past_key_values=`` passes your own (if
  it already holds tokens, only the uncached suffix of ``input_ids`` is fed). With ``encoder_hidden_states`` the
  cache is an ``EncoderDecoderCache`` whose cross-attention part stores the encoder K/V once.
- ``streamer``: an object with ``put(ids)`` / ``end()`` (transformers' ``TextStreamer`` protocol: ``put`` gets the
  prompt first, then each step's new tokens, on CPU) or a plain callable, called with each step's (B,) new tokens.
  Not with beam search.

**Positions follow the model's padding-index rule.** The prompt gets exactly the position ids ``forward`` computes
(fairseq ``make_positions``: real tokens ``pad_id + 1, pad_id + 2, ...`` counting only non-pad tokens, pads
``pad_id``), and each new token the next one in its row: ``pad_id + 1 + (real prompt tokens) + step``. Hence
a left-padded row generates exactly what the same prompt unpadded would, and ``generate``'s logits equal a plain
``forward`` over the generated sequence (as long as no generated token equals the pad id, which ``forward`` would
treat as a pad). transformers' ``generate`` (4.56.2 and 5.x) instead builds 0-based positions
``cumsum(attention_mask) - 1`` and passes them explicitly, bypassing the +2 offset the model was trained with
(see the shared reference §3.5): its first step equals ``forward(position_ids=arange(S))`` and differs from a plain
forward. For parity with transformers, pass the same explicit positions to its model.

Limits: prompt real tokens + new tokens <= ``max_position_embeddings - 2`` (512 for XL), checked up front.
Beam sampling (``num_beams > 1`` with ``do_sample``) is not supported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .caches import DynamicCache, EncoderDecoderCache, StaticCache
from .masks import create_position_ids_from_input_ids
from .outputs import ModelOutput

logger = logging.getLogger("xlmrxl")

__all__ = ["generate", "GenerateOutput"]


@dataclass(eq=False)
class GenerateOutput(ModelOutput):
    sequences: torch.LongTensor | None = None
    scores: tuple[torch.FloatTensor, ...] | None = None
    sequences_scores: torch.FloatTensor | None = None


# -- argument handling -------------------------------------------------------------------------------------------------
def _eos_list(eos_token_id: int | list[int] | None, config: Any) -> list[int]:
    eos = eos_token_id if eos_token_id is not None else getattr(config, "eos_token_id", None)
    if eos is None:
        return []
    ids = [int(e) for e in (eos if isinstance(eos, (list, tuple, set)) else [eos])]
    return [e for e in ids if e >= 0]


def _check_args(
    model: nn.Module,
    input_ids: torch.Tensor | None,
    max_new_tokens: int | None,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    num_beams: int,
    num_return_sequences: int,
    cache: Any,
    streamer: Any,
    min_new_tokens: int,
):
    if not getattr(model.config, "is_decoder", False):
        raise ValueError(
            "generate needs a decoder (causal attention) but the model's config.is_decoder is False; "
            "build the model with XLMRobertaXLConfig(..., is_decoder=True)"
        )
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a (batch, seq_len) tensor with seq_len >= 1, got {shape}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must be int64 token ids, got {input_ids.dtype}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not isinstance(min_new_tokens, int) or min_new_tokens < 0:
        raise ValueError(f"min_new_tokens must be an int >= 0, got {min_new_tokens!r}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}")
    if num_beams > 1 and do_sample:
        raise NotImplementedError(
            "beam sampling (num_beams > 1 with do_sample=True) is not supported; "
            "use num_beams=1 to sample or do_sample=False for beam search"
        )
    if not 1 <= num_return_sequences <= num_beams and not (do_sample and num_return_sequences >= 1):
        raise ValueError(
            f"num_return_sequences must be in [1, num_beams={num_beams}] "
            f"(or any >= 1 when sampling), got {num_return_sequences}"
        )
    if cache not in ("static", "dynamic"):
        raise ValueError(f"cache must be 'static' or 'dynamic', got {cache!r}")
    if streamer is not None and num_beams > 1:
        raise ValueError("streamer cannot be used with beam search (num_beams > 1)")


def _make_cache(
    model: nn.Module,
    cache: str,
    rows: int,
    max_len: int,
    device: torch.device | str | None,
    encoder_hidden_states: torch.Tensor | None,
):
    config = model.config
    if cache == "static":
        self_cache = StaticCache(config, rows, max_len, dtype=model.dtype, device=device)
        if encoder_hidden_states is None:
            return self_cache
        cross = StaticCache(config, rows, encoder_hidden_states.shape[1], dtype=model.dtype, device=device)
        return EncoderDecoderCache(self_cache, cross)
    if encoder_hidden_states is None:
        return DynamicCache()
    return EncoderDecoderCache(DynamicCache(), DynamicCache())


# -- logits processing -------------------------------------------------------------------------------------------------
def _warp(scores: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """transformers' sampling warpers, in its order: temperature, top-k, top-p (nucleus; keeps >= 1 token)."""
    if temperature != 1.0:
        scores = scores / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cum <= (1 - top_p)
        remove[..., -1:] = False
        scores = scores.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return scores


def _stream(streamer: Any, tokens: torch.Tensor, first: bool = False) -> None:
    if streamer is None:
        return
    if hasattr(streamer, "put"):
        streamer.put(tokens.cpu())
    elif not first:
        streamer(tokens.cpu())


# -- the entry point ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    num_beams: int = 1,
    streamer: Any = None,
    past_key_values: Any = None,
    cache: str = "static",
    generator: torch.Generator | None = None,
    *,
    max_length: int | None = None,
    min_new_tokens: int = 0,
    length_penalty: float = 1.0,
    early_stopping: bool = False,
    num_return_sequences: int = 1,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    return_dict_in_generate: bool = False,
    output_scores: bool = False,
) -> torch.LongTensor | GenerateOutput:
    """Generate continuations of left-padded prompts; see the module docstring for every argument."""
    if max_length is not None:
        max_new_tokens = max_length - input_ids.shape[-1]
    _check_args(
        model,
        input_ids,
        max_new_tokens,
        do_sample,
        temperature,
        top_k,
        top_p,
        num_beams,
        num_return_sequences,
        cache,
        streamer,
        min_new_tokens,
    )
    config = model.config
    eos = _eos_list(eos_token_id, config)
    pad = pad_token_id if pad_token_id is not None else config.pad_token_id
    if pad is None:
        if not eos:
            raise ValueError("generate needs a pad_token_id (or an eos_token_id to pad with); neither is set")
        pad = eos[0]
    device = model.device
    input_ids = input_ids.to(device=device, dtype=torch.long)
    batch, prompt_len = input_ids.shape
    if attention_mask is None:
        attention_mask = (input_ids != pad).long()
    attention_mask = attention_mask.to(device=device, dtype=torch.long)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; it must match input_ids {tuple(input_ids.shape)}"
        )

    # Positions: the padding-index rule on the prompt, then +1 per generated token in each row.
    positions = create_position_ids_from_input_ids(input_ids, pad)
    next_pos = positions.max(dim=1).values + 1
    limit = config.max_position_embeddings - 1
    last = int(next_pos.max()) + max(max_new_tokens - 1, 0)
    if max_new_tokens > 0 and last > limit:
        raise ValueError(
            f"the longest prompt has {int(next_pos.max()) - pad - 1} real tokens; with max_new_tokens="
            f"{max_new_tokens} the position ids reach {last} > {limit} (max_position_embeddings="
            f"{config.max_position_embeddings}); lower max_new_tokens or shorten the prompt"
        )
    if max_new_tokens == 0:
        out = input_ids.repeat_interleave(num_return_sequences, dim=0)
        return GenerateOutput(sequences=out) if return_dict_in_generate else out

    beams = num_beams if not do_sample else 1
    rows = batch * beams
    if beams > 1:
        input_ids, attention_mask, positions, next_pos = (
            t.repeat_interleave(beams, dim=0) for t in (input_ids, attention_mask, positions, next_pos)
        )
    elif do_sample and num_return_sequences > 1:
        rows = batch * num_return_sequences
        input_ids, attention_mask, positions, next_pos = (
            t.repeat_interleave(num_return_sequences, dim=0) for t in (input_ids, attention_mask, positions, next_pos)
        )
    enc_kw = {}
    if encoder_hidden_states is not None:
        rep = rows // batch
        enc_kw["encoder_hidden_states"] = encoder_hidden_states.to(device).repeat_interleave(rep, dim=0)
        if encoder_attention_mask is not None:
            enc_kw["encoder_attention_mask"] = encoder_attention_mask.to(device).repeat_interleave(rep, dim=0)

    past = past_key_values
    if past is None:
        past = _make_cache(model, cache, rows, prompt_len + max_new_tokens, device, enc_kw.get("encoder_hidden_states"))
    cached = int(past.get_seq_length())
    if cached >= prompt_len:
        raise ValueError(
            f"past_key_values already holds {cached} tokens but the prompt has only {prompt_len}; "
            "pass the whole sequence (cached tokens included) as input_ids"
        )

    def step(ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=past,
            use_cache=True,
            logits_to_keep=1,
            return_dict=True,
            **enc_kw,
        )
        return out.logits[:, -1, :].float()

    logits = step(input_ids[:, cached:], positions[:, cached:], attention_mask)
    state = dict(
        model=model,
        step=step,
        input_ids=input_ids,
        attention_mask=attention_mask,
        next_pos=next_pos,
        logits=logits,
        past=past,
        eos=eos,
        pad=pad,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        output_scores=output_scores,
    )
    if beams > 1:
        sequences, scores, seq_scores = _beam_search(
            state, batch, beams, length_penalty, early_stopping, num_return_sequences
        )
    else:
        sequences, scores = _greedy_or_sample(state, do_sample, temperature, top_k, top_p, generator, streamer)
        seq_scores = None
    if return_dict_in_generate:
        return GenerateOutput(sequences=sequences, scores=scores, sequences_scores=seq_scores)
    return sequences


def _mask_eos(scores: torch.Tensor, eos: list[int], step: int, min_new_tokens: int) -> torch.Tensor:
    if eos and step < min_new_tokens:
        scores = scores.clone()
        scores[:, eos] = float("-inf")
    return scores


def _greedy_or_sample(
    st,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
    streamer: Any,
):
    seqs, mask, logits = st["input_ids"], st["attention_mask"], st["logits"]
    eos, pad, next_pos = st["eos"], st["pad"], st["next_pos"]
    eos_t = torch.tensor(eos, device=seqs.device, dtype=torch.long) if eos else None
    unfinished = torch.ones(seqs.shape[0], dtype=torch.bool, device=seqs.device)
    all_scores: list[torch.Tensor] = []
    _stream(streamer, seqs, first=True)
    for i in range(st["max_new_tokens"]):
        scores = _mask_eos(logits, eos, i, st["min_new_tokens"])
        if do_sample:
            scores = _warp(scores, temperature, top_k, top_p)
            probs = scores.softmax(dim=-1)
            tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
        else:
            tokens = scores.argmax(dim=-1)
        if st["output_scores"]:
            all_scores.append(scores)
        if eos_t is not None:
            tokens = torch.where(unfinished, tokens, torch.full_like(tokens, pad))
        seqs = torch.cat([seqs, tokens[:, None]], dim=1)
        _stream(streamer, tokens)
        if eos_t is not None:
            unfinished &= ~torch.isin(tokens, eos_t)
            if not bool(unfinished.any()):
                break
        if i == st["max_new_tokens"] - 1:
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        logits = st["step"](tokens[:, None], (next_pos + i)[:, None], mask)
    if streamer is not None and hasattr(streamer, "end"):
        streamer.end()
    return seqs, (tuple(all_scores) if st["output_scores"] else None)


class _Hypotheses:
    """The best ``num_beams`` finished sequences of one batch row (transformers' ``BeamHypotheses``)."""

    def __init__(self, num_beams: int, length_penalty: float, early_stopping: bool) -> None:
        self.num_beams, self.length_penalty, self.early_stopping = num_beams, length_penalty, early_stopping
        self.beams: list[tuple[float, torch.Tensor]] = []
        self.worst = 1e9

    def add(self, seq: torch.Tensor, sum_logprobs: float, generated_len: int) -> None:
        score = sum_logprobs / (generated_len**self.length_penalty)
        if len(self.beams) < self.num_beams or score > self.worst:
            self.beams.append((score, seq))
            if len(self.beams) > self.num_beams:
                self.beams.sort(key=lambda b: b[0])
                self.beams.pop(0)
            self.worst = min(b[0] for b in self.beams)

    def is_done(self, best_sum_logprobs: float, generated_len: int) -> bool:
        if len(self.beams) < self.num_beams:
            return False
        if self.early_stopping:
            return True
        return self.worst >= best_sum_logprobs / (generated_len**self.length_penalty)


def _beam_search(st, batch: int, beams: int, length_penalty: float, early_stopping: bool, num_return_sequences: int):
    seqs, mask, logits = st["input_ids"], st["attention_mask"], st["logits"]
    eos, pad, next_pos, device = st["eos"], st["pad"], st["next_pos"], seqs.device
    eos_set = set(eos)
    prompt_len = seqs.shape[1]
    hyps = [_Hypotheses(beams, length_penalty, early_stopping) for _ in range(batch)]
    done = [False] * batch
    # Only beam 0 of each row is live at the first step (all beams hold the same prompt).
    beam_scores = torch.zeros(batch, beams, device=device)
    beam_scores[:, 1:] = -1e9
    beam_scores = beam_scores.view(-1)
    all_scores: list[torch.Tensor] = []
    for i in range(st["max_new_tokens"]):
        logprobs = _mask_eos(F.log_softmax(logits, dim=-1), eos, i, st["min_new_tokens"])
        if st["output_scores"]:
            all_scores.append(logprobs)
        vocab = logprobs.shape[-1]
        cand = (logprobs + beam_scores[:, None]).view(batch, beams * vocab)
        top_scores, top_idx = cand.topk(2 * beams, dim=1)
        top_scores, src, tok = top_scores.tolist(), (top_idx // vocab).tolist(), (top_idx % vocab).tolist()
        new_scores, new_src, new_tok = [], [], []
        gen_len = i + 1
        for b in range(batch):
            if done[b]:  # finished row: keep its beams alive with pad tokens (their outputs are ignored)
                new_scores += [0.0] * beams
                new_src += [b * beams + k for k in range(beams)]
                new_tok += [pad] * beams
                continue
            chosen, first = 0, len(new_scores)
            for rank in range(2 * beams):
                score, row, token = top_scores[b][rank], b * beams + src[b][rank], tok[b][rank]
                if token in eos_set:
                    if rank < beams:  # an end token among the top beams closes a hypothesis
                        hyps[b].add(torch.cat([seqs[row], seqs.new_tensor([token])]), score, gen_len)
                    continue
                new_scores.append(score)
                new_src.append(row)
                new_tok.append(token)
                chosen += 1
                if chosen == beams:
                    break
            for _ in range(beams - chosen):  # only with several end ids: more than `beams` of them ranked high
                new_scores.append(-1e9)
                new_src.append(b * beams)
                new_tok.append(pad)
            done[b] = hyps[b].is_done(max(new_scores[first:]), gen_len)
        beam_idx = torch.tensor(new_src, device=device)
        tokens = torch.tensor(new_tok, device=device)
        beam_scores = torch.tensor(new_scores, device=device, dtype=torch.float32)
        seqs = torch.cat([seqs.index_select(0, beam_idx), tokens[:, None]], dim=1)
        if all(done) or i == st["max_new_tokens"] - 1:
            break
        st["past"].reorder_cache(beam_idx)
        mask = torch.cat([mask.index_select(0, beam_idx), mask.new_ones(mask.shape[0], 1)], dim=1)
        logits = st["step"](tokens[:, None], (next_pos + i)[:, None], mask)
    gen_len = seqs.shape[1] - prompt_len
    scores_host = beam_scores.tolist()
    for b in range(batch):
        if not done[b]:
            for k in range(beams):
                hyps[b].add(seqs[b * beams + k], scores_host[b * beams + k], gen_len)
    best: list[torch.Tensor] = []
    best_scores: list[float] = []
    for b in range(batch):
        ranked = sorted(hyps[b].beams, key=lambda h: h[0], reverse=True)[:num_return_sequences]
        for score, seq in ranked:
            best.append(seq)
            best_scores.append(score)
    width = max(s.shape[0] for s in best)
    out = seqs.new_full((len(best), width), pad)
    for r, s in enumerate(best):
        out[r, : s.shape[0]] = s
    return out, (tuple(all_scores) if st["output_scores"] else None), torch.tensor(best_scores, device=device)
