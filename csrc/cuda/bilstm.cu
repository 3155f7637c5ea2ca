// BiLSTM recurrence on the GPU: one persistent cooperative kernel per layer for the forward
// and one for the backward, both directions in the same launch. (The input projection and
// the weight/input gradients are large GEMMs done by the torch glue with cuBLAS.)
//
// Work split: blocks [0, nb) run direction 0, [nb, 2nb) direction 1; block j of a direction
// owns hidden units [j*hb, j*hb + hb) and keeps its slice of W_hh in shared memory (fp32) for
// the whole sequence.
// Forward step s: every block reads the full h_{s-1} of its direction (written by all blocks
// of that direction at step s-1), computes the 4 gate dot products of its units for every
// running row, the fused gate epilogue, and writes h_s; then one grid-wide barrier.
// Backward step s: every block runs the epilogue of its units (using dh it computed itself at
// step s+1), publishes da (the 4 gate pre-activation gradients of its units), barrier, then
// computes dh_{s-1}[:, own units] = da W_hh[:, own units] over all 4H rows: one barrier per
// step and no atomics.
// Variable lengths: row b runs steps s < len_b; direction 0 is at t = s, direction 1 at
// t = len_b - 1 - s. Finished rows are skipped; h_n/c_n are written at each row's last step.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kdfast/bilstm_cuda.h"
#include "kdfast/cuda_convert.cuh"

namespace cg = cooperative_groups;

namespace kdfast::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kRowChunk = 8;  // batch rows whose h (or da) sit in shared memory at once

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + __expf(-x)); }

struct Split {
  int nb, hb;  // blocks per direction, hidden units per block
};

