// Scaled dot-product attention with a streaming (online) softmax.
//
// "attention" operands: out, q, k, v, mask?, k2?, v2?
//   ints: B, H, L, S, E, Ev, kv_group,
//         q strides (b, h, l), k strides (b, h, s), v strides (b, h, s), out strides (b, h, l),
//         mask kind (0 none, 1 bool: keep where true, 2 float: added),
//         mask strides (b, h, l, s), is_causal, bf16,
//         S2, k2 strides (b, h, s), v2 strides (b, h, s)
//   floats: scale
//   Shapes: q [B, H, L, E], k [B, H/kv_group, S, E], v [B, H/kv_group, S, Ev], out [B, H, L, Ev],
//   each given by its strides (innermost stride 1): permuted or split views are read in place,
//   and the output can be written straight into a [B, L, H, Ev] layout.
//   With S2 > 0 the keys and values continue in a second pair of tensors, k2 [B, H/kv_group,
//   S2, E] and v2 [B, H/kv_group, S2, Ev]: attention over concat(k, k2) and concat(v, v2)
//   along the key axis without the concatenation (a decoder step attends to its KV cache and
//   the step's own new keys: the cache is read where it lies, not copied every step). The mask
//   and the causal rule see the S + S2 keys in that order.
//
// One task per (b, h, block of kQueryBlock queries). For each block of kKeyBlock keys:
//   scores = scale * Q K^T  (GEMM micro-kernel), mask / causal -> -inf,
//   m' = max(m, rowmax), l = l * e^(m - m') + rowsum(e^(s - m')), O = O * e^(m - m') + P V.
// The full L x S score matrix never exists; memory per thread is O(block * (S_block + Ev)).
// Causal key blocks entirely above the diagonal are skipped. Rows with every key masked give 0
// (torch's behaviour). bf16 = 1 (precision="bf16") runs both products on AMX bf16 tiles where
// the CPU has them (rt_attention_amx.cpp: Q, K, P, V rounded to bf16, f32 sums; the softmax
// stays f32); elsewhere the f32 products run.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "cpu.h"
#include "rt_amx.h"
#include "rt_dtype.h"
#include "rt_gemm.h"
#include "rt_parallel.h"
#include "rt_plan.h"
#include "rt_vec.h"

namespace graphopt {
namespace rt {
namespace {

constexpr int64_t kQueryBlock = 128;
constexpr int64_t kKeyBlock = 512;

struct AttnScratch {
    AlignedFloats scores, acc, stats, amx;
};

AttnScratch& attn_scratch() {
    static thread_local AttnScratch scratch;
    return scratch;
}

class AttentionKernel : public Kernel {
   public:
    explicit AttentionKernel(const KernelArgs& args) {
        IntReader r(args);
        const std::string what = "attention " + args.name;
        b_ = r.dim("B"); h_ = r.dim("H"); l_ = r.dim("L"); s_ = r.dim("S"); e_ = r.dim("E");
        ev_ = r.dim("Ev");
        group_ = std::max<int64_t>(1, r.in(0, IntReader::kMaxDim, "kv_group"));
        for (auto* st : {q_st_, k_st_, v_st_, o_st_}) {
            for (int i = 0; i < 3; ++i) st[i] = r.signed_param("stride");
        }
        mask_kind_ = r.in(0, 2, "mask kind");
        for (int i = 0; i < 4; ++i) m_st_[i] = r.signed_param("mask stride");
        causal_ = r.next() != 0;
        amx_ = r.next() != 0 && cpu_features().use_amx;
        s2_ = r.dim("S2");
        for (auto* st : {k2_st_, v2_st_}) {
            for (int i = 0; i < 3; ++i) st[i] = r.signed_param("stride");
        }
        scale_ = static_cast<float>(r.real(0));
        lb_ = std::min(l_, kQueryBlock);
        sb_ = std::min(s_ + s2_, kKeyBlock);
        if (h_ % group_ != 0) throw PlanError(what + ": kv_group must divide H");
        const int64_t hk = h_ / group_;
        // q [B, H, L, E], k [B, H/g, S, E], v [B, H/g, S, Ev], out [B, H, L, Ev]: innermost
        // stride 1, the others given. Nothing is read when no query row exists.
        const bool any = b_ > 0 && h_ > 0 && l_ > 0;
        auto dims = [&](int64_t heads, int64_t rows, int64_t cols) {
            return any ? std::vector<int64_t>{b_, heads, rows, cols}
                       : std::vector<int64_t>{0, 0, 0, 0};
        };
        auto strides = [](const int64_t* st) {
            return std::vector<int64_t>{st[0], st[1], st[2], 1};
        };
        need_strided(args, 0, dims(h_, l_, ev_), strides(o_st_), 4);
        need_strided(args, 1, dims(h_, l_, e_), strides(q_st_), 4);
        need_strided(args, 2, dims(hk, s_, e_), strides(k_st_), 4);
        need_strided(args, 3, dims(hk, s_, ev_), strides(v_st_), 4);
        if (s2_ > 0) {
            need_strided(args, 5, dims(hk, s2_, e_), strides(k2_st_), 4);
            need_strided(args, 6, dims(hk, s2_, ev_), strides(v2_st_), 4);
        } else if (args.has(5) || args.has(6)) {
            throw PlanError(what + ": second key/value operands need S2 > 0");
        }
        if (mask_kind_ != 0) {
            need_strided(args, 4, any ? std::vector<int64_t>{b_, h_, l_, s_ + s2_}
                                      : std::vector<int64_t>{0, 0, 0, 0},
                         {m_st_[0], m_st_[1], m_st_[2], m_st_[3]}, mask_kind_ == 1 ? 1 : 4);
        } else if (args.has(4)) {
            throw PlanError(what + ": a mask operand needs a mask kind");
        }
    }

