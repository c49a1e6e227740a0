// int8 GEMM: weight / activation packing, the portable kernels, dynamic quantization and the
// threaded driver (see rt_qgemm.h).
//
// fp-contract off: the dequantize / quantize arithmetic must round like graphopt's reference
// ops (a multiply, then an add), never as a fused multiply-add.
#pragma GCC optimize("fp-contract=off")

#include "rt_qgemm.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "cpu.h"
#include "rt_parallel.h"
#include "rt_plan.h"

namespace graphopt {
namespace rt {

// ----------------------------------------------------------------------------- dispatch
bool cpu_has_avxvnni() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && __GNUC__ >= 11
    static const bool has = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avxvnni") != 0;
    }();
    return has;
#else
    return false;
#endif
}

namespace {

bool env_flag(const char* name) {
    const char* v = std::getenv(name);
    return v != nullptr && std::strcmp(v, "") != 0 && std::strcmp(v, "0") != 0;
}

}  // namespace

const QGemmKernels& qgemm_kernels() {
    static const QGemmKernels& kernels = []() -> const QGemmKernels& {
        if (!cpu_features().use_avx2_fma) return portable_qgemm_kernels();
        if (!env_flag("GRAPHOPT_DISABLE_VNNI")) {
            // Same tile, same speed: the EVEX form first, so that GRAPHOPT_DISABLE_AVX512=1
            // reaches the VEX one on CPUs with both (each path stays testable).
            if (cpu_has_avx512vnni()) return avx512vnni_qgemm_kernels();
            if (cpu_has_avxvnni()) return avxvnni_qgemm_kernels();
        }
        return avx2_qgemm_kernels();
    }();
    return kernels;
}

QGemmScratch& qgemm_scratch() {
    static thread_local QGemmScratch scratch;
    return scratch;
}

// ---------------------------------------------------------------------- portable kernels
namespace {

// kPairI16: a panel i16 [steps][6][2], b panel i16 [steps][16][2].
void tile_portable(int64_t rows, int64_t steps, const uint8_t* a_bytes, const uint8_t* b_bytes,
                   int32_t* out) {
    const auto* a = reinterpret_cast<const int16_t*>(a_bytes);
    const auto* b = reinterpret_cast<const int16_t*>(b_bytes);
    int32_t acc[kQMR][kQNR] = {};
    for (int64_t s = 0; s < steps; ++s) {
        const int16_t* as = a + s * kQMR * 2;
        const int16_t* bs = b + s * kQNR * 2;
        for (int64_t r = 0; r < rows; ++r) {
            const int32_t a0 = as[r * 2], a1 = as[r * 2 + 1];
            for (int64_t j = 0; j < kQNR; ++j) {
                acc[r][j] += a0 * bs[j * 2] + a1 * bs[j * 2 + 1];
            }
        }
    }
    for (int64_t r = 0; r < rows; ++r) std::memcpy(out + r * kQNR, acc[r], sizeof(acc[r]));
}

void minmax_portable(const float* x, int64_t rows, int64_t cols, int64_t rs, float* lo,
                     float* hi) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* row = x + r * rs;
        float l = cols > 0 ? row[0] : 0.0f, h = l;
        for (int64_t j = 1; j < cols; ++j) {
            l = std::min(l, row[j]);
            h = std::max(h, row[j]);
        }
        lo[r] = l;
        hi[r] = h;
    }
}


}  // namespace

uint8_t quantize_one(float x, float scale, float zp) {
    const float q = std::nearbyint(x / scale) + zp;
    // NaN -> 0 (the comparisons are false), like torch's clamp followed by the u8 cast.
    return static_cast<uint8_t>(q >= 0.0f ? (q <= 255.0f ? q : 255.0f) : 0.0f);
}

namespace {

void quantize_portable(const float* x, int64_t n, float scale, float zp, uint8_t* q) {
    for (int64_t i = 0; i < n; ++i) q[i] = quantize_one(x[i], scale, zp);
}

}  // namespace

