// LSQ / LSQ+ fake quantizer as one CPU op with its own autograd (qbench/quant/native.py).
//
// Forward (LSQ eq. 1-2, LSQ+ eq. 3-4): v̂ = s·⌊clamp((v − β)/s, n, p)⌉ + β, s floored at 1e-8 with the
// gradient passed straight to s. Backward (LSQ eq. 3, LSQ+ eq. 5-6), z = (v − β)/s:
//   ∂L/∂v = ∂L/∂v̂ where n < z < p, else 0
//   ∂L/∂s = g·Σ ∂L/∂v̂·(⌊z⌉ − z inside, else ⌊clamp(z, n, p)⌉)      ∂L/∂β = g·Σ_{outside} ∂L/∂v̂
// exactly as qbench.quant.lsq.fake_quantize / fake_quantize_grads compute them.
//
// learned_step_fake_quant_ is the forward alone, written over its input after an optional ReLU or ReLU6: the
// evaluation of a batch norm's output that only the quantizer reads (qbench.quant.fused);
// learned_step_fake_quant_backward is the backward alone, for a caller that keeps v and not the op's graph
// (qbench.quant.layers.RecomputedWeightConv).
//
// One call per direction instead of Python, dispatcher and torch.compile guard overhead per tensor.
// The forward is bit for bit the eager formula (IEEE division, multiplication, round half to even; no
// contracted multiply-adds). The sums run in the fixed order of native.h.
#include "native.h"

