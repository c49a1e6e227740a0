// A linear layer whose weight is stored as codebook indices (Deep Compression weight sharing):
// the weight is decoded inside the product, never materialized as float32.
//
// "linear_codebook"  operands: out [M, N], x (a_rs / a_cs strides), indices (uint8 [N, K],
//                    constant), centroids (f32 [C], constant, C <= 255), bias? [N],
//                    residual? [M, N]
//                    ints: m, n, k, a_rs, a_cs, entries (C), act; floats: p0, p1 (activation
//                    parameters)
//                    out = act(x @ W.T + bias + residual), W[n, k] = 0 for index 0, else
//                    centroids[index - 1]
//
// The indices are packed once into 16-column panels spanning K (uint8, the layout of the float
// GEMV in rt_gemv.h: one contiguous stream per panel, reduced in registers for up to 4 rows of x
// at a time), and the lookup table holds 0.0 at index 0. Per 16 weights the AVX-512 kernel loads
// 16 bytes, widens them and looks the values up in registers (one permute for a table of up to
// 32 entries, two and a blend up to 64, a gather beyond); AVX2 gathers; the portable kernel
// indexes. A weight costs 1 byte of memory traffic instead of 4: a layer larger than the caches
// is read 4x faster, and the plan holds a quarter of the weight bytes.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cpu.h"
#include "rt_gemv.h"
#include "rt_pack_cache.h"
#include "rt_parallel.h"
#include "rt_plan.h"

namespace graphopt {
namespace rt {
namespace {

constexpr int64_t kTable = 256;

struct PackedCodebook {
    std::vector<uint8_t> panels;  // panel q at q * 16 * k, element (kk, j) at kk * 16 + j
    alignas(64) std::array<float, kTable> table{};  // [0] = 0.0, [i] = centroids[i - 1]
    int64_t n = 0, k = 0, entries = 1;  // entries: 1 + the number of centroids
};

PackedCodebook pack(const uint8_t* idx, const float* centroids, int64_t n, int64_t k,
                    int64_t count, const std::string& node) {
    PackedCodebook out;
    out.n = n;
    out.k = k;
    out.entries = count + 1;
    for (int64_t i = 0; i < count; ++i) out.table[static_cast<size_t>(i + 1)] = centroids[i];
    const int64_t panels = ceil_div(std::max<int64_t>(n, 1), kGemvCols);
    out.panels.assign(static_cast<size_t>(panels * kGemvCols * k), 0);
    for (int64_t q = 0; q < panels; ++q) {
        uint8_t* p = out.panels.data() + q * kGemvCols * k;
        for (int64_t j = 0; j < std::min(kGemvCols, n - q * kGemvCols); ++j) {
            const uint8_t* row = idx + (q * kGemvCols + j) * k;
            for (int64_t kk = 0; kk < k; ++kk) {
                if (row[kk] > count) {
                    throw PlanError("linear_codebook " + node + ": codebook index " +
                                    std::to_string(row[kk]) + " is past the codebook of " +
                                    std::to_string(count) + " entries");
                }
                p[kk * kGemvCols + j] = row[kk];
            }
        }
    }
    return out;
}

using PanelFn = void (*)(int64_t rows, const PackedCodebook& w, const uint8_t* panel,
                         const float* a, int64_t a_rs, int64_t a_cs, float* out);

void panel_portable(int64_t rows, const PackedCodebook& w, const uint8_t* panel, const float* a,
                    int64_t a_rs, int64_t a_cs, float* out) {
    for (int64_t r = 0; r < rows; ++r) {
        float acc[kGemvCols] = {};
        for (int64_t kk = 0; kk < w.k; ++kk) {
            const float av = a[r * a_rs + kk * a_cs];
            const uint8_t* p = panel + kk * kGemvCols;
            for (int64_t j = 0; j < kGemvCols; ++j) acc[j] += av * w.table[p[j]];
        }
        std::copy(acc, acc + kGemvCols, out + r * kGemvCols);
    }
}

template <int R>
GRAPHOPT_TARGET_AVX2_FMA void rows_avx2(const PackedCodebook& w, const uint8_t* panel,
                                        const float* a, int64_t a_rs, int64_t a_cs, float* out) {
    __m256 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t kk = 0; kk < w.k; ++kk) {
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(panel + kk * 16));
        const __m256 w0 = _mm256_i32gather_ps(w.table.data(), _mm256_cvtepu8_epi32(bytes), 4);
        const __m256 w1 = _mm256_i32gather_ps(w.table.data(),
                                              _mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8)), 4);
        for (int r = 0; r < R; ++r) {
            const __m256 x = _mm256_broadcast_ss(a + r * a_rs + kk * a_cs);
            acc[r][0] = _mm256_fmadd_ps(x, w0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(x, w1, acc[r][1]);
        }
    }
    for (int r = 0; r < R; ++r) {
        _mm256_storeu_ps(out + r * kGemvCols, acc[r][0]);
        _mm256_storeu_ps(out + r * kGemvCols + 8, acc[r][1]);
    }
}

