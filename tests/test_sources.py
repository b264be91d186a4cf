"""Dataset plugins: local files in every format, the hf source, the named corpora, and their errors.

Every fixture file is generated here, in tmp_path. The Hugging Face Hub cannot be reached from
the test machines, so Hub sources are checked by the exact `load_dataset` call they would make
and by the error they raise with HF_HUB_OFFLINE=1 (tests/conftest.py sets it).
"""

import gzip
import json
import pickle
import random
import sysconfig
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from b6lab import parts, registry
from b6lab.config import load_config
from b6lab.data.documents import in_split, split_text
from b6lab.data.hub import hub_offline
from b6lab.data.sources import TEXT_PIECE_CHARS, HubDataset, LocalFiles
from b6lab.errors import ConfigError, DataError

VAL_FRACTION = 0.2
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards hex jolly zebras in café Zürich".split()


def make_documents(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"document {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) for i in range(count)]


def write_jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: doc, "id": i}) + "\n" for i, doc in enumerate(docs)), encoding="utf-8")
    return path


def write_jsonl_zst(path, docs, field="text"):
    lines = "".join(json.dumps({field: doc, "meta": {"n": i}}) + "\n" for i, doc in enumerate(docs))
    path.write_bytes(zstandard.ZstdCompressor().compress(lines.encode("utf-8")))
    return path


def write_json_gz(path, docs, field="text"):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({field: doc}) + "\n" for doc in docs)
    return path


def write_parquet(path, docs, field="text"):
    pq.write_table(pa.table({field: docs, "length": [len(d) for d in docs]}), path)
    return path


def write_txt_folder(folder, docs, field="text"):
    folder.mkdir()
    for i, doc in enumerate(docs):
        (folder / f"doc-{i:03d}.txt").write_text(doc, encoding="utf-8")
    return folder


# name -> (file name, writer): one file (or, for .txt, a folder of files) holding a corpus.
FORMATS = {
    "jsonl": ("corpus.jsonl", write_jsonl),
    "jsonl.zst": ("corpus.jsonl.zst", write_jsonl_zst),
    "json.gz": ("corpus.json.gz", write_json_gz),
    "parquet": ("corpus.parquet", write_parquet),
    "txt folder": ("books", write_txt_folder),
}


def write_format(fmt: str, tmp_path, docs, field="text"):
    name, writer = FORMATS[fmt]
    return writer(tmp_path / name, docs, field)


def text_source(**options):
    return registry.get("dataset", "text").build(VAL_FRACTION, **{"text_field": "text", **options})


def expected_split(docs, split):
    return [doc for i, doc in enumerate(docs) if in_split(i, split, VAL_FRACTION)]


# ---------------------------------------------------------------------------------------------
# Local files


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_yields_its_documents_split_by_document(fmt, tmp_path):
    docs = make_documents(30)
    source = text_source(path=str(write_format(fmt, tmp_path, docs)))
    assert list(source.documents("train")) == expected_split(docs, "train")
    assert list(source.documents("val")) == expected_split(docs, "val")
    assert 0 < len(expected_split(docs, "val")) < len(docs)


def test_several_files_are_one_stream_in_sorted_order(tmp_path):
    docs = make_documents(24)
    write_jsonl(tmp_path / "shard-1.jsonl", docs[8:16])
    write_json_gz(tmp_path / "shard-0.json.gz", docs[:8])
    write_jsonl_zst(tmp_path / "shard-2.jsonl.zst", docs[16:])
    source = text_source(path=str(tmp_path / "shard-*"))
    assert [f.name for f in source.files] == ["shard-0.json.gz", "shard-1.jsonl", "shard-2.jsonl.zst"]
    assert list(source.documents("train")) == expected_split(docs, "train")
    assert list(source.documents("val")) == expected_split(docs, "val")


def test_a_single_text_file_splits_by_position_into_pieces(tmp_path):
    lines = [f"line {i}: " + " ".join(random.Random(i).choice(WORDS) for _ in range(12)) + "\n" for i in range(3000)]
    text = "".join(lines)
    assert len(text) > 2 * TEXT_PIECE_CHARS
    (tmp_path / "input.txt").write_text(text, encoding="utf-8")
    source = text_source(path=str(tmp_path / "input.txt"))
    train, val = list(source.documents("train")), list(source.documents("val"))
    assert "".join(train) == split_text(text, "train", VAL_FRACTION)
    assert "".join(val) == split_text(text, "val", VAL_FRACTION)
    assert "".join(train + val) == text
    assert len(train) >= 3  # enough pieces for several DataLoader workers
    assert all(len(piece) <= TEXT_PIECE_CHARS and piece.endswith("\n") for piece in train + val)


