// The blocked-layout kernels of rt_blocked.h, written once over a 16-float vector type S
// (S::V, load, store, set1, zero, add, sub, fma, max, min, maxnan) and instantiated per ISA:
// rt_blocked_avx512.cpp (one zmm) and rt_blocked.cpp (portable). Include once per translation
// unit, inside namespace graphopt::rt and an anonymous namespace.
//
// Dense convolution: a tile is UR consecutive output pixels of one row times NB output blocks
// (NB * UR accumulators: 24 of AVX-512's 32 registers at UR = 12, NB = 2). For every input
// channel and tap it loads NB weight vectors and broadcasts UR input scalars: each broadcast
// feeds NB FMAs, each weight load UR. Depthwise: UR pixels of one block, one weight vector per
// tap shared by the UR pixels. The epilogue adds bias and residual in registers, stores, then
// applies the activation to the stored, cache-hot tile (apply_activation, as the GEMM does).
// The including file provides <algorithm>, <array>, <cmath>, <limits> and <utility>.

constexpr int kMaxTile = 12;  // output pixels per tile

// relu, relu6 and clamp run in registers (max(lo, v), min(hi, v): the vector max / min return
// their second operand when either is NaN, so NaN propagates as in torch); the other
// activations run on the stored tile through apply_activation.
struct RegisterAct {
    bool lower = false, upper = false, later = false;
    float lo = 0.0f, hi = 0.0f;
    explicit RegisterAct(const ActSpec& a) {
        switch (a.act) {
            case Act::kNone: break;
            case Act::kRelu: lower = true; break;
            case Act::kRelu6: lower = upper = true; hi = 6.0f; break;
            case Act::kClamp: lower = upper = true; lo = a.p0; hi = a.p1; break;
            default: later = true;
        }
    }
    template <class S>
    typename S::V apply(typename S::V v) const {
        if (lower) v = S::max(S::set1(lo), v);
        if (upper) v = S::min(S::set1(hi), v);
        return v;
    }
};

template <class S, int NB, int UR>
void conv_tile(const BlockedConvJob& j, int64_t ob, int64_t oy, int64_t ox0) {
    using V = typename S::V;
    V acc[NB][UR];
    for (int b = 0; b < NB; ++b) {
        for (int u = 0; u < UR; ++u) acc[b][u] = S::zero();
    }
    const int64_t block_w = j.in_blocks * j.kh * j.kw * kChannelBlock * kChannelBlock;
    const float* wbase = j.weight + ob * block_w;
    const int64_t px = j.sw * j.src.pixel_stride;  // input step between output pixels
    const int64_t ib0 = j.group_out > 0 ? first_input_block(ob, j.group_in, j.group_out) : 0;
    for (int64_t ib = 0; ib < j.in_blocks; ++ib) {
        const int64_t count = std::min<int64_t>(kChannelBlock, j.c - (ib0 + ib) * kChannelBlock);
        if (ib + 1 < j.in_blocks) {  // the next block's pixels are another page: fetch early
            const float* next = j.src.base + (ib0 + ib + 1) * j.src.block_stride +
                                oy * j.sh * j.src.row_stride + ox0 * px;
            for (int u = 0; u < UR; ++u) __builtin_prefetch(next + u * px);
        }
        for (int64_t ky = 0; ky < j.kh; ++ky) {
            const float* xrow = j.src.base + (ib0 + ib) * j.src.block_stride +
                                (oy * j.sh + ky * j.dh) * j.src.row_stride + ox0 * px;
            for (int64_t kx = 0; kx < j.kw; ++kx) {
                const float* xp = xrow + kx * j.dw * j.src.pixel_stride;
                const float* wp =
                    wbase + ((ib * j.kh + ky) * j.kw + kx) * kChannelBlock * kChannelBlock;
                for (int64_t ci = 0; ci < count; ++ci) {
                    const float* xc = xp + ci * j.src.channel_stride;
                    V w[NB];
                    for (int b = 0; b < NB; ++b) w[b] = S::load(wp + b * block_w + ci * 16);
#pragma GCC unroll 16
                    for (int u = 0; u < UR; ++u) {
                        const V xv = S::set1(xc[u * px]);
                        for (int b = 0; b < NB; ++b) acc[b][u] = S::fma(w[b], xv, acc[b][u]);
                    }
                }
            }
        }
    }
    for (int b = 0; b < NB; ++b) {
        const int64_t offset = ((ob + b) * j.ho + oy) * j.wo * kChannelBlock + ox0 * kChannelBlock;
        float* o = j.out + offset;
        const V bias = j.bias != nullptr ? S::load(j.bias + (ob + b) * kChannelBlock) : S::zero();
        const float* r = j.residual != nullptr ? j.residual + offset : nullptr;
        const RegisterAct act(j.act);
        for (int u = 0; u < UR; ++u) {
            V v = S::add(acc[b][u], bias);
            if (r != nullptr) v = S::add(v, S::load(r + u * kChannelBlock));  // r may alias o
            S::store(o + u * kChannelBlock, act.apply<S>(v));
        }
        if (act.later) {
            apply_activation(o, UR * kChannelBlock, 1, UR * kChannelBlock, nullptr, j.act);
        }
    }
}

