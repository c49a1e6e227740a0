// The body of the vectorised loops of rt_vec.h, templated over a SIMD traits type S:
//
//   S::V, S::kWidth, load(p), store(p, v), set1(x), zero(), add/sub/mul/div/max/min(a, b),
//   fma(a, b, c) = a * b + c, exp(v), hsum(v), hmax(v), load_even(p) = (p[0], p[2], ...,
//   p[2 * (kWidth - 1)]), and the scalar `exp1(x)` used on tails.
//
// Included by exactly two translation units, each compiled for its ISA. Everything is in an
// anonymous namespace so that the two instantiations can never be merged by the linker (an AVX2
// copy reaching a CPU without AVX2 would be an illegal instruction).
//
// Tails (n % kWidth) run the same formula one element at a time.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "rt_vec.h"

namespace graphopt {
namespace rt {
namespace {

template <typename S>
struct VecImpl {
    using V = typename S::V;
    static constexpr int64_t W = S::kWidth;

    static float reduce_max(const float* x, int64_t n) {
        float m = -std::numeric_limits<float>::infinity();
        int64_t i = 0;
        if (n >= W) {
            V acc = S::set1(m);
            for (; i + W <= n; i += W) acc = S::max(acc, S::load(x + i));
            m = S::hmax(acc);
        }
        for (; i < n; ++i) m = std::max(m, x[i]);
        return m;
    }

    static double reduce_sum(const float* x, int64_t n) {
        // Blocks of up to kBlock elements are summed in W float lanes, blocks are accumulated in
        // double: accurate enough for any row length the models have, at vector speed.
        constexpr int64_t kBlock = 1024;
        double total = 0.0;
        int64_t i = 0;
        while (n - i >= W) {
            const int64_t end = i + std::min<int64_t>(kBlock, (n - i) / W * W);
            V acc = S::zero();
            for (; i < end; i += W) acc = S::add(acc, S::load(x + i));
            total += static_cast<double>(S::hsum(acc));
        }
        for (; i < n; ++i) total += x[i];
        return total;
    }

    static float exp_scaled_sum(const float* x, float* y, int64_t n, float scale, float shift) {
        int64_t i = 0;
        float sum = 0.0f;
        if (n >= W) {
            const V vs = S::set1(scale), vt = S::set1(shift);
            V acc = S::zero();
            for (; i + W <= n; i += W) {
                const V e = S::exp(S::sub(S::mul(S::load(x + i), vs), vt));
                S::store(y + i, e);
                acc = S::add(acc, e);
            }
            sum = S::hsum(acc);
        }
        for (; i < n; ++i) {
            y[i] = S::exp1(x[i] * scale - shift);
            sum += y[i];
        }
        return sum;
    }

    static void scale(float* x, int64_t n, float s) {
        int64_t i = 0;
        const V vs = S::set1(s);
        for (; i + W <= n; i += W) S::store(x + i, S::mul(S::load(x + i), vs));
        for (; i < n; ++i) x[i] *= s;
    }

    static void affine(const float* x, float* y, int64_t n, float s, float t) {
        int64_t i = 0;
        const V vs = S::set1(s), vt = S::set1(t);
        for (; i + W <= n; i += W) S::store(y + i, S::fma(S::load(x + i), vs, vt));
        for (; i < n; ++i) y[i] = x[i] * s + t;
    }

    static void axpy(float* y, const float* x, float a, int64_t n) {
        int64_t i = 0;
        const V va = S::set1(a);
        for (; i + W <= n; i += W) S::store(y + i, S::fma(va, S::load(x + i), S::load(y + i)));
        for (; i < n; ++i) y[i] += a * x[i];
    }

