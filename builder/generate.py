"""Text generation with a KV cache, and turning a prompt into token ids with a clear error."""

from __future__ import annotations

import torch

from components import KVCache

from .errors import ConfigError


@torch.no_grad()
def generate(model, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue ``ids`` ``[B, T]`` by ``max_new_tokens`` sampled tokens (greedy when temperature is 0).

    Uses a KV cache; when the positional table would overflow, it restarts the cache on the
    last ``context_length // 2`` tokens (only models with a bounded table need that).
    """
    was_training = model.training
    model.eval()
    limit = model.context_length
    capacity = ids.shape[1] + max_new_tokens if limit is None else min(limit, ids.shape[1] + max_new_tokens)
    cache = KVCache(capacity)
    logits = model(ids[:, -limit:] if limit else ids, cache=cache, last_only=True)[:, -1]
    out = ids
    for i in range(max_new_tokens):
        if not torch.isfinite(logits).all():
            raise FloatingPointError("the model's logits are not finite (NaN or inf weights); nothing to sample")
        if temperature <= 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            scaled = logits.float() / temperature
            if top_k:
                kth = torch.topk(scaled, min(top_k, scaled.shape[-1])).values[:, -1:]
                scaled = scaled.masked_fill(scaled < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(scaled, -1), 1, generator=generator)
        out = torch.cat([out, nxt], 1)
        if i == max_new_tokens - 1:
            break
        if limit and cache.length + 1 > limit:
            cache = KVCache(capacity)
            logits = model(out[:, -max(1, limit // 2):], cache=cache, last_only=True)[:, -1]  # (context_length=1 keeps 1 token)
        else:
            logits = model(nxt, cache=cache)[:, -1]
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
