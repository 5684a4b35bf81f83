"""Exact and near-duplicate removal over prompts or responses.

Near-dup: MinHash signatures of word n-gram shingles, computed for a whole batch of documents
at once with numpy (tokenizing is the only per-document Python work), LSH banding (datasketch's
MinHashLSH by default, our numpy banding as a faster, leaner option), and every LSH candidate verified by the exact
Jaccard of the shingle sets, so the bands can be tuned for recall without paying for it in
precision.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable, Iterator

import numpy as np
from datasketch import MinHashLSH

from .base import Filter, Item

_WORD = re.compile(r"\w+")
# odd 64-bit constants to mix word ids into well-spread hashes (splitmix64 finalizer)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def normalize(text: str) -> str:
    """Case, Unicode forms, whitespace and punctuation at the ends do not make a text new.
    Punctuation inside stays: "2+2" and "2-2" are different questions."""
    text = " ".join(unicodedata.normalize("NFKC", text).lower().split())
    i, j = 0, len(text)
    while i < j and not text[i].isalnum():
        i += 1
    while j > i and not text[j - 1].isalnum():
        j -= 1
    return text[i:j]


def words_of(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscore), punctuation dropped."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def text_hash(text: str) -> str:
    return hashlib.blake2b(normalize(text).encode(), digest_size=16).hexdigest()


class ExactDedup(Filter):
    """Drops an item whose normalized text was already seen (the first one seen is kept)."""

    name = "exact_dedup"

    def __init__(self, as_rejected: bool = False):
        super().__init__(as_rejected)
        self.seen: dict[str, str] = {}

    def filter(self, item: Item):
        h = text_hash(item.text)
        first = self.seen.setdefault(h, item.id)
        if first == item.id:
            return True
        return False, "exact_duplicate", {"duplicate_of": first}


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def lsh_params(threshold: float, num_perm: int, recall_at_threshold: float = 0.98) -> tuple[int, int]:
    """Bands b and rows r: the most rows (fewest false candidates) that still make a pair at
    exactly `threshold` a candidate with probability >= recall_at_threshold."""
    for r in range(num_perm, 0, -1):
        b = num_perm // r
        if 1 - (1 - threshold**r) ** b >= recall_at_threshold:
            return b, r
    return num_perm, 1


class _Signature:
    """The two things MinHashLSH reads from a MinHash; building a full MinHash per document
    would cost more than computing all the signatures."""

    __slots__ = ("hashvalues",)

    def __init__(self, hashvalues: np.ndarray):
        self.hashvalues = hashvalues

    def __len__(self) -> int:
        return len(self.hashvalues)


class _Vocab(dict):
    """word -> small int, assigned in order of first appearance: deterministic for a given input
    order, unlike the per-process randomized `hash()`."""

    def __missing__(self, word: str) -> int:
        self[word] = v = len(self) + 1
        return v


_SEP = "\x1e"  # record separator: never part of a \w+ match
_TOKEN = re.compile(r"\w+|\x1e")


class MinHasher:
    """Batched MinHash over word n-gram shingles.

    The permutations are affine maps (a*x + b) mod 2^32 of shingle hashes that are already
    well mixed 32-bit values, laid out (num_perm, shingles) so the per-document minimum is a
    contiguous reduceat: about 5x faster than datasketch's (a*x + b) mod (2^61 - 1) on uint64,
    with recall checked by bench/filters.py."""

    def __init__(self, num_perm: int = 128, ngram: int = 3, seed: int = 1):
        rng = np.random.RandomState(seed)
        self.num_perm, self.ngram = num_perm, ngram
        self.a = (rng.randint(0, 1 << 31, size=num_perm).astype(np.uint32) * np.uint32(2) + np.uint32(1))[:, None]
        self.b = rng.randint(0, 1 << 32, size=num_perm, dtype=np.uint64).astype(np.uint32)[:, None]
        self.vocab = _Vocab()
        self.vocab[_SEP] = 0
        # per-position multipliers make "a b c" and "c b a" different shingles
        self.pos = _mix(np.arange(1, ngram + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))

    def shingles(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """All shingle hashes (uint32) of the batch, and each document's offsets into them."""
        n, ndocs = self.ngram, len(texts)
        # one regex pass and one dict pass over the whole batch; separators mark the documents
        tokens = _TOKEN.findall(_SEP.join(t.replace(_SEP, " ") for t in texts).lower() + _SEP)
        ids = np.fromiter(map(self.vocab.__getitem__, tokens), dtype=np.uint64, count=len(tokens))
        seps = np.flatnonzero(ids == 0)
        starts = np.concatenate([[0], seps[:-1] + 1])          # in token positions
        lengths = seps - starts
        words = _mix(ids)
        total = len(words)
        # acc after step k holds the hash of the k+1 words starting at each position
        acc = np.zeros(total, dtype=np.uint64)
        short = lengths < n
        short_hash = np.zeros(ndocs, dtype=np.uint64)
        for k in range(n):
            acc[: total - k] += words[k:] * self.pos[k]
            done = short & (lengths == k + 1)
            short_hash[done] = acc[starts[done]]
        # full shingles: positions j with j + n <= end of the document
        counts = np.where(short, (lengths > 0).astype(np.int64), lengths - n + 1)
        offsets = np.zeros(ndocs + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        doc_of = np.repeat(np.arange(ndocs), counts)
        local = np.arange(offsets[-1]) - offsets[:-1][doc_of]
        sh = acc[starts[doc_of] + local]
        is_short = short[doc_of]
        sh[is_short] = short_hash[doc_of[is_short]]
        return (_mix(sh) >> np.uint64(32)).astype(np.uint32), offsets

    def signatures(self, sh: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(docs, num_perm) MinHash values; an empty document gets all-max values."""
        sig = np.full((len(offsets) - 1, self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        nonempty = np.flatnonzero(np.diff(offsets) > 0)
        # chunks keep the (num_perm x shingles) matrix near 16 MB
        step = max(1, (1 << 22) // self.num_perm)
        lo = 0
        while lo < len(nonempty):
            hi = int(np.searchsorted(offsets[nonempty], offsets[nonempty[lo]] + step, side="right"))
            hi = max(hi, lo + 1)
            docs = nonempty[lo:hi]
            a, b = offsets[docs[0]], offsets[docs[-1] + 1]
            phv = self.a * sh[a:b][None, :]
            phv += self.b
            sig[docs] = np.minimum.reduceat(phv, offsets[docs] - a, axis=1).T
            lo = hi
        return sig


class MinHashDedup(Filter):
    """Drops an item whose Jaccard similarity (word n-gram shingles) with an earlier item is
    >= threshold; the earliest of a cluster stays.

    index="datasketch" (default) streams documents through datasketch.MinHashLSH (query, then
    insert); its dict-of-sets buckets cost about 7 KB per document. index="numpy" bands all
    signatures at once: per band, a sort groups equal band keys and each document is paired with
    the first and the previous member of its bucket; one uint64 per band per document, the same
    recall, 3x the speed (bench/filters.py prints both)."""

    name = "near_dedup"

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, ngram: int = 3,
                 batch_size: int = 2048, index: str = "datasketch", as_rejected: bool = False):
        super().__init__(as_rejected)
        if index not in ("numpy", "datasketch"):
            raise ValueError(f"index must be numpy or datasketch, not {index!r}")
        self.threshold, self.batch_size, self.index = threshold, batch_size, index
        self.hasher = MinHasher(num_perm=num_perm, ngram=ngram)
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self.shingles: list[np.ndarray] = []  # per document (views into the batch arrays)
        self.ids: list[str] = []
        self._matches: dict[int, tuple[int, float]] = {}  # position -> (earlier position, Jaccard)
        self._pos = 0

    def _jaccard(self, i: int, j: int, cache: dict[int, np.ndarray]) -> float:
        """Exact Jaccard of two documents' shingle sets: only LSH candidates pay for it."""
        a = cache[i] if i in cache else cache.setdefault(i, np.unique(self.shingles[i]))
        b = cache[j] if j in cache else cache.setdefault(j, np.unique(self.shingles[j]))
        inter = len(np.intersect1d(a, b, assume_unique=True))
        return inter / (len(a) + len(b) - inter)

    def _signatures(self, items: list[Item]) -> Iterator[np.ndarray]:
        for lo in range(0, len(items), self.batch_size):
            batch = items[lo:lo + self.batch_size]
            sh, offsets = self.hasher.shingles([x.text for x in batch])
            self.shingles.extend(sh[offsets[i]:offsets[i + 1]] for i in range(len(batch)))
            yield self.hasher.signatures(sh, offsets)

    def _band_keys(self, sig: np.ndarray) -> np.ndarray:
        """(docs, bands) uint64: each band's rows mixed into one key; empty documents get none."""
        used = sig[:, : self.bands * self.rows].astype(np.uint64).reshape(len(sig), self.bands, self.rows)
        mult = _mix(np.arange(1, self.rows + 1, dtype=np.uint64))
        keys = _mix((used * mult).sum(axis=2, dtype=np.uint64))
        return keys

    def _numpy_matches(self, items: list[Item]) -> None:
        keys = np.zeros((0, self.bands), np.uint64)
        if items:
            keys = np.concatenate([self._band_keys(sig) for sig in self._signatures(items)])
        empty = np.array([len(s) == 0 for s in self.shingles], dtype=bool)
        n = len(items)
        cand = []
        for band in range(self.bands):
            k = keys[:, band]
            order = np.argsort(k, kind="stable")       # stable: a bucket's members in input order
            order = order[~empty[order]]
            ks = k[order]
            start = np.ones(len(ks), dtype=bool)
            start[1:] = ks[1:] != ks[:-1]
            member = np.flatnonzero(~start)
            if len(member) == 0:
                continue
            head = order[np.flatnonzero(start)][np.cumsum(start)[member] - 1]
            later = order[member]
            cand.append(later * n + head)
            cand.append(later * n + order[member - 1])
        if not cand:
            return
        pairs = np.unique(np.concatenate(cand))
        cache: dict[int, np.ndarray] = {}
        for later, earlier in zip(*divmod(pairs, n)):
            if earlier >= later:
                continue
            j = self._jaccard(int(later), int(earlier), cache)
            if j >= self.threshold and j > self._matches.get(int(later), (0, 0.0))[1]:
                self._matches[int(later)] = (int(earlier), j)

    def _datasketch_matches(self, items: list[Item]) -> None:
        lsh = MinHashLSH(num_perm=self.hasher.num_perm, params=(self.bands, self.rows))
        cache: dict[int, np.ndarray] = {}
        pos = 0
        for sig in self._signatures(items):
            for row in sig:
                if len(self.shingles[pos]):
                    s = _Signature(row)
                    for other in lsh.query(s):
                        j = self._jaccard(pos, other, cache)
                        if j >= self.threshold and j > self._matches.get(pos, (0, 0.0))[1]:
                            self._matches[pos] = (other, j)
                    lsh.insert(pos, s, check_duplication=False)
                pos += 1
            cache.clear()

    def run(self, items: Iterable[Item]) -> Iterator[Item]:
        # near-dup needs every document before it can decide about the first one
        items = list(items)
        self.ids = [x.id for x in items]
        (self._numpy_matches if self.index == "numpy" else self._datasketch_matches)(items)
        for self._pos, item in enumerate(items):
            if self.judge(item):
                yield item

    def filter(self, item: Item):
        match = self._matches.get(self._pos)
        if match is None:
            return True
        other, j = match
        return False, f"jaccard>={self.threshold:g}", {"duplicate_of": self.ids[other], "jaccard": round(j, 4)}