    static void dot_rows(const float* x, const float* m, int64_t ld, int64_t rows, int64_t n,
                         float scale, float* out) {
        for (int64_t j = 0; j < rows; ++j) {
            const float* r = m + j * ld;
            V a0 = S::zero(), a1 = S::zero();
            int64_t i = 0;
            for (; i + 2 * W <= n; i += 2 * W) {
                a0 = S::fma(S::load(x + i), S::load(r + i), a0);
                a1 = S::fma(S::load(x + i + W), S::load(r + i + W), a1);
            }
            for (; i + W <= n; i += W) a0 = S::fma(S::load(x + i), S::load(r + i), a0);
            float sum = S::hsum(S::add(a0, a1));
            for (; i < n; ++i) sum += x[i] * r[i];
            out[j] = sum * scale;
        }
    }

    static void rows_axpy(float* y, const float* p, const float* m, int64_t ld, int64_t rows,
                          int64_t n) {
        int64_t i = 0;
        for (; i + 4 * W <= n; i += 4 * W) {  // four vectors of y stay in registers
            V y0 = S::load(y + i), y1 = S::load(y + i + W);
            V y2 = S::load(y + i + 2 * W), y3 = S::load(y + i + 3 * W);
            for (int64_t j = 0; j < rows; ++j) {
                const V pj = S::set1(p[j]);
                const float* r = m + j * ld + i;
                y0 = S::fma(pj, S::load(r), y0);
                y1 = S::fma(pj, S::load(r + W), y1);
                y2 = S::fma(pj, S::load(r + 2 * W), y2);
                y3 = S::fma(pj, S::load(r + 3 * W), y3);
            }
            S::store(y + i, y0);
            S::store(y + i + W, y1);
            S::store(y + i + 2 * W, y2);
            S::store(y + i + 3 * W, y3);
        }
        for (; i + W <= n; i += W) {
            V acc = S::load(y + i);
            for (int64_t j = 0; j < rows; ++j) {
                acc = S::fma(S::set1(p[j]), S::load(m + j * ld + i), acc);
            }
            S::store(y + i, acc);
        }
        for (; i < n; ++i) {
            float acc = y[i];
            for (int64_t j = 0; j < rows; ++j) acc += p[j] * m[j * ld + i];
            y[i] = acc;
        }
    }

    // Loads x[0], x[s], ..., x[(W - 1) * s] for s in {1, 2}.
    static V load_strided(const float* x, int64_t s) {
        return s == 1 ? S::load(x) : S::load_even(x);
    }

    static void axpy_strided(float* y, const float* x, int64_t stride, float a, int64_t n) {
        int64_t i = 0;
        if (stride <= 2) {
            const V va = S::set1(a);
            // load_even reads 2 * W floats: stop while they all lie inside the row.
            for (; i + W <= n && (stride == 1 || (i + W) * 2 - 1 <= 2 * (n - 1)); i += W) {
                S::store(y + i, S::fma(va, load_strided(x + i * stride, stride), S::load(y + i)));
            }
        }
        for (; i < n; ++i) y[i] += a * x[i * stride];
    }

    // U vectors of taps_row at column i. The taps' FMAs form dependency chains; with K partial
    // sums per vector (tap t goes to sum t % K) there are U * K independent chains, enough to
    // hide the FMA latency even for a single vector.
    template <int U, int K>
    static void taps_block(float* y, const float* const* x, const float* w, int64_t taps,
                           int64_t stride, int64_t i) {
        V acc[K][U];
        for (int u = 0; u < U; ++u) {
            acc[0][u] = S::load(y + i + u * W);
            for (int k = 1; k < K; ++k) acc[k][u] = S::zero();
        }
        int64_t t = 0;
        for (; t + K <= taps; t += K) {
            for (int k = 0; k < K; ++k) {
                const V wv = S::set1(w[t + k]);
                const float* xp = x[t + k] + i * stride;
                for (int u = 0; u < U; ++u) {
                    const V xv = stride == 1 ? S::load(xp + u * W) : S::load_even(xp + u * 2 * W);
                    acc[k][u] = S::fma(wv, xv, acc[k][u]);
                }
            }
        }
        for (; t < taps; ++t) {
            const V wv = S::set1(w[t]);
            const float* xp = x[t] + i * stride;
            for (int u = 0; u < U; ++u) {
                const V xv = stride == 1 ? S::load(xp + u * W) : S::load_even(xp + u * 2 * W);
                acc[0][u] = S::fma(wv, xv, acc[0][u]);
            }
        }
        for (int u = 0; u < U; ++u) {
            V sum = acc[0][u];
            for (int k = 1; k < K; ++k) sum = S::add(sum, acc[k][u]);
            S::store(y + i + u * W, sum);
        }
    }