// ---------------------------------------------------------------------------------------
template <class T>
__global__ void __launch_bounds__(kThreads) bilstm_forward_kernel(BilstmForwardArgs p, Split sp) {
  cg::grid_group grid = cg::this_grid();
  extern __shared__ float smem[];
  const int B = p.B, steps = p.T, H = p.H, hb = sp.hb;
  const int d = blockIdx.x / sp.nb, j0 = (blockIdx.x % sp.nb) * hb;
  const int nj = min(hb, H - j0);  // units of this block (the last one may have fewer)
  float* Rs = smem;               // [H][4][hb]: Rs[(k * 4 + g) * hb + j] = W_hh[d][g*H + j0+j][k]
  float* hs = Rs + 4 * H * hb;    // [kRowChunk][H]
  float* hbuf = p.work;           // [2 (parity)][2 (direction)][B][H]
  float* cbuf = p.work + 4 * B * H;  // [2][B][H], each block touching only its own units
  const T* R = static_cast<const T*>(p.w_hh) + static_cast<size_t>(d) * 4 * H * H;
  const T* h0 = static_cast<const T*>(p.h0) + static_cast<size_t>(d) * B * H;
  const T* c0 = static_cast<const T*>(p.c0) + static_cast<size_t>(d) * B * H;
  T* gx = static_cast<T*>(p.gx);
  T* out = static_cast<T*>(p.out);

  for (int idx = threadIdx.x; idx < 4 * nj * H; idx += blockDim.x) {
    const int k = idx % H, r = idx / H, g = r / nj, j = r % nj;
    Rs[(k * 4 + g) * hb + j] = to_acc(R[static_cast<size_t>(g * H + j0 + j) * H + k]);
  }
  for (int idx = threadIdx.x; idx < B * nj; idx += blockDim.x) {
    const int b = idx / nj, j = idx % nj;
    cbuf[(d * B + b) * H + j0 + j] = to_acc(c0[b * H + j0 + j]);
  }
  __syncthreads();

  for (int s = 0; s < steps; ++s) {
    const float* hprev = hbuf + ((s & 1) * 2 + d) * B * H;
    float* hnext = hbuf + (((s + 1) & 1) * 2 + d) * B * H;
    for (int b0 = 0; b0 < B; b0 += kRowChunk) {
      const int nr = min(kRowChunk, B - b0);
      // h written by other blocks at step s-1: read through L2 (__ldcg), never a stale L1.
      for (int idx = threadIdx.x; idx < nr * H; idx += blockDim.x) {
        const int b = b0 + idx / H, k = idx % H;
        hs[idx] = s == 0 ? to_acc(h0[b * H + k]) : __ldcg(hprev + b * H + k);
      }
      __syncthreads();
      for (int pr = threadIdx.x; pr < nr * nj; pr += blockDim.x) {
        const int bl = pr / nj, j = pr % nj, b = b0 + bl;
        const int len = p.lengths ? static_cast<int>(p.lengths[b]) : steps;
        if (s >= len) continue;
        const int t = d == 0 ? s : len - 1 - s;
        float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
        const float* hrow = hs + bl * H;
        const float* rc = Rs + j;
#pragma unroll 4
        for (int k = 0; k < H; ++k) {
          const float h = hrow[k];
          const float* r = rc + k * 4 * hb;
          a0 = fmaf(h, r[0], a0);
          a1 = fmaf(h, r[hb], a1);
          a2 = fmaf(h, r[2 * hb], a2);
          a3 = fmaf(h, r[3 * hb], a3);
        }
        const size_t bt = static_cast<size_t>(b) * steps + t;
        T* g = gx + bt * 8 * H + d * 4 * H + j0 + j;
        const float gi = sigmoidf_(a0 + to_acc(g[0]));
        const float gf = sigmoidf_(a1 + to_acc(g[H]));
        const float gg = tanhf(a2 + to_acc(g[2 * H]));
        const float go = sigmoidf_(a3 + to_acc(g[3 * H]));
        float* c = cbuf + (d * B + b) * H + j0 + j;
        const float cn = gf * *c + gi * gg;
        const float hn = go * tanhf(cn);
        *c = cn;
        hnext[b * H + j0 + j] = hn;
        out[bt * 2 * H + d * H + j0 + j] = from_acc<T>(hn);
        if (p.cells) {
          g[0] = from_acc<T>(gi);
          g[H] = from_acc<T>(gf);
          g[2 * H] = from_acc<T>(gg);
          g[3 * H] = from_acc<T>(go);
          p.cells[bt * 2 * H + d * H + j0 + j] = cn;
        }
        if (s == len - 1) {
          static_cast<T*>(p.hn)[(d * B + b) * H + j0 + j] = from_acc<T>(hn);
          static_cast<T*>(p.cn)[(d * B + b) * H + j0 + j] = from_acc<T>(cn);
        }
      }
      __syncthreads();  // hs is reused by the next chunk
    }
    grid.sync();  // h_s complete everywhere before anyone reads it
  }
}

