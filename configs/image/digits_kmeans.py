"""Demo-scale semantic image input tokenizer: k-means over the pre-quantisation latents of the demo's own image
tokenizer (an ``image_vq`` run such as ``<demo>/image_tokenizer``, digits_tiny.py:coarse: its encoder, trained here
on reconstruction without labels), one code per latent cell (4 x 4 for the coarse tokenizer). Never the judging
digit classifier: a directory holding one is refused. Input-only: image generation keeps the VQ/FSQ codes::

    python -m teal_jax.train.kmeans_fit --config=configs/image/digits_kmeans.py:checkpoint=runs/demo/image_tokenizer \\
        --workdir=runs/digits_kmeans --config.data.image_source.data_dir=runs/demo/data

Variants: ``checkpoint=DIR`` (the image_vq workdir, required), ``k=N`` (codes, default 256), ``layer=quant_conv``
(the ``embed_dim``-wide projection the quantizer rounds instead of the encoder's ``latent_channels``-wide output),
``smoke`` (8 codes, 3 steps: what the tests run).
"""

from teal_jax.config import SMOKE, base_config, parse_variants
from teal_jax.data.teal.config import default_source_config


def get_config(arg: str | None = None):
    v = parse_variants(arg, (SMOKE,), config="configs/image/digits_kmeans.py", keyed=("checkpoint", "k", "layer"))
    c = base_config()
    c.objective = "kmeans_tokenizer"
    c.tokenizer = dict(kind="vqgan", checkpoint=v.values.get("checkpoint", ""), layer=v.values.get("layer", "encoder"),
                       num_codes=int(v.values.get("k", 256)))
    c.kmeans = dict(init_batches=2)  # 2 x 64 images x 16 cells seed up to 2,048 centres
    c.data.image_source = default_source_config("image")  # the digits ('' data_dir = <workdir>/data)
    c.train.steps = 300
    c.train.batch_size = 64
    c.train.checkpoint_every = 150
    c.train.log_every = 50
    if SMOKE in v:
        c.tokenizer.num_codes = int(v.values.get("k", 8))
        c.kmeans.init_batches = 1
        c.train.steps = 3
        c.train.batch_size = 8
        c.train.checkpoint_every = 2
        c.train.log_every = 1
    return c
