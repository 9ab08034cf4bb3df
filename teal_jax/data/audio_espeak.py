"""Local speech synthesis with espeak-ng through the ``espeakng-loader`` wheel (ctypes; no system package).

The wheel ships ``libespeak-ng.so`` and its data folder (``espeakng_loader.get_library_path()`` /
``get_data_path()``); it has no CLI, so we call the C API: ``espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS)`` (22,050 Hz
int16), ``espeak_SetVoiceByName("<language>+<variant>")``, ``espeak_SetParameter(espeakRATE | espeakPITCH, ...)``
and ``espeak_Synth`` with a callback that collects the samples. The library holds global state: one process-wide
:class:`Espeak` instance, used from one thread at a time.

Determinism: voices with breath noise (of the demo's variants f2, f3 and f5) draw it from espeak-ng's own generator,
which ``espeak_Initialize`` seeds with ``time(NULL)``; so the same utterance differed from one process to the next.
:meth:`Espeak.synth` reseeds it (``espeak_ng_SetRandSeed``) before every utterance, which makes the samples a
function of the arguments and of the utterances synthesised before it in the process (espeak-ng keeps e.g. its pitch
flutter phase across calls, and no API resets that): the same sequence of calls gives the same bytes in every process.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE, _ESPEAK_PITCH, _ESPEAK_RANGE = 1, 3, 4
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_INSTANCE = None
_LOCK = threading.Lock()


class Espeak:
    """Synthesises int16 speech at :attr:`sample_rate` (22,050 Hz)."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as e:
            raise ValueError("speech synthesis needs the 'espeakng-loader' package (pip install espeakng-loader)"
                             ) from e
        self._lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.restype = ctypes.c_int
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                           espeakng_loader.get_data_path().encode(), 0)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (returned {rate})")
        self.sample_rate = int(rate)
        # espeak_Initialize seeded the breath-noise generator with the wall clock; synth reseeds it per utterance.
        self._seed_fn = getattr(self._lib, "espeak_ng_SetRandSeed", None)  # espeak-ng >= 1.52
        if self._seed_fn is not None:
            self._seed_fn.argtypes = [ctypes.c_long]
        else:  # older libraries draw the noise from the C library's rand()
            self._seed_fn = ctypes.CDLL(None).srand
            self._seed_fn.argtypes = [ctypes.c_uint]
        self._chunks: list[np.ndarray] = []

        def collect(wav, n, events):
            del events
            if n > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = _CALLBACK(collect)  # keep a reference: the library calls it later
        self._lib.espeak_SetSynthCallback(self._callback)

    def synth(self, text: str, voice: str = "en", *, rate: int = 175, pitch: int = 50, pitch_range: int = 50,
              seed: int = 0) -> np.ndarray:
        """``text`` -> int16 ``[samples]``. voice: ``'<language>[+<variant>]'``; rate in words/min (80..450);
        pitch and range 0..100; seed: the noise generator's seed, set before this utterance."""
        if not text.strip():
            raise ValueError("synth: empty text")
        with _LOCK:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            for param, value in ((_ESPEAK_RATE, rate), (_ESPEAK_PITCH, pitch), (_ESPEAK_RANGE, pitch_range)):
                self._lib.espeak_SetParameter(param, int(value), 0)
            self._chunks = []
            self._seed_fn(int(seed))
            data = text.encode("utf-8")
            err = self._lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, 0, None, None)
            if err != 0:
                raise RuntimeError(f"espeak_Synth({text!r}, voice={voice!r}) failed with code {err}")
            chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros((0,), np.int16)


def espeak() -> Espeak:
    """The process-wide synthesiser."""
    global _INSTANCE
    if _INSTANCE is None:
        _INSTANCE = Espeak()
    return _INSTANCE
