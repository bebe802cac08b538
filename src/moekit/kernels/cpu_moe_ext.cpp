// The per-expert loop of moekit's fused CPU MoE (moekit/kernels/cpu_moe.py) in C++.
//
// Legend: T tokens, D model dim, F expert hidden dim, H input projection width (2F gated),
// E experts, A active experts, P planned rows (each expert's block of kept slots, padded).
//
// Same maths as the Python loop in cpu_moe.py, which is its reference in the tests: each active
// expert gathers its rows, runs GEMM -> activation -> GEMM and writes its outputs into its own rows
// of the (P + 1, D) table (the last row stays zero), so results do not depend on which thread ran
// which expert. Experts are taken largest first from a shared counter by the threads of one
// at::parallel_for; every op inside runs single-threaded (ATen, MKL and oneDNN all run serially
// inside a parallel region). GEMMs go to oneDNN (mkldnn::_linear_pointwise, looked up in the
// dispatcher; for GEMMs of at least onednn_min_flop FLOPs, -1 = never) or to at::mm.
//
// Built on demand by moekit.kernels.cpu_ext with torch.utils.cpp_extension; optional.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "compile with OpenMP (-fopenmp): this torch threads with OpenMP, and without it at::parallel_for runs serially here"
#endif

#include <algorithm>
#include <atomic>
#include <numeric>
#include <optional>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;

Tensor onednn_linear(const Tensor& a, const Tensor& b_NK, const std::optional<Tensor>& bias) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  torch::jit::Stack stack;
  stack.reserve(6);
  stack.emplace_back(a);
  stack.emplace_back(b_NK);
  stack.emplace_back(bias);
  stack.emplace_back(std::string("none"));
  stack.emplace_back(c10::List<std::optional<at::Scalar>>());
  stack.emplace_back(std::string(""));
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

// When GEMMs go to oneDNN: min_flop FLOPs and min_rows rows at least, min_flop < 0 = never
// (ONEDNN_MIN_FLOP and ONEDNN_MIN_ROWS in cpu_gemm.py).
struct OneDNN {
  int64_t min_flop;
  int64_t min_rows;
};

bool use_onednn(const Tensor& a, const Tensor& b_NK, OneDNN o) {
  return o.min_flop >= 0 && a.size(0) >= o.min_rows &&
         2 * a.size(0) * a.size(1) * b_NK.size(0) >= o.min_flop;
}

// a_MK @ b_NK^T (+ bias) into out (M, N); onednn = min_flop >= 0.
void mm_nt_out(const Tensor& out, const Tensor& a, const Tensor& b_NK,
               const std::optional<Tensor>& bias, OneDNN onednn) {
  if (use_onednn(a, b_NK, onednn)) {
    out.copy_(onednn_linear(a, b_NK, bias));
  } else if (bias.has_value()) {
    at::addmm_out(const_cast<Tensor&>(out), *bias, a, b_NK.t());
  } else {
    at::mm_out(const_cast<Tensor&>(out), a, b_NK.t());
  }
}

Tensor mm_nt(const Tensor& a, const Tensor& b_NK, const std::optional<Tensor>& bias, OneDNN onednn) {
  if (use_onednn(a, b_NK, onednn)) {
    return onednn_linear(a, b_NK, bias);
  }
  return bias.has_value() ? at::addmm(*bias, a, b_NK.t()) : at::mm(a, b_NK.t());
}

std::optional<Tensor> row(const std::optional<Tensor>& b, int64_t e) {
  return b.has_value() ? std::optional<Tensor>((*b)[e]) : std::nullopt;
}

bool is_gated(c10::string_view act) { return act == "swiglu" || act == "geglu"; }

Tensor act_fwd(c10::string_view act, const Tensor& t) {
  if (act == "swiglu" || act == "silu") return at::silu(t);
  if (act == "geglu" || act == "gelu") return at::gelu(t);
  return at::relu(t);
}

Tensor act_bwd(c10::string_view act, const Tensor& grad, const Tensor& t) {
  if (act == "swiglu" || act == "silu") return at::silu_backward(grad, t);
  if (act == "geglu" || act == "gelu") return at::gelu_backward(grad, t);
  return at::threshold_backward(grad, t, 0);
}

