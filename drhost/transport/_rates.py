"""Transfer rate and time left: shared by the SFTP upload and the console, which must not need paramiko."""

from __future__ import annotations

import math


def rate_and_eta(done: int, total: int, elapsed: float) -> tuple[float, float]:
    """MB/s (10^6 bytes) and seconds left, from ``done`` of ``total`` bytes moved in ``elapsed`` seconds.

    Pass only the bytes moved in ``elapsed`` (after a resume subtract ``resumed_from`` from both ``done``
    and ``total``). The ETA is ``inf`` while nothing has moved yet, 0 once done reaches total.
    """
    if done >= total:
        return (done / elapsed / 1e6 if elapsed > 0 else 0.0), 0.0
    if done <= 0 or elapsed <= 0:
        return 0.0, math.inf
    rate = done / elapsed
    return rate / 1e6, (total - done) / rate
