// SPLADE's screen on Intel AMX (bf16) or on AVX512-VNNI (int8): out[d, v] = max over document d's tokens t of the
// low-precision logit of t and v (AMX: sum_k tokens[t, k] * weight[v, k], bf16 products accumulated in fp32),
// plus bias[v] and the screen's error bound, fixed[v] + scale_a[d] * slack_a[v] + scale_b[d] * slack_b[v]. Each
// 32 tokens x 32 terms of logits are max-pooled as they leave the tile registers (or the vector registers), so
// the [tokens x vocabulary] logits never reach memory. The kernel also names, for each (d, v), the one block of
// 32 tokens that must hold the exact maximum, where the bound proves it (blocks[d, v], else -1). Its candidates'
// exact fp32 recheck is here too (`max_dots`, AVX-512), over that block alone where there is one. Built by
// screen_kernels.py (with -DWITHOUT_AMX, and without the AMX code, by a compiler that knows no AMX); see there
// for the layouts.
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

// Below this largest magnitude a token's squared entries could underflow (more so under flush-to-zero), so its fp32
// norms could read 0 and the bound with them: such a token's document gets infinite norms (all its pairs rechecked).
#define SMALLEST_MAGNITUDE 0x1p-50f

#ifndef WITHOUT_AMX
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

// Linux hands out AMX state only to a process that asks for it (once, for all its threads); 0 when granted.
int amx_request(void) { return (int)syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); }

typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t bytes_per_row[16];
    uint8_t rows[16];
} tile_config;

// Tiles 0-1: 16 tokens x 32 hidden each; 2-3: 32 hidden x 16 terms each (VNNI pairs); 4-7: the 2 x 2 fp32 results.
static void configure_tiles(void) {
    tile_config config;
    memset(&config, 0, sizeof config);
    config.palette_id = 1;
    for (int tile = 0; tile < 8; tile++) {
        config.rows[tile] = 16;
        config.bytes_per_row[tile] = 64;
    }
    _tile_loadconfig(&config);
}
#endif

// For 16 terms: the largest and second largest of the block maxima seen so far, and the block of the largest.
typedef struct {
    __m512 best, second;
    __m512i block;
} block_maxima;

static inline block_maxima no_block(void) {
    return (block_maxima){_mm512_set1_ps(-INFINITY), _mm512_set1_ps(-INFINITY), _mm512_set1_epi32(-1)};
}

// A NaN maximum propagates to best (as a max would), and its block is never named (the test below fails).
static inline void add_block(block_maxima *maxima, __m512 maximum, int32_t block) {
    const __mmask16 above = _mm512_cmp_ps_mask(maximum, maxima->best, _CMP_GT_OQ);
    maxima->second = _mm512_max_ps(maxima->second, _mm512_min_ps(maximum, maxima->best));
    maxima->block = _mm512_mask_set1_epi32(maxima->block, above, block);
    maxima->best = _mm512_max_ps(maxima->best, maximum);
}

#ifndef WITHOUT_AMX
// The max over a block's 32 tokens of its stored logits (4 tiles: 2 x 16 tokens by 2 x 16 terms), added to
// the block maxima of its 2 x 16 terms.
static inline void max_pool_block(float (*stored)[16][16], int32_t block, block_maxima *low, block_maxima *high) {
    __m512 max0 = _mm512_max_ps(_mm512_load_ps(stored[0][0]), _mm512_load_ps(stored[1][0]));
    __m512 max1 = _mm512_max_ps(_mm512_load_ps(stored[2][0]), _mm512_load_ps(stored[3][0]));
    for (int row = 1; row < 16; row++) {
        max0 = _mm512_max_ps(max0, _mm512_max_ps(_mm512_load_ps(stored[0][row]), _mm512_load_ps(stored[1][row])));
        max1 = _mm512_max_ps(max1, _mm512_max_ps(_mm512_load_ps(stored[2][row]), _mm512_load_ps(stored[3][row])));
    }
    add_block(low, max0, block);
    add_block(high, max1, block);
}
#endif

