// Sampling at grid locations (torch.nn.functional.grid_sample, ONNX GridSample), float32.
//
// "grid_sample"  operands: out, x, grid
//                ints: spatial (2 or 3), N, C, in_dims[spatial] (H, W or D, H, W),
//                      out_dims[spatial], mode (0 bilinear, 1 nearest, 2 bicubic: 2-D only),
//                      padding (0 zeros, 1 border, 2 reflection), align_corners
//                x [N, C, *in], grid [N, *out, spatial] holding (x, y[, z]) in [-1, 1];
//                out [N, C, *out]. torch's formulas: unnormalize, then clip or reflect the
//                coordinate (bicubic: each tap), taps outside the input read 0.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "rt_parallel.h"
#include "rt_plan.h"

namespace graphopt {
namespace rt {
namespace {

enum class Padding { kZeros = 0, kBorder = 1, kReflection = 2 };

double unnormalize(double coord, int64_t size, bool align_corners) {
    return align_corners ? (coord + 1.0) / 2.0 * static_cast<double>(size - 1)
                         : ((coord + 1.0) * static_cast<double>(size) - 1.0) / 2.0;
}

double reflect(double in, double twice_low, double twice_high) {
    if (twice_low == twice_high) return 0.0;
    const double low = twice_low / 2.0, span = (twice_high - twice_low) / 2.0;
    in = std::fabs(in - low);
    const double extra = std::fmod(in, span);
    const double flips = std::floor(in / span);
    return std::fmod(flips, 2.0) == 0.0 ? extra + low : span - extra + low;
}

// Border clipping or reflection of an (unnormalized) coordinate.
double pad_coordinate(double c, int64_t size, Padding padding, bool align_corners) {
    const double hi = static_cast<double>(size - 1);
    if (padding == Padding::kBorder) return std::min(std::max(c, 0.0), hi);
    if (padding == Padding::kReflection) {
        c = align_corners ? reflect(c, 0.0, 2.0 * hi)
                          : reflect(c, -1.0, 2.0 * static_cast<double>(size) - 1.0);
        return std::min(std::max(c, 0.0), hi);
    }
    return c;
}

// Coordinates this far out (or NaN) sample nothing: every tap is outside any tensor. Checked
// before converting, so no conversion to an index can overflow.
bool far(double c) { return !(std::fabs(c) < 1.0e15); }

int64_t to_index(double c) { return static_cast<int64_t>(c); }

double cubic1(double x, double a) { return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0; }
double cubic2(double x, double a) { return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a; }

class GridSampleKernel : public Kernel {
   public:
    explicit GridSampleKernel(const KernelArgs& args) {
        IntReader r(args);
        spatial_ = r.in(2, 3, "spatial");
        n_ = r.dim("N");
        c_ = r.dim("C");
        in_ = r.dims(spatial_, "in");
        out_ = r.dims(spatial_, "out");
        mode_ = static_cast<int>(r.in(0, 2, "mode"));
        padding_ = static_cast<Padding>(r.in(0, 2, "padding"));
        align_corners_ = r.next() != 0;
        const std::string what = "grid_sample " + args.name;
        if (mode_ == 2 && spatial_ != 2) throw PlanError(what + ": bicubic is 2-D only");
        in_numel_ = checked_numel(in_, what);
        out_numel_ = checked_numel(out_, what);
        const int64_t planes = checked_mul(n_, c_, what);
        need(args, 0, checked_mul(checked_mul(planes, out_numel_, what), 4, what), 4);
        need(args, 1, checked_mul(checked_mul(planes, in_numel_, what), 4, what), 4);
        need(args, 2, checked_mul(checked_mul(checked_mul(n_, out_numel_, what), spatial_, what),
                                  4, what), 4);
    }
    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* x = ctx.get<const float>(operands[1]);
        const float* grid = ctx.get<const float>(operands[2]);
        parallel_for(ctx.threads, n_ * out_numel_, c_ * 16, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
                const int64_t n = t / out_numel_, p = t % out_numel_;
                const float* g = grid + t * spatial_;
                const float* xn = x + n * c_ * in_numel_;
                float* yn = out + n * c_ * out_numel_ + p;
                if (spatial_ == 2) {
                    sample2d(xn, g, yn);
                } else {
                    sample3d(xn, g, yn);
                }
            }
        });
    }

   private:
    // Adds w * x[c, idx] to every channel's output for an in-bounds tap.
    void tap(const float* xn, int64_t idx, double w, std::vector<double>& acc) const {
        for (int64_t c = 0; c < c_; ++c) acc[c] += w * xn[c * in_numel_ + idx];
    }

    void store(float* yn, const std::vector<double>& acc) const {
        for (int64_t c = 0; c < c_; ++c) yn[c * out_numel_] = static_cast<float>(acc[c]);
    }

