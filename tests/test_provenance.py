"""config.yaml records the b6lab git commit (and whether the package's files differ) when run from a checkout."""

import subprocess

import yaml

from b6lab.train import provenance
from b6lab.train.provenance import b6lab_git


def git(folder, *args):
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, text=True).stdout.strip()


def checkout(tmp_path):
    repo = tmp_path / "repo"
    (repo / "b6lab").mkdir(parents=True)
    (repo / "b6lab" / "__init__.py").write_text("__version__ = '0'\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    return repo


def test_a_clean_checkout_gives_its_commit(tmp_path):
    repo = checkout(tmp_path)
    assert b6lab_git(repo / "b6lab") == {"commit": git(repo, "rev-parse", "HEAD"), "dirty": False}


def test_changed_or_new_package_files_make_it_dirty_other_files_do_not(tmp_path):
    repo = checkout(tmp_path)
    (repo / "notes.txt").write_text("outside the package\n")
    assert b6lab_git(repo / "b6lab")["dirty"] is False
    (repo / "b6lab" / "plugin.py").write_text("x = 1\n")
    assert b6lab_git(repo / "b6lab")["dirty"] is True


def test_no_checkout_or_someone_elses_checkout_gives_nothing(tmp_path):
    (tmp_path / "b6lab").mkdir()
    assert b6lab_git(tmp_path / "b6lab") is None
    repo = checkout(tmp_path)
    installed = repo / "venv" / "site-packages" / "b6lab"  # an installed copy inside another project
    installed.mkdir(parents=True)
    assert b6lab_git(installed) is None


def test_config_yaml_records_it(tmp_path):
    from b6lab.config import load_config
    from b6lab.train.trainer import Trainer

    cfg = load_config(preset="tiny", overrides=["logging.progress=false", "train.max_steps=1", "train.eval_steps=1"])
    Trainer(cfg, tmp_path / "run", say=lambda message: None)
    record = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["run"]
    expected = b6lab_git()
    assert record.get("b6lab_git") == expected
    if (provenance.PACKAGE.parent / ".git").exists():  # the tests run from a checkout: it is recorded
        assert len(expected["commit"]) == 40
