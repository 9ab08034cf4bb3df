"""Host-side data loading throughput: tokens/s one loader delivers, to size the loaders of a host (docs/launch.md).

* text: the packed text pipeline (tfds array_record source -> SentencePiece -> packing -> batches through grain,
  ``teal_jax.data.pipeline.text_dataset``) on the project's generated corpus, for each number of grain read
  threads (``--threads``);
* TEAL: the packed multi-task stream (``teal_jax.data.teal.task_stream.TealTaskStream``: pre-tokenized image/audio
  codes, text, templates, packing) of a TEAL run given with ``--teal_run`` (e.g. the demo's
  ``runs/demo/teal_stage1``), one Python process.

tokens/s = batches x batch_size x seq_len / wall seconds, after ``--warmup`` batches. No peer: the figure is compared
with what the devices consume (tokens/s of training, benchmarks/lm_train.py) in docs/launch.md.

  python benchmarks/data_loading.py --threads 1 --threads 2 --threads 4 --teal_run runs/demo/teal_stage1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def _time(it, batches: int, warmup: int) -> tuple[float, int]:
    for _ in range(warmup):
        next(it)
    t0, tokens = time.perf_counter(), 0
    for _ in range(batches):
        b = next(it)
        tokens += int(b["tokens"].size)
    return tokens / (time.perf_counter() - t0), tokens


def text_throughput(threads: list[int], batches: int, warmup: int, batch_size: int, seq_len: int) -> None:
    import tensorflow_datasets as tfds

    from configs.lm import tiny
    from teal_jax.data.lm import prepare_lm_data
    from teal_jax.data.pipeline import text_dataset

    c = tiny.get_config()
    c.data.num_docs = 20_000
    with tempfile.TemporaryDirectory() as d:
        paths = prepare_lm_data(c.data, d, verbose=False)
        source = tfds.data_source(paths["dataset"], data_dir=paths["tfds_dir"], split="train")
        print(f"text pipeline: {len(source)} documents, batch {batch_size} x {seq_len}")
        print("| read threads | tokens/s |\n| --- | --- |")
        for n in threads:
            ds = text_dataset(source, tokenizer_model=paths["tokenizer_model"], batch_size=batch_size,
                              seq_len=seq_len, train=True, read_threads=n)
            rate, _ = _time(iter(ds), batches, warmup)
            print(f"| {n} | {rate:,.0f} |", flush=True)


def teal_throughput(run: str, batches: int, warmup: int) -> None:
    from teal_jax import checkpoint
    from teal_jax.train.teal_objective import TealObjective

    config = checkpoint.read_config(run)
    objective = TealObjective(config)
    objective.prepare(os.path.abspath(run))  # idempotent: reuses the run's token datasets
    it = objective.make_data("train", batch_size=int(config.train.batch_size), process_index=0, process_count=1)
    rate, tokens = _time(it, batches, warmup)
    print(f"TEAL task stream of {run}: batch {config.train.batch_size} x {config.data.seq_len}: {rate:,.0f} tokens/s "
          f"({tokens:,} tokens in {batches} batches, one process)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, action="append", help="grain read threads (repeatable; default 1, 2)")
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--teal_run", default=None, help="a TEAL run directory whose task stream to time")
    p.add_argument("--no_text", action="store_true")
    a = p.parse_args()
    if not a.no_text:
        text_throughput(a.threads or [1, 2], a.batches, a.warmup, a.batch_size, a.seq_len)
    if a.teal_run:
        teal_throughput(a.teal_run, a.batches, a.warmup)


if __name__ == "__main__":
    main()
