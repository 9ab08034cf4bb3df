"""TEAL task data (``data.kind='tasks'``, and the synthetic stream of ``data.kind='synthetic'``), one concern a module.

- :mod:`~teal_jax.data.teal.config`: every ``config.data`` field with its default, task names and weights, checks.
- :mod:`~teal_jax.data.teal.sources`: opening the image/audio sources (digits, spoken words, any tfds dataset).
- :mod:`~teal_jax.data.teal.token_dataset`: pre-tokenization into tfds token datasets, their digests and manifests.
- :mod:`~teal_jax.data.teal.task_stream`: :class:`TealTaskStream`, the packed, exactly resumable multi-task stream.
- :mod:`~teal_jax.data.teal.synthetic`: :class:`SyntheticTealTasks`, class-coded toy examples on the same templates
  and packer (tests, smoke runs).
- :mod:`~teal_jax.data.teal.prepare`: the config level: tokenizer runs checked against the vocabulary, preparation,
  the stream of a split.

Every example is laid out by :mod:`teal_jax.data.templates` and packed by
:func:`teal_jax.data.packing.pack_drawn_examples`.
"""