template <class S, int UR>
void depthwise_store(const BlockedConvJob& j, int64_t b, int64_t oy, int64_t ox0,
                     typename S::V* acc) {
    const int64_t offset = (b * j.ho + oy) * j.wo * kChannelBlock + ox0 * kChannelBlock;
    float* o = j.out + offset;
    const float* r = j.residual != nullptr ? j.residual + offset : nullptr;
    const RegisterAct act(j.act);
    for (int u = 0; u < UR; ++u) {
        typename S::V v = acc[u];
        if (r != nullptr) v = S::add(v, S::load(r + u * kChannelBlock));
        S::store(o + u * kChannelBlock, act.apply<S>(v));
    }
    if (act.later) {
        apply_activation(o, UR * kChannelBlock, 1, UR * kChannelBlock, nullptr, j.act);
    }
}

// Depthwise output pixels [ox0, ox0 + UR) of row oy, block b, taps ky in [ky0, ky1) and every
// kx inside the input (the caller checked the columns).
template <class S, int UR>
void depthwise_tile(const BlockedConvJob& j, int64_t b, int64_t oy, int64_t ox0, int64_t ky0,
                    int64_t ky1) {
    using V = typename S::V;
    const V bias = j.bias != nullptr ? S::load(j.bias + b * kChannelBlock) : S::zero();
    V acc[UR];
    for (int u = 0; u < UR; ++u) acc[u] = bias;
    const float* wp = j.weight + b * j.kh * j.kw * kChannelBlock;
    const int64_t px = j.sw * kChannelBlock;
    for (int64_t ky = ky0; ky < ky1; ++ky) {
        const float* xrow = j.src.base + b * j.src.block_stride +
                            (oy * j.sh - j.ph + ky * j.dh) * j.src.row_stride +
                            (ox0 * j.sw - j.pw) * kChannelBlock;
        for (int64_t kx = 0; kx < j.kw; ++kx) {
            const V w = S::load(wp + (ky * j.kw + kx) * kChannelBlock);
            const float* xp = xrow + kx * j.dw * kChannelBlock;
#pragma GCC unroll 16
            for (int u = 0; u < UR; ++u) acc[u] = S::fma(w, S::load(xp + u * px), acc[u]);
        }
    }
    depthwise_store<S, UR>(j, b, oy, ox0, acc);
}

// One depthwise output pixel on the border: every tap checked.
template <class S>
void depthwise_pixel(const BlockedConvJob& j, int64_t b, int64_t oy, int64_t ox, int64_t ky0,
                     int64_t ky1) {
    using V = typename S::V;
    V acc[1] = {j.bias != nullptr ? S::load(j.bias + b * kChannelBlock) : S::zero()};
    const float* wp = j.weight + b * j.kh * j.kw * kChannelBlock;
    for (int64_t ky = ky0; ky < ky1; ++ky) {
        const float* xrow = j.src.base + b * j.src.block_stride +
                            (oy * j.sh - j.ph + ky * j.dh) * j.src.row_stride;
        for (int64_t kx = 0; kx < j.kw; ++kx) {
            const int64_t ix = ox * j.sw - j.pw + kx * j.dw;
            if (ix < 0 || ix >= j.w) continue;
            acc[0] = S::fma(S::load(wp + (ky * j.kw + kx) * kChannelBlock),
                            S::load(xrow + ix * kChannelBlock), acc[0]);
        }
    }
    depthwise_store<S, 1>(j, b, oy, ox, acc);
}

using TileFn = void (*)(const BlockedConvJob&, int64_t, int64_t, int64_t);
using DepthwiseTileFn = void (*)(const BlockedConvJob&, int64_t, int64_t, int64_t, int64_t,
                                 int64_t);

template <class S, int NB, size_t... I>
constexpr std::array<TileFn, sizeof...(I)> conv_tiles(std::index_sequence<I...>) {
    return {{&conv_tile<S, NB, static_cast<int>(I) + 1>...}};
}

template <class S, size_t... I>
constexpr std::array<DepthwiseTileFn, sizeof...(I)> depthwise_tiles(std::index_sequence<I...>) {
    return {{&depthwise_tile<S, static_cast<int>(I) + 1>...}};
}

