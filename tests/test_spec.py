from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from conftest import CLINICAL_YAML, REPO
from distillery.errors import SpecError
from distillery.prompts import user_message
from distillery.spec import load_spec, parse_spec

SHIPPED_SPECS = sorted(REPO.glob("data/**/*.yaml"))


def _problems(raw: dict, **kwargs) -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_spec(raw, **kwargs)
    return err.value.problems


def _without_profiles(raw: dict) -> dict:
    raw = copy.deepcopy(raw)
    raw.pop("profiles", None)
    return raw


# ---- the shipped specs -------------------------------------------------------------------------

def test_the_clinical_demo_spec_is_among_the_shipped_specs():
    assert CLINICAL_YAML in SHIPPED_SPECS


@pytest.mark.parametrize("path", SHIPPED_SPECS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_spec_loads_with_every_profile(path, monkeypatch):
    monkeypatch.chdir(REPO)
    raw = yaml.safe_load(path.read_text())
    for profile in [None, *(raw.get("profiles") or {})]:
        spec = load_spec(path.relative_to(REPO), profile=profile)
        assert spec.path(spec.seeds.path).is_file(), f"{path}: seed file {spec.seeds.path} is missing"


@pytest.mark.parametrize("path", SHIPPED_SPECS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_spec_instruction_uses_only_known_placeholders(path):
    spec = load_spec(path)
    message = user_message("The document text.", spec)
    assert "The document text." in message


def test_clinical_spec_describes_a_ranked_classification(clinical_spec):
    assert clinical_spec.name == "clinical"
    assert clinical_spec.output.kind == "classification"
    assert len(clinical_spec.output.labels) == 10
    assert clinical_spec.output.top_k == 3
    assert clinical_spec.grader.type == "ranked"


def test_load_spec_roots_relative_paths_at_the_spec_folder():
    spec = load_spec(CLINICAL_YAML)
    assert spec.root == str(CLINICAL_YAML.parent)
    assert spec.path(spec.source) == REPO / "data" / "demo" / "pdfs"
    assert spec.path(spec.models.base) == REPO / "models" / "base"  # `..` folded: the same string as before


def test_the_demo_spec_resolves_to_the_paths_it_had_when_run_from_the_repository(monkeypatch):
    monkeypatch.chdir(REPO)
    spec = load_spec("data/demo/clinical.yaml")
    assert [str(spec.path(v)) for v in (spec.source, spec.seeds.path, spec.models.base, spec.bulk.source)] == \
        ["data/demo/pdfs", "data/demo/seeds.csv", "models/base", "data/demo/pdfs"]


def test_a_spec_beside_its_data_works_from_another_directory(tmp_path, monkeypatch, clinical_raw):
    from distillery import ingest, seed, synth

    task = tmp_path / "task"
    truth = synth.generate_clinical(task / "pdfs", 6, bad_every=0)
    (task / "labels.csv").write_text("document,answer\n" + "".join(f"{r['file']},{r['label']}\n" for r in truth[:4]))
    raw = dict(_without_profiles(clinical_raw), source="pdfs", seeds={"path": "labels.csv"})
    (task / "task.yaml").write_text(yaml.safe_dump(raw))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_spec("../task/task.yaml")
    docs = ingest.ingest(spec, out=tmp_path / "ingest")
    assert docs.counts["documents"] == 6
    seeds = seed.import_seeds(spec, docs.path("documents"), out=tmp_path / "seed")
    assert sum(seeds.counts.values()) == 4


# ---- defaults, paths, hashing ------------------------------------------------------------------

def test_sections_left_out_get_their_defaults(clinical_raw):
    raw = _without_profiles(clinical_raw)
    for section in ("models", "ingest", "teacher", "label", "student", "bulk"):
        raw.pop(section, None)
    spec = parse_spec(raw)
    assert spec.ingest.timeout_s == 30.0
    assert spec.models.base == "models/base"
    assert spec.teacher.grpo.num_generations == 8
    assert spec.bulk is None


def test_relative_paths_resolve_against_the_root(clinical_raw):
    spec = parse_spec(_without_profiles(clinical_raw), root="/srv/tasks")
    assert spec.path("data/seeds.csv") == Path("/srv/tasks/data/seeds.csv")


def test_absolute_paths_are_left_alone(clinical_raw):
    spec = parse_spec(_without_profiles(clinical_raw), root="/srv/tasks")
    assert spec.path("/elsewhere/seeds.csv") == Path("/elsewhere/seeds.csv")


def test_spec_cannot_be_modified_after_loading(clinical_spec):
    with pytest.raises(ValidationError):
        clinical_spec.name = "other"


def test_section_hash_does_not_depend_on_root(clinical_raw):
    a = parse_spec(_without_profiles(clinical_raw), root="/a")
    b = parse_spec(_without_profiles(clinical_raw), root="/b")
    assert a.section_hash("teacher", "output") == b.section_hash("teacher", "output")


def test_section_hash_changes_only_with_the_sections_hashed(clinical_raw):
    base = _without_profiles(clinical_raw)
    changed = copy.deepcopy(base)
    changed["teacher"]["grpo"]["steps"] = 99
    a, b = parse_spec(base), parse_spec(changed)
    assert a.section_hash("teacher") != b.section_hash("teacher")
    assert a.section_hash("label", "output") == b.section_hash("label", "output")


# ---- profiles ----------------------------------------------------------------------------------

def test_profile_overlay_is_deep_merged_over_the_base():
    full = load_spec(CLINICAL_YAML, profile="full")
    assert full.label.limit == 20000
    assert full.label.batch_size == load_spec(CLINICAL_YAML).label.batch_size  # a sibling key the overlay leaves
    assert full.teacher.reasoning is True
    assert full.teacher.grpo.steps == 500
    assert full.teacher.grpo.num_generations == 8


def test_empty_profile_leaves_the_spec_unchanged():
    assert load_spec(CLINICAL_YAML, profile="demo") == load_spec(CLINICAL_YAML)


def test_profile_left_blank_in_yaml_is_an_empty_overlay(clinical_raw):
    raw = dict(clinical_raw, profiles={"demo": None})
    assert parse_spec(raw, profile="demo") == parse_spec(raw)


def test_profile_that_is_not_a_mapping_is_a_spec_error(clinical_raw):
    problems = _problems(dict(clinical_raw, profiles={"demo": "fast"}), profile="demo")
    assert any("demo" in p for p in problems)


def test_a_spec_without_profiles_runs_as_written_under_the_default_profile(clinical_raw, tmp_path):
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(_without_profiles(clinical_raw)))
    assert load_spec(path, profile="demo") == load_spec(path)
    with pytest.raises(SpecError, match="no profile 'full'"):  # only the default may be left out
        load_spec(path, profile="full")


def test_every_command_defaults_to_a_profile_a_plain_spec_may_leave_out(clinical_raw, tmp_path, capsys):
    from distillery.cli import main

    raw = _without_profiles(clinical_raw)
    raw["seeds"]["path"] = str(CLINICAL_YAML.parent / raw["seeds"]["path"])
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["plan", str(path), "--docs", "10", "--no-measure"]) == 0
    assert "no profile" not in capsys.readouterr().err


