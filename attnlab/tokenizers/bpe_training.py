"""Training byte-level BPE: start from the 256 bytes, merge the most frequent adjacent pair, repeat.

The lecture algorithm recounts every pair of the whole corpus after each merge. That is correct
but does not scale, so this trainer does the same thing with bookkeeping:

1. Pre-tokenize each text with the pattern and count each distinct pre-token ("word") once, with
   its frequency. Merges never cross pre-token boundaries, so the corpus *is* this table.
2. Count the adjacent pairs of every word (weighted by the word's frequency) and index which
   words contain each pair.
3. Pop the most frequent pair from a max-heap. Counts only ever fall for pairs that exist before
   a merge, so stale heap entries are corrected lazily when they surface ("lazy deletion").
4. Rewrite only the words that contain the pair, updating the pair counts and the index by the
   difference between each word before and after. Pairs with the new token are pushed on the heap.

Tie rule: among pairs with the same count, the pair whose ids are lexicographically smallest
wins, i.e. ``(left_id, right_id)`` compared as a tuple. Older tokens have smaller ids, so pairs of
older tokens win ties. On "aaabdaaabac" this gives the lecture's sequence Z=aa, then Y=ab (ids
(97, 98) beat Za = (256, 97), both counted twice), then X=ZY.

Should a pair's merged bytes already be a token (two merge paths to the same bytes, (ab, c) and
(a, bc)), the pair is merged into that existing token and takes no vocabulary slot, so token
bytes stay unique, as tiktoken requires. With one global merge order applied left to right this
did not occur in our tests; the check is a guard, as in other trainers.
"""

from __future__ import annotations

import heapq
import multiprocessing
import signal
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from itertools import chain

import regex
from tqdm import tqdm

from attnlab.errors import UserError
from attnlab.tokenizers.base import fix_surrogates

Pair = tuple[int, int]
JOB_CHARACTERS = 1 << 22  # counted by one worker at a time


def count_words(
    texts: Iterable[str],
    pattern: str,
    special_tokens: Iterable[str] = (),
    workers: int = 1,
    progress: bool = False,
) -> Counter[bytes]:
    """How often each distinct pre-token occurs in `texts`, as UTF-8 bytes.

    Occurrences of the special tokens' strings are cut out first, so a corpus that separates
    documents with ``<|endoftext|>`` does not teach merges for the pieces of that marker.
    The texts are read one at a time (a Corpus streams its files in pieces); with `workers` > 1
    they are counted in that many processes, some JOB_CHARACTERS at a time.
    """
    specials = list(special_tokens)
    with tqdm(texts, desc="counting", unit=" texts", disable=not progress) as stream:
        if workers == 1:
            return _count_chunk((stream, pattern, specials))
        groups = _groups(stream, JOB_CHARACTERS)
        first, second = next(groups, []), next(groups, None)
        if second is None:  # one job: counted here, not in a pool forked for it
            return _count_chunk((first, pattern, specials))
        counts: Counter[bytes] = Counter()
        with _process_pool(workers) as pool:
            jobs = ((group, pattern, specials) for group in chain([first, second], groups))
            for partial in pool.imap_unordered(_count_chunk, jobs):
                counts.update(partial)
        return counts


