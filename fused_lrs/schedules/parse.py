"""parse: a spec from the text of its factory call, such as ``repr(spec)`` or a CLI argument.

The text is parsed with ``ast`` and walked, never evaluated: the only calls allowed are to the
factories of ``FACTORIES``, and every other value must be a literal (number, string, True, False,
None, or a list or tuple of literals). Lists become tuples, as the specs store them, so
``parse(repr(spec)) == spec``.
"""

from __future__ import annotations

import ast

from fused_lrs.schedules import FACTORIES  # defined before the package imports this module
from fused_lrs.schedules.base import Schedule

MAX_CHARS = 10_000
_LITERALS = (int, float, str, bool, type(None))

_WHAT = {ast.Attribute: "attribute access", ast.Lambda: "a lambda", ast.Subscript: "a subscript",
         ast.Starred: "a starred argument", ast.ListComp: "a comprehension",
         ast.SetComp: "a comprehension", ast.DictComp: "a comprehension",
         ast.GeneratorExp: "a comprehension", ast.BinOp: "arithmetic", ast.Dict: "a dict",
         ast.Set: "a set", ast.JoinedStr: "an f-string", ast.NamedExpr: "an assignment"}


def parse(expr: str) -> Schedule:
    """The spec that ``expr`` describes, e.g. ``"warmup(cosine(T_max=900), steps=100)"``.

    The text is parsed and walked, never evaluated: only calls to the factories of
    ``FACTORIES`` and literals are allowed, so ``parse(repr(spec)) == spec``.

    Args:
        expr: a factory call, as Python source (at most 10,000 characters).

    Raises:
        ValueError: with a one-line message, for anything that is not such a call.
    """
    if not isinstance(expr, str):
        raise TypeError(f"parse: expected a string, got {type(expr).__name__}")
    if len(expr) > MAX_CHARS:
        raise ValueError(f"expression too long: {len(expr)} characters, the limit is {MAX_CHARS}")
    src = expr.strip()
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not a valid expression: {e.msg}") from None
    except (ValueError, RecursionError, MemoryError) as e:  # e.g. null bytes, absurd nesting
        raise ValueError(f"not a valid expression: {type(e).__name__}") from None
    if not isinstance(tree.body, ast.Call):
        raise ValueError(f"expected a schedule factory call such as cosine(T_max=1000), "
                         f"got {_quote(src, tree.body)}")
    return _value(tree.body, src, FACTORIES)


def _quote(src: str, node: ast.AST) -> str:
    text = ast.get_source_segment(src, node) or type(node).__name__
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _value(node: ast.AST, src: str, factories: dict):
    if isinstance(node, ast.Constant) and type(node.value) in _LITERALS:
        return node.value
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd))
            and isinstance(node.operand, ast.Constant)
            and type(node.operand.value) in (int, float)):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return tuple(_value(e, src, factories) for e in node.elts)
    if isinstance(node, ast.Call):
        return _call(node, src, factories)
    if isinstance(node, ast.Name):
        raise ValueError(f"unknown name {node.id!r}: only calls to the schedule factories and "
                         "literals are allowed")
    what = _WHAT.get(type(node), f"{type(node).__name__} syntax")
    raise ValueError(f"{what} is not allowed in a schedule expression: {_quote(src, node)}")


def _call(node: ast.Call, src: str, factories: dict) -> Schedule:
    if not isinstance(node.func, ast.Name):
        raise ValueError(f"only calls to the schedule factories are allowed, got a call to "
                         f"{_quote(src, node.func)}")
    factory = factories.get(node.func.id)
    if factory is None:
        raise ValueError(f"unknown factory {node.func.id!r}; the factories are "
                         + ", ".join(factories))
    for kw in node.keywords:
        if kw.arg is None:
            raise ValueError(f"**kwargs is not allowed in a schedule expression: {_quote(src, kw)}")
    args = [_value(a, src, factories) for a in node.args]
    kwargs = {kw.arg: _value(kw.value, src, factories) for kw in node.keywords}
    try:
        return factory(*args, **kwargs)
    except (TypeError, ArithmeticError) as e:  # a wrong argument, said as the factory says it
        raise ValueError(str(e)) from None