// TABLES 32-entry register tables: 1 (one permute), 2 (two and a blend on bit 5), 0 (gather).
template <int R, int TABLES>
GRAPHOPT_TARGET_AVX512 void rows_avx512(const PackedCodebook& w, const uint8_t* panel,
                                        const float* a, int64_t a_rs, int64_t a_cs, float* out) {
    const float* t = w.table.data();
    const __m512 t0 = _mm512_load_ps(t), t1 = _mm512_load_ps(t + 16);
    const __m512 t2 = _mm512_load_ps(t + 32), t3 = _mm512_load_ps(t + 48);
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t kk = 0; kk < w.k; ++kk) {
        // (maskz / mask forms: GCC warns about the undefined source of the plain ones)
        const __m512i idx = _mm512_maskz_cvtepu8_epi32(
            0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(panel + kk * 16)));
        __m512 wv;
        if (TABLES == 1) {
            wv = _mm512_permutex2var_ps(t0, idx, t1);
        } else if (TABLES == 2) {
            const __mmask16 high = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(32));
            wv = _mm512_mask_blend_ps(high, _mm512_permutex2var_ps(t0, idx, t1),
                                      _mm512_permutex2var_ps(t2, idx, t3));
        } else {
            wv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), 0xFFFF, idx, t, 4);
        }
        for (int r = 0; r < R; ++r) {
            acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r * a_rs + kk * a_cs]), wv, acc[r]);
        }
    }
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + r * kGemvCols, acc[r]);
}

template <int TABLES>
GRAPHOPT_TARGET_AVX512 void panel_avx512(int64_t rows, const PackedCodebook& w,
                                         const uint8_t* panel, const float* a, int64_t a_rs,
                                         int64_t a_cs, float* out) {
    switch (rows) {
        case 1: return rows_avx512<1, TABLES>(w, panel, a, a_rs, a_cs, out);
        case 2: return rows_avx512<2, TABLES>(w, panel, a, a_rs, a_cs, out);
        case 3: return rows_avx512<3, TABLES>(w, panel, a, a_rs, a_cs, out);
        default: return rows_avx512<4, TABLES>(w, panel, a, a_rs, a_cs, out);
    }
}

GRAPHOPT_TARGET_AVX2_FMA void panel_avx2(int64_t rows, const PackedCodebook& w,
                                         const uint8_t* panel, const float* a, int64_t a_rs,
                                         int64_t a_cs, float* out) {
    switch (rows) {
        case 1: return rows_avx2<1>(w, panel, a, a_rs, a_cs, out);
        case 2: return rows_avx2<2>(w, panel, a, a_rs, a_cs, out);
        case 3: return rows_avx2<3>(w, panel, a, a_rs, a_cs, out);
        default: return rows_avx2<4>(w, panel, a, a_rs, a_cs, out);
    }
}

PanelFn choose_panel(int64_t entries) {
    const CpuFeatures& cpu = cpu_features();
    if (cpu.use_avx512) {
        if (entries <= 32) return panel_avx512<1>;
        if (entries <= 64) return panel_avx512<2>;
        return panel_avx512<0>;
    }
    return cpu.use_avx2_fma ? panel_avx2 : panel_portable;
}