    void sample2d(const float* xn, const float* g, float* yn) const {
        const int64_t H = in_[0], W = in_[1];
        std::vector<double> acc(static_cast<size_t>(c_), 0.0);
        auto inside = [&](int64_t yy, int64_t xx) { return yy >= 0 && yy < H && xx >= 0 && xx < W; };
        if (mode_ == 2) {  // bicubic: padding per tap
            const double ix = unnormalize(g[0], W, align_corners_);
            const double iy = unnormalize(g[1], H, align_corners_);
            if ((far(ix) || far(iy)) && padding_ == Padding::kZeros) {
                store(yn, acc);  // every tap outside (border / reflection move each tap in)
                return;
            }
            const double fx = std::floor(ix), fy = std::floor(iy);
            const double tx = ix - fx, ty = iy - fy;
            const double a = -0.75;
            const double wx[4] = {cubic2(tx + 1.0, a), cubic1(tx, a), cubic1(1.0 - tx, a),
                                  cubic2(2.0 - tx, a)};
            const double wy[4] = {cubic2(ty + 1.0, a), cubic1(ty, a), cubic1(1.0 - ty, a),
                                  cubic2(2.0 - ty, a)};
            for (int j = 0; j < 4; ++j) {
                for (int i = 0; i < 4; ++i) {
                    const double cx = pad_coordinate(fx - 1 + i, W, padding_, align_corners_);
                    const double cy = pad_coordinate(fy - 1 + j, H, padding_, align_corners_);
                    const int64_t xx = to_index(cx), yy = to_index(cy);
                    if (inside(yy, xx)) {
                        tap(xn, yy * W + xx, wx[i] * wy[j], acc);
                    }
                }
            }
            store(yn, acc);
            return;
        }
        const double ix = pad_coordinate(unnormalize(g[0], W, align_corners_), W, padding_,
                                         align_corners_);
        const double iy = pad_coordinate(unnormalize(g[1], H, align_corners_), H, padding_,
                                         align_corners_);
        if (far(ix) || far(iy)) {
            store(yn, acc);
            return;
        }
        if (mode_ == 1) {
            const int64_t xx = to_index(std::nearbyint(ix));
            const int64_t yy = to_index(std::nearbyint(iy));
            if (inside(yy, xx)) tap(xn, yy * W + xx, 1.0, acc);
            store(yn, acc);
            return;
        }
        const int64_t x0 = to_index(std::floor(ix));
        const int64_t y0 = to_index(std::floor(iy));
        const double dx = ix - static_cast<double>(x0), dy = iy - static_cast<double>(y0);
        for (int j = 0; j < 2; ++j) {
            for (int i = 0; i < 2; ++i) {
                const double w = (i ? dx : 1.0 - dx) * (j ? dy : 1.0 - dy);
                if (inside(y0 + j, x0 + i)) tap(xn, (y0 + j) * W + x0 + i, w, acc);
            }
        }
        store(yn, acc);
    }

    void sample3d(const float* xn, const float* g, float* yn) const {
        const int64_t D = in_[0], H = in_[1], W = in_[2];
        std::vector<double> acc(static_cast<size_t>(c_), 0.0);
        const double ix = pad_coordinate(unnormalize(g[0], W, align_corners_), W, padding_,
                                         align_corners_);
        const double iy = pad_coordinate(unnormalize(g[1], H, align_corners_), H, padding_,
                                         align_corners_);
        const double iz = pad_coordinate(unnormalize(g[2], D, align_corners_), D, padding_,
                                         align_corners_);
        if (far(ix) || far(iy) || far(iz)) {
            store(yn, acc);
            return;
        }
        auto inside = [&](int64_t zz, int64_t yy, int64_t xx) {
            return zz >= 0 && zz < D && yy >= 0 && yy < H && xx >= 0 && xx < W;
        };
        if (mode_ == 1) {
            const int64_t xx = to_index(std::nearbyint(ix));
            const int64_t yy = to_index(std::nearbyint(iy));
            const int64_t zz = to_index(std::nearbyint(iz));
            if (inside(zz, yy, xx)) tap(xn, (zz * H + yy) * W + xx, 1.0, acc);
            store(yn, acc);
            return;
        }
        const int64_t x0 = to_index(std::floor(ix));
        const int64_t y0 = to_index(std::floor(iy));
        const int64_t z0 = to_index(std::floor(iz));
        const double dx = ix - static_cast<double>(x0), dy = iy - static_cast<double>(y0),
                     dz = iz - static_cast<double>(z0);
        for (int k = 0; k < 2; ++k) {
            for (int j = 0; j < 2; ++j) {
                for (int i = 0; i < 2; ++i) {
                    const double w =
                        (i ? dx : 1.0 - dx) * (j ? dy : 1.0 - dy) * (k ? dz : 1.0 - dz);
                    if (inside(z0 + k, y0 + j, x0 + i)) {
                        tap(xn, ((z0 + k) * H + y0 + j) * W + x0 + i, w, acc);
                    }
                }
            }
        }
        store(yn, acc);
    }

    int64_t spatial_, n_, c_, in_numel_ = 0, out_numel_ = 0;
    std::vector<int64_t> in_, out_;
    int mode_ = 0;
    Padding padding_ = Padding::kZeros;
    bool align_corners_ = false;
};

GRAPHOPT_RT_KERNEL("grid_sample", GridSampleKernel,
                   "out, x, grid",
                   "spatial:rank, N:dim, C:dim, in_dims[spatial]:dim, out_dims[spatial]:dim, "
                   "mode:mode, padding:mode, align_corners:flag",
                   "");

}  // namespace
}  // namespace rt
}  // namespace graphopt
