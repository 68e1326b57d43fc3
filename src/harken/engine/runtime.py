"""Process-wide settings for CTranslate2's CPU runtime, made before it is first loaded.

CTranslate2's CPU wheels run each operation on an OpenMP team (GNU libgomp). Between two
parallel regions a team's helper threads spin for a while before they sleep, so the next small
operation starts at once. libgomp shortens that spin to 100 iterations, next to nothing,
whenever the threads it manages outnumber the CPUs: with two workers (CTranslate2 replicas)
of every core each, that is always. The helpers then sleep after every region, and a beam
search (thousands of small operations a window) waits on a wake-up each time: on 2 cores a
window's beam search took 0.67 s with two workers against 0.38 s with one, and a lone request
1.6x as long. `OMP_WAIT_POLICY=ACTIVE` raises that short spin to 1000 iterations (a few
microseconds, still far below a time slice) and, with `GOMP_SPINCOUNT` kept at libgomp's usual
300000, changes nothing else: two workers then cost a lone request nothing (0.38 s a window).
libgomp reads both once, when it is loaded, so this must run before `ctranslate2` is imported;
a caller who set either variable keeps their own.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

_OPENMP = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "300000"}


def prepare_ctranslate2() -> None:
    """Set the OpenMP spin (see the module's docstring) if CTranslate2 is not loaded yet and
    the caller has set neither variable."""
    if any(name in os.environ for name in _OPENMP):
        return
    if "ctranslate2" in sys.modules:
        log.debug("ctranslate2 was loaded before harken could set its OpenMP spin")
        return
    os.environ.update(_OPENMP)