// act'(t) * grad written into out (a strided view of the gradient of the pre-activation).
void act_bwd_out(c10::string_view act, Tensor& out, const Tensor& grad, const Tensor& t) {
  if (act == "swiglu" || act == "silu") {
    at::silu_backward_out(out, grad, t);
  } else if (act == "geglu" || act == "gelu") {
    at::gelu_backward_out(out, grad, t);
  } else {
    at::threshold_backward_out(out, grad, t, 0);
  }
}

std::pair<Tensor, Tensor> split(const Tensor& h, bool interleaved) {
  if (interleaved) {
    return {h.slice(1, 0, h.size(1), 2), h.slice(1, 1, h.size(1), 2)};
  }
  const int64_t half = h.size(1) / 2;
  return {h.narrow(1, 0, half), h.narrow(1, half, half)};
}

Tensor hidden(const Tensor& h, c10::string_view act, bool interleaved) {
  if (!is_gated(act)) return act_fwd(act, h);
  auto [gate, up] = split(h, interleaved);
  return act_fwd(act, gate) * up;
}

// (activation output, d pre-activation) from the pre-activation h and the output gradient da.
std::pair<Tensor, Tensor> hidden_and_grad(const Tensor& h, const Tensor& da, c10::string_view act,
                                          bool interleaved, bool want_hidden) {
  if (!is_gated(act)) {
    return {want_hidden ? act_fwd(act, h) : Tensor(), act_bwd(act, da, h)};
  }
  auto [gate, up] = split(h, interleaved);
  Tensor sg = act_fwd(act, gate);
  Tensor dh = at::empty_like(h);
  auto [dgate, dup] = split(dh, interleaved);
  act_bwd_out(act, dgate, da * up, gate);
  at::mul_out(dup, da, sg);
  return {want_hidden ? sg * up : Tensor(), dh};
}

// An (E, ...) tensor whose slices of inactive experts are zero (the active ones get written).
Tensor zeros_but(c10::IntArrayRef experts, at::IntArrayRef sizes, const at::TensorOptions& opts) {
  Tensor t = at::empty(sizes, opts);
  int64_t next = 0;
  for (int64_t e = 0; e < sizes[0]; ++e) {
    if (next < static_cast<int64_t>(experts.size()) && experts[next] == e) {
      ++next;
    } else {
      t[e].zero_();
    }
  }
  return t;
}

// Positions 0..A-1 largest block first (ties: lower position first).
std::vector<int64_t> largest_first(c10::IntArrayRef padded) {
  std::vector<int64_t> order(padded.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return padded[a] > padded[b]; });
  return order;
}

template <class F>
void for_each_expert(c10::IntArrayRef padded, const F& f) {
  const auto order = largest_first(padded);
  const int64_t n = static_cast<int64_t>(order.size());
  std::atomic<int64_t> next{0};
  const int64_t teams = std::min<int64_t>(at::get_num_threads(), std::max<int64_t>(n, 1));
  at::parallel_for(0, teams, 1, [&](int64_t, int64_t) {
    at::AutoDispatchBelowADInplaceOrView guard;
    for (int64_t k = next++; k < n; k = next++) {
      f(order[k]);
    }
  });
}

