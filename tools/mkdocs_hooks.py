"""MkDocs hooks (``hooks:`` in mkdocs.yml): the pages generated at every build.

  * ``api/*.md``: the API reference, one mkdocstrings entry per name in the package's
    ``__all__`` lists (``api_pages.py``);
  * ``changelog.md``: the repository's ``CHANGELOG.md``, so the site shows the one file;
  * ``benchmarks.md``: its ``<!-- results -->`` line becomes the figures of
    ``benchmarks/results/**/*.json`` (``benchmark_page.py``).

Generated pages are never written into docs/, so nothing generated can be committed stale.
"""

from __future__ import annotations

import pathlib
import sys

from mkdocs.structure.files import File

HERE = pathlib.Path(__file__).resolve().parent
MARKER = "<!-- results -->"


def on_config(config):
    # The reference documents this checkout, not whichever fused_lrs the environment has
    # installed: the checkout goes first on sys.path before anything imports fused_lrs (here,
    # not at import time: mkdocs restores sys.path after loading a hook).
    for path in (str(HERE), str(HERE.parent)):
        if path not in sys.path[:2]:
            sys.path.insert(0, path)
    return config


def on_files(files, config):
    import api_pages  # from tools/, put on sys.path by on_config

    for path, text in api_pages.pages().items():
        files.append(File.generated(config, path, content=text))
    changelog = (HERE.parent / "CHANGELOG.md").read_text()
    files.append(File.generated(config, "changelog.md", content=changelog))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "benchmarks.md":
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/benchmarks.md lost its {MARKER} line, where the figures go")
    import benchmark_page
    return markdown.replace(MARKER, benchmark_page.render())
