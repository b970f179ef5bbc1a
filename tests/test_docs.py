"""The documentation: a short README that links only to pages that exist, an API reference that
covers every public name, schedule docstrings that document every argument, and a benchmarks
page rendered from the committed result files.

Nothing here needs mkdocs (the test extra does not install it); the strict build itself runs in
.ci/run, and here too where mkdocs is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import pathlib
import re
import subprocess
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
MAX_README_LINES = 200
# Pages the mkdocs hooks generate at build time (tools/mkdocs_hooks.py); the API pages come from
# api_pages.NAMESPACES.
GENERATED = {"changelog.md"}


def _tool(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


api_pages = _tool("api_pages")
benchmark_page = _tool("benchmark_page")


def _nav() -> list[str]:
    """The pages mkdocs.yml's nav lists ("- Title: path.md" lines)."""
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text[text.index("\nnav:"):]
    nav = nav[:re.search(r"\n\S", nav[1:]).start() + 1]
    return re.findall(r":\s*([\w./-]+\.md)\s*$", nav, flags=re.M)


def _generated() -> set[str]:
    return GENERATED | {path for path, *_ in api_pages.NAMESPACES}


def _links(markdown: str) -> list[str]:
    """Relative link targets of a markdown text, without their #anchor."""
    targets = re.findall(r"\]\(([^)\s]+)\)", markdown)
    return [t.split("#")[0] for t in targets
            if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


# The README: a door, not the house.

def test_readme_is_short():
    lines = README.count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines, the limit is 200"


def test_readme_keeps_the_two_setup_commands():
    # .ci/run greps the test command; the main job is what a new user runs first.
    assert 'python -m pip install -e ".[test]" && python -m pytest' in README
    assert 'python -m pip install -e ".[plot]" && python -m fused_lrs bench --quick' in README


def test_readme_links_to_files_that_exist_and_docs_pages_the_site_builds():
    links = _links(README)
    assert any(t.startswith("docs/") for t in links), "the README links into docs/"
    nav = set(_nav())
    for target in links:
        assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"
        if target.startswith("docs/") and target.endswith(".md"):
            assert target[len("docs/"):] in nav, f"README.md links to {target}, not in the nav"


def test_readme_and_pages_hold_no_dated_measurements():
    # Dated figures belong to benchmarks/results/ (rendered on the benchmarks page) or the
    # changelog.
    date = re.compile(r"\b20\d\d-\d\d-\d\d\b")
    for path in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        found = date.findall(path.read_text())
        assert not found, f"{path.relative_to(ROOT)} holds dates {found}"


# The site's pages.

def test_every_nav_page_exists_and_every_page_is_in_the_nav():
    nav = _nav()
    assert len(nav) == len(set(nav)), "a page is listed twice in the nav"
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    generated = _generated()
    assert not on_disk & generated, "a generated page is also committed in docs/"
    assert set(nav) == on_disk | generated, (
        f"nav without a page: {sorted(set(nav) - on_disk - generated)}; "
        f"pages not in the nav: {sorted(on_disk | generated - set(nav))}")
    assert "lr_find.md" in nav


def test_pages_link_to_pages_that_exist():
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")} | _generated()
    for path in DOCS.rglob("*.md"):
        for target in _links(path.read_text()):
            resolved = (path.parent / target).resolve()
            rel = resolved.relative_to(DOCS.resolve()) if resolved.is_relative_to(DOCS.resolve()) \
                else None
            assert rel is not None and str(rel) in pages, (
                f"{path.relative_to(ROOT)} links to {target}: not a page of the site (link to "
                "repository files as `code`, not as links: the site cannot serve them)")


# The API reference: generated from __all__, so it cannot miss a public name.

def _entries(markdown: str) -> dict[str, str]:
    """{public name: rendered target} of an API page's mkdocstrings blocks."""
    targets = re.findall(r"^::: (\S+)\n    options:\n      heading: \"(\S+)\"", markdown, re.M)
    return {heading: target for target, heading in targets}


def _resolve(path: str):
    """The object at a dotted path, importing the longest module prefix."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def test_api_pages_cover_every_public_name():
    pages = api_pages.pages()
    namespaces = {ns for _, ns, *_ in api_pages.NAMESPACES}
    import fused_lrs

    # Every subpackage fused_lrs exports has a page of its own.
    for name in fused_lrs.__all__:
        if isinstance(getattr(fused_lrs, name), types.ModuleType):
            assert f"fused_lrs.{name}" in namespaces, f"fused_lrs.{name} has no API page"
    for path, namespace, *_ in api_pages.NAMESPACES:
        module = importlib.import_module(namespace)
        entries = _entries(pages[path])
        wanted = {f"{namespace}.{n}" for n in module.__all__
                  if not isinstance(getattr(module, n), types.ModuleType)}
        assert set(entries) == wanted, (
            f"{path}: missing {sorted(wanted - set(entries))}, extra "
            f"{sorted(set(entries) - wanted)}")
        for public, target in entries.items():
            # The rendered path is the object itself (cosine the factory, not the module).
            assert _resolve(target) is getattr(module, public.rsplit(".", 1)[1]), (public, target)
        assert path in _nav(), f"{path} is not in mkdocs.yml's nav"


def test_api_entries_follow_all_when_it_grows(monkeypatch):
    # A name added to __all__ (an optimizer class, lr_find) is in the reference with nothing
    # else to edit.
    import fused_lrs

    def lr_find(optimizer):
        """The learning-rate range test."""

    lr_find.__module__, lr_find.__qualname__ = "fused_lrs.optim.lr_find", "lr_find"
    monkeypatch.setattr(fused_lrs, "lr_find", lr_find, raising=False)
    monkeypatch.setattr(fused_lrs, "__all__", [*fused_lrs.__all__, "lr_find"])
    entries = _entries(api_pages.pages()["api/fused_lrs.md"])
    assert entries["fused_lrs.lr_find"] == "fused_lrs.optim.lr_find.lr_find"


def _documented_args(doc: str) -> list[str]:
    """The names of a Google-style docstring's ``Args:`` entries."""
    doc = inspect.cleandoc(doc)
    match = re.search(r"^Args:\n((?:[ ]{4}.*\n?|\n)+)", doc, re.M)
    if not match:
        return []
    return re.findall(r"^ {4}(\w+):", match.group(1), re.M)


SCHEDULE_FUNCTIONS = ["from_torch", "torch_position", "parse"]


@pytest.mark.parametrize("name", [*__import__("fused_lrs.schedules").schedules.FACTORIES,
                                  *SCHEDULE_FUNCTIONS])
def test_schedule_docstrings_document_every_argument(name):
    import fused_lrs.schedules as S

    fn = getattr(S, name)
    params = list(inspect.signature(fn).parameters)
    documented = _documented_args(fn.__doc__ or "")
    assert documented == params, (
        f"{name}: Args documents {documented}, the signature has {params}")


@pytest.mark.parametrize("name", list(__import__("fused_lrs.schedules").schedules.FACTORIES))
def test_schedule_factory_docstrings_give_the_formula(name):
    import fused_lrs.schedules as S

    doc = inspect.cleandoc(getattr(S, name).__doc__)
    assert "```text\n" in doc and re.search(r"(lr|momentum)\(t\) = ", doc), (
        f"{name}: no formula block (```text ... lr(t) = ...```) in its docstring")


def test_documented_args_reads_google_sections():
    def f(a, b):
        """Summary.

        Args:
            a: one,
                continued.
            b: two.

        Raises:
            ValueError: never.
        """
    assert _documented_args(f.__doc__) == ["a", "b"]
    assert _documented_args("No sections.") == []


# The benchmarks page: every committed result file, with its provenance.

@pytest.mark.parametrize("path", benchmark_page.files(), ids=lambda p: p.name)
def test_each_committed_result_file_has_its_renderer(path):
    data = json.loads(path.read_text())
    kinds = [title for title, is_kind, _ in benchmark_page.KINDS if is_kind(data)]
    assert len(kinds) == 1, f"{path.name}: recognised by {kinds}"
    section = benchmark_page.render_file(path)
    env = data["environment"]
    assert section.startswith(f"### {kinds[0]}\n")
    provenance = section.splitlines()[2]
    for key in ("torch", "python", "date"):
        assert str(env[key]) in provenance, (key, provenance)
    assert "CPU" in provenance or env.get("device", "?") in provenance
    assert f"`{path.relative_to(ROOT)}`" in section


def test_benchmark_page_shows_the_files_figures():
    page = benchmark_page.render()
    cpu = json.loads((ROOT / "benchmarks/results/bench_cpu.json").read_text())["results"]
    for case, row in cpu.items():
        assert re.search(rf"\| {re.escape(case)} \|.*\| {row['ratio']:.3f} \|", page), case
    host = json.loads((ROOT / "benchmarks/results/bench_host_cpu.json").read_text())["results"]
    assert f"| {host['same']['fused_lrs_us']:.1f} |" in page
    fsdp = json.loads((ROOT / "benchmarks/results/fsdp_cpu.json").read_text())["ranks"]
    assert f"| {fsdp[0]['speedup_vs_best_torch']:.1f}x |" in page
    assert "None of these files was measured on a GPU" in page


def test_benchmark_page_shows_every_optimizer_against_its_peer():
    page = benchmark_page.render()
    path = ROOT / "benchmarks/results/bench_cpu_algorithms.json"
    rows = json.loads(path.read_text())["results"]
    for case, row in rows.items():
        assert re.search(rf"\| {re.escape(case)} \| `{re.escape(row['peer'])}` \|.*"
                         rf"\| {row['ratio']:.3f} \|", page), case


def test_a_new_or_broken_result_file_still_appears(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    (results / "suite").mkdir(parents=True)
    (results / "new.json").write_text(json.dumps({
        "environment": {"device": "NVIDIA H100 80GB HBM3", "torch": "2.13.0",
                        "triton": "3.6.0", "python": "3.12.1", "date": "2027-01-02"},
        "figures": {"a": {"ms": 1.25}, "b": [3, 4]}}))
    (results / "suite" / "broken.json").write_text("{not json")
    page = benchmark_page.render(results, tmp_path)
    assert "1 of these 2 files were measured on a GPU" in page
    assert "*Measured on NVIDIA H100 80GB HBM3; torch 2.13.0, triton 3.6.0, Python 3.12.1; " \
           "2027-01-02.*" in page
    assert "| `figures.a.ms` | 1.25 |" in page and "| `figures.b[1]` | 4 |" in page
    assert "`benchmarks/results/suite/broken.json`" in page and "could not be read" in page


def test_the_suite_renderer_reads_what_fused_lrs_bench_writes(tmp_path, monkeypatch, one_thread):
    from fused_lrs.bench import providers
    from fused_lrs.cli import main

    monkeypatch.setattr(providers, "for_device", lambda d, q=False: [providers.EAGER[0],
                                                                     providers.EAGER[2]])
    assert main(["bench", "--quick", "--device", "cpu", "--scenarios", "S1", "--steps", "1",
                 "--out", str(tmp_path)]) == 0
    section = benchmark_page.render_file(tmp_path / "bench.json", tmp_path)
    assert section.startswith("### fused-lrs bench")
    assert "| fused_lrs |" in section and "x vs torch_fused" in section
    assert "Measured on CPU: " in section


# The build itself, where mkdocs is installed (.ci/run always builds).

def test_mkdocs_build_is_strict_clean(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    pytest.importorskip("material")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ,
                                            "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "schedules" / "index.html").read_text()
    assert "fused_lrs.schedules.cosine" in api and "T_max" in api
