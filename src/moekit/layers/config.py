"""The configuration of an MoE layer: one frozen record per part, nested in :class:`MoEConfig`.

Legend: D model dim, F expert hidden dim, E experts, K experts per token.

=====================  ============================================================================
record                 what it holds
=====================  ============================================================================
``RouterConfig``       the router: kind, D, E, K and the router-specific options (in ``routing``)
``ExpertsConfig``      the routed experts' FFN: F, activation, biases
``DispatchConfig``     how slots reach the experts: capacity (token choice), drop policy, backend
``SharedExpertsConfig``  a dense FFN every token passes through (DeepSeek, Qwen2-MoE)
``MoEConfig``          the four above plus the weights of the auxiliary losses
=====================  ============================================================================

Capacity has one meaning per router family: for token-choice routers it is a dispatch setting
(``DispatchConfig.capacity_factor``: over-full experts drop slots); for ``expert_choice`` it is
the routing rule itself (``RouterConfig.capacity_factor``: each expert picks
``ceil(cf * T * K / E)`` tokens). :meth:`MoEConfig.create` puts a flat ``capacity_factor`` where it
belongs; :attr:`MoEConfig.capacity_factor` reads it back from either place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from moekit.layers._checks import check_choice, check_positive_int
from moekit.layers.experts import ACTIVATIONS, Activation
from moekit.layers.routing import RouterConfig, RouterKind

Backend = Literal["loop", "grouped_mm", "cpu", "triton"]
BACKEND_NAMES: tuple[str, ...] = get_args(Backend)
DropPolicy = Literal["position", "score"]
DROP_POLICIES: tuple[str, ...] = get_args(DropPolicy)

#: Routers that balance without an auxiliary loss: their default ``aux_loss_weight`` is 0.
BALANCED_WITHOUT_AUX_LOSS: frozenset[str] = frozenset({"sigmoid_bias", "expert_choice"})
DEFAULT_AUX_LOSS_WEIGHT = 0.01


def _check_non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}={value!r} must be a number; pass e.g. {name}=0.01")
    if not value >= 0:
        raise ValueError(f"{name}={value} must be >= 0; use 0 to switch the loss off")


def check_capacity_factor(value: object) -> None:
    """``capacity_factor`` is None (dropless) or a number > 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"capacity_factor={value!r} must be a number or None (dropless)")
    if not value > 0:
        raise ValueError(f"capacity_factor={value} must be > 0 (or None for dropless routing); "
                         "typical values are 1.0 to 2.0")


@dataclass(frozen=True, kw_only=True)
class ExpertsConfig:
    """The routed experts: E feed-forward networks of hidden size ``d_ff``.

    Parameters
    ----------
    d_ff : hidden features F of each expert.
    activation : ``"swiglu"``, ``"geglu"`` (gated: ``act(x W_gate) * (x W_up)``), ``"gelu"``,
        ``"relu"`` or ``"silu"``.
    bias : per-expert biases in both projections.
    """

    d_ff: int
    activation: Activation = "swiglu"
    bias: bool = False

    def __post_init__(self) -> None:
        check_positive_int("d_ff", self.d_ff)
        check_choice("activation", self.activation, ACTIVATIONS)


@dataclass(frozen=True, kw_only=True)
class DispatchConfig:
    """How token-slots reach the experts.

    Parameters
    ----------
    capacity_factor : None (dropless, the default) or the token-choice capacity: each expert takes
        at most ``C = ceil(capacity_factor * T * K / E)`` slots and drops the rest.
    drop_policy : which slots an over-full expert keeps: ``"position"`` (every token's first
        choice before any second choice, earlier tokens first) or ``"score"`` (largest weights).
    backend : None (automatic: :func:`moekit.kernels.choose_backend`, ``"cpu"`` or
        ``"grouped_mm"``), ``"loop"`` (the readable reference), ``"grouped_mm"``, ``"cpu"`` (the
        fused CPU path; other devices run ``grouped_mm``) or ``"triton"`` (fused Triton kernels
        on CUDA; never chosen automatically).
    """

    capacity_factor: float | None = None
    drop_policy: DropPolicy = "position"
    backend: Backend | None = None

    def __post_init__(self) -> None:
        check_capacity_factor(self.capacity_factor)
        check_choice("drop_policy", self.drop_policy, DROP_POLICIES)
        if self.backend is not None:
            check_choice("backend", self.backend, BACKEND_NAMES)


@dataclass(frozen=True, kw_only=True)
class SharedExpertsConfig:
    """A dense FFN that every token passes through, added to the routed output.

    Parameters
    ----------
    d_ff : its hidden size (all shared experts together: ``num_shared_experts * shared_d_ff``).
    gate : scale its output by ``sigmoid(x . w)`` per token (Qwen2-MoE).
    """

    d_ff: int
    gate: bool = False

    def __post_init__(self) -> None:
        check_positive_int("shared d_ff", self.d_ff)


