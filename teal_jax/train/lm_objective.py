"""Next-token prediction for the decoder-only LM (objective 'lm').

Loss: mean cross-entropy over target tokens, where a target counts when its weight (``loss_mask``) is non-zero, it is
not padding (segment 0) and it belongs to the same document as its input token; plus an optional z-loss
``z_loss * mean(logsumexp(logits)^2)`` that keeps the softmax normaliser near 1 (Chameleon/PaLM stability trick).

Data kinds: ``data.kind='text'`` (SentencePiece-tokenized, packed text from teal_jax.data.lm) and
``data.kind='synthetic'`` (deterministic random tokens: benchmarks and trainer tests, no dataset to build).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from teal_jax import paths as paths_lib
from teal_jax.data.iterator import IndexedIterator
from teal_jax.models import lora
from teal_jax.models.transformer import TransformerConfig, TransformerLM
from teal_jax.train import chunked_loss
from teal_jax.train.objective import Objective


class SyntheticTokens(IndexedIterator):
    """Random token rows, a pure function of (seed, process, batch index): exactly resumable."""

    def __init__(self, *, vocab_size: int, batch_size: int, seq_len: int, seed: int, process_index: int):
        self.vocab_size, self.batch_size, self.seq_len = vocab_size, batch_size, seq_len
        self.seed, self.process_index, self.index = seed, process_index, 0

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, self.process_index, self.index))
        self.index += 1
        tokens = rng.integers(0, self.vocab_size, (self.batch_size, self.seq_len), dtype=np.int32)
        # One document per row: no segment ids, so attention takes the plain causal path.
        return {"tokens": tokens, "loss_mask": np.ones(tokens.shape, np.float32)}



def _target_weights(batch: dict[str, jax.Array]) -> jax.Array:
    """float32 [B, T-1]: a target counts when its loss_mask is non-zero, it is not padding and it continues the
    document of its input token."""
    tokens = batch["tokens"]
    seg = batch.get("segment_ids", jnp.ones_like(tokens))
    weights = batch.get("loss_mask", jnp.ones(tokens.shape, jnp.float32))[:, 1:].astype(jnp.float32)
    return weights * (seg[:, 1:] == seg[:, :-1]) * (seg[:, 1:] > 0)


def lm_loss_from_stats(stats: dict[str, jax.Array], batch: dict[str, jax.Array],
                       z_loss: float = 0.0) -> tuple[jax.Array, dict]:
    """(loss, metrics) from per-target statistics (:func:`chunked_loss.token_stats`: ce, correct, lse) [B, T-1]."""
    weights = _target_weights(batch)
    denom = jnp.maximum(weights.sum(), 1.0)
    nll = (stats["ce"] * weights).sum() / denom
    loss = nll
    metrics = {"nll": nll}
    if z_loss:
        z = stats["lse"]
        zl = (z * z * weights).sum() / denom
        loss = loss + z_loss * zl
        metrics["z_loss"] = zl
    metrics["accuracy"] = (stats["correct"] * weights).sum() / denom
    metrics["loss"] = loss
    return loss, metrics


def lm_loss(logits: jax.Array, batch: dict[str, jax.Array], z_loss: float = 0.0) -> tuple[jax.Array, dict]:
    """logits [B, T-1, V] for inputs tokens[:, :-1]; returns (loss, metrics)."""
    stats = chunked_loss.token_stats(logits, batch["tokens"][:, 1:], z=bool(z_loss))
    return lm_loss_from_stats(stats, batch, z_loss)


class LMObjective(Objective):
    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.model_config = TransformerConfig.from_config(config.model, dtype=config.train.compute_dtype)
        self.model = TransformerLM(self.model_config)
        self.lora = lora.LoraConfig.from_config(config.model)  # rank 0: off
        self.seq_len = int(config.data.seq_len)
        self.z_loss = float(config.model.get("z_loss", 0.0))
        # > 0: the loss runs the output head over this many positions at a time (no full [B, T, V] logits)
        self.loss_chunk_size = int(config.train.get("loss_chunk_size", 0))
        kind = config.data.get("kind", "text")
        if kind not in ("text", "synthetic"):
            raise ValueError(f"config.data.kind={kind!r}: choose 'text' or 'synthetic'")
        self.data_kind = kind
        self.tokenizer_path: str | None = None

    def prepare(self, workdir: str) -> None:
        super().prepare(workdir)
        if self.data_kind == "text":
            from teal_jax.data import lm as lm_data

            paths = lm_data.prepare_lm_data(self.config.data, workdir)
            self.tokenizer_path = paths["tokenizer_model"] if isinstance(paths, dict) else None

    def init(self, rng, batch):
        tokens = jnp.asarray(batch["tokens"])[:, :-1]
        variables = self.model.init(rng, tokens)
        return {"model": lora.init_adapters(variables["params"], self.lora, jax.random.fold_in(rng, 1))}, {}

    def trainable(self, params):
        if not self.lora.enabled:
            return super().trainable(params)
        return {"model": lora.trainable_mask(params["model"], super().trainable(params)["model"])}

    def _forward(self, params, batch, rng=None, method=None):
        tokens = batch["tokens"]
        seg = batch.get("segment_ids")
        pos = batch.get("positions")
        kw = {} if method is None else {"method": method}
        return lora.apply(self.model, self.lora, {"params": params["model"]}, tokens[:, :-1],
                          None if pos is None else pos[:, :-1], None if seg is None else seg[:, :-1], rng=rng, **kw)

    def _loss(self, params, batch, rng, z_loss):
        if not self.loss_chunk_size:
            return lm_loss(self._forward(params, batch, rng), batch, z_loss)

        def hidden(m, tokens, positions, segment_ids):
            return m.hidden(m.embed(tokens), positions, segment_ids)

        def logits(h):
            return lora.apply(self.model, self.lora, {"params": params["model"]}, h,
                              method=TransformerLM.logits_from_hidden, rng=rng)

        targets = batch["tokens"][:, 1:]
        stats = chunked_loss.chunked_token_stats(
            self._forward(params, batch, rng, method=hidden), targets, logits,
            lambda lg, tg: chunked_loss.token_stats(lg, tg, z=bool(z_loss)), self.loss_chunk_size)
        return lm_loss_from_stats(stats, batch, z_loss)

    def grads(self, params, model_state, batch, rng, step):
        def loss_fn(p):
            return self._loss(p, batch, rng, self.z_loss)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, model_state, metrics

    def eval_metrics(self, params, model_state, batch):
        _, metrics = self._loss(params, batch, None, 0.0)
        return {"loss": metrics["nll"], "accuracy": metrics["accuracy"]}

    def make_data(self, split, *, batch_size, process_index, process_count):
        if self.data_kind == "synthetic":
            seed = self.config.seed + (0 if split == "train" else 1_000_003)
            return SyntheticTokens(vocab_size=self.model_config.vocab_size, batch_size=batch_size,
                                   seq_len=self.seq_len + 1, seed=seed, process_index=process_index)
        from teal_jax.data import lm as lm_data

        return lm_data.make_lm_iterator(
            self.config.data, split, batch_size=batch_size, seq_len=self.seq_len + 1,
            process_index=process_index, process_count=process_count, seed=self.config.seed,
            data_dir=self._data_dir())

    def _data_dir(self) -> str:
        d = self.config.data.get("data_dir")
        return d if d else paths_lib.data_dir(self.workdir or ".")

    def tokens_per_example(self, batch) -> int:
        return self.seq_len

    def flops_per_example(self, batch) -> float:
        return self.seq_len * self.model_config.flops_per_token(self.seq_len)
