"""LM training throughput: tokens/s, step time, MFU and peak memory of the real train step, and (``--torch``) HF
transformers' LlamaForCausalLM of the same shape trained in torch on the same device in the same run.

  python benchmarks/lm_train.py --config=configs/lm/tiny.py                      # CPU, tiny
  python benchmarks/lm_train.py --config=configs/lm/tinyllama_1b.py --torch      # GPU, 1.1B

MFU = tokens/s x training FLOPs per token / (devices x peak FLOP/s per device), with
training FLOPs per token = 6 x N_matmul + 12 x layers x seq_len x heads x head_dim (TransformerConfig.flops_per_token;
rematerialisation not counted). The same formula and FLOP count are used for the torch peer.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from teal_jax.models.transformer import TransformerConfig  # noqa: E402
from teal_jax.parallel import sharding as shd  # noqa: E402
from teal_jax.train import metrics as metrics_lib  # noqa: E402
from teal_jax.train import trainer as trainer_lib  # noqa: E402


def load_config(spec: str):
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def time_jax(config, steps: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        t = trainer_lib.Trainer(config, workdir)
        state = t.init_state()
        batches = [shd.global_batch(next(t.train_iter), t.mesh) for _ in range(2)]
        with shd.set_mesh(t.mesh), shd.axis_rules():
            for i in range(warmup):
                state, m = t._train_step(state, batches[i % 2])
            jax.block_until_ready(m["loss"])
            start = time.perf_counter()
            for i in range(steps):
                state, m = t._train_step(state, batches[i % 2])
            jax.block_until_ready(m["loss"])
            elapsed = time.perf_counter() - start
        stats = jax.devices()[0].memory_stats() or {}
        t.checkpointer.close()
        t.writer.close()
    return {"step_s": elapsed / steps, "peak_bytes": stats.get("peak_bytes_in_use"), "loss": float(m["loss"])}


def time_torch(cfg: TransformerConfig, batch: int, seq: int, steps: int, warmup: int, checkpointing: bool) -> dict:
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings, max_position_embeddings=seq)
    model = transformers.LlamaForCausalLM(hf_cfg).to(device)  # fp32 params, like ours
    if checkpointing:
        model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    autocast_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=device)

    def step():
        with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype != torch.float32):
            loss = model(tokens[:, :-1], labels=tokens[:, 1:]).loss  # HF shifts labels itself; same work
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    result = {"step_s": elapsed / steps, "peak_bytes": peak, "loss": float(loss.detach())}
    model = opt = tokens = loss = step = None  # drop every reference so the memory can be released
    if device == "cuda":
        torch.cuda.empty_cache()  # hand the memory back before JAX claims its pool
    return result


def report(name: str, r: dict, tokens_per_step: int, flops_per_token: float, n_dev: int, peak) -> float:
    tps = tokens_per_step / r["step_s"]
    mfu = f"{100 * tps * flops_per_token / (n_dev * peak):.1f}%" if peak else "n/a (no peak FLOP/s for this device)"
    mem = f"{r['peak_bytes'] / 2**30:.2f} GiB" if r.get("peak_bytes") else "n/a"
    print(f"{name:>6}: {tps:,.0f} tokens/s | step {1000 * r['step_s']:.1f} ms | MFU {mfu} | peak memory {mem} "
          f"| loss {r['loss']:.3f}")
    return tps


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/lm/tiny.py")
    ap.add_argument("--batch_size", type=int)
    ap.add_argument("--seq_len", type=int)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--remat", help="override model.remat_policy")
    ap.add_argument("--attention", help="override model.attention_impl")
    ap.add_argument("--torch", action="store_true", help="also time HF LlamaForCausalLM in torch")
    ap.add_argument("--torch_checkpointing", action="store_true")
    args = ap.parse_args()

    config = load_config(args.config)
    config.data.kind = "synthetic"
    config.train.eval_every = 0
    if args.batch_size:
        config.train.batch_size = args.batch_size
    if args.seq_len:
        config.data.seq_len = args.seq_len
    if args.remat:
        config.model.remat_policy = args.remat
    if args.attention:
        config.model.attention_impl = args.attention
    cfg = TransformerConfig.from_config(config.model, dtype=config.train.compute_dtype)
    batch, seq = config.train.batch_size, config.data.seq_len
    fpt = cfg.flops_per_token(seq)
    # torch runs first: JAX reserves most of the GPU's memory once its backend starts.
    theirs = (time_torch(cfg, batch, seq, args.steps, args.warmup, args.torch_checkpointing) if args.torch
              else None)
    n_dev = jax.device_count()
    peak = metrics_lib.peak_flops_per_device()
    print(f"{args.config}: {cfg.num_params / 1e6:.1f}M params, batch {batch} x seq {seq}, "
          f"{config.train.compute_dtype}, remat {cfg.remat_policy}, attention {cfg.attention_implementation}, "
          f"{n_dev} x {jax.devices()[0].device_kind}")
    print(f"MFU = tokens/s x {fpt / 1e9:.3f} GFLOP/token / ({n_dev} x {peak or 0:.3g} FLOP/s); "
          "FLOP/token = 6 N_matmul + 12 L T H hd")
    ours = report("jax", time_jax(config, args.steps, args.warmup), batch * seq, fpt, n_dev, peak)
    if theirs is not None:
        theirs_tps = report("torch", theirs, batch * seq, fpt, 1, peak)
        print(f"ratio jax/torch tokens/s: {ours / theirs_tps:.2f}")

if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