void qdequant_portable(const int32_t* acc, int64_t rows, int64_t cols, const float* col_scale,
                       const float* row_scale, const float* bias, const float* res, int64_t ldr,
                       float* c, int64_t ldc) {
    for (int64_t r = 0; r < rows; ++r) {
        const int32_t* a = acc + r * kQNR;
        float* crow = c + r * ldc;
        const float* rrow = res != nullptr ? res + r * ldr : nullptr;
        for (int64_t j = 0; j < cols; ++j) {
            const float s = row_scale != nullptr ? row_scale[r] * col_scale[j] : col_scale[j];
            float y = static_cast<float>(a[j]) * s;
            if (bias != nullptr) y += bias[j];
            if (rrow != nullptr) y += rrow[j];
            crow[j] = y;
        }
    }
}

const QGemmKernels& portable_qgemm_kernels() {
    static const QGemmKernels k{"portable_pair_i16", QFormat::kPairI16, tile_portable,
                                minmax_portable, quantize_portable, qdequant_portable};
    return k;
}

// ------------------------------------------------------------------------------- packing
PackedQWeight PackedQWeight::pack(const int8_t* w, int64_t n, int64_t k, int64_t rs, int64_t cs,
                                  QFormat format) {
    if (k > kQGemmMaxK) {
        throw PlanError("int8 GEMM: K = " + std::to_string(k) + " exceeds " +
                        std::to_string(kQGemmMaxK) + " (the int32 accumulator could overflow)");
    }
    PackedQWeight out;
    out.n_ = n;
    out.k_ = k;
    out.format_ = format;
    const int64_t group = qformat_group(format);
    out.steps_ = ceil_div(k, group);
    // AMX reads K in groups of 64 (16 steps): pad the panels with zero steps.
    if (format == QFormat::kQuadU8 && cpu_features().use_amx) out.steps_ = round_up(out.steps_, 16);
    const int64_t panels = ceil_div(std::max<int64_t>(n, 1), kQNR);
    const int64_t bytes = std::max<int64_t>(panels * out.steps_ * kQPanelStepBytesB, 64);
    auto* dst = reinterpret_cast<uint8_t*>(out.storage_.reserve(ceil_div(bytes, 4)));
    std::memset(dst, 0, static_cast<size_t>(bytes));
    for (int64_t q = 0; q < panels; ++q) {
        uint8_t* panel = dst + q * out.steps_ * kQPanelStepBytesB;
        const int64_t cols = std::min(kQNR, n - q * kQNR);
        for (int64_t j = 0; j < cols; ++j) {
            const int8_t* src = w + (q * kQNR + j) * rs;
            for (int64_t kk = 0; kk < k; ++kk) {
                const int64_t s = kk / group, t = kk % group;
                const int8_t v = src[kk * cs];
                if (format == QFormat::kPairI16) {
                    reinterpret_cast<int16_t*>(panel)[(s * kQNR + j) * 2 + t] = v;
                } else {
                    reinterpret_cast<int8_t*>(panel)[(s * kQNR + j) * 4 + t] = v;
                }
            }
        }
    }
    if (format == QFormat::kQuadU8) {
        out.colsum_.assign(static_cast<size_t>(std::max<int64_t>(n, 1)), 0);
        for (int64_t j = 0; j < n; ++j) {
            int32_t sum = 0;
            for (int64_t kk = 0; kk < k; ++kk) sum += w[j * rs + kk * cs];
            out.colsum_[static_cast<size_t>(j)] = sum;
        }
    }
    return out;
}

namespace {

// Packs activation rows [i0, i0 + rows) (rows <= 6) into one panel (zero-padded). The i16
// format subtracts the zero point (row_zp[i0 + r] when given, else zp).
void pack_a_panel(const QMatrixRef& a, int32_t zp, const int32_t* row_zp, QFormat format,
                  int64_t i0, int64_t rows, int64_t steps, uint8_t* dst) {
    std::memset(dst, 0, static_cast<size_t>(steps * kQPanelStepBytesA));
    const int64_t k = a.cols;
    for (int64_t r = 0; r < rows; ++r) {
        const uint8_t* src = a.data + (i0 + r) * a.row_stride;
        if (row_zp != nullptr) zp = row_zp[i0 + r];
        if (format == QFormat::kPairI16) {
            auto* d = reinterpret_cast<int16_t*>(dst);
            for (int64_t kk = 0; kk < k; ++kk) {
                d[((kk >> 1) * kQMR + r) * 2 + (kk & 1)] =
                    static_cast<int16_t>(static_cast<int32_t>(src[kk * a.col_stride]) - zp);
            }
        } else if (a.col_stride == 1) {
            int64_t s = 0;
            for (; (s + 1) * 4 <= k; ++s) std::memcpy(dst + (s * kQMR + r) * 4, src + s * 4, 4);
            for (int64_t kk = s * 4; kk < k; ++kk) dst[(s * kQMR + r) * 4 + (kk - s * 4)] = src[kk];
        } else {
            for (int64_t kk = 0; kk < k; ++kk) {
                dst[((kk >> 2) * kQMR + r) * 4 + (kk & 3)] = src[kk * a.col_stride];
            }
        }
    }
}

}  // namespace