// out = best + bias + bound for 16 terms; blocks = the block of the best where no other block's maximum can
// reach it: every exact logit is within `bound` of its screened one, so best - second > 2 bound means the
// exact maximum lies in that block. NaN or infinite bounds name none.
static inline void store_maxima(const block_maxima *maxima, __m512 bias, __m512 bound, float *out, int16_t *blocks) {
    const __mmask16 alone = _mm512_cmp_ps_mask(_mm512_sub_ps(maxima->best, maxima->second), _mm512_add_ps(bound, bound),
                                               _CMP_GT_OQ);
    _mm512_storeu_ps(out, _mm512_add_ps(_mm512_add_ps(maxima->best, bias), bound));
    _mm256_storeu_si256((__m256i *)blocks,
                        _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(_mm512_set1_epi32(-1), alone, maxima->block)));
}

// What the screen adds to each maximum (bias[v] + fixed[v] + scale_a[d] * slack_a[v] + scale_b[d] * slack_b[v]), and
// where it writes: out and blocks [documents, vocabulary], rows out_stride apart.
typedef struct {
    const float *bias, *fixed, *slack_a, *slack_b, *scale_a, *scale_b;
    float *out;
    int16_t *blocks;
    int64_t out_stride;
} screen_output;

// The 2 x 16 terms from `term` of `document`: their bounds added, stored.
static inline void store_group(const screen_output *to, int64_t document, int64_t term, const block_maxima *low,
                               const block_maxima *high) {
    const __m512 a = _mm512_set1_ps(to->scale_a[document]), b = _mm512_set1_ps(to->scale_b[document]);
    const int64_t at = document * to->out_stride + term;
    for (int half = 0; half < 2; half++) {
        const int64_t v = term + 16 * half;
        const __m512 bound = _mm512_fmadd_ps(b, _mm512_loadu_ps(to->slack_b + v),
                                             _mm512_fmadd_ps(a, _mm512_loadu_ps(to->slack_a + v), _mm512_loadu_ps(to->fixed + v)));
        store_maxima(half ? high : low, _mm512_loadu_ps(to->bias + v), bound, to->out + at + 16 * half,
                     to->blocks + at + 16 * half);
    }
}

#ifndef WITHOUT_AMX
// One thread's share on AMX: columns [first_term, last_term) of out, multiples of 32, in blocks of block_terms
// terms whose weights stay in the core's L2 while every document passes. The logits of 32 tokens are stored
// in one half of `results` and max-pooled once the next 32 tokens' products are under way (~10 % faster
// than waiting for the tiles).
static void amx_max_pool_terms(const uint16_t *tokens, const uint16_t *packed, const screen_output *to,
                               int64_t documents, int64_t length, int64_t hidden, int64_t first_term, int64_t last_term,
                               int64_t block_terms) {
    const int64_t chunks = hidden / 32, weight_tile = 16 * 32, row_bytes = hidden * 2;
    float results[2][4][16][16] __attribute__((aligned(64)));
    for (int64_t block = first_term; block < last_term; block += block_terms) {
        const int64_t block_end = block + block_terms < last_term ? block + block_terms : last_term;
        for (int64_t document = 0; document < documents; document++) {
            const uint16_t *first_token = tokens + document * length * hidden;
            for (int64_t term = block; term < block_end; term += 32) {
                const uint16_t *weight0 = packed + (term / 16) * chunks * weight_tile;
                const uint16_t *weight1 = weight0 + chunks * weight_tile;
                block_maxima low = no_block(), high = no_block();
                for (int64_t token = 0; token < length; token += 32) {
                    const uint16_t *rows = first_token + token * hidden;
                    _tile_zero(4);
                    _tile_zero(5);
                    _tile_zero(6);
                    _tile_zero(7);
                    for (int64_t chunk = 0; chunk < chunks; chunk++) {
                        _tile_loadd(0, rows + chunk * 32, row_bytes);
                        _tile_loadd(1, rows + 16 * hidden + chunk * 32, row_bytes);
                        _tile_loadd(2, weight0 + chunk * weight_tile, 64);
                        _tile_loadd(3, weight1 + chunk * weight_tile, 64);
                        _tile_dpbf16ps(4, 0, 2);
                        _tile_dpbf16ps(5, 1, 2);
                        _tile_dpbf16ps(6, 0, 3);
                        _tile_dpbf16ps(7, 1, 3);
                    }
                    if (token > 0) max_pool_block(results[(token / 32 + 1) % 2], token / 32 - 1, &low, &high);  // the previous block
                    float (*stored)[16][16] = results[token / 32 % 2];
                    _tile_stored(4, stored[0], 64);
                    _tile_stored(5, stored[1], 64);
                    _tile_stored(6, stored[2], 64);
                    _tile_stored(7, stored[3], 64);
                }
                if (length > 0) max_pool_block(results[(length / 32 + 1) % 2], length / 32 - 1, &low, &high);  // the last block
                store_group(to, document, term, &low, &high);
            }
        }
    }
}

