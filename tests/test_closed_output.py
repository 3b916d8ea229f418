"""`sdxlc run … | head -1`: a reader that goes away does not stop the training halfway."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

from sdxlc.cli import streams

ROOT = Path(__file__).resolve().parent.parent


def test_a_run_whose_output_pipe_closes_still_trains_and_saves(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "recipes" / "data" / "quickstart", tmp_path / "data")
    recipe = tmp_path / "r.sdx"
    recipe.write_text('sdx 1\nmodel tiny\nprofile cpu\ndata "data" caption .txt\nresolution 64\n'
                      "lora rank 4 on unet\nlr 1e-3 adamw\nbatch 2\nsteps 6\nlog every 1 no tensorboard\n"
                      'seed 5\noutput "out"\n', encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sdxlc.cli", "run", str(recipe)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does after its line
    assert proc.wait(timeout=600) == 0, first
    assert (tmp_path / "out" / "r.safetensors").is_file()


class _Closed(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_the_proxy_drops_writes_once_the_pipe_is_gone() -> None:
    proxy = streams._Tolerant(_Closed())
    assert proxy.write("step 1\n") == 7
    proxy.flush()
    assert proxy.gone and proxy.write("step 2\n") == 7
    assert proxy.getvalue() == ""  # other attributes are the stream's own
