"""The sparse-MoE blocks of transformers 5.24, as data: what :func:`patch` replaces, and what not.

Each :class:`~moekit.integrations.transformers.spec.BlockSpec` was written from the block's and
its router's ``forward`` in the installed transformers 5.24 and is pinned by a test that compares
the patched model with the original (logits, gradients, router logits, aux loss, generate).
:data:`UNSUPPORTED` lists the MoE blocks moekit cannot express exactly, with the reason.

Shorthands: ``K``/``E`` read the gate's ``top_k``/``num_experts``; routers are given as
:class:`~moekit.layers.RouterConfig` fields.
"""

from __future__ import annotations

from typing import Any

from moekit.integrations.transformers.spec import Attr, BlockSpec, SharedSpec, Unsupported
from moekit.layers.grouped import ExpertsLayout


def _router(kind: str | Attr, gate: str = "gate", **fields: Any) -> tuple[tuple[str, Any], ...]:
    base: dict[str, Any] = {"kind": kind, "top_k": Attr(f"{gate}.top_k"),
                            "num_experts": Attr(f"{gate}.num_experts")}
    base.update(fields)
    return tuple(base.items())


def _norm(gate: str = "gate") -> Attr:
    return Attr(f"{gate}.norm_topk_prob")


_SHARED = (SharedSpec(module="shared_experts"),)
_QWEN_SHARED = (SharedSpec(module="shared_expert", gate="shared_expert_gate"),)

# DeepSeek-V3's router (sigmoid, choice bias, top-2-sum groups, +1e-20 renormalisation, scale):
# also GLM-4-MoE, dots1, Kimi-Linear, Bailing, Solar-Open, HY-V4, Nemotron-H, MiMo-V2, ...
_DSV3_ROUTER = _router("sigmoid_bias", n_group=Attr("gate.num_group"),
                       topk_group=Attr("gate.topk_group"), normalize=_norm(),
                       routed_scaling_factor=Attr("gate.routed_scaling_factor"))
_DSV3_BIAS = "gate.e_score_correction_bias"


def _dsv3(family: str, *blocks: str, shared: tuple[SharedSpec, ...] = _SHARED, **kw: Any) -> BlockSpec:
    return BlockSpec(family=family, blocks=blocks, gate_input="hidden", router=_DSV3_ROUTER,
                     bias=_DSV3_BIAS, shared=shared, **kw)


