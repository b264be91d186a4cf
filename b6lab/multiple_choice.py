"""Multiple-choice tasks from a local JSONL file, scored as lm-evaluation-harness scores them.

A line is one question: `{"context": str, "choices": [str, ...], "label": int}`. HellaSwag's own
lines (`ctx_a`, `ctx_b`, `activity_label`, `endings`, `label`, as in hellaswag_val.jsonl) are read
too and preprocessed exactly as lm-evaluation-harness's `hellaswag` task does, so the figures
are comparable to its 0-shot HellaSwag.

Each choice is scored by the summed log-likelihood of `target_delimiter + choice` after the
context (scoring.loglikelihoods). As in lm-evaluation-harness: `acc` counts the questions whose
most likely choice is the label; `acc_norm` divides each choice's log-likelihood by the choice's
length in characters first (the delimiter not counted); each comes with the standard error of
the mean (sample standard deviation / sqrt(n)).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from b6lab.errors import UsageError
from b6lab.scoring import encode_pair, loglikelihoods


@dataclass
class Question:
    context: str
    choices: list[str]
    label: int


def read_task(path: str | Path, limit: int | None = None) -> list[Question]:
    """The questions of a task file (the first `limit` of them); a bad line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"task file {path} not found")
    questions = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if limit is not None and len(questions) >= limit:
                break
            if not line.strip():
                continue
            try:
                questions.append(_question(json.loads(line)))
            except (ValueError, TypeError, KeyError) as exc:
                raise UsageError(f"task file {path} line {number}: {_why(exc)}; a line is "
                                 '{"context": str, "choices": [str, ...], "label": int} or a HellaSwag line '
                                 "(ctx_a, ctx_b, activity_label, endings, label)") from None
    if not questions:
        raise UsageError(f"task file {path} holds no questions")
    return questions


def _why(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r} field"
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON ({exc.msg})"
    return str(exc)


def _question(record) -> Question:
    if not isinstance(record, dict):
        raise TypeError(f"expected a JSON object, got {type(record).__name__}")
    if "endings" in record:  # a HellaSwag line
        context = _hellaswag_text(record["activity_label"] + ": " + record["ctx_a"] + " " + record["ctx_b"].capitalize())
        choices = [_hellaswag_text(ending) for ending in record["endings"]]
    else:
        context, choices = record["context"], record["choices"]
    if not isinstance(context, str):
        raise TypeError("the context must be a string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise TypeError("the choices must be a list of at least two non-empty strings")
    label = record["label"]
    if isinstance(label, str) and label.strip().isdigit():  # HellaSwag on the Hub keeps labels as strings
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise ValueError(f"the label must be the index of the right choice (0 to {len(choices) - 1}), got {label!r}")
    return Question(context, choices, label)


def _hellaswag_text(text: str) -> str:
    """lm-evaluation-harness's hellaswag `preprocess`: WikiHow's [title] markers become sentence ends,
    other bracketed markers go."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def evaluate_choices(model, tokenizer, questions: list[Question], *, max_length: int, batch_size: int = 16,
                     target_delimiter: str = " ", on_batch: Callable[[int, int], None] | None = None) -> dict:
    """acc and acc_norm (with their standard errors) of the model on the questions."""
    requests = [encode_pair(tokenizer, q.context, target_delimiter + choice) for q in questions for choice in q.choices]
    total = len(requests)
    scored = loglikelihoods(model, requests, max_length=max_length, batch_size=batch_size,
                            on_batch=(lambda done: on_batch(done, total)) if on_batch else None)
    correct, correct_norm, start = [], [], 0
    for q in questions:
        lls = np.array([ll for ll, _ in scored[start : start + len(q.choices)]])
        start += len(q.choices)
        correct.append(float(np.argmax(lls) == q.label))
        correct_norm.append(float(np.argmax(lls / np.array([len(c) for c in q.choices])) == q.label))
    return {
        "questions": len(questions),
        "acc": float(np.mean(correct)), "acc_stderr": _stderr(correct),
        "acc_norm": float(np.mean(correct_norm)), "acc_norm_stderr": _stderr(correct_norm),
    }


def _stderr(values: list[float]) -> float | None:
    """Standard error of the mean, as lm-evaluation-harness's mean_stderr."""
    if len(values) < 2:
        return None
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))