@pytest.mark.parametrize("layout", ["several files", "one text file"])
def test_start_skips_documents_of_the_split(layout, tmp_path):
    if layout == "several files":
        path = write_jsonl(tmp_path / "c.jsonl", make_documents(30))
    else:
        path = tmp_path / "c.txt"
        path.write_text("".join(f"{i} {' '.join(WORDS)}\n" for i in range(2000)), encoding="utf-8")
    source = text_source(path=str(path))
    for split in ("train", "val"):
        every = list(source.documents(split))
        assert list(source.documents(split, start=2)) == every[2:]


def test_folders_are_searched_recursively_and_other_files_skipped(tmp_path):
    docs = make_documents(12)
    (tmp_path / "data" / "2020").mkdir(parents=True)
    write_jsonl(tmp_path / "data" / "2020" / "a.jsonl", docs[:6])
    write_jsonl(tmp_path / "data" / "b.jsonl", docs[6:])
    (tmp_path / "data" / "README.md").write_text("not data")
    (tmp_path / "data" / ".hidden.jsonl").write_text("{broken")
    source = text_source(path=str(tmp_path / "data"))
    assert [f.name for f in source.files] == ["b.jsonl", "a.jsonl"]  # a folder's own files, then its subfolders
    by_glob = text_source(path=str(tmp_path / "data" / "**" / "*.jsonl"))
    assert sorted(f.name for f in by_glob.files) == ["a.jsonl", "b.jsonl"]
    as_list = text_source(path=[str(tmp_path / "data" / "2020" / "a.jsonl"), str(tmp_path / "data" / "b.jsonl")])
    assert list(as_list.documents("train")) == expected_split(docs, "train")


@pytest.mark.parametrize(
    "path, expected",
    [
        ("missing.jsonl", "does not exist"),
        ("shards/*.jsonl.zst", "matches no"),
        ("empty-folder", "matches no"),
        ("table.csv", "not a data file"),
    ],
)
def test_a_path_that_names_no_data_is_a_data_error_naming_it(path, expected, tmp_path):
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "empty-folder" / "README.md").write_text("nothing here")
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=expected) as error:
        text_source(path=str(tmp_path / path))
    assert str(tmp_path / path) in str(error.value) and "data.path" in str(error.value)


def test_text_without_a_path_is_a_config_error():
    with pytest.raises(ConfigError, match="data.path"):
        text_source()


CORRUPT = {
    "bad.jsonl.zst": b"this is not zstandard data" * 20,
    "bad.json.gz": b"this is not gzip data" * 20,
    "bad.parquet": b"PAR1 truncated parquet",
    "bad.jsonl": b'{"text": "fine"}\n{"text": broken\n',
    "bad.txt": "caf\u00e9 in Latin-1".encode("latin-1"),
}


@pytest.mark.parametrize("name", CORRUPT)
@pytest.mark.parametrize("position", ["first", "after a good shard"])
def test_a_corrupt_shard_is_a_data_error_naming_the_file(name, position, tmp_path, capfd):
    good_name = {"bad.parquet": "a-good.parquet", "bad.txt": "a-good.txt"}.get(name, "a-good.jsonl")
    good = tmp_path / good_name
    if name == "bad.parquet":
        write_parquet(good, make_documents(5))
    elif name == "bad.txt":
        good.write_text("a good text file", encoding="utf-8")
    else:
        write_jsonl(good, make_documents(5))
    bad = tmp_path / name
    bad.write_bytes(CORRUPT[name])
    paths = [str(bad)] if position == "first" else [str(good), str(bad)]
    if name == "bad.txt" and position == "first":
        paths.append(str(tmp_path / "a-good.txt"))  # not alone: a lone text file is read by position
    source = text_source(path=paths)
    with pytest.raises(DataError) as error:
        for split in ("train", "val"):
            list(source.documents(split))
    message = str(error.value)
    assert str(bad) in message and "\n" not in message
    assert str(good) not in message
    assert str(bad) not in capfd.readouterr().err  # the one line is ours: datasets logs nothing before it


