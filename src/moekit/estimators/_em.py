"""The EM loop of every mixture-of-experts estimator, as functions of explicit inputs.

Nothing here reads or writes an estimator: the data travel in a frozen :class:`EMData`, the
knobs in a frozen :class:`EMSettings`, the expert maths in a family object (``_families``), and
every run returns a frozen :class:`EMRun` record (scikit-learn's ``BaseMixture.fit_predict``
keeps its run state in locals the same way).

One EM iteration:

1. E-step in log space: ``log g_k(x) + log p_k(y | x)``, responsibilities ``h``; the
   penalised log-likelihood of the current parameters goes into the history.
2. Collapsed experts (no posterior mass, or a scale at its floor) are re-seeded on the
   worst-fitted rows; the iteration is recorded in ``EMRun.reseed_iterations``, since the
   likelihood may drop there and climb again (it is the only place it may).
3. M-step: every expert exactly (weighted least squares / IRLS / ECM), then the gate by
   ``gate_steps`` safeguarded Newton steps (ECM). Each part increases its share of Q, so the
   penalised log-likelihood never decreases between re-seeds.
4. Stop when the last gain and the gain still to come, estimated by Aitken's acceleration
   from the last three values (Böhning et al. 1994; McNicholas et al. 2010), are both at most
   ``tol`` per unit of sample weight.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ._gate import flat_gate_step, tree_log_proba, tree_m_step, tree_shapes
from ._init import AUTO_CYCLE, initial_resp
from ._logit import HESSIAN_MAX_WORK, CurvatureRows, Factor, logsumexp
from ._params import pack, unpack
from ._solvers import row_products

# the rows' outer products are kept for the expert M-step while they take at most this much
PRODUCTS_MAX_BYTES = 128 * 2**20


@dataclass(frozen=True, kw_only=True)
class EMData:
    """What EM reads: the internal design, the target, the weights, and per-fit caches.

    ``products`` are the rows' symmetric outer products (``_solvers.row_products``) when they
    fit in ``products_max_bytes`` (else the expert M-step works in row chunks, so memory
    stays O(n_samples * n_experts)); ``gate_curvature`` / ``expert_curvature`` the rows used
    for Newton curvature (a strided subset on large data).
    """

    X1: np.ndarray
    y: np.ndarray
    sw: np.ndarray
    n_gate_outcomes: int
    n_expert_classes: int | None
    hessian_max_work: float
    products: np.ndarray | None
    gate_curvature: CurvatureRows
    expert_curvature: CurvatureRows | None

    @classmethod
    def build(cls, X1: np.ndarray, y: np.ndarray, sw: np.ndarray, *, n_gate_outcomes: int,
              n_expert_classes: int | None = None,
              hessian_max_work: float = HESSIAN_MAX_WORK,
              products_max_bytes: float = PRODUCTS_MAX_BYTES) -> EMData:
        n, d = X1.shape
        nbytes = 8.0 * n * d * (d + 1) / 2
        return cls(
            X1=X1, y=y, sw=sw, n_gate_outcomes=n_gate_outcomes,
            n_expert_classes=n_expert_classes, hessian_max_work=hessian_max_work,
            products=row_products(X1) if nbytes <= products_max_bytes else None,
            gate_curvature=CurvatureRows.build(X1, max(n_gate_outcomes, 2),
                                               max_work=hessian_max_work),
            expert_curvature=(None if n_expert_classes is None else CurvatureRows.build(
                X1, n_expert_classes, max_work=hessian_max_work)),
        )

    def subset(self, rows: np.ndarray) -> EMData:
        """The same data restricted to ``rows`` (caches rebuilt)."""
        return EMData.build(self.X1[rows], self.y[rows], self.sw[rows],
                            n_gate_outcomes=self.n_gate_outcomes,
                            n_expert_classes=self.n_expert_classes,
                            hessian_max_work=self.hessian_max_work)

    @property
    def total_weight(self) -> float:
        return float(np.sum(self.sw))


@dataclass(frozen=True, kw_only=True)
class EMSettings:
    """The knobs of one EM run (``tol`` per unit of sample weight).

    ``gate_steps`` Newton steps of the flat gate per EM iteration, each with curvature at
    most ``gate_refresh`` steps old (recomputed sooner when a step fails).
    """

    gate_alpha: float
    expert_alpha: float
    max_iter: int
    tol: float
    allow_removal: bool = True
    gate_steps: int = 1
    gate_refresh: int = 4
    accelerate: bool = True
    verbose: int = 0


@dataclass(frozen=True, kw_only=True)
class EMRun:
    """The record of one EM run: final parameters and how it got there."""

    state: dict[str, Any]
    branching: tuple[int, ...]
    history: tuple[float, ...]
    converged: bool
    n_iter: int
    n_reseeded: int
    removed: tuple[int, ...]
    reseed_iterations: tuple[int, ...]
    init: str

    @property
    def lower_bound(self) -> float:
        return self.history[-1]


def penalty(state: dict[str, Any], gate_alpha: float, expert_alpha: float) -> float:
    """The L2 penalty ``alpha/2 ||non-intercept coefficients||^2`` of gate and experts."""
    pen = 0.5 * gate_alpha * sum(float(np.sum(c[..., 1:] ** 2)) for c in state["gate_coefs_"])
    if "expert_coef_" in state:
        pen += 0.5 * expert_alpha * float(np.sum(state["expert_coef_"][..., 1:] ** 2))
    return pen


def has_converged(history: list[float], tol_total: float) -> bool:
    """The last gain is at most ``tol_total``, and so is the gain still to come.

    The gain still to come is Aitken's estimate ``g_t r / (1 - r)`` from the last two gains
    (ratio ``r = g_t / g_{t-1}``): a slowly converging run (r near 1) keeps going although
    its last step gained little, and one whose gains grow again is not converged.
    """
    if len(history) < 2:
        return False
    last = history[-1] - history[-2]
    if abs(last) > tol_total:
        return False
    if len(history) < 3 or last <= 0.0:
        return True
    prev = history[-2] - history[-3]
    if prev <= 0.0:
        return True
    rate = last / prev
    return rate < 1.0 and last * rate / (1.0 - rate) <= tol_total


def gate_log_proba(data: EMData, state: dict[str, Any]) -> np.ndarray:
    return tree_log_proba(data.X1, state["gate_coefs_"])


def m_step(data: EMData, family: Any, state: dict[str, Any], branching: tuple[int, ...],
           resp: np.ndarray, gate_logp: np.ndarray, settings: EMSettings,
           gate_steps: int | None = None, factor: Factor | None = None,
           ) -> tuple[dict[str, Any], np.ndarray, Factor | None]:
    """Experts then gate; returns the new state, the gate's new log-probabilities, and the
    gate's curvature factor for the next call (flat gate only)."""
    steps = settings.gate_steps if gate_steps is None else gate_steps
    state = family.m_step(data.X1, data.y, resp * data.sw[:, None], state,
                          products=data.products, curvature=data.expert_curvature)
    gates = state["gate_coefs_"]
    if len(branching) == 1:
        coef, gate_logp, factor = flat_gate_step(
            data.X1, resp, data.sw, gates[0][0], settings.gate_alpha, gate_logp, n_steps=steps,
            curvature=data.gate_curvature, factor=factor, max_age=settings.gate_refresh)
        state["gate_coefs_"] = [coef[None]]
    else:
        state["gate_coefs_"] = tree_m_step(data.X1, resp, data.sw, gates, branching,
                                           settings.gate_alpha, n_steps=steps,
                                           curvature=data.gate_curvature)
        gate_logp = gate_log_proba(data, state)
    return state, gate_logp, factor


