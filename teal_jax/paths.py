"""Run directories on any filesystem ``etils.epath`` supports: local and mounted (NFS) folders, ``gs://`` buckets and
the other schemes it registers (``s3://``, ``az://``), which is what Orbax writes checkpoints through. Any other
scheme is a ValueError naming the path.

Paths stay strings at every API (messages, configs and Orbax take them as they are); the file operations below go
through ``epath.Path``. A local path is made absolute (``os.path.abspath``, as before); a path with a scheme
(``gs://b/run``) is kept as written, never turned into a local folder named ``gs:``.

What must be a local (or mounted) folder: the data caches (SentencePiece training, tfds/ArrayRecord files read by
grain). A run whose workdir has a scheme keeps them per host under :func:`local_cache_dir` unless
``config.data.data_dir`` names a shared mount.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import zlib
from collections.abc import Iterator

from etils import epath

CACHE_ENV = "TEAL_LOCAL_CACHE"  # where per-host caches of a run with a non-local workdir go (default ~/.cache/teal_jax)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CHUNK = 1 << 22


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a scheme (``gs://``, ``s3://``...): not an ``os.path`` path."""
    return bool(_SCHEME.match(os.fspath(path)))


def resolve(path: str | os.PathLike) -> str:
    """A run directory as a string: absolute when local, as written (without a trailing ``/``) when remote."""
    p = os.fspath(path)
    if is_remote(p):
        return p.rstrip("/") if not p.endswith("://") else p
    return os.path.abspath(p)


def join(base: str | os.PathLike, *parts: str) -> str:
    base = os.fspath(base)
    if is_remote(base):
        return "/".join([base.rstrip("/"), *(str(p).strip("/") for p in parts)])
    return os.path.join(base, *parts)


def dirname(path: str | os.PathLike) -> str:
    p = os.fspath(path)
    return p.rstrip("/").rsplit("/", 1)[0] if is_remote(p) else os.path.dirname(p)


def Path(path: str | os.PathLike) -> epath.Path:  # noqa: N802 (a constructor, like epath.Path)
    p = os.fspath(path)
    try:
        return epath.Path(p)
    except KeyError:  # etils' registry of URI prefixes
        raise ValueError(f"{p}: etils.epath has no filesystem for {p.split('://')[0]}:// (it opens gs://, s3://, "
                         "az://, hf:// and local or mounted paths)") from None


def _fresh(path) -> epath.Path:
    """``epath.Path(path)``; for an fsspec-backed remote path, its listing cache is dropped first: Orbax writes
    through tensorstore, not fsspec, so a cached listing would miss what it wrote (a step, a file)."""
    if is_remote(path):
        from etils.epath import backend

        fs = getattr(backend, "fsspec_backend", None)
        if fs is not None and os.fspath(path).startswith(("gs://", "s3://", "az://")):
            with contextlib.suppress(ImportError):
                fs.fs(path).invalidate_cache()
    return Path(path)


def exists(path) -> bool:
    return _fresh(path).exists()


def isdir(path) -> bool:
    return _fresh(path).is_dir()


def isfile(path) -> bool:
    p = _fresh(path)
    return p.exists() and not p.is_dir()


def listdir(path) -> list[str]:
    return [p.name for p in _fresh(path).iterdir()]


def makedirs(path) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)


def read_text(path) -> str:
    return Path(path).read_text()


def read_bytes(path) -> bytes:
    return Path(path).read_bytes()


