from __future__ import annotations

import json
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distillery.errors import DistilleryError, SpecPathError
from distillery.graders import (
    Grade,
    build_grader,
    field_matches,
    grade_exact,
    grade_fields,
    grade_format,
    grade_gold,
    grade_ranked,
    score_completions,
)
from distillery.prompts import format_answer, parse_answer
from distillery.spec import FieldSpec, GraderSpec

GOLD_INVOICE = {"vendor": "Acme Tools Ltd", "number": "INV-1042", "date": "2026-03-09", "total": 1234.5,
                "currency": "EUR"}

number = FieldSpec(type="number", tolerance=0.01)
date = FieldSpec(type="date")
string = FieldSpec(type="string")


def ranked(spec, text, gold, weights=(1.0, 0.5)):
    return grade_ranked(parse_answer(text, spec), gold, list(weights))


def fields(spec, value, gold=GOLD_INVOICE):
    return grade_fields(parse_answer(" " + json.dumps(value), spec), gold, spec.output.fields)


# ---- ranked ------------------------------------------------------------------------------------

def test_ranked_gives_full_credit_when_the_right_label_is_first(clinical_spec):
    assert ranked(clinical_spec, " Pneumonia; Migraine; Appendicitis", "Pneumonia").score == 1.0


def test_ranked_gives_half_credit_when_the_right_label_is_second(clinical_spec):
    assert ranked(clinical_spec, " Migraine; Pneumonia; Appendicitis", "Pneumonia").score == 0.5


def test_ranked_gives_nothing_when_the_right_label_is_third(clinical_spec):
    grade = ranked(clinical_spec, " Migraine; Appendicitis; Pneumonia", "Pneumonia")
    assert grade.score == 0.0
    assert "position 3" in grade.reason


def test_ranked_gives_nothing_when_the_right_label_is_missing(clinical_spec):
    grade = ranked(clinical_spec, " Migraine; Appendicitis", "Pneumonia")
    assert grade.score == 0.0 and "not in the answer" in grade.reason


def test_ranked_gives_nothing_for_an_unparsable_answer_and_says_why(clinical_spec):
    grade = ranked(clinical_spec, " no idea", "Pneumonia")
    assert grade.score == 0.0 and grade.reason.startswith("unparsable")


def test_ranked_weights_are_configurable(clinical_spec):
    assert ranked(clinical_spec, " Migraine; Pneumonia", "Pneumonia", weights=(1.0, 0.25)).score == 0.25
    assert ranked(clinical_spec, " Migraine; Appendicitis; Pneumonia", "Pneumonia", weights=(1, 0.5, 0.2)).score == 0.2


def test_partial_answer_still_earns_ranked_credit(clinical_spec):
    assert ranked(clinical_spec, " Influenza; Pneumonia", "Pneumonia").score == 1.0


# ---- exact -------------------------------------------------------------------------------------

def test_exact_matches_the_top_label_ignoring_case(clinical_spec):
    assert grade_exact(parse_answer(" Pneumonia; Migraine", clinical_spec), "pneumonia").score == 1.0


def test_exact_gives_no_credit_for_a_label_in_second_place(clinical_spec):
    grade = grade_exact(parse_answer(" Migraine; Pneumonia", clinical_spec), "Pneumonia")
    assert grade.score == 0.0 and "Migraine" in grade.reason


def test_exact_compares_whole_objects_for_extraction(invoice_spec):
    assert grade_exact(parse_answer(" " + json.dumps(GOLD_INVOICE), invoice_spec), GOLD_INVOICE).score == 1.0
    other = dict(GOLD_INVOICE, total=1234.51)
    assert grade_exact(parse_answer(" " + json.dumps(other), invoice_spec), GOLD_INVOICE).score == 0.0


def test_exact_gives_nothing_for_an_unparsable_answer(clinical_spec):
    assert grade_exact(parse_answer("", clinical_spec), "Pneumonia").score == 0.0


