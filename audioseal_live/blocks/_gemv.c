/*
 * y = x @ W.T (+ b) for a few rows x (the frames of a streaming chunk) and a big float32
 * weight W (out, in), row-major: the products of a one-frame chunk, which stream their weight
 * from memory once per chunk and so run at the speed memory is read.
 *
 * Why in C: PyTorch's CPU wheels multiply with MKL, whose gemv reads a weight that does not fit
 * in cache at 15-16 GB/s on this project's AMD EPYC VMs, one thread or two; this loop reads it
 * at 25 GB/s on one core and ~40 GB/s when a helper thread takes half of the rows (64 MB of
 * 2048x1024 weights per pass, interleaved A/B). See blocks/gemv.py for where it is used.
 *
 * Rows of W go in blocks that the caller and one helper thread claim from a shared counter:
 * whichever is late (preempted, still asleep) leaves its blocks to the other, so the caller
 * never waits for a thread that has not started. The helper spins briefly after each product
 * (the products of one chunk come microseconds apart), then sleeps on a condition variable.
 * One caller at a time uses the helper; any other caller meanwhile runs on its own thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(_WIN32)
#define HAVE_KERNELS 1
#include <dlfcn.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

/* rows [r0, r1) of W against the n rows of x: y[j*m + r] */
typedef void (*rows_fn)(const float *w, const float *x, const float *b, float *y, long n,
                        long m, long k, long r0, long r1);

#define TARGET512 __attribute__((target("avx512f")))
#define TARGET2 __attribute__((target("avx2,fma")))

/* R rows of W (1 or 4) against J rows of x (1, 2 or 4), all of k: R*J dot products in
 * out[a * 4 + j]. 4 x 4 accumulators + 4 x vectors + 1 of W: 21 of the 32 registers. */
static inline __attribute__((always_inline)) TARGET512 void tile512(
    const float *w, const float *x, long k, int R, int J, float *out)
{
    __m512 acc[4][4];
    long kv = k & ~15L;
    __mmask16 tail = (__mmask16)((1u << (k - kv)) - 1u);
    for (int a = 0; a < R; a++)
        for (int j = 0; j < J; j++) acc[a][j] = _mm512_setzero_ps();
    for (long i = 0; i < kv; i += 16) {
        __m512 xv[4];
        for (int j = 0; j < J; j++) xv[j] = _mm512_loadu_ps(x + j * k + i);
        for (int a = 0; a < R; a++) {
            __m512 wv = _mm512_loadu_ps(w + a * k + i);
            for (int j = 0; j < J; j++) acc[a][j] = _mm512_fmadd_ps(wv, xv[j], acc[a][j]);
        }
    }
    if (tail) {
        __m512 xv[4];
        for (int j = 0; j < J; j++) xv[j] = _mm512_maskz_loadu_ps(tail, x + j * k + kv);
        for (int a = 0; a < R; a++) {
            __m512 wv = _mm512_maskz_loadu_ps(tail, w + a * k + kv);
            for (int j = 0; j < J; j++) acc[a][j] = _mm512_fmadd_ps(wv, xv[j], acc[a][j]);
        }
    }
    for (int a = 0; a < R; a++)
        for (int j = 0; j < J; j++) out[a * 4 + j] = _mm512_reduce_add_ps(acc[a][j]);
}

static inline __attribute__((always_inline)) TARGET2 float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

static inline __attribute__((always_inline)) TARGET2 void tile256(
    const float *w, const float *x, long k, int R, int J, float *out)
{
    __m256 acc[4][2];
    long kv = k & ~7L;
    for (int a = 0; a < R; a++)
        for (int j = 0; j < J; j++) acc[a][j] = _mm256_setzero_ps();
    for (long i = 0; i < kv; i += 8) {
        __m256 xv[2];
        for (int j = 0; j < J; j++) xv[j] = _mm256_loadu_ps(x + j * k + i);
        for (int a = 0; a < R; a++) {
            __m256 wv = _mm256_loadu_ps(w + a * k + i);
            for (int j = 0; j < J; j++) acc[a][j] = _mm256_fmadd_ps(wv, xv[j], acc[a][j]);
        }
    }
    for (int a = 0; a < R; a++)
        for (int j = 0; j < J; j++) {
            float s = hsum256(acc[a][j]);
            for (long i = kv; i < k; i++) s += w[a * k + i] * x[j * k + i];
            out[a * 4 + j] = s;
        }
}

