// APoT quantizer with the reparameterised clipping function (RCF) as one CPU op with its own autograd
// (qbench/quant/native.py), computing what qbench.quant.apot.RCFQuantize computes.
//
// Forward (APoT eq. 6): x̂ = α·Π(clip(u, lo, 1)), u = (v − shift)·inv_scale/α, Π the nearest level
// (ties: the lower); with weight normalisation (section 2.4) shift = mean(v), inv_scale = 1/std(v)
// (unbiased), else 0 and 1. Backward (eq. 7), n = α·u:
//   ∂L/∂n = ∂L/∂x̂ inside [lo, 1]; outside 0 below an unsigned range, else ∂L/∂x̂·grad_outside
//   ∂L/∂α = Σ ∂L/∂x̂·(Π(clip(u)) − u inside, else Π(clip(u)))
// and through the normalisation ∂L/∂v = inv_scale·(∂L/∂n − Σ∂L/∂n/N − n·Σ(∂L/∂n·n)/(N − 1)).
//
// Π: level sets of up to 64 levels (every APoT and PoT set up to 5 bits, uniform up to 6) take a chain
// of selects, one per midpoint, over chunks of 64 elements; larger sets a binary search over the
// midpoints. Each output is a level, so x̂ and ∂L/∂n are the eager formula bit for bit (no contracted
// multiply-adds). mean and std are summed in double (the eager path sums in float), and every sum runs
// in the fixed order of native.h.
#include "native.h"

#include <cmath>
#include <utility>

namespace qbench {
namespace {

constexpr int64_t kChunk = 64;
constexpr int kMaxChainBounds = 63;

struct Rcf {
  float alpha, shift, inv_scale, lo, grad_outside;
  const float* levels;
  const float* bounds;  // the midpoints between adjacent levels, ascending
  int64_t n_bounds;
};

// u and clip(u, lo, 1) of a chunk (NaN stays NaN, as torch.maximum and clamp_max keep it).
inline void scaled_chunk(const float* __restrict v, int64_t n, const Rcf r, float* __restrict u,
                         float* __restrict clipped) {
  for (int64_t i = 0; i < n; ++i) {
    u[i] = (v[i] - r.shift) * r.inv_scale / r.alpha;
    const float above = u[i] < r.lo ? r.lo : u[i];
    clipped[i] = above > 1.0f ? 1.0f : above;
  }
}

// Π of a chunk: the level above every midpoint below the value (NaN: the lowest level).
inline void project_chunk(const float* __restrict clipped, int64_t n, const Rcf r, float* __restrict out) {
  if (r.n_bounds <= kMaxChainBounds) {
    for (int64_t i = 0; i < n; ++i) out[i] = r.levels[0];
    for (int64_t j = 0; j < r.n_bounds; ++j) {
      const float bound = r.bounds[j], level = r.levels[j + 1];
      for (int64_t i = 0; i < n; ++i) out[i] = clipped[i] > bound ? level : out[i];
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      out[i] = r.levels[std::lower_bound(r.bounds, r.bounds + r.n_bounds, clipped[i]) - r.bounds];
    }
  }
}

void forward_block(const float* __restrict v, float* __restrict out, int64_t n, const Rcf r) {
  float u[kChunk], clipped[kChunk], projected[kChunk];
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t m = std::min(kChunk, n - i);
    scaled_chunk(v + i, m, r, u, clipped);
    project_chunk(clipped, m, r, projected);
    for (int64_t k = 0; k < m; ++k) out[i + k] = projected[k] * r.alpha;
  }
}

// ∂L/∂n of one block and its sums (∂L/∂α, Σ ∂L/∂n, Σ ∂L/∂n·n). Every term is computed, then
// selected, so that the loop vectorises.
std::array<double, 3> backward_block(const float* __restrict v, const float* __restrict grad_out,
                                     float* __restrict grad_n, int64_t n, const Rcf r) {
  Lanes<3> sums;
  float u[kChunk], clipped[kChunk], projected[kChunk];
  const bool unsigned_range = r.lo == 0.0f;
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t m = std::min(kChunk, n - i);
    scaled_chunk(v + i, m, r, u, clipped);
    project_chunk(clipped, m, r, projected);
    for (int64_t k0 = 0; k0 < m; k0 += kLanes) {
      const int width = m - k0 < kLanes ? int(m - k0) : kLanes;
      for (int l = 0; l < width; ++l) {
        const int64_t k = k0 + l;
        const float g = grad_out[i + k], uk = u[k];
        const bool inside = (uk >= r.lo) & (uk <= 1.0f);
        const bool below_unsigned = (uk < 0.0f) & unsigned_range;
        const float outside = below_unsigned ? 0.0f : g * r.grad_outside;
        const float gn = inside ? g : outside;
        const float dalpha = projected[k] - (inside ? uk : 0.0f);
        grad_n[i + k] = gn;
        sums.lane[0][l] += g * dalpha;
        sums.lane[1][l] += gn;
        sums.lane[2][l] += gn * uk * r.alpha;
      }
    }
  }
  return sums.total();
}

