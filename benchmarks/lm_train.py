"""LM training throughput: tokens/s, step time, MFU and peak memory of the real train step, and (``--torch``) HF
transformers' LlamaForCausalLM of the same shape trained in torch on the same device in the same run (eager, and
with ``torch.compile`` under ``--torch_compile``). ``--packed`` also times the same step on packed batches (several
documents per row: segment ids and restarting positions, what real text and TEAL feed) and prints packed/unpacked.

  python benchmarks/lm_train.py --config=configs/lm/tiny.py --packed --torch                 # CPU, tiny
  python benchmarks/lm_train.py --config=configs/lm/tinyllama_1b.py --packed --torch --torch_compile   # GPU, 1.1B

MFU = tokens/s x training FLOPs per token / (devices x peak FLOP/s per device), printed for two FLOP counts:
  model:  6 x N_matmul + 12 x layers x seq_len x heads x head_dim (TransformerConfig.flops_per_token; the input
          embedding lookup is not a matmul and is left out)
  issue:  6 x N_all (embedding included) + 12 x layers x embed_dim x seq_len (issue 14's goal formula)
Rematerialisation is not counted in either. The same counts score the torch peers. On an H200 the MFU is printed
against both the H200 and the H100 peak (teal_jax.train.metrics.PEAK_FLOPS).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
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


def packed_batch(batch: int, seq: int, vocab: int, mean_doc: int, seed: int) -> dict[str, np.ndarray]:
    """A packed LM batch of rows of seq+1 ids: documents of random lengths (geometric, mean ``mean_doc``) laid end to
    end; segment ids 1, 2, ... per row, positions restarting at each document, loss on every token."""
    rng = np.random.default_rng(seed)
    n = seq + 1
    seg = np.zeros((batch, n), np.int32)
    pos = np.zeros((batch, n), np.int32)
    for r in range(batch):
        at, doc = 0, 1
        while at < n:
            length = min(int(rng.geometric(1.0 / mean_doc)), n - at)
            seg[r, at:at + length] = doc
            pos[r, at:at + length] = np.arange(length)
            at, doc = at + length, doc + 1
    tokens = rng.integers(0, vocab, (batch, n)).astype(np.int32)
    return {"tokens": tokens, "segment_ids": seg, "positions": pos, "loss_mask": np.ones((batch, n), np.float32)}


def time_jax(config, steps: int, warmup: int, packed_mean_doc: int = 0, profile_dir: str | None = None) -> dict:
    """{'unpacked': {...}, 'packed': {...} (with packed_mean_doc > 0)}: the trainer's jitted step on two alternating
    batches of each kind, the same state and trainer for both."""
    out = {}
    with tempfile.TemporaryDirectory() as workdir:
        t = trainer_lib.Trainer(config, workdir)
        state = t.init_state()
        kinds = {"unpacked": [next(t.train_iter) for _ in range(2)]}
        if packed_mean_doc:
            b, seq = config.train.batch_size, config.data.seq_len
            vocab = config.model.vocab_size
            kinds["packed"] = [packed_batch(b, seq, vocab, packed_mean_doc, seed) for seed in range(2)]
        with shd.set_mesh(t.mesh), shd.axis_rules():
            for kind, host_batches in kinds.items():
                batches = [shd.global_batch(hb, t.mesh) for hb in host_batches]
                for i in range(warmup):
                    state, m = t._train_step(state, batches[i % 2])
                jax.block_until_ready(m["loss"])
                start = time.perf_counter()
                for i in range(steps):
                    state, m = t._train_step(state, batches[i % 2])
                jax.block_until_ready(m["loss"])
                elapsed = time.perf_counter() - start
                stats = jax.devices()[0].memory_stats() or {}
                out[kind] = {"step_s": elapsed / steps, "peak_bytes": stats.get("peak_bytes_in_use"),
                             "loss": float(m["loss"])}
                if profile_dir:  # two more steps under the profiler (TensorBoard / Perfetto trace), not timed
                    with jax.profiler.trace(os.path.join(profile_dir, f"lm_train_{kind}")):
                        for i in range(2):
                            state, m = t._train_step(state, batches[i % 2])
                        jax.block_until_ready(m["loss"])
        t.checkpointer.close()
        t.writer.close()
    return out


def time_torch(cfg: TransformerConfig, batch: int, seq: int, steps: int, warmup: int, checkpointing: bool,
               compile: bool = False) -> dict:
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
    forward = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    autocast_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=device)

    def step():
        with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype != torch.float32):
            loss = forward(tokens[:, :-1], labels=tokens[:, 1:]).loss  # HF shifts labels itself; same work
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
    model = forward = opt = tokens = loss = step = None  # drop every reference so the memory can be released
    if device == "cuda":
        torch.cuda.empty_cache()  # hand the memory back before JAX claims its pool
    return result


def issue_flops_per_token(cfg: TransformerConfig, seq: int) -> float:
    """Issue 14's count: 6 x every parameter (embedding included) + 12 x layers x embed_dim x seq_len."""
    return 6.0 * cfg.num_params + 12.0 * cfg.num_layers * cfg.embed_dim * seq