/* A kernel: W's rows [r0, r1) in tiles of 4 (then 1), x's rows in tiles of up to XMAX (4 or
 * 2, then 1); every TILE call has constant sizes, so each compiles to its own unrolled loop
 * (the calls with 4 x rows pass XMAX: dead code where XMAX is 2). */
#define ROWS_KERNEL(NAME, TARGET, TILE, XMAX)                                                  \
    TARGET static void NAME(const float *w, const float *x, const float *b, float *y, long n,  \
                            long m, long k, long r0, long r1)                                 \
    {                                                                                          \
        float out[16];                                                                         \
        for (long r = r0; r < r1;) {                                                           \
            int R = r + 4 <= r1 ? 4 : 1;                                                       \
            for (long j = 0; j < n;) {                                                         \
                int J = XMAX == 4 && j + 4 <= n ? 4 : j + 2 <= n ? 2 : 1;                      \
                const float *wr = w + r * k, *xj = x + j * k;                                  \
                if (R == 4 && J == 4) TILE(wr, xj, k, 4, XMAX, out);                           \
                else if (R == 4 && J == 2) TILE(wr, xj, k, 4, 2, out);                         \
                else if (R == 4) TILE(wr, xj, k, 4, 1, out);                                   \
                else if (J == 4) TILE(wr, xj, k, 1, XMAX, out);                                \
                else if (J == 2) TILE(wr, xj, k, 1, 2, out);                                   \
                else TILE(wr, xj, k, 1, 1, out);                                               \
                for (int a = 0; a < R; a++)                                                    \
                    for (int jj = 0; jj < J; jj++)                                             \
                        y[(j + jj) * m + r + a] = out[a * 4 + jj] + (b ? b[r + a] : 0.0f);    \
                j += J;                                                                        \
            }                                                                                  \
            r += R;                                                                            \
        }                                                                                      \
    }

ROWS_KERNEL(rows_avx512, TARGET512, tile512, 4)
ROWS_KERNEL(rows_avx2, TARGET2, tile256, 2)

static rows_fn kernel = NULL;
static const char *kernel_name = "";

/* ---- the helper thread ---- */
typedef struct {
    int conv; /* 0: rows of a few-row product; 1: a part of a convolution (run_conv_part) */
    const float *w, *x, *b;
    float *y;
    long n, m, k, block, nblocks;
    long cin, t, kernel, stride, frames; /* the convolution's (m: out channels) */
} job_t;

static job_t job;
static _Atomic uint64_t claim = 0; /* see GEN_SHIFT */
static _Atomic long blocks_done = 0;
static _Atomic int helper_asleep = 0;
static atomic_flag helper_busy = ATOMIC_FLAG_INIT; /* a caller is using the helper */
static pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake_cond = PTHREAD_COND_INITIALIZER;
static _Atomic long spin_until = 0; /* the helper spins until then (CLOCK_MONOTONIC ns) */
static _Atomic unsigned long wakes = 0; /* calls of wake(): a sleeping helper gets up */
static int helper_started = 0; /* only touched by the caller that holds helper_busy */
static uint64_t generation = 0;
#define SPIN_NS 200000L /* after a product: the next one of the same chunk comes within this */

static long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long)t.tv_sec * 1000000000L + t.tv_nsec;
}

/* The claim word: generation (24 bits), the product's block count and the next block to
 * claim (20 bits each), so that a thread tells a stale product from the current one without
 * reading job, which the caller rewrites between products. */
#define GEN_SHIFT 40
#define COUNT_SHIFT 20
#define FIELD 0xfffffULL

