"""The command line never destroys what it did not write, and checks --out before training."""

from __future__ import annotations

import time

import anndata
import pytest

import scvae
from scvae.__main__ import main
from scvae._utils import atomic as _atomic


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "small.h5ad"
    scvae.datasets.simulate(200, 30, n_groups=2, seed=2).write_h5ad(path)
    return path


def _fit_args(path, out, *extra):
    return ["fit", str(path), "--out", str(out), "--max-epochs", "1", "--no-progress", *extra]


def test_overwrite_refuses_a_folder_that_is_not_a_model_before_training(small_file, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "analysis.csv").write_text("my notes")
    started = time.perf_counter()
    with pytest.raises(FileExistsError, match=r"not an scvae model folder.*--overwrite"):
        main(_fit_args(small_file, results, "--overwrite"))
    assert time.perf_counter() - started < 5  # refused before the fit, not after it
    assert (results / "analysis.csv").read_text() == "my notes"


def test_overwrite_refuses_the_input_files_folder_and_a_file(small_file, tmp_path):
    with pytest.raises(FileExistsError, match="not an scvae model folder"):
        main(_fit_args(small_file, small_file.parent, "--overwrite"))
    assert small_file.is_file()
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    with pytest.raises(FileExistsError, match="is a file"):
        main(_fit_args(small_file, notes, "--overwrite"))
    assert notes.read_text() == "keep me"


def test_existing_model_needs_overwrite_and_survives_a_failed_write(
    small_file, tmp_path, monkeypatch
):
    out = tmp_path / "model"
    assert main(_fit_args(small_file, out)) == 0
    first = (out / "weights.pt").read_bytes()
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        main(_fit_args(small_file, out))

    def failing_move(tmp, path):
        raise OSError("disk full")

    monkeypatch.setattr(_atomic, "_move_into_place", failing_move)
    with pytest.raises(OSError, match="disk full"):
        main(_fit_args(small_file, out, "--overwrite", "--seed", "1"))
    assert (out / "weights.pt").read_bytes() == first  # the old model, whole and readable
    scvae.load(out).embed(anndata.read_h5ad(small_file))
    monkeypatch.undo()
    assert main(_fit_args(small_file, out, "--overwrite", "--seed", "1")) == 0
    assert (out / "weights.pt").read_bytes() != first  # replaced in one step
    assert not list(tmp_path.glob(".model.*"))  # no temporary folder left beside it
