"""What the transformers integration tests compare: one forward, backward and generate of a model."""

from __future__ import annotations

from typing import Any

import torch


def run(model: Any, ids: torch.Tensor, impl: str | None = None,
        router_logits: bool = True) -> dict[str, Any]:
    """Forward (with router logits where the model records them), backward, greedy generate."""
    if impl is not None:
        model.set_experts_implementation(impl)
    model.zero_grad(set_to_none=True)
    kwargs: dict[str, Any] = {}
    if router_logits and getattr(model.config, "output_router_logits", None) is not None:
        kwargs["output_router_logits"] = True
    out = model(input_ids=ids, **kwargs)
    main = out.logits if hasattr(out, "logits") else out.last_hidden_state
    weight = torch.linspace(-1, 1, main.numel()).view_as(main)
    loss = (main * weight).sum()
    aux = getattr(out, "aux_loss", None)
    if aux is not None:
        loss = loss + aux
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    router = getattr(out, "router_logits", None)
    result = {"main": main.detach(), "grads": grads, "aux": None if aux is None else aux.detach(),
              "router": None if not router else torch.cat([r.detach().reshape(-1) for r in router])}
    if hasattr(out, "logits") and hasattr(model, "generate"):
        with torch.no_grad():
            result["tokens"] = model.generate(ids, max_new_tokens=4, do_sample=False,
                                              pad_token_id=0)
    return result


def run_safely(model: Any, ids: torch.Tensor, impl: str | None = None) -> tuple[dict[str, Any], bool]:
    """:func:`run`, without router logits when transformers itself cannot compute the aux loss."""
    try:
        return run(model, ids, impl), True
    except IndexError:  # e.g. DeepSeek-V4's hash layers record no logits: transformers fails
        return run(model, ids, impl, router_logits=False), False


def assert_same(ref: dict[str, Any], got: dict[str, Any]) -> float:
    """Equal to float32 rounding: outputs, every gradient, router logits, aux loss, tokens.

    Returns the largest absolute difference of the outputs (logits or hidden states).
    """
    scale = ref["main"].abs().max().item()
    delta = (ref["main"] - got["main"]).abs().max().item()
    assert delta <= 1e-5 * max(1.0, scale), f"max |delta| {delta:.3g} vs scale {scale:.3g}"
    assert ref["grads"].keys() == got["grads"].keys()
    for name, g in ref["grads"].items():
        torch.testing.assert_close(got["grads"][name], g, rtol=1e-4,
                                   atol=1e-5 * max(1.0, g.abs().max().item()),
                                   msg=lambda m, n=name: f"gradient of {n}: {m}")
    for key in ("aux", "router"):
        if ref[key] is None:
            assert got[key] is None
        else:
            torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-6)
    if "tokens" in ref:
        assert torch.equal(ref["tokens"], got["tokens"])
    return delta


def record(family: str, mechanism: str, result: str) -> None:
    """Append one row of the exactness table to ``$MOEKIT_EXACTNESS_TABLE`` (JSON lines), if set.

    ``MOEKIT_EXACTNESS_TABLE=table.jsonl pytest tests/integrations`` collects, for every family
    and mechanism, the largest logit difference or the reason a family is not patched.
    """
    import json
    import os

    path = os.environ.get("MOEKIT_EXACTNESS_TABLE")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"family": family, "mechanism": mechanism, "result": result}) + "\n")