def test_a_missing_text_field_is_named_with_the_fields_there_are(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", make_documents(5), field="body")
    with pytest.raises(DataError, match=r"no field 'text' \(its fields: body, id\).*data.text_field"):
        list(text_source(path=str(path)).documents("train"))
    assert list(text_source(path=str(path), text_field="body").documents("train"))


def test_the_fingerprint_follows_the_files(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", make_documents(10))
    first = text_source(path=str(path)).fingerprint
    assert text_source(path=str(path)).fingerprint == first
    write_jsonl(path, make_documents(11))
    assert text_source(path=str(path)).fingerprint != first


def test_sources_pickle_for_dataloader_workers(tmp_path):
    path = write_jsonl_zst(tmp_path / "c.jsonl.zst", make_documents(10))
    for source in (text_source(path=str(path)), registry.get("dataset", "python-stdlib").build(VAL_FRACTION)):
        copy = pickle.loads(pickle.dumps(source))
        assert copy.fingerprint == source.fingerprint
        assert list(copy.documents("val", start=0))[:3] == list(source.documents("val"))[:3]
    hub = registry.get("dataset", "c4").build(VAL_FRACTION)
    assert pickle.loads(pickle.dumps(hub)).hub_call("val") == hub.hub_call("val")


def test_python_stdlib_holds_the_library_files_and_nothing_installed_or_compiled():
    source = registry.get("dataset", "python-stdlib").build(0.02)
    files = {Path(name) for kind, name in source.items if kind == "file"}
    assert Path(json.__file__) in files
    root = Path(sysconfig.get_paths()["stdlib"])
    assert all(path.suffix == ".py" and path.is_relative_to(root) for path in files)
    assert not any({"site-packages", "dist-packages", "__pycache__"} & set(path.relative_to(root).parts) for path in files)


def test_python_stdlib_start_skips_without_changing_the_stream():
    source = registry.get("dataset", "python-stdlib").build(0.02)
    first = [doc for _, doc in zip(range(6), source.documents("val"))]
    assert [doc for _, doc in zip(range(3), source.documents("val", start=3))] == first[3:]


# ---------------------------------------------------------------------------------------------
# The config: data.path and friends are the text source's own keys


def test_config_checks_the_source_options(tmp_path):
    cfg = load_config(preset="tiny", overrides=["data.source=text", f"data.path={tmp_path}/*.jsonl", "data.text_field=body"])
    assert cfg.data.options["path"] == f"{tmp_path}/*.jsonl" and cfg.data.options["text_field"] == "body"
    listed = load_config(preset="tiny", overrides=["data.source=text", "data.path=[a.jsonl, b.parquet]"])
    assert listed.data.options["path"] == ["a.jsonl", "b.parquet"]
    with pytest.raises(ConfigError, match="data.path"):
        load_config(preset="tiny", overrides=["data.source=text", "data.path=3"])
    with pytest.raises(ConfigError, match="data.variant"):
        parts.build_source(load_config(preset="tiny", overrides=["data.source=c4", "data.variant=fr"]).data)


# ---------------------------------------------------------------------------------------------
# Training on local files: each format, and the named corpora's local copies


@pytest.fixture
def train_briefly(tiny_run):
    """train_briefly(tmp_path, *overrides) -> the summary of 8 steps on short sequences, checked."""

    def train_briefly(tmp_path, *overrides):
        summary = tiny_run.train(tmp_path / "run", "train.log_interval=4", "model.max_seq_len=32",
                                 f"data.val_fraction={VAL_FRACTION}", *overrides, max_steps=8, eval_interval=8)
        assert summary["status"] == "completed" and summary["steps"] == 8
        assert summary["final_val_loss"] < 6.0  # byte vocabulary: ln(256) = 5.5 at the start
        return summary

    return train_briefly


@pytest.mark.parametrize("fmt", list(FORMATS) + ["single txt"])
def test_a_short_run_trains_on_each_format(fmt, tmp_path, train_briefly):
    if fmt == "single txt":
        path = tmp_path / "input.txt"
        path.write_text("\n".join(make_documents(80)), encoding="utf-8")
    else:
        path = write_format(fmt, tmp_path, make_documents(80))
    train_briefly(tmp_path, "data.source=text", f"data.path={path}")


def test_a_named_corpus_trains_from_local_shards(tmp_path, train_briefly):
    """OpenWebText2 as extracted from its tar: .jsonl.zst shards, a document per line."""
    shards = tmp_path / "owt2"
    shards.mkdir()
    docs = make_documents(60)
    for month, chunk in enumerate((docs[:20], docs[20:40], docs[40:])):
        write_jsonl_zst(shards / f"2019-0{month + 1}.jsonl.zst", chunk)
    train_briefly(tmp_path, "data.source=openwebtext2", f"data.path={shards}", "data.num_workers=2")


# ---------------------------------------------------------------------------------------------
# The named corpora and the hf source: their Hub calls, local copies and offline errors


def hf_json(repo: str, split: str, *patterns: str) -> dict:
    files = [f"hf://datasets/{repo}/{p}" for p in patterns]
    return {"path": "json", "data_files": {split: files}, "split": split, "streaming": True}


HUB_CORPORA = {
    # name, options: (train call, validation call or None when train is split by document, gated)
    ("c4", ()): (
        hf_json("allenai/c4", "train", "en/c4-train.*.json.gz"),
        hf_json("allenai/c4", "validation", "en/c4-validation.*.json.gz"),
        False,
    ),
    ("c4", (("variant", "realnewslike"),)): (
        hf_json("allenai/c4", "train", "realnewslike/c4-train.*.json.gz"),
        hf_json("allenai/c4", "validation", "realnewslike/c4-validation.*.json.gz"),
        False,
    ),
    ("redpajama", ()): (hf_json("togethercomputer/RedPajama-Data-1T-Sample", "train", "*.jsonl"), None, False),
    ("redpajama", (("subset", "arxiv"),)): (
        hf_json("togethercomputer/RedPajama-Data-1T-Sample", "train", "arxiv_sample.jsonl"), None, False,
    ),
    ("oscar", ()): (hf_json("oscar-corpus/OSCAR-2301", "train", "en_meta/*.jsonl.zst"), None, True),
    ("oscar", (("language", "fr"),)): (hf_json("oscar-corpus/OSCAR-2301", "train", "fr_meta/*.jsonl.zst"), None, True),
    ("the-stack", ()): (
        {"path": "parquet", "data_files": {"train": ["hf://datasets/bigcode/the-stack/data/python/*.parquet"]},
         "split": "train", "streaming": True},
        None,
        True,
    ),
    ("the-stack", (("language", "Rust"), ("dedup", True))): (
        {"path": "parquet", "data_files": {"train": ["hf://datasets/bigcode/the-stack-dedup/data/rust/*.parquet"]},
         "split": "train", "streaming": True},
        None,
        True,
    ),
}


@pytest.mark.parametrize("name, options", HUB_CORPORA, ids=[f"{n}{dict(o) or ''}" for n, o in HUB_CORPORA])
def test_named_corpora_build_their_hub_calls(name, options):
    train, val, gated = HUB_CORPORA[(name, options)]
    source = registry.get("dataset", name).build(VAL_FRACTION, **dict(options))
    assert isinstance(source, HubDataset)
    assert source.hub_call("train").load_dataset_kwargs() == train
    assert source.hub_call("val").load_dataset_kwargs() == (val or train)
    assert source.hub_call("train").gated is gated
    text_field = {"oscar": "content", "the-stack": "content"}.get(name, "text")
    assert source.text_field == text_field


@pytest.mark.parametrize("name", ["c4", "redpajama", "oscar", "the-stack", "hf"])
def test_hub_sources_fail_clearly_offline(name):
    assert hub_offline(), "tests/conftest.py sets HF_HUB_OFFLINE=1"
    options = {"hf_path": "roneneldan/TinyStories"} if name == "hf" else {}
    source = registry.get("dataset", name).build(VAL_FRACTION, **options)
    started = time.perf_counter()
    with pytest.raises(DataError) as error:
        next(iter(source.documents("train")))
    assert time.perf_counter() - started < 10  # an error, not a wait for the network
    message = str(error.value)
    repo = source.hub_call("train").repo
    assert "\n" not in message and repo in message and "HF_HUB_OFFLINE" in message
    assert ("data.source=text and data.path" if name == "hf" else "set data.path") in message
    if source.hub_call("train").gated:
        assert f"accept its terms at https://huggingface.co/datasets/{repo}" in message and "hf auth login" in message


@pytest.mark.parametrize(
    "raised, expected",
    [
        ("gated", "is gated on the Hugging Face Hub and this login has no access; accept its terms at"),
        ("unreachable", "the Hugging Face Hub is unreachable from here; check the network connection"),
        ("missing", "was not found on the Hugging Face Hub; check the dataset id"),
    ],
)
def test_hub_failures_online_say_what_to_do(raised, expected, monkeypatch):
    """What datasets raises for each failure, as if the Hub had answered (it cannot be reached here)."""
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub import constants

    errors = {
        "gated": DatasetNotFoundError("Dataset 'bigcode/the-stack' is a gated dataset on the Hub. You must be authenticated to access it."),
        "unreachable": ConnectionError("Couldn't reach 'bigcode/the-stack' on the Hub (LocalEntryNotFoundError)"),
        "missing": FileNotFoundError("Unable to find 'hf://datasets/bigcode/the-stack/data/cobol/*.parquet'"),
    }

    def load_dataset(**kwargs):
        raise errors[raised]

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("datasets.load_dataset", load_dataset)
    source = registry.get("dataset", "the-stack").build(VAL_FRACTION)
    with pytest.raises(DataError, match=expected) as error:
        list(source.documents("train"))
    assert "set data.path" in str(error.value)


def test_hf_builds_its_hub_call_from_its_options():
    build = registry.get("dataset", "hf").build
    plain = build(VAL_FRACTION, hf_path="roneneldan/TinyStories", hf_val_split="validation")
    assert plain.hub_call("train").load_dataset_kwargs() == {"path": "roneneldan/TinyStories", "split": "train", "streaming": True}
    assert plain.hub_call("val").load_dataset_kwargs()["split"] == "validation"

    configured = build(VAL_FRACTION, hf_path="wikimedia/wikipedia", hf_name="20231101.en")
    assert configured.hub_call("val") == configured.hub_call("train")  # no val split: divided by document
    assert configured.hub_call("train").load_dataset_kwargs()["name"] == "20231101.en"

    files = build(VAL_FRACTION, hf_path="togethercomputer/RedPajama-Data-1T-Sample", hf_val_split="validation",
                  data_files={"train": "c4_sample.jsonl", "validation": ["arxiv_sample.jsonl"]})
    assert files.hub_call("val").load_dataset_kwargs() == hf_json(
        "togethercomputer/RedPajama-Data-1T-Sample", "validation", "arxiv_sample.jsonl"
    )


@pytest.mark.parametrize(
    "options, key",
    [
        ({}, "data.hf_path"),
        ({"hf_path": "a/b", "hf_val_split": "validation", "data_files": "*.jsonl"}, "data.data_files"),
        ({"hf_path": "a/b", "data_files": {"validation": "v.jsonl"}}, "data.data_files"),
        ({"hf_path": "a/b", "hf_name": "en", "data_files": "en/*.jsonl"}, "data.hf_name"),
    ],
)
def test_hf_option_mistakes_are_config_errors(options, key):
    with pytest.raises(ConfigError, match=key):
        registry.get("dataset", "hf").build(VAL_FRACTION, **options)


def test_hf_data_files_of_an_unknown_format_fail_when_built():
    with pytest.raises(DataError, match="not all one readable format"):
        registry.get("dataset", "hf").build(VAL_FRACTION, hf_path="a/b", data_files=["data/*.csv"])


@pytest.mark.parametrize("name", ["openwebtext2", "books3"])
def test_local_only_corpora_say_where_to_get_them(name):
    with pytest.raises(ConfigError, match="data.path") as error:
        registry.get("dataset", name).build(VAL_FRACTION)
    assert {"openwebtext2": "segyges/OpenWebText2", "books3": "no longer distributed"}[name] in str(error.value)


@pytest.mark.parametrize(
    "name, fmt, field",
    [("c4", "json.gz", "text"), ("redpajama", "jsonl", "text"), ("oscar", "jsonl.zst", "content"),
     ("the-stack", "parquet", "content"), ("openwebtext2", "jsonl.zst", "text"), ("books3", "txt folder", "text")],
)
def test_named_corpora_read_local_copies(name, fmt, field, tmp_path):
    docs = make_documents(20)
    path = write_format(fmt, tmp_path, docs, field)
    source = registry.get("dataset", name).build(VAL_FRACTION, path=str(path))
    assert isinstance(source, LocalFiles)
    assert list(source.documents("train")) == expected_split(docs, "train")
