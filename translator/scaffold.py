"""``ml-metrics-bridge init SAMPLE``: a first mapping, proposed from a sample file.

A platform engineer's first task with a new job format is its mapping. This module reads a
sample of what the job writes (one JSON document, JSON Lines, a history array inside a
document, or CSV), looks at every leaf, and writes a commented mapping:

- every numeric leaf is a gauge named ``PREFIX.dotted.lowercase.path``; keys with ``/``,
  ``.`` or ``:`` (or anything but letters, digits and ``_``) are bracketed in the path;
- step-like running totals (``step``, ``global_step``, ``iteration``, ``epoch``, ``batch``)
  are counters with ``mode: total``;
- units are guessed from the words of the name (``_ms``, ``_s``/``_seconds``, ``_bytes``,
  ``_percent``, ``samples_per_second`` -> ``{sample}/s``; fractions such as accuracy or
  utilization with values in 0..1 are ``1``);
- a list of numbers is a gauge of its newest (last) value;
- a list of objects is a history (``source.records``, with a ``record_key`` when a step-like
  field is unique) when its elements look like log records, else ``for_each`` with the
  element key that tells them apart as an attribute;
- text that looks like an identifier (job, model, run ids, names) is an attribute; a
  timestamp is the document's ``version_path``, a start time its ``start_time_path``;
- what is left out (text, booleans, nested lists, numbers beside a history array, empty
  objects, objects nested deeper than 32 levels, keys with ``{name}`` in them, which a path
  would read as a key pattern, JSON Lines' lines that are not JSON) is listed in a comment,
  and every guess has a comment saying what it was guessed from.

It proposes text and never writes a file; the mapping is compiled before it is printed, so
what it prints validates. Data flows one way here too: sample -> survey -> YAML text.
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from translator.errors import BridgeError, MappingError
from translator.mapping import compile_mapping

__all__ = ["DEFAULT_PREFIX", "PREFIX_PATTERN", "ScaffoldError", "scaffold"]

DEFAULT_PREFIX: Final = "ml.training"
Format = Literal["document", "jsonl", "csv"]
Key = str | int  # a dict key, or -1 for "the newest element of a list of numbers"

PREFIX_PATTERN: Final = re.compile(r"[A-Za-z][A-Za-z0-9_./-]{0,200}")
"""What ``--prefix`` may be: the start of an instrument name."""
_PLAIN_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TIMESTAMP: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?"
)
#: Names of running totals (the last part of a key, lowercased, leading "_" dropped).
_STEP_UNITS: Final = {
    "step": "step", "steps": "step", "global_step": "step", "iteration": "iteration",
    "iter": "iteration", "epoch": "epoch", "batch": "batch", "batch_number": "batch",
}  # fmt: skip
#: Words in a name that make a value in 0..1 a fraction (unit "1"): a word of the name that
#: is one of these or ends with one (valAccuracy, top1acc), never one merely containing it
#: (duration holds "ratio", grad_accum_steps "acc").
_FRACTION_WORDS: Final = (
    "accuracy", "acc", "utilization", "util", "ratio", "fraction", "precision", "recall", "f1",
)  # fmt: skip
#: A rate: what is counted, then per second (samples_per_second -> {sample}/s).
_PER_SECOND: Final = re.compile(r"(?:.*_)?([a-z][a-z0-9]*?)s?_per_(?:s|sec|second)")
#: Attribute keys too generic alone: named with their parent (model.name, not name).
_GENERIC_KEYS: Final = {"name", "id", "uuid"}
#: Keys of text that names what a series is about (the last part, lowercased).
_IDENTIFIER_KEYS: Final = {
    "job", "job_name", "model", "model_name", "run", "run_name", "dataset", "dataset_name",
    "experiment", "experiment_name", "project", "hostname", "host", "node", "node_name",
    "name", "task", "task_name", "device", "uuid",
}  # fmt: skip
#: Keys that tell the elements of a list of objects apart, in order of preference.
_ELEMENT_KEYS: Final = ("id", "index", "idx", "rank", "uuid", "device", "name", "key", "class")
#: Keys of a list of objects that make it a history of log records.
_HISTORY_WORDS: Final = ("history", "log", "records", "entries")
_MAX_ATTRIBUTE_CHARS: Final = 128
#: Objects nested deeper than this are left out (listed): no trainer nests metrics that
#: deep, and the survey recurses once per level.
_MAX_DEPTH: Final = 32
#: The schema's longest instrument name, less room for a "_NN" that makes a name unique.
_MAX_NAME_CHARS: Final = 251
#: `{name}` in a key: a mapping's path reads that key as a key pattern (matching every key
#: that fits), and nothing escapes it, so such a key cannot be selected by itself.
_PLACEHOLDER: Final = re.compile(r"\{[A-Za-z_][A-Za-z0-9_.]*\}")


class ScaffoldError(BridgeError):
    """The sample cannot be read, or is not something a mapping can read."""


# --- reading the sample ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Sample:
    format: Format
    records: list[dict[str, Any]]
    """What each evaluation of a mapping sees: the document, each line, each row, or each
    element of the history array."""
    root: Any
    """The document (documents only), for version and start time."""
    history: tuple[str, ...] | None = None
    """Keys of the history array inside the document (``()``: the document is the list)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """What of the file itself is left out (JSON Lines' lines that are not JSON)."""
    elements: list[dict[str, Any]] | None = None
    """The document is a list of objects told apart by a key: one for_each over ``$[*]``."""


