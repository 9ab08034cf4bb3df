"""Per-token loss statistics computed over sequence chunks, so full float32 [B, T, V] logits never exist at once.

The LM and TEAL losses only need a few numbers per token (cross-entropy, logsumexp, whether the argmax is right):
:func:`chunked_token_stats` runs ``logits_fn`` (the output head) and ``stats_fn`` on ``chunk`` positions at a time
inside a ``lax.scan`` whose body is ``jax.checkpoint``-ed, so the forward keeps only [B, T] statistics and the
backward recomputes one chunk's logits at a time. Peak logits memory drops from B*T*V*4 bytes (x2 with their
gradient) to B*chunk*V*4. Each statistic is the same op on the same numbers as in the unchunked path and the caller
reduces the [B, T] arrays as before; only the output head's gradient is summed chunk by chunk, so the loss and the
gradients agree with the unchunked ones to float32 rounding (tests/test_chunked_loss.py).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def token_stats(logits: jax.Array, targets: jax.Array, z: bool = True) -> dict[str, jax.Array]:
    """logits [B, T, V], targets int [B, T] -> float32 [B, T] arrays: ``ce`` (cross-entropy), ``correct`` (argmax ==
    target, no gradient) and, when ``z``, ``lse`` (logsumexp of the logits, for the z-loss)."""
    out = {"ce": optax.softmax_cross_entropy_with_integer_labels(logits, targets),
           "correct": (jnp.argmax(logits, -1) == targets).astype(jnp.float32)}
    if z:
        out["lse"] = jax.nn.logsumexp(logits, axis=-1)
    return out


def chunked_token_stats(hidden: jax.Array, targets: jax.Array, logits_fn: Callable[[jax.Array], jax.Array],
                        stats_fn: Callable[[jax.Array, jax.Array], dict[str, jax.Array]],
                        chunk: int) -> dict[str, jax.Array]:
    """``stats_fn(logits_fn(hidden[:, c]), targets[:, c])`` for consecutive chunks c of ``chunk`` positions,
    concatenated back to [B, T] arrays. hidden [B, T, D]; targets int [B, T]; T need not divide by ``chunk`` (the
    last chunk is padded with target 0 and the padding is cut off)."""
    if chunk < 1:
        raise ValueError(f"config.train.loss_chunk_size={chunk}: the chunked loss needs a chunk of >= 1 positions")
    b, t = targets.shape
    n = -(-t // chunk)
    pad = n * chunk - t
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hs = hidden.reshape(b, n, chunk, hidden.shape[-1]).swapaxes(0, 1)  # [n, B, chunk, D]
    ts = targets.reshape(b, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one(h, tg):
        return stats_fn(logits_fn(h), tg)

    _, stats = jax.lax.scan(lambda carry, x: (carry, one(*x)), None, (hs, ts))
    return jax.tree.map(lambda a: a.swapaxes(0, 1).reshape((b, n * chunk) + a.shape[3:])[:, :t], stats)
