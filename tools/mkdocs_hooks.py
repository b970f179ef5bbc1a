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
sys.path.insert(0, str(HERE))           # the hook is loaded by path, not as a package

import api_pages  # noqa: E402
import benchmark_page  # noqa: E402

MARKER = "<!-- results -->"


def on_files(files, config):
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
    return markdown.replace(MARKER, benchmark_page.render())