namespace qbench {
namespace {

constexpr float kStepMin = 1e-8f;  // qbench.quant.grid.STEP_MIN
constexpr float kRoundMagic = 12582912.0f;  // 1.5·2^23: (z + m) − m rounds |z| < 2^22 half to even

inline float round_half_even(float z) { return (z + kRoundMagic) - kRoundMagic; }

// clamp(z, lo, hi) that keeps NaN, as torch.clamp does.
inline float clamp_keep_nan(float z, float lo, float hi) {
  const float above = z < lo ? lo : z;
  return above > hi ? hi : above;
}

struct Grid {
  float step, offset, lo, hi;
};

template <bool HasOffset>
void forward_block(const float* __restrict v, float* __restrict out, int64_t n, Grid g) {
  for (int64_t i = 0; i < n; ++i) {
    const float z = (HasOffset ? v[i] - g.offset : v[i]) / g.step;
    const float q = round_half_even(clamp_keep_nan(z, g.lo, g.hi)) * g.step;
    out[i] = HasOffset ? q + g.offset : q;
  }
}

// The activation an in-place forward applies first (qbench.quant.native.ACTIVATIONS): ReLU and ReLU6 as
// PyTorch computes them, NaN kept.
enum Activation : int64_t { kIdentity = 0, kRelu = 1, kRelu6 = 2 };

template <int64_t Act>
inline float activate(float y) {
  if (Act == kRelu) return y < 0.0f ? 0.0f : y;
  if (Act == kRelu6) return clamp_keep_nan(y, 0.0f, 6.0f);
  return y;
}

// forward_block on act(v), written over v (no restrict: input and output are one array).
template <bool HasOffset, int64_t Act>
void forward_in_place_block(float* v, int64_t n, Grid g) {
  for (int64_t i = 0; i < n; ++i) {
    const float a = activate<Act>(v[i]);
    const float z = (HasOffset ? a - g.offset : a) / g.step;
    const float q = round_half_even(clamp_keep_nan(z, g.lo, g.hi)) * g.step;
    v[i] = HasOffset ? q + g.offset : q;
  }
}

// One element's ∂L/∂v and its terms of the step and offset sums.
struct Terms {
  float grad_v, step, offset;
};

template <bool HasOffset>
inline Terms backward_terms(float v, float grad, Grid g) {
  const float z = (HasOffset ? v - g.offset : v) / g.step;
  const bool inside = (z > g.lo) & (z < g.hi);
  const float dstep = inside ? round_half_even(z) - z : round_half_even(clamp_keep_nan(z, g.lo, g.hi));
  return {inside ? grad : 0.0f, grad * dstep, inside ? 0.0f : grad};
}

// ∂L/∂v of one block, and its (step, offset) sums.
template <bool HasOffset>
std::array<double, 2> backward_block(const float* __restrict v, const float* __restrict grad_out,
                                     float* __restrict grad_v, int64_t n, Grid g) {
  Lanes<2> sums;
  for (int64_t i = 0; i < n; i += kLanes) {
    const int width = n - i < kLanes ? int(n - i) : kLanes;
    for (int l = 0; l < width; ++l) {
      const Terms t = backward_terms<HasOffset>(v[i + l], grad_out[i + l], g);
      grad_v[i + l] = t.grad_v;
      sums.lane[0][l] += t.step;
      sums.lane[1][l] += t.offset;
    }
  }
  return sums.total();
}

Grid grid_of(const at::Tensor& step, const at::Tensor& offset, int64_t qmin, int64_t qmax) {
  const float s = step.item<float>();
  return {s < kStepMin ? kStepMin : s, offset.defined() ? offset.item<float>() : 0.0f, float(qmin), float(qmax)};
}

at::Tensor fake_quantize(const at::Tensor& v, Grid g, bool has_offset) {
  at::Tensor out = at::empty_like(v);
  const float* in = v.const_data_ptr<float>();
  float* res = out.mutable_data_ptr<float>();
  at::parallel_for(0, v.numel(), kBlock, [&](int64_t begin, int64_t end) {
    if (has_offset) {
      forward_block<true>(in + begin, res + begin, end - begin, g);
    } else {
      forward_block<false>(in + begin, res + begin, end - begin, g);
    }
  });
  return out;
}

// (∂L/∂v, Σ step term, Σ offset term) before the gradient scale.
std::tuple<at::Tensor, double, double> fake_quantize_grads(const at::Tensor& v, const at::Tensor& grad_out, Grid g,
                                                           bool has_offset) {
  const at::Tensor grad = like(grad_out, v);
  at::Tensor grad_v = at::empty_like(v);
  const float* in = v.const_data_ptr<float>();
  const float* gin = grad.const_data_ptr<float>();
  float* gv = grad_v.mutable_data_ptr<float>();
  const auto sums = ordered_block_sums<2>(v.numel(), [&](int64_t begin, int64_t size) {
    return has_offset ? backward_block<true>(in + begin, gin + begin, gv + begin, size, g)
                      : backward_block<false>(in + begin, gin + begin, gv + begin, size, g);
  });
  return {grad_v, sums[0], sums[1]};
}

struct LearnedStepFakeQuant : public torch::autograd::Function<LearnedStepFakeQuant> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& v, const at::Tensor& step,
                            const c10::optional<at::Tensor>& offset, int64_t qmin, int64_t qmax, double grad_scale) {
    TORCH_CHECK(v.device().is_cpu() && v.scalar_type() == at::kFloat, "learned_step_fake_quant takes a float32 CPU tensor");
    const at::Tensor x = dense(v);
    const at::Tensor beta = offset.has_value() ? *offset : at::Tensor();
    ctx->save_for_backward({x, step, beta});
    ctx->saved_data["qmin"] = qmin;
    ctx->saved_data["qmax"] = qmax;
    ctx->saved_data["grad_scale"] = grad_scale;
    return fake_quantize(x, grid_of(step, beta, qmin, qmax), beta.defined());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &v = saved[0], &step = saved[1], &beta = saved[2];
    auto [grad_v, grad_step, grad_offset] =
        gradients(v, grads[0], step, beta, ctx->saved_data["qmin"].toInt(), ctx->saved_data["qmax"].toInt(),
                  ctx->saved_data["grad_scale"].toDouble());
    const bool offset_grad = beta.defined() && ctx->needs_input_grad(2);  // no input 2 without an offset
    return {grad_v, grad_step, offset_grad ? grad_offset : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

template <bool HasOffset>
void fake_quantize_in_place(float* v, int64_t numel, Grid g, int64_t act) {
  at::parallel_for(0, numel, kBlock, [&](int64_t begin, int64_t end) {
    if (act == kRelu) {
      forward_in_place_block<HasOffset, kRelu>(v + begin, end - begin, g);
    } else if (act == kRelu6) {
      forward_in_place_block<HasOffset, kRelu6>(v + begin, end - begin, g);
    } else {
      forward_in_place_block<HasOffset, kIdentity>(v + begin, end - begin, g);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> gradients(const at::Tensor& v, const at::Tensor& grad_out,
                                                         const at::Tensor& step, const at::Tensor& beta, int64_t qmin,
                                                         int64_t qmax, double grad_scale) {
  const Grid g = grid_of(step, beta, qmin, qmax);
  auto [grad_v, sum_step, sum_offset] = fake_quantize_grads(v, grad_out, g, beta.defined());
  return {grad_v, at::full_like(step, sum_step * grad_scale),
          beta.defined() ? at::full_like(beta, sum_offset * grad_scale) : at::Tensor()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> learned_step_fake_quant_backward(
    const at::Tensor& v, const at::Tensor& grad_out, const at::Tensor& step, const c10::optional<at::Tensor>& offset,
    int64_t qmin, int64_t qmax, double grad_scale) {
  TORCH_CHECK(v.device().is_cpu() && v.scalar_type() == at::kFloat,
              "learned_step_fake_quant_backward takes a float32 CPU tensor");
  return gradients(dense(v), grad_out, step, offset.has_value() ? *offset : at::Tensor(), qmin, qmax, grad_scale);
}

at::Tensor learned_step_fake_quant_(at::Tensor& v, const at::Tensor& step, const c10::optional<at::Tensor>& offset,
                                    int64_t qmin, int64_t qmax, int64_t act) {
  TORCH_CHECK(v.device().is_cpu() && v.scalar_type() == at::kFloat && v.is_non_overlapping_and_dense(),
              "learned_step_fake_quant_ takes a dense float32 CPU tensor");
  TORCH_CHECK(!(at::GradMode::is_enabled() && v.requires_grad()), "learned_step_fake_quant_ has no gradient");
  TORCH_CHECK(act == kIdentity || act == kRelu || act == kRelu6, "learned_step_fake_quant_: unknown activation ", act);
  const at::Tensor beta = offset.has_value() ? *offset : at::Tensor();
  const Grid g = grid_of(step, beta, qmin, qmax);
  float* data = v.mutable_data_ptr<float>();
  if (beta.defined()) {
    fake_quantize_in_place<true>(data, v.numel(), g, act);
  } else {
    fake_quantize_in_place<false>(data, v.numel(), g, act);
  }
  return v;
}

at::Tensor learned_step_fake_quant(const at::Tensor& v, const at::Tensor& step, const c10::optional<at::Tensor>& offset,
                                   int64_t qmin, int64_t qmax, double grad_scale) {
  return LearnedStepFakeQuant::apply(v, step, offset, qmin, qmax, grad_scale);
}

}  // namespace qbench
