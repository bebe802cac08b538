"""Save and load fitted moekit estimators without pickle: one zip file of JSON and NPZ.

A model file is a zip archive holding two members:

- ``model.json``: the format name and version, the moekit version that wrote it, the estimator's
  class name (checked against an allow-list on load), its ``get_params(deep=False)``, the fitted
  attributes (those whose names end in ``_``) as a JSON tree in which every NumPy array is a
  reference ``{"__array__": "a3"}`` into the NPZ, and optional feature names, target name and
  user metadata.
- ``arrays.npz``: the arrays, written by :func:`numpy.savez` and read back with
  ``allow_pickle=False``, so object arrays are never written and never loaded.

Loading never imports or calls anything named by the file: class names are looked up in a fixed
allow-list (moekit's three estimators, plus a few scikit-learn linear models whose fitted state
is plain arrays, which may serve as experts). An expert that is any
other scikit-learn estimator cannot be saved without pickle, and :func:`save_model` says so.

Saving is atomic: the archive is written to a temporary file in the destination's directory,
flushed to disk, then moved over the destination with :func:`os.replace`; a failure part-way
leaves any previous file at that path as it was.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from moekit._files import atomic_open

from ._classifier import MixtureOfExpertsClassifier
from ._hierarchical import HierarchicalMixtureOfExpertsRegressor
from ._regressor import MixtureOfExpertsRegressor

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ModelFileError",
    "load_model",
    "read_model_info",
    "save_model",
]

FORMAT = "moekit-model"
FORMAT_VERSION = 1
_JSON_MEMBER = "model.json"
_NPZ_MEMBER = "arrays.npz"
_MAX_JSON_BYTES = 64 * 2**20

# scikit-learn estimators that may appear *inside* a moekit model (as experts): their fitted
# state is arrays and numbers only, and predict needs nothing else.
_SKLEARN_ALLOWED = {
    "sklearn.linear_model.LinearRegression",
    "sklearn.linear_model.Ridge",
    "sklearn.linear_model.LogisticRegression",
}


class ModelFileError(ValueError):
    """A model that cannot be saved safely, or a file that is not a valid moekit model."""


_MOEKIT_CLASSES: tuple[type, ...] = (
    HierarchicalMixtureOfExpertsRegressor,
    MixtureOfExpertsClassifier,
    MixtureOfExpertsRegressor,
)


def _moekit_classes() -> dict[str, type]:
    return {f"moekit.estimators.{cls.__name__}": cls for cls in _MOEKIT_CLASSES}


def _sklearn_classes() -> dict[str, type]:
    from sklearn import linear_model

    return {key: getattr(linear_model, key.rsplit(".", 1)[1]) for key in _SKLEARN_ALLOWED}


def _class_key(obj: object, allowed: dict[str, type]) -> str | None:
    for key, cls in allowed.items():
        if type(obj) is cls:
            return key
    return None


class _Encoder:
    """Turns params and fitted attributes into a JSON tree, collecting arrays on the side."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.allowed = {**_moekit_classes(), **_sklearn_classes()}

    def array(self, value: np.ndarray, where: str) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if value.dtype == object:
            # scikit-learn keeps string labels and feature names in object arrays; store them as
            # fixed-width unicode, which needs no pickle, and restore the object dtype on load.
            if not all(isinstance(v, str) for v in value.ravel()):
                raise ModelFileError(
                    f"{where} is an object array holding non-string values "
                    f"({sorted({type(v).__name__ for v in value.ravel()})}); it cannot be saved "
                    "without pickle; use numeric or string values"
                )
            value = value.astype(str) if value.size else value.astype("U1")
            extra["object"] = True
        if value.dtype.kind not in "biufcUSmM":
            raise ModelFileError(f"{where} has dtype {value.dtype}, which cannot be saved safely")
        key = f"a{len(self.arrays)}"
        self.arrays[key] = np.ascontiguousarray(value)
        return {"__array__": key, **extra}

    def encode(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"__float__": repr(value)}
        if isinstance(value, np.ndarray):
            return self.array(value, where)
        if isinstance(value, np.generic):
            return {"__scalar__": self.array(np.asarray(value), where)}
        if isinstance(value, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, dict):
            bad = [k for k in value if not isinstance(k, str)]
            if bad:
                raise ModelFileError(f"{where} is a dict with non-string keys {bad[:5]}")
            return {"__dict__": {k: self.encode(v, f"{where}[{k!r}]") for k, v in value.items()}}
        key = _class_key(value, self.allowed)
        if key is not None:
            return {"__estimator__": self.estimator(value, where, key)}
        if hasattr(value, "get_params") and hasattr(value, "fit"):
            raise ModelFileError(
                f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which cannot "
                "be saved without pickle; moekit model files only hold moekit's own experts "
                "('linear', 'poisson', 'student_t', the classifier's logistic experts) and "
                f"{sorted(_SKLEARN_ALLOWED)}. Use one of those, or save this model with joblib "
                "or skops at your own risk (pickle runs code when loaded)"
            )
        raise ModelFileError(
            f"{where} is of type {type(value).__name__}, which moekit model files cannot hold; "
            "expected arrays, numbers, strings, or lists of those"
        )

    def estimator(self, est: Any, where: str, key: str) -> dict[str, Any]:
        params = est.get_params(deep=False)
        for name, value in params.items():
            if isinstance(value, np.random.RandomState | np.random.Generator):
                raise ModelFileError(
                    f"{where}.{name} is a {type(value).__name__}; pass an int seed (or None) "
                    "instead to save the model"
                )
        encoded_params = {n: self.encode(v, f"{where}.{n}") for n, v in params.items()}
        attributes = {
            name: self.encode(value, f"{where}.{name}")
            for name, value in sorted(vars(est).items())
            if name.endswith("_") and not name.startswith("_")
        }
        return {"class": key, "params": encoded_params, "attributes": attributes}


