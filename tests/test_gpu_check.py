"""The prepared GPU check runs end to end (on the CPU, at toy sizes), so it works the day a GPU appears."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import file_state, wait_while_progressing

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_every_part(tmp_path):
    out = tmp_path / "gpu"
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), str(out), "--dry-run"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_while_progressing(proc, file_state(out / "gpu.json")) == 0
    report = json.loads((out / "gpu.json").read_text())
    assert report["meta"]["dry_run"] is True and report["meta"]["torch"]
    assert {name: r["status"] for name, r in report["results"].items()} == dict.fromkeys(
        ["stacked", "scoring", "sweep", "probe", "profile"], "ok")
    assert report["results"]["probe"]["result"]["ok"]
    md = (out / "gpu.md").read_text()
    assert "### GPU check:" in md and "| resnet20 | stacked (fused), N = 2 |" in md and "| resnet20 | stacked (vmap), N = 2 |" in md