/* ---- convolutions as im2col + sgemm, split over two threads ----
 * A streaming chunk's small convolutions (2-5 MFLOP each at 20 ms) run on one core while the
 * helper waits for the next big product: split in two, each half (its frames, or its output
 * channels when there are few frames) is one im2col and one sgemm of PyTorch's own BLAS
 * (MKL, looked up in the loaded libtorch_cpu: blas_init), which computes every output the
 * same way whichever thread runs it. Dimensions go to the Fortran sgemm_ as 64-bit integers:
 * little-endian, an LP64 build reads their low half and an ILP64 one the whole. */
typedef void (*sgemm_fn)(const char *, const char *, const int64_t *, const int64_t *,
                         const int64_t *, const float *, const float *, const int64_t *,
                         const float *, const int64_t *, const float *, float *,
                         const int64_t *);
typedef int (*set_threads_fn)(int);
static sgemm_fn sgemm = NULL;
static set_threads_fn blas_local_threads = NULL;
static _Thread_local float *im2col_buf = NULL;
static _Thread_local size_t im2col_cap = 0;

/* y rows [o0, o1) x frames [f0, f1) = bias + W @ im2col(x), for the convolution j */
static void conv_block(const job_t *j, long o0, long o1, long f0, long f1)
{
    const long cin = j->cin, t = j->t, kk = j->kernel, s = j->stride, nf = f1 - f0;
    const long ck = cin * kk, frames = j->frames;
    size_t need = (size_t)(ck * nf);
    float *cols, one = 1.0f, beta = j->b ? 1.0f : 0.0f;
    int64_t M = nf, N = o1 - o0, K = ck, lda = nf, ldb = ck, ldc = frames;
    int before;
    if (M <= 0 || N <= 0) return; /* an empty half (one output channel, few frames) */
    if (need > im2col_cap) {
        float *p = realloc(im2col_buf, need * sizeof(float));
        if (!p) abort(); /* a few hundred kB: nothing sensible to do without it */
        im2col_buf = p;
        im2col_cap = need;
    }
    cols = im2col_buf; /* (C_in * K, nf) row-major: cols[(c * K + k) * nf + j] */
    for (long c = 0; c < cin; c++)
        for (long k = 0; k < kk; k++) {
            const float *src = j->x + c * t + f0 * s + k;
            float *dst = cols + (c * kk + k) * nf;
            if (s == 1) memcpy(dst, src, (size_t)nf * sizeof(float));
            else for (long i = 0; i < nf; i++) dst[i] = src[i * s];
        }
    if (j->b)
        for (long o = o0; o < o1; o++)
            for (long f = f0; f < f1; f++) j->y[o * frames + f] = j->b[o];
    /* column-major: y^T (frames x C_out, block) = cols^T (nf x CK) @ W^T (CK x C_out) */
    before = blas_local_threads(1);
    sgemm("N", "N", &M, &N, &K, &one, cols, &lda, j->w + o0 * ck, &ldb, &beta,
          j->y + o0 * frames + f0, &ldc);
    blas_local_threads(before);
}

static void run_conv_part(const job_t *j, long part)
{
    long frames = j->frames, m = j->m;
    if (frames >= 32) { /* split the frames: each thread copies only its own columns */
        long half = frames / 2;
        conv_block(j, 0, m, part ? half : 0, part ? frames : half);
    } else { /* few frames: split the output channels */
        long half = m / 2;
        conv_block(j, part ? half : 0, part ? m : half, 0, frames);
    }
}

/* Run the current product's unclaimed blocks, if it is still generation gen. */
static void run_blocks(uint64_t gen)
{
    for (;;) {
        uint64_t c = atomic_load(&claim);
        if ((c >> GEN_SHIFT) != gen || (c & FIELD) >= ((c >> COUNT_SHIFT) & FIELD)) return;
        if (!atomic_compare_exchange_weak(&claim, &c, c + 1)) continue;
        /* A claimed block keeps its product from finishing, so job stays as it is. */
        if (job.conv) {
            run_conv_part(&job, (long)(c & FIELD));
        } else {
            long r0 = (long)(c & FIELD) * job.block;
            long r1 = r0 + job.block < job.m ? r0 + job.block : job.m;
            kernel(job.w, job.x, job.b, job.y, job.n, job.m, job.k, r0, r1);
        }
        atomic_fetch_add(&blocks_done, 1);
    }
}

