/* Fused element-wise merge kernels for the live merger (loaded by studio/merging/native.py).
 *
 * Why: eager torch needs several passes over the weights to reproduce mergekit's arithmetic
 * (each op rounds to the tensors' dtype, which the live merger must match bit for bit); these
 * kernels do each step in one pass, on several threads, with the same roundings, so a slider
 * move costs about one read of the inputs. tests/test_native_kernels.py checks every kernel
 * against the eager path on random values, signed zeros, subnormals, infinities and NaN.
 *
 * Compiled with -ffp-contract=off, so the compiler adds no fused multiply-add of its own.
 * - linear: acc = fmaf(x_i, w_i, acc) per input in order from +0.0f (ATen's CPU addcmul_ kernel
 *   computes self + t1 * t2 as one FMA), acc / denom in float32, one rounding at the end.
 * - everything else mirrors one eager torch op per line: a bfloat16 op computes in float32 and
 *   rounds to nearest even (ATen's vectorized bfloat16 kernels); float32 ops are plain.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

enum { DTYPE_FLOAT32 = 0, DTYPE_BFLOAT16 = 1 };
enum { BLOCK = 2048, MAX_INPUTS = 16, MAX_THREADS = 64, MIN_PER_THREAD = 1 << 16 };

static inline float bf16_to_f32(uint16_t half) {
    uint32_t bits = (uint32_t)half << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* Round to nearest even, NaN -> 0x7FC0, as c10::BFloat16 does (a select, not a branch, so
 * loops calling it vectorize). */
static inline uint16_t f32_to_bf16(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    uint16_t rounded_bits = (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    return value != value ? (uint16_t)0x7FC0 : rounded_bits;
}

static inline float load(int bf16, const void *data, int64_t i) {
    return bf16 ? bf16_to_f32(((const uint16_t *)data)[i]) : ((const float *)data)[i];
}

static inline void put(int bf16, void *data, int64_t i, float value) {
    if (bf16)
        ((uint16_t *)data)[i] = f32_to_bf16(value);
    else
        ((float *)data)[i] = value;
}

/* The result of one eager op in the tensors' dtype. */
static inline float rounded(int bf16, float value) {
    return bf16 ? bf16_to_f32(f32_to_bf16(value)) : value;
}

/* -- threads ----------------------------------------------------------------------------------- */

typedef void (*RangeFn)(const void *ctx, int64_t start, int64_t stop);

typedef struct {
    RangeFn fn;
    const void *ctx;
    int64_t start;
    int64_t stop;
} Range;

static void *run_range(void *arg) {
    const Range *range = (const Range *)arg;
    range->fn(range->ctx, range->start, range->stop);
    return NULL;
}

/* fn(ctx, start, stop) over [0, total) split evenly over up to `threads` threads, one thread per
 * MIN_PER_THREAD elements at most; the calling thread does the first span. */
static void parallel_for(int64_t total, int threads, RangeFn fn, const void *ctx) {
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > total / MIN_PER_THREAD) threads = (int)(total / MIN_PER_THREAD);
    if (threads < 1) threads = 1;
    int64_t per = (total + threads - 1) / threads;
    per = (per + BLOCK - 1) / BLOCK * BLOCK; /* spans start on block boundaries */
    Range ranges[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        int64_t start = (int64_t)t * per < total ? (int64_t)t * per : total;
        int64_t stop = start + per < total ? start + per : total;
        Range range = {fn, ctx, start, stop};
        ranges[t] = range;
    }
    int started = 0;
    for (int t = 1; t < threads; t++) {
        if (pthread_create(&ids[t], NULL, run_range, &ranges[t]) != 0) break;
        started = t;
    }
    run_range(&ranges[0]);
    for (int t = started + 1; t < threads; t++) run_range(&ranges[t]); /* threads not started */
    for (int t = 1; t <= started; t++) pthread_join(ids[t], NULL);
}

/* -- linear ------------------------------------------------------------------------------------ */

/* One output tensor: out = round(sum_j inputs[j] * weights[j] (/ denom)). */
typedef struct {
    const void *const *inputs; /* `count` pointers */
    const float *weights;      /* `count` weights */
    float denom;
    void *out;
    int64_t numel;
} LinearTensor;

typedef struct {
    int dtype;
    int count;
    int normalize;
    const LinearTensor *tensors;
    int64_t ntensors;
} LinearCall;

/* Elements [start, start + len) of one tensor, len <= BLOCK: the accumulators stay in L1 while
 * each input streams through. */
