"""Every entry point pins NumPy's and OpenBLAS's kernels, so two x86-64 machines compute the same bytes."""

import json
import subprocess
import sys

import pytest

from recops.entry import REPRODUCIBLE_KERNELS, _has_avx2

PROBE = """
import json, os, sys
{before}
import numpy, threadpoolctl
from numpy._core._multiarray_umath import __cpu_features__ as features
blas = [i.get("architecture") for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
print(json.dumps({{"blas": blas, "x86_v4": bool(features.get("X86_V4")),
                   "env": {{k: os.environ.get(k) for k in {keys!r}}}}}))
"""


def _probe(before: str, **env: str) -> dict:
    import os

    environment = {key: value for key, value in os.environ.items()
                   if key not in REPRODUCIBLE_KERNELS and key != "RECOPS_NATIVE_KERNELS"} | env
    code = PROBE.format(before=before, keys=list(REPRODUCIBLE_KERNELS))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not _has_avx2(), reason="the pin applies to x86-64 CPUs with AVX2 only")
def test_an_entry_point_pins_the_kernels_before_numpy_loads():
    pinned = _probe("import recops.entry")
    assert pinned["env"] == REPRODUCIBLE_KERNELS
    assert set(pinned["blas"]) == {"Haswell"}
    assert pinned["x86_v4"] is False
    native = _probe("import recops.entry", RECOPS_NATIVE_KERNELS="1")
    assert native["env"] == {key: None for key in REPRODUCIBLE_KERNELS}


def test_the_callers_own_setting_wins():
    chosen = _probe("import recops.entry", OPENBLAS_CORETYPE="Prescott")
    assert chosen["env"]["OPENBLAS_CORETYPE"] == "Prescott"
