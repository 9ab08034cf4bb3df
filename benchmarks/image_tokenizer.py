"""Image tokenizer throughput: encode and decode images/s for a named config on the current JAX backend, and, in
the same run, transformers' ChameleonVQVAE encoder at its default shape (512x512, 8,192 codes) in torch, against
the *same* encoder converted into our VQGAN and run in JAX (an identical computation, so the ratio is fair).

    python benchmarks/image_tokenizer.py --config=configs/image/digits_tiny.py --batch=64
    python benchmarks/image_tokenizer.py --config=configs/image/vqgan_256.py --batch=16 --chameleon_batch=1

Weights are random (throughput does not depend on them); ``--workdir`` loads a trained checkpoint instead.
Timings exclude compilation (one warm-up call) and wait for the result (``block_until_ready``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from teal_jax.models.vqgan import VQGAN, VQGANConfig  # noqa: E402
from teal_jax.tokenizers.image import ImageTokenizer  # noqa: E402


def _load_config(path: str, arg: str | None):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def _time(fn, *args, iters: int) -> float:
    """Seconds per call (median of ``iters`` after one warm-up)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_config(config_path: str, arg: str | None, batch: int, iters: int, dtype: str | None,
                 workdir: str | None, bucket: bool = True, max_batch: int = 64) -> dict[str, float]:
    if workdir:
        tok = ImageTokenizer.from_checkpoint(workdir, dtype=dtype, bucket=bucket, max_batch=max_batch)
        cfg = tok.config
    else:
        c = _load_config(config_path, arg)
        cfg = VQGANConfig.from_config(c.model, dtype=dtype or c.train.compute_dtype)
        from flax import linen as nn

        x0 = jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.in_channels))
        variables = nn.unbox(jax.jit(VQGAN(cfg).init)(jax.random.key(0), x0))
        tok = ImageTokenizer(cfg, variables.pop("params"), variables, bucket=bucket, max_batch=max_batch)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (batch, cfg.image_size, cfg.image_size,
                                                                     cfg.in_channels), dtype=np.uint8))
    codes = tok.encode(images)
    t_enc = _time(tok.encode, images, iters=iters)
    t_dec = _time(tok.decode, codes, iters=iters)
    name = f"checkpoint {workdir}" if workdir else f"{config_path}{':' + arg if arg else ''}"
    print(f"[ours] {name} {cfg.image_size}x{cfg.image_size}x{cfg.in_channels} "
          f"-> {cfg.token_grid} tokens, dtype {cfg.dtype}, batch {batch} on {jax.devices()[0].device_kind}: "
          f"encode {batch / t_enc:.1f} images/s, decode {batch / t_dec:.1f} images/s "
          f"(bucket={bucket}, max_batch={max_batch}; programs traced: {dict(tok.traces)})")
    return {"encode_images_per_s": batch / t_enc, "decode_images_per_s": batch / t_dec}


def bench_chameleon(batch: int, iters: int, dtype: str) -> dict[str, float] | None:
    try:
        import torch
        import transformers
    except ImportError:
        print("[chameleon] torch/transformers not installed: skipping the comparison")
        return None
    from teal_jax.convert.chameleon import load_chameleon_vqvae

    torch.manual_seed(0)
    model = transformers.ChameleonVQVAE(transformers.ChameleonVQVAEConfig()).eval()  # 512x512, 8192 codes
    res = model.config.resolution
    pixels = torch.rand(batch, 3, res, res) * 2 - 1
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d, safe_serialization=True)
        cfg, params = load_chameleon_vqvae(d, dtype=dtype)
    # torch runs where JAX runs (CUDA when JAX has a GPU), in the same dtype
    dev = "cuda" if jax.devices()[0].platform == "gpu" and torch.cuda.is_available() else "cpu"
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = model.to(dev, tdtype)
    tpix = pixels.to(dev, tdtype)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    with torch.inference_mode():
        model.encode(tpix)  # warm-up
        sync()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            model.encode(tpix)
            sync()
            times.append(time.perf_counter() - t0)
    t_torch = float(np.median(times))
    where = f"{dev}, {torch.get_num_threads()} threads" if dev == "cpu" else torch.cuda.get_device_name()
    vq = VQGAN(cfg)
    enc = jax.jit(lambda p, x: vq.apply({"params": p}, x, method=VQGAN.encode).codes)
    x = jnp.asarray(pixels.permute(0, 2, 3, 1).numpy())
    t_jax = _time(enc, params, x, iters=iters)
    print(f"[chameleon] encoder {res}x{res}, batch {batch}: torch ({where}, {dtype}) "
          f"{batch / t_torch:.3f} images/s; ours in JAX on {jax.devices()[0].device_kind} ({dtype}) "
          f"{batch / t_jax:.3f} images/s; ratio ours/torch = {t_torch / t_jax:.2f}x")
    return {"torch_images_per_s": batch / t_torch, "jax_images_per_s": batch / t_jax, "ratio": t_torch / t_jax}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/image/digits_tiny.py", help="config file, optionally :variant")
    p.add_argument("--workdir", default=None, help="benchmark a trained checkpoint instead of random weights")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--dtype", default=None, help="compute dtype override (default: the config's)")
    p.add_argument("--no_bucket", action="store_true", help="run the exact batch shape (no power-of-two padding)")
    p.add_argument("--max_batch", type=int, default=64, help="largest batch bucket; bigger batches run in pieces")
    p.add_argument("--chameleon_batch", type=int, default=1)
    p.add_argument("--chameleon_iters", type=int, default=2)
    p.add_argument("--chameleon_dtype", default="float32")
    p.add_argument("--skip_chameleon", action="store_true")
    a = p.parse_args(argv)
    path, _, arg = a.config.partition(":")
    ours = bench_config(path, arg or None, a.batch, a.iters, a.dtype, a.workdir, not a.no_bucket, a.max_batch)
    cham = None if a.skip_chameleon else bench_chameleon(a.chameleon_batch, a.chameleon_iters, a.chameleon_dtype)
    if cham:
        print(f"[ratio] {path} encode images/s / torch ChameleonVQVAE encode images/s = "
              f"{ours['encode_images_per_s'] / cham['torch_images_per_s']:.1f}x (different models: see the "
              f"[chameleon] line for the same-model ratio)")
    return ours, cham


if __name__ == "__main__":
    main()
