"""What sealing and verifying checkpoints costs next to the save itself (teal_jax/checkpoint.py).

For a state of ``--mb`` MiB of float32 parameters (plus Adam-like moments, so 3x that on disk): the time of an Orbax
save (synchronous, so the figure is the whole write), of sealing it (CRC-32 of every file, manifest written), and of
verifying it before a restore, with the ratio seal/save and verify/save. No peer: Orbax itself records no checksums.

  python benchmarks/checkpoint_integrity.py --mb 64 --mb 512
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def measure(mb: int, repeats: int) -> dict[str, float]:
    from teal_jax import checkpoint as C
    from teal_jax.config import base_config

    n = mb * (1 << 20) // 4
    rng = np.random.default_rng(0)
    w = rng.standard_normal(n, dtype=np.float32)
    state = {"params": {"w": w}, "opt_state": {"mu": w * 0.1, "nu": w * w}}
    best = {"save": np.inf, "seal": np.inf, "verify": np.inf}
    for r in range(repeats):
        with tempfile.TemporaryDirectory() as d:
            ckpt = C.Checkpointer(d, async_save=False)
            t0 = time.perf_counter()
            ckpt.save(r + 1, state, {}, base_config())
            ckpt.manager.wait_until_finished()
            t1 = time.perf_counter()
            ckpt._seal()  # what the next save / wait / close does first
            t2 = time.perf_counter()
            ckpt.verify(r + 1)
            t3 = time.perf_counter()
            size = sum(os.path.getsize(os.path.join(root, f)) for root, _, fs in os.walk(ckpt.step_dir(r + 1))
                       for f in fs)
            ckpt.close()
        best = {"save": min(best["save"], t1 - t0), "seal": min(best["seal"], t2 - t1),
                "verify": min(best["verify"], t3 - t2)}
    return {**best, "bytes": size}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, action="append", help="parameter MiB (repeatable); default 64 and 256")
    p.add_argument("--repeats", type=int, default=3, help="best of this many")
    args = p.parse_args()
    print("| parameters | on disk | save | seal (CRC-32 + manifest) | verify | seal / save | verify / save |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for mb in args.mb or [64, 256]:
        r = measure(mb, args.repeats)
        print(f"| {mb} MiB | {r['bytes'] / 2**20:.0f} MiB | {r['save']:.3f} s | {r['seal']:.3f} s | "
              f"{r['verify']:.3f} s | {r['seal'] / r['save']:.2f} | {r['verify'] / r['save']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