class LinearCodebookKernel : public Kernel {
   public:
    explicit LinearCodebookKernel(const KernelArgs& args) : name_(args.name) {
        IntReader r(args);
        const std::string what = "linear_codebook " + args.name;
        m_ = r.dim("m");
        n_ = r.dim("n");
        k_ = r.dim("k");
        a_rs_ = r.signed_param("a_rs");
        a_cs_ = r.signed_param("a_cs");
        const int64_t count = r.in(1, kTable - 1, "entries");
        ep_.act.act = static_cast<Act>(r.in(0, kMaxActivationCode, "act"));
        ep_.act.p0 = static_cast<float>(r.real(0));
        ep_.act.p1 = static_cast<float>(r.real(1));
        const int64_t out_bytes = checked_mul(checked_mul(m_, n_, what), 4, what);
        need(args, 0, out_bytes, 4);
        need_strided(args, 1, {m_, k_}, {a_rs_, a_cs_}, 4);
        need(args, 2, checked_mul(n_, k_, what), 1);
        need(args, 3, count * 4, 4);
        if (!args.is_const(2) || !args.is_const(3)) {
            throw PlanError(what + ": the indices and the codebook must be plan constants");
        }
        has_bias_ = need_opt(args, 4, checked_mul(n_, 4, what), 4);
        has_residual_ = need_opt(args, 5, out_bytes, 4);
        const auto* idx = reinterpret_cast<const uint8_t*>(constant(args, 2));
        const auto* centroids = reinterpret_cast<const float*>(constant(args, 3));
        // One packing per weight, shared by every plan (rt_pack_cache.h); the centroids are part
        // of the key (a codebook fine-tuned in place is another weight).
        weights_ = PackCache::get<PackedCodebook>(
            "codebook.gemv", idx, {n_, k_, count, reinterpret_cast<int64_t>(centroids)},
            [&] { return pack(idx, centroids, n_, k_, count, args.name); });
        panel_fn_ = choose_panel(weights_->entries);
    }

    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* a = ctx.get<const float>(operands[1]);
        EpilogueSpec ep = ep_;
        ep.col_bias = has_bias_ ? ctx.get<const float>(operands[4]) : nullptr;
        ep.residual = has_residual_ ? ctx.get<const float>(operands[5]) : nullptr;
        ep.ldr = n_;
        const GemmKernels& kern = gemm_kernels();
        const int64_t panels = ceil_div(n_, kGemvCols);
        for (int64_t r0 = 0; r0 < m_; r0 += kGemvMaxRows) {
            const int64_t rows = std::min(kGemvMaxRows, m_ - r0);
            EpilogueSpec e = ep;
            if (e.residual != nullptr) e.residual += r0 * n_;
            float* c = out + r0 * n_;
            const float* ar = a + r0 * a_rs_;
            parallel_for(ctx.threads, panels, k_ * kGemvCols / 8, [&](int64_t q0, int64_t q1) {
                alignas(64) float tile[kGemvMaxRows * kGemvCols];
                for (int64_t q = q0; q < q1; ++q) {
                    panel_fn_(rows, *weights_, weights_->panels.data() + q * kGemvCols * k_, ar,
                              a_rs_, a_cs_, tile);
                    const int64_t j0 = q * kGemvCols;
                    gemv_store_tile(kern, tile, c, n_, j0, rows, std::min(kGemvCols, n_ - j0), e);
                }
            });
        }
    }

   private:
    std::string name_;
    int64_t m_ = 0, n_ = 0, k_ = 0, a_rs_ = 0, a_cs_ = 0;
    bool has_bias_ = false, has_residual_ = false;
    EpilogueSpec ep_;
    std::shared_ptr<const PackedCodebook> weights_;
    PanelFn panel_fn_ = panel_portable;
};

GRAPHOPT_RT_KERNEL("linear_codebook", LinearCodebookKernel,
                   "out, x, indices, centroids, bias?, residual?",
                   "m:dim, n:dim, k:dim, a_rs:signed, a_cs:signed, entries:dim, act:act",
                   "p0, p1");

}  // namespace
}  // namespace rt
}  // namespace graphopt
