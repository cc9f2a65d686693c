// oneDNN convolutions and max pooling for XLA's CPU backend, called through XLA's FFI
// (jax.ffi.ffi_call; age_jax/models/onednn.py).
//
// Why: XLA's own CPU convolution computes the weight gradient at 8-9 GFLOP/s on large maps of
// an AVX2 CPU (BENCHMARK_RECORDS.md), oneDNN's direct kernels at 40-50; XLA's max-pooling gradient
// (select-and-scatter, or the fusions autodiff makes of strided views) is several times slower
// than oneDNN's. Layouts are JAX's: NHWC activations, HWIO kernels, float32. Each handler builds
// (once per shape, then cached) a oneDNN primitive over the XLA buffers themselves; only the
// small kernel tensor is reordered.
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// XLA may run independent custom calls concurrently from its thread pool (a convolution's input
// and weight gradients, for one). One oneDNN execution at a time: each already uses every core
// through OpenMP, and a plan's kernel buffer is shared between calls.
std::mutex& execution_mutex() {
  static std::mutex mutex;
  return mutex;
}

enum Direction { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// One convolution's geometry: x (n, h, w, cin), kernel (kh, kw, cin, cout), y (n, ho, wo, cout).
struct Geometry {
  int64_t n, h, w, cin, kh, kw, cout, ho, wo, sh, sw, pt, pl, pb, pr;
  auto key() const { return std::make_tuple(n, h, w, cin, kh, kw, cout, sh, sw, pt, pl, pb, pr); }
  memory::desc x() const { return {{n, cin, h, w}, memory::data_type::f32, tag::nhwc}; }
  memory::desc y() const { return {{n, cout, ho, wo}, memory::data_type::f32, tag::nhwc}; }
  memory::desc kernel_hwio() const { return {{cout, cin, kh, kw}, memory::data_type::f32, tag::hwio}; }
  memory::desc kernel_any() const { return {{cout, cin, kh, kw}, memory::data_type::f32, tag::any}; }
  memory::dims strides() const { return {sh, sw}; }
  memory::dims pad_l() const { return {pt, pl}; }
  memory::dims pad_r() const { return {pb, pr}; }
};

// Scratch memory is ours, allocated per execution: oneDNN's library-managed scratchpad crashed
// (gemm-based weight gradients, inside XLA's thread pool).
const dnnl::primitive_attr& user_scratchpad() {
  static const dnnl::primitive_attr attr = [] {
    dnnl::primitive_attr a;
    a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return a;
  }();
  return attr;
}

dnnl::convolution_forward::primitive_desc forward_pd(const Geometry& g) {
  return {cpu_engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
          g.x(), g.kernel_any(), g.y(), g.strides(), g.pad_l(), g.pad_r(), user_scratchpad()};
}

// A primitive and the kernel layout it wants, built once per (direction, geometry).
struct Plan {
  dnnl::primitive primitive;
  memory::desc kernel;  // the primitive's kernel (or kernel-gradient) layout
  memory::desc scratchpad;
  std::vector<float> kernel_scratch;  // used under execution_mutex()
};

Plan& plan_for(Direction direction, const Geometry& g) {
  static std::mutex cache_mutex;
  static std::map<std::pair<int, decltype(g.key())>, std::unique_ptr<Plan>> cache;
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto& slot = cache[{direction, g.key()}];
  if (slot) return *slot;
  slot = std::make_unique<Plan>();
  auto fwd = forward_pd(g);
  if (direction == kForward) {
    slot->primitive = dnnl::convolution_forward(fwd);
    slot->kernel = fwd.weights_desc();
    slot->scratchpad = fwd.scratchpad_desc();
  } else if (direction == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        cpu_engine(), dnnl::algorithm::convolution_direct, g.x(), g.kernel_any(), g.y(),
        g.strides(), g.pad_l(), g.pad_r(), fwd, user_scratchpad());
    slot->primitive = dnnl::convolution_backward_data(pd);
    slot->kernel = pd.weights_desc();
    slot->scratchpad = pd.scratchpad_desc();
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        cpu_engine(), dnnl::algorithm::convolution_direct, g.x(), g.kernel_any(), g.y(),
        g.strides(), g.pad_l(), g.pad_r(), fwd, user_scratchpad());
    slot->primitive = dnnl::convolution_backward_weights(pd);
    slot->kernel = pd.diff_weights_desc();
    slot->scratchpad = pd.scratchpad_desc();
  }
  slot->kernel_scratch.resize(slot->kernel.get_size() / sizeof(float));
  return *slot;
}

// x (n, h, w, c) and y (n, ho, wo, cout) from XLA; the window and cout from the kernel or attributes.
ffi::Error geometry(ffi::Span<const int64_t> x_dims, ffi::Span<const int64_t> y_dims, int64_t kh, int64_t kw,
                    int64_t cout, ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pads, Geometry* g) {
  if (x_dims.size() != 4 || y_dims.size() != 4 || strides.size() != 2 || pads.size() != 4)
    return ffi::Error::InvalidArgument("onednn: expected NHWC operands, 2 strides, 4 pads");
  *g = {x_dims[0], x_dims[1], x_dims[2], x_dims[3], kh, kw, cout,
        y_dims[1], y_dims[2], strides[0], strides[1], pads[0], pads[2], pads[1], pads[3]};
  return ffi::Error::Success();
}

