// What the native quantizer ops share (qbench/quant/native.py): the block order of their sums, the
// memory layouts they take, and their declarations for the module (ops.cpp).
//
// Each op sums per-element terms into 16 float lanes per block of kBlock elements, then adds the lanes
// and the blocks in order in double: one fixed order, whatever the thread count or vector width.
#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <vector>

namespace qbench {

constexpr int64_t kBlock = 16384;
constexpr int kLanes = 16;

// K sums, each in kLanes lanes of type T: element i of a block goes to lane i % kLanes.
template <int K, typename T = float>
struct Lanes {
  T lane[K][kLanes] = {};

  // The lanes of each sum added in order, in double.
  std::array<double, K> total() const {
    std::array<double, K> sums{};
    for (int k = 0; k < K; ++k) {
      for (int l = 0; l < kLanes; ++l) sums[k] += lane[k][l];
    }
    return sums;
  }
};

// block_sums(begin, size) -> std::array<double, K> for every block of n elements, run in parallel;
// the blocks' sums added in order, in double.
template <int K, typename BlockSums>
std::array<double, K> ordered_block_sums(int64_t n, BlockSums block_sums) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<std::array<double, K>> per_block(blocks);
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      const int64_t begin = b * kBlock;
      per_block[b] = block_sums(begin, std::min(n, begin + kBlock) - begin);
    }
  });
  std::array<double, K> sums{};
  for (const auto& block : per_block) {
    for (int k = 0; k < K; ++k) sums[k] += block[k];
  }
  return sums;
}

// v itself when its elements are dense in memory, else a dense copy in its memory format (a channel
// slice that a mixed-kernel conv feeds to one of its convs); outputs take that layout.
inline at::Tensor dense(const at::Tensor& v) {
  return v.is_non_overlapping_and_dense() ? v : v.contiguous(v.suggest_memory_format());
}

// g with the strides of v (an incoming gradient may come in another layout).
inline at::Tensor like(const at::Tensor& g, const at::Tensor& v) {
  return g.strides() == v.strides() ? g : at::empty_like(v).copy_(g);
}

at::Tensor learned_step_fake_quant(const at::Tensor& v, const at::Tensor& step, const c10::optional<at::Tensor>& offset,
                                   int64_t qmin, int64_t qmax, double grad_scale);

at::Tensor learned_step_fake_quant_(at::Tensor& v, const at::Tensor& step, const c10::optional<at::Tensor>& offset,
                                    int64_t qmin, int64_t qmax, int64_t act);

// (∂L/∂v, ∂L/∂s, ∂L/∂β) of the LSQ / LSQ+ quantizer at v (dense) for ∂L/∂v̂ = grad_out, the step and offset
// gradients times grad_scale; β undefined: no offset, and no offset gradient.
std::tuple<at::Tensor, at::Tensor, at::Tensor> gradients(const at::Tensor& v, const at::Tensor& grad_out,
                                                         const at::Tensor& step, const at::Tensor& beta, int64_t qmin,
                                                         int64_t qmax, double grad_scale);

std::tuple<at::Tensor, at::Tensor, at::Tensor> learned_step_fake_quant_backward(
    const at::Tensor& v, const at::Tensor& grad_out, const at::Tensor& step, const c10::optional<at::Tensor>& offset,
    int64_t qmin, int64_t qmax, double grad_scale);

at::Tensor rcf_quantize(const at::Tensor& v, const at::Tensor& alpha, const at::Tensor& levels,
                        const at::Tensor& bounds, double lo, double grad_outside, bool weight_norm);

}  // namespace qbench
