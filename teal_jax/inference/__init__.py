"""Inference: the one decode loop, its constraints, and every loaded run behind one protocol.

  sampler.py         SamplingConfig, left padding, cache length, logit filters, the jitted loop ``decode``
  constraints.py     per-step rules: TEAL's modality state machine, classifier-free guidance
  protocol.py        the protocol every loaded run follows (kind, run_config, workdir, sample)
  lm.py              LanguageModel (text LM)
  teal.py            TealModel (caption / transcribe / generate_image / generate_speech / generate_text)
  tokenizer_runs.py  image / audio tokenizer runs as loaded models (no sampler)
  load.py            ``load(workdir)``: what ``teal_jax.load`` calls
"""
