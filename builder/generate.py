"""Text generation with a KV cache, and turning a prompt into token ids with a clear error."""

from __future__ import annotations

import contextlib
import functools

import torch

from components import KVCache, StaticKVCache

from .errors import ConfigError


def _summary(logits: torch.Tensor):
    """The next position's logits ``[B, vocab]``, whether all of them are finite, and the most likely token ``[B, 1]``."""
    return logits, torch.isfinite(logits).all(), logits.argmax(-1, keepdim=True)


def _decode_step(model, token: torch.Tensor, cache):
    """One decoding step after ``token`` ``[B, 1]`` (the cache advances by one): what :func:`_summary` gives."""
    return _summary(model(token, cache=cache)[:, -1])


@functools.cache
def compiled_step():
    """``_decode_step`` under ``torch.compile``, made once per process (torch keeps the compiled code per model and
    cache layout, so later calls of generate(compile=True) on the same model reuse it). Whole graph, static shapes,
    and a C++ wrapper around the kernels: per token the Python wrapper's ~100 kernel calls cost more than the
    kernels other than the matrix products."""
    return torch.compile(_decode_step, fullgraph=True, dynamic=False, options={"cpp_wrapper": True})


def _pick(summary, temperature: float, top_k: int | None, generator) -> torch.Tensor:
    logits, finite, most_likely = summary
    if not finite:
        raise FloatingPointError("the model's logits are not finite (NaN or inf weights); nothing to sample")
    if temperature <= 0:
        return most_likely
    scaled = logits.float() / temperature
    if top_k:
        kth = torch.topk(scaled, min(top_k, scaled.shape[-1])).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    return torch.multinomial(torch.softmax(scaled, -1), 1, generator=generator)


@torch.no_grad()
def generate(model, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None, compile: bool = False) -> torch.Tensor:
    """Continue ``ids`` ``[B, T]`` by ``max_new_tokens`` sampled tokens (greedy when temperature is 0).

    Uses a KV cache; when the positional table would overflow, it restarts the cache on the
    last ``context_length // 2`` tokens (only models with a bounded table need that).

    ``compile=True`` runs each decoding step through ``torch.compile`` over a :class:`StaticKVCache` (the prompt
    runs eagerly): the first call for a model and length pays the compilation (tens of seconds on a CPU), later
    tokens run as a few fused kernels instead of hundreds of small operations. Same tokens as eager decoding, to
    float rounding. After its first step a call skips torch's checks that the compiled code still applies
    (``skip_guard_eval_unsafe``): nothing the checks look at changes from one token to the next.
    """
    was_training = model.training
    model.eval()
    limit = model.context_length
    capacity = ids.shape[1] + max_new_tokens if limit is None else min(limit, ids.shape[1] + max_new_tokens)

    def fresh_cache():
        return StaticKVCache(capacity, ids.device) if compile else KVCache(capacity)

    def prompt(tokens):
        return _summary(model(tokens, cache=cache, last_only=True)[:, -1])

    step = compiled_step() if compile else _decode_step
    cache = fresh_cache()
    summary = prompt(ids[:, -limit:] if limit else ids)
    held = min(ids.shape[1], limit) if limit else ids.shape[1]
    out = torch.empty(ids.shape[0], ids.shape[1] + max_new_tokens, dtype=ids.dtype, device=ids.device)
    out[:, : ids.shape[1]] = ids
    checked = False
    with contextlib.ExitStack() as stack:
        for i in range(max_new_tokens):
            end = ids.shape[1] + i
            nxt = _pick(summary, temperature, top_k, generator)
            out[:, end: end + 1] = nxt
            if i == max_new_tokens - 1:
                break
            if limit and held + 1 > limit:
                cache = fresh_cache()
                keep = max(1, limit // 2)  # (context_length=1 keeps 1 token)
                summary = prompt(out[:, end + 1 - keep: end + 1])
                held = keep
            else:
                summary = step(model, nxt, cache)
                held += 1
                if compile and not checked:  # the compiled code was checked (or made) once: the checks can stop
                    stack.enter_context(torch.compiler.set_stance(skip_guard_eval_unsafe=True))
                    checked = True
    model.train(was_training)
    return out


def encode_prompt(tokenizer, prompt: str, key: str = "prompt") -> list[int]:
    try:
        ids = tokenizer.encode(prompt)
    except (ValueError, KeyError) as err:
        raise ConfigError(key, prompt, f"text the model's tokenizer can encode: {err}") from None
    if not ids:
        raise ConfigError(key, prompt, "a prompt of at least one token")
    return ids