def _groups(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    """The texts in order, in lists of at least `size` characters (the last may have fewer)."""
    group, total = [], 0
    for text in texts:
        group.append(text)
        total += len(text)
        if total >= size:
            yield group
            group, total = [], 0
    if group:
        yield group


def _count_chunk(job: tuple[Iterable[str], str, list[str]]) -> Counter[bytes]:
    texts, pattern, special_tokens = job
    pre_tokenizer = regex.compile(pattern)
    splitter = _special_splitter(special_tokens)
    strings: Counter[str] = Counter()
    for text in map(fix_surrogates, texts):  # as encoding sees it: a lone surrogate is U+FFFD
        for part in splitter.split(text) if splitter else [text]:
            found = pieces(pre_tokenizer, part)
            if sum(map(len, found)) < len(part):
                raise UserError(_skipping(pre_tokenizer, part))
            strings.update(found)
    # Encode each distinct string once, not once per occurrence.
    return Counter({s.encode("utf-8"): n for s, n in strings.items() if s})


def _skipping(pre_tokenizer: regex.Pattern, text: str) -> str:
    """The message for a pattern that leaves characters of `text` between its matches."""
    end = 0
    for match in pre_tokenizer.finditer(text):
        if match.start() > end:
            break
        end = match.end()
    return (
        f"pre-tokenization pattern {pre_tokenizer.pattern!r} skips characters of the corpus "
        f"({text[end]!r} first), which every encoding would drop: give a pattern that matches "
        "every character, or gpt2 or gpt4"
    )


def pieces(pre_tokenizer: regex.Pattern, text: str) -> list[str]:
    """Every match of the pattern; findall would return groups if a custom pattern has any.

    Python's regex engine backtracks, so a custom pattern such as ``(a|aa)+$`` can take
    exponential time on some text. The search gets a budget linear in the text's length, some
    thirty times what the built-in patterns need, and a pattern over it is refused."""
    budget = 1.0 + 5e-6 * len(text)  # seconds
    try:
        if pre_tokenizer.groups:
            return [m.group() for m in pre_tokenizer.finditer(text, timeout=budget)]
        return pre_tokenizer.findall(text, timeout=budget)
    except TimeoutError:
        raise UserError(
            f"pre-tokenization pattern {pre_tokenizer.pattern!r} takes too long on this text "
            "(it backtracks without end on some input): simplify it, or use gpt2 or gpt4"
        ) from None


def _special_splitter(special_tokens: list[str]) -> regex.Pattern | None:
    if not special_tokens:
        return None
    # Longest first, so a special that is a prefix of another does not cut it short.
    ordered = sorted(special_tokens, key=len, reverse=True)
    return regex.compile("|".join(regex.escape(s) for s in ordered))


def _process_pool(workers: int):
    # fork starts workers in milliseconds; spawn would re-import torch in each one.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    return context.Pool(workers, initializer=_worker_signals)


def _worker_signals() -> None:
    """Ctrl-C and a closed terminal's SIGHUP are the parent's to handle (it ends the pool), and
    the SIGTERM with which the pool ends its workers ends them: not the handlers a forked worker
    inherits (the parent's raise), so that the workers print no tracebacks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class MergeTrainer:
    """The state of a training run: words as lists of token ids, pair counts, index and heap."""

    def __init__(self, word_counts: dict[bytes, int]):
        self.token_bytes: list[bytes] = [bytes([b]) for b in range(256)]
        self.id_of: dict[bytes, int] = {t: i for i, t in enumerate(self.token_bytes)}
        self.words: list[list[int]] = [list(w) for w in word_counts]
        self.freqs: list[int] = list(word_counts.values())
        self.pair_counts: defaultdict[Pair, int] = defaultdict(int)
        # pair -> indices of the words that contain it (or did: entries are removed lazily)
        self.words_with: defaultdict[Pair, set[int]] = defaultdict(set)
        for w, word in enumerate(self.words):
            self._add_pairs(w, word, self.freqs[w])
        # Max-heap through negated counts; equal counts fall back to the smallest pair of ids.
        self.heap = [(-n, pair) for pair, n in self.pair_counts.items()]
        heapq.heapify(self.heap)

    def _add_pairs(self, w: int, word: list[int], freq: int) -> None:
        counts, index = self.pair_counts, self.words_with
        for pair in zip(word, word[1:], strict=False):
            counts[pair] += freq
            index[pair].add(w)

    def best_pair(self) -> Pair | None:
        """The most frequent pair (ties: smallest ids), or None when every word is one token."""
        while self.heap:
            negated, pair = self.heap[0]
            current = self.pair_counts.get(pair, 0)
            if -negated == current:
                return pair
            # A stale entry: its count fell since it was pushed. Re-file it at its true count.
            if current > 0:
                heapq.heapreplace(self.heap, (-current, pair))
            else:
                heapq.heappop(self.heap)
        return None

    def merge(self, pair: Pair) -> int | None:
        """Merge `pair` everywhere. Returns the new token's id, or None if the bytes existed."""
        merged = self.token_bytes[pair[0]] + self.token_bytes[pair[1]]
        new_id = self.id_of.get(merged)
        created = new_id is None
        if created:
            new_id = len(self.token_bytes)
            self.token_bytes.append(merged)
            self.id_of[merged] = new_id
        fresh: set[Pair] = set()  # pairs with the merged token: their counts only grew
        for w in self.words_with.pop(pair):
            self._rewrite(w, pair, new_id, fresh)
        self.pair_counts.pop(pair, None)
        for other in fresh:
            if self.pair_counts.get(other, 0) > 0:
                heapq.heappush(self.heap, (-self.pair_counts[other], other))
        return new_id if created else None

    def _rewrite(self, w: int, pair: Pair, new_id: int, fresh: set[Pair]) -> None:
        """Merge `pair` in word `w`, updating counts and index only around the merge sites.

        Pairs away from a merge site are the same before and after, so only the old pairs that
        touch a merged pair are subtracted and only the new pairs that touch a merged token are
        added. (The merged pair's own count is dropped by the caller.)
        """
        old = self.words[w]
        old_sites = _find_pair(old, pair)
        if not old_sites:
            return  # the index is pruned lazily: this word lost the pair in an earlier merge
        freq, counts = self.freqs[w], self.pair_counts
        new, new_sites, previous = [], [], -2
        for i in old_sites:
            # (left neighbour, first), unless the previous site took it as its right neighbour
            if i > 0 and i - 2 != previous:
                counts[old[i - 1], old[i]] -= freq
            if i + 2 < len(old):  # (second, right neighbour)
                counts[old[i + 1], old[i + 2]] -= freq
            new.extend(old[previous + 2 : i])
            new_sites.append(len(new))
            new.append(new_id)
            previous = i
        new.extend(old[previous + 2 :])
        previous = -2
        for j in new_sites:
            # (left neighbour, new), unless that is (new, new), already added by the last site
            if j > 0 and j - 1 != previous:
                self._count_new_pair((new[j - 1], new_id), w, freq, fresh)
            if j + 1 < len(new):
                self._count_new_pair((new_id, new[j + 1]), w, freq, fresh)
            previous = j
        self.words[w] = new

    def _count_new_pair(self, pair: Pair, w: int, freq: int, fresh: set[Pair]) -> None:
        self.pair_counts[pair] += freq
        self.words_with[pair].add(w)
        fresh.add(pair)


def _find_pair(word: list[int], pair: Pair) -> list[int]:
    """Start positions of `pair` in `word`, taken left to right without overlap ("aaa": [0])."""
    first, second = pair
    sites, i, last = [], 0, len(word) - 1
    while True:
        try:
            i = word.index(first, i, last)  # a pair can only start before the last token
        except ValueError:
            return sites
        if word[i + 1] == second:
            sites.append(i)
            i += 2
        else:
            i += 1


def train_merges(
    word_counts: dict[bytes, int], num_merges: int, progress: bool = False
) -> list[tuple[bytes, bytes]]:
    """Up to `num_merges` merges, in order, as (left bytes, right bytes); the token is left+right.

    Stops early when no pair is left (every word is a single token).
    """
    trainer = MergeTrainer(word_counts)
    merges: list[tuple[bytes, bytes]] = []
    with tqdm(total=num_merges, desc="merging", unit="merge", disable=not progress) as bar:
        while len(merges) < num_merges:
            pair = trainer.best_pair()
            if pair is None:
                break
            left, right = (trainer.token_bytes[i] for i in pair)
            if trainer.merge(pair) is not None:
                merges.append((left, right))
                bar.update()
    return merges