// ---------------------------------------------------------------------------------------
template <class T>
__global__ void __launch_bounds__(kThreads) bilstm_backward_kernel(BilstmBackwardArgs p, Split sp) {
  cg::grid_group grid = cg::this_grid();
  extern __shared__ float smem[];
  const int B = p.B, steps = p.T, H = p.H, hb = sp.hb;
  const int d = blockIdx.x / sp.nb, j0 = (blockIdx.x % sp.nb) * hb;
  const int nj = min(hb, H - j0);
  float* Rs = smem;                // [4H][hb]: Rs[r * hb + j] = W_hh[d][r][j0 + j]
  float* das = Rs + 4 * H * hb;    // [kRowChunk][4H]
  float* dhbuf = p.work;                 // [2][B][H] own units only
  float* dcbuf = p.work + 2 * B * H;     // [2][B][H] own units only
  float* dabuf = p.work + 4 * B * H;     // [2 (parity)][2 (direction)][B][4H]
  const T* R = static_cast<const T*>(p.w_hh) + static_cast<size_t>(d) * 4 * H * H;
  const T* gates = static_cast<const T*>(p.gates);
  const T* out = static_cast<const T*>(p.out);
  const T* dout = static_cast<const T*>(p.dout);
  const T* h0 = static_cast<const T*>(p.h0) + static_cast<size_t>(d) * B * H;
  const float* cells = p.cells;
  T* dgates = static_cast<T*>(p.dgates);
  T* hprev = static_cast<T*>(p.hprev);

  for (int idx = threadIdx.x; idx < 4 * H * nj; idx += blockDim.x) {
    const int r = idx / nj, j = idx % nj;
    Rs[r * hb + j] = to_acc(R[static_cast<size_t>(r) * H + j0 + j]);
  }
  for (int idx = threadIdx.x; idx < B * nj; idx += blockDim.x) {
    const int b = idx / nj, j = idx % nj, o = (d * B + b) * H + j0 + j;
    dhbuf[o] = to_acc(static_cast<const T*>(p.dhn)[o]);
    dcbuf[o] = to_acc(static_cast<const T*>(p.dcn)[o]);
  }
  __syncthreads();

  for (int s = steps - 1; s >= 0; --s) {
    float* da_s = dabuf + ((s & 1) * 2 + d) * B * 4 * H;
    // Epilogue of the own units for every running row.
    for (int pr = threadIdx.x; pr < B * nj; pr += blockDim.x) {
      const int b = pr / nj, j = pr % nj, u = j0 + j;
      const int len = p.lengths ? static_cast<int>(p.lengths[b]) : steps;
      if (s >= len) continue;
      const int t = d == 0 ? s : len - 1 - s, tp = d == 0 ? t - 1 : t + 1;
      const size_t bt = static_cast<size_t>(b) * steps + t, btp = static_cast<size_t>(b) * steps + tp;
      const T* g = gates + bt * 8 * H + d * 4 * H + u;
      const float gi = to_acc(g[0]), gf = to_acc(g[H]), gg = to_acc(g[2 * H]), go = to_acc(g[3 * H]);
      const float c = cells[bt * 2 * H + d * H + u];
      const float cp = s == 0 ? to_acc(static_cast<const T*>(p.c0)[(d * B + b) * H + u])
                              : cells[btp * 2 * H + d * H + u];
      const float tc = tanhf(c);
      const int o = (d * B + b) * H + u;
      const float dh = dhbuf[o] + to_acc(dout[bt * 2 * H + d * H + u]);
      const float dc = dcbuf[o] + dh * go * (1.f - tc * tc);
      const float dai = dc * gg * gi * (1.f - gi);
      const float daf = dc * cp * gf * (1.f - gf);
      const float dag = dc * gi * (1.f - gg * gg);
      const float dao = dh * tc * go * (1.f - go);
      dcbuf[o] = dc * gf;
      float* da = da_s + b * 4 * H + u;
      da[0] = dai;
      da[H] = daf;
      da[2 * H] = dag;
      da[3 * H] = dao;
      T* dg = dgates + (static_cast<size_t>(d) * B * steps + bt) * 4 * H + u;
      dg[0] = from_acc<T>(dai);
      dg[H] = from_acc<T>(daf);
      dg[2 * H] = from_acc<T>(dag);
      dg[3 * H] = from_acc<T>(dao);
      hprev[(static_cast<size_t>(d) * B * steps + bt) * H + u] =
          s == 0 ? h0[b * H + u] : out[btp * 2 * H + d * H + u];
    }
    grid.sync();  // da of every unit published
    // dh_{s-1}[:, own units] = da_s @ W_hh[:, own units].
    for (int b0 = 0; b0 < B; b0 += kRowChunk) {
      const int nr = min(kRowChunk, B - b0);
      for (int idx = threadIdx.x; idx < nr * 4 * H; idx += blockDim.x)
        das[idx] = __ldcg(da_s + b0 * 4 * H + idx);
      __syncthreads();
      for (int pr = threadIdx.x; pr < nr * nj; pr += blockDim.x) {
        const int bl = pr / nj, j = pr % nj, b = b0 + bl;
        const int len = p.lengths ? static_cast<int>(p.lengths[b]) : steps;
        if (s >= len) continue;  // a finished row keeps dh_n until its own last step
        const float* dr = das + bl * 4 * H;
        float acc = 0.f;
#pragma unroll 4
        for (int r = 0; r < 4 * H; ++r) acc = fmaf(dr[r], Rs[r * hb + j], acc);
        dhbuf[(d * B + b) * H + j0 + j] = acc;
      }
      __syncthreads();
    }
  }
  for (int idx = threadIdx.x; idx < B * nj; idx += blockDim.x) {
    const int b = idx / nj, j = idx % nj, o = (d * B + b) * H + j0 + j;
    static_cast<T*>(p.dh0)[o] = from_acc<T>(dhbuf[o]);
    static_cast<T*>(p.dc0)[o] = from_acc<T>(dcbuf[o]);
  }
}

