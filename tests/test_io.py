"""Save / load: identical embeddings, weights-only loading, checks on the genes."""

import hashlib
import json
import pickle

import numpy as np
import pytest
import torch

import scvae


def test_save_load_round_trip_gives_identical_embeddings(fitted, tmp_path):
    model, adata = fitted
    model.save(tmp_path / "model")
    loaded = scvae.load(tmp_path / "model", adata=adata)
    np.testing.assert_array_equal(loaded.embed(adata), model.embed(adata))
    assert loaded.gene_names == model.gene_names
    assert loaded.batch_categories == ["batch_0", "batch_1"]
    assert loaded.batch_key == "batch" and loaded.labels_key == "cell_type"
    assert loaded.history["train_loss"] == model.history["train_loss"]


def test_config_records_version_genes_and_batches(fitted, tmp_path):
    model, adata = fitted
    model.save(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["scvae_version"] == scvae.__version__
    assert config["gene_names"] == list(adata.var_names)
    assert config["batch_categories"] == ["batch_0", "batch_1"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_saved_model_has_the_permissions_of_any_new_folder(fitted, tmp_path, umask):
    """The folder was made by mkdtemp (0o700 whatever the umask): colleagues sharing a
    folder could not load a model saved there."""
    import os
    import stat

    model, _ = fitted
    previous = os.umask(umask)
    try:
        model.save(tmp_path / "model")
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "model").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o777 & ~umask


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_file_written_in_one_step_has_the_permissions_of_any_new_file(tmp_path, umask):
    """Checkpoints are written by ``write_file``, whose temporary file came from mkstemp
    (0o600 whatever the umask)."""
    import os
    import stat

    from scvae._utils.atomic import write_file

    previous = os.umask(umask)
    try:
        write_file(tmp_path / "state.pt", b"bytes")
        (tmp_path / "plain").write_bytes(b"bytes")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "state.pt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o666 & ~umask


def test_weights_file_holds_tensors_only(fitted, tmp_path):
    model, _ = fitted
    model.save(tmp_path / "model")
    state = torch.load(tmp_path / "model" / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_loading_never_runs_code_from_the_file(fitted, tmp_path):
    model, _ = fitted
    model.save(tmp_path / "model")

    class Payload:
        def __reduce__(self):
            return (exec, ("raise SystemExit('code ran')",))

    crafted = pickle.dumps({"x": Payload()})
    (tmp_path / "model" / "weights.pt").write_bytes(crafted)
    # The attacker controls the config too: make its checksum match the crafted file.
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config["weights_sha256"] = hashlib.sha256(crafted).hexdigest()
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(pickle.UnpicklingError):
        scvae.load(tmp_path / "model")


def test_load_names_missing_genes(fitted, tmp_path):
    model, adata = fitted
    model.save(tmp_path / "model")
    with pytest.raises(ValueError, match=r"'gene_3'.*'gene_7'|2 of the model"):
        scvae.load(tmp_path / "model", adata=adata[:, ~adata.var_names.isin(["gene_3", "gene_7"])])


def test_save_refuses_to_overwrite(fitted, tmp_path):
    model, _ = fitted
    model.save(tmp_path / "model")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path / "model")
    model.save(tmp_path / "model", overwrite=True)


def test_load_of_a_folder_that_is_no_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an scvae model folder"):
        scvae.load(tmp_path)