def _read_sample(path: str) -> _Sample:
    from translator.sources import csv_records, parse_json

    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ScaffoldError(f"{path}: cannot be read: {exc.strerror}") from None
    if not data.strip():
        raise ScaffoldError(f"{path}: is empty; init needs a sample with values in it")
    try:
        document = parse_json(data)
    except ValueError as exc:
        json_error = str(exc)
    else:
        return _document_sample(path, document)
    records: list[Any] = []
    bad: list[int] = []
    first_line_parses = None
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = parse_json(line)
        except ValueError:
            bad.append(number)
        else:
            if not isinstance(record, dict):
                raise ScaffoldError(
                    f"{path}:{number}: {_json_kind(record)} where JSON Lines of metrics "
                    "have an object ({...}) on every line"
                )
            records.append(record)
        if first_line_parses is None:
            first_line_parses = not bad
    if first_line_parses:
        # JSON Lines. A line that is not JSON (the last one, half-written, in a copy of a
        # live log) is skipped, as the sidecar skips it, and listed.
        skipped = {f"line {n}": "not JSON (the sidecar skips such a line)" for n in bad}
        return _Sample("jsonl", records, None, skipped=skipped)
    if data.lstrip()[:1] in (b"{", b"["):
        raise ScaffoldError(f"{path}: not valid JSON ({json_error})")
    try:
        rows, _ = csv_records(data)
    except ValueError as exc:
        raise ScaffoldError(f"{path}: not JSON, JSON Lines or CSV ({exc})") from None
    if not rows or not data.splitlines()[0].count(b","):
        raise ScaffoldError(f"{path}: not JSON, JSON Lines or CSV with a header line")
    return _Sample("csv", rows, None)


def _document_sample(path: str, document: Any) -> _Sample:
    if isinstance(document, list):
        if not document or not all(isinstance(r, dict) for r in document):
            raise ScaffoldError(f"{path}: a JSON list, but not of objects (records)")
        elements = _Survey()
        elements.add_list((), document)
        if _looks_like_history("", document) or _element_key(elements.groups[()]) is None:
            return _Sample("document", document, document, history=())
        # One object per GPU, rank, class...: a key tells them apart, so they are not the
        # records of a log (of which only the newest would be exported) but a for_each.
        return _Sample("document", [{}], document, elements=document)
    if not isinstance(document, dict):
        raise ScaffoldError(f"{path}: a single JSON {type(document).__name__}, not an object")
    found = _history_in(document)
    if found is None:
        return _Sample("document", [document], document)
    keys, records = found
    return _Sample("document", records, document, history=keys)


def _history_in(document: dict[str, Any]) -> tuple[tuple[str, ...], list[dict[str, Any]]] | None:
    """The shallowest list of log records in the document (the first of those at one depth),
    with its keys: `{"state": {"trainer": {"log_history": [...]}}}` too, whose records
    read as elements of a for_each would all be one series."""
    level: list[tuple[tuple[str, ...], Any]] = [((k,), v) for k, v in document.items()]
    while level and len(level[0][0]) <= _MAX_DEPTH:
        for keys, value in level:
            if _is_object_list(value) and _looks_like_history(keys[-1], value):
                return keys, value
        level = [
            ((*keys, k), v)
            for keys, value in level
            if isinstance(value, dict)
            for k, v in value.items()
        ]
    return None


