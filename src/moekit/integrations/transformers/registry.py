"""Register moekit in transformers' ``ExpertsInterface`` (mechanism 1 of the integration)."""

from __future__ import annotations

from moekit.integrations.transformers._compat import require_transformers
from moekit.integrations.transformers.experts import EXPERTS_FUNCTIONS
from moekit.layers.grouped import ExpertKernel

#: The names transformers itself uses; moekit never registers over them.
_RESERVED = frozenset({"eager", "batched_mm", "grouped_mm", "deepgemm", "sonicmoe", "deepgemm_megamoe"})


def register(name: str = "moekit", *, kernel: ExpertKernel = "grouped_mm") -> str:
    """Register moekit's experts forward in transformers under ``name``; idempotent.

    Afterwards ``from_pretrained(path, experts_implementation=name)`` and
    ``model.set_experts_implementation(name)`` run the experts of every model decorated with
    ``@use_experts_implementation`` through moekit (routers, router logits, aux loss and
    transformers' expert-parallel plan are untouched). ``import moekit.integrations.transformers``
    registers ``"moekit"`` already when transformers is installed.

    Parameters
    ----------
    name : the ``experts_implementation`` name.
    kernel : moekit's expert kernel: ``"grouped_mm"`` (default) or ``"loop"`` (the readable
        reference, for checking).

    Returns
    -------
    The name registered.

    Raises
    ------
    ImportError
        transformers is missing or older than 5.
    ValueError
        ``name`` is one of transformers' own implementations, or is registered to another
        function; or ``kernel`` is unknown.

    Examples
    --------
    >>> import moekit.integrations.transformers as mt
    >>> mt.register()
    'moekit'
    >>> from transformers import MixtralConfig, MixtralForCausalLM
    >>> cfg = MixtralConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                     num_attention_heads=2, num_key_value_heads=1, num_local_experts=4,
    ...                     vocab_size=50)
    >>> model = MixtralForCausalLM(cfg)
    >>> model.set_experts_implementation("moekit")
    >>> model.config._experts_implementation
    'moekit'
    """
    require_transformers("moekit.integrations.transformers.register")
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, ExpertsInterface

    if not isinstance(name, str) or not name:
        raise TypeError(f"name={name!r} must be a non-empty string such as 'moekit'")
    if name in _RESERVED:
        raise ValueError(f"name={name!r} is one of transformers' own experts implementations; "
                         "pick another name, e.g. 'moekit'")
    if kernel not in EXPERTS_FUNCTIONS:
        raise ValueError(f"kernel={kernel!r} is not one of "
                         f"{', '.join(map(repr, EXPERTS_FUNCTIONS))}")
    fn = EXPERTS_FUNCTIONS[kernel]
    if name in ALL_EXPERTS_FUNCTIONS:
        current = ALL_EXPERTS_FUNCTIONS[name]
        if current is fn:
            return name
        if current not in EXPERTS_FUNCTIONS.values():
            raise ValueError(
                f"experts implementation {name!r} is already registered to "
                f"{getattr(current, '__qualname__', current)!r}, not moekit's; register moekit "
                "under another name: register('moekit_grouped')")
    ExpertsInterface.register(name, fn)
    return name