/* Two inputs (the usual merge) in one loop: no accumulator array, one pass per element. */
static inline __attribute__((always_inline)) void linear_pair_as(int bf16, int normalize,
                                                                const LinearTensor *t,
                                                                int64_t start, int64_t len) {
    const void *x0 = t->inputs[0], *x1 = t->inputs[1];
    const float w0 = t->weights[0], w1 = t->weights[1], d = t->denom;
    void *out = t->out;
    for (int64_t i = start; i < start + len; i++) {
        /* fmaf(x, w, 0.0f), not x * w: 0 + (-0) is +0, as the eager addcmul_ onto zeros */
        float acc = fmaf(load(bf16, x1, i), w1, fmaf(load(bf16, x0, i), w0, 0.0f));
        put(bf16, out, i, normalize ? acc / d : acc);
    }
}

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* Copy a finished block to its destination with non-temporal stores: the merged weights are
 * not read again soon, and a normal store would first read the destination's old cache lines (a
 * quarter of the memory traffic). Parameters are rarely 64-byte aligned, so the bytes before the
 * first aligned address and after the last one go by memcpy. */
static inline void stream_copy(void *dest, const void *src, size_t bytes) {
#if defined(__AVX512F__) || defined(__AVX2__)
#if defined(__AVX512F__)
    enum { VEC = 64 };
#else
    enum { VEC = 32 };
#endif
    size_t head = (VEC - ((uintptr_t)dest & (VEC - 1))) & (VEC - 1);
    if (head > bytes) head = bytes;
    memcpy(dest, src, head);
    char *d = (char *)dest + head;
    const char *s = (const char *)src + head;
    size_t body = (bytes - head) / VEC * VEC;
    for (size_t k = 0; k < body; k += VEC) {
#if defined(__AVX512F__)
        _mm512_stream_si512((__m512i *)(d + k), _mm512_loadu_si512(s + k));
#else
        _mm256_stream_si256((__m256i *)(d + k), _mm256_loadu_si256((const __m256i *)(s + k)));
#endif
    }
    memcpy(d + body, s + body, bytes - head - body);
#else
    memcpy(dest, src, bytes);
#endif
}

static void linear_block(const LinearCall *call, const LinearTensor *t, int64_t start, int64_t len) {
    if (call->count == 2 && call->dtype == DTYPE_BFLOAT16 && len == BLOCK) {
        uint16_t staged[BLOCK] __attribute__((aligned(64)));
        LinearTensor local = *t;
        local.out = staged;
        const void *shifted[2] = {(const uint16_t *)t->inputs[0] + start,
                                  (const uint16_t *)t->inputs[1] + start};
        local.inputs = shifted;
        if (call->normalize) linear_pair_as(1, 1, &local, 0, len);
        else linear_pair_as(1, 0, &local, 0, len);
        stream_copy((uint16_t *)t->out + start, staged, (size_t)len * sizeof(uint16_t));
        return;
    }
    if (call->count == 2) {
        int bf16 = call->dtype == DTYPE_BFLOAT16;
        if (bf16 && call->normalize) linear_pair_as(1, 1, t, start, len);
        else if (bf16) linear_pair_as(1, 0, t, start, len);
        else if (call->normalize) linear_pair_as(0, 1, t, start, len);
        else linear_pair_as(0, 0, t, start, len);
        return;
    }
    float acc[BLOCK];
    for (int64_t i = 0; i < len; i++) acc[i] = 0.0f;
    for (int j = 0; j < call->count; j++) {
        const float w = t->weights[j];
        if (call->dtype == DTYPE_BFLOAT16) {
            const uint16_t *x = (const uint16_t *)t->inputs[j] + start;
            for (int64_t i = 0; i < len; i++) acc[i] = fmaf(bf16_to_f32(x[i]), w, acc[i]);
        } else {
            const float *x = (const float *)t->inputs[j] + start;
            for (int64_t i = 0; i < len; i++) acc[i] = fmaf(x[i], w, acc[i]);
        }
    }
    if (call->normalize) {
        const float d = t->denom;
        for (int64_t i = 0; i < len; i++) acc[i] = acc[i] / d;
    }
    if (call->dtype == DTYPE_BFLOAT16) {
        uint16_t *out = (uint16_t *)t->out + start;
        for (int64_t i = 0; i < len; i++) out[i] = f32_to_bf16(acc[i]);
    } else {
        memcpy((float *)t->out + start, acc, (size_t)len * sizeof(float));
    }
}