    void run(const ExecContext& ctx) const override {
        float* out = ctx.get<float>(operands[0]);
        const float* q = ctx.get<const float>(operands[1]);
        const float* k = ctx.get<const float>(operands[2]);
        const float* v = ctx.get<const float>(operands[3]);
        const char* mask = mask_kind_ != 0 ? ctx.ptr(operands[4]) : nullptr;
        const float* k2 = s2_ > 0 ? ctx.get<const float>(operands[5]) : nullptr;
        const float* v2 = s2_ > 0 ? ctx.get<const float>(operands[6]) : nullptr;
        if (b_ == 0 || h_ == 0 || l_ == 0) return;
        const int64_t qblocks = ceil_div(l_, lb_);
        parallel_tasks(ctx.threads, b_ * h_ * qblocks, [&](int64_t t) {
            const int64_t bh = t / qblocks, qb = t % qblocks;
            const int64_t b = bh / h_, h = bh % h_, kh = h / group_;
            const KeySegment segments[2] = {
                {k + b * k_st_[0] + kh * k_st_[1], v + b * v_st_[0] + kh * v_st_[1], k_st_[2],
                 v_st_[2], 0, s_},
                {s2_ > 0 ? k2 + b * k2_st_[0] + kh * k2_st_[1] : nullptr,
                 s2_ > 0 ? v2 + b * v2_st_[0] + kh * v2_st_[1] : nullptr, k2_st_[2], v2_st_[2],
                 s_, s2_}};
            task(out, q, segments, mask, b, h, qb * lb_);
        });
    }

   private:
    // Keys [begin, begin + len) of the concatenated key axis, with their values.
    struct KeySegment {
        const float* k;
        const float* v;
        int64_t k_row, v_row, begin, len;
    };

