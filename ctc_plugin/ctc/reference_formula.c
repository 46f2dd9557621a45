/* The "reference" bias sharing of CTC, one copy and channel at a time, for float32 on a CPU.

   The same arithmetic as ctc_plugin.ctc.fused_sharing.share_factors followed by its multiply-add
   (the spec is ctc_plugin.ctc.sharing.reference_shares), fused into one loop nest: the values
   of one (copy, channel) group are read once from memory, their ratios, logarithms and shares
   stay in a small scratch buffer in the L1 cache, and the shares are added in place.

   Built at run time by ctc_plugin/ctc/native.py with
     -O3 -fno-math-errno -fno-trapping-math -fopenmp-simd -ffp-contract=off
   so that the loops are vectorised (glibc's libmvec gives the vector log10f and exp2f) while
   every multiply, division and rounding is the IEEE float32 operation torch performs (no
   contraction into fused multiply-adds, no reciprocal approximations). */

#include <stdint.h>
#include <string.h>

/* Declared before <math.h> so that the vectoriser may call libmvec's variants (glibc 2.35 or
   later); without them the link fails and the package falls back to torch's operations. */
#pragma omp declare simd notinbranch
float log10f(float);
#pragma omp declare simd notinbranch
float exp2f(float);

#include <math.h>

/* Lanes of the widest vector the scratch buffer is padded to (AVX-512 float32). */
#define LANES 16

/* rho = ceil(1000 |ceil(10 z) / ceil(10 z_F)|) / 1000, with ceil(10 z_F) = +inf where z_F
   quantises to 0 (rho = 0 there), as torch computes it step by step. */
static inline float ratio(float z, float divisor)
{
    return ceilf(fabsf(ceilf(z * 10.0f) * 1000.0f / divisor)) / 1000.0f;
}

/* Adds the reference shares of copies [first_copy, stop_copy) to z, in place.

   z: copy c, channel k, row r, column i at z[c*copy_stride + k*channel_stride + r*row_stride +
   i] (the columns are contiguous), rows of `columns` values.
   boxes: per copy, rows [r0, r1) and columns [c0, c1) outside which the copy is zero (the
   whole map when unknown). Values outside the box are not read: they must be zero, and they
   do not count (the caller passes whole maps when the full copy has exact zeros). Boxes at
   least a third as wide as the map are computed on whole rows where the rows are contiguous
   (the values outside the box are zero and add nothing): one run in place, where a narrower
   box's short rows are first gathered into the scratch buffer and copied back at the end.
   divisor: ceil(10 z_F) of the full copy (+inf where it is 0), channel k, row r, column i at
   divisor[k*divisor_channel_stride + r*divisor_row_stride + i].
   exact_zero: 1 where z_F = 0 and 0 elsewhere, laid out like divisor; NULL when nowhere.
   sigma: the full copy's spread, one per channel (float64).
   bias: bias[c*bias_copy_stride + k*bias_channel_stride] for copy c and channel k.
   scratch: 3 * (the map's area rounded up to LANES) floats, this call's alone. */