/* Elements [start, stop) of the tensors laid end to end. */
static void linear_range(const void *ctx, int64_t start, int64_t stop) {
    const LinearCall *call = (const LinearCall *)ctx;
    int64_t offset = 0; /* where the current tensor starts */
    for (int64_t k = 0; k < call->ntensors && offset < stop; k++) {
        const LinearTensor *t = &call->tensors[k];
        int64_t lo = start > offset ? start - offset : 0;
        int64_t hi = stop - offset < t->numel ? stop - offset : t->numel;
        for (int64_t s = lo; s < hi; s += BLOCK) linear_block(call, t, s, hi - s < BLOCK ? hi - s : BLOCK);
        offset += t->numel;
    }
#if defined(__AVX512F__) || defined(__AVX2__)
    _mm_sfence(); /* non-temporal stores are visible before the thread is joined */
#endif
}

/* Every tensor of a linear merge in one call, its elements split evenly over up to `threads`
 * threads (one thread per MIN_PER_THREAD elements at most). Returns 0, or -1 for arguments it
 * does not handle (the caller then runs eager torch). */
int studio_linear(int dtype, int count, int normalize, const LinearTensor *tensors,
                  int64_t ntensors, int threads) {
    if ((dtype != DTYPE_FLOAT32 && dtype != DTYPE_BFLOAT16) || count < 1 || count > MAX_INPUTS)
        return -1;
    int64_t total = 0;
    for (int64_t k = 0; k < ntensors; k++) total += tensors[k].numel;
    LinearCall call = {dtype, count, normalize, tensors, ntensors};
    parallel_for(total, threads, linear_range, &call);
    return 0;
}

/* -- task vectors: TIES trimming and combining two task vectors -------------------------------- */

/* torch.sign (+0 for either zero and for NaN) and torch.relu (keeps -0 and NaN). */
static inline float sign_of(float x) { return (float)((x > 0.0f) - (x < 0.0f)); }
static inline float relu(float x) { return x < 0.0f ? 0.0f : x; }

typedef struct {
    int bf16;
    const void *parent;
    const void *base;
    void *out;
    float threshold;
    int64_t tie_cutoff;
} TrimCall;

/* fast_methods.sparsify_into with a ThresholdKeep: out = (parent - base) * keep, where keep is 1
 * for |d| > threshold, and for |d| == threshold at flat positions before tie_cutoff. */
/* Keep |d| >= threshold (ties kept) or |d| > threshold, over [start, stop). */
static inline __attribute__((always_inline)) void trim_span_as(int bf16, int keep_ties,
                                                              const TrimCall *call,
                                                              int64_t start, int64_t stop) {
    const void *parent = call->parent, *base = call->base;
    void *out = call->out;
    const float threshold = call->threshold;
    for (int64_t i = start; i < stop; i++) {
        float delta = rounded(bf16, load(bf16, parent, i) - load(bf16, base, i));
        float magnitude = fabsf(delta);
        /* a float select: an int-to-float conversion here stops the vectorizer */
        float keep = (keep_ties ? magnitude >= threshold : magnitude > threshold) ? 1.0f : 0.0f;
        put(bf16, out, i, delta * keep);
    }
}

/* Tied elements are kept before tie_cutoff and dropped from it on: two loops, so neither mixes
 * an index test into the float lanes (the vectorizer gives up on that). */
static inline __attribute__((always_inline)) void trim_range_as(int bf16, const TrimCall *call,
                                                               int64_t start, int64_t stop) {
    int64_t middle = call->tie_cutoff < start ? start : call->tie_cutoff;
    middle = middle > stop ? stop : middle;
    trim_span_as(bf16, 1, call, start, middle);
    trim_span_as(bf16, 0, call, middle, stop);
}

static void trim_range(const void *ctx, int64_t start, int64_t stop) {
    const TrimCall *call = (const TrimCall *)ctx;
    if (call->bf16)
        trim_range_as(1, call, start, stop);
    else
        trim_range_as(0, call, start, stop);
}

int studio_trim(int dtype, const void *parent, const void *base, void *out, int64_t numel,
                float threshold, int64_t tie_cutoff, int threads) {
    if (dtype != DTYPE_FLOAT32 && dtype != DTYPE_BFLOAT16) return -1;
    TrimCall call = {dtype == DTYPE_BFLOAT16, parent, base, out, threshold, tie_cutoff};
    parallel_for(numel, threads, trim_range, &call);
    return 0;
}

/* The flat position just after the `ties`-th element with |parent - base| == threshold (0 for
 * no ties, numel if there are fewer): trimming keeps the tied elements before it. */
