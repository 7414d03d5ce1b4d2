"""Explore/exploit: the last positions of a ranked list may show an under-exposed item instead of the ranker's.

The serving engine produces, for a block of requests, ranked lists of dense item indices (``n_requests x k``,
best first, ``-1`` padded at the end). :class:`ExplorationPolicy` rewrites the tail of those lists according to
``ExplorationConfig``:

- ``none`` (or ``slots == 0``): the lists are returned unchanged;
- ``epsilon_greedy``: each of the ``slots`` exploration slots explores independently with probability ``epsilon``;
  an exploring slot shows an item drawn uniformly from the row's *eligible* pool;
- ``thompson``: every exploration slot explores; per request, one value is drawn from each pool item's
  ``Beta(1 + successes, 1 + failures)`` posterior and the eligible items with the highest draws fill the slots
  (best draw first). The default prior is ``successes = failures = 0``, i.e. ``Beta(1, 1)``: with no feedback the
  choice is uniform over the pool, and :meth:`ExplorationPolicy.update` learns from clicks.

**Pool.** The pool is the set of items whose exposure (e.g. interaction count in the history) is strictly below
the ``underexposed_quantile`` quantile of all items' exposure; if no item is strictly below it (many ties), the
items at or below it. A non-empty catalogue therefore always has a non-empty pool. An item is *eligible* for a row
when it is in the pool, not anywhere in that row's list (before rewriting), not stored in that row of
``excluded`` (the user's seen or blocked items) and not already chosen by an earlier slot of the same row. A slot
that finds no eligible item does not explore.

**Placement.** A row's explored items (in slot order) form one contiguous run at the end of its real items: in
the first free (``-1``) positions when there are enough of them, otherwise replacing the lowest-ranked real
items, so that the run ends at position ``k - 1``. For a full row this is exactly "the last positions of the
list"; for a short row nothing real is replaced when there is room. ``explored_mask`` marks the positions that
hold explored items.

**Determinism.** Every random number is a pure function of the request key (see :func:`request_keys`, which
folds in the seed), of a fixed stream constant and of the slot or item index: a uniform is the hash
``mix64(key ^ salt)`` (``mix64``: the splitmix64 step; ``salt``: from the stream and the index) scaled to the open
interval ``(0, 1)``. So a request with the same list and exclusions always gets the same result, whatever batch it
is part of and however the batch is split into blocks, and nothing depends on Python's randomised ``hash()`` or
on global random state.

**Vectorisation.** There is no Python loop over requests. ``epsilon_greedy`` picks the ``j``-th eligible pool
item of every row at once from the sorted ``(row, pool position)`` codes of the forbidden items (one sort of
``n_requests x k`` codes per slot), so cost is ``O(n k log(n k))``. ``thompson`` needs a draw per (request, pool
item): Beta draws are ratios of Gamma draws made with the Marsaglia-Tsang rejection sampler, run in vectorised
rounds on hashed uniforms (an exact sampler; the very few draws still rejected after all rounds are taken by the
inverse CDF). Items still at the ``Beta(1, 1)`` prior are drawn as plain uniforms. Work is done in blocks of about
``_BLOCK_ELEMENTS`` (request, pool item) pairs so memory does not grow with the number of requests; the cost is
``O(n_requests x pool)`` (roughly 0.1-0.2 microseconds per pair for pool items with feedback).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from scipy import special, stats

from recops.config import ExplorationConfig

__all__ = ["ExplorationPolicy", "mix64", "request_keys"]

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)

# stream constants: each kind of random number has its own, so no two draws share a salt
_STREAM_DECIDE = 0x5EED_0001  # epsilon_greedy: does slot s explore?
_STREAM_CHOOSE = 0x5EED_0002  # epsilon_greedy: which eligible item does slot s show?
_STREAM_UNIFORM = 0x5EED_0003  # thompson: draw of an item at the Beta(1, 1) prior
_STREAM_GAMMA = 0x5EED_0100  # thompson: Gamma rounds (+ 2 * round + which), then the inverse-CDF fallback
_GAMMA_ROUNDS = 8  # Marsaglia-Tsang accepts > 95% per round, so < 1e-10 of draws reach the fallback
_BLOCK_ELEMENTS = 1 << 20  # thompson: (request, pool item) pairs per block


def mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 step on every element: ``z = x + 0x9E3779B97F4A7C15``, then
    ``z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9``, ``z = (z ^ z >> 27) * 0x94D049BB133111EB``, ``z ^ z >> 31``
    (all modulo 2**64).

    Args:
        x: Integers; converted to ``uint64`` (negative values wrap modulo 2**64).

    Returns:
        A ``uint64`` array of the shape of ``x``.
    """
    z = np.asarray(x).astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += _GOLDEN
        z ^= z >> np.uint64(30)
        z *= _MUL1
        z ^= z >> np.uint64(27)
        z *= _MUL2
        z ^= z >> np.uint64(31)
    return z


