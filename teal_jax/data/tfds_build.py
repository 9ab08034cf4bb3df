"""tfds, quietly: the one place the project's builders are prepared, and tfds' known-harmless notices dropped.

A build through tfds prints a banner ("Downloading and preparing dataset Unknown size ..."), progress bars per split
and shuffle, a "Subsequent calls will reuse this data" line, and absl warnings that say nothing to a user of this
project ("Using custom data configuration", "Variant folder ... has no dataset_info.json" for a dataset about to be
written); reading images logs "OpenCV is not installed" once (PIL decodes them, which is what we want). The callers
print one line of their own per dataset (what was built, where, how long), so :func:`prepare` builds with all of that
silenced (the absl notices through :func:`teal_jax.quiet.drop_harmless_notices`, which drops nothing else).
Errors are never silenced: they raise.
"""

from __future__ import annotations

import contextlib
import io

import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from teal_jax.quiet import drop_harmless_notices


@contextlib.contextmanager
def _no_progress_bars():
    was = tqdm_utils._active  # noqa: SLF001 - tfds keeps the switch module-level; restored below
    tqdm_utils.display_progress_bar(False)
    try:
        yield
    finally:
        tqdm_utils.display_progress_bar(was)


def prepare(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
    """``builder.download_and_prepare`` (local generation only: no GCS lookup) without tfds' banner, progress bars
    and harmless notices; returns the builder. Already-prepared datasets return at once."""
    drop_harmless_notices()
    with _no_progress_bars(), contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return builder