// (mean, 1/std) of v, unbiased std, both summed in double.
std::pair<float, float> normalisation(const float* v, int64_t n) {
  const double mean = ordered_block_sums<1>(n, [&](int64_t begin, int64_t size) {
    Lanes<1, double> sum;
    for (int64_t i = 0; i < size; ++i) sum.lane[0][i % kLanes] += v[begin + i];
    return sum.total();
  })[0] / double(n);
  const double squares = ordered_block_sums<1>(n, [&](int64_t begin, int64_t size) {
    Lanes<1, double> sum;
    for (int64_t i = 0; i < size; ++i) {
      const double d = double(v[begin + i]) - mean;
      sum.lane[0][i % kLanes] += d * d;
    }
    return sum.total();
  })[0];
  return {float(mean), float(1.0 / std::sqrt(squares / double(n - 1)))};
}

Rcf rcf_of(const at::Tensor& alpha, const at::Tensor& levels, const at::Tensor& bounds, float shift, float inv_scale,
           double lo, double grad_outside) {
  return {alpha.item<float>(), shift, inv_scale, float(lo), float(grad_outside), levels.const_data_ptr<float>(),
          bounds.const_data_ptr<float>(), levels.numel() - 1};
}

struct RcfQuantize : public torch::autograd::Function<RcfQuantize> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& v, const at::Tensor& alpha,
                            const at::Tensor& levels, const at::Tensor& bounds, double lo, double grad_outside,
                            bool weight_norm) {
    TORCH_CHECK(v.device().is_cpu() && v.scalar_type() == at::kFloat, "rcf_quantize takes a float32 CPU tensor");
    TORCH_CHECK(levels.is_contiguous() && bounds.is_contiguous() && levels.scalar_type() == at::kFloat &&
                    bounds.scalar_type() == at::kFloat && bounds.numel() >= levels.numel() - 1,
                "rcf_quantize takes contiguous float32 levels and their midpoints");
    const at::Tensor x = dense(v);
    const float* in = x.const_data_ptr<float>();
    const auto [shift, inv_scale] = weight_norm ? normalisation(in, x.numel()) : std::pair<float, float>{0.0f, 1.0f};
    ctx->save_for_backward({x, alpha, levels, bounds});
    ctx->saved_data["shift"] = double(shift);
    ctx->saved_data["inv_scale"] = double(inv_scale);
    ctx->saved_data["lo"] = lo;
    ctx->saved_data["grad_outside"] = grad_outside;
    ctx->saved_data["weight_norm"] = weight_norm;
    const Rcf r = rcf_of(alpha, levels, bounds, shift, inv_scale, lo, grad_outside);
    at::Tensor out = at::empty_like(x);
    float* res = out.mutable_data_ptr<float>();
    at::parallel_for(0, x.numel(), kBlock, [&](int64_t begin, int64_t end) {
      forward_block(in + begin, res + begin, end - begin, r);
    });
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &v = saved[0], &alpha = saved[1];
    const Rcf r = rcf_of(alpha, saved[2], saved[3], float(ctx->saved_data["shift"].toDouble()),
                         float(ctx->saved_data["inv_scale"].toDouble()), ctx->saved_data["lo"].toDouble(),
                         ctx->saved_data["grad_outside"].toDouble());
    const at::Tensor grad = like(grads[0], v);
    at::Tensor grad_v = at::empty_like(v);
    const float* in = v.const_data_ptr<float>();
    const float* gin = grad.const_data_ptr<float>();
    float* gv = grad_v.mutable_data_ptr<float>();
    const int64_t n = v.numel();
    const auto sums = ordered_block_sums<3>(
        n, [&](int64_t begin, int64_t size) { return backward_block(in + begin, gin + begin, gv + begin, size, r); });
    if (ctx->saved_data["weight_norm"].toBool()) {
      // ∂L/∂n → ∂L/∂v in place, in the order of qbench.quant.apot._normalisation_backward
      const float mean_grad = float(sums[1]) / float(n), sum_grad_n = float(sums[2]), dof = float(n - 1);
      at::parallel_for(0, n, kBlock, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const float u = (in[i] - r.shift) * r.inv_scale / r.alpha;
          gv[i] = r.inv_scale * ((gv[i] - mean_grad) - u * r.alpha * sum_grad_n / dof);
        }
      });
    }
    return {grad_v, at::full_like(alpha, sums[0]), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

at::Tensor rcf_quantize(const at::Tensor& v, const at::Tensor& alpha, const at::Tensor& levels,
                        const at::Tensor& bounds, double lo, double grad_outside, bool weight_norm) {
  return RcfQuantize::apply(v, alpha, levels, bounds, lo, grad_outside, weight_norm);
}

}  // namespace qbench
