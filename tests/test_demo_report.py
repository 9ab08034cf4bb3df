"""The demo report's 'where targets are missed' section: every missed figure, the run's own conditioning and
frozen-vs-full figures, and nothing when every target is met."""

from teal_jax import demo_report as R

MET = {"caption_accuracy": 0.97, "t2i_accuracy": 0.93, "asr_wer": 0.04, "tts_accuracy": 0.9,
       "reasoning_image_accuracy": 0.85, "reasoning_speech_accuracy": 0.81}


def test_nothing_when_every_target_is_met():
    assert R.missed_targets_section({"teal_stage2": MET}, "teal_stage2") == []


def test_missed_figures_and_the_runs_own_evidence():
    main = dict(MET, caption_accuracy=0.5547, asr_wer=0.5414, t2i_nll_true_prompt=170.0, t2i_nll_mean_prompt=170.3,
                t2i_likelihood_accuracy=0.1)
    figures = {"teal_stage2": main, R.BASELINE: dict(MET, caption_accuracy=0.2695, asr_wer=0.7134),
               "ablation_full": dict(MET, caption_accuracy=0.543, asr_wer=0.4236)}
    text = "\n".join(R.missed_targets_section(figures, "teal_stage2"))
    assert "captioning accuracy (held-out digits): 0.5547 (target >= 0.95)" in text
    assert "ASR word error rate (held-out voices): 0.5414 (target <= 0.05)" in text
    assert "TTS" not in text.split("Chance")[0]  # met targets are not listed as missed
    assert "170 nats vs 170.3" in text and "(0.3 nats apart)" in text
    assert "captioning accuracy 0.2695 -> 0.543" in text and "ASR word error rate 0.7134 -> 0.4236" in text
    assert R.RUN_LABELS[R.BASELINE] in text
    # without the step-matched baseline, stage 1 itself is the frozen side
    del figures[R.BASELINE]
    figures["teal_stage1"] = dict(MET, caption_accuracy=0.44)
    assert "captioning accuracy 0.44 -> 0.543" in "\n".join(R.missed_targets_section(figures, "teal_stage2"))


def test_conditioning_sentence_follows_the_likelihood_figure():
    row = dict(MET, t2i_accuracy=0.2, t2i_nll_true_prompt=150.0, t2i_nll_mean_prompt=160.0)
    near = "\n".join(R.missed_targets_section({"teal_stage1": dict(row, t2i_likelihood_accuracy=0.12)}, "teal_stage1"))
    above = "\n".join(R.missed_targets_section({"teal_stage1": dict(row, t2i_likelihood_accuracy=0.6)}, "teal_stage1"))
    assert "Near chance" in near and "Above chance" not in near
    assert "Above chance" in above and "Near chance" not in above
