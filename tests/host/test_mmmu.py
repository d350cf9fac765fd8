"""MMMU scoring: every parser branch, the shared random fallback in the official order, the micro averages
worked by hand, the bad-file messages, and `kit mmmu score` as a user runs it."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cases.llava1_5_7b.plugin import CASE
from cases.llava1_5_7b.plugin import scoring as mmmu
from kit.commands.score import group

app = group(CASE.scorer)  # `kit mmmu`: the case's scorer as the host's command group

runner = CliRunner()
ABCD = ["A", "B", "C", "D"]
COLOURS = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}


def mc(qid: str, response: str, answer="A", index2ans=None) -> dict:
    index2ans = index2ans or COLOURS
    return {"id": qid, "question_type": "multiple-choice", "answer": answer, "all_choices": list(index2ans),
            "index2ans": index2ans, "response": response}  # fmt: skip


def op(qid: str, response: str, answer) -> dict:
    return {"id": qid, "question_type": "open", "answer": answer, "response": response}


def cands(response: str, index2ans=None) -> tuple[str | None, str]:
    index2ans = index2ans or COLOURS
    return mmmu.mc_candidates(response, list(index2ans), index2ans)


# ------------------------------------------------------------------------------------- tables and ids


def test_subjects_disciplines_and_official_order():
    assert len(mmmu.SUBJECT_ORDER) == 30 and len(set(mmmu.SUBJECT_ORDER)) == 30
    assert sorted(s for ss in mmmu.DISCIPLINES.values() for s in ss) == sorted(mmmu.SUBJECT_ORDER)
    assert [len(v) for v in mmmu.DISCIPLINES.values()] == [4, 5, 5, 5, 4, 7]
    assert mmmu.SUBJECT_ORDER[:5] == ("Accounting", "Agriculture", "Architecture_and_Engineering", "Art", "Art_Theory")
    assert mmmu.SUBJECT_ORDER[-4:] == ("Physics", "Psychology", "Public_Health", "Sociology")
    i = mmmu.SUBJECT_ORDER.index
    assert i("Manage") < i("Marketing") < i("Materials") < i("Math") < i("Mechanical_Engineering")


def test_ids_split_at_both_ends_and_sort_numerically():
    assert mmmu.split_id("validation_Basic_Medical_Science_12") == ("Basic_Medical_Science", 12)
    ids = ["validation_Art_10", "validation_Art_2", "validation_Accounting_30"]
    assert sorted(ids, key=mmmu.order_key) == ["validation_Accounting_30", "validation_Art_2", "validation_Art_10"]
    with pytest.raises(mmmu.MMMUError, match="unknown subject 'Astrology'"):
        mmmu.split_id("validation_Astrology_1")
    with pytest.raises(mmmu.MMMUError, match="not of the form"):
        mmmu.split_id("Art_x")


def test_parse_options_and_choices():
    options = mmmu.parse_options("['$6', \"it's 7\", '8']", "validation_Math_1")
    assert options == ["$6", "it's 7", "8"]
    assert mmmu.choices_for(options) == ({"A": "$6", "B": "it's 7", "C": "8"}, ["A", "B", "C"])
    with pytest.raises(mmmu.MMMUError, match="validation_Math_3.*not a Python-style list"):
        mmmu.parse_options("['a', 'b'", "validation_Math_3")
    with pytest.raises(mmmu.MMMUError, match="validation_Math_4.*not a list of strings"):
        mmmu.parse_options("{'a': 1}", "validation_Math_4")


# ------------------------------------------------------------------------------------ multiple choice


def test_bracket_candidate():
    assert cands("The answer is (B).") == ("B", "bracket")
    assert cands("(A) B") == ("A", "bracket")  # brackets found: spaces are not looked at


def test_space_candidate():
    assert cands("B") == ("B", "space")
    assert cands("I think B is right") == ("B", "space")
    assert cands("b") == (None, "random")  # letters are case-sensitive


def test_option_text_needs_more_than_five_words():
    assert cands("I believe the colour is green here") == ("C", "option_text")
    assert cands("the colour is green here") == (None, "random")  # exactly five words
    assert cands("I believe the colour is GREEN here") == ("C", "option_text")  # text compared lower-cased


def test_several_candidates_last_occurrence_wins():
    assert cands("(C) looks right, but (A) is it") == ("A", "bracket")
    assert cands("(A) looks right, but (C) is it") == ("C", "bracket")
    assert cands("A or D") == ("D", "space")
    assert cands("D or A") == ("A", "space")
    assert cands("it is not blue at all, it is red") == ("A", "option_text")
    assert cands("it is not red at all, it is blue") == ("B", "option_text")
    # Two option texts ending at the same place start at the same index: the first candidate wins.
    dog = {"A": "dog", "B": "dog house"}
    assert cands("the answer must be the dog house here", dog) == ("A", "option_text")


def test_punctuation_is_stripped_one_character_at_a_time():
    assert cands("B.") == ("B", "space")
    assert cands("'C'") == ("C", "space")
    assert cands("?D!") == ("D", "space")
    assert cands("B.,") == ("B", "space")  # "," then "." are stripped in that order
    assert cands("B,.") == (None, "random")  # "," is tried before "." uncovers it, so " B, " stays


def test_parse_multi_choice_draws_only_when_nothing_found():
    rng, ref = random.Random(42), random.Random(42)
    assert mmmu.parse_multi_choice("(C)", ABCD, COLOURS, rng) == "C"
    assert mmmu.parse_multi_choice("no idea", ABCD, COLOURS, rng) == ref.choice(ABCD)
    assert rng.random() == ref.random()  # exactly one draw consumed


def test_random_fallback_follows_the_official_order_across_subjects():
    three = {"A": "x", "B": "y", "C": "z"}
    five = {"A": "p", "B": "q", "C": "r", "D": "s", "E": "t"}
    scrambled = [
        mc("validation_Physics_2", "hmm", index2ans=five),
        mc("validation_Accounting_10", "hmm"),
        mc("validation_Art_Theory_1", "hmm", index2ans=three),
        op("validation_Math_1", "hmm", "7"),  # open questions never draw
        mc("validation_Accounting_2", "hmm", index2ans=five),
        mc("validation_Art_1", "(B)"),  # a letter was found: no draw
        mc("validation_Agriculture_3", "hmm", index2ans=three),
        mc("validation_Art_2", "hmm"),
    ]
    drawing = [  # the official order: acc, agri, art, art_theory, math, phys; numeric ids (2 before 10)
        ("validation_Accounting_2", "ABCDE"),
        ("validation_Accounting_10", "ABCD"),
        ("validation_Agriculture_3", "ABC"),
        ("validation_Art_2", "ABCD"),
        ("validation_Art_Theory_1", "ABC"),
        ("validation_Physics_2", "ABCDE"),
    ]
    rng = random.Random(42)
    expected = {qid: rng.choice(list(letters)) for qid, letters in drawing}
    # The test must tell orders apart: drawing in input order would assign different letters.
    rng = random.Random(42)
    letters_of = dict(drawing)
    in_input_order = {r["id"]: rng.choice(list(letters_of[r["id"]])) for r in scrambled if r["id"] in letters_of}
    assert in_input_order != expected

    result = mmmu.score(scrambled)
    got = {q["id"]: q["parsed_pred"] for q in result["questions"] if q["parse"] == "random"}
    assert got == expected
    assert [q["id"] for q in result["questions"]] == [
        "validation_Accounting_2", "validation_Accounting_10", "validation_Agriculture_3", "validation_Art_1",
        "validation_Art_2", "validation_Art_Theory_1", "validation_Math_1", "validation_Physics_2",
    ]  # fmt: skip
    assert result["random_fallbacks"] == 6
    assert mmmu.score(list(reversed(scrambled))) == result  # input order never matters


def test_options_field_builds_the_choices():
    rec = {"id": "validation_Art_1", "question_type": "multiple-choice", "answer": "B",
           "options": "['oil on canvas', 'fresco']", "response": "It was painted as a fresco on a wall"}  # fmt: skip
    q = mmmu.score([rec])["questions"][0]
    assert (q["parsed_pred"], q["parse"], q["correct"]) == ("B", "option_text", True)


def test_multiple_choice_gold_list():
    assert mmmu.judge_multi_choice(["A", "C"], "C")
    assert not mmmu.judge_multi_choice(["A", "C"], "B")
    assert mmmu.judge_multi_choice("B", "B") and not mmmu.judge_multi_choice("B", "BA")


# ----------------------------------------------------------------------------------------------- open


def test_numbers_commas_exponents_and_plain():
    text = "between 2E5 and 1.5e-3, not 1,234,567, nor 1,234, then 3.14, -7, .5 and 1,2345"
    assert mmmu.extract_numbers(text) == ["2E5", "1.5e-3", "1,234,567", "1,234", "3.14", "-7", ".5", "1", "2345"]
    assert mmmu.normalize("1,234") == [1234.0]
    assert mmmu.normalize("2E5") == [200000.0]
    assert mmmu.normalize("1.5e-3") == [0.0]  # rounded to 2 places
    assert mmmu.normalize(" 3.14159 ") == [3.14]


def test_normalize_strings_and_single_characters():
    assert mmmu.normalize("  Paris ") == ["paris"]
    assert mmmu.normalize("C") == [" c", "c "]
    assert mmmu.parse_open("C") == [" c", "c "]


def test_open_takes_the_shortest_tail_after_an_indicator():
    assert mmmu.parse_open("The answer is 42.") == [42.0]
    # "therefore " -> "the result is 7 apples", "result " -> "is 7 apples", "is " -> "7 apples": shortest wins.
    assert mmmu.parse_open("Therefore the result is 7 apples") == ["7 apples", 7.0]
    assert mmmu.parse_open("It could be Paris, France") == ["paris, france"]


def test_open_splits_on_newlines_only():
    resp = "Step 1: x is 5\nTherefore the result is 7 apples"
    assert mmmu.parse_open(resp) == [5.0, "7 apples", 7.0]
    # ". " before a capital does not split (the official regex runs after lower-casing).
    assert mmmu.parse_open("The total is 5. So it is 6") == [6.0]
    assert mmmu.open_key_responses("The total is 5. So it is 6") == (["6"], True)


def test_equals_counts_only_in_the_last_piece():
    assert mmmu.parse_open("x = 3") == [3.0]
    assert mmmu.parse_open("x = 3\ny = 4") == [4.0]
    # "=" in an earlier piece is no indicator; with none anywhere the whole response is the key.
    assert mmmu.parse_open("x = 3\nok") == ["x = 3\nok", 3.0]


def test_open_without_indicator_uses_the_whole_response():
    assert mmmu.parse_open("  Mitochondria.  ") == ["mitochondria"]
    assert mmmu.open_key_responses("1,234 kg") == (["1,234 kg"], False)
    assert mmmu.parse_open("1,234 kg") == ["1,234 kg", 1234.0]


def test_bare_punctuation_tail_drops_the_piece():
    assert mmmu.parse_open("it is 5\nthe answer is ;") == [5.0]
    # Every tail bare punctuation: nothing kept, so the whole (cleaned) response is the key.
    assert mmmu.parse_open("The answer is :") == ["the answer is :"]


def test_judge_open():
    assert mmmu.judge_open("Paris", mmmu.parse_open("The capital is Paris, France"))
    assert mmmu.judge_open("1234", mmmu.parse_open("so the mass is 1,234 kg"))
    assert mmmu.judge_open("3.14159", mmmu.parse_open("pi is 3.14"))
    assert not mmmu.judge_open("3.2", mmmu.parse_open("pi is 3.14"))
    # A one-letter gold matches only at a word edge.
    assert mmmu.judge_open("c", mmmu.parse_open("c"))
    assert mmmu.judge_open("c", mmmu.parse_open("the answer is c and not d"))
    assert not mmmu.judge_open("c", mmmu.parse_open("abc"))


def test_open_gold_list():
    gold = ["3.75", "three and three quarters"]
    assert mmmu.judge_open(gold, mmmu.parse_open("it is 3.75"))
    assert mmmu.judge_open(gold, mmmu.parse_open("Three and three quarters"))
    assert not mmmu.judge_open(gold, mmmu.parse_open("it is 4"))


# ---------------------------------------------------------------------------------------- aggregation


def hand_records() -> list[dict]:
    """Art 1/2, Design 1/1, Accounting 1/4 (one of them open): micro and macro averages all differ."""
    return [
        mc("validation_Art_1", "(A)"),
        mc("validation_Art_2", "(B)"),
        mc("validation_Design_1", "(A)"),
        mc("validation_Accounting_1", "(A)"),
        mc("validation_Accounting_2", "(B)"),
        mc("validation_Accounting_3", "(C)"),
        op("validation_Accounting_4", "The answer is 12", "13"),
    ]


def test_micro_averages_by_hand():
    r = mmmu.score(hand_records())
    assert {s: (v["correct"], v["num"]) for s, v in r["subjects"].items()} == {
        "Accounting": (1, 4), "Art": (1, 2), "Design": (1, 1),
    }  # fmt: skip
    assert r["subjects"]["Art"]["accuracy"] == 0.5 and r["subjects"]["Accounting"]["accuracy"] == 0.25
    assert r["disciplines"]["Art and Design"] == {"accuracy": 2 / 3, "correct": 2, "num": 3, "subjects": ["Art", "Design"]}
    assert r["disciplines"]["Business"] == {"accuracy": 1 / 4, "correct": 1, "num": 4, "subjects": ["Accounting"]}
    assert list(r["disciplines"]) == ["Art and Design", "Business"]  # only disciplines present
    assert (r["overall"], r["correct"], r["num"]) == (3 / 7, 3, 7)  # micro; the macro mean would be 11/24
    assert r["question_types"] == {
        "multiple-choice": {"accuracy": 0.5, "correct": 3, "num": 6},
        "open": {"accuracy": 0.0, "correct": 0, "num": 1},
    }
    assert r["random_fallbacks"] == 0


def test_write_outputs(tmp_path):
    result = mmmu.score(hand_records())
    paths = mmmu.write_outputs(tmp_path / "out", result)
    assert sorted(p.name for p in paths.values()) == sorted(mmmu.OUTPUT_FILES)
    preds = [json.loads(line) for line in (tmp_path / "out/predictions.jsonl").read_text().splitlines()]
    assert preds[0] == {"id": "validation_Accounting_1", "subject": "Accounting", "question_type": "multiple-choice",
                        "parsed_pred": "A", "parse": "bracket"}  # fmt: skip
    assert preds[3]["parsed_pred"] == [12.0]
    judged = [json.loads(line) for line in (tmp_path / "out/judgements.jsonl").read_text().splitlines()]
    assert [j["correct"] for j in judged] == [True, False, False, False, True, False, True]
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["overall"] == 3 / 7 and "questions" not in summary
    md = (tmp_path / "out/disciplines.md").read_text()
    assert "## Art and Design: 66.67%" in md and "| Accounting | 1 | 4 | 25.00% |" in md
    assert "| **overall** | **3** | **7** | **42.86%** |" in md
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_write_outputs_never_overwrites_raw_responses(tmp_path):
    raw = tmp_path / "predictions.jsonl"
    raw.write_text("raw\n")
    with pytest.raises(mmmu.MMMUError, match="raw responses"):
        mmmu.write_outputs(tmp_path, mmmu.score(hand_records()), protect=[raw])
    assert raw.read_text() == "raw\n" and sorted(p.name for p in tmp_path.iterdir()) == ["predictions.jsonl"]


# --------------------------------------------------------------------------------------------- errors


def write(tmp_path, obj, name="responses.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_bad_files_are_named_with_record_and_field(tmp_path):
    with pytest.raises(mmmu.MMMUError, match=r"responses.json: not valid JSON"):
        mmmu.load_predictions(write(tmp_path, "[{"))
    with pytest.raises(mmmu.MMMUError, match=r"responses.json: expected a JSON list .* found a dict"):
        mmmu.load_predictions(write(tmp_path, {"validation_Art_1": "A"}))
    recs = hand_records()
    del recs[1]["response"]
    with pytest.raises(mmmu.MMMUError, match=r"responses.json: record 1 \(id validation_Art_2\): missing field 'response'"):
        mmmu.load_predictions(write(tmp_path, recs))
    recs = hand_records()
    del recs[2]["index2ans"]
    with pytest.raises(mmmu.MMMUError, match=r"record 2 \(id validation_Design_1\): missing field 'index2ans'"):
        mmmu.load_predictions(write(tmp_path, recs))
    recs = hand_records()
    recs[0]["question_type"] = None  # a type that is not even a string (any string is a type: open unless MC)
    with pytest.raises(mmmu.MMMUError, match=r"record 0 \(id validation_Art_1\): field 'question_type' must be a string"):
        mmmu.load_predictions(write(tmp_path, recs))
    recs = [{"id": "validation_Art_1", "question_type": "multiple-choice", "answer": "A", "options": "['a',",
             "response": "A"}]  # fmt: skip
    with pytest.raises(mmmu.MMMUError, match=r"record 0 \(id validation_Art_1\): field 'options'.*validation_Art_1"):
        mmmu.load_predictions(write(tmp_path, recs))
    with pytest.raises(mmmu.MMMUError, match=r"record 3: expected an object, found str"):
        mmmu.load_predictions(write(tmp_path, hand_records()[:3] + ["x"]))
    with pytest.raises(mmmu.MMMUError, match=r"nope.json: no such file"):
        mmmu.load_predictions(tmp_path / "nope.json")
    with pytest.raises(mmmu.MMMUError, match=r"record 1 \(id validation_Art_1\): id validation_Art_1 repeats record 0"):
        mmmu.score([mc("validation_Art_1", "A"), mc("validation_Art_1", "B")])
    with pytest.raises(mmmu.MMMUError, match=r"dup.json: record 1 \(id validation_Art_1\): id validation_Art_1 repeats"):
        mmmu.load_predictions(write(tmp_path, [mc("validation_Art_1", "A"), mc("validation_Art_1", "B")], "dup.json"))


def test_jsonl_responses_are_read_too(tmp_path):
    path = write(tmp_path, "".join(json.dumps(r) + "\n" for r in hand_records()), "responses.jsonl")
    assert mmmu.score(mmmu.load_predictions(path)) == mmmu.score(hand_records())


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_table(tmp_path):
    path = write(tmp_path, hand_records())
    r = runner.invoke(app, ["score", str(path)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "Art and Design" in r.output and "66.67%" in r.output and "42.86%" in r.output
    assert "Accounting" not in r.output
    r = runner.invoke(app, ["score", str(path), "--subjects"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "Accounting" in r.output and "25.00%" in r.output


def test_cli_json_and_out(tmp_path):
    path = write(tmp_path, hand_records())
    r = runner.invoke(app, ["score", str(path), "--json", "--out", str(tmp_path / "scored")])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["overall"] == 3 / 7 and data["disciplines"]["Business"]["num"] == 4
    assert data["subjects"]["Design"]["accuracy"] == 1.0 and "questions" not in data
    assert sorted(p.name for p in (tmp_path / "scored").iterdir()) == sorted(mmmu.OUTPUT_FILES)


def test_cli_bad_file_exits_2(tmp_path):
    recs = hand_records()
    del recs[4]["answer"]
    r = runner.invoke(app, ["score", str(write(tmp_path, recs))], env={"COLUMNS": "300"})
    assert r.exit_code == 2
    assert "record 4 (id validation_Accounting_2): missing field 'answer'" in r.output
    r = runner.invoke(app, ["score", str(write(tmp_path, "not json"))])
    assert r.exit_code == 2 and "not valid JSON" in r.output


def test_cli_refuses_to_write_over_the_raw_responses(tmp_path):
    raw = write(tmp_path, "".join(json.dumps(r) + "\n" for r in hand_records()), "predictions.jsonl")
    before = raw.read_text()
    r = runner.invoke(app, ["score", str(raw), "--out", str(tmp_path)], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and "raw responses" in r.output
    assert raw.read_text() == before


def test_cli_help_has_examples():
    for args in (["--help"], ["score", "--help"]):
        r = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert r.exit_code == 0 and "Example" in r.output and "kit mmmu score" in r.output


def test_scorer_is_standard_library_only():
    code = (
        "import sys, cases.llava1_5_7b.plugin.scoring\n"
        "bad = sorted(m for m in ('typer', 'rich', 'torch', 'transformers', 'deepspeed', 'numpy') if m in sys.modules)\n"
        "assert not bad, bad\n"
        "import kit.commands.score\n"
        "bad = sorted(m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules)\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------- the official repository's types, duplicates, help


def official_style_records() -> list[dict]:
    """Records shaped as the official repository's example outputs: open questions are "short-answer"."""
    return [
        mc("validation_Art_1", "(A)", "A"),
        mc("validation_Art_2", "B", "A"),
        {"id": "validation_Math_1", "question_type": "short-answer", "answer": "3.5", "response": "so it is 3.50"},
        {"id": "validation_Math_2", "question_type": "short-answer", "answer": "12", "response": "the answer is 13"},
        op("validation_Math_3", "therefore 7", "7"),
    ]