def initialise(data: EMData, family: Any, branching: tuple[int, ...], resp: np.ndarray,
               settings: EMSettings) -> dict[str, Any]:
    """Parameters after one M-step from ``resp`` (the gate starts at zero: uniform)."""
    K = int(np.prod(branching))
    state = family.init_params(data.X1, data.y, K)
    state["gate_coefs_"] = [np.zeros((m, b, data.X1.shape[1])) for m, b in tree_shapes(branching)]
    gate_logp = np.full((data.X1.shape[0], K), -np.log(K))
    return m_step(data, family, state, branching, resp, gate_logp, settings, gate_steps=3)[0]


def _reseed(resp: np.ndarray, ll_rows: np.ndarray, k: int) -> np.ndarray:
    n, K = resp.shape
    m = max(n // max(K, 1), 2)
    rows = np.argsort(ll_rows)[:m]  # the worst-explained rows
    resp = resp.copy()
    resp[rows] = 0.0
    resp[rows, k] = 1.0
    resp[:, k] = np.maximum(resp[:, k], 1e-6)
    return resp / resp.sum(1, keepdims=True)


def _remove(family: Any, state: dict[str, Any], resp: np.ndarray, k: int):
    state = family.remove(state, k)
    g = np.delete(state["gate_coefs_"][0], k, axis=1)
    g -= g[:, :1, :]  # keep child 0 the reference (softmax is shift invariant)
    state["gate_coefs_"] = [g]
    resp = np.delete(resp, k, axis=1)
    return state, resp / np.maximum(resp.sum(1, keepdims=True), 1e-300)


@dataclass(frozen=True, kw_only=True)
class _EStep:
    gate_logp: np.ndarray
    log_joint: np.ndarray
    ll_rows: np.ndarray
    ll: float

    def resp(self) -> np.ndarray:
        return np.exp(self.log_joint - self.ll_rows[:, None])


def _e_step(data: EMData, family: Any, state: dict[str, Any], gate_logp: np.ndarray,
            settings: EMSettings) -> _EStep:
    log_joint = gate_logp + family.log_prob(data.X1, data.y, state)
    ll_rows = logsumexp(log_joint, axis=1)
    ll = float(data.sw @ ll_rows) - penalty(state, settings.gate_alpha, settings.expert_alpha)
    return _EStep(gate_logp=gate_logp, log_joint=log_joint, ll_rows=ll_rows, ll=ll)


def _can_accelerate(family: Any) -> bool:
    return family.name != "sklearn"


def run_em(data: EMData, family: Any, state: dict[str, Any], branching: tuple[int, ...],
           settings: EMSettings, *, init: str = "warm") -> EMRun:
    """EM from ``state`` until convergence or ``settings.max_iter`` M-steps.

    With ``settings.accelerate``, pairs of EM steps are extrapolated (SQUAREM, Varadhan &
    Roland 2008, steplength S3) and the extrapolated point gets one more EM step; it is kept
    only if its penalised log-likelihood is at least that of the first EM step of the pair,
    else the plain second step is kept. ``history`` holds the kept iterates only, so it never
    decreases (between re-seeds), whatever the extrapolation did.
    """
    state = {k: ([a.copy() for a in v] if isinstance(v, list) and k == "gate_coefs_" else v)
             for k, v in state.items()}
    tol_total = settings.tol * data.total_weight
    accelerate = settings.accelerate and _can_accelerate(family)
    reseed_at: list[int] = []
    n_reseeded, alive = 0, list(range(int(np.prod(branching))))
    removed: list[int] = []
    converged, n_iter = False, 0
    factor: Factor | None = None
    step_max = 1.0
    e = _e_step(data, family, state, gate_log_proba(data, state), settings)
    history = [e.ll]

    def log(value: float) -> None:
        history.append(value)
        if settings.verbose > 1:
            print(f"  iter {len(history) - 1:4d} ({n_iter} M-steps)  penalised "
                  f"log-likelihood {value:.6f}", file=sys.stderr)

    while True:
        since = reseed_at[-1] if reseed_at else 0
        if len(history) - since > 1 and has_converged(history[since:], tol_total):
            converged = True
            break
        if n_iter >= settings.max_iter:
            break
        resp = e.resp()
        mass = data.sw @ resp
        K = resp.shape[1]
        changed = False
        for k in range(K - 1, -1, -1):
            if K == 1 or not (mass[k] < 1e-8 * data.total_weight
                              or family.is_collapsed(state, k)):
                continue
            if n_reseeded < 2 * len(alive) or not settings.allow_removal:
                if n_reseeded < 4 * len(alive):
                    resp = _reseed(resp, e.ll_rows, k)
                    n_reseeded += 1
                    changed = True
            elif resp.shape[1] > 1:
                state, resp = _remove(family, state, resp, k)
                removed.append(alive.pop(k))
                branching = (resp.shape[1],)
                e = replace(e, gate_logp=gate_log_proba(data, state))
                factor = None
                K = resp.shape[1]
                changed = True
        state1, logp1, factor = m_step(data, family, state, branching, resp, e.gate_logp,
                                       settings, factor=factor)
        n_iter += 1
        e1 = _e_step(data, family, state1, logp1, settings)
        if changed or not accelerate or n_iter + 2 > settings.max_iter:
            state, e = state1, e1
            log(e.ll)
            if changed:
                reseed_at.append(len(history) - 1)
            continue
        log(e1.ll)
        state2, logp2, factor = m_step(data, family, state1, branching, e1.resp(), logp1,
                                       settings, factor=factor)
        n_iter += 1
        K = int(np.prod(branching))
        th0, th1 = pack(family, state, K), pack(family, state1, K)
        th2 = pack(family, state2, K)
        r, v = th1 - th0, th2 - 2 * th1 + th0
        nr, nv = float(np.linalg.norm(r)), float(np.linalg.norm(v))
        e3 = None
        if nv > 0 and np.isfinite(nr / nv):
            a = -min(max(1.0, nr / nv), step_max)
            statep = unpack(family, th0 - 2 * a * r + a * a * v, state, K)
            ep = _e_step(data, family, statep, gate_log_proba(data, statep), settings)
            if np.isfinite(ep.ll):
                state3, logp3, factor = m_step(data, family, statep, branching, ep.resp(),
                                               ep.gate_logp, settings, factor=factor)
                n_iter += 1
                e3 = _e_step(data, family, state3, logp3, settings)
                if np.isfinite(e3.ll) and e3.ll >= e1.ll:
                    if a <= -step_max:
                        step_max *= 4.0
                else:
                    e3 = None
                    step_max = max(1.0, step_max / 4.0)
        if e3 is not None:
            state, e = state3, e3
        else:
            state, e = state2, _e_step(data, family, state2, logp2, settings)
        log(e.ll)
    return EMRun(state=state, branching=tuple(int(b) for b in branching),
                 history=tuple(history), converged=converged, n_iter=n_iter,
                 n_reseeded=n_reseeded, removed=tuple(removed),
                 reseed_iterations=tuple(reseed_at), init=init)


def run_restarts(
    data: EMData,
    family: Any,
    branching: tuple[int, ...],
    settings: EMSettings,
    *,
    n_init: int,
    init: str,
    rng: np.random.RandomState,
    y_cluster: np.ndarray,
    warm_state: dict[str, Any] | None = None,
    large_above: int = 50_000,
    subsample_rows: int = 20_000,
) -> EMRun:
    """The best of ``n_init`` EM runs (or one run from ``warm_state``).

    Above ``large_above`` rows every restart runs on one random subsample of
    ``subsample_rows`` rows, and only the best continues on all rows: a restart then costs a
    subsample fit, not a full one.
    """
    if warm_state is not None:
        return _report(run_em(data, family, warm_state, branching, settings), 0, 1, 0.0,
                       settings)
    n = data.X1.shape[0]
    large = n > large_above
    fit_data = data
    if large:
        rows = np.sort(rng.choice(n, size=subsample_rows, replace=False))
        fit_data = data.subset(rows)
        y_cluster = y_cluster[rows]
    best: EMRun | None = None
    for r in range(n_init):
        start = time.perf_counter()
        method = init if init != "auto" else AUTO_CYCLE[r % len(AUTO_CYCLE)]
        resp = initial_resp(fit_data.X1[:, 1:], y_cluster, fit_data.sw, branching, method, rng)
        state = initialise(fit_data, family, branching, resp, settings)
        run = run_em(fit_data, family, state, branching, settings, init=method)
        _report(run, r, n_init, time.perf_counter() - start, settings,
                f" on a {subsample_rows}-row subsample" if large else "")
        if best is None or run.lower_bound > best.lower_bound:
            best = run
    if best is None:  # pragma: no cover - n_init >= 1 is validated
        raise ValueError("n_init must be >= 1")
    if large:
        start = time.perf_counter()
        run = run_em(data, family, best.state, best.branching, settings, init=best.init)
        best = replace(run, n_reseeded=run.n_reseeded + best.n_reseeded,
                       removed=best.removed + run.removed)
        _report(best, -1, n_init, time.perf_counter() - start, settings, " (all rows)")
    return best


def _report(run: EMRun, r: int, n_init: int, seconds: float, settings: EMSettings,
            where: str = "") -> EMRun:
    if settings.verbose:
        tag = "best restart continued" if r < 0 else f"restart {r + 1}/{n_init} ({run.init})"
        status = "converged" if run.converged else "not converged"
        print(f"{tag}{where}: penalised log-likelihood {run.lower_bound:.6f} after "
              f"{run.n_iter} iterations, {status}, {seconds:.2f} s", file=sys.stderr)
    return run