def peaks() -> dict[str, float]:
    """{'H200': ..., 'H100': ...}-style peak FLOP/s to score against: the device's own, plus the H100's on an H200
    (issue 14 states its goal against the H100 peak); empty on CPUs."""
    kind = jax.devices()[0].device_kind
    own = metrics_lib.peak_flops_per_device()
    if own is None:
        return {}
    out = {kind: own}
    if "h200" in kind.lower():
        out["H100"] = metrics_lib.PEAK_FLOPS["H100"]
    return out


def report(name: str, r: dict, tokens_per_step: int, fpt: dict[str, float], n_dev: int,
           peak: dict[str, float]) -> dict:
    tps = tokens_per_step / r["step_s"]
    mfu = {f"{f}@{p}": 100 * tps * flops / (n_dev * pv) for f, flops in fpt.items() for p, pv in peak.items()}
    mfu_text = ", ".join(f"{v:.1f}% ({k})" for k, v in mfu.items()) or "n/a (no peak FLOP/s for this device)"
    mem = f"{r['peak_bytes'] / 2**30:.2f} GiB" if r.get("peak_bytes") else "n/a"
    print(f"{name:>13}: {tps:,.0f} tokens/s | step {1000 * r['step_s']:.1f} ms | MFU {mfu_text} | peak memory {mem} "
          f"| loss {r['loss']:.3f}")
    return {"tokens_per_s": tps, "step_ms": 1000 * r["step_s"], "mfu": mfu}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/lm/tiny.py")
    ap.add_argument("--batch_size", type=int)
    ap.add_argument("--seq_len", type=int)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--remat", help="override model.remat_policy")
    ap.add_argument("--attention", help="override model.attention_impl")
    ap.add_argument("--loss_chunk_size", type=int, help="override train.loss_chunk_size")
    ap.add_argument("--packed", action="store_true", help="also time packed batches (several documents per row)")
    ap.add_argument("--mean_doc", type=int, default=0, help="packed: mean document length (default seq_len / 4)")
    ap.add_argument("--torch", action="store_true", help="also time HF LlamaForCausalLM in torch (eager)")
    ap.add_argument("--torch_compile", action="store_true", help="also time it under torch.compile")
    ap.add_argument("--torch_checkpointing", action="store_true")
    ap.add_argument("--profile_dir", default=None, help="write jax.profiler traces of two steps per variant here")
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
    if args.loss_chunk_size is not None:
        config.train.loss_chunk_size = args.loss_chunk_size
    cfg = TransformerConfig.from_config(config.model, dtype=config.train.compute_dtype)
    batch, seq = config.train.batch_size, config.data.seq_len
    fpt = {"model": cfg.flops_per_token(seq), "issue": issue_flops_per_token(cfg, seq)}
    # torch runs first: JAX reserves most of the GPU's memory once its backend starts.
    theirs = {}
    if args.torch:
        theirs["torch eager"] = time_torch(cfg, batch, seq, args.steps, args.warmup, args.torch_checkpointing)
    if args.torch_compile:
        theirs["torch.compile"] = time_torch(cfg, batch, seq, args.steps, args.warmup, args.torch_checkpointing,
                                             compile=True)
    n_dev = jax.device_count()
    peak = peaks()
    print(f"{args.config}: {cfg.num_params / 1e6:.1f}M params, batch {batch} x seq {seq}, "
          f"{config.train.compute_dtype}, remat {cfg.remat_policy}, attention {cfg.attention_implementation}, "
          f"loss chunk {config.train.get('loss_chunk_size', 0)}, {n_dev} x {jax.devices()[0].device_kind}")
    print(f"MFU = tokens/s x FLOP/token / ({n_dev} x peak {', '.join(f'{k} {v:.3g}' for k, v in peak.items()) or '?'}"
          f" FLOP/s); FLOP/token: model = 6 N_matmul + 12 L T H hd = {fpt['model'] / 1e9:.3f} GFLOP, "
          f"issue = 6 N_all + 12 L d T = {fpt['issue'] / 1e9:.3f} GFLOP")
    mean_doc = (args.mean_doc or max(seq // 4, 1)) if args.packed else 0
    ours = time_jax(config, args.steps, args.warmup, mean_doc, args.profile_dir)
    results = {"jax": report("jax", ours["unpacked"], batch * seq, fpt, n_dev, peak)}
    if "packed" in ours:
        results["jax packed"] = report(f"jax packed~{mean_doc}", ours["packed"], batch * seq, fpt, n_dev, peak)
        ratio = results["jax packed"]["tokens_per_s"] / results["jax"]["tokens_per_s"]
        print(f"packed / unpacked tokens/s: {ratio:.3f} (mean document {mean_doc} tokens)")
    for name, r in theirs.items():
        results[name] = report(name, r, batch * seq, fpt, 1, peak)
        print(f"ratio jax/{name} tokens/s: {results['jax']['tokens_per_s'] / results[name]['tokens_per_s']:.2f}")
    print("BENCH " + json.dumps({"bench": "lm_train", "config": args.config, "batch": batch, "seq": seq,
                                 "gflop_per_token": {k: v / 1e9 for k, v in fpt.items()},
                                 "device": jax.devices()[0].device_kind, "results": results}))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
