"""A griffe extension: a class whose docstring is made at import time gets that docstring.

The optimizer classes of the registry get theirs composed when the class is made
(``fused_lrs/optim/docstring.py``: the class's own text, its update in math, the arguments every
fused optimizer shares), as torch's optimizers splice shared argument docs. griffe reads the
source without running it and would see only the class's own text; for a class whose runtime
``__doc__`` is not its source docstring, this takes the runtime one, so the reference shows what
``help()`` shows, with its ``Args:`` parsed as a section.
"""

from __future__ import annotations

import inspect
import re

import griffe

# An "Args:" spliced in right after the summary line is recognised as a Google-style section
# only after a blank line.
_SECTION = re.compile(r"(?<=\S)\n(?=(Args|Arguments|Returns|Raises|Note|Example)s?:\n)")


class RuntimeDocstrings(griffe.Extension):
    def on_class_instance(self, *, node, cls, agent, **kwargs) -> None:
        try:
            doc = griffe.dynamic_import(cls.path).__dict__.get("__doc__")
        except ImportError:
            return
        source = cls.docstring.value if cls.docstring is not None else ""
        if not doc or inspect.cleandoc(doc) == inspect.cleandoc(source):
            return
        cls.docstring = griffe.Docstring(
            _SECTION.sub("\n\n", inspect.cleandoc(doc)), lineno=node.lineno, parent=cls,
            parser=agent.docstring_parser, parser_options=agent.docstring_options)
