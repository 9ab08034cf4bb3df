"""Semantic image input tokenizer, the stand-in for TEAL's BEiT-v2 codes (VQ-KD, 8,192 codes; its tokenizer is not in
transformers): a CLIP (or SigLIP) vision tower, hidden state 11 (the output of block 11 of 12, the penultimate layer
LLaVA reads), k-means over its patch features (the class token is dropped): 14x14 codes for ViT-B/16 at 224 px.
Input-only: image generation keeps a VQ tokenizer.

Point it at a transformers checkpoint directory (``CLIPVisionModel`` / ``CLIPModel`` / ``SiglipVisionModel``:
config.json + model.safetensors, preprocessor_config.json for the mean/std; e.g. a local copy of
``openai/clip-vit-base-patch16``) and fit over COCO::

    python -m teal_jax.train.kmeans_fit --config=configs/image/clip_kmeans.py:checkpoint=/ckpt/clip-vit-b16 \\
        --workdir=/runs/clip_kmeans

Variants: ``checkpoint=DIR``, ``k=N`` (default 8,192), ``smoke`` (a tiny random tower's layer 1, 8 codes, digits).
"""

from teal_jax.config import SMOKE, base_config, parse_variants
from teal_jax.data.teal.config import default_source_config


def get_config(arg: str | None = None):
    v = parse_variants(arg, (SMOKE,), config="configs/image/clip_kmeans.py", keyed=("checkpoint", "k"))
    c = base_config()
    c.objective = "kmeans_tokenizer"
    c.tokenizer = dict(kind="clip", checkpoint=v.values.get("checkpoint", ""), layer=11,
                       num_codes=int(v.values.get("k", 8192)))
    c.kmeans = dict(init_batches=1)  # 256 images x 196 patches seed 8,192 centres
    src = default_source_config("image")
    src.kind = "tfds"
    src.name = "coco_captions"
    src.text_key = "captions/text"
    src.label_key = ""
    src.eval_split = "val"
    c.data.image_source = src
    c.train.steps = 2000
    c.train.batch_size = 256
    c.train.checkpoint_every = 200
    c.train.log_every = 20
    if SMOKE in v:
        c.tokenizer.layer = 1
        c.tokenizer.num_codes = int(v.values.get("k", 8))
        c.data.image_source = default_source_config("image")  # digits, built locally
        c.train.steps = 3
        c.train.batch_size = 8
        c.train.checkpoint_every = 2
        c.train.log_every = 1
    return c
