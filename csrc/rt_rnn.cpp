// ONNX recurrent layers (RNN, GRU, LSTM) with ONNX semantics: gate orders (LSTM i o f c, GRU
// z r h), activations with alpha / beta, clip, input_forget, linear_before_reset, peepholes,
// per-sequence lengths (reverse directions run each sequence's own steps backwards; steps past
// a length leave the state and write zeros) and both layouts. float32.
//
// "onnx_rnn"  operands: y, y_h, y_c?, x, w, r, b?, sequence_lens? (int64), initial_h?,
//                       initial_c?, p?, act_params (plan constant, f64 [n_codes, 2]: alpha,
//                       beta per activation)
//             ints: cell (0 RNN, 1 GRU, 2 LSTM), seq, batch, input, hidden, directions,
//                   reverse (direction == "reverse"), layout, has_clip, input_forget,
//                   linear_before_reset, n_codes (directions x activations per direction),
//                   codes[n_codes]
//             floats: clip
// Activation codes: 0 Relu, 1 Tanh, 2 Sigmoid, 3 Affine, 4 LeakyRelu, 5 ThresholdedRelu,
// 6 ScaledTanh, 7 HardSigmoid, 8 Elu, 9 Softsign, 10 Softplus.
// Each (direction, batch row) is an independent sequence: one task each; dots in double.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "rt_parallel.h"
#include "rt_plan.h"

namespace graphopt {
namespace rt {
namespace {

struct RnnAct {
    int code = 1;
    double alpha = 0.0, beta = 0.0;
    double operator()(double x) const {
        switch (code) {
            case 0: return x > 0.0 ? x : 0.0;
            case 1: return std::tanh(x);
            case 2: return 1.0 / (1.0 + std::exp(-x));
            case 3: return alpha * x + beta;
            case 4: return x >= 0.0 ? x : alpha * x;
            case 5: return x > alpha ? x : 0.0;
            case 6: return alpha * std::tanh(beta * x);
            case 7: return std::min(std::max(alpha * x + beta, 0.0), 1.0);
            case 8: return x > 0.0 ? x : alpha * std::expm1(x);
            case 9: return x / (1.0 + std::fabs(x));
            default: return x > 20.0 ? x : std::log1p(std::exp(x));  // softplus, beta 1
        }
    }
};

constexpr int kGates[] = {1, 3, 4};

class OnnxRnnKernel : public Kernel {
   public:
    explicit OnnxRnnKernel(const KernelArgs& args) {
        IntReader r(args);
        cell_ = static_cast<int>(r.in(0, 2, "cell"));
        seq_ = r.dim("seq");
        batch_ = r.dim("batch");
        input_ = r.dim("input");
        hidden_ = r.positive("hidden");
        dirs_ = r.in(1, 2, "directions");
        reverse_ = r.next() != 0;
        layout_ = r.in(0, 1, "layout");
        has_clip_ = r.next() != 0;
        input_forget_ = r.next() != 0;
        lbr_ = r.next() != 0;
        const int64_t n_codes = r.rank("n_codes");
        const int64_t want = cell_ == 0 ? 1 : (cell_ == 1 ? 2 : 3);
        const std::string what = "onnx_rnn " + args.name;
        if (n_codes != dirs_ * want) throw PlanError(what + ": wrong number of activations");
        need(args, 11, checked_mul(n_codes, 16, what), 8);
        const double* ab = reinterpret_cast<const double*>(constant(args, 11));
        for (int64_t i = 0; i < n_codes; ++i) {
            RnnAct a;
            a.code = static_cast<int>(r.in(0, 10, "activation"));
            a.alpha = ab[2 * i];
            a.beta = ab[2 * i + 1];
            acts_.push_back(a);
        }
        clip_ = r.real(0);
        gates_ = kGates[cell_] * hidden_;
        const int64_t h = hidden_;
        auto bytes = [&](int64_t a, int64_t b, int64_t c) {
            return checked_mul(checked_mul(checked_mul(a, b, what), c, what), 4, what);
        };
        need(args, 0, checked_mul(bytes(seq_, dirs_, batch_), h, what), 4);
        need(args, 1, bytes(dirs_, batch_, h), 4);
        has_c_ = need_opt(args, 2, bytes(dirs_, batch_, h), 4);
        if (has_c_ != (cell_ == 2)) throw PlanError(what + ": y_c is LSTM's output only");
        need(args, 3, bytes(seq_, batch_, input_), 4);
        need(args, 4, bytes(dirs_, gates_, input_), 4);
        need(args, 5, bytes(dirs_, gates_, h), 4);
        has_b_ = need_opt(args, 6, bytes(dirs_, 2, gates_), 4);
        has_lens_ = need_opt(args, 7, checked_mul(batch_, 8, what), 8);
        has_h0_ = need_opt(args, 8, bytes(dirs_, batch_, h), 4);
        has_c0_ = need_opt(args, 9, bytes(dirs_, batch_, h), 4);
        has_p_ = need_opt(args, 10, bytes(dirs_, 3, h), 4);
    }

