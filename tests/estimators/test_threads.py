"""Fits run with one BLAS thread whatever the caller set (S1-1: 5-27x slower with 2 threads)."""

from __future__ import annotations

import time

import numpy as np
from sklearn.linear_model import LinearRegression
from threadpoolctl import threadpool_info, threadpool_limits

from moekit.estimators import MixtureOfExpertsRegressor, make_moe_regression

SEEN_THREADS: list[int] = []


class RecordingRegressor(LinearRegression):
    """A linear expert that records how many BLAS threads it was given."""

    def fit(self, X, y, sample_weight=None):
        SEEN_THREADS.extend(i["num_threads"] for i in threadpool_info()
                            if i["user_api"] == "blas")
        return super().fit(X, y, sample_weight=sample_weight)


def test_blas_is_limited_to_one_thread_inside_fit():
    X, y, _ = make_moe_regression(300, 2, 2, random_state=0)
    SEEN_THREADS.clear()
    with threadpool_limits(limits=4, user_api="blas"):
        MixtureOfExpertsRegressor(2, expert=RecordingRegressor(), n_init=1, max_iter=3,
                                  random_state=0).fit(X, y)
        outside = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert SEEN_THREADS and set(SEEN_THREADS) == {1}
    assert set(outside) == {4}  # the caller's setting is restored


def _cpu_seconds(X, y, threads):
    with threadpool_limits(limits=threads, user_api="blas"):
        start = time.process_time()  # CPU of every thread: spinning BLAS threads count
        MixtureOfExpertsRegressor(3, random_state=0, n_init=2).fit(X, y)
        return time.process_time() - start


def test_many_blas_threads_are_not_slower_than_one():
    """The audit's 5000 x 10 x 3 fit, with 8 BLAS threads on however many cores there are."""
    X, y, _ = make_moe_regression(5000, 10, 3, random_state=0)
    _cpu_seconds(X[:500], y[:500], 1)  # warm up imports and caches
    one, many = [], []
    for _ in range(5):  # interleaved, so that machine load hits both alike; the best of each
        one.append(_cpu_seconds(X, y, 1))
        many.append(_cpu_seconds(X, y, 8))
    assert min(many) <= 1.2 * min(one), (one, many)
    assert np.isfinite(min(one))