// tokens: [documents * length, hidden] bf16, row-major; length and hidden multiples of 32.
// packed: the weight as [vocabulary / 16][hidden / 32][16 pairs][16 terms][2] bf16 (AMX's VNNI layout),
// vocabulary a multiple of 32. bias, fixed, slack_*: [vocabulary]; scale_*: [documents]; out: [documents, vocabulary]
// fp32; blocks: [documents, vocabulary] int16. The terms are shared among OpenMP's threads: torch's own pool when
// torch's libgomp is loaded first. The process must have been granted AMX state (amx_request).
void amx_max_pool(const uint16_t *tokens, const uint16_t *packed, const float *bias, const float *fixed, const float *slack_a,
                  const float *slack_b, const float *scale_a, const float *scale_b, float *out, int16_t *blocks,
                  int64_t documents, int64_t length, int64_t hidden, int64_t vocabulary, int64_t block_terms) {
    const screen_output to = {bias, fixed, slack_a, slack_b, scale_a, scale_b, out, blocks, vocabulary};
#pragma omp parallel
    {
        const int64_t groups = vocabulary / 32, threads = omp_get_num_threads(), thread = omp_get_thread_num();
        configure_tiles();
        amx_max_pool_terms(tokens, packed, &to, documents, length, hidden, groups * thread / threads * 32,
                           groups * (thread + 1) / threads * 32, block_terms);
        _tile_release();
    }
}
#endif

// The screen in int8 on AVX512-VNNI, for a CPU without AMX (AMD Zen 4 and later; Intel Cascade Lake to Ice Lake):
// each token t is q_t * s_t (q_t int8, s_t = max |h_t| / 127, per token) and each term v is q_v * s_v, so a logit is
// s_t * s_v * (q_t . q_v), whose integer dot product is exact (vpdpbusd: 64 byte products a cycle, twice bf16's).
// vpdpbusd multiplies unsigned bytes by signed ones: the terms are stored as q_v + 128, and each token's sums start at
// -128 * sum(q_t) (its `offset`), which takes the 128s out again. 8 tokens x 32 terms of int32 sums stay in 16
// registers while the hidden entries run 4 at a time; each sum is then scaled by its token's s_t and max-pooled, and
// the block's maxima by the terms' s_v. The weights of 32 terms (4 KB at hidden 128) stay in L1 while a document's
// tokens pass.
#define VNNI_TOKENS 8
typedef int32_t __attribute__((may_alias)) quad;  // 4 bytes of int8 tokens or uint8 weights, read as one