static inline __attribute__((always_inline)) int64_t tie_cutoff_as(int bf16, const void *parent,
                                                                    const void *base,
                                                                    int64_t numel, float threshold,
                                                                    int64_t ties) {
    for (int64_t s = 0; s < numel; s += BLOCK) {
        int64_t len = numel - s < BLOCK ? numel - s : BLOCK;
        int32_t tied = 0; /* an integer sum: a float one would not vectorize */
        for (int64_t i = s; i < s + len; i++) {
            float delta = rounded(bf16, load(bf16, parent, i) - load(bf16, base, i));
            tied += fabsf(delta) == threshold ? 1 : 0;
        }
        if (tied < ties) {
            ties -= tied;
            continue;
        }
        for (int64_t i = s; i < s + len; i++) { /* the block holding the last kept tie */
            float delta = rounded(bf16, load(bf16, parent, i) - load(bf16, base, i));
            if (fabsf(delta) == threshold && --ties == 0) return i + 1;
        }
    }
    return numel;
}

int64_t studio_tie_cutoff(int dtype, const void *parent, const void *base, int64_t numel,
                          float threshold, int64_t ties) {
    if (ties <= 0) return 0;
    if (dtype == DTYPE_BFLOAT16) return tie_cutoff_as(1, parent, base, numel, threshold, ties);
    return tie_cutoff_as(0, parent, base, numel, threshold, ties);
}

typedef struct {
    int bf16;
    int wide_codes; /* int32 codes (float32 work dtype) rather than int16 */
    const void *parent;
    const void *base;
    const void *codes;
    int32_t cutoff;
    void *out;
} DropCall;

/* fast_methods.sparsify_into with a CodesKeep mask (DARE): out = (parent - base) * keep, where
 * keep = 1 exactly when the element's uniform code is below the cutoff. */
static inline __attribute__((always_inline)) void drop_range_as(int bf16, int wide,
                                                               const DropCall *call,
                                                               int64_t start, int64_t stop) {
    const void *parent = call->parent, *base = call->base;
    void *out = call->out;
    const int32_t cutoff = call->cutoff;
    for (int64_t i = start; i < stop; i++) {
        float delta = rounded(bf16, load(bf16, parent, i) - load(bf16, base, i));
        int32_t code = wide ? ((const int32_t *)call->codes)[i] : ((const int16_t *)call->codes)[i];
        put(bf16, out, i, delta * (code < cutoff ? 1.0f : 0.0f));
    }
}

static void drop_range(const void *ctx, int64_t start, int64_t stop) {
    const DropCall *call = (const DropCall *)ctx;
    if (call->bf16)
        call->wide_codes ? drop_range_as(1, 1, call, start, stop)
                         : drop_range_as(1, 0, call, start, stop);
    else
        call->wide_codes ? drop_range_as(0, 1, call, start, stop)
                         : drop_range_as(0, 0, call, start, stop);
}

int studio_drop(int dtype, const void *parent, const void *base, const void *codes,
                int wide_codes, int32_t cutoff, void *out, int64_t numel, int threads) {
    if (dtype != DTYPE_FLOAT32 && dtype != DTYPE_BFLOAT16) return -1;
    DropCall call = {dtype == DTYPE_BFLOAT16, wide_codes, parent, base, codes, cutoff, out};
    parallel_for(numel, threads, drop_range, &call);
    return 0;
}

typedef struct {
    int bf16;
    const void *base;
    const void *first;
    const void *second;
    void *out;
    float w0, w1;   /* the weights rounded to the dtype */
    float pair_sum; /* w0 + w1 in the dtype, 1 where mergekit replaces a ~0 sum */
    float lambda;
    float max_finite; /* nan_to_num's replacement for +inf */
    int consensus;
    int normalize;
    int both_sum_is_zero;
} PairCall;

/* fast_methods._combine_pair_chunk, one eager op per line, BLOCK elements at a time (each
 * step a simple loop, so the compiler vectorizes it). */
