"""The API reference pages, written from the package's own ``__all__`` lists.

One page per public namespace: ``fused_lrs`` (the optimizers, ``from_torch`` and whatever else
``fused_lrs.__all__`` exports) and ``fused_lrs.schedules`` (``fused_lrs.schedules.__all__``).
Each public name becomes one mkdocstrings entry, ``::: <defining module>.<qualname>``, headed
with its public name, so a name added to ``__all__`` is in the reference at the next build with
nothing else to edit. The entry names the defining module because the public path can be
ambiguous: ``fused_lrs.schedules.cosine`` is both the factory and the module it lives in, and
mkdocstrings would render the module.

No mkdocs import here: ``tests/test_docs.py`` checks these pages without mkdocs installed.
"""

from __future__ import annotations

import importlib
import inspect
import types

#: (page, namespace, title, what the page is about) in the order of the site's navigation.
NAMESPACES = (
    ("api/fused_lrs.md", "fused_lrs", "fused_lrs",
     "The optimizers and the functions at the top of the package."),
    ("api/schedules.md", "fused_lrs.schedules", "fused_lrs.schedules",
     "The schedule factories (each returns an immutable spec), the spec classes, and the "
     "conversion from torch's schedulers."),
)

# Section of a page, by what the object is; a name fits the first that matches.
SECTIONS = (
    ("Schedule factories", lambda ns, name, obj: name in getattr(ns, "FACTORIES", ())),
    ("Classes", lambda ns, name, obj: inspect.isclass(obj)),
    ("Functions", lambda ns, name, obj: callable(obj)),
    ("Data", lambda ns, name, obj: True),
)


def public_names(namespace: str) -> list[str]:
    """``namespace.__all__``, less the subpackages (each has a page of its own)."""
    ns = importlib.import_module(namespace)
    return [n for n in ns.__all__ if not isinstance(getattr(ns, n), types.ModuleType)]


def target(namespace: str, name: str) -> str:
    """The path mkdocstrings renders for ``namespace.name``: where the object is defined, or,
    for data without a ``__qualname__`` (a dict), the public path itself."""
    obj = getattr(importlib.import_module(namespace), name)
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if module and qualname and callable(obj):
        return f"{module}.{qualname}"
    return f"{namespace}.{name}"


def entry(namespace: str, name: str) -> str:
    """One mkdocstrings block: the object, headed and listed in the page's contents by its
    public name."""
    return (f"::: {target(namespace, name)}\n"
            f"    options:\n"
            f"      heading: \"{namespace}.{name}\"\n"
            f"      toc_label: \"{name}\"\n")


def page(namespace: str, title: str, about: str) -> str:
    ns = importlib.import_module(namespace)
    names = public_names(namespace)
    lines = [f"# {title}", "", about, "",
             f"Generated from `{namespace}.__all__` at every build.", ""]
    placed: set[str] = set()
    for heading, fits in SECTIONS:
        chosen = [n for n in names if n not in placed and fits(ns, n, getattr(ns, n))]
        if not chosen:
            continue
        placed.update(chosen)
        lines += [f"## {heading}", ""]
        for name in chosen:
            lines += [entry(namespace, name)]
    return "\n".join(lines)


def pages() -> dict[str, str]:
    """``{path inside docs/: markdown}`` for every API page."""
    return {path: page(namespace, title, about) for path, namespace, title, about in NAMESPACES}


if __name__ == "__main__":  # print the pages, to read what the build will render
    for path, text in pages().items():
        print(f"=== {path}\n{text}")
