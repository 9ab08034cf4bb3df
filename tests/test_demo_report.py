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


# ---- guidance chosen on validation prompts inside evaluate_run ------------------------------------------------------
def _stub_run(monkeypatch, image_best=3.0, audio_best=2.0):
    """evaluate_run on a stub model: the understanding metrics are stubbed, generation is real teal_eval code on a
    model that is right only at its ``*_best`` guidance scale (test_teal_eval.GuidedStub)."""
    import numpy as np
    from test_teal_eval import BrightnessClassifier, GuidedStub, LoudnessClassifier

    import teal_jax
    from teal_jax.evaluate import teal_eval as E

    class Stub(GuidedStub):
        max_batch = 64

        def _digits(self, texts, scale):
            self.batches.append(self.max_batch)
            self.best = image_best if self.kind == "image" else audio_best
            return super()._digits(texts, scale)

        def generate_image(self, texts, **kw):
            self.kind = "image"
            return super().generate_image(texts, **kw)

        def generate_speech(self, texts, **kw):
            self.kind = "audio"
            return super().generate_speech(texts, **kw)

    model = Stub(best=0.0)
    model.batches = []
    monkeypatch.setattr(teal_jax, "load", lambda run_dir, step=None: model)
    monkeypatch.setattr(E, "caption_accuracy", lambda *a, **k: {"accuracy": 0.9, "exact_match": 0.8,
                                                                "per_class": {}})
    monkeypatch.setattr(E, "caption_forced_choice", lambda *a, **k: {"accuracy": 0.9})
    monkeypatch.setattr(E, "t2i_likelihood_accuracy", lambda *a, **k: {"accuracy": 0.5, "nll_true": 10.0,
                                                                       "nll_mean": 12.0})
    monkeypatch.setattr(E, "asr_wer", lambda *a, **k: {"wer": 0.1, "exact_match": 0.7})
    monkeypatch.setattr(E, "text_perplexity", lambda *a, **k: {"teal_ppl": 2.5, "base_ppl": 2.5,
                                                               "logits_bitwise_equal": True, "max_abs_logit_diff": 0.0})
    speech = {"fits": np.array([True]), "audio": np.zeros((1, 1600), np.int16), "text": ["one"]}
    kw = dict(digit_clf=BrightnessClassifier(), speech_clf=LoudnessClassifier(), images=np.zeros((2, 8, 8)),
              labels=[1, 2], speech=speech, texts=["one"], quick=True)
    return model, kw


def test_evaluate_run_chooses_guidance_on_validation_then_evaluates_held_out_with_it(monkeypatch, tmp_path):
    from test_teal_eval import HELD_OUT_QUESTIONS

    from teal_jax.data import templates as T

    model, kw = _stub_run(monkeypatch)
    plan = R.generation_plan(True, {"temperature": 0.7, "top_p": 0.9, "top_k": 0, "seed": 5})
    assert plan["validation_seed"] != plan["seed"] and plan["reasoning_n"] == 15
    assert not {tuple(p) for p in plan["validation_pairs"]} & set(T.REASONING_EVAL_PAIRS)
    figs, text_row, info = R.evaluate_run(str(tmp_path / "run"), sample_dir=str(tmp_path / "s"), plan=plan, **kw)
    assert figs["guidance_image"] == 3.0 and figs["guidance_speech"] == 2.0
    assert info["guidance"]["image"]["accuracy"] == {"1": 0.0, "2": 0.0, "3": 1.0}
    assert figs["t2i_accuracy"] == figs["reasoning_image_accuracy"] == 1.0  # held-out at the chosen scales
    assert figs["tts_accuracy"] == figs["reasoning_speech_accuracy"] == 1.0
    assert figs["text_logits_bitwise_equal"] is True
    validation = [c for c in model.asked if c[2]["seed"] == plan["validation_seed"]]
    heldout = [c for c in model.asked if c[2]["seed"] == plan["seed"]]
    assert len(validation) == 6 and len(heldout) == 4 and len(model.asked) == 10  # 3 scales x 2 modalities
    for _, prompts, _ in validation:
        assert not set(prompts) & HELD_OUT_QUESTIONS and len(prompts) == plan["reasoning_n"]
    for kind, _, kwargs in heldout:
        assert kwargs["guidance_scale"] == (3.0 if kind == "t2i" else 2.0)
        assert (kwargs["temperature"], kwargs["top_p"], kwargs["top_k"]) == (0.7, 0.9, 0)
    asked = {p for c in heldout for p in c[1]}
    assert HELD_OUT_QUESTIONS <= asked
    assert set(model.batches) == {plan["reasoning_n"]}  # one batch shape for every generation call
    s = tmp_path / "s"
    assert (s / "t2i" / "t2i_grid.png").exists() and (s / "reasoning_image" / "reasoning_image_grid.png").exists()
    wavs = sorted((s / "tts").glob("*.wav"))
    assert wavs and all(w.with_suffix(".png").exists() for w in wavs)

    # given scales (an ablation using strict TEAL's): no validation sampling at all
    model.asked.clear()
    given = {m: {"chosen": 2.0, "from": "teal_stage1"} for m in ("image", "audio")}
    figs, _, info = R.evaluate_run(str(tmp_path / "run"), sample_dir=str(tmp_path / "s2"), plan=plan,
                                   guidance=given, **kw)
    assert all(c[2]["seed"] == plan["seed"] and c[2]["guidance_scale"] == 2.0 for c in model.asked)
    assert len(model.asked) == 4 and figs["t2i_accuracy"] == 0.0 and figs["tts_accuracy"] == 1.0
    assert info["guidance"] == given


