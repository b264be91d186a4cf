"""`b6lab generate` and the hint `b6lab train` ends with: the hint's prompt is like the run's data,
and sampling past model.max_seq_len says once that RoPE is extrapolating, as transformers does."""

import warnings

import pytest
import yaml

import b6lab
from b6lab.cli import main
from b6lab.data.documents import split_text
from b6lab.generate import PastContextWarning, sample

PLAY = "".join(f"ROMEO:\nBut soft, what light through yonder window breaks, line {i}?\n\n" for i in range(400))


@pytest.fixture(scope="module")
def shakespeare_run(tmp_path_factory):
    """A tiny run on a local play, as `b6lab train` prints it."""
    folder = tmp_path_factory.mktemp("play")
    (folder / "play.txt").write_text(PLAY)
    sets = ["data.source=text", f"data.path={folder / 'play.txt'}", "train.max_steps=4", "train.eval_interval=4",
            "train.eval_steps=1", "logging.progress=false", "model.max_seq_len=32", "data.seq_len=32",
            f"train.out_dir={folder / 'run'}", "train.threads=1"]
    return folder / "run", sets


def test_the_hint_after_a_run_prompts_with_the_start_of_a_validation_document(shakespeare_run, capsys):
    run, sets = shakespeare_run
    assert main(["train", "--preset", "tiny", *[f"--set={s}" for s in sets]]) == 0
    hint = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("sample from it"))
    # A single .txt file validates on its last part, from a line break on: here a line of the speech.
    val_fraction = yaml.safe_load((run / "config.yaml").read_text())["data"]["val_fraction"]
    first_line = split_text(PLAY, "val", val_fraction).splitlines()[0]
    assert first_line.startswith("But soft, what light")
    assert hint == f"sample from it: b6lab generate {run}/checkpoints/best --prompt 'But soft, what '"


def test_generating_past_max_seq_len_warns_once(shakespeare_run, capsys):
    run, _ = shakespeare_run
    assert main(["generate", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "60", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: generating past the model's max_seq_len (32 positions") == 1
    assert err.strip().startswith("b6lab generate: warning:") and len(err.strip().splitlines()) == 1
    # Within the context, no warning; from Python it is a PastContextWarning when the 33rd position comes.
    assert main(["generate", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "20", "--device", "cpu"]) == 0
    assert "warning" not in capsys.readouterr().err
    model, tokenizer = b6lab.load(run, device="cpu")
    prompt = tokenizer.encode("ROMEO:")  # 6 bytes: tokens 27.. sit at positions 32..
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokens = sample(model, prompt, max_new_tokens=40, temperature=0.0)
        assert len([next(tokens) for _ in range(26)]) == 26 and not caught  # positions 6..31
        next(tokens)  # position 32: the text is now longer than any the model saw
        assert [w.category for w in caught] == [PastContextWarning]
        list(tokens)
    assert len(caught) == 1