// Splits [ox0, ox1) into tiles of at most kMaxTile pixels, as even as possible (a row of 14
// runs as 7 + 7, not 12 + 2: a narrow tile has too few accumulators to hide FMA latency).
template <class Fn>
void for_each_tile(int64_t ox0, int64_t ox1, Fn&& fn) {
    const int64_t n = ox1 - ox0;
    if (n <= 0) return;
    const int64_t tiles = (n + kMaxTile - 1) / kMaxTile;
    const int64_t base = n / tiles, extra = n % tiles;
    int64_t x = ox0;
    for (int64_t t = 0; t < tiles; ++t) {
        const int64_t width = base + (t < extra ? 1 : 0);
        fn(x, width);
        x += width;
    }
}

template <class S>
void conv_rows(const BlockedConvJob& j, int64_t ob, int64_t nb, int64_t oy0, int64_t oy1,
               int64_t ox0, int64_t ox1) {
    static constexpr auto one = conv_tiles<S, 1>(std::make_index_sequence<kMaxTile>());
    static constexpr auto two = conv_tiles<S, 2>(std::make_index_sequence<kMaxTile>());
    const auto& table = nb == 2 ? two : one;
    for (int64_t oy = oy0; oy < oy1; ++oy) {
        for_each_tile(ox0, ox1, [&](int64_t x, int64_t width) {
            table[static_cast<size_t>(width - 1)](j, ob, oy, x);
        });
    }
}

// First k in [0, n) with start + k * step >= 0, and one past the last with start + k * step < limit.
inline void tap_range(int64_t start, int64_t step, int64_t n, int64_t limit, int64_t& k0,
                      int64_t& k1) {
    k0 = 0;
    while (k0 < n && start + k0 * step < 0) ++k0;
    k1 = n;
    while (k1 > k0 && start + (k1 - 1) * step >= limit) --k1;
}

template <class S>
void depthwise_rows(const BlockedConvJob& j, int64_t b, int64_t oy0, int64_t oy1) {
    static constexpr auto table = depthwise_tiles<S>(std::make_index_sequence<kMaxTile>());
    // Output columns whose taps all lie inside the input: [inner0, inner1).
    int64_t inner0 = 0;
    while (inner0 < j.wo && inner0 * j.sw - j.pw < 0) ++inner0;
    int64_t inner1 = j.wo;
    while (inner1 > inner0 && (inner1 - 1) * j.sw - j.pw + (j.kw - 1) * j.dw >= j.w) --inner1;
    for (int64_t oy = oy0; oy < oy1; ++oy) {
        int64_t ky0, ky1;
        tap_range(oy * j.sh - j.ph, j.dh, j.kh, j.h, ky0, ky1);
        for (int64_t ox = 0; ox < inner0; ++ox) depthwise_pixel<S>(j, b, oy, ox, ky0, ky1);
        for_each_tile(inner0, inner1, [&](int64_t x, int64_t width) {
            table[static_cast<size_t>(width - 1)](j, b, oy, x, ky0, ky1);
        });
        for (int64_t ox = inner1; ox < j.wo; ++ox) depthwise_pixel<S>(j, b, oy, ox, ky0, ky1);
    }
}

template <class S>
void max_pool_rows(const BlockedPoolJob& j, int64_t b, int64_t oy0, int64_t oy1) {
    using V = typename S::V;
    const float* xb = j.x + b * j.h * j.w * kChannelBlock;
    float* yb = j.out + b * j.ho * j.wo * kChannelBlock;
    for (int64_t oy = oy0; oy < oy1; ++oy) {
        for (int64_t ox = 0; ox < j.wo; ++ox) {
            V m = S::set1(-std::numeric_limits<float>::infinity());
            for (int64_t ky = 0; ky < j.kh; ++ky) {
                const int64_t iy = oy * j.sh - j.ph + ky * j.dh;
                if (iy < 0 || iy >= j.h) continue;
                for (int64_t kx = 0; kx < j.kw; ++kx) {
                    const int64_t ix = ox * j.sw - j.pw + kx * j.dw;
                    if (ix < 0 || ix >= j.w) continue;
                    m = S::maxnan(m, S::load(xb + (iy * j.w + ix) * kChannelBlock));
                }
            }
            S::store(yb + (oy * j.wo + ox) * kChannelBlock, m);
        }
    }
}

