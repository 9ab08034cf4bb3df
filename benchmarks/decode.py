"""Decode throughput: our KV-cache sampler (teal_jax.inference.lm.sample_ids) against HF transformers' ``generate``
of a ``LlamaForCausalLM`` of the same shape on the same device in the same run (torch first: JAX reserves most of
the GPU's memory once its backend starts).

  python benchmarks/decode.py                  # TinyLlama-1.1B shape, bf16, batch 1 and 32, 256 new tokens (GPU)
  python benchmarks/decode.py --tiny           # configs/lm/tiny.py shape, float32, batch 1 and 4, 32 tokens (CPU)

Greedy, no end token (every row generates exactly --new_tokens), random weights, a random prompt of --prompt_len ids.
tokens/s = batch x new_tokens / wall seconds of one whole generate call (prefill included), after one warm-up call.

Decoding is memory-bound, so beside the FLOP count the script prints the bytes a step must read and the bandwidth
that implies: FLOP/token = 2 N_matmul + 4 L d S_avg (attention over S_avg cached positions); bytes/step =
N_params x bytes(dtype) (weights, read once per step for the whole batch) + batch x 2 L S_avg kv_heads hd x
bytes(dtype) (the KV cache). Achieved bandwidth = bytes/step x steps/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.lm_train import load_config  # noqa: E402
from teal_jax.models.transformer import TransformerConfig  # noqa: E402


def decode_costs(cfg: TransformerConfig, batch: int, prompt_len: int, new_tokens: int) -> dict:
    """FLOP per generated token and bytes read per decode step (module docstring)."""
    s_avg = prompt_len + new_tokens / 2
    n_matmul = cfg.num_params - cfg.vocab_size * cfg.embed_dim + (cfg.vocab_size * cfg.embed_dim
                                                                  if cfg.tie_embeddings else 0)
    width = 2 if cfg.dtype in ("bfloat16", "float16") else 4
    flops = 2 * n_matmul + 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * s_avg
    weight_bytes = cfg.num_params * width
    kv_bytes = batch * 2 * cfg.num_layers * s_avg * cfg.num_kv_heads * cfg.head_dim * width
    return {"flops_per_token": flops, "bytes_per_step": weight_bytes + kv_bytes}


def time_torch(cfg: TransformerConfig, prompts: np.ndarray, new_tokens: int, repeats: int) -> dict:
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings, max_position_embeddings=prompts.shape[1] + new_tokens)
    model = transformers.LlamaForCausalLM(hf_cfg).to(device=device, dtype=dtype).eval()
    ids = torch.as_tensor(prompts, device=device)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
              pad_token_id=0, attention_mask=torch.ones_like(ids))

    def run():
        with torch.inference_mode():
            out = model.generate(ids, **kw)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    assert out.shape[1] == prompts.shape[1] + new_tokens, out.shape
    result = {"seconds": min(times)}
    model = ids = out = None
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def time_jax(cfg: TransformerConfig, params, prompts: np.ndarray, new_tokens: int, repeats: int,
             profile_dir: str | None = None) -> dict:
    from teal_jax.inference.lm import sample_ids
    from teal_jax.inference.sampler import SamplingConfig

    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0)
    rows = [list(map(int, r)) for r in prompts]
    out = sample_ids(cfg, params, rows, sampling)  # compile + warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = sample_ids(cfg, params, rows, sampling)  # returns host numpy: the whole call is timed
        times.append(time.perf_counter() - start)
    assert out.shape == (len(rows), new_tokens), out.shape
    if profile_dir:  # one more call under the profiler (TensorBoard / Perfetto trace), not timed
        import jax

        with jax.profiler.trace(profile_dir):
            sample_ids(cfg, params, rows, sampling)
    return {"seconds": min(times)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=None, help="default: configs/lm/tinyllama_1b.py (tiny: configs/lm/tiny.py)")
    ap.add_argument("--tiny", action="store_true", help="tiny shape, float32, small batches: runs on a CPU")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,32; tiny 1,4)")
    ap.add_argument("--new_tokens", type=int, default=None, help="default 256 (tiny 32)")
    ap.add_argument("--prompt_len", type=int, default=16)
    ap.add_argument("--dtype", default=None, help="compute dtype (default bfloat16; tiny float32)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no_torch", action="store_true")
    ap.add_argument("--profile_dir", default=None, help="write a jax.profiler trace of one call per batch size here")
    args = ap.parse_args()

    config = load_config(args.config or ("configs/lm/tiny.py" if args.tiny else "configs/lm/tinyllama_1b.py"))
    dtype = args.dtype or ("float32" if args.tiny else "bfloat16")
    batches = [int(b) for b in (args.batches or ("1,4" if args.tiny else "1,32")).split(",")]
    new_tokens = args.new_tokens or (32 if args.tiny else 256)
    cfg = TransformerConfig.from_config(config.model, dtype=dtype)
    rng = np.random.default_rng(0)
    prompts = {b: rng.integers(1, cfg.vocab_size, (b, args.prompt_len)).astype(np.int32) for b in batches}

    theirs = {}
    if not args.no_torch:
        for b in batches:
            theirs[b] = time_torch(cfg, prompts[b], new_tokens, args.repeats)

    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from teal_jax.models.transformer import TransformerLM

    params = nn.unbox(jax.jit(TransformerLM(cfg).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    device = jax.devices()[0].device_kind
    print(f"decode: {cfg.num_params / 1e6:.1f}M params, {dtype}, prompt {args.prompt_len}, {new_tokens} new tokens, "
          f"greedy, no eos, on {device}")
    for b in batches:
        profile = os.path.join(args.profile_dir, f"decode_b{b}") if args.profile_dir else None
        ours = time_jax(cfg, params, prompts[b], new_tokens, args.repeats, profile)
        cost = decode_costs(cfg, b, args.prompt_len, new_tokens)
        tps = b * new_tokens / ours["seconds"]
        steps_per_s = new_tokens / ours["seconds"]
        line = {"bench": "decode", "batch": b, "dtype": dtype, "new_tokens": new_tokens,
                "jax_tokens_per_s": tps, "jax_seconds": ours["seconds"],
                "gflop_per_token": cost["flops_per_token"] / 1e9,
                "achieved_gb_per_s": cost["bytes_per_step"] * steps_per_s / 1e9, "device": device}
        msg = (f"batch {b:>3}: jax {tps:,.0f} tokens/s ({ours['seconds']:.2f} s) | "
               f"{cost['flops_per_token'] / 1e9:.2f} GFLOP/token (2 N_matmul + 4 L d S_avg) -> "
               f"{tps * cost['flops_per_token'] / 1e12:.2f} TFLOP/s | "
               f"{cost['bytes_per_step'] / 1e9:.2f} GB/step (weights + KV) -> "
               f"{line['achieved_gb_per_s']:,.0f} GB/s")
        if b in theirs:
            hf_tps = b * new_tokens / theirs[b]["seconds"]
            line.update(hf_tokens_per_s=hf_tps, ratio=tps / hf_tps)
            msg += f" | HF generate {hf_tps:,.0f} tokens/s -> ratio {tps / hf_tps:.2f}"
        print(msg)
        print("BENCH " + json.dumps(line))


if __name__ == "__main__":
    main()