__attribute__((target_clones("avx512f", "avx2", "default")))
void ctc_reference_shares_f32(
    float *z, int64_t first_copy, int64_t stop_copy, int64_t channels, int64_t columns,
    int64_t copy_stride, int64_t channel_stride, int64_t row_stride,
    const int64_t *boxes,
    const float *divisor, int64_t divisor_channel_stride, int64_t divisor_row_stride,
    const float *exact_zero,
    const double *sigma,
    const float *bias, int64_t bias_copy_stride, int64_t bias_channel_stride,
    float *scratch)
{
    const double log2_10 = 3.321928094887362;
    for (int64_t copy = first_copy; copy < stop_copy; ++copy) {
        const int64_t *box = boxes + 4 * copy;
        int64_t r0 = box[0], r1 = box[1], c0 = box[2], width = box[3] - box[2];
        if (r1 <= r0 || width <= 0)
            continue; /* an empty box: the copy is zero and gets no share */
        if (!exact_zero && 3 * width >= columns && row_stride == columns
            && divisor_row_stride == columns) {
            c0 = 0; /* whole rows */
            width = columns;
        }
        const int64_t area = (r1 - r0) * width;
        if (width == row_stride && width == divisor_row_stride) {
            /* whole rows: one contiguous run, so that the loops are long enough to vectorise */
            c0 += r0 * width;
            r0 = 0;
            r1 = 1;
            width = area;
        }
        const int64_t padded = (area + LANES - 1) / LANES * LANES;
        const int gathered = r1 - r0 > 1; /* short rows: copied into one run first */
        float *restrict rho = scratch;
        float *restrict share = scratch + padded;
        float *restrict packed = scratch + 2 * padded;
        for (int64_t k = 0; k < channels; ++k) {
            float *values = z + copy * copy_stride + k * channel_stride;
            const float *divisors = divisor + k * divisor_channel_stride;
            /* the box's values and divisors as runs of `area`: in place, or gathered row by
               row (plain copies: the arithmetic below then runs on long vectors) */
            const float *run = values + r0 * row_stride + c0;
            const float *run_divisor = divisors + r0 * divisor_row_stride + c0;
            if (gathered) {
                for (int64_t r = r0, at = 0; r < r1; ++r, at += width) {
                    memcpy(packed + at, values + r * row_stride + c0, width * sizeof(float));
                    memcpy(rho + at, divisors + r * divisor_row_stride + c0,
                           width * sizeof(float));
                }
                run = packed;
                run_divisor = rho;
            }
            /* the units that count: z != 0, or z = 0 where z_F = 0 */
            int nonzero = 0;
#pragma omp simd reduction(+ : nonzero)
            for (int64_t i = 0; i < area; ++i) {
                rho[i] = ratio(run[i], run_divisor[i]); /* in place where gathered */
                nonzero += run[i] * 10.0f != 0.0f;
            }
            double counted = nonzero;
            if (exact_zero) {
                for (int64_t r = r0, at = 0; r < r1; ++r, at += width) {
                    const float *row = values + r * row_stride + c0;
                    const float *row_zero = exact_zero + k * divisor_channel_stride
                                            + r * divisor_row_stride + c0;
                    for (int64_t i = 0; i < width; ++i)
                        counted += row[i] * 10.0f == 0.0f ? row_zero[i] : 0.0f;
                }
            }
            for (int64_t at = area; at < padded; ++at)
                rho[at] = 0.0f; /* padding: log10 of 1, no share */
            /* l = log10 rho (log10 1 = 0 where rho = 0; written as a sum, not a choice, so
               that the compiler does not call log10f on the zeros and select afterwards) */
            double sum = 0.0, sum_of_squares = 0.0;
#pragma omp simd reduction(+ : sum, sum_of_squares)
            for (int64_t i = 0; i < padded; ++i) {
                const float l = log10f(rho[i] + (rho[i] == 0.0f ? 1.0f : 0.0f));
                share[i] = l;
                sum += (double)l;
                sum_of_squares += (double)l * (double)l;
            }
            if (counted < 1.0)
                counted = 1.0;
            const double mean = sum / counted;
            const double variance = sum_of_squares / counted - mean * mean;
            const double spread = variance > 0.0 ? sqrt(variance) : 0.0;
            /* capping: l' = mean + (l - mean) c, c = sigma / spread where spread > sigma */
            const double c = spread > sigma[k] ? sigma[k] / spread : 1.0;
            const float exponent = (float)(c * log2_10);
            const float factor = (float)exp2(mean * (1.0 - c) * log2_10)
                                 * bias[copy * bias_copy_stride + k * bias_channel_stride];
#pragma omp simd
            for (int64_t i = 0; i < padded; ++i)
                share[i] = (rho[i] != 0.0f ? 1.0f : 0.0f) * exp2f(share[i] * exponent);
            if (gathered) { /* the sums in the packed run, copied back row by row */
#pragma omp simd
                for (int64_t i = 0; i < area; ++i)
                    packed[i] = packed[i] + share[i] * factor;
                for (int64_t r = r0, at = 0; r < r1; ++r, at += width)
                    memcpy(values + r * row_stride + c0, packed + at, width * sizeof(float));
            } else {
                float *restrict out = values + r0 * row_stride + c0;
#pragma omp simd
                for (int64_t i = 0; i < area; ++i)
                    out[i] = out[i] + share[i] * factor;
            }
        }
    }
}