std::tuple<Tensor, std::vector<Tensor>> experts_forward(
    const Tensor& x, const Tensor& tok_P, c10::IntArrayRef experts, c10::IntArrayRef starts,
    c10::IntArrayRef padded, const Tensor& w_in, const Tensor& w_down,
    const std::optional<Tensor>& b_in, const std::optional<Tensor>& b_down,
    c10::string_view act, bool interleaved, int64_t min_flop, int64_t min_rows, bool save) {
  const OneDNN onednn{min_flop, min_rows};
  const int64_t P = tok_P.size(0), D = x.size(1);
  Tensor y_P = at::empty({P + 1, D}, x.options());
  y_P[P].zero_();
  std::vector<Tensor> h(save ? experts.size() : 0);
  for_each_expert(padded, [&](int64_t i) {
    const int64_t e = experts[i], p0 = starts[i], nb = padded[i];
    Tensor toks = tok_P.narrow(0, p0, nb);
    Tensor xe = at::index_select(x, 0, toks);
    Tensor he = mm_nt(xe, w_in[e].t(), row(b_in, e), onednn);
    mm_nt_out(y_P.narrow(0, p0, nb), hidden(he, act, interleaved), w_down[e].t(), row(b_down, e),
              onednn);
    if (save) h[i] = he;
  });
  return {y_P, h};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> experts_backward(
    const Tensor& g, const Tensor& x, const Tensor& tok_P, const Tensor& w_P, const Tensor& y_P,
    at::TensorList h, c10::IntArrayRef experts, c10::IntArrayRef starts,
    c10::IntArrayRef padded, c10::IntArrayRef counts, const Tensor& w_in, const Tensor& w_down,
    bool need_x, bool need_w, bool need_win, bool need_wd, bool need_bin, bool need_bd,
    c10::string_view act, bool interleaved, int64_t min_flop, int64_t min_rows) {
  const OneDNN onednn{min_flop, min_rows};
  const int64_t P = tok_P.size(0), D = x.size(1), E = w_in.size(0), H = w_in.size(2);
  const int64_t Fh = w_down.size(1);
  // Outputs not asked for come back empty (0 elements). Experts without rows get zero gradients.
  Tensor none = at::empty({0}, x.options());
  Tensor dx_P = need_x ? at::empty({P + 1, D}, x.options()) : none;
  if (need_x) dx_P[P].zero_();
  Tensor dw_P = need_w ? at::zeros({P + 1}, w_P.options()) : none;
  Tensor dw_in = need_win ? zeros_but(experts, {E, w_in.size(1), H}, x.options()) : none;
  Tensor dw_down = need_wd ? zeros_but(experts, {E, Fh, D}, x.options()) : none;
  Tensor db_in = need_bin ? zeros_but(experts, {E, H}, x.options()) : none;
  Tensor db_down = need_bd ? zeros_but(experts, {E, D}, x.options()) : none;
  const bool need_dh = need_x || need_win || need_bin;
  for_each_expert(padded, [&](int64_t i) {
    const int64_t e = experts[i], p0 = starts[i], nb = padded[i], n = counts[i];
    Tensor toks = tok_P.narrow(0, p0, nb);
    Tensor ge = at::index_select(g, 0, toks);
    if (need_w) {
      dw_P.narrow(0, p0, n).copy_((ge.narrow(0, 0, n) * y_P.narrow(0, p0, n)).sum(1));
    }
    Tensor gy = ge * w_P.narrow(0, p0, nb).unsqueeze(1);  // pad rows: weight 0
    if (need_bd) {
      Tensor out = db_down[e];
      at::sum_out(out, gy, {0});
    }
    const Tensor& he = h[i];
    Tensor da = need_dh ? mm_nt(gy, w_down[e], std::nullopt, onednn) : Tensor();
    Tensor ae, dh;
    if (need_dh) {
      std::tie(ae, dh) = hidden_and_grad(he, da, act, interleaved, need_wd);
    } else {
      ae = hidden(he, act, interleaved);
    }
    if (need_wd) mm_nt_out(dw_down[e], ae.t(), gy.t(), std::nullopt, onednn);
    if (!need_dh) return;
    if (need_bin) {
      Tensor out = db_in[e];
      at::sum_out(out, dh, {0});
    }
    if (need_win) {
      mm_nt_out(dw_in[e], at::index_select(x, 0, toks).t(), dh.t(), std::nullopt, onednn);
    }
    if (need_x) mm_nt_out(dx_P.narrow(0, p0, nb), dh, w_in[e], std::nullopt, onednn);
  });
  return {dx_P, dw_P, dw_in, dw_down, db_in, db_down};
}

}  // namespace

TORCH_LIBRARY(moekit_cpu, m) {
  m.def("experts_forward(Tensor x, Tensor tok_P, int[] experts, int[] starts, int[] padded, "
        "Tensor w_in, Tensor w_down, Tensor? b_in, Tensor? b_down, str act, bool interleaved, "
        "int onednn_min_flop, int onednn_min_rows, bool save) -> (Tensor, Tensor[])");
  m.def("experts_backward(Tensor g, Tensor x, Tensor tok_P, Tensor w_P, Tensor y_P, Tensor[] h, "
        "int[] experts, int[] starts, int[] padded, int[] counts, Tensor w_in, Tensor w_down, "
        "bool need_x, bool need_w, bool need_win, bool need_wd, bool need_bin, bool need_bd, "
        "str act, bool interleaved, int onednn_min_flop, int onednn_min_rows) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(moekit_cpu, CPU, m) {
  m.impl("experts_forward", &experts_forward);
  m.impl("experts_backward", &experts_backward);
}