ffi::Error conv_geometry(ffi::Span<const int64_t> x_dims, ffi::Span<const int64_t> y_dims,
                         ffi::Span<const int64_t> kernel_dims, ffi::Span<const int64_t> strides,
                         ffi::Span<const int64_t> pads, Geometry* g) {
  if (kernel_dims.size() != 4) return ffi::Error::InvalidArgument("onednn conv: expected an HWIO kernel");
  return geometry(x_dims, y_dims, kernel_dims[0], kernel_dims[1], kernel_dims[3], strides, pads, g);
}

ffi::Error pool_geometry(ffi::Span<const int64_t> x_dims, ffi::Span<const int64_t> y_dims,
                         ffi::Span<const int64_t> window, ffi::Span<const int64_t> strides,
                         ffi::Span<const int64_t> pads, Geometry* g) {
  if (window.size() != 2 || x_dims.size() != 4)
    return ffi::Error::InvalidArgument("onednn max pool: expected a 2-D window over NHWC");
  return geometry(x_dims, y_dims, window[0], window[1], x_dims[3], strides, pads, g);
}

// Runs `body` (oneDNN calls), turning oneDNN's exceptions into XLA errors.
template <typename Body>
ffi::Error guarded(Body body) {
  try {
    body();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error run(Direction direction, const Geometry& g, float* x, float* kernel, float* y) {
  return guarded([&] {
    Plan& plan = plan_for(direction, g);
    std::lock_guard<std::mutex> lock(execution_mutex());
    auto& engine = cpu_engine();
    dnnl::stream stream(engine);
    memory x_mem(g.x(), engine, x), y_mem(g.y(), engine, y);
    memory user_kernel(g.kernel_hwio(), engine, kernel);
    bool reorder = plan.kernel != g.kernel_hwio();
    memory kernel_mem = reorder ? memory(plan.kernel, engine, plan.kernel_scratch.data()) : user_kernel;
    std::vector<uint8_t> scratch(plan.scratchpad.get_size());
    memory scratch_mem(plan.scratchpad, engine, scratch.data());
    if (direction != kBackwardWeights && reorder)
      dnnl::reorder(user_kernel, kernel_mem).execute(stream, user_kernel, kernel_mem);
    if (direction == kForward)
      plan.primitive.execute(stream, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_WEIGHTS, kernel_mem}, {DNNL_ARG_DST, y_mem},
                                      {DNNL_ARG_SCRATCHPAD, scratch_mem}});
    else if (direction == kBackwardData)
      plan.primitive.execute(stream, {{DNNL_ARG_DIFF_SRC, x_mem}, {DNNL_ARG_WEIGHTS, kernel_mem}, {DNNL_ARG_DIFF_DST, y_mem},
                                      {DNNL_ARG_SCRATCHPAD, scratch_mem}});
    else
      plan.primitive.execute(stream, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_DIFF_WEIGHTS, kernel_mem}, {DNNL_ARG_DIFF_DST, y_mem},
                                      {DNNL_ARG_SCRATCHPAD, scratch_mem}});
    if (direction == kBackwardWeights && reorder)
      dnnl::reorder(kernel_mem, user_kernel).execute(stream, kernel_mem, user_kernel);
    stream.wait();
  });
}

using F32 = ffi::Buffer<ffi::F32>;
using Longs = ffi::Span<const int64_t>;

// Max pooling: the forward for inference; the backward recomputes the forward with its argmax
// workspace from x (cheap next to the backward) so that XLA never has to hold the workspace.
struct PoolPlan {
  dnnl::pooling_forward inference, training;
  dnnl::pooling_backward backward;
  memory::desc workspace;
  size_t scratch_bytes;  // the most any of the three needs
};

PoolPlan& pool_plan_for(const Geometry& g) {
  static std::mutex cache_mutex;
  static std::map<decltype(g.key()), std::unique_ptr<PoolPlan>> cache;
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto& slot = cache[g.key()];
  if (slot) return *slot;
  memory::dims window{g.kh, g.kw}, dilation{0, 0};
  auto pool_pd = [&](dnnl::prop_kind kind) {
    return dnnl::pooling_forward::primitive_desc(cpu_engine(), kind, dnnl::algorithm::pooling_max, g.x(), g.y(),
                                                 g.strides(), window, dilation, g.pad_l(), g.pad_r(),
                                                 user_scratchpad());
  };
  auto inference = pool_pd(dnnl::prop_kind::forward_inference), training = pool_pd(dnnl::prop_kind::forward_training);
  dnnl::pooling_backward::primitive_desc backward(cpu_engine(), dnnl::algorithm::pooling_max, g.x(), g.y(),
                                                  g.strides(), window, dilation, g.pad_l(), g.pad_r(), training,
                                                  user_scratchpad());
  size_t scratch_bytes = std::max({inference.scratchpad_desc().get_size(), training.scratchpad_desc().get_size(),
                                   backward.scratchpad_desc().get_size()});
  slot.reset(new PoolPlan{dnnl::pooling_forward(inference), dnnl::pooling_forward(training),
                          dnnl::pooling_backward(backward), training.workspace_desc(), scratch_bytes});
  return *slot;
}

