/* The analysis forward pass's small kernels, in C:
 * - headscope_attend: GPT-Neo attention for heads of size 4, fused: scores, mask, softmax,
 *   z = pattern . values and each head's activity, over only the keys each query can see;
 * - headscope_add_layer_norm: the residual add and the LayerNorm after it, in one pass;
 * - headscope_gelu_tanh: GPT-2's tanh-GELU, in place.
 *
 * Why a kernel: with 4-dim heads the arithmetic is tiny and the torch path spends its time
 * writing, re-reading and masking whole [query, key] score matrices (half of them hidden by the
 * causal mask) across five kernels. Here each block of queries is computed once, in cache, and
 * written once. LayerNorm over 64 values and the GELU are likewise a few operations per element
 * that torch spends longer dispatching than computing.
 *
 * Compiled at first use on the machine that runs it (headscope.model.backends.native), without
 * -ffast-math: that flag would link code that switches the whole process to flush-to-zero.
 * Its numbers are tested against the torch path and Hugging Face's forward to 1e-5. Nothing
 * depends on how work is split between threads, so any split gives the same bits.
 *
 * The vectors are GCC/Clang vector extensions, not one instruction set's intrinsics, so the same
 * source builds for AVX2, AVX-512, SSE or NEON (a 256-bit vector becomes two 128-bit ones there).
 */
#include <float.h>
#include <stdlib.h>
#include <string.h>

#define D_HEAD 4
#define LANES 8 /* floats per vector: 256 bits */

typedef float floats __attribute__((vector_size(4 * LANES)));
typedef int ints __attribute__((vector_size(4 * LANES)));
/* The same vector at any float's address (a query's visible keys start anywhere). */
typedef float floats_unaligned __attribute__((vector_size(4 * LANES), aligned(4)));

static inline floats splat(float x)
{
    return (floats){0} + x;
}

static inline floats load(const float *p)
{
    return *(const floats_unaligned *)p;
}

static inline void store(float *p, floats x)
{
    *(floats_unaligned *)p = x;
}

/* Lane by lane: mask ? yes : no (C has no vector ?:). */
static inline floats blend(ints mask, floats yes, floats no)
{
    return (floats)((mask & (ints)yes) | (~mask & (ints)no));
}

/* Written lane by lane so the compiler emits one max instruction (vmaxps) for it. */
static inline floats maximum(floats a, floats b)
{
    floats larger;
    for (int i = 0; i < LANES; i++)
        larger[i] = a[i] > b[i] ? a[i] : b[i];
    return larger;
}

/* Two vectors' lanes picked by index (0-7: a's, 8-15: b's). */
#if defined(__clang__)
#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (ints){__VA_ARGS__})
#endif

