"""Shared tiny configs for tests."""

from configs.lm import tiny


def tiny_lm_config(steps: int = 4, mesh=(-1, 1, 1), batch_size: int = 8):
    """A very small LM on synthetic tokens; every dimension divides 8 devices' axes."""
    c = tiny.get_config("synthetic")
    c.model.vocab_size = 256
    c.model.embed_dim = 32
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.model.num_kv_heads = 4
    c.model.head_dim = 8
    c.model.mlp_dim = 64
    c.model.tie_embeddings = False
    c.data.seq_len = 16
    c.train.steps = steps
    c.train.batch_size = batch_size
    c.train.log_every = 1
    c.train.eval_every = 0
    c.train.checkpoint_every = 1000
    c.train.compute_dtype = "float32"
    c.train.async_checkpoints = False
    c.optimizer.warmup_steps = 1
    c.optimizer.lr = 1e-2
    c.mesh.shape = mesh
    return c
