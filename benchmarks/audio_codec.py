"""Audio codec throughput: encode and decode seconds-of-audio per second for a named config on the current JAX
backend, and in the same run transformers' EncodecModel at its default 24 kHz shape in torch (random weights,
codebooks filled), with the ratio printed.

    python benchmarks/audio_codec.py --config=configs/audio/encodec_24khz.py --seconds=2 --batch=4

The JAX model runs at ``--dtype`` (float32 by default; ``bfloat16`` keeps float32 parameters and the float32 codebook
search) with random parameters of the config's shape (throughput does not depend on the values); ``--lstm_unroll``
sets the LSTM's scan unroll (CodecConfig.lstm_unroll). Each figure is the best of ``--repeats`` timed calls after one
compile/warm-up call. The torch peer runs on the same device as JAX (CUDA when torch sees a GPU) and first (JAX
reserves most of the GPU's memory once started).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time

import jax
import jax.numpy as jnp
import numpy as np


def _load_config(path: str):
    name, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("cfg", name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg or None)


def _best(fn, repeats):
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_jax(config_path, seconds, batch, repeats, dtype="float32", lstm_unroll=1):
    import dataclasses

    from teal_jax.models.codec import Codec, CodecConfig

    cfg = CodecConfig.from_config(_load_config(config_path).model, dtype=dtype)
    cfg = dataclasses.replace(cfg, lstm_unroll=lstm_unroll)
    model = Codec(cfg)
    n = int(seconds * cfg.sample_rate)
    x = jnp.asarray(0.1 * np.random.default_rng(0).standard_normal((batch, n, 1)), jnp.float32)
    v = model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, x[:, :1024], train=False)
    enc = jax.jit(lambda v, x: model.apply(v, x, method=Codec.encode))
    dec = jax.jit(lambda v, c: model.apply(v, c, method=Codec.decode_codes))
    codes = enc(v, x)
    t_enc = _best(lambda: enc(v, x).block_until_ready(), repeats)
    t_dec = _best(lambda: dec(v, codes).block_until_ready(), repeats)
    return cfg, batch * seconds / t_enc, batch * seconds / t_dec


def bench_torch(seconds, batch, repeats, bandwidth):
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.EncodecModel(transformers.EncodecConfig()).eval()
    with torch.no_grad():
        for layer in model.quantizer.layers:
            layer.codebook.embed.copy_(torch.randn_like(layer.codebook.embed))
    model = model.to(device)
    x = 0.1 * torch.randn(batch, 1, int(seconds * 24000), device=device)

    def synced(fn):
        def run():
            out = fn()
            if device == "cuda":
                torch.cuda.synchronize()
            return out
        return run

    with torch.no_grad():
        out = model.encode(x, bandwidth=bandwidth)
        t_enc = _best(synced(lambda: model.encode(x, bandwidth=bandwidth)), repeats)
        t_dec = _best(synced(lambda: model.decode(out.audio_codes, out.audio_scales)), repeats)
    where = f"torch {device}" + ("" if device == "cuda" else f", {torch.get_num_threads()} threads")
    model = x = out = None
    if device == "cuda":
        torch.cuda.empty_cache()
    return batch * seconds / t_enc, batch * seconds / t_dec, where


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/audio/encodec_24khz.py")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no_torch", action="store_true")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="JAX compute dtype")
    p.add_argument("--lstm_unroll", type=int, default=1, help="time steps per LSTM scan iteration")
    a = p.parse_args()
    cfg_model = _load_config(a.config).model
    # the same number of levels as ours where transformers offers it (24 kbit/s = 32 levels)
    bw = 24.0 if int(cfg_model.get("num_levels", 0)) >= 32 else 6.0
    peer = None if a.no_torch else bench_torch(a.seconds, a.batch, a.repeats, bw)  # first: before JAX's pool
    cfg, je, jd = bench_jax(a.config, a.seconds, a.batch, a.repeats, a.dtype, a.lstm_unroll)
    dev = jax.devices()[0]
    print(f"backend {jax.default_backend()} ({dev.device_kind}); {a.batch} clips x {a.seconds} s")
    print(f"teal_jax {a.config}: {cfg.sample_rate} Hz, hop {cfg.hop_length}, {cfg.num_levels} levels x "
          f"{cfg.codebook_size}, {cfg.dtype}, lstm_unroll {cfg.lstm_unroll}: encode {je:.1f} audio-s/s, "
          f"decode {jd:.1f} audio-s/s")
    line = {"bench": "audio_codec", "config": a.config, "device": dev.device_kind, "jax_encode": je,
            "jax_decode": jd, "dtype": cfg.dtype, "lstm_unroll": cfg.lstm_unroll}
    if peer is not None:
        te, td, where = peer
        print(f"transformers EncodecModel 24 kHz ({where}, {bw} kbit/s): encode {te:.1f} "
              f"audio-s/s, decode {td:.1f} audio-s/s")
        print(f"ratio teal_jax / torch: encode {je / te:.2f}x, decode {jd / td:.2f}x")
        line.update(torch_device=where, torch_encode=te, torch_decode=td)
    print("BENCH " + json.dumps(line))


if __name__ == "__main__":
    main()
