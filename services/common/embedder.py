"""Turn prompts into unit vectors for the semantic cache; three interchangeable embedders.

- `LocalEmbedder` (default): hashed words, word pairs and character trigrams. Needs no model
  and no download, embeds a prompt in well under a millisecond, and puts rewordings that keep
  the words (order, politeness, plurals, typos) close together.
- `SentenceEmbedder`: a local MiniLM-class ONNX model (`model.onnx` + `tokenizer.json` in a
  directory), for paraphrases that change the words; needs `onnxruntime` and `tokenizers`.
- `ProviderEmbedder`: the provider's `/v1/embeddings`.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from services.common.config import AgentqConfig
from services.common.wording import FILLER, STOPWORDS, stem, tokens

LOCAL_DIMENSIONS = 256
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
    """A local sentence-embedding model in ONNX form, mean-pooled (all-MiniLM-L6-v2 style)."""

    def __init__(self, model_dir: str, max_length: int = 256) -> None:
        try:
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EmbedderError("the sentence embedder needs onnxruntime and tokenizers: "
                                "pip install 'agentq[embed]' "
                                f"({exc})") from None
        directory = Path(model_dir)
        try:
            self._tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
            self._session = onnxruntime.InferenceSession(
                str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
        except Exception as exc:  # the libraries raise their own assorted types
            raise EmbedderError(f"cannot load a sentence model from {directory}: {exc}") \
                from None
        self._tokenizer.enable_truncation(max_length)
        self._tokenizer.enable_padding()
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.dimensions = int(self._session.get_outputs()[0].shape[-1])

    def embed_now(self, texts: Sequence[str]) -> np.ndarray:
        encoded = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": mask,
                                 "token_type_ids": np.zeros_like(ids)}
        hidden = self._session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return unit_rows(pooled)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        import asyncio

        return await asyncio.to_thread(self.embed_now, texts)

    async def close(self) -> None:
        return None


class ProviderEmbedder:
    """The provider's OpenAI-compatible `/v1/embeddings`."""

    def __init__(self, base_url: str, api_key: str, model: str, dimensions: int,
                 timeout_s: float = 10.0) -> None:
        import openai

        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "agentq-no-key",
                                          max_retries=1, timeout=timeout_s)
        self._model = model
        self.dimensions = dimensions

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        import openai

        try:
            reply = await self._client.embeddings.create(
                model=self._model, input=list(texts), dimensions=self.dimensions)
        except openai.OpenAIError as exc:
            raise EmbedderError(f"embeddings call failed: {exc}") from None
        rows = sorted(reply.data, key=lambda item: item.index)
        return unit_rows(np.array([row.embedding for row in rows], dtype=np.float32))

    async def close(self) -> None:
        await self._client.close()


def make_embedder(config: AgentqConfig) -> Embedder:
    """Build the embedder the tier table's `[cache]` section names."""
    cache = config.cache
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
        return ProviderEmbedder(provider.base_url, api_key, model,
                                cache.dimensions or LOCAL_DIMENSIONS)
    return LocalEmbedder(cache.dimensions or LOCAL_DIMENSIONS)
