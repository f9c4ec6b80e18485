/* graphduel SIMT emulator: runs the CUDA C that compiler/codegen/cuda.py generates on the CPU, so the kernels'
 * logic (indexing, grid-stride loops, block reductions, float4 paths) is executed and checked without a GPU.
 *
 * Model: the blocks of a launch run one after another. A block's threads are fibers (ucontext) on the calling
 * OS thread; a fiber runs until it reaches a synchronisation point (__syncthreads, a warp shuffle) or returns.
 * After every fiber has stopped, the scheduler releases what CUDA would release:
 *   - a warp whose 32 lanes all wait at a shuffle (each lane gets its source lane's value),
 *   - else a block whose live threads all wait at __syncthreads.
 * Anything else is a deadlock on a GPU too (a barrier or a full-mask shuffle in divergent code), and is
 * reported instead of hanging. Fibers run in thread order or in reverse (``order``): a kernel whose results
 * depend on that order has a shared-memory race.
 *
 * Not modelled: the memory model across blocks (blocks are sequential, so races between blocks are invisible),
 * atomics, texture/constant memory, bounds and alignment faults (x86 tolerates a misaligned float4), NVRTC's own
 * floating-point library (glibc's libm answers here), lanes of a warp waiting at two different shuffles (released
 * together here; undefined on a GPU). Kernels must be 1-D launches.
 */
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <utility>
#include <vector>
#include <ucontext.h>

/* The float overloads of every function the op table's CUDA templates call, as CUDA has them (C's would compute in
 * double): compiler/runtime/simt.py replaces the next line with compiler.codegen.dialect.cxx_using_line(CUDA). */
GD_USING_STD

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
/* One block at a time: a static is exactly one block's shared memory. All of them live in one section, which
 * every block starts by filling with 0xFF bytes (NaN as a float, -1 as an integer): a kernel that reads shared
 * memory it never wrote gets what a GPU would not promise, instead of a helpful zero or the last block's data. */
#define __shared__ static __attribute__((section("gd_shared")))
extern "C" char __start_gd_shared[] __attribute__((weak));
extern "C" char __stop_gd_shared[] __attribute__((weak));

struct dim3 { unsigned x, y, z; };
static dim3 threadIdx, blockIdx, blockDim, gridDim;

struct alignas(16) float4 { float x, y, z, w; };
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
static inline float __int_as_float(int bits) { float f; std::memcpy(&f, &bits, 4); return f; }

