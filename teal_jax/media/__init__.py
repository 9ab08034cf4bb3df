"""Media I/O below every other layer: pixels, WAV files and resampling, text corpora (numpy, Pillow, stdlib)."""
