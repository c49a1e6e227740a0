// erfc(z) on [0, 4) as eight polynomials, one per interval [i/2, (i+1)/2): the exact (erf)
// gelu's vector form (epilogue_avx2.cpp, epilogue_avx512.cpp), with no exp and no division.
//
//   i = int(2 z),  w = 4 z - (2 i + 1) in [-1, 1),  erfc(z) ~ sum_k kErfcPieces[k][i] w^k
//
// (Horner from k = 7 down, one fused multiply-add per term), and 0 for z >= 4 (erfc(4) =
// 1.5e-8: gelu's 0.5 |x| erfc there is below 4.4e-8). The coefficients are degree-7 Chebyshev
// interpolants of erfc at 200 nodes per interval (numpy chebfit + cheb2poly against
// scipy.special.erfc), rounded to float. Absolute error of the float evaluation over a 2e6-point
// grid of [0, 4.5]: erfc <= 8e-8 (float rounding near erfc = 1), gelu(x < 0) <= 4.4e-8, which is
// relative <= 2e-7 where |gelu| > 5e-3. torch's 0.5 x (1 + erf) cancels to 0 below x ~ -5.5; the
// old exp-based form (t exp(-z^2 + P(t))) kept ~1e-7 relative error in that tail but cost an exp
// and a division per lane: at AMX speeds, BERT's FFN-up epilogue cost three times its tile
// products.
//
// A lane's interval index is looked up in a table of eight floats (one ymm permute; the
// AVX-512 table repeats the eight in its upper half, so indices of 8..15 from lanes with
// z >= 4, infinities or NaN, which are masked afterwards, read the same entries on both ISAs).
#pragma once

namespace graphopt {

inline constexpr float kErfcPieces[8][8] = {
    {0.723673582f, 0.288844377f, 0.0770998746f, 0.0133283287f, 0.00146271673f, 0.00010062191f,
     4.30276987e-06f, 1.13725889e-07f},
    {-0.265003532f, -0.160732761f, -0.0591302812f, -0.0131937489f, -0.00178557984f,
     -0.00014656932f, -7.29725298e-06f, -2.20357208e-07f},
    {0.0165626854f, 0.0301373843f, 0.0184782334f, 0.00577226281f, 0.00100438483f,
     0.000100766716f, 5.92933338e-06f, 2.06629437e-07f},
    {0.00483078882f, -0.000418567972f, -0.00261774822f, -0.00140870921f, -0.000339445513f,
     -4.31309418e-05f, -3.05957224e-06f, -1.24536371e-07f},
    {-0.000495838118f, -0.000588576659f, 2.39532619e-05f, 0.000187912199f, 7.45635043e-05f,
     1.27254316e-05f, 1.11784937e-06f, 5.38492522e-08f},
    {-7.81604176e-05f, 5.19698151e-05f, 4.60806186e-05f, -6.46335275e-06f, -1.04102146e-05f,
     -2.6916905e-06f, -3.06278167e-07f, -1.79004491e-08f},
    {9.60468606e-06f, 6.48994865e-06f, -5.02874445e-06f, -2.2093493e-06f, 6.78604806e-07f,
     4.07190072e-07f, 6.68355611e-08f, 5.05186115e-09f},
    {9.64561195e-07f, -1.09164398e-06f, -2.28583403e-07f, 3.62127651e-07f, 4.40385115e-08f,
     -3.88070909e-08f, -1.05954889e-08f, -1.04643016e-09f},
};

inline constexpr float kErfcPiecesEnd = 4.0f;

}  // namespace graphopt
