"""A VQGAN of realistic size: 256x256 RGB -> 16x16 tokens, 16,384 l2-normalised 8-d codes (LlamaGen-style).

Encoder/decoder: base 128 channels, multipliers (1, 1, 2, 2, 4) (downsampling 16), 2 ResBlocks per level,
attention at the 16x16 level and in the mid block, GroupNorm(32, eps 1e-6). Loss: L1 + L2 reconstruction,
VQ codebook/commitment (beta 0.25), PatchGAN hinge loss with the adaptive weight from step 20k (weight 0.5).
Data: a tfds image dataset prepared in array_record format (``data.name``, default imagenet2012), center crop
+ resize to 256.

Variants (``--config=configs/image/vqgan_256.py:VARIANT``): ``runlocal`` shrinks the model and the run so the same
code path executes on a laptop (64x64 digits, 8x8 tokens); ``fsq`` swaps in FSQ [8, 8, 8, 5, 5, 5] (2^16 codes).
"""

from teal_jax.config import base_config, parse_variants


def get_config(arg: str | None = None):
    variants = parse_variants(arg, ("runlocal", "fsq"), config="configs/image/vqgan_256.py")
    c = base_config()
    c.objective = "image_vq"
    m = c.model
    m.image_size = 256
    m.in_channels = 3
    m.out_channels = 3
    m.base_channels = 128
    m.channel_multipliers = (1, 1, 2, 2, 4)
    m.num_res_blocks = 2
    m.attn_levels = (4,)
    m.mid_attention = True
    m.latent_channels = 256
    m.norm_groups = 32
    m.norm_eps = 1e-6
    m.recon_loss = "l1+l2"
    m.quantizer_weight = 1.0
    if "fsq" in variants:
        m.quantizer = "fsq"
        m.fsq_levels = (8, 8, 8, 5, 5, 5)
        m.embed_dim = 6
    else:
        m.quantizer = "vq"
        m.embed_dim = 8
        m.codebook_size = 16384
        m.code_dim = 8
        m.l2_normalize = True
        m.beta = 0.25
        m.restart_after = 1000
    m.disc = dict(enabled=True, base_channels=64, num_layers=3, norm="group", norm_groups=32, start_step=20_000,
                  weight=0.5, adaptive_weight=True)

    c.data.kind = "tfds"
    c.data.name = "imagenet2012"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.image_key = "image"
    c.data.label_key = "label"
    c.data.image_size = 256
    c.data.data_dir = ""  # "" = <workdir>/data; point it at a prepared tfds data_dir
    c.data.eval_batch_size = 64

    c.train.steps = 400_000
    c.train.batch_size = 128
    c.train.log_every = 100
    c.train.eval_every = 5_000
    c.train.eval_batches = 50
    c.train.checkpoint_every = 5_000
    c.train.compute_dtype = "bfloat16"

    c.optimizer.lr = 1e-4
    c.optimizer.warmup_steps = 2_000
    c.optimizer.decay = "cosine"
    c.optimizer.end_lr_ratio = 0.1
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.95
    c.optimizer.weight_decay = 0.05
    c.optimizer.clip_norm = 1.0
    c.optimizers.disc = dict(lr=1e-4, weight_decay=0.0)

    if "runlocal" in variants:
        m.image_size = 64
        m.base_channels = 32
        m.channel_multipliers = (1, 2, 2, 4)
        m.num_res_blocks = 1
        m.attn_levels = (3,)
        m.latent_channels = 64
        m.norm_groups = 8
        if m.quantizer == "vq":
            m.codebook_size = 512
            m.restart_after = 50
        m.disc.base_channels = 16
        m.disc.norm_groups = 8
        m.disc.start_step = 20
        c.data.kind = "digits"
        c.data.image_size = 64
        c.train.steps = 40
        c.train.batch_size = 8
        c.train.log_every = 10
        c.train.eval_every = 40
        c.train.eval_batches = 2
        c.train.checkpoint_every = 40
        c.train.compute_dtype = "float32"
        c.optimizer.warmup_steps = 5
    return c
