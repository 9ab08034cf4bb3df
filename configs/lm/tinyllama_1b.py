"""TinyLlama-1.1B-shaped LM (22 layers, width 2048, 32 heads / 4 KV heads, SwiGLU 5632, vocab 32000).

Variants: ``synthetic`` (random tokens: benchmarks), ``hf=/path/to/hf_dir`` is not a variant: import weights with
``teal_jax.convert.llama.import_llama`` and train TEAL on top (configs/teal/*). Sized for one 80 GB GPU or a TPU slice:
bf16 compute, fp32 params and Adam state, remat of everything but weight matmuls.
"""

from teal_jax.config import base_config, parse_variants
from teal_jax.data import lm as lm_data


def get_config(arg: str | None = None):
    variants = parse_variants(arg, ("synthetic",), config="configs/lm/tinyllama_1b.py")
    c = base_config()
    c.objective = "lm"
    c.model.vocab_size = 32_000
    c.model.embed_dim = 2048
    c.model.num_layers = 22
    c.model.num_heads = 32
    c.model.num_kv_heads = 4
    c.model.head_dim = 64
    c.model.mlp_dim = 5632
    c.model.rope_theta = 10_000.0
    c.model.norm_eps = 1e-5
    c.model.qk_norm = False
    c.model.tie_embeddings = False
    c.model.z_loss = 0.0
    c.model.attention_impl = "auto"  # cuDNN flash attention on NVIDIA GPUs, XLA elsewhere
    c.model.remat_policy = "dots_no_batch"
    c.model.max_decode_len = 2048

    c.data = lm_data.default_data_config()  # every data field, so each can be overridden on the command line
    c.data.kind = "synthetic" if "synthetic" in variants else "text"
    c.data.num_docs = 200_000
    c.data.vocab_size = c.model.vocab_size
    c.data.seq_len = 2048
    c.data.eval_fraction = 0.01

    c.train.steps = 10_000
    c.train.batch_size = 8
    c.train.log_every = 10
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
    c.train.compute_dtype = "bfloat16"
    c.optimizer.lr = 4e-4
    c.optimizer.warmup_steps = 500
    return c