def test_short_answer_records_are_open_questions_as_the_official_scorer_has_them(tmp_path):
    result = mmmu.score(mmmu.load_predictions(write(tmp_path, official_style_records())))
    assert result["correct"] == 3 and result["num"] == 5
    assert result["question_types"] == {"multiple-choice": {"accuracy": 0.5, "correct": 1, "num": 2},
                                        "open": {"accuracy": 2 / 3, "correct": 2, "num": 3}}  # fmt: skip
    assert result["declared_types"] == {"multiple-choice": 2, "open": 1, "short-answer": 2}
    math1 = next(q for q in result["questions"] if q["id"] == "validation_Math_1")
    assert math1["question_type"] == "open" and math1["declared_type"] == "short-answer" and 3.5 in math1["parsed_pred"]
    mmmu.write_outputs(tmp_path / "out", result)
    md = (tmp_path / "out" / "disciplines.md").read_text()
    assert "Records by question type: 5: 2 multiple-choice, 1 open, 2 short-answer (scored as open)." in md
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["declared_types"]["short-answer"] == 2


def test_cli_scores_short_answer_and_says_how_many_of_each_type(tmp_path):
    r = runner.invoke(app, ["score", str(write(tmp_path, official_style_records()))], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "records by question type: 5: 2 multiple-choice, 1 open, 2 short-answer (scored as open)" in r.output
    assert "60.00%" in r.output


def test_cli_names_the_file_of_a_repeated_question(tmp_path):
    dup = write(tmp_path, [mc("validation_Art_1", "A"), mc("validation_Art_1", "B")], "dup.json")
    r = runner.invoke(app, ["score", str(dup)], env={"COLUMNS": "400"})
    assert r.exit_code == 2
    assert f"error: {dup}: record 1 (id validation_Art_1): id validation_Art_1 repeats record 0" in r.output


def test_cli_help_points_at_the_runs_eval_responses():
    for args in (["--help"], ["score", "--help"]):
        out = " ".join(runner.invoke(app, args, env={"COLUMNS": "200"}).output.split())
        assert "runs/RUN/eval/responses.json" in out and "runs/RUN/mmmu/" not in out