def _is_object_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(e, dict) for e in value)


def _looks_like_history(key: str, elements: list[dict[str, Any]]) -> bool:
    if any(word in key.lower() for word in _HISTORY_WORDS):
        return True
    # Records of a training log carry the step they were logged at.
    stepped = sum(any(_step_unit(k) for k in e) for e in elements)
    return stepped == len(elements)


# --- surveying every leaf -------------------------------------------------------------------


@dataclass(slots=True)
class _Leaf:
    keys: tuple[Key, ...]
    values: list[Any] = field(default_factory=list)
    """Every non-null value seen, in order."""
    used: bool = False
    """Taken as a version, start time or attribute: not a metric, not "left out"."""


@dataclass(slots=True)
class _Survey:
    """What the records (or the elements of one list of objects) hold, leaf by leaf."""

    count: int = 0
    """Records (or lists of objects) surveyed."""
    elements: int = 0
    """Elements of those lists, for a list of objects."""
    elements_per_record: list[list[dict[str, Any]]] = field(default_factory=list)
    leaves: dict[tuple[Key, ...], _Leaf] = field(default_factory=dict)
    groups: dict[tuple[str, ...], _Survey] = field(default_factory=dict)
    """Lists of objects: each becomes a for_each."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Path text -> why it is left out."""

    def add(self, record: dict[str, Any], keys: tuple[str, ...] = ()) -> None:
        if not keys:
            self.count += 1
        for key, value in record.items():
            here = (*keys, key)
            if _PLACEHOLDER.search(key):
                self.skipped.setdefault(
                    _path_text(here), "{...} in the key: a path reads it as a key pattern"
                )
            elif isinstance(value, dict) and len(here) >= _MAX_DEPTH:
                self.skipped.setdefault(
                    _path_text(here), f"an object nested deeper than {_MAX_DEPTH} levels"
                )
            elif isinstance(value, dict) and not value:
                self.skipped.setdefault(_path_text(here), "an empty object in the sample")
            elif isinstance(value, dict):
                self.add(value, here)
            elif _is_object_list(value):
                self.add_list(here, value)
            elif isinstance(value, list):
                numbers = [v for v in value if _is_number(v)]
                if value and len(numbers) == len(value):
                    self._leaf((*here, -1)).values.append(value[-1])
                elif value:
                    self.skipped.setdefault(_path_text(here), _list_kind(value))
                else:
                    self._leaf((*here, -1))  # empty now: its newest value once it has one
            else:
                leaf = self._leaf(here)
                if value is not None:
                    leaf.values.append(value)

    def add_list(self, keys: tuple[str, ...], elements: list[dict[str, Any]]) -> None:
        group = self.groups.setdefault(keys, _Survey())
        group.count += 1
        group.elements_per_record.append(elements)
        for element in elements:
            group.add_element(element)

    def add_element(self, element: dict[str, Any]) -> None:
        self.elements += 1
        for key, value in element.items():
            if _PLACEHOLDER.search(key):
                self.skipped.setdefault(
                    _path_text((key,)), "{...} in the key: a path reads it as a key pattern"
                )
                continue
            if isinstance(value, dict | list):
                kind = "an object" if isinstance(value, dict) else "a list"
                self.skipped.setdefault(_path_text((key,)), f"{kind} inside each element")
                continue
            leaf = self._leaf((key,))
            if value is not None:
                leaf.values.append(value)

    def _leaf(self, keys: tuple[Key, ...]) -> _Leaf:
        leaf = self.leaves.get(keys)
        if leaf is None:
            leaf = self.leaves[keys] = _Leaf(keys)
        return leaf


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if _is_number(value):
        return "a number"
    if isinstance(value, list):
        return "a list"
    return "a text" if isinstance(value, str) else "null"


def _list_kind(values: list[Any]) -> str:
    """What a list no gauge can read holds: "a list of lists", "a list of mixed values"."""
    kinds = {
        "numbers" if _is_number(v) else "text" if isinstance(v, str) else
        "lists" if isinstance(v, list) else "objects" if isinstance(v, dict) else
        "true/false" if isinstance(v, bool) else "nulls"
        for v in values
    }  # fmt: skip
    if len(kinds) == 1:
        return f"a list of {kinds.pop()}"
    return f"a list of mixed values ({', '.join(sorted(kinds))})"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- names, paths, guesses ------------------------------------------------------------------