namespace gd_simt {

enum Wait { RUNNABLE, AT_SYNCTHREADS, AT_SHUFFLE, EXITED };

struct Fiber {
  ucontext_t context;
  unsigned tid;
  Wait wait;
  unsigned mask;
  int source_lane;
  uint64_t value, result;
};

static const size_t STACK_BYTES = 256 << 10;
static std::vector<Fiber> fibers;
static std::vector<char*> stacks;
static ucontext_t scheduler;
static Fiber* current = nullptr;
static const std::function<void()>* body = nullptr;
static bool direct = false;
static char error[1024];

/* Thrown (no fibers, so no context switch to cross) when a kernel launched without fibers synchronises. */
struct NeedsFibers { const char* what; };

static void fiber_main() {
  (*body)();
  current->wait = EXITED;  // returning resumes uc_link, the scheduler
}

static void park(Wait why) {
  current->wait = why;
  swapcontext(&current->context, &scheduler);
}

static void fail(const char* what) {
  std::snprintf(error, sizeof error, "block %u: %s", blockIdx.x, what);
}

/* The value of ``v`` in lane ``source_lane`` of this warp (own value when the source is outside the warp). */
static uint64_t shuffle(unsigned mask, uint64_t v, int source_lane) {
  if (direct) throw NeedsFibers{"a warp shuffle"};
  current->mask = mask;
  current->value = v;
  current->source_lane = source_lane;
  park(AT_SHUFFLE);
  return current->result;
}

static void sync_block() {
  if (direct) throw NeedsFibers{"__syncthreads"};
  park(AT_SYNCTHREADS);
}

/* Release every warp whose lanes all wait at a shuffle; false if a warp waits with some lanes elsewhere. */
static bool release_warps(bool* released) {
  *released = false;
  for (size_t w = 0; w < fibers.size(); w += 32) {
    size_t end = w + 32 < fibers.size() ? w + 32 : fibers.size();
    size_t waiting = 0;
    for (size_t i = w; i < end; i++) waiting += fibers[i].wait == AT_SHUFFLE;
    if (waiting == 0) continue;
    if (waiting != end - w) {
      std::snprintf(error, sizeof error, "block %u, warp %zu: %zu of %zu lanes wait at a full-mask shuffle while "
                    "the others are elsewhere (divergent shuffle: deadlock or undefined on a GPU)",
                    blockIdx.x, w / 32, waiting, end - w);
      return false;
    }
    for (size_t i = w; i < end; i++) {
      if (fibers[i].mask != 0xffffffffu || end - w != 32) {
        fail("a shuffle whose mask is not the full warp of 32 lanes (not emulated)");
        return false;
      }
      int src = fibers[i].source_lane;
      fibers[i].result = (src >= 0 && src < 32) ? fibers[w + src].value : fibers[i].value;
    }
    for (size_t i = w; i < end; i++) fibers[i].wait = RUNNABLE;
    *released = true;
  }
  return true;
}

static void poison_shared() {
  if (__start_gd_shared != nullptr) std::memset(__start_gd_shared, 0xFF, (size_t)(__stop_gd_shared - __start_gd_shared));
}

static int run_block(bool reverse) {
  poison_shared();
  const size_t n = fibers.size();
  for (size_t i = 0; i < n; i++) {
    Fiber& f = fibers[i];
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = stacks[i];
    f.context.uc_stack.ss_size = STACK_BYTES;
    f.context.uc_link = &scheduler;
    makecontext(&f.context, fiber_main, 0);
    f.tid = (unsigned)i;
    f.wait = RUNNABLE;
  }
  for (;;) {
    for (size_t k = 0; k < n; k++) {
      Fiber& f = fibers[reverse ? n - 1 - k : k];
      if (f.wait != RUNNABLE) continue;
      current = &f;
      threadIdx.x = f.tid;
      swapcontext(&scheduler, &f.context);
    }
    bool released;
    if (!release_warps(&released)) return 1;
    if (released) continue;
    size_t syncing = 0, exited = 0;
    for (const Fiber& f : fibers) {
      syncing += f.wait == AT_SYNCTHREADS;
      exited += f.wait == EXITED;
    }
    if (exited == n) return 0;
    if (syncing == n) {
      for (Fiber& f : fibers) f.wait = RUNNABLE;
      continue;
    }
    std::snprintf(error, sizeof error, "block %u: %zu threads wait at __syncthreads while %zu have exited "
                  "(a barrier in divergent code: deadlock or undefined on a GPU)", blockIdx.x, syncing, exited);
    return 1;
  }
}

/* Run ``kernel`` over ``grid`` x ``block`` threads. ``with_fibers`` false: each thread runs to completion in
 * turn (valid for kernels with no barrier or shuffle, much faster). Returns 0, or 1 with ``error`` set. */
static int launch(unsigned grid, unsigned block, int order, bool with_fibers, const std::function<void()>& kernel) {
  error[0] = 0;
  gridDim = dim3{grid, 1, 1};
  blockDim = dim3{block, 1, 1};
  threadIdx = blockIdx = dim3{0, 0, 0};
  direct = !with_fibers;
  if (direct) {
    try {
      for (unsigned b = 0; b < grid; b++) {
        blockIdx.x = b;
        poison_shared();
        for (unsigned t = 0; t < block; t++) {
          threadIdx.x = order ? block - 1 - t : t;
          kernel();
        }
      }
    } catch (const NeedsFibers& e) {
      std::snprintf(error, sizeof error, "block %u: a kernel launched without fibers reached %s", blockIdx.x, e.what);
      return 1;
    }
    return 0;
  }
  fibers.resize(block);
  while (stacks.size() < block) stacks.push_back(static_cast<char*>(std::malloc(STACK_BYTES)));
  body = &kernel;
  for (unsigned b = 0; b < grid; b++) {
    blockIdx.x = b;
    if (run_block(order != 0)) return 1;
  }
  return 0;
}

template <typename T>
static uint64_t bits(T v) {
  static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
  uint64_t raw = 0;
  std::memcpy(&raw, &v, sizeof(T));
  return raw;
}

template <typename T>
static T from_bits(uint64_t raw) {
  T v;
  std::memcpy(&v, &raw, sizeof(T));
  return v;
}

template <typename... P, size_t... I>
static void invoke(void (*kernel)(P...), void** args, std::index_sequence<I...>) {
  kernel(static_cast<P>(args[I])...);
}

template <typename... P>
static void invoke(void (*kernel)(P...), void** args) {
  invoke(kernel, args, std::index_sequence_for<P...>{});
}

}  // namespace gd_simt

static inline void __syncthreads() { gd_simt::sync_block(); }

template <typename T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  int lane = (int)(threadIdx.x & 31);
  return gd_simt::from_bits<T>(gd_simt::shuffle(mask, gd_simt::bits(v), lane ^ lane_mask));
}

template <typename T>
static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta) {
  int lane = (int)(threadIdx.x & 31);
  return gd_simt::from_bits<T>(gd_simt::shuffle(mask, gd_simt::bits(v), lane + (int)delta));
}

extern "C" const char* gd_simt_error() { return gd_simt::error; }

/* One launcher per kernel, appended after the generated module by compiler/runtime/simt.py. */
#define GD_SIMT_LAUNCHER(name)                                                                            \
  extern "C" int gd_launch_##name(unsigned grid, unsigned block, void** args, int order, int fibers) {    \
    return gd_simt::launch(grid, block, order, fibers != 0, [args] { gd_simt::invoke(name, args); });      \
  }
