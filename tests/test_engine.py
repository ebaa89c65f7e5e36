"""The engine: one record in, data points and counted drops out; never an exception."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from translator.engine import DropReason, Evaluation, evaluate
from translator.mapping import compile_mapping


def plan_of(metrics: str, extra: str = "", environ: dict[str, str] | None = None) -> Any:
    return compile_mapping(
        f"version: 1\n{extra}metrics:\n{metrics}", "m.yaml", environ=environ or {}
    )


def values(metric_yaml: str, record: Any) -> tuple[list[Any], list[str]]:
    result = evaluate(plan_of(metric_yaml), record)
    return [value for _, _, value in result.points], [d.reason.value for d in result.drops]


@pytest.mark.parametrize(
    ("options", "raw", "expected"),
    [
        ("", 0.5, 0.5),
        ("", 7, 7),
        ("scale: 0.001", 2500, 2.5),
        ("scale: 100, offset: 1", 0.5, 51.0),
        ("parse_strings: true", "0.25", 0.25),
        ("parse_strings: true", " 12 ", 12.0),
        ("booleans: true", True, 1),
        ("booleans: true", False, 0),
        ("map: {running: 1, failed: 0}", "running", 1.0),
        ("map: {true: 1, false: 0}", False, 0.0),
        ("non_finite: keep", math.inf, math.inf),
        ("", 10**30, 1e30),
    ],
)
def test_value_pipeline_turns_raw_json_into_the_exported_number(
    options: str, raw: Any, expected: float
) -> None:
    got, drops = values(
        f"  - {{name: a, type: gauge, path: $.v, {options}}}\n".replace(", }", "}"), {"v": raw}
    )
    assert drops == []
    assert got == [expected]
    assert type(got[0]) is type(expected)


@pytest.mark.parametrize(
    ("options", "record", "reason"),
    [
        ("", {}, "missing"),
        ("", {"v": None}, "missing"),
        ("", {"v": "0.5"}, "not_a_number"),
        ("", {"v": True}, "not_a_number"),
        ("", {"v": [1]}, "not_a_number"),
        ("", {"v": {"x": 1}}, "not_a_number"),
        ("parse_strings: true", {"v": "abc"}, "not_a_number"),
        ("map: {running: 1}", {"v": "paused"}, "unmapped_value"),
        ("", {"v": math.nan}, "non_finite"),
        ("", {"v": -math.inf}, "non_finite"),
        ("parse_strings: true", {"v": "NaN"}, "non_finite"),
        ("scale: 1.0e300", {"v": 1e300}, "non_finite"),
        ("", {"v": 10**400}, "out_of_range"),
    ],
)
def test_untrusted_value_is_dropped_with_its_reason(options: str, record: Any, reason: str) -> None:
    spec = f"  - {{name: a, type: gauge, path: $.v, {options}}}\n".replace(", }", "}")
    assert values(spec, record) == ([], [reason])


def test_default_and_skip_apply_only_when_missing() -> None:
    metrics = (
        "  - {name: a, type: gauge, path: $.a, default: 0}\n"
        "  - {name: b, type: gauge, path: $.b, missing: skip}\n"
    )
    assert values(metrics, {}) == ([0], [])
    assert values(metrics, {"a": 3, "b": 4}) == ([3, 4], [])


def test_counters_and_histograms_refuse_negative_values_but_up_down_counters_take_them() -> None:
    metrics = (
        "  - {name: c, type: counter, mode: increment, path: $.v}\n"
        "  - {name: u, type: updowncounter, mode: increment, path: $.v}\n"
        "  - {name: h, type: histogram, path: $.v, buckets: [1]}\n"
        "  - {name: g, type: gauge, path: $.v}\n"
    )
    assert values(metrics, {"v": -2}) == ([-2, -2], ["negative", "negative"])


def test_one_bad_value_does_not_take_the_rest_of_the_document_with_it() -> None:
    metrics = (
        "  - {name: a, type: gauge, path: $.a}\n"
        "  - {name: b, type: gauge, path: $.b}\n"
        "  - {name: c, type: gauge, path: $.c}\n"
    )
    assert values(metrics, {"a": 1, "b": math.nan, "c": 3}) == ([1, 3], ["non_finite"])


def test_fan_out_gives_one_point_per_element_with_element_and_root_attributes() -> None:
    plan = plan_of(
        "  - name: gpu.utilization\n    type: gauge\n    for_each: $.gpus[*]\n    path: $.util\n"
        "    attributes:\n      gpu.index: {path: $.index}\n      host: {root_path: $.hostname}\n",
        extra="attributes:\n  job: {path: $.job}\n  team: ml\n",
    )
    record = {
        "hostname": "n1",
        "job": "j",
        "gpus": [{"index": 0, "util": 10}, {"index": 1, "util": 20}],
    }
    result = evaluate(plan, record)
    assert [(dict(attributes), value) for _, attributes, value in result.points] == [
        ({"gpu.index": 0, "host": "n1", "job": "j", "team": "ml"}, 10),
        ({"gpu.index": 1, "host": "n1", "job": "j", "team": "ml"}, 20),
    ]


def test_missing_attribute_drops_the_point_unless_it_has_a_default() -> None:
    plan = plan_of(
        "  - {name: a, type: gauge, path: $.v}\n",
        extra="attributes:\n  job: {path: $.job}\n  rank: {path: $.rank, default: 0}\n",
    )
    ok = evaluate(plan, {"v": 1, "job": "j"})
    assert [dict(attributes) for _, attributes, _ in ok.points] == [{"job": "j", "rank": 0}]
    bad = evaluate(plan, {"v": 1})
    assert [(d.reason, d.detail) for d in bad.drops] == [
        (DropReason.MISSING_ATTRIBUTE, "attribute 'job': $.job selects nothing")
    ]


def test_non_scalar_or_huge_attribute_values_are_refused() -> None:
    plan = plan_of(
        "  - {name: a, type: gauge, path: $.v}\n", extra="attributes:\n  job: {path: $.job}\n"
    )
    for job in ({"x": 1}, [1], "x" * 5000):
        (drop,) = evaluate(plan, {"v": 1, "job": job}).drops
        assert drop.reason is DropReason.BAD_ATTRIBUTE


def test_when_filters_records_and_one_name_can_take_several_rules() -> None:
    plan = plan_of(
        "  - {name: loss, type: gauge, path: $.loss, when: {exists: $.loss}, attributes: {split: train}}\n"
        "  - {name: loss, type: gauge, path: $.eval_loss, when: {exists: $.eval_loss}, attributes: {split: eval}}\n"
        "  - {name: lr, type: gauge, path: $.lr, when: {equals: {path: $.phase, value: train}}}\n"
    )
    train = evaluate(plan, {"loss": 0.5, "lr": 0.1, "phase": "train"})
    evaluation = evaluate(plan, {"eval_loss": 0.7, "lr": 0.1, "phase": "eval"})
    assert [(r.name, dict(a), v) for r, a, v in train.points] == [
        ("loss", {"split": "train"}, 0.5),
        ("lr", {}, 0.1),
    ]
    assert [(r.name, dict(a), v) for r, a, v in evaluation.points] == [
        ("loss", {"split": "eval"}, 0.7),
    ]
    assert train.drops == evaluation.drops == []


@pytest.mark.parametrize(
    "record", [None, 1, "x", [], [1, 2], {"training_metrics": []}, {"a": {"b": None}}]
)
def test_any_json_shape_gives_drops_not_exceptions(record: Any) -> None:
    plan = plan_of(
        "  - {name: a, type: gauge, path: $.training_metrics.loss}\n"
        "  - {name: b, type: gauge, path: $.x, for_each: '$.items[*]'}\n"
    )
    result = evaluate(plan, record)
    assert result.points == []
    assert [d.reason for d in result.drops] == [DropReason.MISSING]


def test_equals_does_not_confuse_true_with_1_either_way() -> None:
    plan = plan_of(
        "  - {name: a, type: gauge, path: $.v, when: {equals: {path: $.flag, value: true}}}\n"
        "  - {name: b, type: gauge, path: $.v, when: {equals: {path: $.flag, value: 1}}}\n"
    )
    assert [r.name for r, _, _ in evaluate(plan, {"v": 5, "flag": 1}).points] == ["b"]
    assert [r.name for r, _, _ in evaluate(plan, {"v": 5, "flag": True}).points] == ["a"]


def test_enum_map_takes_integer_codes_too() -> None:
    assert values("  - {name: a, type: gauge, path: $.v, map: {0: 10, 1: 20}}\n", {"v": 1}) == (
        [20.0],
        [],
    )


def test_a_nan_attribute_is_refused_since_it_would_make_a_new_series_every_time() -> None:
    plan = plan_of("  - {name: a, type: gauge, path: $.v, attributes: {lr: {path: $.lr}}}\n")
    (drop,) = evaluate(plan, {"v": 1, "lr": math.nan}).drops
    assert (drop.reason, drop.detail) == (DropReason.BAD_ATTRIBUTE, "attribute 'lr': $.lr is nan")


def points_of(plan: Any, record: Any) -> list[tuple[str, dict[str, Any], Any]]:
    return [(r.name, dict(a), v) for r, a, v in evaluate(plan, record).points]


def test_a_bracketed_key_pattern_gives_one_point_per_matching_key_with_the_matched_text() -> None:
    plan = plan_of(
        "  - {name: ap, type: gauge, path: \"$['bbox/AP-{class}']\"}\n",
        extra="attributes:\n  job: j\n",
    )
    record = {"bbox/AP": 40.1, "bbox/AP-roof": 38.7, "bbox/AP-roof-panel": 12, "bbox/AR-roof": 1}
    assert points_of(plan, record) == [
        ("ap", {"class": "roof", "job": "j"}, 38.7),
        ("ap", {"class": "roof-panel", "job": "j"}, 12),
    ]
    # A class that appears later is picked up without a new rule.
    assert ("ap", {"class": "chimney", "job": "j"}, 3.5) in points_of(
        plan, {**record, "bbox/AP-chimney": 3.5}
    )


def test_a_dotted_key_pattern_and_every_key_pattern() -> None:
    plan = plan_of(
        "  - {name: loss, type: gauge, path: '$.losses.{split}'}\n"
        "  - {name: summary, type: gauge, path: \"$['{metric}']\"}\n"
    )
    record = {"losses": {"train": 0.3, "eval": 0.4}, "lr": 0.1}
    assert points_of(plan, record) == [
        ("loss", {"split": "train"}, 0.3),
        ("loss", {"split": "eval"}, 0.4),
        ("summary", {"metric": "lr"}, 0.1),
    ]


def test_under_a_key_pattern_non_numbers_are_skipped_and_nan_follows_non_finite() -> None:
    record = {"a": 1, "b": "text", "c": None, "d": {"x": 1}, "e": [1], "f": True, "g": math.nan}
    plan = plan_of("  - {name: m, type: gauge, path: \"$['{k}']\"}\n")
    result = evaluate(plan, record)
    assert [(dict(a), v) for _, a, v in result.points] == [({"k": "a"}, 1)]
    assert [(d.reason, d.detail) for d in result.drops] == [(DropReason.NON_FINITE, "$['g'] = NaN")]
    kept = plan_of(
        "  - {name: m, type: gauge, path: \"$['{k}']\", booleans: true, non_finite: keep}\n"
    )
    assert [dict(a)["k"] for _, a, _ in evaluate(kept, record).points] == ["a", "f", "g"]


def test_a_drop_under_a_for_each_key_pattern_names_the_element() -> None:
    # "$.AP = -1" alone does not say which class of many was dropped.
    plan = plan_of(
        "  - {name: ap, type: gauge, for_each: '$.per_class.{class}', path: $.AP,"
        " range: {min: 0}}\n"
        "  - {name: m, type: gauge, for_each: '$.per_class.{class}', path: '$.{metric}'}\n"
    )
    result = evaluate(
        plan, {"per_class": {"roof": {"AP": 38.7}, "tree": {"AP": -1, "AR": math.nan}}}
    )
    assert [(d.reason, d.detail) for d in result.drops] == [
        (DropReason.OUT_OF_RANGE, "class=tree: $.AP = -1, outside range (min 0)"),
        (DropReason.NON_FINITE, "class=tree: $.AR = NaN"),
    ]


def test_a_matched_key_that_cannot_be_an_attribute_is_dropped_not_exported() -> None:
    # The matched text becomes an attribute value, so it meets the rules of one: a key of
    # 2,000 characters or with a lone surrogate (JSON's "\ud800") would fail the export.
    long_key, surrogate = "x" * 2000, "\ud800a"
    plan = plan_of(
        "  - {name: m, type: gauge, path: \"$['{k}']\"}\n"
        "  - {name: e, type: gauge, for_each: '$.per.{c}', path: $.v}\n"
    )
    record = {"ok": 1, long_key: 2, surrogate: 3, "per": {surrogate: {"v": 4}, "b": {"v": 5}}}
    result = evaluate(plan, record)
    assert [(r.name, dict(a), v) for r, a, v in result.points] == [
        ("m", {"k": "ok"}, 1),
        ("e", {"c": "b"}, 5),
    ]
    assert [(d.reason, d.detail) for d in result.drops] == [
        (
            DropReason.BAD_ATTRIBUTE,
            "attribute 'k': the matched key \"" + "x" * 40 + '..." is 2000 characters long '
            "(limit 1024)",
        ),
        (
            DropReason.BAD_ATTRIBUTE,
            "attribute 'k': the matched key \"\\ud800a\" is not valid Unicode (a lone surrogate)",
        ),
        (
            DropReason.BAD_ATTRIBUTE,
            "attribute 'c': the matched key \"\\ud800a\" is not valid Unicode (a lone surrogate)",
        ),
    ]


def test_placeholders_end_at_the_first_place_the_text_after_them_occurs() -> None:
    plan = plan_of("  - {name: m, type: gauge, path: \"$['{a}-{b}_loss']\"}\n")
    record = {"x-y-z_loss": 1, "x--y_loss": 2, "-x_loss": 3, "x-_loss": 4, "x-y_loss_loss": 5}
    assert points_of(plan, record) == [
        ("m", {"a": "x", "b": "y-z"}, 1),
        ("m", {"a": "x", "b": "-y"}, 2),
        ("m", {"a": "x", "b": "y_loss"}, 5),
    ]


def test_a_long_key_costs_time_linear_in_its_length() -> None:
    # Lazy groups that retried every split took 0.6 s on a 1,000-character key with three
    # placeholders and 18 s on 2,000 (cubic); these keys would take days.
    plan = plan_of("  - {name: m, type: gauge, path: \"$['{a}-{b}-{c}x']\"}\n")
    record = {"a-" * 50_000: 1, "a-a-" + "-" * 100_000: 2, "a-b-" + "c" * 100_000: 3, "a-b-cx": 4}
    assert points_of(plan, record) == [("m", {"a": "a", "b": "b", "c": "c"}, 4)]


def test_a_key_pattern_in_for_each_names_each_element() -> None:
    plan = plan_of(
        "  - name: ap\n    type: gauge\n    for_each: '$.per_class.{class}'\n    path: $.AP\n"
        "    range: {min: 0}\n"
        "  - name: metric\n    type: gauge\n    for_each: '$.per_class.{class}'\n"
        "    path: '$.{metric}'\n"
    )
    record = {"per_class": {"roof": {"AP": 38.7, "AR": 50}, "tree": {"AP": -1}}}
    result = evaluate(plan, record)
    assert [(r.name, dict(a), v) for r, a, v in result.points] == [
        ("ap", {"class": "roof"}, 38.7),
        ("metric", {"class": "roof", "metric": "AP"}, 38.7),
        ("metric", {"class": "roof", "metric": "AR"}, 50),
        ("metric", {"class": "tree", "metric": "AP"}, -1),
    ]
    assert [(d.reason, d.detail) for d in result.drops] == [
        (DropReason.OUT_OF_RANGE, "class=tree: $.AP = -1, outside range (min 0)")
    ]


def test_count_is_the_number_of_values_a_path_selects_and_takes_the_value_pipeline() -> None:
    plan = plan_of(
        "  - {name: epochs, type: counter, mode: total, count: '$.loss[*]'}\n"
        "  - {name: good, type: gauge, count: '$.loss[?(@ < 1)]', scale: 10}\n"
    )
    assert points_of(plan, {"loss": [2.0, 0.9, 0.5]}) == [("epochs", {}, 3), ("good", {}, 20)]
    assert points_of(plan, {}) == [("epochs", {}, 0), ("good", {}, 0)]


@pytest.mark.parametrize(
    ("bounds", "value", "kept"),
    [
        ("{min: 0}", -1, False),
        ("{min: 0}", 0, True),
        ("{max: 1}", 1.5, False),
        ("{min: 0, max: 1}", 0.5, True),
        ("{min: 0, max: 1}", 1, True),
    ],
)
def test_range_drops_values_outside_it_as_out_of_range(bounds: str, value: Any, kept: bool) -> None:
    got = values(f"  - {{name: a, type: gauge, path: $.v, range: {bounds}}}\n", {"v": value})
    assert got == (([value], []) if kept else ([], ["out_of_range"]))


def test_range_is_checked_before_scale() -> None:
    assert values(
        "  - {name: a, type: gauge, path: $.v, range: {max: 1}, scale: 100}\n", {"v": 0.5}
    ) == ([50.0], [])


def test_when_not_and_filters_in_conditions() -> None:
    plan = plan_of(
        "  - {name: a, type: gauge, path: $.v, when: {not: {equals: {path: $.phase, value: warmup}}}}\n"
        "  - {name: b, type: gauge, path: $.v, when: {exists: '$.gpus[?(@.util >= 50)]'}}\n"
        "  - {name: c, type: gauge, path: $.v, when: {not: {exists: '$.gpus[*]'}}}\n"
    )
    assert [n for n, _, _ in points_of(plan, {"v": 1, "phase": "warmup"})] == ["c"]
    busy = {"v": 1, "gpus": [{"util": 10}, {"util": 60}]}
    assert [n for n, _, _ in points_of(plan, busy)] == ["a", "b"]
    idle = {"v": 1, "gpus": [{"util": 10}]}
    assert [n for n, _, _ in points_of(plan, idle)] == ["a"]


def test_a_filter_in_for_each_selects_the_elements_that_fit() -> None:
    plan = plan_of("  - {name: a, type: gauge, for_each: '$.g[?(@.u >= 0)]', path: $.u}\n")
    assert points_of(plan, {"g": [{"u": 1}, {"u": -1}, {"u": "n/a"}, {"x": 2}]}) == [("a", {}, 1)]


def test_drop_details_show_values_as_the_file_writes_them_with_a_hint() -> None:
    plan = plan_of(
        "  - {name: a, type: gauge, path: $.done}\n  - {name: b, type: gauge, path: $.n}\n"
        "  - {name: c, type: gauge, path: $.s}\n"
    )
    result = evaluate(plan, {"done": False, "n": None, "s": "0.5"})
    assert [d.detail for d in result.drops] == [
        "$.done = false (booleans: true exports true/false as 1/0)",
        "$.n is null",
        '$.s = "0.5" (parse_strings: true reads numbers written as text)',
    ]


@pytest.mark.parametrize(
    "record",
    [None, 1, "x", [], [1, {"a": 2}], {"per": []}, {"per": {"a": None, "b": [1]}}, {"k": math.inf}],
)
def test_the_new_forms_give_points_or_drops_never_exceptions_on_any_json(record: Any) -> None:
    plan = plan_of(
        "  - {name: a, type: gauge, path: \"$['{k}']\", range: {min: 0}}\n"
        "  - {name: b, type: gauge, for_each: '$.per.{c}', path: '$.{m}'}\n"
        "  - {name: c, type: counter, mode: total, count: '$.per[*]'}\n"
        "  - {name: d, type: gauge, count: '$.per[?(@.x > 1)]', when: {not: {exists: $.z}}}\n"
    )
    result = evaluate(plan, record)
    assert all(isinstance(v, int | float) for _, _, v in result.points)


# --- the inline path of plain rules (MetricRule.direct) -------------------------------------

_RULE_KINDS = (
    "  - {name: g, type: gauge, path: $.v}\n"
    "  - {name: c, type: counter, mode: total, path: $.v}\n"
    "  - {name: h, type: histogram, path: $.v, buckets: [1, 10]}\n"
    "  - {name: n, type: gauge, count: '$.v[*]'}\n"
)


def test_only_rules_that_use_nothing_but_a_plain_path_are_evaluated_inline() -> None:
    plan = plan_of(
        _RULE_KINDS + "  - {name: r, type: gauge, path: $.v, range: {min: 0}}\n"
        "  - {name: s, type: gauge, path: $.v, scale: 2}\n"
        "  - {name: w, type: gauge, path: $.v, when: {exists: $.v}}\n"
        "  - {name: e, type: gauge, path: $.x, for_each: '$.v[*]'}\n"
        "  - {name: k, type: gauge, path: \"$['loss/{split}']\"}\n"
    )
    assert [rule.direct for rule in plan.rules] == [True] * 4 + [False] * 5


@pytest.mark.parametrize(
    "value",
    [0.5, -0.5, 7, -7, 0, 2**63 - 1, 2**63, 10**30, math.nan, math.inf, None, "3", True, [1]],
)
@pytest.mark.parametrize("job", ["j1", None, 10**30, [1]], ids=["job", "no-job", "huge", "list"])
def test_the_inline_path_gives_what_the_general_path_gives(value: Any, job: Any) -> None:
    extra = "attributes:\n  job: {path: $.job}\n  site: {value: here}\n"
    inline = plan_of(_RULE_KINDS, extra)
    general = replace(inline, rules=tuple(replace(r, direct=False) for r in inline.rules))
    record: dict[str, Any] = {"v": value} if job is None else {"v": value, "job": job}
    ours, theirs = evaluate(inline, record), evaluate(general, record)
    assert _shown(ours) == _shown(theirs)
    assert ours.points or ours.drops  # every rule gives a point or says why not


def _shown(result: Evaluation) -> str:
    """Points and drops by rule number; repr, so that NaN equals NaN and 1 is not True."""
    return repr(
        [(rule.index, attributes, value) for rule, attributes, value in result.points]
        + [(drop.rule.index, drop.reason, drop.detail) for drop in result.drops]
    )