def _u64(value: int) -> np.ndarray:
    """A Python integer modulo 2**64, as a 0-d ``uint64`` array."""
    return np.array(int(value) & _MASK64, dtype=np.uint64)


def request_keys(user_indices: np.ndarray, request_ids: Sequence[str] | None, seed: int) -> np.ndarray:
    """One deterministic 64-bit key per request, the only source of randomness of :meth:`ExplorationPolicy.apply`.

    Without request ids (batch scoring: one list per user) the key is, vectorised,
    ``mix64(mix64(seed mod 2**64) ^ (user mod 2**64))``, with :func:`mix64` the splitmix64 step. With request ids
    (online serving: a user may ask several times) it is the first 8 bytes, read little-endian, of
    ``blake2b(f"{seed}:{user}:{request_id}".encode("utf-8"), digest_size=8)``; this hashes one request at a time,
    which is meant for the few requests of an online call. Neither depends on Python's randomised ``hash()``, so
    keys are the same across calls, processes and machines.

    Args:
        user_indices: Dense user index of each request, 1-d integers.
        request_ids: One id per request (same length as ``user_indices``), or ``None``.
        seed: The exploration seed (``ExplorationConfig.seed``); any Python integer.

    Returns:
        A ``uint64`` array of ``len(user_indices)`` keys.

    Raises:
        ValueError: ``user_indices`` is not 1-d integers, or ``request_ids`` has another length.
    """
    users = np.asarray(user_indices)
    if users.ndim != 1 or not (users.size == 0 or np.issubdtype(users.dtype, np.integer)):
        raise ValueError(f"user_indices must be a 1-d integer array, got shape {users.shape} and dtype {users.dtype}")
    if request_ids is None:
        with np.errstate(over="ignore"):
            return mix64(mix64(_u64(seed)) ^ users.astype(np.int64).view(np.uint64))
    if len(request_ids) != len(users):
        raise ValueError(f"request_ids has {len(request_ids)} ids for {len(users)} user indices")
    keys = np.empty(len(users), dtype=np.uint64)
    for i, (user, request_id) in enumerate(zip(users.tolist(), request_ids)):
        digest = hashlib.blake2b(f"{int(seed)}:{user}:{request_id}".encode("utf-8"), digest_size=8).digest()
        keys[i] = int.from_bytes(digest, "little")
    return keys


def _salt(stream: int, index: np.ndarray | int) -> np.ndarray:
    """A well-mixed 64-bit salt per index of one stream: ``mix64(mix64(stream) ^ index)``."""
    return mix64(mix64(_u64(stream)) ^ np.asarray(index).astype(np.int64).view(np.uint64))


def _uniform(keys: np.ndarray, salt: np.ndarray) -> np.ndarray:
    """Uniforms in the open interval (0, 1), one per broadcast ``(key, salt)`` pair, 53 bits each."""
    bits = mix64(keys ^ salt) >> np.uint64(11)
    return (bits.astype(np.float64) + 0.5) * (1.0 / (1 << 53))