    void run(const ExecContext& ctx) const override {
        float* y = ctx.get<float>(operands[0]);
        float* y_h = ctx.get<float>(operands[1]);
        float* y_c = has_c_ ? ctx.get<float>(operands[2]) : nullptr;
        const float* x = ctx.get<const float>(operands[3]);
        const float* w = ctx.get<const float>(operands[4]);
        const float* rw = ctx.get<const float>(operands[5]);
        const float* b = has_b_ ? ctx.get<const float>(operands[6]) : nullptr;
        const int64_t* lens = has_lens_ ? ctx.get<const int64_t>(operands[7]) : nullptr;
        const float* h0 = has_h0_ ? ctx.get<const float>(operands[8]) : nullptr;
        const float* c0 = has_c0_ ? ctx.get<const float>(operands[9]) : nullptr;
        const float* p = has_p_ ? ctx.get<const float>(operands[10]) : nullptr;
        for (int64_t i = 0; lens != nullptr && i < batch_; ++i) {
            if (lens[i] < 0 || lens[i] > seq_) {
                throw std::out_of_range("onnx_rnn: sequence length " + std::to_string(lens[i]) +
                                        " is outside [0, " + std::to_string(seq_) + "]");
            }
        }
        std::fill(y, y + seq_ * dirs_ * batch_ * hidden_, 0.0f);
        parallel_for(ctx.threads, dirs_ * batch_, seq_ * gates_ * (input_ + hidden_),
                     [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
                run_sequence(t / batch_, t % batch_, y, y_h, y_c, x, w, rw, b, lens, h0, c0, p);
            }
        });
    }

   private:
    int64_t y_index(int64_t t, int64_t d, int64_t bi) const {
        return layout_ == 0 ? ((t * dirs_ + d) * batch_ + bi) * hidden_
                            : ((bi * seq_ + t) * dirs_ + d) * hidden_;
    }
    int64_t state_index(int64_t d, int64_t bi) const {
        return layout_ == 0 ? (d * batch_ + bi) * hidden_ : (bi * dirs_ + d) * hidden_;
    }