# ---- similarity --------------------------------------------------------------------------------

def test_similarity_scores_a_near_miss_between_a_wrong_label_and_the_right_one(clinical_spec):
    grader = build_grader({"type": "similarity"}, clinical_spec)
    right = grader(parse_answer(" Hypothyroidism", clinical_spec), "Hypothyroidism").score
    near = grader(parse_answer(" Hypothyroidism", clinical_spec), "hypothyroid").score
    wrong = grader(parse_answer(" Pneumonia", clinical_spec), "Hypothyroidism").score
    assert right == 1.0 and 0.5 < near < 1.0 and wrong < near


def test_similarity_averages_fields_and_counts_a_missing_one_as_zero(invoice_spec):
    grader = build_grader({"type": "similarity"}, invoice_spec)
    typo = dict(GOLD_INVOICE, vendor="Acme Tools Ltd.")
    missing = {k: v for k, v in GOLD_INVOICE.items() if k != "currency"}
    g_typo = grader(parse_answer(format_answer(typo), invoice_spec), GOLD_INVOICE)
    g_missing = grader(parse_answer(format_answer(missing), invoice_spec), GOLD_INVOICE)
    assert 0.95 < g_typo.score < 1.0 and "vendor 0.9" in g_typo.reason
    assert g_missing.score == pytest.approx(0.8) and "currency 0.00" in g_missing.reason


# ---- python ------------------------------------------------------------------------------------

USER_GRADER = """
import time

def grade(sample, item):
    gold = item["answer"]
    if gold == "raise":
        return 1 / 0
    if gold == "slow":
        time.sleep(60)
    if gold == "text":
        return "great"
    if gold == "big":
        return 1.5
    if gold == "echo":
        return len(sample["output_text"]) / 100
    if isinstance(gold, dict):
        return 1.0 if sample["output_json"] == gold else 0.25
    return 1.0 if sample["top"] == gold else 0.0
"""


@pytest.fixture
def user_grader(tmp_path, clinical_spec):
    path = tmp_path / "my_grader.py"
    path.write_text(USER_GRADER)
    return build_grader({"type": "python", "path": str(path), "timeout_s": 1.0}, clinical_spec)


def test_python_grader_runs_the_users_function(user_grader, clinical_spec):
    assert user_grader(parse_answer(" Migraine; Pneumonia", clinical_spec), "Migraine") == Grade(1.0, "python grader")
    assert user_grader(parse_answer(" Pneumonia", clinical_spec), "Migraine").score == 0.0
    assert user_grader(parse_answer(" Pneumonia; Migraine", clinical_spec), "echo").score == pytest.approx(0.2)


def test_python_grader_gets_the_parsed_object_for_extraction(tmp_path, invoice_spec):
    (tmp_path / "g.py").write_text(USER_GRADER)
    grader = build_grader({"type": "python", "path": str(tmp_path / "g.py")}, invoice_spec)
    assert grader(parse_answer(format_answer(GOLD_INVOICE), invoice_spec), GOLD_INVOICE).score == 1.0
    assert grader(parse_answer(format_answer({"vendor": "x"}), invoice_spec), GOLD_INVOICE).score == 0.25


@pytest.mark.parametrize("gold, reason", [("raise", "raised ZeroDivisionError"), ("text", "not a number"),
                                          ("big", "outside [0, 1]")])
def test_python_grader_scores_a_misbehaving_function_0_with_the_reason(user_grader, clinical_spec, gold, reason):
    grade = user_grader(parse_answer(" Migraine", clinical_spec), gold)
    assert grade.score == 0.0 and reason in grade.reason


def test_python_grader_times_out_then_recovers(user_grader, clinical_spec):
    answer = parse_answer(" Migraine", clinical_spec)
    grade = user_grader(answer, "slow")
    assert grade.score == 0.0 and "timed out after 1s" in grade.reason
    assert user_grader(answer, "Migraine").score == 1.0  # a fresh worker took over


