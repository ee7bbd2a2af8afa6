/*
 * The real-time audio callback in C: PortAudio calls it on its audio thread, and it never
 * takes Python's GIL.
 *
 * Why: a Python callback needs the GIL once per audio block (5.3 ms at 256 frames). When
 * another Python thread holds the GIL and the OS preempts that thread, the callback waits
 * for the OS to run it again: measured on the 2-core VM, a 1 ms sleeper waiting on a busy
 * Python thread woke 13.8 ms late at p99 (38 ms worst); under CPU load nearly every missed
 * JACK cycle was "engine in its callback". This callback only copies between PortAudio's
 * buffers and two single-producer/single-consumer rings that Python shares (numpy arrays
 * whose addresses and indices live in one int64 block, see native_io.py).
 *
 * Ring protocol: each index only grows; the producer writes samples, then publishes its index
 * with a release store; the consumer loads the other side's index with an acquire load before
 * touching samples. Counters are plain aligned 64-bit stores, read approximately by Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if defined(_MSC_VER)
#include <intrin.h>
/* Interlocked operations are full barriers on x64 and ARM64 alike (MSVC's volatile orders
 * nothing on ARM64). */
static int64_t load_acquire(volatile int64_t *p) { return _InterlockedOr64((volatile __int64 *)p, 0); }
static void store_release(volatile int64_t *p, int64_t v) { _InterlockedExchange64((volatile __int64 *)p, v); }
#else
static int64_t load_acquire(volatile int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static void store_release(volatile int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
#endif

/* Slots of the shared int64 block; native_io.SLOTS lists the same names in this order. */
enum {
    IN_BUF, IN_CAP, IN_W, IN_R,
    OUT_BUF, OUT_CAP, OUT_W, OUT_R,
    IN_CHANNELS, OUT_CHANNELS, INPUT_CHANNEL, STARTED,
    INPUT_OVERFLOWS, OUTPUT_UNDERFLOWS, UNDERRUNS, UNDERRUN_SAMPLES,
    CALLBACKS_IN, CALLBACKS_OUT, FRAMES_IN, FRAMES_OUT, MAX_BLOCK,
    RING_OVERFLOW_EVENTS, RING_OVERFLOW_SAMPLES, IO_BALANCE,
    N_SLOTS
};

#define PA_INPUT_OVERFLOW 0x2UL   /* paInputOverflow */
#define PA_OUTPUT_UNDERFLOW 0x4UL /* paOutputUnderflow */

/* PortAudio's PaStreamCallback, with its types spelled out (no PortAudio headers needed):
 * interleaved float32 buffers; returns paContinue (0). Capacities are powers of two. */
static int rt_callback(const void *input, void *output, unsigned long frames,
                       const void *time_info, unsigned long flags, void *user)
{
    volatile int64_t *s = (volatile int64_t *)user;
    int64_t n = (int64_t)frames;
    (void)time_info;
    if (input != NULL) {
        const float *in = (const float *)input;
        float *buf = (float *)(intptr_t)s[IN_BUF];
        int64_t mask = s[IN_CAP] - 1, ch = s[IN_CHANNELS], sel = s[INPUT_CHANNEL];
        int64_t w = s[IN_W], r = load_acquire(&s[IN_R]);
        int64_t space = s[IN_CAP] - (w - r), k = n;
        s[CALLBACKS_IN] += 1;
        s[FRAMES_IN] += n;
        if (flags & PA_INPUT_OVERFLOW) s[INPUT_OVERFLOWS] += 1;
        if (k > space) { /* the worker is far behind: drop the excess, counted */
            s[RING_OVERFLOW_EVENTS] += 1;
            s[RING_OVERFLOW_SAMPLES] += k - space;
            k = space;
        }
        if (sel >= 0 || ch == 1) {
            int64_t c = sel >= 0 ? sel : 0;
            for (int64_t i = 0; i < k; i++) buf[(w + i) & mask] = in[i * ch + c];
        } else { /* mono mix of all channels */
            float g = 1.0f / (float)ch;
            for (int64_t i = 0; i < k; i++) {
                float v = 0.0f;
                for (int64_t c = 0; c < ch; c++) v += in[i * ch + c];
                buf[(w + i) & mask] = v * g;
            }
        }
        store_release(&s[IN_W], w + k);
    }
    if (output != NULL) {
        float *out = (float *)output;
        const float *buf = (const float *)(intptr_t)s[OUT_BUF];
        int64_t mask = s[OUT_CAP] - 1, ch = s[OUT_CHANNELS];
        int64_t r = s[OUT_R], w = load_acquire(&s[OUT_W]);
        int64_t k = w - r < n ? w - r : n;
        s[CALLBACKS_OUT] += 1;
        s[FRAMES_OUT] += n;
        if (n > s[MAX_BLOCK]) s[MAX_BLOCK] = n;
        if (flags & PA_OUTPUT_UNDERFLOW) s[OUTPUT_UNDERFLOWS] += 1;
        for (int64_t i = 0; i < k; i++) {
            float v = buf[(r + i) & mask];
            for (int64_t c = 0; c < ch; c++) out[i * ch + c] = v; /* mono to every channel */
        }
        for (int64_t i = k * ch; i < n * ch; i++) out[i] = 0.0f; /* always fill the output */
        if (k < n && load_acquire(&s[STARTED])) {
            s[UNDERRUNS] += 1;
            s[UNDERRUN_SAMPLES] += n - k;
        }
        store_release(&s[OUT_R], r + k);
        /* captured minus played, where no other output callback can interleave */
        s[IO_BALANCE] = load_acquire(&s[IN_W]) - (r + k);
    }
    return 0;
}

static PyObject *callback_address(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return PyLong_FromVoidPtr((void *)&rt_callback);
}

static PyObject *py_load(PyObject *self, PyObject *arg)
{
    (void)self;
    void *p = PyLong_AsVoidPtr(arg);
    if (p == NULL && PyErr_Occurred()) return NULL;
    return PyLong_FromLongLong(load_acquire((volatile int64_t *)p));
}

static PyObject *py_store(PyObject *self, PyObject *args)
{
    PyObject *addr;
    long long value;
    (void)self;
    if (!PyArg_ParseTuple(args, "OL", &addr, &value)) return NULL;
    void *p = PyLong_AsVoidPtr(addr);
    if (p == NULL && PyErr_Occurred()) return NULL;
    store_release((volatile int64_t *)p, (int64_t)value);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"callback_address", callback_address, METH_NOARGS,
     "Address of the PortAudio stream callback (a PaStreamCallback)."},
    {"load", py_load, METH_O, "Acquire-load of the int64 at an address."},
    {"store", py_store, METH_VARARGS, "Release-store of an int64 at an address."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_rtio",
    .m_doc = "GIL-free PortAudio callback over shared rings.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__rtio(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "N_SLOTS", N_SLOTS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