class _Decoder:
    def __init__(self, arrays: Any, path: str) -> None:
        self.arrays = arrays
        self.path = path
        self.allowed = {**_moekit_classes(), **_sklearn_classes()}

    def fail(self, what: str) -> ModelFileError:
        return ModelFileError(f"{self.path!r} is not a valid moekit model file: {what}")

    def decode(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if not isinstance(node, dict) or len(node) == 0:
            raise self.fail(f"unexpected node {node!r}")
        if "__array__" in node:
            key = node["__array__"]
            if key not in self.arrays:
                raise self.fail(f"array {key!r} is missing from {_NPZ_MEMBER}")
            value = self.arrays[key]
            return value.astype(object) if node.get("object") else value
        if "__scalar__" in node:
            return self.decode(node["__scalar__"])[()]
        if "__float__" in node:
            text = node["__float__"]
            if text not in {"nan", "inf", "-inf"}:
                raise self.fail(f"bad float {text!r}")
            return float(text)
        if "__tuple__" in node:
            return tuple(self.decode(v) for v in node["__tuple__"])
        if "__dict__" in node:
            return {k: self.decode(v) for k, v in node["__dict__"].items()}
        if "__estimator__" in node:
            return self.estimator(node["__estimator__"])
        raise self.fail(f"unexpected node with keys {sorted(node)}")

    def estimator(self, spec: dict[str, Any]) -> Any:
        key = spec.get("class")
        if key not in self.allowed:
            raise self.fail(
                f"class {key!r} is not one moekit loads (allowed: {sorted(self.allowed)})"
            )
        cls = self.allowed[key]
        params = {n: self.decode(v) for n, v in spec.get("params", {}).items()}
        try:
            est = cls(**params)
        except TypeError as err:
            raise ModelFileError(
                f"{self.path!r} was written with parameters {sorted(params)} that this version of "
                f"{key} does not accept ({err}); load it with the moekit version that wrote it"
            ) from err
        for name, value in spec.get("attributes", {}).items():
            if not (isinstance(name, str) and name.endswith("_") and not name.startswith("_")):
                raise self.fail(f"attribute name {name!r} is not a fitted attribute")
            if isinstance(getattr(cls, name, None), property):
                continue  # computed on demand by this version (e.g. covariance_): not restored
            setattr(est, name, self.decode(value))
        return est


def save_model(
    estimator: Any,
    path: str | os.PathLike[str],
    *,
    feature_names: Sequence[str] | None = None,
    target: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Save a fitted moekit estimator to ``path``, atomically and without pickle.

    Parameters
    ----------
    estimator : MixtureOfExpertsRegressor or MixtureOfExpertsClassifier
        A fitted estimator from :mod:`moekit.estimators`.
    path : str or path-like
        Destination file (conventionally ``*.moekit``); replaced if it exists.
    feature_names : sequence of str, optional
        Names of the columns of ``X``, in order, kept for ``moekit predict``. Default: the
        estimator's ``feature_names_in_`` (set when it was fitted on a DataFrame), if any.
    target : str, optional
        Name of the target column.
    metadata : dict, optional
        JSON-able extra information (where the data came from, notes).

    Returns
    -------
    str
        The absolute path written.

    Raises
    ------
    ModelFileError
        When the estimator is not a fitted moekit estimator, or holds something that needs
        pickle (an arbitrary scikit-learn estimator as expert, a RandomState).

    Examples
    --------
    >>> from moekit.estimators import MixtureOfExpertsRegressor, load_model, save_model
    >>> from moekit.estimators.datasets import make_moe_regression
    >>> import tempfile, os
    >>> X, y = make_moe_regression(n_samples=200, n_features=2, n_experts=2, random_state=0)[:2]
    >>> model = MixtureOfExpertsRegressor(n_experts=2, random_state=0).fit(X, y)
    >>> path = save_model(model, os.path.join(tempfile.mkdtemp(), "m.moekit"))
    >>> bool((load_model(path).predict(X) == model.predict(X)).all())
    True
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise ModelFileError(f"{path!r} is a directory; give a file name such as model.moekit")
    encoder = _Encoder()
    key = _class_key(estimator, _moekit_classes())
    if key is None:
        raise ModelFileError(
            f"save_model got a {type(estimator).__module__}.{type(estimator).__qualname__}; it "
            f"saves moekit estimators only ({sorted(_moekit_classes())})"
        )
    if feature_names is None and getattr(estimator, "feature_names_in_", None) is not None:
        feature_names = [str(v) for v in estimator.feature_names_in_]
    if feature_names is not None and hasattr(estimator, "n_features_in_") and len(
            feature_names) != estimator.n_features_in_:
        raise ModelFileError(
            f"feature_names has {len(feature_names)} names but the model has "
            f"{estimator.n_features_in_} features; pass one name per column of X")
    spec = encoder.estimator(estimator, "estimator", key)
    if not spec["attributes"]:
        raise ModelFileError(
            f"{type(estimator).__name__} is not fitted (it has no attributes ending in '_'); "
            "call fit before save_model"
        )
    from moekit import __version__

    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "moekit_version": __version__,
        "estimator": spec,
        "feature_names": list(feature_names) if feature_names is not None else None,
        "target": target,
        "metadata": metadata or {},
    }
    try:
        json_bytes = json.dumps(document, indent=1, allow_nan=False).encode()
    except (TypeError, ValueError) as err:
        raise ModelFileError(f"metadata must be JSON-able: {err}") from err
    npz = io.BytesIO()
    np.savez(npz, **encoder.arrays)  # type: ignore[arg-type]

    with atomic_open(path) as raw, zipfile.ZipFile(raw, "w") as archive:
        archive.writestr(_JSON_MEMBER, json_bytes, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr(_NPZ_MEMBER, npz.getvalue(), compress_type=zipfile.ZIP_STORED)
    return path


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], bytes, str]:
    spath = os.fspath(path)
    if not os.path.exists(spath):
        raise ModelFileError(f"model file {spath!r} does not exist; check the path")
    try:
        with zipfile.ZipFile(spath) as archive:
            names = set(archive.namelist())
            if not {_JSON_MEMBER, _NPZ_MEMBER} <= names:
                raise ModelFileError(
                    f"{spath!r} is not a moekit model file: it lacks {_JSON_MEMBER} or "
                    f"{_NPZ_MEMBER}; write it with save_model or `moekit fit`"
                )
            if archive.getinfo(_JSON_MEMBER).file_size > _MAX_JSON_BYTES:
                raise ModelFileError(f"{spath!r}: {_JSON_MEMBER} is implausibly large")
            json_bytes = archive.read(_JSON_MEMBER)
            npz_bytes = archive.read(_NPZ_MEMBER)
    except (zipfile.BadZipFile, OSError) as err:
        raise ModelFileError(
            f"{spath!r} is not a moekit model file ({err}); write it with save_model or "
            "`moekit fit`"
        ) from err
    try:
        document = json.loads(json_bytes)
    except ValueError as err:
        raise ModelFileError(f"{spath!r}: {_JSON_MEMBER} is not valid JSON ({err})") from err
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ModelFileError(f"{spath!r} is not a moekit model file (format is not {FORMAT!r})")
    version = document.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{spath!r} has format version {version!r}; this moekit reads versions up to "
            f"{FORMAT_VERSION}; upgrade moekit"
        )
    return document, npz_bytes, spath


