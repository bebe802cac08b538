"""MixtureOfExpertsClassifier: logistic / multinomial experts under a softmax gate."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets

from ._base import BaseMixtureOfExperts
from ._families import MultinomialFamily
from ._gate import tree_log_proba
from ._logit import logsumexp


class MixtureOfExpertsClassifier(ClassifierMixin, BaseMixtureOfExperts):
    """Mixture of logistic (binary) or multinomial (multiclass) experts fitted by EM.

    ``p(c | x) = sum_k g_k(x) softmax(B_k [1, x])_c`` with ``g(x) = softmax(V [1, x])``; the
    gate and each expert are multinomial logits (reference class ``classes_[0]``, reference
    expert 0), fitted by ECM: one safeguarded Newton step of each per EM iteration. The
    objective is the log-likelihood minus ``gate_alpha/2 ||V||^2 + expert_alpha/2 sum_k
    ||B_k||^2`` on the non-intercept coefficients of the standardised columns (mean 0, sd 1,
    learnt at fit), so the answer does not depend on the units of X; both 0 is maximum
    likelihood (with one expert, plain logistic regression: ``glm(family=binomial)``).

    Parameters
    ----------
    n_experts : int, default=3
    expert : {"logistic"}, default="logistic"
        Logistic for two classes, multinomial for more.
    gate_alpha : float, default=0.1
        L2 penalty on the gate (on the summed log-likelihood, standardised columns; a
        N(0, 1/gate_alpha) prior on log-odds per sd of each column).
    expert_alpha : float, default=1.0
        L2 penalty on each expert (standardised columns); with one binary expert,
        ``expert_alpha = 1 / C`` is ``LogisticRegression(C=C)`` on standardised X, so the
        default is scikit-learn's default logistic regression on scaled columns. Each expert
        sees only part of the rows, where classes are often separable: the penalty keeps its
        coefficients finite (0 is maximum likelihood, which then diverges).
    n_init, init, max_iter, tol, warm_start, random_state, verbose, standardize
        As in :class:`MixtureOfExpertsRegressor` (``verbose=1``: one line per restart to
        stderr; ``standardize=True``: coefficients and standard errors per sd of each column).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    gate_coefs_ : list of ndarray
        One array (1, n_experts_, n_features_in_ + 1); column 0 the intercept.
        ``gate_coef_`` is its (n_experts_, n_features_in_ + 1) view.
    expert_coef_ : ndarray of shape (n_experts_, n_classes, n_features_in_ + 1)
        Class 0 of every expert is the reference (zeros).
    x_mean_, x_scale_, aliased_features_, n_experts_, loglik_history_, reseed_iterations_,
    lower_bound_, n_iter_, converged_, n_reseeded_, removed_experts_, n_parameters_,
    covariance_
        As in :class:`MixtureOfExpertsRegressor`.

    Examples
    --------
    >>> import numpy as np
    >>> from moekit.estimators import MixtureOfExpertsClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 2))
    >>> y = np.where(X[:, 0] > 0, X[:, 1] > 0, X[:, 1] < 0).astype(int)
    >>> clf = MixtureOfExpertsClassifier(n_experts=2, n_init=3, random_state=0).fit(X, y)
    >>> proba = clf.predict_proba(X[:2])
    >>> proba.shape, bool(np.allclose(proba.sum(axis=1), 1.0))
    ((2, 2), True)
    """

    def __init__(
        self,
        n_experts: int = 3,
        *,
        expert: str = "logistic",
        gate_alpha: float = 0.1,
        expert_alpha: float = 1.0,
        n_init: int = 5,
        init: str = "auto",
        max_iter: int = 500,
        tol: float = 1e-6,
        warm_start: bool = False,
        random_state: Any = None,
        verbose: int = 0,
        standardize: bool = False,
    ) -> None:
        self.n_experts = n_experts
        self.expert = expert
        self.gate_alpha = gate_alpha
        self.expert_alpha = expert_alpha
        self.n_init = n_init
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start
        self.random_state = random_state
        self.verbose = verbose
        self.standardize = standardize

    def _is_classifier(self) -> bool:
        return True

    def _validate_extra(self) -> None:
        if self.expert not in ("logistic",):
            raise ValueError(f"expert={self.expert!r} is not supported by the classifier; "
                             "use expert='logistic' (multinomial for more than two classes)")

    def _make_family(self):
        return MultinomialFamily(float(self.expert_alpha), len(self.classes_))

    def _n_expert_classes(self) -> int | None:
        return len(self.classes_)

    def _prepare_y(self, y, reset: bool):
        if reset:
            check_classification_targets(y)
            self.classes_, codes = np.unique(y, return_inverse=True)
            if len(self.classes_) < 2:
                raise ValueError(
                    f"y has 1 class ({self.classes_[0]!r}); a classifier needs at least two "
                    "classes in y")
            return codes.ravel()
        y = np.asarray(y).ravel()
        codes = np.searchsorted(self.classes_, y)
        codes = np.clip(codes, 0, len(self.classes_) - 1)
        if not np.all(self.classes_[codes] == y):
            unknown = np.setdiff1d(y, self.classes_)
            raise ValueError(f"y contains labels {unknown[:5].tolist()} not seen in fit "
                             f"(classes_={self.classes_.tolist()}); pass only known labels")
        return codes

    def _y_for_kmeans(self, y) -> np.ndarray:
        return np.eye(len(self.classes_))[y]

    def predict_log_proba(self, X: ArrayLike) -> np.ndarray:
        """Log class probabilities log sum_k g_k(x) p_k(c | x), all <= 0, shape (n, n_classes)."""
        Z1 = self._Z1(X)
        state = self._internal_state()
        log_gate = tree_log_proba(Z1, state["gate_coefs_"])
        log_pc = self._make_family().class_log_proba(Z1, state)
        out = logsumexp(log_gate[:, :, None] + log_pc, axis=1)
        out -= logsumexp(out, axis=1, keepdims=True)
        return np.minimum(out, 0.0, out=out)

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities sum_k g_k(x) p_k(c | x), shape (n_samples, n_classes).

        Every entry is in [0, 1] and every row sums to 1 (to rounding).
        """
        proba = np.exp(self.predict_log_proba(X))
        proba /= proba.sum(axis=1, keepdims=True)
        return np.clip(proba, 0.0, 1.0, out=proba)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Most probable class, shape (n_samples,)."""
        log_proba = self.predict_log_proba(X)
        return self.classes_[np.argmax(log_proba, axis=1)]