def _path_text(keys: Iterable[Key]) -> str:
    """A JSONPath for `keys`: plain keys dotted, any other key bracketed and quoted."""
    out = "$"
    for key in keys:
        if isinstance(key, int):
            out += f"[{key}]"
        elif _PLAIN_KEY.fullmatch(key):
            out += f".{key}"
        else:
            # JSONPath's quoted key: a backslash escapes the next character.
            quote = '"' if "'" in key and '"' not in key else "'"
            escaped = key.replace("\\", "\\\\").replace(quote, "\\" + quote)
            out += f"[{quote}{escaped}{quote}]"
    return out


def _last_part(key: Key) -> str:
    """`train/loss` -> `loss`; `_step` -> `step`; lowercased."""
    text = str(key).lower()
    text = re.split(r"[/.:]", text)[-1]
    return text.lstrip("_")


def _name_parts(keys: Iterable[Key]) -> list[str]:
    parts: list[str] = []
    for key in keys:
        if isinstance(key, int):
            continue  # [-1] is the list's newest value: same name as the list
        # Names are ASCII: an accented letter keeps its base letter (ü -> u).
        ascii_key = unicodedata.normalize("NFKD", key).encode("ascii", "ignore").decode()
        for piece in re.split(r"[/.:]", ascii_key.lower()):
            piece = re.sub(r"[^a-z0-9_]+", "_", piece).strip("_")
            if piece:
                parts.append(piece)
    return parts


def _step_unit(key: Key) -> str | None:
    return _STEP_UNITS.get(_last_part(key))


def _unit_guess(key: Key, values: Sequence[float]) -> tuple[str, str] | None:
    """(unit, why) guessed from the name and the sample's values."""
    part = _last_part(key)
    rate = _PER_SECOND.fullmatch(part)
    if rate is not None:
        return f"{{{rate.group(1)}}}/s", "a rate: per second in the name"
    if part == "ms" or part.endswith("_ms"):
        return "ms", "the name ends in _ms"
    for suffix in ("_s", "_sec", "_secs", "_seconds"):
        if part.endswith(suffix) or part == suffix[1:]:
            return "s", f"the name ends in {suffix}"
    if part.endswith("_bytes") or part == "bytes":
        return "By", "the name ends in _bytes"
    if re.search(r"(^|_)(percent|pct)$", part):
        return "%", "the name ends in _percent"
    # utilization.gpu: the word is not in the last part
    words = re.split(r"[^a-z0-9]+", str(key).lower())
    word = next((w for w in _FRACTION_WORDS if any(t.endswith(w) for t in words)), None)
    if word is not None and values and all(0 <= v <= 1 for v in values):
        return "1", f"a fraction: '{word}' in the name, values within 0..1"
    if word is not None and values and all(0 <= v <= 100 for v in values):
        return "%", f"'{word}' in the name, values within 0..100: a percentage"
    return None


def _is_identifier(key: Key, values: Sequence[Any]) -> bool:
    part = _last_part(key)
    id_named = part.endswith("_id") or part == "id"
    named = part in _IDENTIFIER_KEYS or id_named
    return named and all(
        (isinstance(v, str) and 0 < len(v) <= _MAX_ATTRIBUTE_CHARS and not _TIMESTAMP.fullmatch(v))
        # A number named an id (job_id: 123) names the job; as a gauge it would mean nothing.
        or (id_named and isinstance(v, int) and not isinstance(v, bool))
        for v in values
    )


def _attribute_name(keys: tuple[Key, ...], prefix: str = "") -> str:
    part = _last_part(keys[-1])
    if part in _GENERIC_KEYS and not prefix and len(keys) > 1:
        part = f"{_last_part(keys[-2])}_{part}"  # $.model.name -> model.name
    dotted = {"hostname": "host.name"}.get(part) or re.sub(r"_+", ".", part).strip(".")
    return f"{prefix}.{dotted}" if prefix else dotted


def _singular(word: str) -> str:
    """gpus -> gpu; per_class stays per_class."""
    return word[:-1] if word.endswith("s") and not word.endswith("ss") and len(word) > 3 else word


