/* Decode only a rectangle of a JPEG image, with libjpeg-turbo.
 *
 * A worker that crops the face needs, of each MJPEG frame, only the rows and columns around
 * the face box. libjpeg-turbo can skip what lies outside: jpeg_skip_scanlines skips the rows
 * above the part (their entropy-coded data is still read, their inverse DCT, upsampling and
 * colour conversion are not), jpeg_crop_scanline narrows every row to the part's columns
 * (widened to whole MCUs), and the rows below the part are never decoded at all: decoding
 * stops at the part's last row. OpenCV's imdecode always decodes the whole image.
 *
 * decode_part(data, scale, x0, y0, x1, y1, out) -> None
 *   data: the JPEG (any object with the buffer protocol).
 *   scale: 1, 2, 4 or 8: decode at 1/scale of the coded size, as cv2.IMREAD_REDUCED_* does.
 *   x0, y0, x1, y1: the part, in pixels of the decoded (scaled) image, clipped to it.
 *   out: a writable C-contiguous uint8 buffer of height * width * 3 or * 4 bytes, the decoded
 *     image's size; the part's rows (at least its columns) are written into it in place, as
 *     BGR or, in a 4-byte buffer, as BGRA (alpha 255).
 * Raises ValueError with libjpeg's message for data it cannot decode, or when `out` is not the
 * decoded image's size. Python's lock is released while libjpeg works.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

struct part_error {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

static void on_error(j_common_ptr cinfo)
{
    struct part_error *err = (struct part_error *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

/* Warnings (corrupt data that libjpeg can decode past) are not printed, as in OpenCV. */
static void on_message(j_common_ptr cinfo, int level)
{
    (void)cinfo;
    (void)level;
}

static long clip(long v, long lo, long hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

/* 0 on success; 1 with err->message set on a libjpeg error; 2 when `out` has the wrong size
 * (message set too). Touches no Python object. */
static int decode(const unsigned char *data, size_t size, int scale, long x0, long y0, long x1,
                  long y1, unsigned char *out, size_t out_size, struct part_error *err)
{
    struct jpeg_decompress_struct cinfo;
    cinfo.err = jpeg_std_error(&err->pub);
    err->pub.error_exit = on_error;
    err->pub.emit_message = on_message;
    jpeg_create_decompress(&cinfo);
    if (setjmp(err->jump)) {
        jpeg_destroy_decompress(&cinfo);
        return 1;
    }
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)scale;
    jpeg_calc_output_dimensions(&cinfo);
    long width = (long)cinfo.output_width, height = (long)cinfo.output_height;
    size_t pixels = (size_t)width * (size_t)height;
    if (pixels * 3 != out_size && pixels * 4 != out_size) {
        snprintf(err->message, sizeof err->message,
                 "out holds %zu bytes; the image decodes to %ldx%ld (%zu bytes as BGR, %zu as "
                 "BGRA)", out_size, width, height, pixels * 3, pixels * 4);
        jpeg_destroy_decompress(&cinfo);
        return 2;
    }
    long channels = pixels * 3 == out_size ? 3 : 4;
    cinfo.out_color_space = channels == 3 ? JCS_EXT_BGR : JCS_EXT_BGRA;
    jpeg_start_decompress(&cinfo);
    x0 = clip(x0, 0, width - 1);
    x1 = clip(x1, x0 + 1, width);
    y0 = clip(y0, 0, height - 1);
    y1 = clip(y1, y0 + 1, height);
    JDIMENSION xoff = (JDIMENSION)x0, cols = (JDIMENSION)(x1 - x0);
    if (cols < (JDIMENSION)width)
        jpeg_crop_scanline(&cinfo, &xoff, &cols); /* widened to whole MCUs */
    if (y0 > 0)
        jpeg_skip_scanlines(&cinfo, (JDIMENSION)y0);
    while ((long)cinfo.output_scanline < y1) {
        JSAMPROW row = out + ((size_t)cinfo.output_scanline * width + xoff) * channels;
        if (jpeg_read_scanlines(&cinfo, &row, 1) != 1)
            break; /* suspended: the data ended early (libjpeg warned and padded) */
    }
    jpeg_abort_decompress(&cinfo); /* the rows below the part are never decoded */
    jpeg_destroy_decompress(&cinfo);
    return 0;
}

static PyObject *decode_part(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer data, out;
    int scale;
    long x0, y0, x1, y1;
    if (!PyArg_ParseTuple(args, "y*illllw*", &data, &scale, &x0, &y0, &x1, &y1, &out))
        return NULL;
    if (!PyBuffer_IsContiguous(&out, 'C') || out.readonly) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "out must be a writable C-contiguous buffer");
        return NULL;
    }
    if (scale != 1 && scale != 2 && scale != 4 && scale != 8) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&out);
        PyErr_Format(PyExc_ValueError, "scale must be 1, 2, 4 or 8, not %d", scale);
        return NULL;
    }
    struct part_error err;
    err.message[0] = '\0';
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = decode((const unsigned char *)data.buf, (size_t)data.len, scale, x0, y0, x1, y1,
                    (unsigned char *)out.buf, (size_t)out.len, &err);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    if (status != 0) {
        PyErr_SetString(PyExc_ValueError, err.message);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"decode_part", decode_part, METH_VARARGS,
     "decode_part(data, scale, x0, y0, x1, y1, out): decode rows y0..y1 (at least columns "
     "x0..x1) of a JPEG at 1/scale into out (height x width x 3 BGR, or x 4 BGRA), in place."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpegpart", "Decode a rectangle of a JPEG with libjpeg-turbo.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__jpegpart(void)
{
    return PyModule_Create(&module);
}
