"""docs/lr_find.md's snippet runs as written, and the command output it quotes is what the
command prints for the result the snippet saved."""

import os
import re

from fused_lrs.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_snippet_runs_and_the_cli_line_it_quotes_is_what_it_prints(tmp_path, monkeypatch,
                                                                        capsys, one_thread):
    with open(os.path.join(ROOT, "docs", "lr_find.md")) as f:
        page = f.read()
    snippet = re.findall(r"```python\n(.*?)```", page, re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "docs/lr_find.md", "exec"), {"__name__": "__main__"})
    assert 1e-7 < float(capsys.readouterr().out.split()[0]) < 10
    assert (tmp_path / "lr_find.png").is_file() and (tmp_path / "lr_find.json").is_file()
    quoted = re.search(r"# \.\.\.: (schedule peak lr .*)", page).group(1)
    assert main(["plot", "warmup(cosine(T_max=900), steps=100)", "--steps", "1000",
                 "--base-lr", "3e-3", "--range-test", "lr_find.json"]) == 0
    assert quoted in capsys.readouterr().out