// ------------------------------------------------------------------------------ requantize
void requantize_u8(const float* y, int64_t n, float y_scale, int32_t y_zp, uint8_t* out) {
    const float zp = static_cast<float>(y_zp);
    for (int64_t i = 0; i < n; ++i) out[i] = quantize_one(y[i], y_scale, zp);
}

// ------------------------------------------------------------------------ dynamic quantize
namespace {

// Row-wise min / max of x into s.lo / s.hi.
void row_minmax(const float* x, int64_t rows, int64_t cols, int64_t rs, int64_t cs,
                QGemmScratch& s, int threads) {
    const QGemmKernels& kern = qgemm_kernels();
    s.lo.assign(static_cast<size_t>(std::max<int64_t>(rows, 1)), 0.0f);
    s.hi.assign(static_cast<size_t>(std::max<int64_t>(rows, 1)), 0.0f);
    float* lo_rows = s.lo.data();
    float* hi_rows = s.hi.data();
    parallel_for(threads, rows, cols, [&](int64_t r0, int64_t r1) {
        if (cs == 1) {
            kern.minmax(x + r0 * rs, r1 - r0, cols, rs, lo_rows + r0, hi_rows + r0);
            return;
        }
        for (int64_t r = r0; r < r1; ++r) {
            float l = cols > 0 ? x[r * rs] : 0.0f, h = l;
            for (int64_t j = 1; j < cols; ++j) {
                l = std::min(l, x[r * rs + j * cs]);
                h = std::max(h, x[r * rs + j * cs]);
            }
            lo_rows[r] = l;
            hi_rows[r] = h;
        }
    });
}

// The range of one row (as row_minmax computes it for each row).
void row_range(const QGemmKernels& kern, const float* x, int64_t cols, int64_t cs, float* lo,
               float* hi) {
    if (cs == 1) {
        kern.minmax(x, 1, cols, cols, lo, hi);
        return;
    }
    float l = cols > 0 ? x[0] : 0.0f, h = l;
    for (int64_t j = 1; j < cols; ++j) {
        l = std::min(l, x[j * cs]);
        h = std::max(h, x[j * cs]);
    }
    *lo = l;
    *hi = h;
}

// DynamicQuantizeLinear's (scale, zero point) of the range [lo, hi] widened to include zero.
void range_qparams(float lo, float hi, float* scale, float* safe, float* zp) {
    lo = std::min(lo, 0.0f);
    hi = std::max(hi, 0.0f);
    *scale = (hi - lo) / 255.0f;
    *safe = *scale > 0.0f ? *scale : 1.0f;
    *zp = std::min(std::max(std::nearbyint(-lo / *safe), 0.0f), 255.0f);
}

void quantize_row(const QGemmKernels& kern, const float* x, int64_t cols, int64_t cs,
                  float safe, float zp, uint8_t* q) {
    if (cs == 1) {
        kern.quantize(x, cols, safe, zp, q);
    } else {
        for (int64_t j = 0; j < cols; ++j) q[j] = quantize_one(x[j * cs], safe, zp);
    }
}

}  // namespace

void dynamic_quantize(const float* x, int64_t rows, int64_t cols, int64_t rs, int64_t cs,
                      uint8_t* q, float* scale_out, int32_t* zp_out, int threads,
                      int64_t q_stride) {
    if (q_stride < 0) q_stride = cols;
    const QGemmKernels& kern = qgemm_kernels();
    QGemmScratch& s = qgemm_scratch();
    row_minmax(x, rows, cols, rs, cs, s, threads);
    const float* lo_rows = s.lo.data();
    const float* hi_rows = s.hi.data();
    float lo = 0.0f, hi = 0.0f;  // the range always includes zero
    if (cols > 0) {
        for (int64_t r = 0; r < rows; ++r) {
            lo = std::min(lo, lo_rows[r]);
            hi = std::max(hi, hi_rows[r]);
        }
    }
    float scale = 0.0f, safe = 1.0f, zp = 0.0f;
    range_qparams(lo, hi, &scale, &safe, &zp);
    parallel_for(threads, rows, cols * 2, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
            quantize_row(kern, x + r * rs, cols, cs, safe, zp, q + r * q_stride);
        }
    });
    *scale_out = scale;
    *zp_out = static_cast<int32_t>(zp);
}

