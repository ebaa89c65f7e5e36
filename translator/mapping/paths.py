"""JSONPath expressions, compiled once when a mapping is compiled.

The common forms (``$.a.b``, ``$['train/loss']``, ``$.gpus[0]``, ``$.gpus[*]``) become a
tuple of keys walked with plain dict and list look-ups. A key may hold ``{name}``
placeholders (``$['bbox/AP-{class}']``, ``$.losses.{split}``): a key pattern, matched
against every key of that object, the matched text kept for the caller (an attribute).
Anything else goes to jsonpath-ng, after checking that the expression only selects:
arithmetic and the string and length operators of jsonpath-ng's extended grammar are
refused, so a mapping cannot compute. This module never touches a file; evaluating a path
never raises, but for one thing: jsonpath-ng costs several microseconds per element it
visits (filters and ``..`` visit every one), so it is given at most
``MAX_JSONPATH_ELEMENTS`` elements, and a larger document or record raises
:class:`PathTooCostly` for the caller to turn into a counted drop.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
"""Returned by :meth:`Path.first` when nothing is selected (``None`` is a JSON value)."""

_WILDCARD: Final = object()

#: ``{name}`` in a key: the syntax of named parts in file globs (``/runs/{run_id}/...``).
PLACEHOLDER: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")
_PLACEHOLDER_TEXT = r"\{[A-Za-z_][A-Za-z0-9_.]*\}"

_SEGMENT = re.compile(
    rf"""\.(?P<name>(?:[A-Za-z_]|{_PLACEHOLDER_TEXT})(?:[A-Za-z0-9_\-]|{_PLACEHOLDER_TEXT})*)
      | \.\*(?P<dotstar>)
      | \[\s*(?:'(?P<sq>(?:[^'\\]|\\.)*)'|"(?P<dq>(?:[^"\\]|\\.)*)")\s*\]
      | \[\s*(?P<index>-?\d+)\s*\]
      | \[\s*\*\s*\](?P<star>)
    """,
    re.VERBOSE,
)


class PathSyntaxError(ValueError):
    """The expression is not a JSONPath this bridge accepts; the message says why."""


#: The most elements (objects, arrays and scalars, nested ones included) a jsonpath-ng
#: expression is evaluated on: about 0.3 s for a filter or ``..`` on this machine, where
#: 1,000,000 took 33 s and held up SIGTERM. Plain key paths are not bounded (they visit
#: only what they select).
MAX_JSONPATH_ELEMENTS = 50_000


class PathTooCostly(ValueError):
    """The data holds more than MAX_JSONPATH_ELEMENTS elements for a jsonpath-ng path."""


def _larger_than(data: Any, limit: int) -> bool:
    """Whether ``data`` holds more than ``limit`` elements; stops counting at the limit."""
    stack = [data]
    seen = 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > limit:
            return True
        kind = type(node)
        if kind is dict:
            stack.extend(node.values())
        elif kind is list:
            stack.extend(node)
    return False


Captured = tuple[tuple[str, str], ...]
"""What the placeholders of a key pattern matched: ``(("class", "roof"),)``."""


@dataclass(frozen=True, slots=True)
class _KeyPattern:
    """A key with ``{name}`` placeholders; ``match`` gives what they matched, or None.

    A placeholder matches one character or more; one followed by another placeholder's
    text ends at the first place that text occurs (``{a}-{b}`` on ``x-y-z``: ``a=x``,
    ``b=y-z``). Each is matched once, never retried shorter or longer (an atomic group),
    so a key costs time linear in its length: with lazy groups that retry, three
    placeholders took 18 s on a key of 2,000 dashes, and the keys come from the file.
    """

    text: str
    names: tuple[str, ...]
    regex: re.Pattern[str]

    @classmethod
    def of(cls, key: str) -> _KeyPattern:
        names = tuple(PLACEHOLDER.findall(key))
        pieces = PLACEHOLDER.split(key)  # literal, name, literal, name, ..., literal
        regex = [re.escape(pieces[0])]
        for i in range(1, len(pieces), 2):
            after = pieces[i + 1]
            if i + 2 >= len(pieces):  # the last placeholder: up to the key's end text
                regex.append(f"(.+?){re.escape(after)}")
            elif not after:
                raise PathSyntaxError(
                    f"the key {key!r}: the placeholders {{{pieces[i]}}} and {{{pieces[i + 2]}}} "
                    "touch, so where one ends is anybody's guess; put text between them "
                    "(e.g. {a}-{b})"
                )
            else:
                text = re.escape(after)
                regex.append(f"(?>((?:(?!{text}).)+)){text}")
        return cls(key, names, re.compile("".join(regex), re.DOTALL))

    def match(self, key: str) -> Captured | None:
        found = self.regex.fullmatch(key)
        if found is None:
            return None
        return tuple(zip(self.names, found.groups(), strict=True))


@dataclass(frozen=True, slots=True)
class Path:
    """A compiled JSONPath. ``first`` and ``all`` never raise on any JSON input.

    ``first(data)`` is the single value selected, or :data:`MISSING`; for plain key paths
    it is a closure made once by :func:`compile_path` (the hot loop's cheapest look-up).
    ``names`` are the placeholders of its key patterns: such a path is ``singular`` when it
    selects at most one value per match (no wildcard), and is read with :meth:`matches`.
    """

    text: str
    singular: bool
    first: Callable[[Any], Any] = field(repr=False, compare=False)
    _keys: tuple[Any, ...] | None = field(default=None, repr=False)
    _expr: Any = field(default=None, repr=False, compare=False)
    names: tuple[str, ...] = ()
    uses_filter: bool = False
    """It holds a filter (``[?(...)]``): it selects any number of values."""

    def all(self, data: Any) -> list[Any]:
        """Every value selected, in document order (possibly none)."""
        if self.names:
            return [value for value, _ in self.matches(data)]
        if self._keys is not None:
            return _walk(data, self._keys, 0)
        if self._expr is None:  # made by counting(): its one value
            return [self.first(data)]
        return _find(self._expr, data)

    def matches(self, data: Any) -> list[tuple[Any, Captured]]:
        """Every value selected with what the key patterns matched on the way to it."""
        if not self.names:
            return [(value, ()) for value in self.all(data)]
        out: list[tuple[Any, Captured]] = []
        _walk_matches(data, self._keys or (), 0, (), out)
        return out


def _getter(keys: tuple[Any, ...]) -> Callable[[Any], Any]:
    """A look-up for a singular path of plain keys and indexes.

    JSON holds only dicts, lists, strings, numbers, booleans and null: indexing any of
    them with a string key either finds the value or raises KeyError or TypeError, so a
    path of string keys needs no type checks. Integer indexes do (a string is indexable).
    """
    if not all(type(k) is str for k in keys) or len(keys) > 3:
        return lambda data: _first_checked(data, keys)
    if not keys:
        return lambda data: data
    if len(keys) == 1:
        (a,) = keys

        def get1(data: Any) -> Any:
            try:
                return data[a]
            except (KeyError, TypeError):
                return MISSING

        return get1
    if len(keys) == 2:
        a, b = keys

        def get2(data: Any) -> Any:
            try:
                return data[a][b]
            except (KeyError, TypeError):
                return MISSING

        return get2
    a, b, c = keys

    def get3(data: Any) -> Any:
        try:
            return data[a][b][c]
        except (KeyError, TypeError):
            return MISSING

    return get3


def _first_checked(cur: Any, keys: tuple[Any, ...]) -> Any:
    for key in keys:
        if type(key) is str:
            if type(cur) is not dict:
                return MISSING
            cur = cur.get(key, MISSING)
            if cur is MISSING:
                return MISSING
        elif type(cur) is list:
            try:
                cur = cur[key]
            except IndexError:
                return MISSING
        else:
            return MISSING
    return cur


def _walk(cur: Any, keys: tuple[Any, ...], start: int) -> list[Any]:
    for i in range(start, len(keys)):
        key = keys[i]
        if key is _WILDCARD:
            if type(cur) is list:
                children = cur
            elif type(cur) is dict:
                children = list(cur.values())
            else:
                return []
            out: list[Any] = []
            for child in children:
                out.extend(_walk(child, keys, i + 1))
            return out
        if type(key) is str:
            if type(cur) is not dict or key not in cur:
                return []
            cur = cur[key]
        else:
            if type(cur) is not list or not -len(cur) <= key < len(cur):
                return []
            cur = cur[key]
    return [cur]


def _walk_matches(
    cur: Any, keys: tuple[Any, ...], start: int, captured: Captured, out: list[tuple[Any, Captured]]
) -> None:
    for i in range(start, len(keys)):
        key = keys[i]
        if type(key) is _KeyPattern:
            if type(cur) is not dict:
                return
            for name, child in cur.items():
                found = key.match(name) if type(name) is str else None
                if found is not None:
                    _walk_matches(child, keys, i + 1, captured + found, out)
            return
        if key is _WILDCARD:
            children = cur if type(cur) is list else list(cur.values()) if type(cur) is dict else []
            for child in children:
                _walk_matches(child, keys, i + 1, captured, out)
            return
        found_child = _first_checked(cur, (key,))
        if found_child is MISSING:
            return
        cur = found_child
    out.append((cur, captured))


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _split_simple(text: str) -> tuple[Any, ...] | None:
    """Keys of a simple path, or None when the path needs the full grammar."""
    pos = 1
    keys: list[Any] = []
    while pos < len(text):
        m = _SEGMENT.match(text, pos)
        if m is None:
            return None
        if m.group("name") is not None:
            keys.append(_key(m.group("name")))
        elif m.group("sq") is not None:
            keys.append(_key(_unescape(m.group("sq"))))
        elif m.group("dq") is not None:
            keys.append(_key(_unescape(m.group("dq"))))
        elif m.group("index") is not None:
            keys.append(int(m.group("index")))
        else:
            keys.append(_WILDCARD)
        pos = m.end()
    return tuple(keys)


def _key(text: str) -> str | _KeyPattern:
    return _KeyPattern.of(text) if PLACEHOLDER.search(text) else text


def _selecting_nodes() -> tuple[type, ...]:
    """jsonpath-ng node types that only select; everything else (arithmetic, `len`, `sub`,
    `split`, `sorted`, `str()`...) is refused at compile time."""
    from jsonpath_ng import jsonpath as jp
    from jsonpath_ng.ext import filter as jp_filter

    nodes = (
        jp.Root, jp.This, jp.Fields, jp.Index, jp.Slice, jp.Child, jp.Descendants, jp.Where,
        jp_filter.Filter, jp_filter.Expression,
    )  # fmt: skip
    wildcard = getattr(jp, "Wildcard", None)  # jsonpath-ng 1.16 parses `*` into its own node
    return (*nodes, wildcard) if wildcard is not None else nodes


def _check_selecting(node: Any, text: str, allowed: tuple[type, ...]) -> None:
    from jsonpath_ng.jsonpath import JSONPath

    # Exact types: jsonpath-ng's computing nodes subclass selecting ones (Sub is a This).
    if type(node) not in allowed:
        raise PathSyntaxError(
            f"{text!r} uses {type(node).__name__}, which computes rather than selects; "
            "only selection (fields, indexes, slices, wildcards, filters) is allowed"
        )
    if getattr(node, "op", None) == "=~":
        raise PathSyntaxError(
            f"{text!r} uses a regular expression (=~); a pattern run on every record can "
            "take exponential time, so filters may only compare (==, !=, <, <=, >, >=)"
        )
    for attr in ("left", "right", "expressions", "expression", "target"):
        child = getattr(node, attr, None)
        if child is None or isinstance(child, str | int | float):
            continue
        for item in child if isinstance(child, list | tuple) else (child,):
            if isinstance(item, JSONPath):
                _check_selecting(item, text, allowed)


def compile_path(text: str) -> Path:
    """Compile ``text``; raise :class:`PathSyntaxError` with a readable reason."""
    if not isinstance(text, str) or not text.startswith("$"):
        raise PathSyntaxError(f"{text!r} is not a JSONPath; it must start with '$' (e.g. $.loss)")
    keys = _split_simple(text)
    if keys is not None:
        names = tuple(n for k in keys if type(k) is _KeyPattern for n in k.names)
        if names:
            return _pattern_path(text, keys, names)
        if _WILDCARD in keys:
            return Path(text, False, lambda data: _first_of(_walk(data, keys, 0)), _keys=keys)
        return Path(text, True, _getter(keys), _keys=keys)
    if PLACEHOLDER.search(text):
        raise PathSyntaxError(
            f"{text!r}: a key pattern ({{name}}) works in a path of plain keys, indexes and "
            "[*] only (not with filters, slices or '..')"
        )
    # Only paths beyond plain keys need jsonpath-ng (and its parser tables: ~3 MB resident).
    from jsonpath_ng.ext.parser import parse

    try:
        expr = parse(text)
    except Exception as exc:  # its lexer and parser raise several unrelated types
        reason = _syntax_reason(text, str(exc).split("\n")[0] or type(exc).__name__)
        raise PathSyntaxError(f"{text!r} is not a valid JSONPath: {reason}") from None
    _check_selecting(expr, text, _selecting_nodes())
    return Path(
        text, False, lambda data: _first_of(_find(expr, data)), _expr=expr,
        uses_filter=_has_filter(expr),
    )  # fmt: skip


_FILTER_HINT = "a filter reads [?(@.key >= 0)], comparing with ==, !=, <, <=, > or >="
_CLOSING = {"[": "]", "(": ")"}


def _syntax_reason(text: str, parser_says: str) -> str:
    """Where the expression goes wrong and what was expected there (columns from 1).

    jsonpath-ng says only "Parse error near the end of string!" for an unclosed bracket,
    so brackets and quotes are checked here first.
    """
    hint = f"; {_FILTER_HINT}" if "[?" in text else ""
    opened: list[tuple[str, int]] = []
    quote, quote_at, escaped = "", 0, False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote, quote_at = ch, i
        elif ch in _CLOSING:
            opened.append((ch, i))
        elif ch in "])":
            if not opened:
                return f"{ch!r} at column {i + 1} closes nothing{hint}"
            if _CLOSING[opened[-1][0]] != ch:
                bracket, at = opened[-1]
                return (
                    f"the {bracket!r} at column {at + 1} is not closed before the {ch!r} at "
                    f"column {i + 1}; expected {_CLOSING[bracket]!r}{hint}"
                )
            opened.pop()
    if quote:
        return f"the quote at column {quote_at + 1} is never closed"
    if opened:
        ch, at = opened[-1]
        return f"the {ch!r} at column {at + 1} is never closed; expected {_CLOSING[ch]!r}{hint}"
    found = re.search(r"at \d+:(\d+) near token (.*) \(", parser_says)
    if found is not None:
        return f"unexpected {found.group(2)!r} at column {int(found.group(1)) + 1}{hint}"
    if "end of string" in parser_says:
        return (
            f"it ends too early (after {text[-1]!r} at column {len(text)}); expected a key, "
            "an index or a filter"
        )
    return parser_says


def _pattern_path(text: str, keys: tuple[Any, ...], names: tuple[str, ...]) -> Path:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise PathSyntaxError(
            f"{text!r} uses the placeholder {{{repeated[0]}}} twice; each names one attribute"
        )

    def first(data: Any) -> Any:
        found: list[tuple[Any, Captured]] = []
        _walk_matches(data, keys, 0, (), found)
        return found[0][0] if found else MISSING

    return Path(text, _WILDCARD not in keys, first, _keys=keys, names=names)


def counting(path: Path) -> Path:
    """``count: PATH``: a path whose one value is how many values ``path`` selects."""
    return Path(path.text, True, lambda data: len(path.all(data)), _keys=None, _expr=None)


def _has_filter(node: Any) -> bool:
    from jsonpath_ng.ext import filter as jp_filter

    if type(node) is jp_filter.Filter:
        return True
    return any(
        _has_filter(getattr(node, attr))
        for attr in ("left", "right", "target")
        if getattr(node, attr, None) is not None and not isinstance(getattr(node, attr), str)
    )


def _find(expr: Any, data: Any) -> list[Any]:
    if _larger_than(data, MAX_JSONPATH_ELEMENTS):
        raise PathTooCostly(
            f"the data it is evaluated on holds over {MAX_JSONPATH_ELEMENTS} elements, "
            "too many for a JSONPath with filters or '..'; select a smaller part first "
            "(source.records, a plain path)"
        )
    try:
        return [m.value for m in expr.find(data)]
    except Exception:  # jsonpath-ng raises assorted errors on odd inputs
        return []


def _first_of(found: list[Any]) -> Any:
    return found[0] if found else MISSING