    void task(float* out, const float* q, const KeySegment* segments, const char* mask,
              int64_t b, int64_t h, int64_t l0) const {
        const int64_t rows = std::min(lb_, l_ - l0);
        const float* qp = q + b * q_st_[0] + h * q_st_[1] + l0 * q_st_[2];
        AttnScratch& scr = attn_scratch();
        const int64_t ld_s = round_up(sb_, kNR);
        // AMX tiles write whole 16-row tiles: room for the padded rows and columns.
        const int64_t rows_p = amx_ ? round_up(rows, 16) : rows;
        const int64_t ld_acc = amx_ ? round_up(ev_, 16) : ev_;
        float* scores = scr.scores.reserve(rows_p * ld_s);
        float* acc = scr.acc.reserve(rows_p * ld_acc);
        float* stats = scr.stats.reserve(2 * rows);
        float* row_max = stats;
        float* row_sum = stats + rows;
        std::fill(acc, acc + rows_p * ld_acc, 0.0f);
        AttnAmxScratch tiles;
        if (amx_) {
            const int64_t a_elems = round_up(rows_p * std::max(round_up(e_, 32),
                                                               round_up(sb_, 32)), 32);
            auto* base = reinterpret_cast<uint16_t*>(
                scr.amx.reserve(attn_amx_scratch_elems(rows, sb_, e_, ev_) / 2 + 32));
            tiles = AttnAmxScratch{base, base + a_elems};
        }
        std::fill(row_max, row_max + rows, -std::numeric_limits<float>::infinity());
        std::fill(row_sum, row_sum + rows, 0.0f);
        BlockState state{qp, rows, l0, scores, ld_s, acc, ld_acc, row_max, row_sum, tiles};
        for (int seg = 0; seg < 2; ++seg) {
            const KeySegment& sg = segments[seg];
            for (int64_t off = 0; off < sg.len; off += sb_) {
                const int64_t s0 = sg.begin + off;
                if (causal_ && s0 > l0 + rows - 1) break;  // every key here is in the future
                int64_t lo = 0, hi = std::min(sb_, sg.len - off);
                if (mask_kind_ != 0) visible_span(mask, b, h, l0, rows, s0, lo, hi);
                if (lo >= hi) continue;  // every key masked out for every row of the block
                key_block(state, sg.k + (off + lo) * sg.k_row, sg.k_row,
                          sg.v + (off + lo) * sg.v_row, sg.v_row, s0 + lo, hi - lo, mask, b, h);
            }
        }
        for (int64_t i = 0; i < rows; ++i) {
            float* orow = out + b * o_st_[0] + h * o_st_[1] + (l0 + i) * o_st_[2];
            const float inv = row_sum[i] > 0.0f ? 1.0f / row_sum[i] : 0.0f;
            vec_ops().binary(FloatBinary::kMul, acc + i * ld_acc, 1, &inv, 0, orow, ev_);
        }
    }

    // One query block's running softmax state (scratch of the calling thread).
    struct BlockState {
        const float* qp;
        int64_t rows, l0;
        float* scores;
        int64_t ld_s;
        float* acc;
        int64_t ld_acc;
        float* row_max;
        float* row_sum;
        AttnAmxScratch tiles;
    };

