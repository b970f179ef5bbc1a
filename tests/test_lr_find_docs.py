"""docs/lr_find.md's snippet runs as written, and says what it prints."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_snippet_runs_and_the_cli_line_it_quotes_is_what_it_prints(tmp_path):
    with open(os.path.join(ROOT, "docs", "lr_find.md")) as f:
        page = f.read()
    snippet = re.findall(r"```python\n(.*?)```", page, re.S)[0]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert 1e-7 < float(run.stdout.split()[0]) < 10
    assert (tmp_path / "lr_find.png").is_file() and (tmp_path / "lr_find.json").is_file()
    quoted = re.search(r"# \.\.\.: (schedule peak lr .*)", page).group(1)
    cli = subprocess.run([sys.executable, "-m", "fused_lrs", "plot",
                          "warmup(cosine(T_max=900), steps=100)", "--steps", "1000",
                          "--base-lr", "3e-3", "--range-test", "lr_find.json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert quoted in cli.stdout