SPECS: tuple[BlockSpec, ...] = (
    # --- softmax top-k, renormalised (Mixtral) ---------------------------------------------------
    BlockSpec(family="mixtral", blocks=("MixtralSparseMoeBlock",), jitter="jitter_noise",
              router=_router("topk", normalize=True)),
    BlockSpec(family="minimax", blocks=("MiniMaxSparseMoeBlock",), jitter="jitter_noise",
              router=_router("topk", normalize=True)),
    # --- softmax top-k, weights rounded to the logits' dtype (Qwen, OLMoE) -----------------------
    *(BlockSpec(family=f, blocks=(b,), router=_router("topk", normalize=_norm(),
                                                          weights_precision="logits"))
      for f, b in (("qwen3_moe", "Qwen3MoeSparseMoeBlock"), ("olmoe", "OlmoeSparseMoeBlock"),
                   ("flex_olmo", "FlexOlmoSparseMoeBlock"), ("mellum", "MellumSparseMoeBlock"),
                   ("qwen3_omni_moe", "Qwen3OmniMoeThinkerTextSparseMoeBlock"))),
    BlockSpec(family="qwen3_vl_moe", blocks=("Qwen3VLMoeTextSparseMoeBlock",),
              router=_router("topk", normalize=True, weights_precision="logits")),
    *(BlockSpec(family=f, blocks=(b,), shared=_QWEN_SHARED,
                router=_router("topk", normalize=_norm(), weights_precision="logits"))
      for f, b in (("qwen2_moe", "Qwen2MoeSparseMoeBlock"),
                   ("qwen3_next", "Qwen3NextSparseMoeBlock"),
                   ("qwen4_exp", "Qwen4ExpTextSparseMoeBlock"),
                   ("qwen3_omni_moe", "Qwen3OmniMoeTalkerTextSparseMoeBlock"))),
    BlockSpec(family="qwen3_5_moe", blocks=("Qwen3_5MoeSparseMoeBlock",), shared=_QWEN_SHARED,
              router=_router("topk", normalize=True, weights_precision="logits")),
    BlockSpec(family="jamba", blocks=("JambaSparseMoeBlock",), gate="router",
              router=_router("topk", "router", normalize=False, weights_precision="input")),
    BlockSpec(family="lara_mini", blocks=("LaraMiniSparseMoeBlock",),
              shared=(SharedSpec(module="shared_expert"),),
              router=_router("topk", normalize=_norm(), weights_precision="input")),
    BlockSpec(family="hunyuan_v1_moe", blocks=("HunYuanMoEV1Moe",),
              shared=(SharedSpec(module="shared_mlp"),),
              router=_router("topk", normalize=True, weights_precision="logits")),
    BlockSpec(family="ernie4_5_moe", blocks=("Ernie4_5_MoeSparseMoeBlock",), shared=_SHARED,
              bias="gate.moe_statics.e_score_correction_bias",
              router=_router("topk", expert_bias=True, normalize=True,
                             normalize_min=Attr("gate.norm_min"), weights_precision="input")),
    # --- top-k of the logits, softmax over the k kept --------------------------------------------
    *(BlockSpec(family=f, blocks=(b,), gate="router",
                router=_router("topk", "router", select="logits", weights_precision="input"))
      for f, b in (("granitemoe", "GraniteMoeMoE"), ("granitemoe_swa", "GraniteMoeSWAMoE"),
                   ("granitemoehybrid", "GraniteMoeHybridMoE"),
                   ("granitemoeshared", "GraniteMoeSharedMoE"))),
    BlockSpec(family="aria", blocks=("AriaTextMoELayer",), gate="router", shared=_SHARED,
              router=_router("topk", "router", select="logits", score_precision="logits")),
    BlockSpec(family="gpt_oss", blocks=("GptOssMLP",), gate="router", returns="with_weights",
              router=_router("topk", "router", select="logits", score_precision="logits")),
    BlockSpec(family="openai_privacy_filter", blocks=("OpenAIPrivacyFilterMLP",), gate="router",
              returns="with_weights", output_scale=Attr("router.top_k"),
              router=_router("topk", "router", select="logits",
                             routed_scaling_factor=Attr("router.top_k", {k: 1.0 / k for k in range(1, 65)}))),
    BlockSpec(family="cohere2_moe", blocks=("Cohere2MoeSparseMoeBlock",),
              shared=(SharedSpec(module="shared_experts", gate=None),),
              shared_mean=Attr("shared_expert_combination_strategy", {"sum": False, "average": True}),
              router=_router(Attr("gate.expert_selection_fn", {"softmax": "topk",
                                                               "sigmoid": "sigmoid_bias"}),
                             select="logits", expert_bias=False,
                             normalize=Attr("gate.expert_selection_fn",
                                            {"softmax": False, "sigmoid": _norm()}),
                             weights_precision="input")),
    BlockSpec(family="kolibri1", blocks=("Kolibri1SparseMoeBlock",), gate_input="hidden",
              shared=_SHARED, bias="gate.e_score_correction_bias",
              router=_router("sigmoid_bias", select="logits", normalize=_norm(), normalize_eps=0.0)),
    # --- DBRX: softmax in the logits' dtype, p-norm renormalisation, flat w1/v1/w2 ---------------
    BlockSpec(family="dbrx", blocks=("DbrxFFN",), gate="router", gate_input="hidden", logits_at=None,
              layout=ExpertsLayout(in_proj=("mlp.w1", "mlp.v1"), down_proj="mlp.w2", in_bias=None,
                                   down_bias=None, in_linear=True, down_linear=False,
                                   gate_up="separate"),
              router=(("kind", "topk"), ("top_k", Attr("top_k")),
                      ("num_experts", Attr("experts.num_experts")), ("score_precision", "logits"),
                      ("normalize", Attr("moe_normalize_expert_weights", default=None)),
                      ("normalize_p", Attr("moe_normalize_expert_weights", default=1.0)))),
    # --- Llama 4: top-1 of the logits, sigmoid, applied to the experts' input --------------------
    BlockSpec(family="llama4", blocks=("Llama4TextMoe",), gate="router", logits_at=1,
              layout=ExpertsLayout(in_proj=("gate_up_proj",), down_proj="down_proj", in_bias=None,
                                   down_bias=None),
              shared=(SharedSpec(module="shared_expert"),), apply_weights="input",
              returns="with_logits", tokens_out=True,
              router=_router("sigmoid_bias", "router", select="logits", expert_bias=False,
                             normalize=False, weights_precision="logits")),
    # --- sigmoid scores, choice bias (DeepSeek-V3 and its descendants) ---------------------------
    _dsv3("deepseek_v3", "DeepseekV3MoE"),
    _dsv3("deepseek_v32", "DeepseekV32MoE"),
    _dsv3("glm4_moe", "Glm4MoeMoE"),
    _dsv3("glm4_moe_lite", "Glm4MoeLiteMoE"),
    _dsv3("glm4v_moe", "Glm4vMoeTextMoE"),
    _dsv3("glm_moe_dsa", "GlmMoeDsaMoE"),
    _dsv3("glm5_next", "Glm5NextTextMoE"),
    _dsv3("dots1", "Dots1MoE"),
    _dsv3("dots3_note", "Dots3NoteTextMoE"),
    _dsv3("kimi_linear", "KimiLinearMoE"),
    _dsv3("bailing_hybrid", "BailingHybridMoE"),
    _dsv3("solar_open", "SolarOpenMoE"),
    _dsv3("hy_v4", "HYV4MoE"),
    _dsv3("hy_v4_vl", "HYV4VLMoE"),
    _dsv3("exaone_moe", "ExaoneMoeSparseMoEBlock"),
    _dsv3("mimo_v2_flash", "MiMoV2FlashMoE", shared=()),
    _dsv3("axk1", "AXK1MoE", post_norm="post_mlp_layernorm"),
    _dsv3("nemotron_h", "NemotronHMoE", latent_in="fc1_latent_proj", latent_out="fc2_latent_proj"),
    BlockSpec(family="axk2", blocks=("AXK2MoE",), gate_input="hidden", bias=_DSV3_BIAS,
              shared=_SHARED,
              router=_router("sigmoid_bias", n_group=Attr("gate.num_group", default=None),
                             topk_group=Attr("gate.topk_group", default=None), group_fill="zero",
                             normalize=_norm(),
                             routed_scaling_factor=Attr("gate.routed_scaling_factor"))),
    BlockSpec(family="beam", blocks=("BeamMoE",), bias=_DSV3_BIAS,
              output_scale=Attr("routed_scaling_factor"),
              router=_router("sigmoid_bias", n_group=Attr("gate.num_group"),
                             topk_group=Attr("gate.topk_group"), normalize=_norm())),
    BlockSpec(family="minimax_m2", blocks=("MiniMaxM2SparseMoeBlock",), jitter="jitter_noise",
              gate_args=("e_score_correction_bias",), bias="e_score_correction_bias",
              router=_router("sigmoid_bias", normalize=True, normalize_eps=0.0)),
    BlockSpec(family="minimax_m3_vl", blocks=("MiniMaxM3VLSparseMoeBlock",), shared=_SHARED,
              bias=_DSV3_BIAS, output_scale=Attr("routed_scaling_factor"),
              router=_router("sigmoid_bias", normalize=True, normalize_eps=0.0)),
    BlockSpec(family="hy_v3", blocks=("HYV3MoE",), gate_args=("e_score_correction_bias",),
              bias="e_score_correction_bias", shared=_SHARED,
              shared_float32=Attr("enable_moe_fp32_combine", default=False),
              router=_router("sigmoid_bias", normalize=True,
                             routed_scaling_factor=Attr("gate.router_scaling_factor"))),
    BlockSpec(family="laguna", blocks=("LagunaSparseMoeBlock",), bias=_DSV3_BIAS, shared=_SHARED,
              output_scale=Attr("routed_scaling_factor"),
              router=_router("sigmoid_bias", normalize=True, normalize_eps=0.0,
                             weights_precision="input")),
    BlockSpec(family="flint", blocks=("FlintSparseMoeBlock",),
              shared=(SharedSpec(module="shared_expert"),),
              router=_router("sigmoid_bias", expert_bias=False, normalize=_norm(), normalize_eps=0.0)),
    BlockSpec(family="lfm2_moe", blocks=("Lfm2MoeSparseMoeBlock",),
              gate_args=(Attr("expert_bias", default=None),),
              bias=Attr("use_expert_bias", {True: "expert_bias", False: None}),
              router=_router("sigmoid_bias", expert_bias=Attr("use_expert_bias"), normalize=_norm(),
                             normalize_eps=1e-6, score_precision="logits",
                             weights_precision="logits",
                             routed_scaling_factor=Attr("gate.routed_scaling_factor"))),
    BlockSpec(family="afmoe", blocks=("AfmoeSparseMoeBlock",), gate="router", gate_input="hidden",
              gate_args=("expert_bias",), bias="expert_bias", shared=_SHARED,
              router=_router("sigmoid_bias", "router", normalize=True,
                             routed_scaling_factor=Attr("router.route_scale"))),
    # --- softmax with groups (DeepSeek-V2 group max, Mistral 4 top-2 sum) ------------------------
    *(BlockSpec(family=f, blocks=(b,), gate_input="hidden", shared=_SHARED,
                router=_router("topk", normalize=False,
                               group_score=Attr("gate.topk_method", {"greedy": None,
                                                                     "group_limited_greedy": "max"}),
                               n_group=Attr("gate.topk_method", {
                                   "greedy": None, "group_limited_greedy": Attr("gate.num_group")}),
                               topk_group=Attr("gate.topk_method", {
                                   "greedy": None, "group_limited_greedy": Attr("gate.topk_group")}),
                               group_fill="zero",
                               routed_scaling_factor=Attr("gate.routed_scaling_factor")))
      for f, b in (("deepseek_v2", "DeepseekV2Moe"), ("deepseek_ocr2", "DeepseekOcr2TextMoe"),
                   ("unlimited_ocr", "UnlimitedOcrTextMoe"))),
    BlockSpec(family="mistral4", blocks=("Mistral4MoE",), gate_input="hidden", shared=_SHARED,
              router=_router("topk", n_group=Attr("gate.num_group"), topk_group=Attr("gate.topk_group"),
                             group_score="top2_sum", group_fill="zero", normalize=_norm(),
                             normalize_eps=1e-20, score_precision="logits",
                             routed_scaling_factor=Attr("gate.routed_scaling_factor"))),
    BlockSpec(family="mistral_large4", blocks=("MistralLarge4TextMoE",), gate_input="hidden",
              shared=_SHARED,
              router=_router("topk", n_group=Attr("gate.num_group"), topk_group=Attr("gate.topk_group"),
                             group_score="top2_sum", group_fill="zero", normalize=True,
                             normalize_eps=1e-20,
                             routed_scaling_factor=Attr("gate.routed_scaling_factor"))),
)

