"""BoTorch's fused hypervolume kernel: built once per CPU under a lock that dies with its holder, never waited on
forever, and its absence shown (and refused in strict mode).

Each case runs a fresh Python, because the kernel is loaded once per process.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROPOSE_TWO_OBJECTIVES = textwrap.dedent("""
    import numpy as np
    from botorch.acquisition.multi_objective import logei
    from policies.base import Objective
    from tests.bayes_helpers import cube, history, policy

    H = history(np.random.default_rng(0).random((8, 2)), lambda x: {"f0": float(x[0]), "f1": float(1 - x[0] * x[1])})
    pol = policy(cube(2), objectives=[Objective("f0"), Objective("f1")], strict=STRICT)
    props = pol.propose(H, 1, [])
    print("FUSED" if logei._C is not None else "PURE", "|".join(pol.degradations()), props[0].reason.get("fallback"))
""")


def _python(code: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)


def test_a_stale_botorch_build_lock_does_not_hang_a_multi_objective_proposal(tmp_path):
    """BoTorch's own build waits forever on a lock file a killed compile left; aec never starts that build."""
    torch_ext = tmp_path / "torch_extensions"
    setup = _python("import torch.utils.cpp_extension as c; print(c._get_build_directory('logei_fused_ext', False))",
                    {"TORCH_EXTENSIONS_DIR": str(torch_ext)}, 120)
    folder = Path(setup.stdout.strip())
    (folder / "lock").write_text("")  # what a compile killed with -9 leaves behind
    done = _python(PROPOSE_TWO_OBJECTIVES.replace("STRICT", "True"), {"TORCH_EXTENSIONS_DIR": str(torch_ext)}, 400)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == "FUSED"
    assert (folder / "lock").exists()  # untouched: aec builds in its own cache


@pytest.mark.slow
def test_a_builder_killed_mid_build_does_not_block_the_next_process(tmp_path):
    """kill -9 during the compile: flock is released with the process, and the next one rebuilds from scratch."""
    env = {"AEC_CACHE_DIR": str(tmp_path / "cache")}
    builder = subprocess.Popen([sys.executable, "-c", "from policies.bayesian import fused_kernel; fused_kernel.prepare()"],
                               cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ext = tmp_path / "cache" / "torch_extensions"
    deadline = time.monotonic() + 120
    while not any(ext.glob("logei_fused_ext-*/build.ninja")) and time.monotonic() < deadline:
        assert builder.poll() is None, builder.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    assert any(ext.glob("logei_fused_ext-*/build.ninja")), "the builder never started compiling"
    os.kill(builder.pid, signal.SIGKILL)
    builder.wait(30)
    assert not any(ext.glob("logei_fused_ext-*/complete"))
    after = _python("from policies.bayesian import fused_kernel; print(fused_kernel.prepare())", env, 400)
    assert after.returncode == 0, after.stderr[-2000:]
    assert after.stdout.strip() == "None"
    assert len(list(ext.glob("logei_fused_ext-*/complete"))) == 1
    again = _python("from policies.bayesian import fused_kernel; import time; t = time.monotonic(); "
                    "print(fused_kernel.prepare(), time.monotonic() - t < 20)", env, 120)
    assert again.stdout.split() == ["None", "True"]  # loaded from the cache, not rebuilt


def test_a_kernel_that_cannot_be_built_is_shown_as_a_degradation_and_refused_in_strict_mode(tmp_path):
    env = {"AEC_CACHE_DIR": str(tmp_path / "cache"), "CXX": str(tmp_path / "no-such-compiler")}
    loose = _python(PROPOSE_TWO_OBJECTIVES.replace("STRICT", "False"), env, 300)
    assert loose.returncode == 0, loose.stderr[-2000:]
    kind, rest = loose.stdout.split(" ", 1)
    assert kind == "PURE" and rest.startswith("fused hypervolume kernel unavailable")
    assert rest.rstrip().endswith("None")  # proposals still come from the model, not from a fallback
    strict = _python(PROPOSE_TWO_OBJECTIVES.replace("STRICT", "True"), env, 300)
    assert strict.returncode != 0 and "fused hypervolume kernel unavailable" in strict.stderr
