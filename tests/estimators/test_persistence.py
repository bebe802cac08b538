"""save_model / load_model: no pickle, identical predictions after a round trip, atomic writes."""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Ridge
from sklearn.tree import DecisionTreeRegressor

from moekit.estimators import (
    HierarchicalMixtureOfExpertsRegressor,
    MixtureOfExpertsClassifier,
    MixtureOfExpertsRegressor,
    persistence,
)
from moekit.estimators.datasets import make_moe_regression
from moekit.estimators.persistence import (
    ModelFileError,
    load_model,
    read_model_info,
    save_model,
)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    X, y, _ = make_moe_regression(n_samples=300, n_features=3, n_experts=2, random_state=0)
    return X, y


@pytest.mark.parametrize(
    "make",
    [
        lambda: MixtureOfExpertsRegressor(2, random_state=0),
        lambda: MixtureOfExpertsRegressor(2, expert="student_t", random_state=0),
        lambda: MixtureOfExpertsRegressor(2, expert=Ridge(alpha=1.0), random_state=0),
        lambda: HierarchicalMixtureOfExpertsRegressor(random_state=0),
    ],
    ids=["linear", "student_t", "ridge-expert", "hierarchical"],
)
def test_regressor_round_trip_predicts_identically(make, data, tmp_path: Path) -> None:
    X, y = data
    model = make().fit(X, y)
    path = tmp_path / "m.moekit"
    save_model(model, path, feature_names=["a", "b", "c"], target="y")
    loaded = load_model(path)
    assert type(loaded) is type(model)
    assert loaded.get_params(deep=False).keys() == model.get_params(deep=False).keys()
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    np.testing.assert_array_equal(loaded.gate_proba(X), model.gate_proba(X))
    for a, b in zip(loaded.predict_interval(X, alpha=0.2), model.predict_interval(X, alpha=0.2)):
        np.testing.assert_array_equal(a, b)
    assert loaded.log_likelihood(X, y) == model.log_likelihood(X, y)
    info = read_model_info(path)
    assert info["feature_names"] == ["a", "b", "c"] and info["target"] == "y"


def test_classifier_round_trip_with_string_labels(data, tmp_path: Path) -> None:
    X, y = data
    labels = np.where(y > np.median(y), "high", "low").astype(object)
    model = MixtureOfExpertsClassifier(2, max_iter=30, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, labels)
    path = save_model(model, tmp_path / "c.moekit")
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert loaded.classes_.dtype == model.classes_.dtype and list(loaded.classes_) == ["high", "low"]


def test_file_holds_json_and_a_pickle_free_npz(data, tmp_path: Path) -> None:
    X, y = data
    path = save_model(MixtureOfExpertsRegressor(2, random_state=0).fit(X, y), tmp_path / "m.moekit")
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["arrays.npz", "model.json"]
        document = json.loads(archive.read("model.json"))
        npz = np.load(io.BytesIO(archive.read("arrays.npz")), allow_pickle=False)
        arrays = {name: npz[name] for name in npz.files}  # raises if any array needed pickle
    assert document["format"] == "moekit-model"
    assert document["estimator"]["class"] == "moekit.estimators.MixtureOfExpertsRegressor"
    assert document["estimator"]["params"]["n_experts"] == 2
    assert all(a.dtype != object for a in arrays.values())


def test_refuses_what_needs_pickle(data, tmp_path: Path) -> None:
    X, y = data
    model = MixtureOfExpertsRegressor(2, expert=DecisionTreeRegressor(max_depth=2), random_state=0,
                                      n_init=1, max_iter=5)
    with pytest.raises(ModelFileError, match=r"estimator\.expert is a .*DecisionTreeRegressor.*"
                                             r"cannot be saved without pickle"):
        save_model(model.fit(X, y), tmp_path / "m.moekit")
    model = MixtureOfExpertsRegressor(2, random_state=np.random.RandomState(0)).fit(X, y)
    with pytest.raises(ModelFileError, match="random_state is a RandomState; pass an int seed"):
        save_model(model, tmp_path / "m.moekit")
    with pytest.raises(ModelFileError, match="is not fitted"):
        save_model(MixtureOfExpertsRegressor(2), tmp_path / "m.moekit")
    with pytest.raises(ModelFileError, match="saves moekit estimators only"):
        save_model(Ridge().fit(X, y), tmp_path / "m.moekit")
    assert not os.listdir(tmp_path)