def test_unknown_profile_names_the_profiles_there_are():
    with pytest.raises(SpecError) as err:
        load_spec(CLINICAL_YAML, profile="huge")
    assert "huge" in str(err.value)
    assert "demo" in str(err.value) and "full" in str(err.value)


def test_profile_values_are_validated_like_the_base(clinical_raw):
    raw = dict(clinical_raw, profiles={"bad": {"label": {"limit": 0}}})
    problems = _problems(raw, profile="bad")
    assert any(p.startswith("label.limit") for p in problems)


# ---- every problem at once, each naming its field ----------------------------------------------

def test_read_window_keeps_what_the_prompt_shows_unless_told_otherwise(clinical_raw):
    spec = parse_spec(_without_profiles(clinical_raw))
    assert spec.ingest.read.chars == spec.prompts.max_doc_chars == 320
    raw = _without_profiles(clinical_raw)
    raw["ingest"] = {"read": {"chars": None, "pages": None, "strategy": "after_front"}}
    read = parse_spec(raw).ingest.read
    assert (read.chars, read.pages, read.strategy) == (None, None, "after_front")


def test_changing_max_doc_chars_changes_the_ingest_section_hash(clinical_raw):
    raw = _without_profiles(clinical_raw)
    before = parse_spec(raw).section_hash("ingest")
    raw["prompts"]["max_doc_chars"] = 1000
    assert parse_spec(raw).section_hash("ingest") != before