/* rows[r][c] -> rows[c][r] for an 8 x 8 block (unpack, shuffle, swap halves, as on AVX). */
static inline void transpose_8x8(floats rows[LANES])
{
    floats pairs[LANES], quads[LANES];
    for (int r = 0; r < LANES; r += 2) {
        pairs[r] = SHUFFLE(rows[r], rows[r + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        pairs[r + 1] = SHUFFLE(rows[r], rows[r + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int r = 0; r < LANES; r += 4) {
        quads[r] = SHUFFLE(pairs[r], pairs[r + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        quads[r + 1] = SHUFFLE(pairs[r], pairs[r + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        quads[r + 2] = SHUFFLE(pairs[r + 1], pairs[r + 3], 0, 1, 8, 9, 4, 5, 12, 13);
        quads[r + 3] = SHUFFLE(pairs[r + 1], pairs[r + 3], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    for (int c = 0; c < 4; c++) {
        rows[c] = SHUFFLE(quads[c], quads[c + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        rows[c + 4] = SHUFFLE(quads[c], quads[c + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
}

/* exp(x) for x <= 0, about 4 ulp: x = n ln 2 + r with |r| <= ln 2 / 2, exp(r) by a degree-6
 * polynomial (a minimax fit, 4e-9 relative), times 2^n built in the exponent bits. Fewer
 * multiply-adds than Cephes' expf (which the FMA units bound here) for the same accuracy: ln 2
 * in one float is enough because r's error (n times 2e-9) only matters where exp(x) is tiny.
 * Below -87 the result is held at exp(-87) ~ 1.6e-38 instead of going subnormal, an absolute
 * difference far below anything a pattern can show. */
static inline floats exp_nonpositive(floats x)
{
    x = maximum(x, splat(-87.0f));
    /* n = the integer nearest x / ln 2: conversion truncates toward zero, and x <= 0, so a half
     * is subtracted first. */
    const ints n = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, ints);
    const floats r = x - __builtin_convertvector(n, floats) * 0.693147180559945309f;
    floats p = splat(1.3879414182e-03f);
    p = p * r + 8.3694048226e-03f;
    p = p * r + 4.1667249054e-02f;
    p = p * r + 1.6666515172e-01f;
    p = p * r + 4.9999997020e-01f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return p * (floats)((n + 127) << 23);
}

/* One block of LANES consecutive queries (one per vector lane) against keys [from, to] of one
 * head: pass 1 writes the scores to `scores` ([key - first, lane]) and raises `top`, the lanes'
 * running maxima. GPT-Neo does not divide scores by sqrt(d_head): the model was trained without
 * it. `masked`: some lane cannot see some key here (the causal diagonal, a local window's far
 * edge), so each key is checked against each lane's range [lane_lo, lane_t]. */
static inline void score_keys(const float *keys, long from, long to, long first,
                              const floats q[D_HEAD], float *scores, floats *top, int masked,
                              ints lane_lo, ints lane_t)
{
    for (long j = from; j <= to; j++) {
        const float *key = keys + j * D_HEAD;
        floats s = q[0] * key[0] + q[1] * key[1] + q[2] * key[2] + q[3] * key[3];
        if (masked) {
            const ints key_index = (ints){0} + (int)j;
            s = blend((key_index >= lane_lo) & (key_index <= lane_t), s, splat(-FLT_MAX));
        }
        *(floats *)(scores + (j - first) * LANES) = s;
        *top = maximum(*top, s);
    }
}

/* Pass 2 over the same keys: e = exp(score - top) (0 where a lane cannot see the key), in place
 * of the scores. A loop of its own: exp's long dependency chains overlap best that way. */
static inline void exp_keys(long from, long to, long first, float *scores, floats top, int masked,
                            ints lane_lo, ints lane_t)
{
    for (long j = from; j <= to; j++) {
        float *score = scores + (j - first) * LANES;
        floats e = exp_nonpositive(*(floats *)score - top);
        if (masked) {
            const ints key_index = (ints){0} + (int)j;
            e = blend((key_index >= lane_lo) & (key_index <= lane_t), e, (floats){0});
        }
        *(floats *)score = e;
    }
}

/* Pass 3: total = sum e and z = sum e . value over keys [first, last], even and odd keys in
 * separate sums (two dependency chains instead of one), added at the end. */
static inline void mix_keys(const float *values, long first, long last, const float *scores,
                            floats *total, floats z[D_HEAD])
{
    floats total_odd = {0}, z_odd[D_HEAD] = {{0}};
    long j = first;
    for (; j + 1 <= last; j += 2) {
        const floats e = *(const floats *)(scores + (j - first) * LANES);
        const floats f = *(const floats *)(scores + (j + 1 - first) * LANES);
        const float *value = values + j * D_HEAD, *next = value + D_HEAD;
        *total += e, total_odd += f;
        for (int d = 0; d < D_HEAD; d++) {
            z[d] += e * value[d];
            z_odd[d] += f * next[d];
        }
    }
    if (j <= last) {
        const floats e = *(const floats *)(scores + (j - first) * LANES);
        const float *value = values + j * D_HEAD;
        *total += e;
        for (int d = 0; d < D_HEAD; d++)
            z[d] += e * value[d];
    }
    *total += total_odd;
    for (int d = 0; d < D_HEAD; d++)
        z[d] += z_odd[d];
}

/* For each (batch, head) in [first, end):
 *   qkv      [batch, token, 3, head, D_HEAD]  the fused q/k/v projection, contiguous
 *   z        [batch, token, head, D_HEAD]     written: pattern . values (already "merged" order)
 *   activity [batch, head, token]             written: |z_h . W_O[h-slice]^T|, from the head's
 *                                             Gram matrix gram[head, D_HEAD, D_HEAD] in double
 *                                             (checked against headscope.model.activity at load)
 *   patterns [batch, n_kept, token, token]    written for heads with kept_slot[head] >= 0
 *                                             (may be NULL), zeros where a query cannot see
 * window > 0 limits each query to the last `window` keys (GPT-Neo's local layers).
 * Returns 0, or 1 when scratch memory could not be allocated.
 *
 * Queries go LANES at a time, one per vector lane, over the keys the block can see, in three
 * short passes (scores and their maximum; exp; sums): no horizontal sums or per-row bookkeeping,
 * one division normalises LANES rows, and z is divided by the total once instead of every weight.
 */
int headscope_attend(const float *qkv, long batch, long length, long heads, long window,
                     long first, long end, const double *gram, float *z, float *activity,
                     float *patterns, const long *kept_slot, long n_kept)
{
    (void)batch;
    const long padded = (length + LANES - 1) / LANES * LANES;
    /* scores: [key, lane], with room for a whole 8 x 8 block past the last key; then z of each
     * component, [token]; then the head's keys and values, [token, D_HEAD] each. */
    const size_t n_floats = (size_t)((padded + LANES) * LANES + 3 * D_HEAD * padded);
    float *scratch = aligned_alloc(64, sizeof(float) * n_floats);
    if (!scratch)
        return 1;
    memset(scratch, 0, sizeof(float) * n_floats);
    float *restrict scores = scratch;
    float *restrict zt[D_HEAD];
    for (int d = 0; d < D_HEAD; d++)
        zt[d] = scratch + (padded + LANES) * LANES + d * padded;
    float *restrict keys = zt[D_HEAD - 1] + padded, *restrict values = keys + D_HEAD * padded;
    const long token_stride = 3 * heads * D_HEAD;
    ints lane;
    for (int i = 0; i < LANES; i++)
        lane[i] = i;

    for (long pair = first; pair < end; pair++) {
        const long b = pair / heads, h = pair % heads;
        /* This head's keys and values packed by token: the passes below then read them from
         * L1, not one cache line of qkv per token. */
        const float *queries = qkv + b * length * token_stride + h * D_HEAD;
        for (long t = 0; t < length; t++)
            for (int d = 0; d < D_HEAD; d++) {
                keys[t * D_HEAD + d] = queries[t * token_stride + heads * D_HEAD + d];
                values[t * D_HEAD + d] = queries[t * token_stride + 2 * heads * D_HEAD + d];
            }
        const long slot = kept_slot ? kept_slot[h] : -1;
        float *pattern = (patterns && slot >= 0) ? patterns + (b * n_kept + slot) * length * length
                                                 : NULL;

        for (long t0 = 0; t0 < length; t0 += LANES) {
            /* Lanes past the last token compute with a zero query and are never written. */
            const long n_rows = length - t0 < LANES ? length - t0 : LANES;
            floats q[D_HEAD] = {{0}};
            for (long i = 0; i < n_rows; i++)
                for (int d = 0; d < D_HEAD; d++)
                    q[d][i] = queries[(t0 + i) * token_stride + d];
            const ints lane_t = lane + (int)t0;
            const ints lane_lo = window > 0 ? lane_t - (int)(window - 1) : (ints){0};
            /* Keys [key_first, key_last] reach some lane; [all_from, all_to] reach every lane. */
            const long key_last = t0 + n_rows - 1;
            const long key_first = window > 0 && t0 - window + 1 > 0 ? t0 - window + 1 : 0;
            long all_from = window > 0 && t0 + LANES - window > 0 ? t0 + LANES - window : 0;
            long all_to = t0;
            if (all_from > all_to) /* a window narrower than a block: check every key */
                all_from = t0 + 1, all_to = t0;

            floats top = splat(-FLT_MAX);
            score_keys(keys, key_first, all_from - 1, key_first, q, scores, &top, 1, lane_lo,
                       lane_t);
            score_keys(keys, all_from, all_to, key_first, q, scores, &top, 0, lane_lo, lane_t);
            score_keys(keys, all_to + 1, key_last, key_first, q, scores, &top, 1, lane_lo, lane_t);
            exp_keys(key_first, all_from - 1, key_first, scores, top, 1, lane_lo, lane_t);
            exp_keys(all_from, all_to, key_first, scores, top, 0, lane_lo, lane_t);
            exp_keys(all_to + 1, key_last, key_first, scores, top, 1, lane_lo, lane_t);
            floats total = {0}, y[D_HEAD] = {{0}};
            mix_keys(values, key_first, key_last, scores, &total, y);
            /* A real row's total is at least 1 (its top weight is exp(0)); the floor only keeps
             * an unused lane of a narrow window, which can see no key, from dividing by 0. */
            const floats inverse = 1.0f / maximum(total, splat(FLT_MIN));
            for (int d = 0; d < D_HEAD; d++)
                *(floats *)(zt[d] + t0) = y[d] * inverse;

            if (pattern) {
                /* Rows t0.. of the pattern from the [key, lane] weights, 8 keys at a time through
                 * a transpose; keys a row cannot see already hold exact zeros. */
                for (long i = 0; i < n_rows; i++) {
                    float *out = pattern + (t0 + i) * length;
                    memset(out, 0, sizeof(float) * (size_t)key_first);
                    memset(out + key_last + 1, 0, sizeof(float) * (size_t)(length - key_last - 1));
                }
                for (long k = key_first; k <= key_last; k += LANES) {
                    floats block[LANES];
                    for (int m = 0; m < LANES; m++)
                        block[m] = *(const floats *)(scores + (k - key_first + m) * LANES);
                    transpose_8x8(block);
                    const long n_keys = key_last - k + 1 < LANES ? key_last - k + 1 : LANES;
                    for (long i = 0; i < n_rows; i++) {
                        const floats row = block[i] * inverse[i];
                        float *out = pattern + (t0 + i) * length + k;
                        if (n_keys == LANES)
                            store(out, row);
                        else
                            memcpy(out, &row, sizeof(float) * (size_t)n_keys);
                    }
                }
            }
        }

        float *head_z = z + (b * length * heads + h) * D_HEAD;
        for (long t = 0; t < length; t++)
            for (int d = 0; d < D_HEAD; d++)
                head_z[t * heads * D_HEAD + d] = zt[d][t];

        /* |z W_h^T|^2 = z^T (W_h^T W_h) z, in double so small activities keep their digits; the
         * Gram matrix is symmetric, so each off-diagonal pair counts twice. One vectorised pass
         * over the head's tokens. */
        const double *g = gram + h * D_HEAD * D_HEAD;
        const double g00 = g[0], g11 = g[5], g22 = g[10], g33 = g[15];
        const double g01 = g[1] + g[4], g02 = g[2] + g[8], g03 = g[3] + g[12];
        const double g12 = g[6] + g[9], g13 = g[7] + g[13], g23 = g[11] + g[14];
        float *head_activity = activity + (b * heads + h) * length;
        for (long t = 0; t < length; t++) {
            const double x0 = zt[0][t], x1 = zt[1][t], x2 = zt[2][t], x3 = zt[3][t];
            const double squared = x0 * (g00 * x0 + g01 * x1 + g02 * x2 + g03 * x3) +
                                   x1 * (g11 * x1 + g12 * x2 + g13 * x3) +
                                   x2 * (g22 * x2 + g23 * x3) + g33 * x3 * x3;
            head_activity[t] = squared > 0.0 ? (float)__builtin_sqrt(squared) : 0.0f;
        }
    }
    free(scratch);
    return 0;
}

/* For each row in [first, end) of hidden [rows, width]: hidden += addend (when addend is not
 * NULL; the residual stream, updated in place), then out = LayerNorm(hidden) as torch computes
 * it: biased variance, (x - mean) / sqrt(var + eps) * gamma + beta. The mean and variance are
 * accumulated in double (cheap for a few dozen values), so they are exact to float rounding. */
void headscope_add_layer_norm(float *hidden, const float *addend, long first, long end,
                              long width, const float *gamma, const float *beta, double eps,
                              float *out)
{
    for (long r = first; r < end; r++) {
        float *restrict x = hidden + r * width;
        float *restrict y = out + r * width;
        if (addend) {
            const float *restrict a = addend + r * width;
            for (long i = 0; i < width; i++)
                x[i] += a[i];
        }
        double sum = 0.0;
        for (long i = 0; i < width; i++)
            sum += x[i];
        const double mean = sum / (double)width;
        double squares = 0.0;
        for (long i = 0; i < width; i++) {
            const double centred = x[i] - mean;
            squares += centred * centred;
        }
        const double inverse_std = 1.0 / __builtin_sqrt(squares / (double)width + eps);
        const float scale = (float)inverse_std, shift = (float)(-mean * inverse_std);
        for (long i = 0; i < width; i++)
            y[i] = (x[i] * scale + shift) * gamma[i] + beta[i];
    }
}

/* x <- x . sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3), over x[first:end], in place: GPT-2's
 * tanh-GELU 0.5 x (1 + tanh(u)), since 0.5 (1 + tanh(u)) = sigmoid(2u). The sigmoid is taken from
 * e = exp(-2|u|) <= 1, which cannot overflow: 1 / (1 + e) for u >= 0, e / (1 + e) below (u has
 * the sign of x). Past |x| = 10 the result is x itself (sigmoid rounds to 1) or 0 (it is below
 * 1e-37), and x^3 is taken of the clamped value, so no input makes an inf or NaN.
 * Three short loops over a block (exp's argument, exp, the product) instead of one long one: the
 * core overlaps the blocks' independent exp chains far better that way. */
#define GELU_BLOCK 512

static inline floats gelu_exponent(floats x)
{
    const floats clamped = maximum(splat(-10.0f), blend(x > 10.0f, splat(10.0f), x));
    const floats u = 0.7978845608028654f * (clamped + 0.044715f * clamped * clamped * clamped);
    return -2.0f * blend(u >= 0.0f, u, -u); /* -2|u| */
}

static inline floats gelu_from(floats x, floats e)
{
    const floats result = x * blend(x >= 0.0f, splat(1.0f), e) / (1.0f + e);
    return blend(x < -10.0f, (floats){0}, result);
}

static void gelu_block(float *x, long count)
{
    floats e[GELU_BLOCK / LANES];
    const long n = (count + LANES - 1) / LANES;
    for (long v = 0; v < n; v++)
        e[v] = gelu_exponent(load(x + v * LANES));
    for (long v = 0; v < n; v++)
        e[v] = exp_nonpositive(e[v]);
    for (long v = 0; v < n; v++)
        store(x + v * LANES, gelu_from(load(x + v * LANES), e[v]));
}

void headscope_gelu_tanh(float *x, long first, long end)
{
    long i = first;
    for (; i + GELU_BLOCK <= end; i += GELU_BLOCK)
        gelu_block(x + i, GELU_BLOCK);
    long whole = (end - i) / LANES * LANES;
    if (whole)
        gelu_block(x + i, whole);
    i += whole;
    if (i < end) {
        floats tail = {0};
        memcpy(&tail, x + i, sizeof(float) * (size_t)(end - i));
        tail = gelu_from(tail, exp_nonpositive(gelu_exponent(tail)));
        memcpy(x + i, &tail, sizeof(float) * (size_t)(end - i));
    }
}

/* -- one whole transformer block in one call ------------------------------------------------ */

/* The Fortran BLAS sgemm (column-major; every argument by pointer, 32-bit integers): the one
 * torch itself calls, handed over by address (headscope.model.backends.native), so the GEMMs give
 * torch's bits without a torch call per GEMM. */
typedef void (*sgemm_function)(const char *transa, const char *transb, const int *m, const int *n,
                               const int *k, const float *alpha, const float *a, const int *lda,
                               const float *b, const int *ldb, const float *beta, float *c,
                               const int *ldc);

/* out[rows, n] = x[rows, k] . weight[n, k]^T (+ bias[n]), as torch.addmm(bias, x, weight.T):
 * the bias is copied into out first and the product added to it (beta = 1). In column-major
 * terms: out^T [n, rows] = weight [n, k] . x^T [k, rows]. */
static void linear(sgemm_function sgemm, const float *x, long rows, long k, const float *weight,
                   long n, const float *bias, float *out)
{
    float beta = 0.0f;
    if (bias) {
        for (long r = 0; r < rows; r++)
            memcpy(out + r * n, bias, sizeof(float) * (size_t)n);
        beta = 1.0f;
    }
    const float alpha = 1.0f;
    const int m_ = (int)n, n_ = (int)rows, k_ = (int)k;
    sgemm("T", "N", &m_, &n_, &k_, &alpha, weight, &k_, x, &k_, &beta, out, &m_);
}

/* A block's weights ([out, in] as stored by torch) and shape. */
struct headscope_block {
    const float *ln_1_weight, *ln_1_bias, *ln_2_weight, *ln_2_bias;
    const float *qkv, *out, *out_bias, *fc, *fc_bias, *proj, *proj_bias;
    const double *gram; /* [head, D_HEAD, D_HEAD]: see headscope_attend */
    double eps;
    long d_model, d_mlp, heads, window;
};

/* One GPT-Neo block over rows = batch * length tokens, the same steps as the engine's per-op
 * kernel path (and so the same bits):
 *   hidden += pending (the previous block's MLP output; may be NULL); normed = ln_1(hidden)
 *   qkv = normed . W_qkv^T; attention (headscope_attend) -> z, activity, patterns
 *   attention_output = z . W_O^T + b_O
 *   unless last: hidden += attention_output; normed = ln_2(hidden);
 *                inner = gelu(normed . W_fc^T + b_fc); mlp = inner . W_proj^T + b_proj
 * Buffers: normed, mlp [rows, d_model]; qkv [rows, 3 d_model]; z, attention_output
 * [rows, d_model]; inner [rows, d_mlp]. pending may be mlp itself: it is read before mlp is
 * written. Returns headscope_attend's status. */
int headscope_block_forward(sgemm_function sgemm, const struct headscope_block *block, long batch,
                            long length, float *hidden, const float *pending, float *normed,
                            float *qkv, float *z, float *attention_output, float *inner,
                            float *mlp, float *activity, float *patterns, const long *kept_slot,
                            long n_kept, int last)
{
    const long rows = batch * length, d = block->d_model;
    headscope_add_layer_norm(hidden, pending, 0, rows, d, block->ln_1_weight, block->ln_1_bias,
                             block->eps, normed);
    linear(sgemm, normed, rows, d, block->qkv, 3 * d, NULL, qkv);
    const int status = headscope_attend(qkv, batch, length, block->heads, block->window, 0,
                                        batch * block->heads, block->gram, z, activity, patterns,
                                        kept_slot, n_kept);
    if (status)
        return status;
    linear(sgemm, z, rows, d, block->out, d, block->out_bias, attention_output);
    if (last)
        return 0;
    headscope_add_layer_norm(hidden, attention_output, 0, rows, d, block->ln_2_weight,
                             block->ln_2_bias, block->eps, normed);
    linear(sgemm, normed, rows, d, block->fc, block->d_mlp, block->fc_bias, inner);
    headscope_gelu_tanh(inner, 0, rows * block->d_mlp);
    linear(sgemm, inner, rows, block->d_mlp, block->proj, d, block->proj_bias, mlp);
    return 0;
}