/* Keep the helper spinning for at least ns more. */
static void extend_spin(long ns)
{
    long t = now_ns() + ns, cur = atomic_load(&spin_until);
    while (cur < t && !atomic_compare_exchange_weak(&spin_until, &cur, t)) {
    }
}

static void *helper_main(void *arg)
{
    uint64_t seen = 0, gen;
    unsigned long seen_wakes = 0;
    (void)arg;
    for (;;) {
        while ((gen = atomic_load(&claim) >> GEN_SHIFT) == seen &&
               now_ns() < atomic_load(&spin_until))
            _mm_pause();
        if (gen == seen) {
            pthread_mutex_lock(&mutex);
            atomic_store(&helper_asleep, 1); /* seq_cst: the caller sees it or we see its claim */
            while ((gen = atomic_load(&claim) >> GEN_SHIFT) == seen &&
                   atomic_load(&wakes) == seen_wakes)
                pthread_cond_wait(&wake_cond, &mutex);
            atomic_store(&helper_asleep, 0);
            seen_wakes = atomic_load(&wakes);
            pthread_mutex_unlock(&mutex);
            if (gen == seen) continue; /* woken ahead of a chunk: spin for its products */
        }
        seen = gen;
        run_blocks(gen);
        extend_spin(SPIN_NS);
    }
    return NULL;
}

static void after_fork_in_child(void)
{
    /* fork() copies only the calling thread: the child starts its own helper if it needs one,
     * and forgets a product another thread of the parent was in the middle of (its new
     * helper would run the leftover blocks, into the parent's output, and count them into
     * the child's next product: review) */
    helper_started = 0;
    generation = 0;
    atomic_store(&claim, 0);
    atomic_store(&blocks_done, 0);
    atomic_store(&spin_until, 0);
    atomic_store(&wakes, 0);
    atomic_store(&helper_asleep, 0);
    atomic_flag_clear(&helper_busy);
    pthread_mutex_init(&mutex, NULL);
    pthread_cond_init(&wake_cond, NULL);
}

static int start_helper(void)
{
    pthread_t t;
    pthread_attr_t attr;
    int ok;
    if (helper_started) return 1;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    ok = pthread_create(&t, &attr, helper_main, NULL) == 0;
    pthread_attr_destroy(&attr);
    helper_started = ok;
    return ok;
}

/* Post job (written by the caller, who holds helper_busy) as a new generation, run the blocks
 * the helper does not claim, wait for those it did, and let the helper go. ``wake``: signal a
 * sleeping helper (else the caller runs every block itself). */
static void run_shared(int wake)
{
    atomic_store(&blocks_done, 0);
    generation = (generation + 1) & 0xffffffULL;
    if (generation == 0) generation = 1; /* the helper starts having seen 0 */
    atomic_store(&claim, generation << GEN_SHIFT | (uint64_t)job.nblocks << COUNT_SHIFT);
    if (wake && atomic_load(&helper_asleep)) {
        pthread_mutex_lock(&mutex);
        pthread_cond_signal(&wake_cond);
        pthread_mutex_unlock(&mutex);
    }
    run_blocks(generation);
    while (atomic_load(&blocks_done) < job.nblocks) _mm_pause(); /* blocks the helper took */
    atomic_flag_clear(&helper_busy);
}