def test_read_window_smaller_than_the_prompt_is_a_spec_error(clinical_raw):
    raw = _without_profiles(clinical_raw)
    raw["ingest"] = {"read": {"chars": 100}}
    (problem,) = _problems(raw)
    assert "ingest.read.chars (100)" in problem and "prompts.max_doc_chars (320)" in problem


def test_unknown_read_strategy_is_rejected_and_named(clinical_raw):
    raw = _without_profiles(clinical_raw)
    raw["ingest"] = {"read": {"strategy": "tail"}}
    (problem,) = _problems(raw)
    assert problem.startswith("ingest.read.strategy")


def test_spec_error_lists_every_problem_at_once(clinical_raw):
    raw = _without_profiles(clinical_raw)
    raw["name"] = "Clinical Cases"
    raw["ingest"] = {"timeout_s": -1}
    raw["label"] = {"limit": 0}
    del raw["seeds"]
    problems = _problems(raw)
    fields = {p.split(":")[0] for p in problems}
    assert {"name", "ingest.timeout_s", "label.limit", "seeds"} <= fields


def test_problem_shows_the_value_it_rejected(clinical_raw):
    raw = dict(_without_profiles(clinical_raw), ingest={"timeout_s": -7})
    (problem,) = _problems(raw)
    assert problem.startswith("ingest.timeout_s")
    assert "-7" in problem


def test_misspelled_key_is_rejected_and_named(clinical_raw):
    raw = _without_profiles(clinical_raw)
    raw["teacher"] = {"sft": {"epoch": 2}}
    (problem,) = _problems(raw)
    assert problem.startswith("teacher.sft.epoch")


def test_missing_required_section_is_named(clinical_raw):
    raw = _without_profiles(clinical_raw)
    del raw["prompts"]
    assert any(p.startswith("prompts") and "required" in p.lower() for p in _problems(raw))


@pytest.mark.parametrize("labels", [["Flu", "flu"], ["Flu", " FLU "]])
def test_labels_must_be_unique_ignoring_case(clinical_raw, labels):
    raw = dict(_without_profiles(clinical_raw), output={"kind": "classification", "labels": labels})
    assert any("unique" in p for p in _problems(raw))


def test_label_may_not_contain_the_answer_separator(clinical_raw):
    raw = dict(_without_profiles(clinical_raw), output={"kind": "classification", "labels": ["Flu; cold", "Migraine"]})
    assert any("';'" in p for p in _problems(raw))


def test_classification_needs_two_labels(clinical_raw):
    raw = dict(_without_profiles(clinical_raw), output={"kind": "classification", "labels": ["Flu"]})
    assert any("labels" in p for p in _problems(raw))


def test_task_name_must_be_a_lowercase_slug(clinical_raw):
    raw = dict(_without_profiles(clinical_raw), name="Clinical Cases")
    (problem,) = _problems(raw)
    assert problem.startswith("name") and "Clinical Cases" in problem


def test_unknown_output_kind_is_rejected(clinical_raw):
    raw = dict(_without_profiles(clinical_raw), output={"kind": "regression", "labels": ["a", "b"]})
    assert any(p.startswith("output") for p in _problems(raw))


def test_extraction_needs_at_least_one_field(clinical_raw):
    raw = dict(_without_profiles(clinical_raw), output={"kind": "extraction", "fields": {}})
    assert any("fields" in p for p in _problems(raw))