def test_a_missing_python_grader_file_is_a_spec_path_error_naming_the_fix(tmp_path, clinical_spec):
    missing = tmp_path / "missing.py"
    with pytest.raises(SpecPathError) as err:
        build_grader({"type": "python", "path": str(missing)}, clinical_spec)
    assert (err.value.field, err.value.value) == ("grader.path", str(missing))
    assert "is not a file" in str(err.value) and "def grade(sample, item)" in err.value.fix


def test_a_python_grader_file_without_grade_is_a_spec_path_error_naming_the_fix(tmp_path, clinical_spec):
    (tmp_path / "nograde.py").write_text("def score(sample, item):\n    return 1.0\n")
    with pytest.raises(SpecPathError) as err:
        build_grader({"type": "python", "path": str(tmp_path / "nograde.py")}, clinical_spec)
    assert err.value.field == "grader.path" and err.value.value == str(tmp_path / "nograde.py")
    assert "defines no function grade" in err.value.problem and "add `def grade(sample, item)" in err.value.fix


def test_a_python_grader_file_with_a_syntax_error_is_a_spec_path_error(tmp_path, clinical_spec):
    (tmp_path / "broken.py").write_text("def grade(sample, item):\n    return (\n")
    with pytest.raises(SpecPathError) as err:
        build_grader({"type": "python", "path": str(tmp_path / "broken.py")}, clinical_spec)
    assert err.value.field == "grader.path" and "SyntaxError" in err.value.problem
    assert "fix the error in the file" in str(err.value)


def test_a_bad_grader_file_inside_a_multi_grader_names_its_component(tmp_path, clinical_spec):
    cfg = {"type": "multi", "components": [{"grader": {"type": "ranked"}},
                                           {"grader": {"type": "python", "path": str(tmp_path / "nope.py")}}]}
    with pytest.raises(SpecPathError, match=r"^grader\.components\.1\.grader\.path: "):
        build_grader(cfg, clinical_spec)


def test_a_python_grader_needs_a_path():
    with pytest.raises(ValueError, match="needs `path`"):
        GraderSpec(type="python")


def test_spec_path_error_survives_pickling():
    err = SpecPathError("grader.path", "g.py", "is not a file", "create it")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, DistilleryError)
    assert (back.field, back.value, back.problem, back.fix, str(back)) == (err.field, err.value, err.problem,
                                                                          err.fix, str(err))


def test_the_example_python_grader_validates_like_ranked(clinical_spec):
    from distillery.graders import validate_grader

    spec = clinical_spec.model_copy(update={"grader": GraderSpec(type="python", path="grade_ranked.py")})
    table, ok = validate_grader(spec, ["Migraine", "Pneumonia", "Lyme disease"])
    assert ok
    assert {row["answer"]: row["mean"] for row in table} == {"gold": 1.0, "unparsable": 0.0, "wrong_label": 0.0,
                                                              "shuffled_rank": 0.5}


# ---- fields ------------------------------------------------------------------------------------

def test_fields_gives_full_credit_when_every_field_is_right(invoice_spec):
    grade = fields(invoice_spec, GOLD_INVOICE)
    assert grade.score == 1.0 and "5/5" in grade.reason


def test_fields_gives_credit_per_right_field_and_names_the_wrong_ones(invoice_spec):
    grade = fields(invoice_spec, dict(GOLD_INVOICE, vendor="Other Co", total=1))
    assert grade.score == pytest.approx(3 / 5)
    assert "vendor" in grade.reason and "total" in grade.reason


def test_missing_field_counts_as_wrong(invoice_spec):
    value = {k: v for k, v in GOLD_INVOICE.items() if k != "currency"}
    assert fields(invoice_spec, value).score == pytest.approx(4 / 5)