def _uniform_pair(keys: np.ndarray, salt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two uniforms in (0, 1) per broadcast ``(key, salt)`` pair from one hash: its high and low 32 bits."""
    z = mix64(keys ^ salt)
    scale = 1.0 / (1 << 32)
    high = ((z >> np.uint64(32)).astype(np.float64) + 0.5) * scale
    low = ((z & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) * scale
    return high, low


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (sort and drop repeats: faster than ``np.unique``'s hashing on large int arrays)."""
    values = np.sort(values)
    if values.size < 2:
        return values
    return values[np.concatenate(([True], values[1:] != values[:-1]))]


def _gamma(keys: np.ndarray, items: np.ndarray, alpha: np.ndarray, which: int) -> np.ndarray:
    """Gamma(alpha) draws for every (request, item) pair, ``alpha >= 1``, by Marsaglia-Tsang on hashed uniforms.

    Args:
        keys: ``(b,)`` request keys.
        items: ``(p,)`` item indices (they salt the draws, so a draw does not depend on the other items).
        alpha: ``(p,)`` shapes, each at least 1.
        which: 0 or 1, so the two Gammas of one Beta draw use different streams.

    Returns:
        A ``(b, p)`` float64 array.
    """
    b, p = len(keys), len(items)
    d = alpha - 1.0 / 3.0
    c = 1.0 / np.sqrt(9.0 * d)

    def attempt(rnd: int, row_keys: np.ndarray, cols: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        u_normal, u_accept = _uniform_pair(row_keys, _salt(_STREAM_GAMMA + 2 * rnd + which, items)[cols])
        x = special.ndtri(u_normal)
        t = 1.0 + c[cols] * x
        v = t * t * t
        log_u = np.log(u_accept)
        positive = v > 0
        log_v = np.log(np.where(positive, v, 1.0))
        accept = positive & (log_u < 0.5 * x * x + d[cols] * (1.0 - v + log_v))
        return accept, d[cols] * v

    # round 0 on the dense (b, p) grid; later rounds only on the few rejected pairs
    accept, value = attempt(0, keys[:, None], slice(None))
    out = value.ravel()
    pending = np.flatnonzero(~accept)
    for rnd in range(1, _GAMMA_ROUNDS):
        if pending.size == 0:
            break
        rows, cols = np.divmod(pending, p)
        accept, value = attempt(rnd, keys[rows], cols)
        out[pending[accept]] = value[accept]
        pending = pending[~accept]
    if pending.size:  # practically never: take the exact inverse CDF of one more hashed uniform
        rows, cols = np.divmod(pending, p)
        u = _uniform(keys[rows], _salt(_STREAM_GAMMA + 2 * _GAMMA_ROUNDS + which, items)[cols])
        out[pending] = special.gammaincinv(alpha[cols], u)
    return out.reshape(b, p)


class ExplorationPolicy:
    """Rewrites the tail of ranked lists with under-exposed items, deterministically per request key.

    Args:
        config: The ``serving.exploration`` section.
        exposure: Per-item exposure, 1-d, one value per catalogue item (e.g. interaction counts in the history);
            its length is the catalogue size.
        successes: Per-item successes (clicks) for the Thompson posterior; default all 0.
        failures: Per-item failures (shown, not clicked) for the Thompson posterior; default all 0. With both at
            0 every item's posterior is the uniform ``Beta(1, 1)``.

    Raises:
        ValueError: An array is not 1-d of the catalogue's length, or holds non-finite or negative counts.
    """

    def __init__(self, config: ExplorationConfig, exposure: np.ndarray, successes: np.ndarray | None = None,
                 failures: np.ndarray | None = None) -> None:
        self.config = config
        exposure = np.asarray(exposure, dtype=np.float64)
        if exposure.ndim != 1:
            raise ValueError(f"exposure must be 1-d (one value per item), got shape {exposure.shape}")
        if not np.all(np.isfinite(exposure)):
            raise ValueError("exposure must be finite")
        self.n_items = len(exposure)
        self._successes = self._counts(successes, "successes")
        self._failures = self._counts(failures, "failures")
        if self.n_items:
            threshold = np.quantile(exposure, config.underexposed_quantile)
            in_pool = exposure < threshold
            if not in_pool.any():
                in_pool = exposure <= threshold
            self._pool = np.flatnonzero(in_pool).astype(np.int64)
        else:
            self._pool = np.empty(0, dtype=np.int64)
        self._position = np.full(self.n_items, -1, dtype=np.int64)  # item -> position in the pool, -1 outside
        self._position[self._pool] = np.arange(len(self._pool))

    def _counts(self, values: np.ndarray | None, name: str) -> np.ndarray:
        if values is None:
            return np.zeros(self.n_items)
        values = np.array(values, dtype=np.float64)
        if values.shape != (self.n_items,):
            raise ValueError(f"{name} must have one value per item ({self.n_items}), got shape {values.shape}")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError(f"{name} must be finite and non-negative")
        return values

    @property
    def pool(self) -> np.ndarray:
        """Item indices of the exploration pool, ascending (a copy)."""
        return self._pool.copy()

    @property
    def successes(self) -> np.ndarray:
        """Per-item successes of the Thompson posterior (a copy)."""
        return self._successes.copy()

    @property
    def failures(self) -> np.ndarray:
        """Per-item failures of the Thompson posterior (a copy)."""
        return self._failures.copy()

    @property
    def active(self) -> bool:
        """Whether :meth:`apply` can change anything (a policy, at least one slot, a non-empty pool)."""
        return self.config.policy != "none" and self.config.slots > 0 and len(self._pool) > 0

    def keys(self, user_indices: np.ndarray, request_ids: Sequence[str] | None = None) -> np.ndarray:
        """:func:`request_keys` with this policy's seed."""
        return request_keys(user_indices, request_ids, self.config.seed)

    def update(self, items: np.ndarray, clicked: np.ndarray) -> None:
        """Learn from feedback: each shown item adds 1 to its successes if clicked, else to its failures.

        Args:
            items: Item indices that were shown, any shape; negative values (list padding) are skipped.
            clicked: Booleans of the same shape: whether each shown item was clicked.

        Raises:
            ValueError: The shapes differ or an item index is outside the catalogue.
        """
        items = np.asarray(items)
        clicked = np.asarray(clicked, dtype=bool)
        if items.shape != clicked.shape:
            raise ValueError(f"items and clicked must have the same shape, got {items.shape} and {clicked.shape}")
        items, clicked = items.ravel().astype(np.int64), clicked.ravel()
        keep = items >= 0
        items, clicked = items[keep], clicked[keep]
        if items.size and items.max() >= self.n_items:
            raise ValueError(f"item index {int(items.max())} is outside the catalogue of {self.n_items} items")
        np.add.at(self._successes, items[clicked], 1.0)
        np.add.at(self._failures, items[~clicked], 1.0)

    def apply(self, lists: np.ndarray, keys: np.ndarray,
              excluded: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rewrite the tail of every list with exploration items (see the module docstring for the rules).
        :meth:`apply_logged` also gives each shown item's propensity.

        Args:
            lists: ``(n, k)`` dense item indices, best first, ``-1`` padding after the real items only.
            keys: ``(n,)`` request keys (:func:`request_keys`), one per row.
            excluded: Optional ``(n, >= n_items)`` sparse matrix whose non-zero entries are items that row must
                never be shown (seen or blocked items), rows aligned with ``lists``.

        Returns:
            ``(new_lists, explored_mask)``: a new array of the dtype and shape of ``lists``, and a bool array of
            that shape, True where the position holds an explored item. ``lists`` itself is not modified.

        Raises:
            ValueError: Shapes do not match, padding is not at the end of a row, or an item is outside the
                catalogue.
        """
        new_lists, explored, _ = self.apply_logged(lists, keys, excluded)
        return new_lists, explored

    def apply_logged(self, lists: np.ndarray, keys: np.ndarray,
                     excluded: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`apply`, plus the *propensity* of every shown item: the probability that this policy shows
        that item at that position of the row, what off-policy evaluation divides by (the impression log keeps
        it). ``NaN`` for padding, and for Thompson's explored items (a Beta-draw ranking has no closed form).

        - A position before the exploration slots: 1.
        - epsilon-greedy: with ``E ~ Binomial(slots, epsilon)`` exploring slots, of which ``min(E, P)`` find an
          item (``P``: the row's eligible items), the run of explored items covers positions
          ``[first, first + min(E, P))`` with ``first = min(len, k - min(E, P))``. A ranker item at position
          ``p`` is shown there exactly when ``p < first``; an explored item, by the symmetry of drawing without
          replacement, stands at a covered position ``p`` with probability ``P(p is covered) / P``. Both are
          summed over the ``slots + 1`` values of ``E``: exact for any number of slots. (With one slot: ``1 -
          epsilon`` for the ranker's last item of a full list, ``epsilon / P`` for the explored one.)
        - Thompson, a ranker item that survives: 1 (every slot explores).
        """
        lists = np.asarray(lists)
        if lists.ndim != 2 or not (lists.size == 0 or np.issubdtype(lists.dtype, np.integer)):
            raise ValueError(f"lists must be a 2-d integer array, got shape {lists.shape} and dtype {lists.dtype}")
        n, k = lists.shape
        keys = np.asarray(keys)
        if keys.shape != (n,):
            raise ValueError(f"keys must have one key per row ({n}), got shape {keys.shape}")
        keys = keys.astype(np.uint64)
        real = lists >= 0
        if k > 1 and np.any(real[:, 1:] & ~real[:, :-1]):
            raise ValueError("lists must be padded with -1 after the real items only")
        if np.any(lists >= self.n_items):
            raise ValueError(f"lists hold an item index outside the catalogue of {self.n_items} items")
        if excluded is not None:
            excluded = sp.csr_matrix(excluded)
            if excluded.shape[0] != n:
                raise ValueError(f"excluded must have one row per list ({n}), got {excluded.shape[0]}")
        new_lists = lists.copy()
        explored = np.zeros((n, k), dtype=bool)
        propensity = np.where(real, 1.0, np.nan)
        slots = min(self.config.slots, k)
        if not self.active or slots == 0 or n == 0:
            return new_lists, explored, propensity

        forbidden = self._forbidden(lists, real, excluded)
        lengths = real.sum(axis=1)
        if self.config.policy == "epsilon_greedy":
            chosen, eligible = self._epsilon_greedy(keys, forbidden, slots)
            self._place(new_lists, explored, lengths, chosen)
            shown_ranker, covered = self._coverage(lengths, eligible, k, slots)
            propensity = np.where(explored, covered / np.maximum(eligible, 1)[:, None],
                                  np.where(new_lists >= 0, shown_ranker, np.nan))
        else:
            chosen = self._thompson(keys, forbidden, slots)
            self._place(new_lists, explored, lengths, chosen)
            propensity = np.where(explored | (new_lists < 0), np.nan, 1.0)
        return new_lists, explored, propensity

    def _coverage(self, lengths: np.ndarray, eligible: np.ndarray, k: int,
                  slots: int) -> tuple[np.ndarray, np.ndarray]:
        """``(n, k)`` probabilities that position p still shows the ranker's item, and that the explored run
        covers it, summed over the number of exploring slots (see :meth:`apply_logged`)."""
        positions = np.arange(k)[None, :]
        shown_ranker = np.zeros((len(lengths), k))
        covered = np.zeros((len(lengths), k))
        for e, weight in enumerate(stats.binom.pmf(np.arange(slots + 1), slots, self.config.epsilon)):
            run = np.minimum(e, eligible)[:, None]
            first = np.minimum(lengths[:, None], k - run)
            shown_ranker += weight * (positions < first)
            covered += weight * ((positions >= first) & (positions < first + run))
        return np.minimum(shown_ranker, 1.0), np.minimum(covered, 1.0)  # sums of pmf weights: no 1 + 2e-16

    def _forbidden(self, lists: np.ndarray, real: np.ndarray, excluded: sp.csr_matrix | None) -> np.ndarray:
        """Sorted unique codes ``row * pool_size + pool_position`` of the pool items a row must not get."""
        n, k = lists.shape
        p = len(self._pool)
        rows = np.repeat(np.arange(n, dtype=np.int64), k)[real.ravel()]
        positions = self._position[lists[real].astype(np.int64)]
        parts = [rows[positions >= 0] * p + positions[positions >= 0]]
        if excluded is not None:
            ex_rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(excluded.indptr))
            ex_items = excluded.indices.astype(np.int64)
            keep = (excluded.data != 0) & (ex_items < self.n_items)
            ex_positions = self._position[ex_items[keep]]
            ex_rows = ex_rows[keep]
            parts.append(ex_rows[ex_positions >= 0] * p + ex_positions[ex_positions >= 0])
        return _sorted_unique(np.concatenate(parts))

    def _epsilon_greedy(self, keys: np.ndarray, forbidden: np.ndarray, slots: int) -> tuple[np.ndarray, np.ndarray]:
        """``(n, slots)`` chosen items, ``-1`` where a slot does not explore or finds no eligible item; and each
        row's number of eligible items before the first slot."""
        n, p = len(keys), len(self._pool)
        chosen = np.full((n, slots), -1, dtype=np.int64)
        first_eligible = p - np.bincount(forbidden // p, minlength=n)
        rows_all = np.arange(n, dtype=np.int64)
        for s in range(slots):
            explores = _uniform(keys, _salt(_STREAM_DECIDE, s)) < self.config.epsilon
            forbidden_rows = forbidden // p
            starts = np.searchsorted(forbidden_rows, rows_all)  # first code of each row
            eligible = p - np.bincount(forbidden_rows, minlength=n)
            rows = np.flatnonzero(explores & (eligible > 0))
            if rows.size == 0:
                continue
            j = np.minimum((_uniform(keys[rows], _salt(_STREAM_CHOOSE, s)) * eligible[rows]).astype(np.int64),
                           eligible[rows] - 1)
            # the j-th eligible position is j + #{forbidden f_i of the row: f_i - rank_i <= j}
            gaps = forbidden % p - (np.arange(len(forbidden)) - starts[forbidden_rows])
            gap_keys = forbidden_rows * (p + 1) + gaps
            before = np.searchsorted(gap_keys, rows * (p + 1) + j, side="right") - starts[rows]
            positions = j + before
            chosen[rows, s] = self._pool[positions]
            forbidden = np.sort(np.concatenate([forbidden, rows * p + positions]))  # new codes were eligible
        return chosen, first_eligible

    def _thompson(self, keys: np.ndarray, forbidden: np.ndarray, slots: int) -> np.ndarray:
        """``(n, slots)`` items with the highest posterior draws per row, ``-1`` where none is eligible."""
        n, p = len(keys), len(self._pool)
        chosen = np.full((n, slots), -1, dtype=np.int64)
        alpha = 1.0 + self._successes[self._pool]
        beta = 1.0 + self._failures[self._pool]
        flat = (alpha == 1.0) & (beta == 1.0)  # Beta(1, 1): a plain uniform
        flat_cols, beta_cols = np.flatnonzero(flat), np.flatnonzero(~flat)
        flat_salt = _salt(_STREAM_UNIFORM, self._pool[flat_cols])
        block = max(1, _BLOCK_ELEMENTS // p)
        for start in range(0, n, block):
            stop = min(n, start + block)
            block_keys = keys[start:stop]
            draws = np.empty((stop - start, p))
            draws[:, flat_cols] = _uniform(block_keys[:, None], flat_salt[None, :])
            if beta_cols.size:
                items = self._pool[beta_cols]
                x = _gamma(block_keys, items, alpha[beta_cols], 0)
                y = _gamma(block_keys, items, beta[beta_cols], 1)
                draws[:, beta_cols] = x / (x + y)
            lo, hi = np.searchsorted(forbidden, [start * p, stop * p])
            codes = forbidden[lo:hi]
            draws[codes // p - start, codes % p] = -np.inf
            local = np.arange(stop - start)
            for s in range(slots):
                best = np.argmax(draws, axis=1)
                ok = np.isfinite(draws[local, best])
                chosen[start:stop, s] = np.where(ok, self._pool[best], -1)
                draws[local, best] = -np.inf
        return chosen

    @staticmethod
    def _place(lists: np.ndarray, explored: np.ndarray, lengths: np.ndarray, chosen: np.ndarray) -> None:
        """Write each row's chosen items (slot order, ``-1`` skipped) as one run ending at ``min(len + e, k)``."""
        n, k = lists.shape
        order = np.argsort(chosen < 0, axis=1, kind="stable")
        chosen = np.take_along_axis(chosen, order, axis=1)
        counts = (chosen >= 0).sum(axis=1)
        first = np.minimum(lengths, k - counts)
        for t in range(chosen.shape[1]):
            rows = np.flatnonzero(counts > t)
            lists[rows, first[rows] + t] = chosen[rows, t]
            explored[rows, first[rows] + t] = True