def test_extraction_field_type_must_be_known(clinical_raw):
    raw = dict(_without_profiles(clinical_raw), output={"kind": "extraction", "fields": {"total": {"type": "money"}}})
    assert any("total" in p and "type" in p for p in _problems(raw))


def test_unknown_grader_type_is_rejected(clinical_raw):
    raw = dict(_without_profiles(clinical_raw), grader={"type": "vibes"})
    (problem,) = _problems(raw)
    assert problem.startswith("grader.type") and "vibes" in problem


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1])
def test_heldout_fraction_must_lie_strictly_between_0_and_1(clinical_raw, fraction):
    raw = _without_profiles(clinical_raw)
    raw["seeds"] = dict(raw["seeds"], heldout_fraction=fraction)
    assert any(p.startswith("seeds.heldout_fraction") for p in _problems(raw))


def test_unknown_label_backend_is_rejected(clinical_raw):
    raw = _without_profiles(clinical_raw)
    raw["label"] = dict(raw["label"], backend="tensorrt")
    assert any(p.startswith("label.backend") for p in _problems(raw))


# ---- the file itself ---------------------------------------------------------------------------

def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError) as err:
        load_spec(tmp_path / "nope.yaml")
    assert err.value.problems == ["file not found"]


def test_invalid_yaml_is_a_spec_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert "YAML" in err.value.problems[0]


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_yaml_that_is_not_a_mapping_is_a_spec_error(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert "mapping" in err.value.problems[0]


def test_spec_error_message_names_the_file_and_each_problem(tmp_path, clinical_raw):
    raw = dict(_without_profiles(clinical_raw), name="Bad Name", grader={"type": "vibes"})
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert str(path) in message
    assert "2 problem(s)" in message
    assert "name" in message and "grader.type" in message


def test_spec_error_survives_pickling():
    err = SpecError("task.yaml", ["name: bad", "seeds: Field required"])
    back = pickle.loads(pickle.dumps(err))
    assert back.path == "task.yaml" and back.problems == err.problems and str(back) == str(err)


# ---- labels with descriptions ------------------------------------------------------------------

def _described(raw: dict) -> dict:
    raw = _without_profiles(raw)
    labels = raw["output"]["labels"]
    raw["output"] = dict(raw["output"], labels=[{"name": labels[0], "description": "high blood sugar,  insulin"},
                                                 {"name": labels[1]}, *labels[2:]])
    return raw


def test_labels_may_carry_descriptions_and_stay_a_list_of_names(clinical_raw):
    spec = parse_spec(_described(clinical_raw))
    assert spec.output.labels == clinical_raw["output"]["labels"]
    assert spec.output.label_descriptions == {"Type 1 diabetes": "high blood sugar, insulin"}
    assert spec.output.described("Type 1 diabetes") == "Type 1 diabetes (high blood sugar, insulin)"
    assert spec.output.described("Migraine") == "Migraine"


def test_a_label_entry_with_other_keys_or_no_name_is_a_spec_error(clinical_raw):
    raw = _without_profiles(clinical_raw)
    raw["output"] = dict(raw["output"], labels=[{"name": "a", "meaning": "x"}, {"description": "no name"}, "c"])
    problems = _problems(raw)
    assert any("output" in p and "meaning" in p for p in problems)


def test_a_description_of_a_label_not_in_the_set_is_a_spec_error(clinical_raw):
    raw = _without_profiles(clinical_raw)
    raw["output"] = dict(raw["output"], label_descriptions={"Gout": "joints"})
    assert any("Gout" in p for p in _problems(raw))


def test_a_spec_without_descriptions_hashes_as_it_did_before_descriptions_existed(clinical_raw):
    spec = parse_spec(_without_profiles(clinical_raw))
    assert "label_descriptions" not in spec.output.model_dump()  # prompt_hash and cache keys unchanged
    assert "label_descriptions" in parse_spec(_described(clinical_raw)).output.model_dump()
