"""Every notebook in tutorials/ runs top to bottom in a fresh kernel (quick mode).

Marked slow (about six minutes on 2 cores): CI's documentation build executes the same
notebooks in the same quick mode, and a failing cell fails it (``docs/conf.py``), so
``python -m pytest`` leaves them to it; ``python -m pytest -m slow tests/test_tutorials.py``
runs them here.
"""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

TUTORIALS = sorted((Path(__file__).parents[1] / "tutorials").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_runs(path, monkeypatch, tmp_path):
    monkeypatch.setenv("SCVAE_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv(
        "SCVAE_DATA_DIR", str(Path(os.environ.get("SCVAE_DATA_DIR", "../shared/data")).resolve())
    )
    notebook = nbformat.read(path, as_version=4)
    data_dir = Path(os.environ["SCVAE_DATA_DIR"])
    for name in notebook.metadata.get("scvae", {}).get("needs_data", []):
        if not (data_dir / f"{name}.h5ad").is_file():
            pytest.skip(f"{name}.h5ad not in {data_dir} (set SCVAE_DATA_DIR)")
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