UNSUPPORTED: tuple[Unsupported, ...] = (
    Unsupported("phimoe", ("PhimoeSparseMoeBlock",),
                "sparsemixer routing: a jitter-thresholded masked softmax for the top-2, sampled "
                "with Gumbel noise and a custom gradient estimator in training; moekit has no such "
                "router"),
    Unsupported("jetmoe", ("JetMoeMoE", "JetMoeMoA"),
                "the experts' tensors are children of the block itself (input_linear, "
                "output_linear; for JetMoeMoA attention heads), so a moekit experts module cannot "
                "hold them under the same state_dict keys"),
    Unsupported("longcat_flash", ("LongcatFlashMoE",),
                "zero (identity) experts among the routed experts"),
    Unsupported("gemma4", ("Gemma4TextDecoderLayer",),
                "no MoE block: the router and the experts are children of the decoder layer and "
                "see differently normalised inputs; use experts_implementation='moekit'"),
    Unsupported("diffusion_gemma", ("DiffusionGemmaTextDecoderLayer",),
                "no MoE block (Gemma 4 layout); use experts_implementation='moekit'"),
    Unsupported("ernie4_5_vl_moe", ("Ernie4_5_VLMoeSparseMoeBlock", "Ernie4_5_VLMoeMoeBlock"),
                "routes text and vision tokens to separate experts by token type, and transformers "
                "records its router logits from the block's own output"),
    Unsupported("inkling", ("InklingMoE",),
                "the router computes the shared experts' per-token gammas (log-sigmoid softmax "
                "over routed and shared logits)"),
    Unsupported("inkling2", ("Inkling2SparseMoeBlock",),
                "its experts' gate function act_fn(gate, up) has no moekit data form"),
    Unsupported("inkling2_loop", ("Inkling2LoopSparseMoeBlock",),
                "its experts' gate function act_fn(gate, up) has no moekit data form"),
    Unsupported("muse_spark", ("MuseSparkMoE",),
                "a norm on every expert's output before the combine (has_post_expert_norm), and "
                "pre/post expert projections with a centred norm"),
    Unsupported("zaya", ("ZayaSparseMoeBlock",),
                "an MLP router whose state is passed from layer to layer, with a skip class"),
    Unsupported("deepseek_v4", ("DeepseekV4SparseMoeBlock",),
                "hash routing by token id in some layers (forward takes input_ids)"),
    Unsupported("dots3_note", ("Dots3NoteVisionMoE",), "vision-tower MoE; not read by moekit"),
    Unsupported("switch_transformers", ("SwitchTransformersSparseMLP",),
                "capacity per sequence with expert dropout and a residual for dropped tokens"),
    Unsupported("nllb_moe", ("NllbMoeSparseMLP",),
                "top-2 gating with second-expert sampling policies, and the 5.24 block itself "
                "computes the wrong experts (see the research notes)"),
    Unsupported("doge", ("DogeCDMoE",), "cross-domain MoE with product-key expert retrieval"),
    Unsupported("vitpose_backbone", ("VitPoseNaiveMoe",),
                "experts chosen by dataset index, not by a router"),
    Unsupported("step3p7", ("Step3p7SparseMoeBlock",),
                "not checked: no tiny model of this family is built in moekit's tests"),
)
