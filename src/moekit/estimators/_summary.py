"""The coefficient table: parameter names, ``summary()`` text and ``summary_frame()``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from ._em import penalty
from ._families import df_at_bound
from ._inference import NO_DATA, Inference, infer
from ._validation import check_number, check_sample_weight

# a parameter whose curvature is more than this share penalty is flagged "penalty-dominated"
PENALTY_DOMINATED = 0.5

_MODEL = {
    "linear": "Gaussian linear regression experts N(y; x'b_k, s_k^2)",
    "student_t": "Student-t linear regression experts t_df_k(y; x'b_k, s_k)",
    "poisson": "Poisson regression experts (log link) Poisson(y; exp(x'b_k))",
    "multinomial": "multinomial-logit experts softmax(B_k x)",
}
_KIND = {
    "observed": "inverse observed information (the maximum likelihood estimate's)",
    "sandwich": ("sandwich A^-1 I A^-1 of the penalised estimate (A = I + penalty curvature, "
                 "I the observed information; its bias is not included)"),
    "robust": "robust sandwich A^-1 B A^-1 (B the outer product of per-row scores)",
    "posterior": "A^-1: Laplace approximation under the Gaussian prior the penalty implies",
}


def parameter_names(est: Any, feature_names: list[str] | None = None) -> list[str]:
    """Names of the free parameters on the reported scale, in the packed order."""
    family = est._make_family()
    if feature_names is None:
        feature_names = est._feature_names()
    elif len(feature_names) != est.n_features_in_:
        raise ValueError(f"feature_names has {len(feature_names)} names but the model has "
                         f"{est.n_features_in_} features; pass one name per column of X")
    terms = ["intercept", *[str(f) for f in feature_names]]
    names = []
    flat = len(est.gate_coefs_) == 1
    for level, c in enumerate(est.gate_coefs_):
        for a in range(c.shape[0]):
            if flat:
                tag = "gate"
                names += [f"{tag} expert {b} vs 0: {t}" for b in range(1, c.shape[1]) for t in terms]
                continue
            node = f" node {a}" if c.shape[0] > 1 else ""
            names += [f"gate L{level}{node} child {b} vs 0: {t}"
                      for b in range(1, c.shape[1]) for t in terms]
    for k in range(est.n_experts_):
        if family.name == "multinomial":
            free = family.free_names(terms, est.classes_)
        else:
            free = family.free_names(terms)
        names += [f"expert {k}: {t}" for t in free]
    return names


def _notes_per_parameter(est: Any, inf: Inference) -> list[str]:
    notes = []
    names = parameter_names(est)
    for i, name in enumerate(names):
        if inf.aliased[i]:
            notes.append("aliased")
        elif name.endswith("log(df)") and df_at_bound(float(np.exp(inf.theta[i]))):
            notes.append("df at bound")
        elif inf.penalty_share[i] > PENALTY_DOMINATED:
            notes.append("penalty-dominated")
        else:
            notes.append("")
    return notes


def _columns(inf: Inference, level: float):
    se = np.sqrt(np.where(np.diag(inf.covariance) > 0, np.diag(inf.covariance), np.nan))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = inf.theta / se
    p = 2 * stats.norm.sf(np.abs(z))
    q = stats.norm.ppf(0.5 + level / 2)
    return se, z, p, inf.theta - q * se, inf.theta + q * se


def summary_frame(est: Any, inf: Inference, feature_names: list[str] | None,
                  level: float) -> Any:
    try:
        import pandas as pd
    except ImportError as err:  # pragma: no cover - pandas is in the test extra
        raise ImportError("summary_frame() needs pandas (pip install pandas); summary() gives "
                          "the same table as text") from err
    se, z, p, lo, hi = _columns(inf, level)
    theta = np.where(inf.aliased, np.nan, inf.theta)
    return pd.DataFrame(
        {"coef": theta, "std_err": se, "z": z, "p_value": p, "ci_lower": lo, "ci_upper": hi,
         "penalty_share": inf.penalty_share, "note": _notes_per_parameter(est, inf)},
        index=pd.Index(parameter_names(est, feature_names), name="parameter"))


def _header(est: Any, inf: Inference) -> list[str]:
    family = est._make_family()
    K = est.n_experts_
    kind = _MODEL.get(family.name, "experts")
    if len(est.gate_coefs_) > 1:
        gate = f"a tree of multinomial-logit gates, branching {tuple(est.branching_)}"
    elif K == 1:
        gate = "no gate (one expert)"
    else:
        gate = "a multinomial-logit gate g = softmax(V x)"
    names = est._feature_names()
    aliased = [names[j] for j in getattr(est, "aliased_features_", [])]
    state = est._internal_state()
    pen = penalty(state, float(est.gate_alpha), est._expert_penalty())
    ll = est.lower_bound_ + pen
    lines = [f"{type(est).__name__}: {K} {kind}, {gate}",
             f"features {est.n_features_in_}, free parameters {est.n_parameters_}, "
             f"log-likelihood {ll:.4f} (training data)"]
    acting = []
    if K > 1 and est.gate_alpha > 0:
        acting.append(f"gate_alpha={est.gate_alpha:g}")
    if est.expert_alpha > 0 and "expert_coef_" in state:
        acting.append(f"expert_alpha={est.expert_alpha:g}")
    if acting:
        if len(acting) == 1 and K > 1:
            acting.append("expert_alpha=0" if "gate" in acting[0] else "gate_alpha=0")
        lines.append(f"penalised fit: {', '.join(acting)} (L2 on the coefficients of the "
                     f"standardised columns); penalised objective {est.lower_bound_:.4f} = "
                     f"log-likelihood - penalty {pen:.4f}")
    else:
        lines.append("unpenalised maximum likelihood")
    lines.append(f"EM: {est.n_iter_} iterations, {'converged' if est.converged_ else 'NOT converged'}")
    scale = "standardised columns (standardize=True)" if est.standardize else "units of X"
    lines.append(f"standard errors: {_KIND[inf.kind]}; coefficients in {scale}")
    if aliased:
        lines.append(f"{len(aliased)} not defined because of singularities (aliased, fixed at 0): "
                     + ", ".join(repr(a) for a in aliased))
    return lines


def summary_text(est: Any, inf: Inference, feature_names: list[str] | None) -> str:
    names = parameter_names(est, feature_names)
    notes = _notes_per_parameter(est, inf)
    se, z, p, lo, hi = _columns(inf, 0.95)
    width = max(len(n) for n in names) + 2
    head = (f"{'parameter':<{width}}{'coef':>11}{'std err':>11}{'z':>9}{'P>|z|':>9}"
            f"{'[0.025':>11}{'0.975]':>11}")
    lines = [*_header(est, inf), "", head, "-" * len(head)]
    for i, name in enumerate(names):
        if inf.aliased[i]:
            lines.append(f"{name:<{width}}{'NA':>11}   (aliased: not defined because of "
                         "singularities)")
            continue
        flag = f"  {notes[i]}" if notes[i] else ""
        lines.append(f"{name:<{width}}{inf.theta[i]:>11.4f}{se[i]:>11.4f}{z[i]:>9.2f}"
                     f"{p[i]:>9.3f}{lo[i]:>11.4f}{hi[i]:>11.4f}{flag}")
    lines.append("")
    if hasattr(est, "expert_scale_"):
        lines.append("expert scales: " + ", ".join(f"{v:.4g}" for v in est.expert_scale_))
    if hasattr(est, "expert_df_"):
        lines.append("expert df: " + ", ".join(f"{v:.4g}" for v in est.expert_df_))
    if est.n_experts_ > 1 and len(est.gate_coefs_) == 1:
        lines.append("gate rows: log-odds of each expert against expert 0 (the reference).")
    elif len(est.gate_coefs_) > 1:
        lines.append("gate rows: log-odds of each child against child 0 of its node.")
    dominated = sum(n == "penalty-dominated" for n in notes)
    if dominated:
        lines.append(f"{dominated} parameter(s) marked penalty-dominated: more than half of "
                     "their curvature comes from the penalty, so the data say little about "
                     "them and their standard errors describe the penalised estimate only.")
    lines.extend(inf.notes)
    return "\n".join(lines)


class InferenceMixin:
    """Standard errors and coefficient tables of a fitted mixture of experts.

    Mixed into :class:`~moekit.estimators._base.BaseMixtureOfExperts`: it reads the fitted
    attributes and the training data ``fit`` keeps (``_train_data``), and caches the
    standard errors of the training data (``_covariance``) once computed.
    """

    if TYPE_CHECKING:  # provided by the estimator this is mixed into
        def _validate_X(self, X: Any, reset: bool) -> Any: ...
        def _prepare_y(self, y: Any, reset: bool) -> Any: ...

    def _inference(self, X: ArrayLike | None, y: ArrayLike | None,
                   sample_weight: ArrayLike | None, se: str) -> Inference:
        check_is_fitted(self)
        if X is None and y is None and se == "auto":
            return self._training_inference()
        if X is None or y is None:
            data = self.__dict__.get("_train_data")
            if data is None:
                raise ValueError(NO_DATA)
            Xv, yv, sw = data
        else:
            Xv = self._validate_X(X, reset=False)
            yv = self._prepare_y(y, reset=False)
            sw = check_sample_weight(sample_weight, Xv.shape[0])
        return self._infer(Xv, yv, sw, se)

    def _infer(self, X: Any, y: Any, sw: Any, se: str) -> Inference:
        est: Any = self
        with threadpool_limits(limits=1, user_api="blas"):  # skinny GEMMs, as in fit
            return infer(family=est._make_family(), state=est._internal_state(),
                         branching=tuple(est.branching_), design=est._design(),
                         standardize=bool(est.standardize), gate_alpha=float(est.gate_alpha),
                         X=X, y=y, sw=sw, se=se)

    def _training_inference(self) -> Inference:
        cached = self.__dict__.get("_covariance")
        if cached is None:
            data = self.__dict__.get("_train_data")
            if data is None:
                raise AttributeError(NO_DATA)
            X, y, sw = data
            cached = self._infer(X, y, sw, "auto")
            self._covariance = cached
        return cached

    @property
    def covariance_(self) -> np.ndarray:
        """Covariance of the free parameters (see :meth:`summary`), on the reported scale.

        Computed when first read, from the training data (the inverse observed information
        for an unpenalised fit; the sandwich of the penalised estimate otherwise). Rows and
        columns of aliased coefficients are NaN. After unpickling or ``load_model`` the
        training data are gone: use ``summary(X, y)`` or ``summary_frame(X, y)``.
        """
        return self._training_inference().covariance

    def summary(
        self,
        X: ArrayLike | None = None,
        y: ArrayLike | None = None,
        sample_weight: ArrayLike | None = None,
        feature_names: list[str] | None = None,
        *,
        se: str = "auto",
    ) -> str:
        """Text table of gate and expert coefficients with standard errors, z and p-values.

        Parameters
        ----------
        X, y : array-like, optional
            Data for the standard errors; default the training data (kept by ``fit``).
        sample_weight : array-like of shape (n_samples,), optional
        feature_names : list of str, optional
            Names of the columns of X (default ``feature_names_in_`` or ``x0, x1, ...``).
        se : {"auto", "observed", "sandwich", "robust", "posterior"}, default="auto"
            ``"observed"``: inverse observed information of the log-likelihood (the MLE's
            asymptotic covariance); ``"sandwich"``: ``A^-1 I A^-1`` with ``A`` the penalised
            and ``I`` the observed information (a penalised estimate's covariance);
            ``"robust"``: the same with the outer product of per-row scores for ``I``
            (Huber-White); ``"posterior"``: ``A^-1`` (Laplace approximation of the posterior
            under the Gaussian prior the penalty implies). ``"auto"``: observed without a
            penalty, sandwich with one. See :mod:`moekit.estimators._inference`.

        Returns
        -------
        str
        """
        return summary_text(self, self._inference(X, y, sample_weight, se),
                                     feature_names)

    def summary_frame(
        self,
        X: ArrayLike | None = None,
        y: ArrayLike | None = None,
        sample_weight: ArrayLike | None = None,
        feature_names: list[str] | None = None,
        *,
        se: str = "auto",
        level: float = 0.95,
    ) -> Any:
        """The coefficient table as a pandas DataFrame, one row per free parameter.

        Columns ``coef``, ``std_err``, ``z``, ``p_value``, ``ci_lower``, ``ci_upper`` (a Wald
        interval at ``level``), ``penalty_share`` (fraction of the curvature that comes from
        the penalty: near 1 the data say little and the penalty decides) and ``note``
        ("aliased", "penalty-dominated", "df at bound"). Parameters as in :meth:`summary`.
        """
        check_number("level", level, 0.0, strict=True, fix="use 0 < level < 1, e.g. 0.95")
        if level >= 1:
            raise ValueError(f"level={level!r} must be < 1; use 0 < level < 1, e.g. 0.95")
        return summary_frame(self, self._inference(X, y, sample_weight, se),
                                      feature_names, level)