    static void taps_row(float* y, const float* const* x, const float* w, int64_t taps,
                         int64_t stride, int64_t n) {
        int64_t i = 0;
        if (stride <= 2 && W > 1 && n >= W) {
            // The ragged end is one more vector overlapping the last full one, computed into a
            // scratch row before the main loop updates y, stored after it (both write the same
            // values where they overlap).
            alignas(64) float tail[W];
            const int64_t tail_at = n - W;
            for (int64_t j = 0; j < W; ++j) tail[j] = y[tail_at + j];
            const float* tail_x[64];
            const int64_t tt = std::min<int64_t>(taps, 64);
            for (int64_t t = 0; t < tt; ++t) tail_x[t] = x[t] + tail_at * stride;
            taps_block<1, 4>(tail, tail_x, w, tt, stride, 0);
            for (; i + 8 * W <= n; i += 8 * W) taps_block<8, 1>(y, x, w, taps, stride, i);
            if (i + 4 * W <= n) {
                taps_block<4, 2>(y, x, w, taps, stride, i);
                i += 4 * W;
            }
            if (i + 2 * W <= n) {
                taps_block<2, 2>(y, x, w, taps, stride, i);
                i += 2 * W;
            }
            if (i + W <= n) {
                taps_block<1, 4>(y, x, w, taps, stride, i);
                i += W;
            }
            if (taps <= 64) {
                for (int64_t j = 0; j < W; ++j) y[tail_at + j] = tail[j];
                i = n;
            }
        }
        for (; i < n; ++i) {
            float acc = y[i];
            for (int64_t t = 0; t < taps; ++t) acc += w[t] * x[t][i * stride];
            y[i] = acc;
        }
    }

    static void gather_strided(float* y, const float* x, int64_t stride, int64_t n) {
        int64_t i = 0;
        if (stride <= 2) {
            for (; i + W <= n && (stride == 1 || (i + W) * 2 - 1 <= 2 * (n - 1)); i += W) {
                S::store(y + i, load_strided(x + i * stride, stride));
            }
        }
        for (; i < n; ++i) y[i] = x[i * stride];
    }

    static void max_strided(float* y, const float* x, int64_t stride, int64_t n) {
        int64_t i = 0;
        if (stride <= 2) {
            for (; i + W <= n && (stride == 1 || (i + W) * 2 - 1 <= 2 * (n - 1)); i += W) {
                S::store(y + i, S::maxnan(S::load(y + i), load_strided(x + i * stride, stride)));
            }
        }
        for (; i < n; ++i) {
            const float v = x[i * stride];
            if (v > y[i] || v != v) y[i] = v;
        }
    }