def _yaml(value: str) -> str:
    """A YAML scalar: plain where that is safe and clear, else double-quoted (JSON's rules)."""
    if re.fullmatch(r"[A-Za-z$][A-Za-z0-9_.$\[\]-]*", value) and "'" not in value:
        return value
    return json.dumps(value, ensure_ascii=False)


# --- the mapping ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Writer:
    prefix: str
    sample_path: str
    sample_name: str
    lines: list[str] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def unique_name(self, parts: list[str]) -> str:
        base = ".".join([self.prefix, *parts]) if parts else self.prefix
        base = base[:_MAX_NAME_CHARS]
        name, n = base, 2
        while name in self.names:
            name, n = f"{base}_{n}", n + 1
        self.names.add(name)
        return name


def scaffold(sample_path: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The commented mapping for the sample at `sample_path`; raises ScaffoldError."""
    if not PREFIX_PATTERN.fullmatch(prefix):
        raise ScaffoldError(
            f"--prefix {prefix!r}: an instrument name prefix is a letter, then letters, "
            "digits, '_', '.', '-' or '/' (e.g. ml.training)"
        )
    sample = _read_sample(sample_path)
    survey = _Survey()
    for record in sample.records:
        survey.add(record)
    if sample.elements is not None:
        survey.add_list((), sample.elements)
    writer = _Writer(prefix, sample_path, os.path.basename(sample_path))
    text = _render(sample, survey, writer)
    try:
        compile_mapping(text, f"<init {writer.sample_name}>", environ={})
    except MappingError as exc:  # our bug, not the user's: say so, with the text
        raise ScaffoldError(
            f"the mapping proposed for {sample_path} does not validate (a bug: please report "
            f"it with the sample):\n{exc}\n--- proposed mapping ---\n{text}"
        ) from None
    return text


def _render(sample: _Sample, survey: _Survey, w: _Writer) -> str:
    kind = {
        "document": "a JSON document" if sample.history is None else "a history array",
        "jsonl": "JSON Lines",
        "csv": "CSV",
    }[sample.format]
    records_word = "document" if sample.format == "document" and sample.history is None else (
        "record" if sample.format != "csv" else "row"
    )
    out = w.lines
    out += [
        f"# A first mapping for {w.sample_name} ({kind}, {survey.count} {records_word}(s) in the",
        "# sample), proposed by `ml-metrics-bridge init`. Lines marked 'guess:' are guesses:",
        "# confirm or change them, then check with",
        "#   ml-metrics-bridge validate THIS.yaml",
        f"#   ml-metrics-bridge preview --mapping THIS.yaml {w.sample_name}",
        "version: 1",
        "",
        "source:",
        "  # path: defaults to $METRICS_FILE_PATH; set it to the file the job writes",
        f"  format: {sample.format}",
    ]
    attributes: list[str] = []
    if sample.format == "document" and sample.history is None:
        _document_times(sample.root, survey, out)
    if sample.history is not None:
        records_path = _path_text(sample.history) + "[*]" if sample.history else "$[*]"
        out.append(f"  records: {_yaml(records_path)}   # guess: a history, one record per element")
        _record_key(survey, sample.records, out)
        _beside_history(sample, w)
    _common_attributes(survey, attributes, w)
    if attributes:
        out += ["", "attributes:", *attributes]
    out += ["", "metrics:"]
    before = len(out)
    _metrics(survey, (), w, out, attribute_lines=[])
    for keys, group in survey.groups.items():
        _group_metrics(keys, group, w, out)
    for where, why in [*sample.skipped.items(), *survey.skipped.items()]:
        w.skipped.append((where, why))
    if not any(line.startswith("  - name: ") for line in out[before:]):
        left_out = "; ".join(f"{where}: {why}" for where, why in w.skipped[:3])
        left_out += "; ..." if len(w.skipped) > 3 else ""
        raise ScaffoldError(
            f"{w.sample_path}: no numeric value in the sample: nothing to map"
            + (f" (left out: {left_out})" if left_out else "")
        )
    if w.skipped:
        out += ["", "# Left out (map them by hand if they matter):"]
        out += [f"#   {where}: {why}" for where, why in w.skipped]
    return "\n".join(out) + "\n"


def _document_times(root: dict[str, Any], survey: _Survey, out: list[str]) -> None:
    """A timestamp identifies the document's version; a start time starts the counters."""
    version = start = None
    for keys, leaf in survey.leaves.items():
        if not leaf.values or not all(
            isinstance(v, str) and _TIMESTAMP.fullmatch(v) for v in leaf.values
        ):
            continue
        part = _last_part(keys[-1])
        if "start" in part and start is None:
            start = keys
        elif version is None and "start" not in part:
            version = keys
    if version is not None:
        out.append(
            f"  version_path: {_yaml(_path_text(version))}   # guess: a new timestamp is a "
            "new version"
        )
        survey.leaves[version].used = True
    if start is not None:
        out.append(
            f"  start_time_path: {_yaml(_path_text(start))}   # guess: when the job started"
        )
        survey.leaves[start].used = True


def _record_key(survey: _Survey, records: list[dict[str, Any]], out: list[str]) -> None:
    """A step-like field unique across the records identifies a record updated in place."""
    candidates = [
        keys[0]
        for keys, leaf in survey.leaves.items()
        if len(keys) == 1 and _step_unit(keys[0]) and len(leaf.values) == len(records)
    ]
    for key in sorted(candidates, key=lambda k: _step_unit(k) != "step"):
        values = [repr(leaf) for leaf in survey.leaves[(key,)].values]
        if len(set(values)) == len(values):
            out.append(
                f"  record_key: [{_yaml(_path_text((str(key),)))}]   # guess: {key} is unique "
                "per record"
            )
            return
    if candidates:
        shown = ", ".join(str(k) for k in candidates)
        out.append(
            f"  # no record_key: {shown} repeat(s) across records; a record is identified by "
            "its content"
        )


def _beside_history(sample: _Sample, w: _Writer) -> None:
    """Numbers beside the history array: a mapping reads either the records or the document."""
    if not sample.history or not isinstance(sample.root, dict):
        return
    beside = _Survey()
    rest = {k: v for k, v in sample.root.items() if k != sample.history[0]}
    beside.add(rest)
    numbers = [k for k, leaf in beside.leaves.items() if any(map(_is_number, leaf.values))]
    if numbers:
        shown = ", ".join(_path_text(k) for k in numbers[:6])
        shown += ", ..." if len(numbers) > 6 else ""
        w.skipped.append(
            ("numbers beside the history (a second mapping file can read them)", shown)
        )


def _common_attributes(survey: _Survey, lines: list[str], w: _Writer) -> None:
    for keys, leaf in survey.leaves.items():
        if leaf.used or not leaf.values or not _is_identifier(keys[-1], leaf.values):
            continue
        missing = survey.count - len(leaf.values)
        default = ""
        value = f"{{path: {_yaml(_path_text(keys))}"
        if missing:
            value += ", default: unknown"
            default = f" (absent from {missing} of {survey.count})"
        lines.append(f"  {_attribute_name(keys)}: {value}}}   # guess: an identifier{default}")
        leaf.used = True


def _metrics(
    survey: _Survey,
    group: tuple[str, ...],
    w: _Writer,
    out: list[str],
    *,
    attribute_lines: list[str],
    for_each: str | None = None,
    total: int | None = None,
) -> None:
    total = survey.count if total is None else total
    for keys, leaf in survey.leaves.items():
        if leaf.used:
            continue
        where = _path_text((*group, *keys)) if for_each is None else (
            f"{for_each}: {_path_text(keys)}"
        )
        numbers = [v for v in leaf.values if _is_number(v)]
        if not numbers and leaf.values:
            if all(isinstance(v, bool) for v in leaf.values):
                why = "true/false (a metric with booleans: true reads them as 1 and 0)"
                w.skipped.append((where, why))
            elif not _is_identifier(keys[-1], leaf.values):
                w.skipped.append((where, "text"))
            continue
        if not leaf.values and not numbers:
            if keys[-1] == -1:
                w.skipped.append((where, "an empty list in the sample"))
            else:
                w.skipped.append((where, "null in the sample"))
            continue
        _metric(leaf, numbers, group, w, out, attribute_lines, for_each, total)


def _metric(
    leaf: _Leaf,
    numbers: list[Any],
    group: tuple[str, ...],
    w: _Writer,
    out: list[str],
    attribute_lines: list[str],
    for_each: str | None,
    total: int,
) -> None:
    keys = leaf.keys
    named = keys[-2] if keys[-1] == -1 else keys[-1]
    name = w.unique_name(_name_parts((*group, *keys)))
    finite = [float(v) for v in numbers if math.isfinite(v)]
    step = _step_unit(named)
    out.append(f"  - name: {name}")
    if step is not None and all(v >= 0 for v in finite):
        out.append("    type: counter")
        out.append(f"    mode: total   # guess: {named} is a running total (it is reported as is)")
        out.append(f'    unit: "{{{step}}}"')
    else:
        out.append("    type: gauge")
        unit = _unit_guess(named, finite)
        if unit is not None:
            out.append(f"    unit: {json.dumps(unit[0])}   # guess: {unit[1]}")
    if for_each is not None:
        out.append(f"    for_each: {_yaml(for_each)}")
    if keys[-1] == -1:
        out.append(f"    path: {_yaml(_path_text(keys))}   # the newest (last) value of the list")
    else:
        out.append(f"    path: {_yaml(_path_text(keys))}")
    absent = total - len(leaf.values)
    if absent:
        out.append(f"    missing: skip   # absent or null in {absent} of {total}")
    if len(finite) < len(numbers):
        out.append(
            "    # NaN or Infinity in the sample: such values are dropped and counted "
            "(non_finite: drop)"
        )
    elif len(numbers) < len(leaf.values):
        out.append("    # text in some of the sample's values: those are dropped and counted")
    if attribute_lines:
        # The first metric of a list of objects spells its attributes out; the others
        # refer to them (a YAML alias), as the shipped gpustat example does.
        anchor = re.sub(r"[^a-z0-9_]+", "_", _path_text(group).lower()).strip("_") or "element"
        if attribute_lines[0].startswith("*"):
            out.append(f"    attributes: {attribute_lines[0]}")
        else:
            out.append(f"    attributes: &{anchor}")
            out += attribute_lines
            attribute_lines[:] = [f"*{anchor}"]


def _group_metrics(keys: tuple[str, ...], group: _Survey, w: _Writer, out: list[str]) -> None:
    """A list of objects that is not a history: one point per element (for_each)."""
    for_each = _path_text(keys) + "[*]"
    owner = _singular(_name_parts(keys[-1:])[-1] if _name_parts(keys[-1:]) else "element")
    attribute_lines: list[str] = []
    key = _element_key(group)
    first_metric = len(out)
    if key is not None:
        attribute_lines.append(
            f"      {_attribute_name((key,), owner)}: {{path: {_yaml(_path_text((key,)))}}}"
            f"   # guess: {key} tells the elements apart"
        )
        group.leaves[(key,)].used = True
    for leaf_keys, leaf in group.leaves.items():
        if leaf.used or not leaf.values:
            continue
        if _is_identifier(leaf_keys[-1], leaf.values) and len(leaf.values) == group.elements:
            attribute_lines.append(
                f"      {_attribute_name(leaf_keys, owner)}: "
                f"{{path: {_yaml(_path_text(leaf_keys))}}}   # guess: an identifier"
            )
            leaf.used = True
    for where, why in group.skipped.items():
        w.skipped.append((f"{for_each}: {where}", why))
    group.skipped = {}
    _metrics(
        group, keys, w, out,
        attribute_lines=attribute_lines, for_each=for_each, total=group.elements,
    )  # fmt: skip
    if key is None and len(out) > first_metric:  # said above the metrics it is about
        out.insert(
            first_metric,
            f"  # guess: nothing tells the elements of {for_each} apart: give their metrics "
            "an attribute that does",
        )


def _element_key(group: _Survey) -> str | None:
    """The key present in every element whose values differ between the elements of each
    list: what tells them apart (a GPU's index, a class name)."""
    for candidate in _ELEMENT_KEYS:
        for keys, leaf in group.leaves.items():
            if keys != (candidate,) and not (
                isinstance(keys[-1], str) and keys[-1].lower() == candidate
            ):
                continue
            if len(keys) != 1 or len(leaf.values) != group.elements:
                continue
            if all(
                len({repr(e.get(str(keys[0]))) for e in elements}) == len(elements)
                for elements in group.elements_per_record
            ):
                return str(keys[0])
    return None