// Picks the split: as many blocks as can be co-resident (a cooperative launch needs all of
// them at once), each holding 4 * hb * H floats of W_hh plus a row chunk.
template <class Kernel>
int plan(Kernel kernel, int H, int chunk_floats, Split* sp, size_t* smem) {
  int dev = 0, sms = 0, optin = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (e != cudaSuccess) return e;
  const int nb_max = sms / 2 > 0 ? sms / 2 : 1;  // one block per SM, two directions
  sp->hb = (H + nb_max - 1) / nb_max;
  sp->nb = (H + sp->hb - 1) / sp->hb;
  *smem = (static_cast<size_t>(4) * H * sp->hb + chunk_floats) * sizeof(float);
  if (*smem > static_cast<size_t>(optin)) return cudaErrorInvalidValue;  // H too large
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(*smem));
  if (e != cudaSuccess) return e;
  int per_sm = 0;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, *smem);
  if (e != cudaSuccess) return e;
  if (per_sm * sms < 2 * sp->nb) return cudaErrorCooperativeLaunchTooLarge;
  return cudaSuccess;
}

template <class T>
int forward_t(const BilstmForwardArgs& a, cudaStream_t stream) {
  Split sp;
  size_t smem;
  auto kernel = bilstm_forward_kernel<T>;
  int e = plan(kernel, a.H, kRowChunk * a.H, &sp, &smem);
  if (e != cudaSuccess) return e;
  BilstmForwardArgs args = a;
  void* params[] = {&args, &sp};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(2 * sp.nb),
                                     dim3(kThreads), params, smem, stream);
}

template <class T>
int backward_t(const BilstmBackwardArgs& a, cudaStream_t stream) {
  Split sp;
  size_t smem;
  auto kernel = bilstm_backward_kernel<T>;
  int e = plan(kernel, a.H, kRowChunk * 4 * a.H, &sp, &smem);
  if (e != cudaSuccess) return e;
  BilstmBackwardArgs args = a;
  void* params[] = {&args, &sp};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(2 * sp.nb),
                                     dim3(kThreads), params, smem, stream);
}

}  // namespace

size_t bilstm_forward_workspace(int B, int H) { return static_cast<size_t>(6) * B * H; }
size_t bilstm_backward_workspace(int B, int H) { return static_cast<size_t>(20) * B * H; }

int bilstm_forward(const BilstmForwardArgs& a, Dtype dtype, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case Dtype::kFloat32: return forward_t<float>(a, s);
    case Dtype::kBFloat16: return forward_t<__nv_bfloat16>(a, s);
    case Dtype::kFloat16: return forward_t<__half>(a, s);
    default: return cudaErrorInvalidValue;
  }
}

int bilstm_backward(const BilstmBackwardArgs& a, Dtype dtype, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case Dtype::kFloat32: return backward_t<float>(a, s);
    case Dtype::kBFloat16: return backward_t<__nv_bfloat16>(a, s);
    case Dtype::kFloat16: return backward_t<__half>(a, s);
    default: return cudaErrorInvalidValue;
  }
}

const char* bilstm_error_string(int code) {
  if (code == cudaErrorInvalidValue)
    return "invalid argument (or hidden size too large for W_hh to fit in shared memory)";
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

}  // namespace kdfast::cuda