    void run_sequence(int64_t d, int64_t bi, float* y, float* y_h, float* y_c, const float* x,
                      const float* w, const float* rw, const float* b, const int64_t* lens,
                      const float* h0, const float* c0, const float* p) const {
        const int64_t h = hidden_, G = gates_;
        const bool reverse = reverse_ || d == 1;
        const int64_t len = lens != nullptr ? lens[bi] : seq_;
        const RnnAct* act = acts_.data() + d * (cell_ == 0 ? 1 : (cell_ == 1 ? 2 : 3));
        const float* wd = w + d * G * input_;
        const float* rd = rw + d * G * h;
        const float* wb = b != nullptr ? b + d * 2 * G : nullptr;
        const float* rb = b != nullptr ? wb + G : nullptr;
        const float* pd = p != nullptr ? p + d * 3 * h : nullptr;
        std::vector<double> ht(static_cast<size_t>(h), 0.0), ct(static_cast<size_t>(h), 0.0);
        std::vector<double> gx(static_cast<size_t>(G)), gh(static_cast<size_t>(G));
        std::vector<double> nh(static_cast<size_t>(h)), rh(static_cast<size_t>(h));
        const int64_t si = state_index(d, bi);
        for (int64_t k = 0; k < h; ++k) {
            if (h0 != nullptr) ht[k] = h0[si + k];
            if (c0 != nullptr) ct[k] = c0[si + k];
        }
        auto clip = [&](double v) { return has_clip_ ? std::min(std::max(v, -clip_), clip_) : v; };
        for (int64_t step = 0; step < len; ++step) {
            const int64_t t = reverse ? len - 1 - step : step;
            const float* xt = x + (layout_ == 0 ? (t * batch_ + bi) : (bi * seq_ + t)) * input_;
            for (int64_t j = 0; j < G; ++j) {
                double sx = wb != nullptr ? wb[j] : 0.0, sh = rb != nullptr ? rb[j] : 0.0;
                const float* wj = wd + j * input_;
                for (int64_t i = 0; i < input_; ++i) sx += static_cast<double>(wj[i]) * xt[i];
                const float* rj = rd + j * h;
                for (int64_t i = 0; i < h; ++i) sh += static_cast<double>(rj[i]) * ht[i];
                gx[j] = sx;
                gh[j] = sh;
            }
            if (cell_ == 0) {
                for (int64_t k = 0; k < h; ++k) nh[k] = act[0](clip(gx[k] + gh[k]));
            } else if (cell_ == 1) {
                for (int64_t k = 0; k < h; ++k) rh[k] = act[0](clip(gx[h + k] + gh[h + k]));
                for (int64_t k = 0; k < h; ++k) {
                    const double z = act[0](clip(gx[k] + gh[k]));
                    double cand;
                    if (lbr_) {
                        cand = gx[2 * h + k] + rh[k] * gh[2 * h + k];
                    } else {  // the reset gate scales h before the recurrent product
                        double s = rb != nullptr ? rb[2 * h + k] : 0.0;
                        const float* rj = rd + (2 * h + k) * h;
                        for (int64_t i = 0; i < h; ++i) s += static_cast<double>(rj[i]) * rh[i] * ht[i];
                        cand = gx[2 * h + k] + s;
                    }
                    const double hh = act[1](clip(cand));
                    nh[k] = (1.0 - z) * hh + z * ht[k];
                }
            } else {
                for (int64_t k = 0; k < h; ++k) {
                    const double pi = pd != nullptr ? pd[k] : 0.0;
                    const double po = pd != nullptr ? pd[h + k] : 0.0;
                    const double pf = pd != nullptr ? pd[2 * h + k] : 0.0;
                    const double i = act[0](clip(gx[k] + gh[k] + pi * ct[k]));
                    const double f = input_forget_
                                         ? 1.0 - i
                                         : act[0](clip(gx[2 * h + k] + gh[2 * h + k] + pf * ct[k]));
                    const double c = f * ct[k] + i * act[1](clip(gx[3 * h + k] + gh[3 * h + k]));
                    const double o = act[0](clip(gx[h + k] + gh[h + k] + po * c));
                    ct[k] = c;
                    nh[k] = o * act[2](c);
                }
            }
            float* yt = y + y_index(t, d, bi);
            for (int64_t k = 0; k < h; ++k) {
                ht[k] = static_cast<double>(static_cast<float>(nh[k]));  // the float state
                ct[k] = static_cast<double>(static_cast<float>(ct[k]));
                yt[k] = static_cast<float>(nh[k]);
            }
        }
        for (int64_t k = 0; k < h; ++k) {
            y_h[si + k] = static_cast<float>(ht[k]);
            if (y_c != nullptr) y_c[si + k] = static_cast<float>(ct[k]);
        }
    }

    int cell_ = 0;
    int64_t seq_, batch_, input_, hidden_, dirs_, layout_, gates_ = 0;
    bool reverse_ = false, has_clip_ = false, input_forget_ = false, lbr_ = false;
    bool has_c_ = false, has_b_ = false, has_lens_ = false, has_h0_ = false, has_c0_ = false,
         has_p_ = false;
    double clip_ = 0.0;
    std::vector<RnnAct> acts_;
};

GRAPHOPT_RT_KERNEL("onnx_rnn", OnnxRnnKernel,
                   "y, y_h, y_c?, x, w, r, b?, sequence_lens?, initial_h?, initial_c?, p?, "
                   "act_params",
                   "cell:mode, seq:dim, batch:dim, input:dim, hidden:positive, directions:dim, "
                   "reverse:flag, layout:mode, has_clip:flag, input_forget:flag, "
                   "linear_before_reset:flag, n_codes:rank, codes[n_codes]:mode",
                   "clip");

}  // namespace
}  // namespace rt
}  // namespace graphopt