    // Keys s0 .. s0 + cols (rows of kp / vp, k_row / v_row apart) into the block's state.
    void key_block(BlockState& st, const float* kp, int64_t k_row, const float* vp,
                   int64_t v_row, int64_t s0, int64_t cols, const char* mask, int64_t b,
                   int64_t h) const {
        const GemmKernels& kern = gemm_kernels();
        const VecOps& vec = vec_ops();
        const float neg_inf = -std::numeric_limits<float>::infinity();
        const int64_t rows = st.rows, l0 = st.l0, ld_s = st.ld_s, ld_acc = st.ld_acc;
        const float* qp = st.qp;
        float* scores = st.scores;
        float* acc = st.acc;
        float* row_max = st.row_max;
        float* row_sum = st.row_sum;
        AttnAmxScratch& tiles = st.tiles;
        // scores[rows, cols] = scale * Q K^T: B(e, s) = K[s, e]. One query row (a decoder
        // step) reads each key once with dot products instead of packing K for the GEMM.
        const bool single = rows == 1 && !amx_;
        if (single) {
            vec.dot_rows(qp, kp, k_row, cols, e_, scale_, scores);
        } else if (amx_) {
            attn_amx_scores(qp, q_st_[2], rows, e_, kp, k_row, cols, scale_, scores, ld_s,
                            tiles);
        } else {
            EpilogueSpec ep;
            ep.alpha = scale_;
            gemm_block(kern, StridedA{MatrixRef{qp, rows, e_, q_st_[2], 1}},
                       StridedB{MatrixRef{kp, e_, cols, 1, k_row}}, e_,
                       scores, ld_s, GemmBlock{0, rows, 0, cols}, ep);
        }
        if (amx_) {
            amx_softmax_pv(st, vp, v_row, s0, cols, mask, b, h);
            return;
        }
        const bool avx512 = cpu_features().use_avx512;
        const bool fused_mask = avx512 && mask_kind_ == 1 && m_st_[3] == 1;
        for (int64_t i = 0; i < rows; ++i) {
            float* srow = scores + i * ld_s;
            const int64_t l = l0 + i;
            if (mask_kind_ != 0 && !fused_mask) apply_mask(srow, mask, b, h, l, s0, cols);
            if (causal_) {
                const int64_t first_future = std::max<int64_t>(0, l + 1 - s0);
                for (int64_t j = first_future; j < cols; ++j) srow[j] = neg_inf;
            }
            const float m_old = row_max[i];
            float m_new = m_old, sum = 0.0f;
            if (avx512) {  // mask, max, exp and sum in one vector routine, masked tails
                const uint8_t* keep = fused_mask ? reinterpret_cast<const uint8_t*>(mask) +
                                                       b * m_st_[0] + h * m_st_[1] +
                                                       l * m_st_[2] + s0
                                                 : nullptr;
                sum = attn_softmax_row_avx512(srow, cols, keep, m_old, &m_new);
                if (m_new == neg_inf) continue;  // nothing visible yet (P row zeroed)
            } else {
                m_new = std::max(m_old, vec.reduce_max(srow, cols));
                if (m_new == neg_inf) {  // nothing visible yet in this row
                    std::fill(srow, srow + cols, 0.0f);
                    continue;
                }
                sum = vec.exp_scaled_sum(srow, srow, cols, 1.0f, m_new);
            }
            const float correction = std::exp(m_old - m_new);  // 0 when m_old is -inf
            row_sum[i] = row_sum[i] * correction + sum;
            row_max[i] = m_new;
            if (correction != 1.0f) vec.scale(acc + i * ld_acc, ev_, correction);
        }
        // acc[rows, Ev] += P V_block
        if (single) {
            vec.rows_axpy(acc, scores, vp, v_row, cols, ev_);
        } else {
            EpilogueSpec acc_ep;
            acc_ep.residual_in_c = true;
            gemm_block(kern, StridedA{MatrixRef{scores, rows, cols, ld_s, 1}},
                       StridedB{MatrixRef{vp, cols, ev_, v_row, 1}}, cols,
                       acc, ev_, GemmBlock{0, rows, 0, ev_}, acc_ep);
        }
    }

    // The AMX path's softmax and P V: each row's scores masked, its maximum, exp and sum in one
    // vector routine that writes the bf16 P row straight into the tile operand
    // (attn_amx_softmax_row); the running-softmax update as in key_block.
    void amx_softmax_pv(BlockState& st, const float* vp, int64_t v_row, int64_t s0,
                        int64_t cols, const char* mask, int64_t b, int64_t h) const {
        const float neg_inf = -std::numeric_limits<float>::infinity();
        // A bool mask with contiguous keys is read by the row routine; others are applied first.
        const bool fused_mask = mask_kind_ == 1 && m_st_[3] == 1;
        const int64_t kp = round_up(cols, 32);
        for (int64_t i = 0; i < st.rows; ++i) {
            float* srow = st.scores + i * st.ld_s;
            const int64_t l = st.l0 + i;
            const uint8_t* keep = nullptr;
            if (fused_mask) {
                keep = reinterpret_cast<const uint8_t*>(mask) + b * m_st_[0] + h * m_st_[1] +
                       l * m_st_[2] + s0;
            } else if (mask_kind_ != 0) {
                apply_mask(srow, mask, b, h, l, s0, cols);
            }
            if (causal_) {
                const int64_t first_future = std::max<int64_t>(0, l + 1 - s0);
                for (int64_t j = first_future; j < cols; ++j) srow[j] = neg_inf;
            }
            const float m_old = st.row_max[i];
            float m_new = m_old;
            const float sum =
                attn_amx_softmax_row(srow, cols, keep, m_old, &m_new, st.tiles.a + i * kp);
            if (m_new == neg_inf) continue;  // nothing visible yet in this row
            const float correction = std::exp(m_old - m_new);  // 0 when m_old is -inf
            st.row_sum[i] = st.row_sum[i] * correction + sum;
            st.row_max[i] = m_new;
            if (correction != 1.0f) vec_ops().scale(st.acc + i * st.ld_acc, ev_, correction);
        }
        attn_amx_zero_rows(st.tiles.a, st.rows, cols);
        attn_amx_pv(nullptr, 0, st.rows, cols, vp, v_row, ev_, st.acc, st.ld_acc, st.tiles);
    }