def test_keys_outside_the_schema_cost_credit(invoice_spec):
    grade = fields(invoice_spec, dict(GOLD_INVOICE, iban="DE00", notes="x"))
    assert grade.score == pytest.approx(5 / 7)
    assert "iban" in grade.reason and "notes" in grade.reason


def test_fields_gives_nothing_for_an_unparsable_answer(invoice_spec):
    grade = grade_fields(parse_answer(" total is 5", invoice_spec), GOLD_INVOICE, invoice_spec.output.fields)
    assert grade.score == 0.0 and grade.reason.startswith("unparsable")


@pytest.mark.parametrize("got", [1234.5, 1234.505, 1234.495, "1234.5", "1,234.50", "EUR 1,234.50", "€1234,50",
                                 "1.234,50", "1 234.50"])
def test_numbers_match_within_tolerance_whatever_their_formatting(got):
    assert field_matches(got, 1234.5, number)


@pytest.mark.parametrize("got", [1234.52, 1235, "12345", "about a thousand", None, True, float("nan"), float("inf"),
                                 10**400])
def test_numbers_outside_tolerance_or_not_numbers_do_not_match(got):
    assert not field_matches(got, 1234.5, number)


def test_number_tolerance_is_taken_from_the_field_spec():
    assert field_matches(1240, 1234.5, FieldSpec(type="number", tolerance=10))
    assert not field_matches(1234.6, 1234.5, FieldSpec(type="number", tolerance=0))


def test_a_decimal_comma_is_read_as_a_decimal_point():
    assert field_matches("12,5", 12.5, number)
    assert field_matches("1,250", 1250, number)  # three digits after a single comma: a thousands separator


@pytest.mark.parametrize("got", ["2026-03-09", "09/03/2026", "09.03.2026", "March 9, 2026", "Mar 9, 2026",
                                 "9 March 2026", "9 Mar 2026", "2026/03/09", "  March  9,  2026 "])
def test_dates_match_in_any_common_format(got):
    assert field_matches(got, "2026-03-09", date)


@pytest.mark.parametrize("got", ["2026-03-10", "2025-03-09", "next Tuesday", "", 20260309, None])
def test_different_or_unreadable_dates_do_not_match(got):
    assert not field_matches(got, "2026-03-09", date)


def test_unreadable_gold_date_matches_nothing():
    assert not field_matches("soon", "soon", date)


@pytest.mark.parametrize("got", ["Acme Tools Ltd", "acme tools ltd", "  ACME   Tools\nLtd "])
def test_strings_match_ignoring_case_and_whitespace(got):
    assert field_matches(got, "Acme Tools Ltd", string)


@pytest.mark.parametrize("got", ["Acme Tools", "Acme Tools Ltd.", None])
def test_different_strings_do_not_match(got):
    assert not field_matches(got, "Acme Tools Ltd", string)


# ---- format ------------------------------------------------------------------------------------

def test_format_gives_full_credit_to_an_object_with_every_field(invoice_spec):
    answer = parse_answer(' {"vendor": "x", "number": "y", "date": "z", "total": 0, "currency": "w"}', invoice_spec)
    assert grade_format(answer, invoice_spec).score == 1.0


def test_format_gives_nothing_to_an_object_missing_a_field(invoice_spec):
    grade = grade_format(parse_answer(' {"vendor": "x"}', invoice_spec), invoice_spec)
    assert grade.score == 0.0 and "total" in grade.reason


@pytest.mark.parametrize("text, score", [(" Pneumonia; Migraine", 1.0), (" Flu; Pneumonia", 0.5), (" Flu", 0.0)])
def test_format_scores_classification_by_how_cleanly_it_parses(clinical_spec, text, score):
    assert grade_format(parse_answer(text, clinical_spec), clinical_spec).score == score


# ---- build_grader and multi --------------------------------------------------------------------

