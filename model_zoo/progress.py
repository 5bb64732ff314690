"""Progress of long model-zoo jobs (training, demo builds): logged, and passed to a caller's callback."""

from __future__ import annotations

import logging
from collections.abc import Callable

#: ``progress(fraction_done, message)``
ProgressFn = Callable[[float, str], None]

logger = logging.getLogger("model_zoo.progress")


def reporter(name: str, progress: ProgressFn | None = None) -> ProgressFn:
    """A progress function that logs ``name [ NN%] message`` and forwards to ``progress`` if given."""

    def report(frac: float, msg: str) -> None:
        logger.info("%s [%3.0f%%] %s", name, 100 * frac, msg)
        if progress is not None:
            progress(frac, msg)

    return report
