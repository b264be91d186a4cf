"""`b6lab eval` on checkpoints trained here: loss, perplexity and bits per byte on any data source,
multiple-choice tasks scored as lm-evaluation-harness scores them, and the lm-eval model `b6lab`."""

import importlib.util
import inspect
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from b6lab.cli import main
from b6lab.generate import load_for_sampling
from b6lab.multiple_choice import read_task
from b6lab.plugins.tokenizers import ByteTokenizer
from b6lab.scoring import encode_pair, loglikelihoods
from b6lab.train.records import read_metrics

SEQ_LEN = 64  # the tiny preset's max_seq_len


def corpus_text() -> str:
    """Real text that needs no download: the sources of a few standard-library modules."""
    import argparse
    import json as json_module
    import textwrap as textwrap_module

    return "".join(inspect.getsource(m) for m in (argparse, json_module, textwrap_module))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_run):
    """A tiny run trained in fp32 on a local text file, so that evaluation can reproduce its figures exactly."""
    root = tmp_path_factory.mktemp("eval")
    corpus = root / "corpus.txt"
    corpus.write_text(corpus_text())
    tiny_run.train(root / "run", "train.precision=fp32", "data.source=text", f"data.path={corpus}", max_steps=8,
                   eval_interval=8)
    return root / "run"


def eval_cli(capsys, *args):
    code = main(["eval", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_eval_reproduces_the_runs_own_validation_loss(trained, capsys):
    code, out, err = eval_cli(capsys, trained, "--set", "train.eval_steps=2", "--json")
    assert code == 0, err
    figures = json.loads(out)
    recorded = [r["val_loss"] for r in read_metrics(trained / "metrics.jsonl") if "val_loss" in r][-1]
    assert figures["loss"] == pytest.approx(recorded, abs=1e-5)
    assert figures["batches"] == 2 and figures["tokens"] == 2 * 8 * SEQ_LEN and figures["split"] == "val"
    assert figures["perplexity"] == pytest.approx(math.exp(figures["loss"]))
    # byte tokens: every target is one byte except the end-of-text ones, which count none
    assert figures["bits_per_byte"] == pytest.approx(figures["loss"] * figures["tokens"] / (math.log(2) * figures["bytes"]))
    assert figures["tokens"] - 2 <= figures["bytes"] <= figures["tokens"]
    assert "eval: 2 batches" in err  # the progress line of a stdout that is not a terminal


def test_eval_reads_a_whole_other_file_and_prints_a_table(trained, tmp_path, capsys):
    text = "The quick brown fox jumps over the lazy dog.\n" * 40
    (tmp_path / "test.txt").write_text(text)
    code, out, err = eval_cli(capsys, trained / "checkpoints" / "best", "--set", "data.path=" + str(tmp_path / "test.txt"),
                              "--split", "all")
    assert code == 0, err
    rows = dict(line.split(None, 1) for line in out.splitlines())
    assert str(tmp_path / "test.txt") in rows["data"] and "(all split)" in rows["data"]
    # the whole file: its training part and its validation part, each ended by an end-of-text token,
    # in blocks of SEQ_LEN + 1 tokens that overlap by one
    blocks = (len(text) + 2 - 1) // SEQ_LEN
    assert rows["read"].startswith(f"{blocks * SEQ_LEN:,} tokens")
    assert float(rows["loss"].split()[0]) > 0 and float(rows["bits/byte"]) > 0


def test_a_new_data_source_drops_the_old_sources_options(trained, capsys):
    # the run read data.source=text with data.path; python-stdlib takes no path
    code, out, err = eval_cli(capsys, trained, "--set", "data.source=python-stdlib", "--max-batches", "1", "--json")
    assert code == 0, err
    figures = json.loads(out)
    assert figures["data"].startswith("python-stdlib") and figures["batches"] == 1


@pytest.mark.parametrize("args, message", [
    (["{tmp}"], "is not a checkpoint"),
    (["{run}", "--set", "model.d_model=32"], "model.d_model: an evaluation can only set data.*"),
    (["{run}", "--set", "data.tokenizer=bpe"], "the tokenizer is the checkpoint's own"),
    (["{run}", "--set", "data.path={tmp}/missing.txt"], "missing.txt"),
    (["{run}", "--max-batches", "0"], "--max-batches must be at least 1"),
    (["{run}", "--task", "{tmp}/none.jsonl"], "task file"),
])
def test_bad_input_is_one_line_and_exit_status_2(trained, tmp_path, capsys, args, message):
    code, out, err = eval_cli(capsys, *[a.format(tmp=tmp_path, run=trained) for a in args])
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_bad_task_line_is_named_by_its_number(trained, tmp_path, capsys):
    task = tmp_path / "task.jsonl"
    task.write_text('{"context": "a", "choices": ["b", "c"], "label": 0}\n\n{"context": "a", "choices": ["b", "c"], "label": 2}\n')
    code, _, err = eval_cli(capsys, trained, "--task", task)
    assert code == 2 and f"task file {task} line 3: the label must be the index of the right choice (0 to 1), got 2" in err
    task.write_text('{"context": "a", "choices": ["b", "c"], "label": 0}\nnot json\n')
    code, _, err = eval_cli(capsys, trained, "--task", task)
    assert code == 2 and "line 2: not JSON" in err


def test_hellaswag_lines_are_preprocessed_as_lm_eval_does(tmp_path):
    task = tmp_path / "hellaswag.jsonl"
    task.write_text(json.dumps({
        "ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
        "ctx_b": "then", "ctx": "unused", "endings": [", the man [title] adds wax.", " , the man  washes it."],
        "label": "1", "split": "val",
    }) + "\n")
    (question,) = read_task(task)
    assert question.context == "Removing ice from car: Then, the man writes over the snow. Then"
    assert question.choices == [", the man. adds wax.", ", the man washes it."]
    assert question.label == 1


@torch.no_grad()
def test_loglikelihoods_equal_a_forward_pass_per_request(trained):
    model, tokenizer, _ = load_for_sampling(trained, "cpu")
    requests = [encode_pair(tokenizer, "def main():\n   ", " return 0"), encode_pair(tokenizer, "import", " os"),
                encode_pair(tokenizer, "", "x = 1"), encode_pair(tokenizer, "y" * 100, " = 2")]  # the last one is cut
    assert requests[0][1] == tokenizer.encode("\n    return 0")  # the context's trailing whitespace moved over
    assert requests[2][0] == [ByteTokenizer.eos_id]
    scored = loglikelihoods(model, requests, max_length=SEQ_LEN, batch_size=3)
    for (context, continuation), (total, greedy) in zip(requests, scored):
        ids = (context + continuation)[-(SEQ_LEN + 1):]
        logprobs = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0], dim=-1)[-len(continuation):]
        expected = logprobs.gather(1, torch.tensor(continuation)[:, None]).sum().item()
        assert total == pytest.approx(expected, abs=1e-4)
        assert greedy == bool((logprobs.argmax(-1) == torch.tensor(continuation)).all())


