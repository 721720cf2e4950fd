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
// Π: level sets of 2 to 6 bits (up to 64 levels) take a chain of selects, one per midpoint, as
// straight-line code with one element per SIMD lane; larger sets a binary search over the midpoints.
// Each output is a level, so x̂ and ∂L/∂n are the eager formula bit for bit (no contracted
// multiply-adds). mean and std are summed in double (the eager path sums in float), and every sum
// runs in the fixed order of native.h.
#include "native.h"

#include <cmath>
#include <type_traits>
#include <utility>

namespace qbench {
namespace {

struct Rcf {
  float alpha, shift, inv_scale, lo, grad_outside;
  const float* levels;
  const float* bounds;  // the midpoints between adjacent levels, ascending
  int64_t n_bounds;
};

// u = (v − shift)·inv_scale/α, the operations of qbench.quant.apot._scaled.
inline float scaled(float v, const Rcf& r) { return (v - r.shift) * r.inv_scale / r.alpha; }

// clip(u, lo, 1); NaN stays NaN, as torch.maximum and clamp_max keep it.
inline float clipped(float u, const Rcf& r) {
  const float above = u < r.lo ? r.lo : u;
  return above > 1.0f ? 1.0f : above;
}

// a if take, else b; both evaluated (a conditional load would keep the loop from vectorising).
inline float select(bool take, float a, float b) { return take ? a : b; }

// Π: the level above every midpoint below the value (NaN: the lowest level), by a chain of Bounds
// selects, straight-line code, or (Bounds = 0) a binary search.
template <int... J>
inline float chain(float c, const Rcf& r, std::integer_sequence<int, J...>) {
  float out = r.levels[0];
  ((out = select(c > r.bounds[J], r.levels[J + 1], out)), ...);
  return out;
}

template <int Bounds>
inline float level(float c, const Rcf& r) {
  if constexpr (Bounds > 0) {
    return chain(c, r, std::make_integer_sequence<int, Bounds>{});
  } else {
    return r.levels[std::lower_bound(r.bounds, r.bounds + r.n_bounds, c) - r.bounds];
  }
}

// fn(std::integral_constant<int, Bounds>) for the level set's midpoint count: the counts of the
// signed (2^b − 2) and unsigned (2^b − 1) sets of 2 to 6 bits unroll their chains; others search.
template <typename Fn>
auto with_bounds(int64_t n_bounds, Fn fn) {
  switch (n_bounds) {
    case 2: return fn(std::integral_constant<int, 2>{});
    case 3: return fn(std::integral_constant<int, 3>{});
    case 6: return fn(std::integral_constant<int, 6>{});
    case 7: return fn(std::integral_constant<int, 7>{});
    case 14: return fn(std::integral_constant<int, 14>{});
    case 15: return fn(std::integral_constant<int, 15>{});
    case 30: return fn(std::integral_constant<int, 30>{});
    case 31: return fn(std::integral_constant<int, 31>{});
    case 62: return fn(std::integral_constant<int, 62>{});
    case 63: return fn(std::integral_constant<int, 63>{});
    default: return fn(std::integral_constant<int, 0>{});
  }
}

// One element per SIMD lane, the chain of selects unrolled inside: the value stays in a register
// while it meets every midpoint.
template <int Bounds>
void forward_block(const float* __restrict v, float* __restrict out, int64_t n, const Rcf r) {
  for (int64_t i = 0; i < n; ++i) out[i] = level<Bounds>(clipped(scaled(v[i], r), r), r) * r.alpha;
}

// ∂L/∂n of one block and its sums (∂L/∂α, Σ ∂L/∂n, Σ ∂L/∂n·n). Every term is computed, then
// selected, so that the loop vectorises.
template <int Bounds>
std::array<double, 3> backward_block(const float* __restrict v, const float* __restrict grad_out,
                                     float* __restrict grad_n, int64_t n, const Rcf r) {
  Lanes<3> sums;
  const bool unsigned_range = r.lo == 0.0f;
  for (int64_t i = 0; i < n; i += kLanes) {
    const int width = n - i < kLanes ? int(n - i) : kLanes;
    for (int l = 0; l < width; ++l) {
      const float g = grad_out[i + l], u = scaled(v[i + l], r);
      const float projected = level<Bounds>(clipped(u, r), r);
      const bool inside = (u >= r.lo) & (u <= 1.0f);
      const bool below_unsigned = (u < 0.0f) & unsigned_range;
      const float outside = below_unsigned ? 0.0f : g * r.grad_outside;
      const float gn = inside ? g : outside;
      const float dalpha = projected - (inside ? u : 0.0f);
      grad_n[i + l] = gn;
      sums.lane[0][l] += g * dalpha;
      sums.lane[1][l] += gn;
      sums.lane[2][l] += gn * u * r.alpha;
    }
  }
  return sums.total();
}

// Σ (v − k) and Σ (v − k)² of one block in double lanes (written lane by lane, so that the loop
// vectorises).
std::array<double, 2> shifted_moments(const float* __restrict v, int64_t n, double k) {
  Lanes<2, double> sums;
  for (int64_t i = 0; i < n; i += kLanes) {
    const int width = n - i < kLanes ? int(n - i) : kLanes;
    for (int l = 0; l < width; ++l) {
      const double d = double(v[i + l]) - k;
      sums.lane[0][l] += d;
      sums.lane[1][l] += d * d;
    }
  }
  return sums.total();
}

// (mean, 1/std) of v, unbiased std, in one pass: the moments about the first value, summed in
// double (the shift keeps the variance accurate where the mean is large against the spread).
std::pair<float, float> normalisation(const float* v, int64_t n) {
  const double k = v[0];
  const auto [sum, squares] = ordered_block_sums<2>(
      n, [&](int64_t begin, int64_t size) { return shifted_moments(v + begin, size, k); });
  const double mean = sum / double(n);
  return {float(k + mean), float(1.0 / std::sqrt((squares - sum * mean) / double(n - 1)))};
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
    with_bounds(r.n_bounds, [&](auto bounds) {
      at::parallel_for(0, x.numel(), kBlock, [&](int64_t begin, int64_t end) {
        forward_block<bounds>(in + begin, res + begin, end - begin, r);
      });
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
    const auto sums = with_bounds(r.n_bounds, [&](auto bounds) {
      return ordered_block_sums<3>(n, [&](int64_t begin, int64_t size) {
        return backward_block<bounds>(in + begin, gin + begin, gv + begin, size, r);
      });
    });
    if (ctx->saved_data["weight_norm"].toBool()) {
      // ∂L/∂n → ∂L/∂v in place, in the order of qbench.quant.apot._normalisation_backward
      const float mean_grad = float(sums[1]) / float(n), sum_grad_n = float(sums[2]), dof = float(n - 1);
      at::parallel_for(0, n, kBlock, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const float u = scaled(in[i], r);
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