    static void layer_norm(const float* x, float* y, int64_t n, const float* w, const float* b,
                           float eps) {
        const double mean = reduce_sum(x, n) / static_cast<double>(n);
        const float m = static_cast<float>(mean);
        // Two-pass variance: exact enough where E[x^2] - E[x]^2 would cancel.
        double var = 0.0;
        {
            int64_t i = 0;
            if (n >= W) {
                const V vm = S::set1(m);
                V acc = S::zero();
                for (; i + W <= n; i += W) {
                    const V d = S::sub(S::load(x + i), vm);
                    acc = S::fma(d, d, acc);
                }
                var = S::hsum(acc);
            }
            for (; i < n; ++i) var += static_cast<double>(x[i] - m) * (x[i] - m);
        }
        var /= static_cast<double>(n);
        const float rstd = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(eps)));
        int64_t i = 0;
        const V vm = S::set1(m), vr = S::set1(rstd);
        for (; i + W <= n; i += W) {
            V v = S::mul(S::sub(S::load(x + i), vm), vr);
            if (w != nullptr) v = S::mul(v, S::load(w + i));
            if (b != nullptr) v = S::add(v, S::load(b + i));
            S::store(y + i, v);
        }
        for (; i < n; ++i) {
            float v = (x[i] - m) * rstd;
            if (w != nullptr) v *= w[i];
            if (b != nullptr) v += b[i];
            y[i] = v;
        }
    }

    // Binary operations as types (not lambdas: GCC does not apply a target pragma to lambda
    // bodies, which would make the AVX2 instantiation pass vectors through the baseline ABI).
    struct Add { static V apply(V p, V q) { return S::add(p, q); } };
    struct Sub { static V apply(V p, V q) { return S::sub(p, q); } };
    struct Mul { static V apply(V p, V q) { return S::mul(p, q); } };
    struct Div { static V apply(V p, V q) { return S::div(p, q); } };
    struct Max { static V apply(V p, V q) { return S::maxnan(p, q); } };
    struct Min { static V apply(V p, V q) { return S::minnan(p, q); } };

    template <typename Op>
    static void binary_loop(const float* a, int64_t sa, const float* b, int64_t sb, float* y,
                            int64_t n) {
        int64_t i = 0;
        if (sa == 1 && sb == 1) {
            for (; i + W <= n; i += W) S::store(y + i, Op::apply(S::load(a + i), S::load(b + i)));
        } else if (sa == 1) {
            const V vb = S::set1(b[0]);
            for (; i + W <= n; i += W) S::store(y + i, Op::apply(S::load(a + i), vb));
        } else if (sb == 1) {
            const V va = S::set1(a[0]);
            for (; i + W <= n; i += W) S::store(y + i, Op::apply(va, S::load(b + i)));
        }
        for (; i < n; ++i) {
            // Tail through one-lane vectors of the same operation.
            alignas(64) float ta[S::kWidth] = {}, tb[S::kWidth] = {}, ty[S::kWidth];
            ta[0] = a[i * sa];
            tb[0] = b[i * sb];
            S::store(ty, Op::apply(S::load(ta), S::load(tb)));
            y[i] = ty[0];
        }
    }

    static void binary(FloatBinary op, const float* a, int64_t sa, const float* b, int64_t sb,
                       float* y, int64_t n) {
        switch (op) {
            case FloatBinary::kAdd: return binary_loop<Add>(a, sa, b, sb, y, n);
            case FloatBinary::kSub: return binary_loop<Sub>(a, sa, b, sb, y, n);
            case FloatBinary::kMul: return binary_loop<Mul>(a, sa, b, sb, y, n);
            case FloatBinary::kDiv: return binary_loop<Div>(a, sa, b, sb, y, n);
            case FloatBinary::kMax: return binary_loop<Max>(a, sa, b, sb, y, n);
            case FloatBinary::kMin: return binary_loop<Min>(a, sa, b, sb, y, n);
        }
    }
};

template <typename S>
VecOps make_vec_ops(const char* name, EpilogueFn epilogue) {
    using I = VecImpl<S>;
    return VecOps{name,    I::reduce_max,   I::reduce_sum,  I::exp_scaled_sum,
                  I::scale, I::affine,       I::axpy,        I::axpy_strided,
                  I::dot_rows, I::rows_axpy,
                  I::taps_row, I::gather_strided, I::max_strided, I::layer_norm,
                  I::binary, epilogue};
}

}  // namespace
}  // namespace rt
}  // namespace graphopt