def test_report_leads_with_the_expert_run_then_strict_teal_then_settings_and_ablations(tmp_path):
    expert = dict(MET, caption_accuracy=0.97, text_logits_bitwise_equal=True, guidance_image=2.0)
    stage1 = dict(MET, caption_accuracy=0.8, t2i_accuracy=0.7, tts_accuracy=0.2, text_logits_bitwise_equal=True)
    val = {"chosen": 2.0, "accuracy": {"1": 0.5, "2": 0.7, "3": 0.6}, "digit_accuracy": {"1": 0.6, "2": 0.8, "3": 0.7},
           "reasoning_accuracy": {"1": 0.4, "2": 0.6, "3": 0.5}, "n": 60}
    evaluation = {
        "runs": {"teal_expert": expert, "teal_stage1": stage1, "ablation_full": dict(MET, caption_accuracy=0.9)},
        "sampling": R.generation_plan(False, {"temperature": 0.7, "top_p": 0.9, "top_k": 0, "seed": 0}),
        "guidance": {"teal_expert": {"image": val, "audio": dict(val, chosen=1.0)}, "teal_stage1": {
            "image": val, "audio": val}, "ablation_full": {m: {"chosen": 2.0, "from": "teal_stage1"}
                                                           for m in ("image", "audio")}},
        "timing": {"teal_expert": {"validation_s": 40.0, "generation_s": 30.0}},
        "grids": {"teal_expert": {"text-to-image, one row per prompted digit": "samples/teal_expert/t2i/t2i_grid.png"}},
        "wav_dirs": {"teal_expert": ["samples/teal_expert/tts"]}, "wall_s": 300.0}
    text = open(R.write_report(str(tmp_path), "default", {}, evaluation)).read()
    order = [text.index(h) for h in ("## Main result: frozen LM + modality-expert attention", "## Strict TEAL",
                                     "## Sampling settings", "## Every TEAL run")]
    assert order == sorted(order)
    lead = text[order[0]:order[1]]
    assert "| frozen text logits bitwise equal to the base LM's | yes | yes | yes |" in lead
    assert "![teal_expert: text-to-image, one row per prompted digit](samples/teal_expert/t2i/t2i_grid.png)" in lead
    assert "spectrogram beside it" in lead and "Where targets are missed" not in lead  # every expert target met
    strict = text[order[1]:order[2]]
    assert "| captioning accuracy (held-out digits) | 0.8 | >= 0.85 | no |" in strict
    assert "| text-to-image judged correct (digit classifier) | 0.7 | >= 0.6 | yes |" in strict
    assert "| TTS judged correct (spoken-word classifier) | 0.2 | | |" in strict  # no strict target: no verdict
    assert "### Where targets are missed (strict TEAL (frozen, stage 1))" in strict
    assert "TTS" not in strict.split("### Where")[1].split("Chance")[0]
    assert "With modality-expert attention weights" in strict
    settings = text[order[2]:order[3]]
    for needle in ("temperature 0.7", "top-p 0.9", "top-k 0", "held-out seed 0", "seed 1", "10 per digit",
                   "4 per held-out sum pair (60 per modality)", "[1.0, 2.0, 3.0]",
                   "| frozen LM + modality-expert attention | images | 2 | 1: 0.5 (0.6 / 0.4); 2: 0.7 (0.8 / 0.6)",
                   "| frozen LM + modality-expert attention | speech | 1 |",
                   "| full fine-tuning | images | 2 | strict TEAL (frozen, stage 1)'s |",
                   "guidance validation 40 s and held-out generation 30 s of the evaluation's 300 s"):
        assert needle in settings, needle
    assert text.index("| frozen LM + modality-expert attention |", order[3]) < text.index("| full fine-tuning |",
                                                                                            order[3])