def test_load_refuses_classes_outside_the_allow_list(data, tmp_path: Path) -> None:
    X, y = data
    path = save_model(MixtureOfExpertsRegressor(2, random_state=0).fit(X, y), tmp_path / "m.moekit")
    with zipfile.ZipFile(path) as archive:
        document = json.loads(archive.read("model.json"))
        npz = archive.read("arrays.npz")
    document["estimator"]["class"] = "os.system"
    with zipfile.ZipFile(tmp_path / "evil.moekit", "w") as archive:
        archive.writestr("model.json", json.dumps(document))
        archive.writestr("arrays.npz", npz)
    with pytest.raises(ModelFileError, match="'os.system' is not a moekit estimator"):
        load_model(tmp_path / "evil.moekit")
    (tmp_path / "junk.moekit").write_text("not a zip")
    with pytest.raises(ModelFileError, match="is not a moekit model file"):
        load_model(tmp_path / "junk.moekit")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "absent.moekit")


def test_failed_save_leaves_previous_file_intact(data, tmp_path: Path, monkeypatch) -> None:
    X, y = data
    path = tmp_path / "m.moekit"
    first = MixtureOfExpertsRegressor(2, random_state=0).fit(X, y)
    save_model(first, path)
    before = path.read_bytes()

    class DiskFull(OSError):
        pass

    real_writestr = zipfile.ZipFile.writestr

    def failing_writestr(self, name, data, *args, **kwargs):  # fails half-way through the archive
        if name == "arrays.npz":
            raise DiskFull("no space left on device")
        return real_writestr(self, name, data, *args, **kwargs)

    monkeypatch.setattr(persistence.zipfile.ZipFile, "writestr", failing_writestr)
    second = MixtureOfExpertsRegressor(2, expert="student_t", random_state=1).fit(X, y)
    with pytest.raises(DiskFull):
        save_model(second, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.moekit"]  # the temporary file was removed
    monkeypatch.undo()
    np.testing.assert_array_equal(load_model(path).predict(X), first.predict(X))


def test_feature_names_default_to_feature_names_in_and_come_back(data, tmp_path: Path) -> None:
    """S3-15: a model fitted on a DataFrame kept no names, so `moekit predict` refused it."""
    pd = pytest.importorskip("pandas")
    X, y = data
    frame = pd.DataFrame(X, columns=["age", "bmi", "dose"])
    model = MixtureOfExpertsRegressor(2, random_state=0).fit(frame, y)
    path = save_model(model, tmp_path / "m.moekit")
    assert read_model_info(path)["feature_names"] == ["age", "bmi", "dose"]
    loaded = load_model(path)
    assert list(loaded.feature_names_in_) == ["age", "bmi", "dose"]
    np.testing.assert_array_equal(loaded.predict(frame), model.predict(frame))
    with pytest.raises(ModelFileError, match="feature_names has 2 names but the model has 3"):
        save_model(model, tmp_path / "n.moekit", feature_names=["a", "b"])


def test_calibration_and_standardisation_round_trip(data, tmp_path: Path) -> None:
    X, y = data
    model = MixtureOfExpertsRegressor(2, random_state=0, standardize=True).fit(X[:200], y[:200])
    model.calibrate_intervals(X[200:], y[200:])
    loaded = load_model(save_model(model, tmp_path / "m.moekit"))
    for a, b in zip(loaded.predict_interval(X, method="conformal"),
                    model.predict_interval(X, method="conformal")):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.x_scale_, model.x_scale_)
    # standard errors are recomputed from data after loading, identically
    np.testing.assert_allclose(loaded.summary_frame(X[:200], y[:200])["std_err"],
                               model.summary_frame()["std_err"], rtol=1e-10)


def test_files_that_stored_covariance_still_load(data, tmp_path: Path) -> None:
    """Older files hold covariance_ as an attribute; it is now computed on demand."""
    X, y = data
    path = save_model(MixtureOfExpertsRegressor(2, random_state=0).fit(X, y), tmp_path / "m.moekit")
    with zipfile.ZipFile(path) as archive:
        document = json.loads(archive.read("model.json"))
        npz = archive.read("arrays.npz")
    document["estimator"]["attributes"]["covariance_"] = 1.5
    with zipfile.ZipFile(tmp_path / "old.moekit", "w") as archive:
        archive.writestr("model.json", json.dumps(document))
        archive.writestr("arrays.npz", npz)
    loaded = load_model(tmp_path / "old.moekit")
    with pytest.raises(AttributeError, match=r"summary\(X, y\)"):
        loaded.covariance_