def read_model_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a model file's description without building the estimator.

    Returns
    -------
    dict
        Keys ``format``, ``format_version``, ``moekit_version``, ``class``, ``params`` (as stored,
        arrays and tuples still encoded), ``feature_names``, ``target``, ``metadata``.
    """
    document, _, _ = _read(path)
    spec = document.get("estimator", {})
    info = {k: v for k, v in document.items() if k != "estimator"}
    info["class"] = spec.get("class")
    info["params"] = spec.get("params", {})
    return info


def load_model(path: str | os.PathLike[str]) -> Any:
    """Load an estimator written by :func:`save_model`.

    Only allow-listed classes are built, and arrays are read with ``allow_pickle=False``: loading
    an untrusted file runs no code from it.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`save_model` (or ``moekit fit``).

    Returns
    -------
    estimator
        The fitted estimator; its predictions equal those of the one saved.

    Raises
    ------
    ModelFileError
        When the file is missing, not a moekit model, from a newer format, or names a class
        outside the allow-list.
    """
    from moekit import __version__

    document, npz_bytes, spath = _read(path)
    if document.get("moekit_version") != __version__:
        warnings.warn(
            f"{spath!r} was written by moekit {document.get('moekit_version')}, this is "
            f"{__version__}; predictions may differ if the model's code changed",
            UserWarning,
            stacklevel=2,
        )
    try:
        with np.load(io.BytesIO(npz_bytes), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except ValueError as err:  # object arrays refuse to load without pickle
        raise ModelFileError(f"{spath!r}: {_NPZ_MEMBER} cannot be read safely ({err})") from err
    spec = document.get("estimator")
    if not isinstance(spec, dict):
        raise ModelFileError(f"{spath!r} is not a valid moekit model file: no estimator")
    decoder = _Decoder(arrays, spath)
    if spec.get("class") not in _moekit_classes():
        raise decoder.fail(f"top-level class {spec.get('class')!r} is not a moekit estimator")
    return decoder.estimator(spec)
