"""Llama-2-7B-shaped LM (32 layers, width 4096, 32 heads, SwiGLU 11008, vocab 32000): the shape for memory planning
(``--mode=compile``, docs/launch.md) and for training or TEAL on an imported Llama-2 (``teal_jax.convert.llama``).

Variants: ``synthetic`` (random tokens: no dataset to build; what --mode=compile and benchmarks use). bf16 compute,
fp32 parameters and Adam state, remat of everything but weight matmuls; FSDP over every device by default (7B
parameters with Adam need ~112 GB of fp32 state: more than one 80 GB GPU).
"""

from configs.lm import tinyllama_1b
from teal_jax.config import parse_variants


def get_config(arg: str | None = None):
    variants = parse_variants(arg, ("synthetic",), config="configs/lm/llama2_7b.py")
    c = tinyllama_1b.get_config("synthetic" if "synthetic" in variants else None)
    c.model.embed_dim = 4096
    c.model.num_layers = 32
    c.model.num_heads = 32
    c.model.num_kv_heads = 32
    c.model.head_dim = 128
    c.model.mlp_dim = 11008
    c.model.max_decode_len = 4096
    c.data.seq_len = 4096
    c.train.batch_size = 8
    c.optimizer.lr = 3e-4
    c.mesh.shape = (1, -1, 1)
    return c