static void product(const float *w, const float *x, const float *b, float *y, long n, long m,
                    long k, int threads)
{
    long block;
    if (threads < 2 || m < 64 || atomic_flag_test_and_set(&helper_busy)) {
        kernel(w, x, b, y, n, m, k, 0, m);
        return;
    }
    if (!start_helper()) {
        atomic_flag_clear(&helper_busy);
        kernel(w, x, b, y, n, m, k, 0, m);
        return;
    }
    block = ((m / 16) + 3) & ~3L; /* ~16 blocks, whole 4-row tiles */
    if (block < 16) block = 16;
    job.conv = 0;
    job.w = w; job.x = x; job.b = b; job.y = y;
    job.n = n; job.m = m; job.k = k; job.block = block;
    job.nblocks = (m + block - 1) / block;
    run_shared(1);
}

/* y (C_out, frames) = bias + conv1d(x (C_in, t), W (C_out, C_in * K)), stride s; in two
 * parts, the second for the helper if it is awake (a sleeping one is not woken for this: the
 * call would wait longer than the part takes). */
static void conv(const float *w, const float *x, const float *b, float *y, long cin, long t,
                 long kk, long s, long frames, long m, int threads)
{
    int shared = 0;
    job_t mine = {1, w, x, b, y, 0, m, 0, 0, 2, cin, t, kk, s, frames};
    if (threads >= 2 && !atomic_flag_test_and_set(&helper_busy)) {
        shared = helper_started && !atomic_load(&helper_asleep);
        if (!shared) atomic_flag_clear(&helper_busy);
    }
    if (!shared) { /* alone, in one piece (job belongs to the helper's user) */
        conv_block(&mine, 0, m, 0, frames);
        return;
    }
    job = mine;
    run_shared(0);
}

/* Get the helper up and spinning for ns: a chunk's first product then finds it awake (from
 * its condition variable, a sleeping thread takes ~50-100 us to run on a VM). */
static void wake_helper(long ns)
{
    if (!atomic_flag_test_and_set(&helper_busy)) { /* else a product runs: it is awake */
        int ok = start_helper();
        atomic_flag_clear(&helper_busy);
        if (!ok) return;
    }
    extend_spin(ns);
    atomic_fetch_add(&wakes, 1);
    if (atomic_load(&helper_asleep)) {
        pthread_mutex_lock(&mutex);
        pthread_cond_signal(&wake_cond);
        pthread_mutex_unlock(&mutex);
    }
}
#endif

static PyObject *py_wake(PyObject *self, PyObject *args)
{
    long long ns;
    (void)self;
    if (!PyArg_ParseTuple(args, "L", &ns)) return NULL;
#ifdef HAVE_KERNELS
    if (kernel != NULL) wake_helper((long)ns);
#endif
    Py_RETURN_NONE;
}

static PyObject *py_linear(PyObject *self, PyObject *args)
{
    Py_ssize_t y, w, x, b, n, m, k;
    int threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "nnnnnnni", &y, &w, &x, &b, &n, &m, &k, &threads)) return NULL;
    if (n < 1 || m < 1 || k < 1 || !y || !w || !x) {
        PyErr_SetString(PyExc_ValueError, "empty product or null pointer");
        return NULL;
    }
#ifdef HAVE_KERNELS
    if (kernel != NULL) {
        Py_BEGIN_ALLOW_THREADS
        product((const float *)w, (const float *)x, (const float *)b, (float *)y, (long)n,
                (long)m, (long)k, threads);
        Py_END_ALLOW_THREADS
        Py_RETURN_NONE;
    }
#endif
    PyErr_SetString(PyExc_RuntimeError, "no kernel for this CPU");
    return NULL;
}

/* Look up sgemm_ and MKL's per-thread thread count in the loaded library at ``path`` (the
 * BLAS PyTorch calls), and check the convolution against a plain loop. */
