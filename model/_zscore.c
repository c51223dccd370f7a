/* Z-score the colour channels of a block of face crops, as NBHRnet takes them.
 *
 * model.nbhrnet.normalise_window's work for uint8 crops, in two passes over the crops instead
 * of OpenCV's four (statistics, channel split, then one scaled conversion per channel): the
 * first sums each channel and its squares in integers (exact), the second writes every frame
 * channels-first as float32 (x - mean) / std. The loops are plain C that the compiler
 * vectorises; with GCC on x86-64 each is compiled for AVX-512, AVX2 and the baseline, and the
 * loader picks the one the CPU runs (target_clones), so one build serves every machine.
 *
 * zscore(src, frames, min_std, out) -> None
 *   src: C-contiguous uint8 buffer, `frames` frames of H x W pixels of 3 interleaved channels.
 *   frames: the number of frames (> 0); H x W is the buffer's size / (3 * frames).
 *   min_std: a channel whose standard deviation is below it is divided by min_std instead.
 *   out: writable C-contiguous float32 buffer of frames x 3 x H x W, channels first.
 * Raises ValueError when the sizes do not fit. Python's lock is released while it works.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 11
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VECTOR_CLONES
#endif

/* Values each 32-bit lane adds up before it is moved to 64 bits: 255^2 * LANE_RUN < 2^32. */
#define LANE_RUN 4096
/* Pixels split into channel planes at a time (a few kB on the stack, in L1). */
#define CHUNK 1024

/* Sums of each of the 3 interleaved channels of n pixels, and of their squares. The 48 lanes
 * (16 pixels) keep the channel of lane k fixed (k % 3), so the inner loop has no shuffles. */
VECTOR_CLONES
static void channel_sums(const uint8_t *p, size_t n, uint64_t sum[3], uint64_t sq[3])
{
    size_t i = 0;
    while (n - i >= 16) {
        uint32_t a[48] = {0}, b[48] = {0};
        size_t run = (n - i) / 16; /* 16 pixels a step, one value of each lane */
        if (run > LANE_RUN)
            run = LANE_RUN;
        for (size_t r = 0; r < run; r++, i += 16) {
            const uint8_t *px = p + 3 * i;
            for (int k = 0; k < 48; k++) {
                uint32_t v = px[k];
                a[k] += v;
                b[k] += v * v;
            }
        }
        for (int k = 0; k < 48; k++) {
            sum[k % 3] += a[k];
            sq[k % 3] += b[k];
        }
    }
    for (; i < n; i++)
        for (int c = 0; c < 3; c++) {
            uint64_t v = p[3 * i + c];
            sum[c] += v;
            sq[c] += v * v;
        }
}

/* One frame of hw interleaved pixels into its 3 planes, plane c = x * scale[c] + shift[c]. */
VECTOR_CLONES
static void frame_planes(const uint8_t *p, size_t hw, const float scale[3], const float shift[3],
                         float *out)
{
    uint8_t plane[3][CHUNK];
    for (size_t base = 0; base < hw; base += CHUNK) {
        size_t m = hw - base < CHUNK ? hw - base : CHUNK;
        const uint8_t *px = p + 3 * base;
        for (size_t i = 0; i < m; i++) {
            plane[0][i] = px[3 * i];
            plane[1][i] = px[3 * i + 1];
            plane[2][i] = px[3 * i + 2];
        }
        for (int c = 0; c < 3; c++) {
            float *o = out + c * hw + base;
            const float sc = scale[c], sh = shift[c];
            for (size_t i = 0; i < m; i++)
                o[i] = (float)plane[c][i] * sc + sh;
        }
    }
}

static void zscore_block(const uint8_t *src, size_t frames, size_t hw, double min_std, float *out)
{
    uint64_t sum[3] = {0, 0, 0}, sq[3] = {0, 0, 0};
    const size_t n = frames * hw;
    channel_sums(src, n, sum, sq);
    float scale[3], shift[3];
    for (int c = 0; c < 3; c++) {
        const double mean = (double)sum[c] / (double)n;
        const double var = (double)sq[c] / (double)n - mean * mean;
        const double std = var > 0.0 ? sqrt(var) : 0.0;
        const double s = 1.0 / (std > min_std ? std : min_std);
        scale[c] = (float)s;
        shift[c] = (float)(-mean * s);
    }
    for (size_t f = 0; f < frames; f++)
        frame_planes(src + 3 * hw * f, hw, scale, shift, out + 3 * hw * f);
}

static PyObject *zscore(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer src, out;
    Py_ssize_t frames;
    double min_std;
    if (!PyArg_ParseTuple(args, "y*ndw*", &src, &frames, &min_std, &out))
        return NULL;
    /* y* and w* take only C-contiguous buffers (a strided array is a TypeError). */
    const char *problem = NULL;
    if (frames <= 0 || src.len == 0 || frames > src.len / 3 || src.len % (3 * frames) != 0)
        problem = "src must hold frames x H x W x 3 bytes, frames > 0";
    else if (out.len != (Py_ssize_t)sizeof(float) * src.len)
        problem = "out must hold one float32 for each byte of src";
    else if (!(min_std > 0.0))
        problem = "min_std must be positive";
    if (problem == NULL) {
        const size_t hw = (size_t)(src.len / (3 * frames));
        Py_BEGIN_ALLOW_THREADS
        zscore_block((const uint8_t *)src.buf, (size_t)frames, hw, min_std, (float *)out.buf);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    if (problem != NULL) {
        PyErr_SetString(PyExc_ValueError, problem);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"zscore", zscore, METH_VARARGS,
     "zscore(src, frames, min_std, out): uint8 frames x H x W x 3 into float32 frames x 3 x H "
     "x W, each channel z-scored over the whole block."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_zscore", "Z-score the colour channels of a block of face crops.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__zscore(void)
{
    return PyModule_Create(&module);
}