QUESTIONS = [
    {"context": "import", "choices": ["os", "sys and re", "zzzz"], "label": 0},
    {"context": "def main():\n   ", "choices": ["return 0", "pass", "qq"], "label": 1},
    {"context": "The quick brown", "choices": ["fox", "dog jumps", "x"], "label": 0},
    {"context": "for i in", "choices": ["range(10):", "items:", "\u00e9t\u00e9"], "label": 0},
    {"context": "class Foo", "choices": ["(object):", ":", "Bar"], "label": 2},
    {"context": "x = [", "choices": ["1, 2, 3]", "]", "None"], "label": 1},
]


needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm-eval is not installed (pip install .[eval])")


def installed_python() -> str:
    """This interpreter, once b6lab's install put its lm-eval hook next to it (pyproject.toml's force-include)."""
    assert importlib.util.find_spec("_b6lab_lm_eval_hook"), "b6lab's lm-eval hook is not installed: pip install -e ."
    return sys.executable


@needs_lm_eval
def test_lm_eval_finds_the_b6lab_model_lazily_and_its_own_models_still(tmp_path):
    probe = ("import sys; from lm_eval.api.registry import get_model; "
             "print(get_model('dummy').__name__, 'b6lab.lm_eval_model' in sys.modules, get_model('b6lab').__name__)")
    result = subprocess.run([installed_python(), "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["DummyLM", "False", "B6LabLM"]


@pytest.mark.slow
@needs_lm_eval
def test_task_accuracy_matches_lm_eval_and_the_b6lab_model_runs_every_request_type(trained, tmp_path, capsys):
    task = tmp_path / "mc.jsonl"
    task.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": corpus_text()[i * 300:(i + 1) * 300]}) + "\n" for i in range(3)))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    # Tasks defined from local files: the `json` builder reads them, nothing is downloaded.
    definitions = {
        "mc": {"output_type": "multiple_choice", "validation_split": "validation", "files": {"validation": str(task)},
               "doc_to_text": "{{context}}", "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}",
               "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]},
        "rolling": {"output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
                    "metric_list": [{"metric": "bits_per_byte"}]},
        "gen": {"output_type": "generate_until", "doc_to_text": "{{text}}", "doc_to_target": "x",
                "generation_kwargs": {"until": ["\n\n"], "max_gen_toks": 8}, "metric_list": [{"metric": "exact_match"}]},
    }
    for name, definition in definitions.items():
        files = definition.pop("files", {"test": str(texts)})
        split = {"test_split": "test"} if "test" in files else {}
        (tasks / f"{name}.yaml").write_text(yaml.safe_dump({
            "task": f"b6lab_test_{name}", "dataset_path": "json", "dataset_kwargs": {"data_files": files}, **split, **definition,
        }))
    result = subprocess.run(
        # lm-eval's own command, as a user runs it: `lm_eval --model b6lab ...`
        [str(Path(installed_python()).parent / "lm_eval"), "--model", "b6lab", "--model_args", f"checkpoint={trained}",
         "--tasks", "b6lab_test_mc,b6lab_test_rolling,b6lab_test_gen", "--include_path", str(tasks),
         "--device", "cpu", "--batch_size", "4", "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    code, out, err = eval_cli(capsys, trained, "--task", task, "--json")
    assert code == 0, err
    ours = json.loads(out)
    assert ours["questions"] == len(QUESTIONS)
    assert ours["acc"] == pytest.approx(results["b6lab_test_mc"]["acc,none"])
    assert ours["acc_norm"] == pytest.approx(results["b6lab_test_mc"]["acc_norm,none"])
    assert ours["acc_stderr"] == pytest.approx(results["b6lab_test_mc"]["acc_stderr,none"])
    assert 0 < results["b6lab_test_rolling"]["bits_per_byte,none"] < 20
    assert "exact_match,none" in results["b6lab_test_gen"]