// The max over 32 tokens (rows of `quads` 4-byte groups; their scales and offsets) of their scaled logits with 32
// terms (weight0, weight1: 16 each), into maxima[0..32). Not inlined: the caller's block maxima would take
// registers the 16 sums need.
static __attribute__((noinline)) void vnni_max_of_block(const quad *rows, const float *scales, const int32_t *offsets,
                                                         const quad *weight0, const quad *weight1, int64_t quads,
                                                         float *maxima) {
    __m512 max0 = _mm512_set1_ps(-INFINITY), max1 = _mm512_set1_ps(-INFINITY);
    for (int64_t row = 0; row < 32; row += VNNI_TOKENS) {
        const quad *first = rows + row * quads;
        __m512i sums[VNNI_TOKENS][2];
#pragma GCC unroll 8
        for (int r = 0; r < VNNI_TOKENS; r++) sums[r][0] = sums[r][1] = _mm512_set1_epi32(offsets[row + r]);
        for (int64_t group = 0; group < quads; group++) {  // hidden entries 4 * group to 4 * group + 3
            const __m512i w0 = _mm512_loadu_si512(weight0 + group * 16), w1 = _mm512_loadu_si512(weight1 + group * 16);
#pragma GCC unroll 8
            for (int r = 0; r < VNNI_TOKENS; r++) {
                const __m512i h = _mm512_set1_epi32(first[r * quads + group]);
                sums[r][0] = _mm512_dpbusd_epi32(sums[r][0], w0, h);
                sums[r][1] = _mm512_dpbusd_epi32(sums[r][1], w1, h);
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < VNNI_TOKENS; r++) {
            const __m512 scale = _mm512_set1_ps(scales[row + r]);
            max0 = _mm512_max_ps(max0, _mm512_mul_ps(_mm512_cvtepi32_ps(sums[r][0]), scale));
            max1 = _mm512_max_ps(max1, _mm512_mul_ps(_mm512_cvtepi32_ps(sums[r][1]), scale));
        }
    }
    _mm512_storeu_ps(maxima, max0);
    _mm512_storeu_ps(maxima + 16, max1);
}

// tokens: [documents * length, hidden] int8 and their scales and offsets [documents * length] (`quantized_with_norms`);
// length and hidden multiples of 32. packed: the weight's q_v + 128 as [vocabulary / 16][hidden / 4][16 terms][4]
// uint8, term_scales [vocabulary], vocabulary a multiple of 32; the rest as amx_max_pool's.
void vnni_max_pool(const int8_t *tokens, const float *token_scales, const int32_t *token_offsets, const uint8_t *packed,
                   const float *term_scales, const float *bias, const float *fixed, const float *slack_a,
                   const float *slack_b, const float *scale_a, const float *scale_b, float *out, int16_t *blocks,
                   int64_t documents, int64_t length, int64_t hidden, int64_t vocabulary, int64_t block_terms) {
    const screen_output to = {bias, fixed, slack_a, slack_b, scale_a, scale_b, out, blocks, vocabulary};
    const int64_t quads = hidden / 4;
#pragma omp parallel
    {
        const int64_t groups = vocabulary / 32, threads = omp_get_num_threads(), thread = omp_get_thread_num();
        const int64_t first_term = groups * thread / threads * 32, last_term = groups * (thread + 1) / threads * 32;
        float maxima[32] __attribute__((aligned(64)));
        for (int64_t block = first_term; block < last_term; block += block_terms) {
            const int64_t block_end = block + block_terms < last_term ? block + block_terms : last_term;
            for (int64_t document = 0; document < documents; document++) {
                const quad *first_token = (const quad *)(tokens + document * length * hidden);
                for (int64_t term = block; term < block_end; term += 32) {
                    const quad *weight0 = (const quad *)(packed + term * hidden);
                    const __m512 scale0 = _mm512_loadu_ps(term_scales + term), scale1 = _mm512_loadu_ps(term_scales + term + 16);
                    block_maxima low = no_block(), high = no_block();
                    for (int64_t token = 0; token < length; token += 32) {
                        const int64_t at = document * length + token;
                        vnni_max_of_block(first_token + token * quads, token_scales + at, token_offsets + at, weight0,
                                          weight0 + quads * 16, quads, maxima);
                        add_block(&low, _mm512_mul_ps(_mm512_load_ps(maxima), scale0), token / 32);
                        add_block(&high, _mm512_mul_ps(_mm512_load_ps(maxima + 16), scale1), token / 32);
                    }
                    store_group(&to, document, term, &low, &high);
                }
            }
        }
    }
}

// The int8 screen's inputs in one pass over fp32 states [documents, length, hidden]: per token, s = max |x| / 127,
// q = x / s rounded to nearest (even) and kept within +-127, into tokens [documents * length, padded_hidden] (zeros
// beyond hidden), scales and offsets (-128 * sum(q)); per document the largest token norm of states, of the
// residual states - s * q, and of s * q (norms [documents, 3]; NaN where a token's norm is NaN, infinite where
// one is or where a token's largest magnitude is below SMALLEST_MAGNITUDE, but not 0). 16 entries per step (16x
// the scalar loop on SciFact's states: 0.16 to 0.01 s per 1,000 documents on a 2-core AMD EPYC).
void quantized_with_norms(const float *states, int8_t *tokens, float *scales, int32_t *offsets, float *norms,
                          int64_t documents, int64_t length, int64_t hidden, int64_t padded_hidden) {
    const __m512 most = _mm512_set1_ps(127.0f), least = _mm512_set1_ps(-127.0f);
#pragma omp parallel for schedule(static)
    for (int64_t document = 0; document < documents; document++) {
        float largest[3] = {0.0f, 0.0f, 0.0f};
        int not_a_number = 0, tiny = 0;
        for (int64_t token = 0; token < length; token++) {
            const int64_t at = document * length + token;
            const float *row = states + at * hidden;
            int8_t *out = tokens + at * padded_hidden;
            __m512 magnitudes = _mm512_setzero_ps();
            for (int64_t k = 0; k < hidden; k += 16) {
                const __mmask16 live = hidden - k >= 16 ? 0xFFFF : (__mmask16)((1u << (hidden - k)) - 1);
                magnitudes = _mm512_max_ps(magnitudes, _mm512_abs_ps(_mm512_maskz_loadu_ps(live, row + k)));
            }
            // NaN or not where the token holds a NaN: its norms are NaN either way
            const float magnitude = _mm512_reduce_max_ps(magnitudes);
            tiny |= magnitude > 0.0f && magnitude < SMALLEST_MAGNITUDE;
            const float scale = magnitude / 127.0f, inverse = magnitude >= SMALLEST_MAGNITUDE ? 127.0f / magnitude : 0.0f;
            const __m512 scales16 = _mm512_set1_ps(scale), inverses = _mm512_set1_ps(inverse);
            __m512 sums[3] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            __m512i totals = _mm512_setzero_si512();
            for (int64_t k = 0; k < hidden; k += 16) {
                const __mmask16 live = hidden - k >= 16 ? 0xFFFF : (__mmask16)((1u << (hidden - k)) - 1);
                const __m512 x = _mm512_maskz_loadu_ps(live, row + k);
                // max and min return their second operand where the first is NaN: a NaN level becomes -127, as fmaxf
                const __m512 level = _mm512_min_ps(_mm512_max_ps(_mm512_roundscale_ps(
                    _mm512_mul_ps(x, inverses), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), least), most);
                // lanes past hidden stay 0 (not inf * 0 where the scale is inf: a row of +inf keeps infinite norms)
                const __m512 back = _mm512_maskz_mul_ps(live, scales16, level), residual = _mm512_sub_ps(x, back);
                const __m512i levels = _mm512_cvtps_epi32(level);
                _mm_mask_storeu_epi8(out + k, live, _mm512_cvtepi32_epi8(levels));
                totals = _mm512_add_epi32(totals, levels);
                sums[0] = _mm512_fmadd_ps(x, x, sums[0]);
                sums[1] = _mm512_fmadd_ps(residual, residual, sums[1]);
                sums[2] = _mm512_fmadd_ps(back, back, sums[2]);
            }
            memset(out + hidden, 0, (size_t)(padded_hidden - hidden));
            scales[at] = scale;
            offsets[at] = -128 * _mm512_reduce_add_epi32(totals);
            for (int i = 0; i < 3; i++) {
                const float norm = sqrtf(_mm512_reduce_add_ps(sums[i]));
                not_a_number |= isnan(norm);
                largest[i] = norm > largest[i] ? norm : largest[i];
            }
        }
        for (int i = 0; i < 3; i++) norms[document * 3 + i] = not_a_number ? NAN : tiny ? INFINITY : largest[i];
    }
}

// The (document, term) pairs of the entries of upper [documents, vocabulary] (rows `stride` floats apart) that are
// not <= 0: positive, or NaN (a bound whose arithmetic failed, 0 x inf, proves nothing), in row-major order, as
// torch's nonzero lists them but in one AVX-512 pass; returns their count. pair_documents and pair_terms have room
// for documents x vocabulary pairs.
int64_t candidate_pairs(const float *upper, int64_t documents, int64_t stride, int64_t vocabulary,
                        int64_t *pair_documents, int64_t *pair_terms) {
    const __m512 zero = _mm512_setzero_ps();
    int64_t count = 0;
    for (int64_t document = 0; document < documents; document++)
        for (int64_t term = 0; term < vocabulary; term += 16) {
            const __mmask16 live = vocabulary - term >= 16 ? 0xFFFF : (__mmask16)((1u << (vocabulary - term)) - 1);
            const __m512 values = _mm512_maskz_loadu_ps(live, upper + document * stride + term);
            for (uint32_t candidate = _mm512_mask_cmp_ps_mask(live, values, zero, _CMP_NLE_UQ); candidate;
                 candidate &= candidate - 1) {
                pair_documents[count] = document;
                pair_terms[count++] = term + __builtin_ctz(candidate);
            }
        }
    return count;
}

// The screen's inputs in one pass over fp32 states [documents, length, hidden]: low = bf16(states), rounded to
// nearest even as torch rounds (a NaN may come out as another NaN, a zero or an infinity: its document's norms
// are NaN, so each of its weights is rechecked), and per document the largest token norm of states, of the
// rounding residual states - low, and of low (norms [documents, 3]; all three NaN where a token's norm is, infinite
// where a token's largest magnitude is below SMALLEST_MAGNITUDE, but not 0).
void rounded_with_norms(const float *states, uint16_t *low, float *norms, int64_t documents, int64_t length,
                        int64_t hidden) {
    const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7FFF);
#pragma omp parallel for schedule(static)
    for (int64_t document = 0; document < documents; document++) {
        float largest[3] = {0.0f, 0.0f, 0.0f};
        int not_a_number = 0, tiny = 0;
        for (int64_t token = 0; token < length; token++) {
            const float *row = states + (document * length + token) * hidden;
            uint16_t *out = low + (document * length + token) * hidden;
            __m512 sums[3] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()}, magnitudes = _mm512_setzero_ps();
            for (int64_t k = 0; k < hidden; k += 16) {
                const __mmask16 live = hidden - k >= 16 ? 0xFFFF : (__mmask16)((1u << (hidden - k)) - 1);
                const __m512 x = _mm512_maskz_loadu_ps(live, row + k);
                const __m512i bits = _mm512_castps_si512(x);
                const __m512i even = _mm512_and_si512(_mm512_srli_epi32(bits, 16), one);
                const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(bits, half), even), 16);
                _mm256_mask_storeu_epi16(out + k, live, _mm512_cvtepi32_epi16(rounded));
                const __m512 back = _mm512_castsi512_ps(_mm512_slli_epi32(rounded, 16));
                const __m512 residual = _mm512_sub_ps(x, back);
                magnitudes = _mm512_max_ps(magnitudes, _mm512_abs_ps(x));
                sums[0] = _mm512_fmadd_ps(x, x, sums[0]);
                sums[1] = _mm512_fmadd_ps(residual, residual, sums[1]);
                sums[2] = _mm512_fmadd_ps(back, back, sums[2]);
            }
            const float magnitude = _mm512_reduce_max_ps(magnitudes);
            tiny |= magnitude > 0.0f && magnitude < SMALLEST_MAGNITUDE;
            for (int i = 0; i < 3; i++) {
                const float norm = sqrtf(_mm512_reduce_add_ps(sums[i]));
                not_a_number |= isnan(norm);
                largest[i] = norm > largest[i] ? norm : largest[i];
            }
        }
        for (int i = 0; i < 3; i++) norms[document * 3 + i] = not_a_number ? NAN : tiny ? INFINITY : largest[i];
    }
}

