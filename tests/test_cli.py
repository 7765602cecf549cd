"""The command line never destroys what it did not write, and checks --out before training."""

from __future__ import annotations

import time

import anndata
import numpy as np
import pytest

import scvae
from scvae.__main__ import main
from scvae._utils import atomic as _atomic


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "small.h5ad"
    scvae.datasets.simulate(200, 30, n_groups=2, seed=2).write_h5ad(path)
    return path


def _fit_args(path, out, *extra, debug=True):
    """Arguments of a one-epoch fit; ``--debug`` makes errors raise (to match them here)."""
    first = ["--debug"] if debug else []
    fit = ["fit", str(path), "--out", str(out), "--max-epochs", "1", "--no-progress"]
    return [*first, *fit, *extra]


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


def test_errors_are_one_line_without_a_traceback_unless_debug(small_file, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not counts")
    assert main(["fit", str(notes), "--out", str(tmp_path / "m"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "scvae fit: error:" in err and "is not an h5ad file" in err
    assert "Traceback" not in err
    with pytest.raises(ValueError, match="is not an h5ad file"):
        main(["--debug", "fit", str(notes), "--out", str(tmp_path / "m")])
    assert not (tmp_path / "m").exists()


def test_an_existing_file_survives_embed_and_fit(small_file, tmp_path, capsys):
    """An output file scvae did not write is never replaced, --overwrite or not; one scvae
    wrote is replaced only with --overwrite."""
    model = tmp_path / "model"
    assert main(_fit_args(small_file, model)) == 0
    precious = tmp_path / "results.npy"
    np.save(precious, np.arange(5))  # the user's own array
    embed = ["embed", str(small_file), "--model", str(model), "--out", str(precious)]
    assert main(embed) == 1
    assert main([*embed, "--overwrite"]) == 1
    assert "not an embedding written by scvae" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(precious), np.arange(5))
    fit_with_embedding = _fit_args(small_file, tmp_path / "m2", "--embedding", str(precious))
    assert main(fit_with_embedding[1:]) == 1  # refused before training: no model folder
    assert not (tmp_path / "m2").exists()
    ours = tmp_path / "z.npy"
    assert main(["embed", str(small_file), "--model", str(model), "--out", str(ours)]) == 0
    first = np.load(ours)
    assert main(["embed", str(small_file), "--model", str(model), "--out", str(ours)]) == 1
    assert (
        main(["embed", str(small_file), "--model", str(model), "--out", str(ours), "--overwrite"])
        == 0
    )
    np.testing.assert_array_equal(np.load(ours), first)


def test_ctrl_c_during_fit_exits_non_zero_and_writes_nothing(
    small_file, tmp_path, monkeypatch, capsys
):
    from scvae._train import loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_step_loss", interrupted)
    out = tmp_path / "model"
    args = _fit_args(small_file, out, "--embedding", str(tmp_path / "z.npy"), debug=False)
    with pytest.warns(RuntimeWarning, match="interrupted"):
        assert main(args) == 130
    assert "interrupted during epoch 0: nothing was written" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "z.npy").exists()


@pytest.mark.parametrize(("flag", "expected"), [([], True), (["--no-library-from-latent"], False)])
def test_library_from_latent_flag_reaches_the_saved_model(small_file, tmp_path, flag, expected):
    out = tmp_path / "m"
    assert main(_fit_args(small_file, out, *flag)) == 0
    assert scvae.load(out).module.library_from_latent is expected
