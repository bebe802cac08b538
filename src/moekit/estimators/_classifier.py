"""MixtureOfExpertsClassifier: logistic / multinomial experts under a softmax gate."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from ._base import BaseMixtureOfExperts, add_intercept
from ._experts import MultinomialFamily
from ._gate import tree_log_proba


class MixtureOfExpertsClassifier(ClassifierMixin, BaseMixtureOfExperts):
    """Mixture of logistic (binary) or multinomial (multiclass) experts fitted by EM.

    ``p(c | x) = sum_k g_k(x) softmax(B_k x)_c``; the gate and each expert are multinomial
    logits fitted by Newton/IRLS with an L2 penalty on the non-intercept coefficients.

    Parameters
    ----------
    n_experts : int, default=3
    expert : {"logistic"}, default="logistic"
        Logistic for two classes, multinomial (reference class ``classes_[0]``) for more.
    gate_alpha : float, default=1.0
        L2 penalty on the gate (on the summed log-likelihood).
    expert_alpha : float, default=1.0
        L2 penalty on each expert; ``expert_alpha = 1 / C`` matches
        ``LogisticRegression(C=C)`` for one binary expert.
    n_init, init, max_iter, tol, warm_start, random_state, verbose
        As in :class:`MixtureOfExpertsRegressor`.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    gate_coefs_ : list of ndarray
        One array (1, n_experts_, n_features_in_ + 1); column 0 the intercept.
    expert_coef_ : ndarray of shape (n_experts_, n_classes, n_features_in_ + 1)
        Class 0 of every expert is the reference (zeros).
    n_experts_, loglik_history_, lower_bound_, n_iter_, converged_, n_reseeded_,
    removed_experts_, n_parameters_
        As in :class:`MixtureOfExpertsRegressor`.

    Examples
    --------
    >>> import numpy as np
    >>> from moekit.estimators import MixtureOfExpertsClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 2))
    >>> y = np.where(X[:, 0] > 0, X[:, 1] > 0, X[:, 1] < 0).astype(int)
    >>> clf = MixtureOfExpertsClassifier(n_experts=2, n_init=3, random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:2]).shape
    (2, 2)
    """

    def __init__(
        self,
        n_experts: int = 3,
        *,
        expert: str = "logistic",
        gate_alpha: float = 1.0,
        expert_alpha: float = 1.0,
        n_init: int = 3,
        init: str = "auto",
        max_iter: int = 200,
        tol: float = 1e-6,
        warm_start: bool = False,
        random_state: Any = None,
        verbose: int = 0,
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

    def _is_classifier(self) -> bool:
        return True

    def _validate_extra(self) -> None:
        if self.expert not in ("logistic",):
            raise ValueError(f"expert={self.expert!r} is not supported by the classifier; "
                             "use expert='logistic' (multinomial for more than two classes)")

    def _make_family(self):
        return MultinomialFamily(float(self.expert_alpha), len(self.classes_))

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

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities sum_k g_k(x) p_k(c | x), shape (n_samples, n_classes)."""
        check_is_fitted(self)
        X1 = add_intercept(self._validate_X(X, reset=False))
        g = np.exp(tree_log_proba(X1, self.gate_coefs_))
        pc = np.exp(self._make_family().class_log_proba(X1, self._get_state()))
        return np.einsum("nk,nkc->nc", g, pc)

    def predict_log_proba(self, X: ArrayLike) -> np.ndarray:
        """Log of :meth:`predict_proba`."""
        return np.log(np.clip(self.predict_proba(X), 1e-300, None))

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Most probable class, shape (n_samples,)."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]
