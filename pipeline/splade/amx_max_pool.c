// SPLADE's screen on Intel AMX: out[d, v] = max over document d's tokens t of sum_k tokens[t, k] * weight[v, k],
// bf16 products accumulated in fp32, plus bias[v] + scale_a[d] * slack_a[v] + scale_b[d] * slack_b[v] (the
// screen's error bound). Each 32 tokens x 32 terms tile of logits is max-pooled as it leaves
// the tile registers, so the [tokens x vocabulary] logits never reach memory.
// Built by amx_max_pool.py; see there for the layouts.
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

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

// One thread's share: columns [first_term, last_term) of out, multiples of 32, in blocks of block_terms
// terms whose weights stay in the core's L2 while every document passes.
static void max_pool_terms(const uint16_t *tokens, const uint16_t *packed, const float *bias, const float *slack_a,
                           const float *slack_b, const float *scale_a, const float *scale_b, float *out, int64_t documents, int64_t length, int64_t hidden,
                           int64_t out_stride, int64_t first_term, int64_t last_term, int64_t block_terms) {
    const int64_t chunks = hidden / 32, weight_tile = 16 * 32, row_bytes = hidden * 2;
    float results[4][16][16] __attribute__((aligned(64)));
    for (int64_t block = first_term; block < last_term; block += block_terms) {
        const int64_t block_end = block + block_terms < last_term ? block + block_terms : last_term;
        for (int64_t document = 0; document < documents; document++) {
            const uint16_t *first_token = tokens + document * length * hidden;
            for (int64_t term = block; term < block_end; term += 32) {
                const uint16_t *weight0 = packed + (term / 16) * chunks * weight_tile;
                const uint16_t *weight1 = weight0 + chunks * weight_tile;
                __m512 max0 = _mm512_set1_ps(-INFINITY), max1 = max0;
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
                    _tile_stored(4, results[0], 64);
                    _tile_stored(5, results[1], 64);
                    _tile_stored(6, results[2], 64);
                    _tile_stored(7, results[3], 64);
                    for (int row = 0; row < 16; row++) {
                        max0 = _mm512_max_ps(max0, _mm512_max_ps(_mm512_load_ps(results[0][row]), _mm512_load_ps(results[1][row])));
                        max1 = _mm512_max_ps(max1, _mm512_max_ps(_mm512_load_ps(results[2][row]), _mm512_load_ps(results[3][row])));
                    }
                }
                const __m512 a = _mm512_set1_ps(scale_a[document]), b = _mm512_set1_ps(scale_b[document]);
                max0 = _mm512_add_ps(max0, _mm512_loadu_ps(bias + term));
                max1 = _mm512_add_ps(max1, _mm512_loadu_ps(bias + term + 16));
                max0 = _mm512_fmadd_ps(b, _mm512_loadu_ps(slack_b + term), _mm512_fmadd_ps(a, _mm512_loadu_ps(slack_a + term), max0));
                max1 = _mm512_fmadd_ps(b, _mm512_loadu_ps(slack_b + term + 16), _mm512_fmadd_ps(a, _mm512_loadu_ps(slack_a + term + 16), max1));
                _mm512_storeu_ps(out + document * out_stride + term, max0);
                _mm512_storeu_ps(out + document * out_stride + term + 16, max1);
            }
        }
    }
}

// tokens: [documents * length, hidden] bf16, row-major; length and hidden multiples of 32.
// packed: the weight as [vocabulary / 16][hidden / 32][16 pairs][16 terms][2] bf16 (AMX's VNNI layout),
// vocabulary a multiple of 32. bias, slack_*: [vocabulary]; scale_*: [documents]; out: [documents, vocabulary] fp32.
// The terms are shared among OpenMP's threads: torch's own pool when torch's libgomp is loaded first.
void amx_max_pool(const uint16_t *tokens, const uint16_t *packed, const float *bias, const float *slack_a,
                  const float *slack_b, const float *scale_a, const float *scale_b, float *out, int64_t documents, int64_t length, int64_t hidden, int64_t vocabulary,
                  int64_t block_terms) {
#pragma omp parallel
    {
        const int64_t groups = vocabulary / 32, threads = omp_get_num_threads(), thread = omp_get_thread_num();
        configure_tiles();
        max_pool_terms(tokens, packed, bias, slack_a, slack_b, scale_a, scale_b, out, documents, length, hidden, vocabulary,
                       groups * thread / threads * 32, groups * (thread + 1) / threads * 32, block_terms);
        _tile_release();
    }
}
