// The native quantizer ops as one Python module (qbench/quant/native.py).
#include "native.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("learned_step_fake_quant", &qbench::learned_step_fake_quant,
        "v̂ = s·round(clamp((v − β)/s, qmin, qmax)) + β with the LSQ / LSQ+ gradients (grad_scale on s and β)");
  m.def("learned_step_fake_quant_", &qbench::learned_step_fake_quant_,
        "the same forward without gradient, over v in place, after act(v): 0 none, 1 ReLU, 2 ReLU6");
  m.def("learned_step_fake_quant_backward", &qbench::learned_step_fake_quant_backward,
        "(dL/dv, dL/ds, dL/dbeta) of learned_step_fake_quant at v for dL/dv_hat = grad_out (None: no offset)");
  m.def("rcf_quantize", &qbench::rcf_quantize,
        "α·Π(clip(n/α, lo, 1)) with APoT's RCF gradients; n = (v − mean)/std with weight_norm, else v");
}
