"""The issue's target (slow: ~15-20 minutes on a 2-core CPU): configs/audio/speech_tiny.py trained through the
project trainer; on held-out voices the spoken-word classifier's accuracy on reconstructions is within 5 points of
its accuracy on the originals, and every RVQ level uses >= 50% of its codes."""

from __future__ import annotations

import os

import pytest

from configs.audio import speech_tiny
from teal_jax.tokenizers.audio import AudioTokenizer
from teal_jax.train import trainer


@pytest.mark.slow
def test_speech_tiny_reaches_targets(tmp_path):
    config = speech_tiny.get_config()
    config.train.async_checkpoints = False
    out = trainer.train(config, str(tmp_path))
    orig, recon = out["eval_heldout_classifier_acc_orig"], out["eval_heldout_classifier_acc_recon"]
    assert orig >= 0.8, out  # the classifier itself must be meaningful on held-out voices
    assert recon >= orig - 0.05, out
    levels = config.model.num_levels
    assert all(out[f"eval_heldout_usage_level{i}"] >= 0.5 for i in range(levels)), out
    step_dir = os.path.join(tmp_path, "samples", f"step_{config.train.steps:06d}")
    assert os.path.exists(os.path.join(step_dir, "00_orig.wav")) and os.path.exists(os.path.join(step_dir,
                                                                                             "00_recon.wav"))
    tok = AudioTokenizer.from_checkpoint(str(tmp_path))  # the trained codec as a tokenizer
    codes, frames = tok.encode([[0.1] * 1600], 16000)
    assert codes.shape == (1, 10, levels) and frames.tolist() == [10]
