"""The three modes: a training step (forward, backward, optimizer step), prefill (forward over a
prompt, no grad, builds the KV cache) and decode (greedy generation with a KV cache)."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

import torch

from memgauge.workloads.context import Workload


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(wl: Workload, tokens: torch.Tensor) -> float:
    """One optimizer step over `tokens` (B, T+1), split into `wl.micro_batches`; returns the loss."""
    assert wl.optimizer is not None
    if not wl.fused_optimizer_step:
        wl.optimizer.zero_grad(set_to_none=True)
    chunks = tokens.chunk(wl.micro_batches, dim=0)
    total = 0.0
    for chunk in chunks:
        ids, labels = chunk[:, :-1], chunk[:, 1:]
        wl.mark("forward")
        with wl.saved_tensors(), wl.autocast():
            hidden = wl.backbone(input_ids=ids, use_cache=False).last_hidden_state  # (B, T, H)
            loss = wl.loss_fn(hidden, wl.head, labels) / len(chunks)
        wl.mark("backward")
        loss.backward()
        total += float(loss.detach())
        del hidden, loss
    if not wl.fused_optimizer_step:
        wl.mark("optimizer")
        wl.optimizer.step()
    wl.mark("end")
    return total


def _cache_kw(wl: Workload) -> str:
    """transformers renamed `past_key_values` to `cache` (5.2x); support both."""
    params = inspect.signature(wl.hf_model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _observe(wl: Workload, cache: Any) -> None:
    if wl.cache_observer is not None:
        wl.cache_observer(cache)


@torch.no_grad()
def prefill_step(wl: Workload, tokens: torch.Tensor) -> Any:
    """Forward over the prompt, building the KV cache; logits of the last position only."""
    ids = tokens[:, :-1]
    wl.mark("forward")
    cache = wl.cache_factory(ids.shape[1]) if wl.cache_factory else None
    with wl.autocast():
        out = wl.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{_cache_kw(wl): cache})
    _observe(wl, _out_cache(out))
    wl.last_cache = _out_cache(out)
    wl.mark("end")
    return out.logits


@torch.no_grad()
def decode_step(
    wl: Workload, tokens: torch.Tensor, new_tokens: int, token_times_ms: list[float] | None = None
) -> torch.Tensor:
    """Prefill the prompt then generate `new_tokens` greedily; per-token times are appended to
    `token_times_ms` (synchronised).  Returns the generated ids (B, new_tokens)."""
    ids = tokens[:, :-1]
    wl.mark("prefill")
    cache = wl.cache_factory(ids.shape[1] + new_tokens) if wl.cache_factory else None
    if cache is None:
        from transformers import DynamicCache

        cache = DynamicCache()
    kw = _cache_kw(wl)
    with wl.autocast():
        out = wl.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{kw: cache})
    _observe(wl, cache)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
    generated = [nxt]
    del out
    wl.mark("decode")
    for _ in range(new_tokens - 1):
        t0 = time.perf_counter()
        with wl.autocast():
            out = wl.model(input_ids=nxt, use_cache=True, **{kw: cache})
        _observe(wl, cache)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        sync(wl.device)
        if token_times_ms is not None:
            token_times_ms.append((time.perf_counter() - t0) * 1000)
        generated.append(nxt)
        del out
    wl.last_cache = cache
    out_ids = torch.cat(generated, dim=1)
    wl.mark("end")
    return out_ids


def make_step(
    wl: Workload,
    batch_fn: Callable[[int], torch.Tensor],
    new_tokens: int,
    token_times_ms: list[float] | None = None,
) -> Callable[[int], Any]:
    """A callable `step(i)` for the workload's mode, with technique step wrappers applied."""
    if wl.mode == "train":

        def step(i: int) -> Any:
            return train_step(wl, batch_fn(i))
    elif wl.mode == "prefill":

        def step(i: int) -> Any:
            return prefill_step(wl, batch_fn(i))
    else:

        def step(i: int) -> Any:
            return decode_step(wl, batch_fn(i), new_tokens, token_times_ms)

    for wrap in wl.step_wrappers:
        step = wrap(step)

    def run(i: int) -> Any:
        wl.last_cache = None  # the previous step's cache must not inflate this step's peak
        return step(i)

    return run