@dataclass(frozen=True, kw_only=True)
class MoEConfig:
    """Everything an :class:`~moekit.layers.MoELayer` is built from; compare two layers by it.

    Parameters
    ----------
    router : the router (D, E, K and its rule).
    experts : the routed experts.
    dispatch : capacity, drop policy and backend.
    shared : the shared dense FFN, or None.
    aux_loss_weight : weight of the router's balancing loss; None means 0.01, or 0 for the routers
        that balance without it (``sigmoid_bias``, ``expert_choice``). Stored resolved.
    z_loss_weight : weight of the ST-MoE router z-loss.

    Examples
    --------
    >>> from moekit.layers import MoEConfig, MoELayer
    >>> cfg = MoEConfig.create(d_model=16, d_ff=32, num_experts=4, top_k=2, capacity_factor=1.25)
    >>> cfg.dispatch.capacity_factor, cfg.aux_loss_weight
    (1.25, 0.01)
    >>> MoELayer.from_config(cfg).config == cfg
    True
    """

    router: RouterConfig
    experts: ExpertsConfig
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    shared: SharedExpertsConfig | None = None
    aux_loss_weight: float | None = None
    z_loss_weight: float = 0.0

    def __post_init__(self) -> None:
        for name, cls in (("router", RouterConfig), ("experts", ExpertsConfig),
                          ("dispatch", DispatchConfig)):
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"MoEConfig {name}={getattr(self, name)!r} must be a {cls.__name__}")
        if self.shared is not None and not isinstance(self.shared, SharedExpertsConfig):
            raise TypeError(f"MoEConfig shared={self.shared!r} must be a SharedExpertsConfig or None")
        weight = self.aux_loss_weight
        if weight is None:
            weight = 0.0 if self.router.kind in BALANCED_WITHOUT_AUX_LOSS else DEFAULT_AUX_LOSS_WEIGHT
            object.__setattr__(self, "aux_loss_weight", weight)
        _check_non_negative("aux_loss_weight", weight)
        _check_non_negative("z_loss_weight", self.z_loss_weight)
        if self.router.kind == "expert_choice" and self.dispatch.capacity_factor is not None:
            raise ValueError(
                f"dispatch.capacity_factor={self.dispatch.capacity_factor} does not apply to "
                "router='expert_choice', whose capacity is the routing rule itself: set "
                "router.capacity_factor instead (MoEConfig.create(capacity_factor=...) does)")
        if self.router.kind != "expert_choice" and self.router.capacity_factor is not None:
            raise ValueError(
                f"router.capacity_factor={self.router.capacity_factor} applies to "
                f"router='expert_choice' only, got router={self.router.kind!r}: set "
                "dispatch.capacity_factor for token-choice capacity")

    @classmethod
    def create(
        cls,
        *,
        d_model: int,
        d_ff: int,
        num_experts: int,
        top_k: int = 2,
        router: RouterKind = "topk",
        activation: Activation = "swiglu",
        capacity_factor: float | None = None,
        drop_policy: DropPolicy = "position",
        num_shared_experts: int = 0,
        shared_d_ff: int | None = None,
        shared_expert_gate: bool = False,
        normalize: bool = True,
        n_group: int | None = None,
        topk_group: int | None = None,
        routed_scaling_factor: float = 1.0,
        bias_update_rate: float = 1e-3,
        expert_bias: bool = False,
        aux_loss_weight: float | None = None,
        z_loss_weight: float = 0.0,
        backend: Backend | None = None,
    ) -> MoEConfig:
        """Build the nested config from the flat keywords of :class:`~moekit.layers.MoELayer`."""
        if isinstance(num_shared_experts, bool) or not isinstance(num_shared_experts, int):
            raise TypeError(f"num_shared_experts={num_shared_experts!r} must be an int >= 0; pass "
                            "e.g. num_shared_experts=1")
        if num_shared_experts < 0:
            raise ValueError(f"num_shared_experts={num_shared_experts} must be an int >= 0; use 0 for no "
                             "shared expert")
        if shared_d_ff is not None:
            check_positive_int("shared_d_ff", shared_d_ff)
        check_capacity_factor(capacity_factor)
        expert_choice = router == "expert_choice"
        return cls(
            router=RouterConfig(
                kind=router, d_model=d_model, num_experts=num_experts, top_k=top_k,
                normalize=normalize, n_group=n_group, topk_group=topk_group,
                routed_scaling_factor=routed_scaling_factor, bias_update_rate=bias_update_rate,
                capacity_factor=capacity_factor if expert_choice else None,
            ),
            experts=ExpertsConfig(d_ff=d_ff, activation=activation, bias=expert_bias),
            dispatch=DispatchConfig(capacity_factor=None if expert_choice else capacity_factor,
                                    drop_policy=drop_policy, backend=backend),
            shared=(SharedExpertsConfig(d_ff=num_shared_experts * (shared_d_ff or d_ff),
                                        gate=shared_expert_gate)
                    if num_shared_experts > 0 else None),
            aux_loss_weight=aux_loss_weight,
            z_loss_weight=z_loss_weight,
        )

    @property
    def d_model(self) -> int:
        return self.router.d_model

    @property
    def num_experts(self) -> int:
        return self.router.num_experts

    @property
    def top_k(self) -> int:
        return self.router.top_k

    @property
    def d_ff(self) -> int:
        return self.experts.d_ff

    @property
    def capacity_factor(self) -> float | None:
        """The capacity factor in force: the router's for ``expert_choice``, else the dispatch's."""
        if self.router.kind == "expert_choice":
            return self.router.capacity_factor
        return self.dispatch.capacity_factor