def test_build_grader_accepts_a_plain_dict(clinical_spec):
    grader = build_grader({"type": "ranked", "weights": [1.0, 0.3]}, clinical_spec)
    assert grader(parse_answer(" Migraine; Pneumonia", clinical_spec), "Pneumonia").score == 0.3


def test_fields_grader_needs_an_extraction_task(clinical_spec):
    with pytest.raises(ValueError, match="extraction"):
        build_grader(GraderSpec(type="fields"), clinical_spec)


def test_multi_is_the_weighted_mean_of_its_components(clinical_spec):
    grader = build_grader({"type": "multi", "components": [
        {"grader": {"type": "ranked"}, "weight": 3},
        {"grader": {"type": "format"}, "weight": 1},
    ]}, clinical_spec)
    grade = grader(parse_answer(" Migraine; Pneumonia", clinical_spec), "Pneumonia")
    assert grade.score == pytest.approx((3 * 0.5 + 1 * 1.0) / 4)
    assert "position 2" in grade.reason and "parse ok" in grade.reason


def test_multi_weight_defaults_to_one(clinical_spec):
    grader = build_grader({"type": "multi", "components": [{"grader": {"type": "ranked"}}, {"grader": {"type": "exact"}}]},
                          clinical_spec)
    assert grader(parse_answer(" Migraine; Pneumonia", clinical_spec), "Pneumonia").score == pytest.approx(0.25)


def test_multi_graders_nest(invoice_spec):
    grader = build_grader({"type": "multi", "components": [
        {"grader": {"type": "multi", "components": [{"grader": {"type": "fields"}}, {"grader": {"type": "exact"}}]},
         "weight": 1},
        {"grader": {"type": "format"}, "weight": 1},
    ]}, invoice_spec)
    answer = parse_answer(" " + json.dumps(dict(GOLD_INVOICE, vendor="Other")), invoice_spec)
    assert grader(answer, GOLD_INVOICE).score == pytest.approx(((4 / 5 + 0) / 2 + 1) / 2)


def test_multi_with_nothing_to_grade_cannot_grade(clinical_spec):
    grade = build_grader({"type": "multi", "components": []}, clinical_spec)(parse_answer(" Flu", clinical_spec), "Flu")
    assert grade.score is None


def test_a_component_that_cannot_grade_does_not_count_as_wrong(clinical_spec):
    grader = build_grader({"type": "multi", "components": [
        {"grader": {"type": "multi", "components": []}, "weight": 1},
        {"grader": {"type": "ranked"}, "weight": 1},
    ]}, clinical_spec)
    assert grader(parse_answer(" Pneumonia", clinical_spec), "Pneumonia").score == 1.0


# ---- grade_gold and score_completions ----------------------------------------------------------

def test_gold_label_is_normalised_to_the_spec_spelling(clinical_spec):
    assert grade_gold("pneumonia", clinical_spec) == "Pneumonia"
    assert grade_gold("not a label", clinical_spec) == "not a label"


def test_gold_object_is_left_as_it_is(invoice_spec):
    assert grade_gold(GOLD_INVOICE, invoice_spec) == GOLD_INVOICE


def test_score_completions_grades_each_completion_in_order(clinical_spec):
    grades = score_completions([" Pneumonia", " Migraine; Pneumonia", " nonsense", " Migraine"],
                               ["Pneumonia", "Pneumonia", "Pneumonia", None], clinical_spec)
    assert [g.score for g in grades] == [1.0, 0.5, 0.0, None]
    assert grades[3].reason == "no gold answer"


def test_score_completions_reads_reasoning_when_not_prefilled(clinical_spec):
    (grade,) = score_completions(["Crackles, fever.\nAnswer: Pneumonia"], ["Pneumonia"], clinical_spec, prefilled=False)
    assert grade.score == 1.0


def test_score_completions_uses_the_spec_grader_for_extraction(invoice_spec):
    (grade,) = score_completions([" " + json.dumps(GOLD_INVOICE)], [GOLD_INVOICE], invoice_spec)
    assert grade == Grade(1.0, "5/5 fields right")