// The recheck: out[c] = max over tokens t of document d of sum_k states[d, t, k] * weight[terms[c], k] in fp32, for
// the candidates c in [starts[d], starts[d + 1]): over the 32 tokens of block blocks[c] where the screen named one
// (a token's sum is the same whichever tokens are summed beside it, so that block's max is the document's), over
// all of them where blocks[c] < 0 or blocks is NULL. Each sum is a chain of fused multiply-adds in k order; NaN
// where one of the sums is NaN. A document's states are transposed into `columns` ([hidden, length]) so that a
// vector holds 16 tokens; 8 terms x 32 tokens of sums stay in registers while k runs (no [terms x tokens] product
// reaches memory). states: [documents, length, hidden] fp32, length a multiple of 32; weight: [vocabulary, hidden].
#define RECHECK_TERMS 8

// The candidates order[0..count) (indices into terms and out), all over the tokens [first_token, last_token).
static void max_dots_of_group(const float *columns, const float *weight, const int64_t *terms, const int64_t *order,
                              int64_t count, int64_t first_token, int64_t last_token, int64_t length, int64_t hidden,
                              float *out) {
    for (int64_t first = 0; first < count; first += RECHECK_TERMS) {
        const float *rows[RECHECK_TERMS];
        for (int j = 0; j < RECHECK_TERMS; j++)  // a last group of fewer terms repeats its last one
            rows[j] = weight + terms[order[first + j < count ? first + j : count - 1]] * hidden;
        __m512 maxima[RECHECK_TERMS];
        __mmask16 not_a_number[RECHECK_TERMS] = {0};
#pragma GCC unroll 8
        for (int j = 0; j < RECHECK_TERMS; j++) maxima[j] = _mm512_set1_ps(-INFINITY);
        for (int64_t token = first_token; token < last_token; token += 32) {
            __m512 sums[RECHECK_TERMS][2];
#pragma GCC unroll 8
            for (int j = 0; j < RECHECK_TERMS; j++) sums[j][0] = sums[j][1] = _mm512_setzero_ps();
            for (int64_t k = 0; k < hidden; k++) {
                const __m512 low = _mm512_loadu_ps(columns + k * length + token);
                const __m512 high = _mm512_loadu_ps(columns + k * length + token + 16);
#pragma GCC unroll 8
                for (int j = 0; j < RECHECK_TERMS; j++) {
                    const __m512 w = _mm512_set1_ps(rows[j][k]);
                    sums[j][0] = _mm512_fmadd_ps(w, low, sums[j][0]);
                    sums[j][1] = _mm512_fmadd_ps(w, high, sums[j][1]);
                }
            }
#pragma GCC unroll 8
            for (int j = 0; j < RECHECK_TERMS; j++) {
                not_a_number[j] |= _mm512_cmp_ps_mask(sums[j][0], sums[j][0], _CMP_UNORD_Q)
                                 | _mm512_cmp_ps_mask(sums[j][1], sums[j][1], _CMP_UNORD_Q);
                maxima[j] = _mm512_max_ps(maxima[j], _mm512_max_ps(sums[j][0], sums[j][1]));
            }
        }
        for (int j = 0; j < RECHECK_TERMS && first + j < count; j++)
            out[order[first + j]] = not_a_number[j] ? NAN : _mm512_reduce_max_ps(maxima[j]);
    }
}

