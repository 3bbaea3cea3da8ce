"""Decoding state: what token mixers keep between decoding steps (see contracts.py).

Dimensions: B batch, Hkv key/value heads, S positions held, Dh head width.

KVCache grows (or slides) with the sequence, for eager decoding; StaticKVCache keeps fixed
shapes for a compiled step. BlockCache holds one block's states, DecodingCache a model's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

_GROWING = "a KVCache changes shape as it decodes: a compiled step needs new_cache(static=True)"


class KVCache:
    """The keys and values one attention layer has seen, for incremental decoding.

    Keys and values sit in order in (B, Hkv, capacity, Dh) buffers allocated at the first
    append; decoding a token copies one position, not the whole history. `position` counts the
    positions appended so far, `length` those held.

    Growing (the default): the buffers double when full, and every position is kept.
    Sliding (sliding=True, max_length > 0): at most max_length positions are held; appending one
    position to a full cache drops the oldest, so attention reads the last max_length positions
    (sliding-window attention, as Mistral's rolling cache). The buffers hold 2·max_length
    positions, and the window moves back to their start only when it reaches their end: one
    copy per max_length steps. Past max_length positions come one at a time.
    """

    def __init__(self, max_length: int = 0, sliding: bool = False):
        if sliding and max_length < 1:
            raise ValueError("a sliding cache needs max_length >= 1")
        self.max_length, self.sliding = max_length, sliding
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.start = 0  # buffer index of the oldest held position
        self.length = 0
        self.position = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add (B, Hkv, T, Dh) keys and values; return those held now, (B, Hkv, S, Dh)."""
        new = k.size(2)
        if self.sliding and self.length + new > self.max_length:
            if new > 1:
                raise ValueError(
                    f"a sliding cache of {self.max_length} positions holding {self.length} "
                    f"takes one position at a time past its length, got {new}"
                )
            self.start, self.length = self.start + 1, self.length - 1  # drop the oldest
        end = self.start + self.length + new
        if self.keys is None or end > self.keys.size(2):
            self._reallocate(k, v)
            end = self.length + new
        self.keys[:, :, end - new : end] = k
        self.values[:, :, end - new : end] = v
        self.length += new
        self.position += new
        return self.cached()

    def _reallocate(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Move the held positions to the start of buffers with room for the new ones."""
        needed = self.length + k.size(2)
        if self.sliding:
            capacity = 2 * self.max_length
        else:
            old = 0 if self.keys is None else self.keys.size(2)
            capacity = max(needed, self.max_length, 2 * old)
        self.keys, self.values = (
            self._moved(old, new, capacity) for old, new in ((self.keys, k), (self.values, v))
        )
        self.start = 0

    def _moved(self, old: torch.Tensor | None, new: torch.Tensor, capacity: int) -> torch.Tensor:
        if self.sliding and old is not None:  # move the window back within the buffer
            # it starts past max_length > length here, so source and target do not overlap
            old[:, :, : self.length] = old[:, :, self.start : self.start + self.length]
            return old
        buffer = new.new_empty(new.size(0), new.size(1), capacity, new.size(3))
        if old is not None:
            buffer[:, :, : self.length] = old[:, :, self.start : self.start + self.length]
        return buffer

    def cached(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values held, in order."""
        held = slice(self.start, self.start + self.length)
        return self.keys[:, :, held], self.values[:, :, held]

    def key_mask(self, q_len: int) -> None:
        """Every held position may be attended (causality aside): no mask."""
        return None

    def key_distance(self, q_len: int) -> None:
        """The held keys are in order: relative positions follow from the lengths."""
        return None

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (in that order): beam search calls this after each step."""
        if self.keys is not None:
            self.keys = self.keys.index_select(0, index)
            self.values = self.values.index_select(0, index)

    def buffers(self) -> list[torch.Tensor]:
        raise TypeError(_GROWING)

    def with_buffers(self, tensors: list[torch.Tensor]) -> KVCache:
        raise TypeError(_GROWING)


class StaticKVCache:
    """A KV cache whose shapes and Python state stay the same from one decoding step to the
    next, so a compiled one-token step compiles once (decoding with compile=True).

    The last max_length positions sit in a ring of max_length slots, position p in slot
    p % max_length, and `position` is a 0-dim tensor advanced in place. One new token attends to
    every filled slot: the same keys as KVCache(sliding=True) holds, in another order, which
    attention cannot tell apart (a softmax over a set; key_distance gives position biases the
    order). Several positions at once (the prompt) go only into an empty cache, and attend to
    each other causally.
    """

    def __init__(self, max_length: int, device: torch.device | None = None):
        if max_length < 1:
            raise ValueError("a static cache needs max_length >= 1")
        self.max_length = max_length
        self.slots = torch.arange(max_length, device=device)
        self.position = torch.zeros((), dtype=torch.long, device=device)
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add (B, Hkv, T, Dh) keys and values. One position: returns the whole ring,
        (B, Hkv, max_length, Dh), to be read with key_mask; a prompt: returns it as given."""
        new = k.size(2)
        if self.keys is None:
            if new > self.max_length:
                raise ValueError(f"a prompt of {new} positions overflows {self.max_length} slots")
            self.keys = k.new_zeros(k.size(0), k.size(1), self.max_length, k.size(3))
            self.values = torch.zeros_like(self.keys)
        elif new > 1:
            raise ValueError("a static cache takes several positions only while it is empty")
        slots = (self.position + self.slots[:new]) % self.max_length
        self.keys.index_copy_(2, slots, k)
        self.values.index_copy_(2, slots, v)
        self.position += new
        return (k, v) if new > 1 else (self.keys, self.values)

    def key_mask(self, q_len: int) -> torch.Tensor | None:
        """(1, max_length), True on the filled slots, when one position was appended."""
        return (self.slots < self.position)[None] if q_len == 1 else None

    def key_distance(self, q_len: int) -> torch.Tensor | None:
        """(1, max_length): how many positions each slot lies behind the newest one, when one
        position was appended (the keys are out of order; for position biases such as ALiBi)."""
        return ((self.position - 1 - self.slots) % self.max_length)[None] if q_len == 1 else None

    def buffers(self) -> list[torch.Tensor]:
        """The tensors a compiled step takes as inputs and updates in place."""
        return [self.keys, self.values, self.position]

    def with_buffers(self, tensors: list[torch.Tensor]) -> StaticKVCache:
        """A copy holding these tensors in place of buffers() (an exported step's inputs)."""
        cache = copy.copy(self)
        cache.keys, cache.values, cache.position = tensors
        return cache

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index`, in place (the buffers stay the same tensors)."""
        if self.keys is not None:
            self.keys.copy_(self.keys.index_select(0, index))
            self.values.copy_(self.values.index_select(0, index))


@dataclass
class BlockCache:
    """Decoding state of one block: the mixer's (e.g. a KVCache) and the cross attention's."""

    mixer: Any
    cross: Any = None

    def _states(self) -> list[Any]:
        return [state for state in (self.mixer, self.cross) if state is not None]

    def reorder(self, index: torch.Tensor) -> None:
        for state in self._states():
            state.reorder(index)

    def buffers(self) -> list[torch.Tensor]:
        return [tensor for state in self._states() for tensor in state.buffers()]

    def with_buffers(self, tensors: list[torch.Tensor]) -> BlockCache:
        rest = iter(tensors)
        mixer, cross = (
            None if state is None else state.with_buffers([next(rest) for _ in state.buffers()])
            for state in (self.mixer, self.cross)
        )
        return BlockCache(mixer, cross)


@dataclass
class DecodingCache:
    """A model's decoding state: one BlockCache per block and how many positions were consumed
    (a 0-dim tensor for static caches, advanced in place). sliding: the blocks keep only the
    last context of positions, so decoding may go past it."""

    blocks: list[BlockCache]
    position: int | torch.Tensor = 0
    sliding: bool = False

    def buffers(self) -> list[torch.Tensor]:
        """The tensors of static states, which a compiled step updates in place."""
        tensors = [self.position] if isinstance(self.position, torch.Tensor) else []
        return tensors + [tensor for block in self.blocks for tensor in block.buffers()]

    def with_buffers(self, tensors: list[torch.Tensor]) -> DecodingCache:
        """A copy of this cache holding `tensors` in place of buffers(), in that order (an
        exported step takes them as inputs)."""
        rest = iter(tensors)
        position = next(rest) if isinstance(self.position, torch.Tensor) else self.position
        blocks = [
            block.with_buffers([next(rest) for _ in block.buffers()]) for block in self.blocks
        ]
        return DecodingCache(blocks, position, self.sliding)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index`, in that order (beam search)."""
        for block in self.blocks:
            block.reorder(index)


class RecurrentState:
    """The fixed-size tensors a recurrent mixer carries from one position to the next: an RNN's
    hidden (and cell) vectors, Mamba's convolution and SSM states, Hyena's window of inputs.

    The first forward (the prompt) creates them; every later step overwrites them in place, so
    their shapes and identities never change and one state serves eager and compiled decoding
    alike (``buffers`` / ``with_buffers``). Tensors are held by name, in the order first set.
    """

    def __init__(self, **tensors: torch.Tensor):
        self.tensors: dict[str, torch.Tensor] = dict(tensors)
        self.shared: set[str] = set()  # names of tensors not batch-first (see share)

    def get(self, name: str) -> torch.Tensor | None:
        return self.tensors.get(name)

    @property
    def empty(self) -> bool:
        """Nothing seen yet: the next forward is the prompt."""
        return not self.tensors

    def set(self, **tensors: torch.Tensor) -> None:
        """Store these tensors: a copy the first time, in place after."""
        for name, value in tensors.items():
            held = self.tensors.get(name)
            if held is None:
                self.tensors[name] = value.detach().clone(memory_format=torch.contiguous_format)
            else:
                held.copy_(value)

    def share(self, **tensors: torch.Tensor) -> None:
        """Store, as set does, tensors that every batch row shares (Hyena's filters and its
        position): reorder leaves them; every other tensor is batch-first."""
        self.set(**tensors)
        self.shared.update(tensors)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index`, in place."""
        for name, tensor in self.tensors.items():
            if name not in self.shared:
                tensor.copy_(tensor.index_select(0, index))

    def buffers(self) -> list[torch.Tensor]:
        return list(self.tensors.values())

    def with_buffers(self, tensors: list[torch.Tensor]) -> RecurrentState:
        state = type(self)(**dict(zip(self.tensors, tensors, strict=True)))
        state.shared = self.shared
        return state