def write_text(path, text: str) -> None:
    """Writes ``text`` so that a reader never sees half of it: a local file through a temporary file, fsync and
    rename; an object store writes an object whole (there is no rename to rely on)."""
    if is_remote(path):
        Path(path).write_text(text)
        return
    tmp = os.path.join(os.path.dirname(os.fspath(path)), f".{os.path.basename(os.fspath(path))}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def walk_files(root) -> list[str]:
    """Every file under ``root``, as ``/``-separated paths relative to it, sorted (no ``**`` glob: object stores
    refuse it)."""
    out = []
    root_p = _fresh(root)

    def visit(p: epath.Path, rel: str) -> None:
        for child in p.iterdir():
            name = f"{rel}/{child.name}" if rel else child.name
            if child.is_dir():
                visit(child, name)
            else:
                out.append(name)

    visit(root_p, "")
    return sorted(out)


def size_and_crc32(path) -> tuple[int, int]:
    """``(bytes, CRC-32)`` of a file, read once in chunks."""
    crc, size = 0, 0
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc


def fingerprint(path) -> dict:
    """What a checkpoint manifest records of a file: ``{'size', 'crc32c'}`` from the object's metadata where the store
    keeps a CRC32C per object (GCS: nothing is downloaded), else ``{'size', 'crc32'}`` of the file read once."""
    if os.fspath(path).startswith("gs://"):
        from etils.epath import backend

        with contextlib.suppress(ImportError):
            info = backend.fsspec_backend.fs(os.fspath(path)).info(os.fspath(path))
            if info.get("crc32c"):
                return {"size": int(info["size"]), "crc32c": str(info["crc32c"])}
    size, crc = size_and_crc32(path)
    return {"size": size, "crc32": crc}


def copy_tree(src, dst) -> None:
    """Copies every file under folder ``src`` to the same relative path under ``dst`` (either may be remote),
    overwriting; ``src`` is left as it is."""
    for rel in walk_files(src):
        target = Path(join(dst, rel))
        target.parent.mkdir(parents=True, exist_ok=True)
        Path(join(src, rel)).copy(target, overwrite=True)


def move_tree(src, dst) -> None:
    """Moves a folder (a rename when local; copy then delete on an object store, which has no folders)."""
    if not is_remote(src) and not is_remote(dst):
        os.makedirs(os.path.dirname(os.fspath(dst)), exist_ok=True)
        shutil.move(os.fspath(src), os.fspath(dst))
        return
    copy_tree(src, dst)
    Path(src).rmtree()


def local_cache_dir(workdir: str, *parts: str) -> str:
    """A local folder for what a run keeps per host: ``<workdir>/<parts>`` for a local workdir, else
    ``$TEAL_LOCAL_CACHE`` (default ``~/.cache/teal_jax``) ``/<scheme>/<bucket and path>/<parts>``."""
    workdir = resolve(workdir)
    if not is_remote(workdir):
        return os.path.join(workdir, *parts)
    scheme, rest = workdir.split("://", 1)
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "teal_jax")
    return os.path.join(os.path.abspath(root), scheme, *[p for p in rest.split("/") if p not in ("", ".", "..")],
                        *parts)


def data_dir(workdir: str) -> str:
    """The default data cache of a run (``config.data.data_dir`` unset): ``<workdir>/data``, or for a non-local
    workdir a per-host local folder (:func:`local_cache_dir`)."""
    return local_cache_dir(workdir, "data")


def require_local(path: str, field: str) -> str:
    """``path`` made absolute; a path with a scheme is a ValueError naming ``field`` (for files read by libraries
    that only open local files: SentencePiece, tfds/ArrayRecord through grain)."""
    if is_remote(path):
        raise ValueError(f"{field}={path!r}: this must be a local or mounted folder (SentencePiece and the "
                         "tfds/ArrayRecord files read by grain open local files only); leave it unset and a run "
                         f"with a non-local workdir caches its data per host under ${CACHE_ENV}")
    return os.path.abspath(path)


@contextlib.contextmanager
def host_lock(workdir: str) -> Iterator[None]:
    """An exclusive lock between the processes of one host on the local cache of a non-local workdir (they share
    it; the first to take the lock prepares the data, the others find it ready). A no-op for a local workdir."""
    if not is_remote(workdir):
        yield
        return
    import fcntl

    d = local_cache_dir(workdir)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def with_host_lock(workdir: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` under :func:`host_lock` ``(workdir)``."""
    with host_lock(workdir):
        return fn(*args, **kwargs)


def save_npz(path, arrays: dict) -> None:
    """``np.savez`` to any filesystem."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    Path(path).write_bytes(buf.getvalue())
