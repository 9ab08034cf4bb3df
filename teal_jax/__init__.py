"""teal_jax: TEAL (Tokenize and Embed ALL) multimodal language models in JAX/Flax.

``teal_jax.load(workdir)`` returns a trained model ready for inference (see teal_jax/inference/load.py).
"""

from teal_jax.quiet import drop_harmless_notices as _drop_harmless_notices

__version__ = "0.1.0"
_drop_harmless_notices()  # tfds' known-harmless absl notices (teal_jax/quiet.py); nothing else is filtered


def load(workdir: str, step: int | None = None):
    """Loads a trained run for inference; see ``teal_jax.inference.load.load``."""
    from teal_jax.inference.load import load as _load  # lazily: importing teal_jax must not initialise JAX

    return _load(workdir, step)
