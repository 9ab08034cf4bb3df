"""Tiny image tokenizer for the scikit-learn digits at 32x32 (grayscale): trains on a 2-core CPU in minutes.

32x32 -> 8x8 tokens (downsampling 4), FSQ [8, 5, 5] = 200 codes, no discriminator (L1 + L2 reconstruction only).
Variants (``--config=configs/image/digits_tiny.py:VARIANT``, comma-separated):
  ``vq``   : l2-normalised factorised VQ (256 codes of dim 8, EMA-free, dead-code restart) instead of FSQ.
  ``gan``  : adds the PatchGAN discriminator (hinge, adaptive weight) from step 300.
  ``smoke``: 20 steps, for tests.
  ``coarse``: 32x32 -> 4x4 tokens (downsampling 8: multipliers (1, 2, 4, 4), attention only at the 4x4 level and
             the middle), FSQ [4, 4, 4] = 64 codes: 16 tokens of at most 6 bits, for the TEAL demo's small frozen LM
             (the default's 64 tokens over 200 codes are close to noise for it).
  ``grid8x8_9``: the default 8x8 grid over FSQ [3, 3] = 9 codes (the same architecture, fewer levels).
``coarse`` and ``grid8x8_9`` choose the quantizer, so they exclude each other and ``vq``.
"""

from teal_jax.config import SMOKE, base_config, parse_variants


def get_config(arg: str | None = None):
    variants = parse_variants(arg, ("vq", "gan", SMOKE, "coarse", "grid8x8_9"), config="configs/image/digits_tiny.py",
                              exclusive=[("vq", "coarse", "grid8x8_9")])  # each chooses the quantizer
    c = base_config()
    c.objective = "image_vq"
    m = c.model
    m.image_size = 32
    m.in_channels = 1
    m.out_channels = 1
    m.base_channels = 16
    m.channel_multipliers = (1, 2, 4)
    m.num_res_blocks = 1
    m.attn_levels = (2,)
    m.mid_attention = True
    m.latent_channels = 64
    m.norm_groups = 8
    m.norm_eps = 1e-6
    m.recon_loss = "l1+l2"
    m.quantizer_weight = 1.0
    if "vq" in variants:
        m.quantizer = "vq"
        m.embed_dim = 32
        m.codebook_size = 256
        m.code_dim = 8
        m.l2_normalize = True
        m.beta = 0.25
        m.restart_after = 50
    else:
        m.quantizer = "fsq"
        m.fsq_levels = (8, 5, 5)
        m.embed_dim = 3
    if "coarse" in variants:
        m.channel_multipliers = (1, 2, 4, 4)  # one more stride-2 level: 32 -> 4
        m.attn_levels = (3,)  # attention on 4x4 = 16 positions only (cheap); none at 8x8
        m.fsq_levels = (4, 4, 4)
        m.embed_dim = 3
    elif "grid8x8_9" in variants:
        m.fsq_levels = (3, 3)
        m.embed_dim = 2
    m.disc = dict(enabled="gan" in variants, base_channels=32, num_layers=2, norm="group", norm_groups=8,
                  start_step=300, weight=0.1, adaptive_weight=True)

    c.data.kind = "digits"
    c.data.image_size = 32
    c.data.data_dir = ""  # "" = <workdir>/data
    c.data.eval_batch_size = 64

    c.train.steps = 20 if "smoke" in variants else 300
    if "coarse" in variants and "smoke" not in variants:
        c.train.steps = 200  # its held-out reconstructions were judged 99.6% from step 150 (docs/image_tokenizer.md)
    c.train.batch_size = 32
    c.train.log_every = 5 if "smoke" in variants else 50
    c.train.eval_every = 20 if "smoke" in variants else 150
    c.train.eval_batches = 4  # 4 x 32 held-out images in the trainer's eval; on_eval covers all 256
    c.train.checkpoint_every = 150
    if c.train.steps == 200:  # coarse: one evaluation and one checkpoint, at the end
        c.train.eval_every = c.train.checkpoint_every = 200
    c.train.compute_dtype = "float32"  # CPUs have no fast bf16

    c.optimizer.lr = 2e-3
    c.optimizer.warmup_steps = 30
    c.optimizer.decay = "cosine"
    c.optimizer.end_lr_ratio = 0.05
    c.optimizer.weight_decay = 0.0
    c.optimizer.b2 = 0.99
    c.optimizer.clip_norm = 1.0
    c.optimizers.disc = dict(lr=1e-3, weight_decay=0.0)
    return c
