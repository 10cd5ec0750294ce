/* GPT-Neo attention for heads of size 4, fused: scores, mask, softmax, z = pattern . values and
 * each head's activity, one query row at a time over only the keys that row can see.
 *
 * Why a kernel: with 4-dim heads the arithmetic is tiny and the torch path spends its time
 * writing, re-reading and masking whole [query, key] score matrices (half of them hidden by the
 * causal mask) across five kernels. Here each row is computed once, in cache, and written once.
 *
 * Compiled at first use on the machine that runs it (headscope.runtime.kernel), without
 * -ffast-math: that flag would link code that switches the whole process to flush-to-zero.
 * Its numbers are tested against the torch path and Hugging Face's forward to 1e-5.
 */
#include <stdlib.h>
#include <string.h>

#define D_HEAD 4
#define LANES 8 /* rows are padded to whole AVX vectors, so loops have no scalar tail */

/* exp(x) for x <= 0: Cephes expf's range reduction and polynomial (about 2 ulp), inline so the
 * compiler vectorizes it. Below -87 the result is held at exp(-87) ~ 1.6e-38 instead of going
 * subnormal, an absolute difference far below anything a pattern can show. */
static inline float exp_nonpositive(float x)
{
    x = x < -87.0f ? -87.0f : x;
    const float n = __builtin_rintf(x * 1.44269504088896341f);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int bits; float value; } two_to_n = { .bits = ((int)n + 127) << 23 };
    return p * two_to_n.value;
}

/* For each (batch, head) in [first, end):
 *   qkv      [batch, token, 3, head, D_HEAD]  the fused q/k/v projection, contiguous
 *   z        [batch, token, head, D_HEAD]     written: pattern . values (already "merged" order)
 *   activity [batch, head, token]             written: |z_h . W_O[h-slice]^T|, from the head's
 *                                             Gram matrix gram[head, D_HEAD, D_HEAD] in double
 *   patterns [batch, n_kept, token, token]    written for heads with kept_slot[head] >= 0
 *                                             (may be NULL), zeros where a query cannot see
 * window > 0 limits each query to the last `window` keys (GPT-Neo's local layers).
 * Returns 0, or 1 when scratch memory could not be allocated.
 */
int headscope_attend(const float *qkv, long batch, long length, long heads, long window,
                     long first, long end, const double *gram, float *z, float *activity,
                     float *patterns, const long *kept_slot, long n_kept)
{
    (void)batch;
    const long padded = (length + LANES - 1) / LANES * LANES + LANES;
    float *scratch = aligned_alloc(64, sizeof(float) * (size_t)(9 * padded));
    if (!scratch)
        return 1;
    memset(scratch, 0, sizeof(float) * (size_t)(9 * padded));
    float *restrict k0 = scratch, *restrict k1 = k0 + padded, *restrict k2 = k1 + padded,
                    *restrict k3 = k2 + padded;
    float *restrict v0 = k3 + padded, *restrict v1 = v0 + padded, *restrict v2 = v1 + padded,
                    *restrict v3 = v2 + padded;
    float *restrict row = v3 + padded;
    const long token_stride = 3 * heads * D_HEAD;

    for (long pair = first; pair < end; pair++) {
        const long b = pair / heads, h = pair % heads;
        const float *base = qkv + b * length * token_stride + h * D_HEAD;
        /* Keys and values of this head, transposed so every loop below runs over contiguous keys. */
        for (long t = 0; t < length; t++) {
            const float *key = base + t * token_stride + heads * D_HEAD;
            const float *value = key + heads * D_HEAD;
            k0[t] = key[0], k1[t] = key[1], k2[t] = key[2], k3[t] = key[3];
            v0[t] = value[0], v1[t] = value[1], v2[t] = value[2], v3[t] = value[3];
        }
        const double *g = gram + h * D_HEAD * D_HEAD;
        const long slot = kept_slot ? kept_slot[h] : -1;
        float *pattern = (patterns && slot >= 0) ? patterns + (b * n_kept + slot) * length * length
                                                 : NULL;

        for (long t = 0; t < length; t++) {
            const long lo = (window > 0 && t - window + 1 > 0) ? t - window + 1 : 0;
            const long visible = t - lo + 1;
            const long padded_visible = (visible + LANES - 1) / LANES * LANES;
            const float *query = base + t * token_stride;
            const float q0 = query[0], q1 = query[1], q2 = query[2], q3 = query[3];
            const float *a0 = k0 + lo, *a1 = k1 + lo, *a2 = k2 + lo, *a3 = k3 + lo;

            /* GPT-Neo does not divide scores by sqrt(d_head): the model was trained without it. */
            for (long j = 0; j < padded_visible; j++)
                row[j] = q0 * a0[j] + q1 * a1[j] + q2 * a2[j] + q3 * a3[j];
            float top = row[0];
            for (long j = 1; j < visible; j++)
                top = row[j] > top ? row[j] : top;
            float total = 0.0f;
            for (long j = 0; j < padded_visible; j++) {
                const float e = j < visible ? exp_nonpositive(row[j] - top) : 0.0f;
                row[j] = e;
                total += e;
            }
            const float inverse = 1.0f / total;
            const float *b0 = v0 + lo, *b1 = v1 + lo, *b2 = v2 + lo, *b3 = v3 + lo;
            float z0 = 0.0f, z1 = 0.0f, z2 = 0.0f, z3 = 0.0f;
            for (long j = 0; j < padded_visible; j++) {
                const float p = row[j] * inverse;
                row[j] = p;
                z0 += p * b0[j], z1 += p * b1[j], z2 += p * b2[j], z3 += p * b3[j];
            }
            float *z_out = z + ((b * length + t) * heads + h) * D_HEAD;
            z_out[0] = z0, z_out[1] = z1, z_out[2] = z2, z_out[3] = z3;

            /* |z W_h^T|^2 = z^T (W_h^T W_h) z, in double so small activities keep their digits. */
            const double zd[D_HEAD] = {z0, z1, z2, z3};
            double squared = 0.0;
            for (int i = 0; i < D_HEAD; i++)
                for (int k = 0; k < D_HEAD; k++)
                    squared += zd[i] * g[i * D_HEAD + k] * zd[k];
            activity[(b * heads + h) * length + t] = squared > 0.0 ? (float)__builtin_sqrt(squared)
                                                                   : 0.0f;
            if (pattern) {
                float *full = pattern + t * length;
                memset(full, 0, sizeof(float) * (size_t)lo);
                memcpy(full + lo, row, sizeof(float) * (size_t)visible);
                memset(full + t + 1, 0, sizeof(float) * (size_t)(length - t - 1));
            }
        }
    }
    free(scratch);
    return 0;
}