# ---- properties --------------------------------------------------------------------------------

CLASSIFICATION_GRADERS = [
    {"type": "ranked"},
    {"type": "exact"},
    {"type": "similarity"},
    {"type": "format"},
    {"type": "python", "path": "grade_ranked.py"},
    {"type": "multi", "components": [{"grader": {"type": "ranked"}, "weight": 2}, {"grader": {"type": "format"}}]},
]
LABELS = ["Type 1 diabetes", "Hypothyroidism", "Hyperthyroidism", "Iron deficiency anemia", "Pneumonia",
          "Myocardial infarction", "Appendicitis", "Migraine", "Lyme disease", "Kidney stones"]

label_soup = st.lists(st.one_of(st.sampled_from(LABELS), st.text(max_size=12)), max_size=5).map("; ".join)
any_text = st.one_of(st.text(), label_soup)


@pytest.mark.parametrize("cfg", CLASSIFICATION_GRADERS, ids=lambda c: c["type"])
@given(text=any_text, gold=st.sampled_from(LABELS), prefilled=st.booleans())
def test_any_classification_text_scores_between_0_and_1(clinical_spec, cfg, text, gold, prefilled):
    grade = build_grader(cfg, clinical_spec)(parse_answer(text, clinical_spec, prefilled=prefilled), gold)
    assert 0.0 <= grade.score <= 1.0
    assert isinstance(grade.reason, str)


@pytest.mark.parametrize("cfg", CLASSIFICATION_GRADERS, ids=lambda c: c["type"])
@given(gold=st.sampled_from(LABELS), rest=st.lists(st.sampled_from(LABELS), max_size=2, unique=True))
def test_gold_label_first_scores_1(clinical_spec, cfg, gold, rest):
    ranking = [gold] + [label for label in rest if label != gold]
    grader = build_grader(cfg, clinical_spec)
    assert grader(parse_answer(format_answer(ranking), clinical_spec), gold).score == 1.0


json_values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                        st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
answer_objects = st.dictionaries(st.one_of(st.sampled_from(list(GOLD_INVOICE)), st.text(max_size=8)), json_values,
                                 max_size=7).map(lambda d: " " + json.dumps(d))
EXTRACTION_GRADERS = [
    {"type": "fields"},
    {"type": "exact"},
    {"type": "similarity"},
    {"type": "format"},
    {"type": "multi", "components": [{"grader": {"type": "fields"}, "weight": 3}, {"grader": {"type": "format"}}]},
]


@pytest.mark.parametrize("cfg", EXTRACTION_GRADERS, ids=lambda c: c["type"])
@given(text=st.one_of(st.text(), answer_objects))
def test_any_extraction_text_scores_between_0_and_1(invoice_spec, cfg, text):
    grade = build_grader(cfg, invoice_spec)(parse_answer(text, invoice_spec), GOLD_INVOICE)
    assert 0.0 <= grade.score <= 1.0


invoices = st.fixed_dictionaries({
    "vendor": st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=20)
    .filter(lambda s: s.strip() and "answer" not in s.lower()),
    "number": st.from_regex(r"INV-[0-9]{3,6}", fullmatch=True),
    "date": st.dates().map(lambda d: d.isoformat()),
    "total": st.floats(min_value=0, max_value=1e9, allow_nan=False),
    "currency": st.sampled_from(["EUR", "USD", "GBP", "SEK", "JPY"]),
})


@pytest.mark.parametrize("cfg", EXTRACTION_GRADERS, ids=lambda c: c["type"])
@given(gold=invoices)
def test_gold_object_scores_1(invoice_spec, cfg, gold):
    grader = build_grader(cfg, invoice_spec)
    assert grader(parse_answer(format_answer(gold), invoice_spec), gold).score == 1.0