memory::desc scratch_desc(size_t bytes) {
  return {{static_cast<memory::dim>(bytes)}, memory::data_type::u8, tag::a};
}

ffi::Error max_pool(F32 x, ffi::ResultBuffer<ffi::F32> y, Longs window, Longs strides, Longs pads) {
  Geometry g;
  if (auto e = pool_geometry(x.dimensions(), y->dimensions(), window, strides, pads, &g); e.failure()) return e;
  return guarded([&] {
    auto& engine = cpu_engine();
    dnnl::stream stream(engine);
    memory x_mem(g.x(), engine, x.typed_data()), y_mem(g.y(), engine, y->typed_data());
    PoolPlan& plan = pool_plan_for(g);
    std::vector<uint8_t> scratch(plan.scratch_bytes);
    memory scratch_mem(scratch_desc(scratch.size()), engine, scratch.data());
    std::lock_guard<std::mutex> lock(execution_mutex());
    plan.inference.execute(stream, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_DST, y_mem}, {DNNL_ARG_SCRATCHPAD, scratch_mem}});
    stream.wait();
  });
}

ffi::Error max_pool_backward(F32 x, F32 dy, ffi::ResultBuffer<ffi::F32> dx, Longs window, Longs strides,
                             Longs pads) {
  Geometry g;
  if (auto e = pool_geometry(x.dimensions(), dy.dimensions(), window, strides, pads, &g); e.failure()) return e;
  return guarded([&] {
    auto& engine = cpu_engine();
    PoolPlan& plan = pool_plan_for(g);
    dnnl::stream stream(engine);
    std::vector<float> y(g.n * g.ho * g.wo * g.cout);
    std::vector<uint8_t> workspace(plan.workspace.get_size());
    memory x_mem(g.x(), engine, x.typed_data()), y_mem(g.y(), engine, y.data());
    memory ws_mem(plan.workspace, engine, workspace.data());
    memory dy_mem(g.y(), engine, dy.typed_data()), dx_mem(g.x(), engine, dx->typed_data());
    std::vector<uint8_t> scratch(plan.scratch_bytes);
    memory scratch_mem(scratch_desc(scratch.size()), engine, scratch.data());
    std::lock_guard<std::mutex> lock(execution_mutex());
    plan.training.execute(stream, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_DST, y_mem}, {DNNL_ARG_WORKSPACE, ws_mem},
                                   {DNNL_ARG_SCRATCHPAD, scratch_mem}});
    plan.backward.execute(stream, {{DNNL_ARG_DIFF_DST, dy_mem}, {DNNL_ARG_WORKSPACE, ws_mem},
                                   {DNNL_ARG_DIFF_SRC, dx_mem}, {DNNL_ARG_SCRATCHPAD, scratch_mem}});
    stream.wait();
  });
}

ffi::Error forward(F32 x, F32 kernel, ffi::ResultBuffer<ffi::F32> y, Longs strides, Longs pads) {
  Geometry g;
  if (auto e = conv_geometry(x.dimensions(), y->dimensions(), kernel.dimensions(), strides, pads, &g); e.failure()) return e;
  return run(kForward, g, x.typed_data(), kernel.typed_data(), y->typed_data());
}

ffi::Error backward_data(F32 dy, F32 kernel, ffi::ResultBuffer<ffi::F32> dx, Longs strides, Longs pads) {
  Geometry g;
  if (auto e = conv_geometry(dx->dimensions(), dy.dimensions(), kernel.dimensions(), strides, pads, &g); e.failure()) return e;
  return run(kBackwardData, g, dx->typed_data(), kernel.typed_data(), dy.typed_data());
}

ffi::Error backward_weights(F32 x, F32 dy, ffi::ResultBuffer<ffi::F32> dw, Longs strides, Longs pads) {
  Geometry g;
  if (auto e = conv_geometry(x.dimensions(), dy.dimensions(), dw->dimensions(), strides, pads, &g); e.failure()) return e;
  return run(kBackwardWeights, g, x.typed_data(), dw->typed_data(), dy.typed_data());
}

}  // namespace

// Every convolution handler: two float32 operands, one result, strides and pads.
#define CONV_BINDING \
  ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>().Attr<Longs>("strides").Attr<Longs>("pads")

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvForward, forward, CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBackwardData, backward_data, CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBackwardWeights, backward_weights, CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnMaxPool, max_pool,
                              ffi::Ffi::Bind().Arg<F32>().Ret<F32>().Attr<Longs>("window").Attr<Longs>("strides").Attr<Longs>("pads"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnMaxPoolBackward, max_pool_backward,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>().Attr<Longs>("window").Attr<Longs>("strides").Attr<Longs>("pads"));
