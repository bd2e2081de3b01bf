"""An example `python` grader (spec: `grader: {type: python, path: grade_ranked.py}`).

`grade(sample, item) -> float` in [0, 1]. `sample` is the model's answer: `output_text` (the
completion as written), `output_json` (the parsed object, extraction tasks), `ranked` (the labels it
named, in order), `top` and `status` (ok, partial, failed); `item` holds the expert's `answer`.
It runs in a worker process with a time limit (`timeout_s`); raising, returning something that is
not a number in [0, 1], or running past the limit scores 0, and the reason is recorded.
This one gives ranked credit: 1.0 for the right label first, 0.5 second, 0 otherwise.
"""


def grade(sample: dict, item: dict) -> float:
    ranked, gold = sample["ranked"], item["answer"]
    if ranked[:1] == [gold]:
        return 1.0
    if ranked[1:2] == [gold]:
        return 0.5
    return 0.0
