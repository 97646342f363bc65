"""The data set loader contract, checked for every registered loader (engine.data.names()) on a tiny data
set in its real on-disk format (tests/fixtures.py): a new loader gets these tests by registering itself and
adding its fixture writer. (The attacks' invariants run over their registry in tests/test_attacks.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import DATA_WRITERS

from engine import data
from engine.data.base import ImageListDataset
from engine.errors import UserError

LOADERS = data.names()


# ---------------------------------------------------------------- the checks every loader gets
# The tests below run these over the registry; a test can run them for any registered loader
# (tests/test_recipe.py does, for the development page's example loader): check_loader_contract.
def write_fixture(name, folder):
    """(the declared loader, the root of its fixture data set written under ``folder``)."""
    if name not in DATA_WRITERS:
        pytest.fail(f"data set loader {name!r} has no fixture writer: add one to DATA_WRITERS in tests/fixtures.py "
                    f"that writes a tiny data set in the loader's real on-disk format, holding each declared split")
    return data.info(name), DATA_WRITERS[name](folder)


def _one_line_error(match: str, **kw) -> str:
    with pytest.raises(UserError, match=match) as e:
        data.load(**kw)
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    return msg


def check_declared_splits(loader, root):
    """Every declared split loads, with the declared label names and input size."""
    seen = None
    for split in loader.splits:
        ds = data.load(loader.name, root=root, split=split)
        assert isinstance(ds, ImageListDataset) and ds.name == loader.name and len(ds) > 0
        assert ds.split in loader.splits and ds.size == loader.size
        names = ds.label_names
        assert names and len(set(names)) == len(names) and all(isinstance(n, str) and n for n in names)
        if loader.label_names is not None:
            assert names == list(loader.label_names), split
        assert seen is None or names == seen, f"split {split!r} has other label names"
        seen = names
        assert ds.labels.dtype == np.uint8 and ds.labels.shape == (len(ds), len(names))
        assert set(np.unique(ds.labels).tolist()) <= {0, 1}
        x, y = ds[len(ds) - 1]
        assert x.dtype == torch.float32 and x.shape == (3, loader.size, loader.size)
        assert 0 <= x.min() and x.max() <= 1 and x.max() > x.min()
        assert y.dtype == torch.float32 and y.shape == (len(names),)
        assert torch.equal(y, torch.from_numpy(ds.labels[-1]).float())
    assert data.load(loader.name, root=root).split == loader.test_split  # the default split


def check_size_and_declared_options(loader, root):
    base = data.load(loader.name, root=root)
    x, _ = data.load(loader.name, root=root, size=16)[0]
    assert x.shape == (3, 16, 16) and 0 <= x.min() and x.max() <= 1
    # Every declared option is a keyword of the reader, and its declared default is the default.
    same = data.load(loader.name, root=root, **loader.options)
    assert same.paths == base.paths and np.array_equal(same.labels, base.labels)
    assert same.label_names == base.label_names
    for source in loader.sources[:1]:  # "auto", accepted by every loader
        assert data.load(loader.name, root=root, source=source).paths == base.paths
    if "label_names" in loader.options:  # labels read from the data: the model's names order them
        order = list(reversed(base.label_names))
        mapped = data.load(loader.name, root=root, model_labels=order)
        assert mapped.label_names == order and np.array_equal(mapped.labels, base.labels[:, ::-1])


def check_bad_calls_are_one_line_errors(loader, root, nowhere):
    """Unknown options, annotation sources and splits, and a missing root (``nowhere``)."""
    name = loader.name
    msg = _one_line_error("takes no option 'no_such_option'", name=name, root=root, no_such_option=1)
    assert f"data set {name!r}" in msg and "its options:" in msg
    msg = _one_line_error("annotation source", name=name, root=root, source="no-such-format")
    assert msg.endswith(f"valid: {', '.join(loader.sources)}")
    _one_line_error("no-such-split", name=name, root=root, split="no-such-split")
    _one_line_error("nowhere", name=name, root=nowhere)


def check_every_loader_has_a_fixture_writer():
    assert set(DATA_WRITERS) == set(data.names())


def check_loader_contract(name, tmp_path):
    """Every check above, for registered loader ``name``, on its fixture written under ``tmp_path``."""
    loader, root = write_fixture(name, tmp_path / "data")
    check_declared_splits(loader, root)
    check_size_and_declared_options(loader, root)
    check_bad_calls_are_one_line_errors(loader, root, tmp_path / "nowhere")
    check_every_loader_has_a_fixture_writer()


@pytest.fixture(params=LOADERS)
def written(request, tmp_path):
    """(loader, root of its fixture data set)."""
    return write_fixture(request.param, tmp_path)


def test_declared_splits_load_with_the_declared_labels_and_size(written):
    check_declared_splits(*written)


def test_size_and_declared_options(written):
    check_size_and_declared_options(*written)


def test_bad_calls_are_one_line_errors(written, tmp_path):
    check_bad_calls_are_one_line_errors(*written, tmp_path / "nowhere")


def test_every_loader_has_a_fixture_writer():
    check_every_loader_has_a_fixture_writer()
