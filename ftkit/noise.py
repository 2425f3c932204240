"""Messages from the libraries underneath that alarm learners and ask nothing of them.

Installed by `import ftkit`, before any of those libraries is imported: a filter on a logger
holds from the logger's creation, so a message logged while bitsandbytes itself is being
imported (peft and transformers import it) is dropped too. Only logging is imported here.
"""

from __future__ import annotations

import logging

# logger -> the messages dropped from it (matched as substrings)
BITSANDBYTES_NOISE = {
    # per product: int8 inputs are cast to fp16 (bitsandbytes' own choice, nothing to do)
    "bitsandbytes.autograd._functions": ("inputs will be cast from",),
    # on AVX512-BF16 CPUs, at import: the optional hub kernels (the `kernels` package, which
    # fetches code from the hub; ftkit does not install it) are missing, and bitsandbytes
    # falls back to its built-in kernels
    "bitsandbytes.backends.cpu.ops": ("from kernels-community",),
}


class BitsandbytesNoise(logging.Filter):
    """Drops the records whose message contains one of `texts`."""

    def __init__(self, texts: tuple[str, ...]) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.texts)


def quiet_bitsandbytes() -> None:
    """Filter bitsandbytes' harmless noise (`BITSANDBYTES_NOISE`); safe to call often."""
    for name, texts in BITSANDBYTES_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, BitsandbytesNoise) for f in logger.filters):
            logger.addFilter(BitsandbytesNoise(texts))