def test_evaluate_stage_evaluates_the_finished_runs_in_order_and_ablations_borrow_strict_teals_guidance(
        monkeypatch, tmp_path):
    import json
    import os

    import ml_collections
    import numpy as np

    from teal_jax import checkpoint
    from teal_jax.evaluate import digit_classifier as dc

    finished = ("teal_stage1", "ablation_full", "teal_expert", "teal_stage2")  # no ablation_codebook
    for r in finished:
        (tmp_path / r).mkdir()
        (tmp_path / r / "stage_result.json").write_text(json.dumps({"stage": r, "steps": 10}))
    cfg = ml_collections.ConfigDict({"data": {"audio_seconds": 1.0}, "sample": {"temperature": 0.7, "top_p": 0.9,
                                                                                 "top_k": 0, "seed": 0}})
    monkeypatch.setattr(R, "_classifiers", lambda *a: ("digit judge", "speech judge", {}))
    monkeypatch.setattr(dc, "load_digit_arrays", lambda split: (np.zeros((30, 8, 8), np.uint8), np.zeros(30, int)))
    monkeypatch.setattr(checkpoint, "read_config", lambda d: cfg)
    monkeypatch.setattr(R, "_heldout_speech", lambda *a: {"fits": np.ones(3, bool)})
    monkeypatch.setattr(R, "_heldout_text", lambda *a: ["one"])
    monkeypatch.setattr(R, "ablation_baseline_step", lambda workdir: 5)
    calls = []

    def fake_run(run_dir, *, sample_dir, plan, guidance=None, step=None, **kw):
        name = os.path.basename(sample_dir)
        calls.append((name, os.path.basename(run_dir), step, guidance))
        chosen = guidance or {m: {"chosen": {"teal_expert": 3.0, "teal_stage1": 2.0}.get(name, 1.0),
                                  "accuracy": {"1": 0.1, "2": 0.2, "3": 0.3}, "digit_accuracy": {},
                                  "reasoning_accuracy": {}, "n": 15} for m in ("image", "audio")}
        figs = {"caption_accuracy": 0.5, "guidance_image": chosen["image"]["chosen"]}
        return figs, {"ppl": 2.0, "bitwise": True, "base_ppl": 2.0}, {"guidance": chosen, "validation_s": 1.0,
                                                                      "generation_s": 2.0}

    monkeypatch.setattr(R, "evaluate_run", fake_run)
    out = R.evaluate_stage(str(tmp_path), "quick", {})
    assert [c[0] for c in calls] == ["teal_expert", "teal_stage1", R.BASELINE, "teal_stage2", "ablation_full"]
    assert calls[2][1:3] == ("teal_stage1", 5)  # stage 1 again at the ablations' step
    assert calls[0][3] is None and calls[1][3] is None  # the lead runs choose their own scales
    for name, _, _, given in calls[2:]:
        assert given == {m: {"chosen": 2.0, "from": "teal_stage1"} for m in ("image", "audio")}, name
    assert out["runs"]["teal_expert"]["guidance_image"] == 3.0 and out["runs"]["ablation_full"]["guidance_image"] == 2.0
    results = json.loads((tmp_path / "evaluate" / "results.json").read_text())
    assert results["sampling"]["validation_seed"] == 1 and results["timing"]["teal_stage2"]["generation_s"] == 2.0
    report = (tmp_path / "report.md").read_text()
    assert report.index("## Main result: frozen LM + modality-expert attention") < report.index("## Strict TEAL")
