"""A griffe extension: a class whose docstring is assembled at import time gets that docstring.

The optimizer classes splice shared argument docs into ``__doc__`` (``__doc__ = summary +
_ARGS_DOC``), as torch's optimizers do. griffe reads the source without running it and would
find no docstring; for a class whose body assigns ``__doc__``, this imports the class and takes
its runtime ``__doc__``, so the reference shows what ``help()`` shows, with its ``Args:``
parsed as a section.
"""

from __future__ import annotations

import ast
import inspect
import re

import griffe

# A spliced-in "Args:" may follow the summary line directly; Google-style sections are
# recognised only after a blank line.
_SECTION = re.compile(r"(?<=\S)\n(?=(Args|Arguments|Returns|Raises|Note|Example)s?:\n)")


def _assigns_doc(node) -> bool:
    return isinstance(node, ast.ClassDef) and any(
        isinstance(stmt, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "__doc__" for t in stmt.targets)
        for stmt in node.body)


class RuntimeDocstrings(griffe.Extension):
    def on_class_instance(self, *, node, cls, agent, **kwargs) -> None:
        if cls.docstring is not None or not _assigns_doc(node):
            return
        doc = griffe.dynamic_import(cls.path).__dict__.get("__doc__")
        if doc:
            cls.docstring = griffe.Docstring(
                _SECTION.sub("\n\n", inspect.cleandoc(doc)), lineno=node.lineno, parent=cls,
                parser=agent.docstring_parser, parser_options=agent.docstring_options)