void dynamic_quantize_rows(const float* x, int64_t rows, int64_t cols, int64_t rs, int64_t cs,
                           uint8_t* q, float* scales, int32_t* zps, int threads,
                           int64_t q_stride) {
    if (q_stride < 0) q_stride = cols;
    const QGemmKernels& kern = qgemm_kernels();
    parallel_for(threads, rows, cols * 3, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
            float lo = 0.0f, hi = 0.0f;
            row_range(kern, x + r * rs, cols, cs, &lo, &hi);
            float scale = 0.0f, safe = 1.0f, zp = 0.0f;
            if (cols > 0) range_qparams(lo, hi, &scale, &safe, &zp);
            quantize_row(kern, x + r * rs, cols, cs, safe, zp, q + r * q_stride);
            scales[r] = scale;
            zps[r] = static_cast<int32_t>(zp);
        }
    });
}

// ---------------------------------------------------------------------------------- driver
namespace {

// Epilogue of one finished tile: rows [i0, i0 + rows), columns [j0, j0 + nr).
// float(acc) * scale (+ bias) (+ res) into dst: the per-column a_scale * w_scale[n], or, with
// per-row activation scales, a_row_scale[m] * w_scale[n] (formed in the dequant kernel).
void dequant_tile(const QGemmKernels& kern, const QGemmArgs& g, const float* col_scale,
                  const int32_t* acc, int64_t i0, int64_t j0, int64_t rows, int64_t nr,
                  const float* bias, const float* res, int64_t ldr, float* dst, int64_t ldd) {
    if (g.a_row_scale == nullptr) {
        kern.dequant(acc, rows, nr, col_scale + j0, nullptr, bias, res, ldr, dst, ldd);
    } else {
        kern.dequant(acc, rows, nr, g.w_scale + j0, g.a_row_scale + i0, bias, res, ldr, dst, ldd);
    }
}

}  // namespace

void qgemm_finish_tile(const QGemmKernels& kern, const QGemmArgs& g, const float* col_scale,
                       int32_t* acc, int64_t i0, int64_t j0, int64_t rows, int64_t nr) {
    if (g.w->format() == QFormat::kQuadU8 && (g.a_zp != 0 || g.a_row_zp != nullptr)) {
        const int32_t* colsum = g.w->colsum() + j0;
        for (int64_t r = 0; r < rows; ++r) {
            const int32_t zp = g.a_row_zp != nullptr ? g.a_row_zp[i0 + r] : g.a_zp;
            for (int64_t j = 0; j < nr; ++j) acc[r * kQNR + j] -= zp * colsum[j];
        }
    }
    const float* bias = g.bias != nullptr ? g.bias + j0 : nullptr;
    if (g.c_u8 == nullptr && g.c_cs == 1) {
        float* ct = g.c + i0 * g.ldc + j0;
        const float* res = nullptr;
        int64_t ldr = g.ldr;
        if (g.residual_in_c) {
            res = ct;
            ldr = g.ldc;
        } else if (g.residual != nullptr) {
            res = g.residual + i0 * g.ldr + j0;
        }
        dequant_tile(kern, g, col_scale, acc, i0, j0, rows, nr, bias, res, ldr, ct, g.ldc);
        apply_activation(ct, g.ldc, rows, nr, nullptr, g.act);
        return;
    }
    alignas(64) float tile[kQMR * kQNR];
    const float* res = g.residual != nullptr ? g.residual + i0 * g.ldr + j0 : nullptr;
    dequant_tile(kern, g, col_scale, acc, i0, j0, rows, nr, bias, res, g.ldr, tile, kQNR);
    apply_activation(tile, kQNR, rows, nr, nullptr, g.act);
    if (g.c_u8 != nullptr) {
        alignas(64) uint8_t qt[kQMR * kQNR];
        // The whole tile in one vector call (a 16-column row is too short for the vector
        // loop); columns past nr hold zeros and are not stored.
        if (nr < kQNR) {
            for (int64_t r = 0; r < rows; ++r) {
                std::fill(tile + r * kQNR + nr, tile + (r + 1) * kQNR, 0.0f);
            }
        }
        kern.quantize(tile, rows * kQNR, g.y_scale, static_cast<float>(g.y_zp), qt);
        for (int64_t r = 0; r < rows; ++r) {
            uint8_t* crow = g.c_u8 + (i0 + r) * g.ldc + j0 * g.c_cs;
            if (g.c_cs == 1) {
                std::memcpy(crow, qt + r * kQNR, static_cast<size_t>(nr));
            } else {
                for (int64_t j = 0; j < nr; ++j) crow[j * g.c_cs] = qt[r * kQNR + j];
            }
        }
        return;
    }
    for (int64_t r = 0; r < rows; ++r) {
        float* crow = g.c + (i0 + r) * g.ldc + j0 * g.c_cs;
        for (int64_t j = 0; j < nr; ++j) crow[j * g.c_cs] = tile[r * kQNR + j];
    }
}