// One document: its candidates grouped by the tokens they are rechecked over (all of them, then block by block,
// a counting sort into `order`), so that each group of 8 terms shares its token loop.
static void max_dots_of_document(const float *states, const float *weight, const int64_t *terms, const int16_t *blocks,
                                 float *out, int64_t candidates, int64_t length, int64_t hidden, float *columns,
                                 int64_t *order) {
    for (int64_t block = 0; block < length; block += 16)  // 16 tokens at a time: their rows stay in L1
        for (int64_t k = 0; k < hidden; k++)
#pragma GCC unroll 16
            for (int64_t token = block; token < block + 16; token++) columns[k * length + token] = states[token * hidden + k];
    const int64_t ranges = length / 32 + 1;  // range 0: every token; range b + 1: block b
    int64_t firsts[ranges + 1];
    memset(firsts, 0, sizeof firsts);
#define RANGE(c) (blocks != NULL && blocks[c] >= 0 && blocks[c] < ranges - 1 ? blocks[c] + 1 : 0)
    for (int64_t c = 0; c < candidates; c++) firsts[RANGE(c) + 1]++;
    for (int64_t range = 0; range < ranges; range++) firsts[range + 1] += firsts[range];
    int64_t filled[ranges];
    memcpy(filled, firsts, sizeof filled);
    for (int64_t c = 0; c < candidates; c++) order[filled[RANGE(c)]++] = c;
#undef RANGE
    for (int64_t range = 0; range < ranges; range++) {
        const int64_t first_token = range ? (range - 1) * 32 : 0, last_token = range ? first_token + 32 : length;
        max_dots_of_group(columns, weight, terms, order + firsts[range], firsts[range + 1] - firsts[range], first_token,
                          last_token, length, hidden, out);
    }
}

// starts: [documents + 1] offsets of each document's candidates in terms, blocks and out. Returns 0, or -1 where a
// thread's buffers could not be allocated (out then incomplete).
int max_dots(const float *states, const float *weight, const int64_t *starts, const int64_t *terms, const int16_t *blocks,
             float *out, int64_t documents, int64_t length, int64_t hidden) {
    int64_t most = 0;
    for (int64_t document = 0; document < documents; document++)
        most = starts[document + 1] - starts[document] > most ? starts[document + 1] - starts[document] : most;
    int failed = 0;
#pragma omp parallel
    {
        float *columns = aligned_alloc(64, (size_t)(length * hidden * sizeof(float) + 63) / 64 * 64);
        int64_t *order = malloc((size_t)(most > 0 ? most : 1) * sizeof(int64_t));
        if (columns == NULL || order == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic)
        for (int64_t document = 0; document < documents; document++)
            if (columns != NULL && order != NULL)
                max_dots_of_document(states + document * length * hidden, weight, terms + starts[document],
                                     blocks != NULL ? blocks + starts[document] : NULL, out + starts[document],
                                     starts[document + 1] - starts[document], length, hidden, columns, order);
        free(columns);
        free(order);
    }
    return failed ? -1 : 0;
}
