"""An in-memory nearest-neighbour index of prompt vectors, one shard per cache scope.

Each shard (tenant, kind, tier, context) holds its vectors in one float32 matrix. Up to
`BRUTE_FORCE_MAX` live entries a lookup is one matrix-vector product. Past that the shard
keeps random-hyperplane LSH tables (`LSH_TABLES` × `LSH_BITS` bits, centred on the shard's
mean so that prompts sharing a template still spread over the cells) and a lookup scores,
exactly by cosine, only the rows in the query's cells and their one-bit neighbours, plus the
rows added since the tables were last built (rebuilt when those pass a sixteenth of the
shard). Expired and removed rows are masked, and compacted away once they are half the
shard.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

BRUTE_FORCE_MAX = 4_096
LSH_TABLES = 12
LSH_BITS = 14
PLANES_SEED = 20_240_601
REBUILD_MIN = 1_024  # rows added since the last build that trigger the next one (or 1/16)


class LshTables:
    """Random-hyperplane hash tables over a fixed set of rows, as sorted numpy arrays.

    All tables live in one sorted array of (table << LSH_BITS | code) keys, so a lookup of
    every table and every one-bit neighbour of the query's cell is one `searchsorted`; there
    are no per-cell Python objects for the garbage collector to walk.
    """

    def __init__(self, planes: np.ndarray, vectors: np.ndarray, rows: np.ndarray) -> None:
        self._planes = planes
        self._weights = 1 << np.arange(LSH_BITS, dtype=np.int64)
        self._table_base = np.arange(LSH_TABLES, dtype=np.int64) << LSH_BITS
        self._flips = np.concatenate(([0], self._weights))
        self.center = vectors.mean(axis=0) if len(vectors) else np.zeros(planes.shape[1])
        keys = (self.codes(vectors) + self._table_base).ravel()  # row-major: row, table
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._rows = np.repeat(rows, LSH_TABLES)[order]

    def codes(self, vectors: np.ndarray) -> np.ndarray:
        """Return each vector's cell in every table, shape (n, LSH_TABLES)."""
        bits = ((vectors - self.center) @ self._planes.T) > 0
        return bits.reshape(len(vectors), LSH_TABLES, LSH_BITS).astype(np.int64) @ self._weights

    def candidates(self, query: np.ndarray) -> np.ndarray:
        """Return the rows sharing a cell, or a one-bit neighbour of it, with the query."""
        probes = ((self.codes(query[None, :])[0] + self._table_base)[:, None]
                  ^ self._flips[None, :]).ravel()
        low = np.searchsorted(self._keys, probes, side="left")
        high = np.searchsorted(self._keys, probes, side="right")
        lengths = high - low
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64)
        offsets = np.repeat(low - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        return self._rows[offsets + np.arange(total)]


class Shard:
    """The vectors of one cache scope."""

    def __init__(self, dimensions: int, planes: np.ndarray) -> None:
        self.dimensions = dimensions
        self._planes = planes  # (LSH_TABLES * LSH_BITS, dimensions)
        self._vectors = np.zeros((64, dimensions), dtype=np.float32)
        self._expires = np.zeros(64, dtype=np.float64)
        self._keys: list[str | None] = []
        self._row_of: dict[str, int] = {}
        self._lsh: LshTables | None = None
        self._indexed = 0  # rows below this are in the LSH tables; later ones are scanned

    def __len__(self) -> int:
        return len(self._row_of)

    @property
    def uses_lsh(self) -> bool:
        return self._lsh is not None

    def add(self, key: str, vector: np.ndarray, expires_at: float) -> None:
        """Add or replace the vector under `key` (a unit vector)."""
        self.remove(key)
        row = len(self._keys)
        if row == len(self._vectors):
            self._grow()
        self._vectors[row] = vector
        self._expires[row] = expires_at
        self._keys.append(key)
        self._row_of[key] = row

    def rebuild(self) -> None:
        """Rebuild the LSH tables, once enough rows have been added since the last rebuild."""
        unindexed = len(self._keys) - self._indexed
        if len(self._row_of) > BRUTE_FORCE_MAX and unindexed > max(REBUILD_MIN,
                                                                  len(self._row_of) // 16):
            self._rebuild_now()

    def remove(self, key: str) -> None:
        row = self._row_of.pop(key, None)
        if row is not None:
            self._keys[row] = None
            self._expires[row] = 0.0

    def search(self, query: np.ndarray, now: float, min_score: float,
               k: int = 8) -> list[tuple[str, float]]:
        """Return up to `k` live (key, cosine) pairs scoring at least `min_score`, best first."""
        rows = self._candidate_rows(query)
        if rows.size == 0:
            return []
        scores = self._vectors[rows] @ query
        keep = (scores >= min_score) & (self._expires[rows] > now)
        rows, scores = rows[keep], scores[keep]
        found = []
        for i in np.argsort(-scores)[:k]:
            key = self._keys[rows[i]]
            if key is not None:
                found.append((key, float(scores[i])))
        return found

    def expire(self, now: float) -> int:
        """Drop expired rows; compact when dead rows are half the matrix. Return live count."""
        rows = np.fromiter(self._row_of.values(), dtype=np.int64, count=len(self._row_of))
        for row in rows[self._expires[rows] <= now].tolist():
            self.remove(self._keys[row])  # type: ignore[arg-type]
        if len(self._keys) > 1_024 and len(self._row_of) < len(self._keys) // 2:
            self._rebuild_now()
        return len(self._row_of)

    def _candidate_rows(self, query: np.ndarray) -> np.ndarray:
        if self._lsh is None:
            return np.arange(len(self._keys))
        scanned = np.arange(self._indexed, len(self._keys))
        return np.unique(np.concatenate((self._lsh.candidates(query), scanned)))

    def _rebuild_now(self) -> None:
        """Compact away dead rows and hash every live one afresh (LSH past the threshold)."""
        live = sorted(self._row_of.items(), key=lambda item: item[1])
        rows = np.array([row for _, row in live], dtype=np.int64)
        size = max(64, len(rows) * 2)
        vectors = np.zeros((size, self.dimensions), dtype=np.float32)
        expires = np.zeros(size, dtype=np.float64)
        vectors[: len(rows)] = self._vectors[rows]
        expires[: len(rows)] = self._expires[rows]
        self._vectors, self._expires = vectors, expires
        self._keys = [key for key, _ in live]
        self._row_of = {key: row for row, (key, _) in enumerate(live)}
        self._indexed = len(self._keys)
        self._lsh = (LshTables(self._planes, self._vectors[: self._indexed],
                               np.arange(self._indexed)) if self._indexed > BRUTE_FORCE_MAX
                     else None)

    def _grow(self) -> None:
        size = len(self._vectors) * 2
        vectors = np.zeros((size, self.dimensions), dtype=np.float32)
        vectors[: len(self._vectors)] = self._vectors
        expires = np.zeros(size, dtype=np.float64)
        expires[: len(self._expires)] = self._expires
        self._vectors, self._expires = vectors, expires


class SemanticIndex:
    """Shards of vectors by cache scope; a key lives in exactly one shard."""

    def __init__(self, dimensions: int, seed: int = PLANES_SEED) -> None:
        self.dimensions = dimensions
        rng = np.random.default_rng(seed)
        self._planes = rng.standard_normal((LSH_TABLES * LSH_BITS, dimensions)).astype(
            np.float32)
        self._shards: dict[str, Shard] = {}

    def __len__(self) -> int:
        return sum(len(shard) for shard in self._shards.values())

    def shard(self, scope: str) -> Shard | None:
        return self._shards.get(scope)

    def add(self, scope: str, key: str, vector: np.ndarray, expires_at: float) -> None:
        self.add_many([(scope, key, vector, expires_at)])

    def add_many(self, records: Iterable[tuple[str, str, np.ndarray, float]]) -> None:
        """Add (scope, key, vector, expires_at) records, then rebuild what needs it once."""
        touched: dict[str, Shard] = {}
        for scope, key, vector, expires_at in records:
            shard = self._shards.get(scope)
            if shard is None:
                shard = self._shards[scope] = Shard(self.dimensions, self._planes)
            shard.add(key, vector, expires_at)
            touched[scope] = shard
        for shard in touched.values():
            shard.rebuild()

    def remove(self, scope: str, key: str) -> None:
        shard = self._shards.get(scope)
        if shard is not None:
            shard.remove(key)

    def search(self, scope: str, query: np.ndarray, now: float, min_score: float,
               k: int = 8) -> list[tuple[str, float]]:
        shard = self._shards.get(scope)
        return shard.search(query, now, min_score, k) if shard is not None else []

    def expire(self, now: float) -> None:
        """Drop expired entries everywhere, and shards left empty."""
        for scope in [s for s, b in self._shards.items() if b.expire(now) == 0]:
            del self._shards[scope]