static PyObject *py_blas_init(PyObject *self, PyObject *args)
{
    const char *path;
    (void)self;
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
#ifdef HAVE_KERNELS
    if (sgemm == NULL) {
        void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
        sgemm_fn g = lib ? (sgemm_fn)dlsym(lib, "sgemm_") : NULL;
        set_threads_fn n = lib ? (set_threads_fn)dlsym(lib, "MKL_Set_Num_Threads_Local") : NULL;
        if (g && n) {
            /* 3 -> 2 channels, kernel 3, stride 2, 9 samples: 4 frames */
            float x[27], w[18], b[2] = {0.5f, -1.0f}, y[8], want[8];
            job_t j = {1, w, x, b, y, 0, 2, 0, 0, 2, 3, 9, 3, 2, 4};
            int ok = 1;
            for (int i = 0; i < 27; i++) x[i] = (float)((i * 7) % 11) - 5.0f;
            for (int i = 0; i < 18; i++) w[i] = (float)((i * 5) % 7) - 3.0f;
            for (int o = 0; o < 2; o++)
                for (int f = 0; f < 4; f++) {
                    float acc = b[o];
                    for (int c = 0; c < 3; c++)
                        for (int k = 0; k < 3; k++) acc += w[o * 9 + c * 3 + k] * x[c * 9 + f * 2 + k];
                    want[o * 4 + f] = acc;
                }
            sgemm = g;
            blas_local_threads = n;
            conv_block(&j, 0, 2, 0, 4);
            for (int i = 0; i < 8; i++) ok &= y[i] == want[i]; /* small integers: exact */
            if (!ok) sgemm = NULL, blas_local_threads = NULL;
        }
    }
    return PyBool_FromLong(sgemm != NULL);
#else
    (void)path;
    Py_RETURN_FALSE;
#endif
}

static PyObject *py_conv(PyObject *self, PyObject *args)
{
    Py_ssize_t y, w, x, b, cin, t, k, s, frames, m;
    int threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "nnnnnnnnnni", &y, &w, &x, &b, &cin, &t, &k, &s, &frames, &m,
                          &threads))
        return NULL;
    if (cin < 1 || k < 1 || s < 1 || frames < 1 || m < 1 || (frames - 1) * s + k > t || !y ||
        !w || !x) {
        PyErr_SetString(PyExc_ValueError, "empty convolution, short input or null pointer");
        return NULL;
    }
#ifdef HAVE_KERNELS
    if (sgemm != NULL) {
        Py_BEGIN_ALLOW_THREADS
        conv((const float *)w, (const float *)x, (const float *)b, (float *)y, (long)cin,
             (long)t, (long)k, (long)s, (long)frames, (long)m, threads);
        Py_END_ALLOW_THREADS
        Py_RETURN_NONE;
    }
#endif
    PyErr_SetString(PyExc_RuntimeError, "no BLAS: blas_init() first");
    return NULL;
}

static PyObject *py_kernel(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
#ifdef HAVE_KERNELS
    return PyUnicode_FromString(kernel_name);
#else
    return PyUnicode_FromString("");
#endif
}

static PyMethodDef methods[] = {
    {"linear", py_linear, METH_VARARGS,
     "linear(y, w, x, b, n, m, k, threads): y (n, m) = x (n, k) @ w (m, k).T + b (m,), "
     "contiguous float32 at these addresses (b may be 0); threads: 1, or 2 with a helper"},
    {"wake", py_wake, METH_VARARGS,
     "wake(ns): the helper spins for ns from now, ready for the products of a chunk"},
    {"kernel", py_kernel, METH_NOARGS, "the instruction set used ('avx512', 'avx2'), '' if none"},
    {"blas_init", py_blas_init, METH_VARARGS,
     "blas_init(path): use the sgemm_ of the loaded library at path for conv(); True if usable"},
    {"conv", py_conv, METH_VARARGS,
     "conv(y, w, x, b, cin, t, k, stride, frames, m, threads): y (m, frames) = b + conv1d of "
     "x (cin, t) with w (m, cin * k), contiguous float32 (b may be 0); threads: 1, or 2 with "
     "the helper if it is awake"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_gemv", "Few-row products with a big float32 weight.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__gemv(void)
{
#ifdef HAVE_KERNELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        kernel = rows_avx512;
        kernel_name = "avx512";
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        kernel = rows_avx2;
        kernel_name = "avx2";
    }
    pthread_atfork(NULL, NULL, after_fork_in_child);
#endif
    return PyModule_Create(&module);
}