// Winograd F(2x2, 3x3) input transform of tile rows [ty0, ty1) of input block b:
// V[xi = 4i + k] = (B^T d B)[i][k] for the 4x4 input patch d at (2 ty - ph, 2 tx - pw), zeros
// outside the input, with B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1] (adds only: exact up to
// the rounding of each add).
template <class S>
void winograd_input_rows(const WinogradJob& j, int64_t b, int64_t ty0, int64_t ty1) {
    using V = typename S::V;
    const int64_t tiles = j.tiles_h * j.tiles_w;
    const int64_t xi_stride = j.in_blocks * tiles * kChannelBlock;
    const float* base = j.src.base + b * j.src.block_stride;
    float* vb = j.v + b * tiles * kChannelBlock;
    for (int64_t ty = ty0; ty < ty1; ++ty) {
        const int64_t iy0 = 2 * ty - j.ph;
        const bool rows_inside = iy0 >= 0 && iy0 + 4 <= j.h;
        for (int64_t tx = 0; tx < j.tiles_w; ++tx) {
            const int64_t ix0 = 2 * tx - j.pw;
            const bool inside = rows_inside && ix0 >= 0 && ix0 + 4 <= j.w;
            V d[4][4];
            for (int r = 0; r < 4; ++r) {
                const int64_t iy = iy0 + r;
                for (int c = 0; c < 4; ++c) {
                    const int64_t ix = ix0 + c;
                    d[r][c] = inside || (iy >= 0 && iy < j.h && ix >= 0 && ix < j.w)
                                  ? S::load(base + iy * j.src.row_stride + ix * kChannelBlock)
                                  : S::zero();
                }
            }
            V t[4][4];  // B^T d
            for (int c = 0; c < 4; ++c) {
                t[0][c] = S::sub(d[0][c], d[2][c]);
                t[1][c] = S::add(d[1][c], d[2][c]);
                t[2][c] = S::sub(d[2][c], d[1][c]);
                t[3][c] = S::sub(d[1][c], d[3][c]);
            }
            float* out = vb + (ty * j.tiles_w + tx) * kChannelBlock;
            for (int r = 0; r < 4; ++r) {  // (B^T d) B
                S::store(out + (4 * r + 0) * xi_stride, S::sub(t[r][0], t[r][2]));
                S::store(out + (4 * r + 1) * xi_stride, S::add(t[r][1], t[r][2]));
                S::store(out + (4 * r + 2) * xi_stride, S::sub(t[r][2], t[r][1]));
                S::store(out + (4 * r + 3) * xi_stride, S::sub(t[r][1], t[r][3]));
            }
        }
    }
}

// Output transform of tile rows [ty0, ty1) of output block ob: Y = A^T M A with
// A^T = [1 1 1 0; 0 1 -1 -1], then bias, residual and activation as the direct kernel does;
// pixels past Ho / Wo (odd sizes) are not stored.
template <class S>
void winograd_output_rows(const WinogradJob& j, int64_t ob, int64_t ty0, int64_t ty1) {
    using V = typename S::V;
    const int64_t tiles = j.tiles_h * j.tiles_w;
    const int64_t xi_stride = j.out_blocks * tiles * kChannelBlock;
    const float* mb = j.m + ob * tiles * kChannelBlock;
    const V bias = j.bias != nullptr ? S::load(j.bias + ob * kChannelBlock) : S::zero();
    const RegisterAct act(j.act);
    for (int64_t ty = ty0; ty < ty1; ++ty) {
        for (int64_t tx = 0; tx < j.tiles_w; ++tx) {
            const float* in = mb + (ty * j.tiles_w + tx) * kChannelBlock;
            V s[2][4];  // A^T M
            for (int c = 0; c < 4; ++c) {
                const V m0 = S::load(in + c * xi_stride), m1 = S::load(in + (4 + c) * xi_stride);
                const V m2 = S::load(in + (8 + c) * xi_stride);
                const V m3 = S::load(in + (12 + c) * xi_stride);
                s[0][c] = S::add(S::add(m0, m1), m2);
                s[1][c] = S::sub(S::sub(m1, m2), m3);
            }
            for (int r = 0; r < 2; ++r) {
                const int64_t oy = 2 * ty + r;
                if (oy >= j.ho) break;
                for (int c = 0; c < 2; ++c) {
                    const int64_t ox = 2 * tx + c;
                    if (ox >= j.wo) break;
                    V y = c == 0 ? S::add(S::add(s[r][0], s[r][1]), s[r][2])
                                 : S::sub(S::sub(s[r][1], s[r][2]), s[r][3]);
                    y = S::add(y, bias);
                    const int64_t at = ((ob * j.ho + oy) * j.wo + ox) * kChannelBlock;
                    if (j.residual != nullptr) y = S::add(y, S::load(j.residual + at));
                    S::store(j.out + at, act.apply<S>(y));
                    if (act.later) {
                        apply_activation(j.out + at, kChannelBlock, 1, kChannelBlock, nullptr,
                                         j.act);
                    }
                }
            }
        }
    }
}

template <class S>
BlockedOps make_blocked_ops(const char* name) {
    return BlockedOps{name, &conv_rows<S>, &depthwise_rows<S>, &max_pool_rows<S>,
                      &winograd_input_rows<S>, &winograd_output_rows<S>};
}
