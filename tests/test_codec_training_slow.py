"""The issue's target (slow): configs/audio/speech_tiny.py (frame-rate STFT/iSTFT codec, 1,200 steps) trained through
the project trainer; on held-out voices the spoken-word classifier's accuracy on reconstructions is within 5 points of
its accuracy on the originals, every RVQ level uses >= 50% of its codes, and the whole run (data build, training,
classifier, held-out eval, WAVs) takes <= 15 minutes on the 2-core CPU.

Time: the whole ``trainer.train`` call is timed (wall) against 15 minutes. On a CPU shared with other jobs neither
wall nor CPU time measures the codec alone (XLA's thread pool spins and faults under contention: the same run took
1,146 CPU-s at load average 2-6 and 3,160 CPU-s at load 9-10); there, set ``TEAL_CODEC_WALL_LIMIT_S`` (seconds) and
say so. The message carries wall, CPU time and the load average. Measured figures: docs/audio_codec.md.
"""

from __future__ import annotations

import os
import resource
import time

import pytest

from configs.audio import speech_tiny
from teal_jax.tokenizers.audio import AudioTokenizer
from teal_jax.train import trainer

TARGET_S = 15 * 60


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@pytest.mark.slow
def test_speech_tiny_reaches_targets(tmp_path):
    config = speech_tiny.get_config()
    assert config.train.steps == 1200 and (config.model.encoder, config.model.decoder) == ("stft", "istft")
    config.train.async_checkpoints = False
    load_before = os.getloadavg()
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    out = trainer.train(config, str(tmp_path))
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    timing = (f"wall {wall:.0f} s, CPU {cpu:.0f} s, load average before {load_before}, "
              f"after {os.getloadavg()}")
    print(timing, out)

    orig, recon = out["eval_heldout_classifier_acc_orig"], out["eval_heldout_classifier_acc_recon"]
    assert out["eval_heldout_clips"] == 240.0, out  # every held-out-voice clip (4 voices never trained on)
    assert orig >= 0.8, out  # the classifier itself must be meaningful on held-out voices
    assert recon >= orig - 0.05, out
    levels = config.model.num_levels
    assert all(out[f"eval_heldout_usage_level{i}"] >= 0.5 for i in range(levels)), out

    step_dir = os.path.join(tmp_path, "samples", f"step_{config.train.steps:06d}")
    for name in ("00_orig.wav", "00_recon.wav", "transcripts.txt"):
        assert os.path.exists(os.path.join(step_dir, name)), name
    tok = AudioTokenizer.from_checkpoint(str(tmp_path))  # the trained codec as a tokenizer
    codes, frames = tok.encode([[0.1] * 1600], 16000)
    assert codes.shape == (1, 10, levels) and frames.tolist() == [10]

    # last, so that a loaded machine still checks the files and the tokenizer above
    wall_limit = float(os.environ.get("TEAL_CODEC_WALL_LIMIT_S", TARGET_S))
    assert wall <= wall_limit, (f"over {wall_limit:.0f} s wall: {timing}; on a CPU shared with other jobs set "
                                "TEAL_CODEC_WALL_LIMIT_S")