bool qgemm_uses_amx(const PackedQWeight& w, int64_t m) {
    // AMX from this many rows on; below, the VNNI tiles (a GEMV is bound by the weight reads).
    constexpr int64_t kAmxMinRows = 8;
    return w.format() == QFormat::kQuadU8 && w.steps() % 16 == 0 && m >= kAmxMinRows &&
           cpu_features().use_amx;
}

void qgemm_run(const QGemmArgs& g, int threads) {
    const QGemmKernels& kern = qgemm_kernels();
    const PackedQWeight& w = *g.w;
    if (w.format() != kern.format) throw PlanError("int8 GEMM: weight packed for another ISA");
    const int64_t m = g.a.rows, n = w.n(), steps = w.steps();
    if (m <= 0 || n <= 0) return;
    if (qgemm_uses_amx(w, m)) {
        std::vector<float>& cs = qgemm_scratch().col_scale;
        cs.resize(static_cast<size_t>(n));
        if (g.a_row_scale == nullptr) {
            for (int64_t j = 0; j < n; ++j) cs[j] = g.a_scale * g.w_scale[j];
        }
        return qgemm_run_amx(g, kern, cs.data(), threads);
    }
    QGemmScratch& s = qgemm_scratch();
    const int64_t m_panels = ceil_div(m, kQMR);
    const int64_t n_panels = ceil_div(n, kQNR);
    const int64_t panel_bytes = steps * kQPanelStepBytesA;
    auto* packed = reinterpret_cast<uint8_t*>(
        s.packed.reserve(ceil_div(std::max<int64_t>(m_panels * panel_bytes, 64), 4)));
    parallel_for(threads, m_panels, kQMR * w.k() * 2, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
            pack_a_panel(g.a, g.a_zp, g.a_row_zp, kern.format, p * kQMR,
                         std::min(kQMR, m - p * kQMR), steps, packed + p * panel_bytes);
        }
    });
    s.col_scale.resize(static_cast<size_t>(n));
    float* col_scale = s.col_scale.data();
    if (g.a_row_scale == nullptr) {
        for (int64_t j = 0; j < n; ++j) col_scale[j] = g.a_scale * g.w_scale[j];
    }
    // Tiles in column-panel-major order: a chunk of consecutive tiles shares a weight panel.
    const int64_t tiles = m_panels * n_panels;
    const int64_t work = kQMR * kQNR * std::max<int64_t>(w.k(), 1) / 4;
    parallel_for(threads, tiles, work, [&](int64_t t0, int64_t t1) {
        alignas(64) int32_t acc[kQMR * kQNR];
        for (int64_t t = t0; t < t1; ++t) {
            const int64_t q = t / m_panels, p = t % m_panels;
            const int64_t i0 = p * kQMR, j0 = q * kQNR;
            const int64_t rows = std::min(kQMR, m - i0), nr = std::min(kQNR, n - j0);
            kern.tile(rows, steps, packed + p * panel_bytes, w.panel(q), acc);
            qgemm_finish_tile(kern, g, col_scale, acc, i0, j0, rows, nr);
        }
    });
}

}  // namespace rt
}  // namespace graphopt
