"""A tiny Llama-shaped LM that trains on a 2-core CPU in minutes (the demo's text LM and the tests' workhorse).

Variants (``--config=configs/lm/tiny.py:synthetic``): ``synthetic`` trains on random tokens (no dataset to build).
"""

from teal_jax.config import base_config, parse_variants
from teal_jax.data import lm as lm_data


def get_config(arg: str | None = None):
    variants = parse_variants(arg, ("synthetic",), config="configs/lm/tiny.py")
    c = base_config()
    c.objective = "lm"
    c.model.vocab_size = 1024
    c.model.embed_dim = 128
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.head_dim = 32
    c.model.mlp_dim = 384
    c.model.rope_theta = 10_000.0
    c.model.norm_eps = 1e-5
    c.model.qk_norm = False
    c.model.tie_embeddings = True
    c.model.z_loss = 1e-4
    c.model.attention_impl = "xla"
    c.model.remat_policy = "none"
    c.model.max_decode_len = 256

    c.data = lm_data.default_data_config()  # every data field, so each can be overridden on the command line
    c.data.kind = "synthetic" if "synthetic" in variants else "text"
    c.data.num_docs = 20_000
    c.data.vocab_size = c.model.vocab_size
    c.data.seq_len = 128
    c.data.eval_fraction = 0.02

    c.train.steps = 600
    c.train.batch_size = 16
    c.train.log_every = 20
    c.train.eval_every = 200
    c.train.eval_batches = 4
    c.train.checkpoint_every = 200
    c.train.compute_dtype = "float32"  # CPUs have no fast bf16

    c.optimizer.lr = 3e-3
    c.optimizer.warmup_steps = 50
    c.optimizer.weight_decay = 0.01
    c.sample.prompts = ("three plus four is", "the red")
    c.sample.max_new_tokens = 24
    return c
