"""Run pytest in parallel shards, one per group of optimizers, where pytest-xdist is missing
(the GPU machines have no network to install it).

    python3 benchmarks/pytest_shards.py --shards 6 [--junitxml out.xml] -- tests/a.py ...

On a GPU the compiled suites spend their time in Triton's compiler: every algorithm's kernel,
for each set of dtypes, variants and GradScaler tensors, is its own compile of about 1 to 3 s
(tests/test_kernels_aot.py compiles the same kernels without a GPU). The CPU suites launch
125 distinct kernels; in one process that is minutes of one core, with the other 15 idle.
The kernels an optimizer compiles are its own (its algorithm's update is part of the key), so
the tests are grouped by the registry class their id names, and each shard takes whole
groups; the shards compile disjoint sets of kernels side by side on one GPU. Tests that name
no class are grouped by file.

Options for pytest go after the files' ``--``, a value joined to its option
(``--timeout=170``). Prints each shard's summary line (a failing shard's whole output),
merges the shards' JUnit XML into ``--junitxml``, and exits with the first failing shard's
pytest status (0 when every shard passed or skipped).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import xml.etree.ElementTree as ET


def collect(pytest_args: list[str]) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "-p", "no:cacheprovider", *pytest_args],
                         capture_output=True, text=True)
    ids = [line for line in out.stdout.splitlines() if "::" in line and " " not in line]
    if not ids:
        sys.exit(f"pytest_shards: nothing collected:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return ids


def groups(ids: list[str]) -> dict[str, list[str]]:
    """The test ids by the registry class they name (longest name first, so that a class whose
    name extends another's goes to its own group), else by file."""
    from fused_lrs.algorithms import OPTIMIZERS
    names = sorted((cls.__name__ for cls in OPTIMIZERS), key=len, reverse=True)
    found: dict[str, list[str]] = {}
    for nodeid in ids:
        key = next((n for n in names if n in nodeid), nodeid.split("::")[0])
        found.setdefault(key, []).append(nodeid)
    return found


def shards(found: dict[str, list[str]], n: int) -> list[list[str]]:
    """Whole groups, the largest first, each to the shard with the fewest tests so far."""
    out: list[list[str]] = [[] for _ in range(n)]
    for ids in sorted(found.values(), key=len, reverse=True):
        min(out, key=len).extend(ids)
    return [s for s in out if s]


def merge(paths: list[str], target: str) -> None:
    root = ET.Element("testsuites")
    for path in paths:
        try:
            tree = ET.parse(path).getroot()
        except (OSError, ET.ParseError):
            continue                                 # a shard killed by its timeout
        root.extend(tree.iter("testsuite"))
        os.remove(path)
    ET.ElementTree(root).write(target, encoding="utf-8", xml_declaration=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--junitxml")
    ap.add_argument("pytest_args", nargs="+",
                    help="after --: the files, and pytest options as --name=value")
    args = ap.parse_args(argv)
    planned = shards(groups(collect(args.pytest_args)), args.shards)
    options = [a for a in args.pytest_args if a.startswith("-")]
    procs = []
    for i, ids in enumerate(planned):
        xml = [f"--junitxml={args.junitxml}.{i}"] if args.junitxml else []
        log = open(f"{args.junitxml or 'pytest'}.{i}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p",
                                        "no:cacheprovider", *options, *xml, *ids],
                                       stdout=log, stderr=subprocess.STDOUT), log, len(ids)))
    status = 0
    for i, (proc, log, count) in enumerate(procs):
        rc = proc.wait()
        log.close()
        with open(log.name) as f:
            text = f.read()
        os.remove(log.name)
        summary = next((line for line in reversed(text.splitlines()) if " in " in line),
                       "no summary")
        print(f"shard {i} ({count} tests, rc {rc}): {summary.strip('= ')}")
        if rc not in (0, 5):                         # 5: everything deselected or skipped
            print(text)
            status = status or rc
    if args.junitxml:
        merge([f"{args.junitxml}.{i}" for i in range(len(procs))], args.junitxml)
    return status


if __name__ == "__main__":
    sys.exit(main())