    // Narrows keys [s0 + lo, s0 + hi) to the span some row of the block can see. A decoder's
    // cache is max_length slots of which the mask shows the filled ones: keys outside every
    // row's visible span contribute exp(-inf) = 0, so skipping them is exact.
    void visible_span(const char* mask, int64_t b, int64_t h, int64_t l0, int64_t rows,
                      int64_t s0, int64_t& lo, int64_t& hi) const {
        int64_t first = hi, last = lo - 1;
        const float neg_inf = -std::numeric_limits<float>::infinity();
        // A mask broadcast over the query rows (an encoder's padding mask) is one row.
        const int64_t distinct_rows = m_st_[2] == 0 ? std::min<int64_t>(rows, 1) : rows;
        for (int64_t i = 0; i < distinct_rows; ++i) {
            const int64_t base =
                b * m_st_[0] + h * m_st_[1] + (l0 + i) * m_st_[2] + s0 * m_st_[3];
            auto shows = [&](int64_t j) {
                const int64_t at = base + j * m_st_[3];
                return mask_kind_ == 1 ? reinterpret_cast<const Bool*>(mask)[at] != 0
                                       : reinterpret_cast<const float*>(mask)[at] != neg_inf;
            };
            int64_t j = lo;
            while (j < first && !shows(j)) ++j;
            first = std::min(first, j);
            j = hi - 1;
            while (j > last && !shows(j)) --j;
            last = std::max(last, j);
        }
        lo = first;
        hi = last + 1;
    }

    void apply_mask(float* srow, const char* mask, int64_t b, int64_t h, int64_t l, int64_t s0,
                    int64_t cols) const {
        const int64_t base = b * m_st_[0] + h * m_st_[1] + l * m_st_[2] + s0 * m_st_[3];
        const float neg_inf = -std::numeric_limits<float>::infinity();
        const int64_t step = m_st_[3];
        if (mask_kind_ == 1) {
            const Bool* mk = reinterpret_cast<const Bool*>(mask) + base;
            if (step == 1) {  // the usual layout: a loop the compiler vectorises
                for (int64_t j = 0; j < cols; ++j) srow[j] = mk[j] ? srow[j] : neg_inf;
            } else {
                for (int64_t j = 0; j < cols; ++j) {
                    if (!mk[j * step]) srow[j] = neg_inf;
                }
            }
        } else {
            const float* mk = reinterpret_cast<const float*>(mask) + base;
            if (step == 0 || step == 1) {
                vec_ops().binary(FloatBinary::kAdd, srow, 1, mk, step, srow, cols);
            } else {
                for (int64_t j = 0; j < cols; ++j) srow[j] += mk[j * step];
            }
        }
    }

    int64_t b_, h_, l_, s_, s2_, e_, ev_, group_, lb_, sb_;
    int64_t q_st_[3], k_st_[3], v_st_[3], o_st_[3], m_st_[4], k2_st_[3], v2_st_[3];
    int64_t mask_kind_;
    bool causal_, amx_ = false;
    float scale_;
};

GRAPHOPT_RT_KERNEL("attention", AttentionKernel,
                   "out, q, k, v, mask?, k2?, v2?",
                   "B:dim, H:dim, L:dim, S:dim, E:dim, Ev:dim, kv_group:dim, q_strides[3]:signed, "
                   "k_strides[3]:signed, v_strides[3]:signed, out_strides[3]:signed, "
                   "mask_kind:mode, mask_strides[4]:signed, causal:flag, bf16:flag, S2:dim, "
                   "k2_strides[3]:signed, v2_strides[3]:signed",
                   "scale");

}  // namespace
}  // namespace rt
}  // namespace graphopt