static inline __attribute__((always_inline)) void pair_block_as(int bf16, const PairCall *c,
                                                               int64_t start, int64_t len) {
    float dw1[BLOCK], dw2[BLOCK], mixed[BLOCK], divisor[BLOCK];
    for (int64_t i = 0; i < len; i++) {
        dw1[i] = rounded(bf16, load(bf16, c->first, start + i) * c->w0);
        dw2[i] = rounded(bf16, load(bf16, c->second, start + i) * c->w1);
    }
    if (!c->consensus) {
        for (int64_t i = 0; i < len; i++) mixed[i] = rounded(bf16, dw1[i] + dw2[i]);
        if (c->normalize)
            for (int64_t i = 0; i < len; i++) mixed[i] = rounded(bf16, mixed[i] / c->pair_sum);
    } else {
        for (int64_t i = 0; i < len; i++) {
            /* sign(sign(S) + 0.5): -1 below zero, +1 otherwise (also for NaN: sign(NaN) = 0) */
            float majority = rounded(bf16, dw1[i] + dw2[i]) < 0.0f ? -1.0f : 1.0f;
            float agree1 = relu(sign_of(dw1[i]) * majority);
            float agree2 = relu(sign_of(dw2[i]) * majority);
            mixed[i] = rounded(bf16, rounded(bf16, dw1[i] * agree1) +
                                         rounded(bf16, dw2[i] * agree2));
            divisor[i] =
                rounded(bf16, rounded(bf16, agree1 * c->w0) + rounded(bf16, agree2 * c->w1));
        }
        if (c->normalize && c->both_sum_is_zero) {
            for (int64_t i = 0; i < len; i++) {
                float d = rounded(bf16, divisor[i] + (1.0f - fabsf(sign_of(divisor[i]))));
                mixed[i] = rounded(bf16, mixed[i] / d);
            }
        } else if (c->normalize) {
            const float max_finite = c->max_finite;
            for (int64_t i = 0; i < len; i++) {
                float value = rounded(bf16, mixed[i] / divisor[i]);
                /* nan_to_num_(nan=0.0), written as comparisons so the loop vectorizes */
                value = value != value ? 0.0f : value;
                value = fabsf(value) == INFINITY ? copysignf(max_finite, value) : value;
                mixed[i] = value;
            }
        }
    }
    if (c->lambda != 1.0f)
        for (int64_t i = 0; i < len; i++) mixed[i] = rounded(bf16, mixed[i] * c->lambda);
    for (int64_t i = 0; i < len; i++)
        put(bf16, c->out, start + i, mixed[i] + load(bf16, c->base, start + i));
}

static inline __attribute__((always_inline)) void pair_range_as(int bf16, const PairCall *c,
                                                               int64_t start, int64_t stop) {
    for (int64_t s = start; s < stop; s += BLOCK)
        pair_block_as(bf16, c, s, stop - s < BLOCK ? stop - s : BLOCK);
}

static void pair_range(const void *ctx, int64_t start, int64_t stop) {
    const PairCall *call = (const PairCall *)ctx;
    if (call->bf16)
        pair_range_as(1, call, start, stop);
    else
        pair_range_as(0, call, start, stop);
}

int studio_combine_pair(int dtype, const void *base, const void *first, const void *second,
                        void *out, int64_t numel, float w0, float w1, float pair_sum,
                        float lambda, int consensus, int normalize, int both_sum_is_zero,
                        int threads) {
    if (dtype != DTYPE_FLOAT32 && dtype != DTYPE_BFLOAT16) return -1;
    int bf16 = dtype == DTYPE_BFLOAT16;
    float max_finite = bf16 ? bf16_to_f32(0x7F7F) : 3.4028234663852886e38f;
    PairCall call = {bf16,     base,       first,      second,    out,
                     w0,       w1,         pair_sum,   lambda,    max_finite,
                     consensus, normalize, both_sum_is_zero};
    parallel_for(numel, threads, pair_range, &call);
    return 0;
}

/* -- slerp ------------------------------------------------------------------------------------- */

typedef struct {
    int bf16;
    const void *a;
    const void *b;
    void *out;
    float coef_a;
    float coef_b;
} PairSumCall;

/* mergekit's slerp result `coef_a * x + coef_b * y`: two float32 products and their sum, each
 * rounded (three eager ops, no fused multiply-add), then one rounding to the dtype. */
static inline __attribute__((always_inline)) void pair_sum_range_as(int bf16,
                                                                   const PairSumCall *call,
                                                                   int64_t start, int64_t stop) {
    const float ca = call->coef_a, cb = call->coef_b;
    for (int64_t i = start; i < stop; i++) {
        float x = ca * load(bf16, call->a, i);
        float y = cb * load(bf16, call->b, i);
        put(bf16, call->out, i, x + y);
    }
}

static void pair_sum_range(const void *ctx, int64_t start, int64_t stop) {
    const PairSumCall *call = (const PairSumCall *)ctx;
    if (call->bf16)
        pair_sum_range_as(1, call, start, stop);
    else
        pair_sum_range_as(0, call, start, stop);
}

int studio_pair_sum(int dtype, const void *a, const void *b, void *out, int64_t numel,
                    float coef_a, float coef_b, int threads) {
    if (dtype != DTYPE_FLOAT32 && dtype != DTYPE_BFLOAT16) return -1;
    PairSumCall call = {dtype == DTYPE_BFLOAT16, a, b, out, coef_a, coef_b};
    parallel_for(numel, threads, pair_sum_range, &call);
    return 0;
}
