"""Every benchmark in one command, each against its peer in the same run, and a markdown table of the results.

  python benchmarks/run_all.py                         # one GPU: the issue-14 shapes, < 8 minutes in all
  python benchmarks/run_all.py --tiny                  # tiny shapes on a CPU: proves every script runs
  python benchmarks/run_all.py --out=/tmp/bench.md     # where the table goes (default $OUT/results.md when the
                                                       # environment sets OUT, as the device tool does, else
                                                       # benchmarks/results.md)

Each script runs in its own process (torch and JAX each get the device to themselves in turn), under a time limit
taken from what is left of ``--budget_s``; a script that would not fit is skipped and says so in the table. The
table gives each figure with its formula (FLOP counts: benchmarks/lm_train.py and benchmarks/decode.py docstrings),
and the full output of every script follows it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, arguments, expected seconds on the device) in run order; the tiny variants run on a CPU.
DEVICE_RUNS = [
    ("lm_train", ["benchmarks/lm_train.py", "--config=configs/lm/tinyllama_1b.py", "--batch_size=8", "--seq_len=2048",
                  "--steps=5", "--warmup=2", "--packed", "--torch", "--torch_compile"], 210),
    ("decode", ["benchmarks/decode.py", "--batches=1,32", "--new_tokens=256", "--repeats=1"], 120),
    ("image_tokenizer", ["benchmarks/image_tokenizer.py", "--config=configs/image/vqgan_256.py", "--batch=16",
                         "--chameleon_batch=4"], 60),
    ("audio_codec", ["benchmarks/audio_codec.py", "--config=configs/audio/encodec_24khz.py", "--seconds=2",
                     "--batch=4"], 60),
]
TINY_RUNS = [
    ("lm_train", ["benchmarks/lm_train.py", "--config=configs/lm/tiny.py", "--batch_size=4", "--seq_len=64",
                  "--steps=3", "--warmup=1", "--packed", "--torch"], 120),
    ("decode", ["benchmarks/decode.py", "--tiny", "--repeats=1"], 60),
    ("image_tokenizer", ["benchmarks/image_tokenizer.py", "--config=configs/image/digits_tiny.py", "--batch=8",
                         "--iters=2", "--skip_chameleon"], 90),
    ("audio_codec", ["benchmarks/audio_codec.py", "--config=configs/audio/speech_tiny.py", "--seconds=1",
                     "--batch=1", "--repeats=1"], 90),
]


def run(name: str, argv: list[str], limit: float) -> dict:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=limit)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += f"\n[timed out after {limit:.0f} s]"
        rc = "timeout"
    benches = [json.loads(line[len("BENCH "):]) for line in out.splitlines() if line.startswith("BENCH ")]
    return {"name": name, "argv": argv, "rc": rc, "seconds": time.perf_counter() - start, "output": out,
            "bench": benches}


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def rows_for(r: dict) -> list[str]:
    """Markdown rows: | benchmark | ours | peer | ratio | formula |."""
    if r["rc"] != 0:
        return [f"| {r['name']} | failed ({r['rc']}, see its output below) | | | |"]
    rows = []
    for b in r["bench"]:
        if b["bench"] == "lm_train":
            res = b["results"]
            jax_tps = res["jax"]["tokens_per_s"]
            mfu = ", ".join(f"{v:.1f}% {k}" for k, v in res["jax"]["mfu"].items()) or "n/a"
            formula = (f"MFU on FLOP/token model = 6 N_matmul + 12 L T H hd ({b['gflop_per_token']['model']:.3f} G), "
                       f"issue = 6 N_all + 12 L d T ({b['gflop_per_token']['issue']:.3f} G)")
            rows.append(f"| LM train {b['batch']}x{b['seq']} | {_fmt(jax_tps)} tokens/s, MFU {mfu} | | | {formula} |")
            if "jax packed" in res:
                p = res["jax packed"]["tokens_per_s"]
                rows.append(f"| LM train packed | {_fmt(p)} tokens/s | unpacked (same run) {_fmt(jax_tps)} | "
                            f"{p / jax_tps:.3f} | same step, segment ids |")
            for peer in ("torch eager", "torch.compile"):
                if peer in res:
                    t = res[peer]["tokens_per_s"]
                    rows.append(f"| LM train vs {peer} | {_fmt(jax_tps)} tokens/s | HF Llama {peer} {_fmt(t)} | "
                                f"{jax_tps / t:.2f} | same FLOP count |")
        elif b["bench"] == "decode":
            peer = f"HF generate {_fmt(b['hf_tokens_per_s'])}" if "hf_tokens_per_s" in b else "not run"
            ratio = f"{b['ratio']:.2f}" if "ratio" in b else ""
            rows.append(f"| decode batch {b['batch']}, {b['dtype']}, {b['new_tokens']} new | "
                        f"{_fmt(b['jax_tokens_per_s'])} tokens/s | {peer} | {ratio} | "
                        f"{b['gflop_per_token']:.2f} GFLOP/token (2 N_matmul + 4 L d S_avg); "
                        f"{_fmt(b['achieved_gb_per_s'])} GB/s read (weights + KV per step) |")
        elif b["bench"] == "audio_codec":
            peer = (f"EncodecModel ({b['torch_device']}) enc {_fmt(b['torch_encode'])} / dec {_fmt(b['torch_decode'])}"
                    if "torch_encode" in b else "not run")
            ratio = (f"{b['jax_encode'] / b['torch_encode']:.2f} / {b['jax_decode'] / b['torch_decode']:.2f}"
                     if "torch_encode" in b else "")
            rows.append(f"| audio codec {b['config']} | enc {_fmt(b['jax_encode'])} / dec {_fmt(b['jax_decode'])} "
                        f"audio-s/s | {peer} | {ratio} | seconds of audio per second |")
    if not rows:  # a script without BENCH lines: its last figures
        tail = [ln for ln in r["output"].splitlines() if ln.strip()][-3:]
        rows.append(f"| {r['name']} | {'<br>'.join(t.replace('|', '/') for t in tail)} | (in the output) | | |")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT") or os.path.join(ROOT, "benchmarks"),
                                                  "results.md"))
    ap.add_argument("--budget_s", type=float, default=460.0, help="wall-clock budget for all scripts")
    ap.add_argument("--only", default="", help="comma-separated names to run (default all)")
    ap.add_argument("--profile_dir", default=None, help="lm_train and decode also write jax.profiler traces here")
    args = ap.parse_args()
    runs = TINY_RUNS if args.tiny else DEVICE_RUNS
    if args.profile_dir:
        runs = [(n, a + [f"--profile_dir={args.profile_dir}"] if n in ("lm_train", "decode") else a, e)
                for n, a, e in runs]
    if args.only:
        runs = [r for r in runs if r[0] in args.only.split(",")]
    start = time.perf_counter()
    results = []
    for i, (name, argv, expected) in enumerate(runs):
        left = args.budget_s - (time.perf_counter() - start)
        reserve = sum(e for _, _, e in runs[i + 1:]) * 0.5  # keep some time for the ones after
        limit = max(left - reserve, 0)
        if limit < 0.5 * expected:
            results.append({"name": name, "argv": argv, "rc": "skipped (out of time)", "seconds": 0.0, "output": "",
                            "bench": []})
            continue
        print(f"[run_all] {name} (limit {limit:.0f} s) ...", flush=True)
        results.append(run(name, argv, limit))
        print(f"[run_all] {name}: rc {results[-1]['rc']} in {results[-1]['seconds']:.0f} s", flush=True)
    lines = [f"# Benchmarks ({'tiny, ' if args.tiny else ''}{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
             "", "| benchmark | ours | peer (same run) | ratio | formula |", "| --- | --- | --- | --- | --- |"]
    for r in results:
        lines += rows_for(r)
    lines += ["", f"Total {time.perf_counter() - start:.0f} s.", ""]
    for r in results:
        lines += [f"## {r['name']} ({r['rc']}, {r['seconds']:.0f} s)", "", "`python " + " ".join(r["argv"]) + "`", "",
                  "```", r["output"].strip()[-6000:], "```", ""]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines[: lines.index("") + 4 + sum(len(rows_for(r)) for r in results)]))
    print(f"[run_all] table written to {args.out}")


if __name__ == "__main__":
    main()
