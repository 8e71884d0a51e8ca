/*
 * opstrata.plugins.llmops._textscan: textscan.scan in one pass over a string column's bytes.
 *
 * The numpy scan (plugins/llmops/textscan.py, kept as the reference and for what this does not
 * take) makes a dozen passes over the bytes and temporaries of their size: ~1.2 µs a call's
 * messages here, a tenth of what recognising a call costs. The answers are the same, row for
 * row (tests/test_llmops_hint.py compares both):
 *   - at: texts with an "@";
 *   - keys: texts where a key prefix of privacy's API-key pattern starts ("sk-", "xox?-",
 *     "hf_", "gh?_", "AKIA", "AIza", "bearer" in any ASCII case); a prefix is looked for across
 *     the end of its text, up to the end of the column's bytes, as numpy's search of the whole
 *     block does;
 *   - digits: texts with 7 digits, each at most 3 bytes after the one before (within a text).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t *p;
    size_t n, cap;
} Rows;

static int
rows_add(Rows *r, int64_t row)
{
    if (r->n && r->p[r->n - 1] == row)
        return 0;
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 256;
        int64_t *p = realloc(r->p, cap * sizeof *p);
        if (p == NULL)
            return -1;
        r->p = p;
        r->cap = cap;
    }
    r->p[r->n++] = row;
    return 0;
}

static inline int
lower(uint8_t c)
{
    return c | 0x20;
}

/* Whether a key prefix starts at d[i] (the column's bytes end at `end`). */
static inline int
key_at(const uint8_t *d, size_t i, size_t end)
{
    size_t left = end - i;
    switch (d[i]) {
    case 's':
        return left >= 3 && d[i + 1] == 'k' && d[i + 2] == '-';
    case 'x':
        return left >= 5 && d[i + 1] == 'o' && d[i + 2] == 'x' && d[i + 4] == '-';
    case 'h':
        return left >= 3 && d[i + 1] == 'f' && d[i + 2] == '_';
    case 'g':
        return left >= 4 && d[i + 1] == 'h' && d[i + 3] == '_';
    case 'A':
        return left >= 4 && d[i + 1] == 'K' && d[i + 2] == 'I' && d[i + 3] == 'A'
                   ? 1
                   : left >= 4 && d[i + 1] == 'I' && d[i + 2] == 'z' && d[i + 3] == 'a';
    case 'b':
    case 'B':
        return left >= 6 && lower(d[i + 1]) == 'e' && lower(d[i + 2]) == 'a' &&
               lower(d[i + 3]) == 'r' && lower(d[i + 4]) == 'e' && lower(d[i + 5]) == 'r';
    default:
        return 0;
    }
}

/* A lookup of the bytes that can start a key prefix, or are "@" or a digit: the rest (most
 * bytes of a text) cost one load and one test. */
static uint8_t interesting[256];

static PyObject *
as_bytes(const Rows *r)
{
    return PyBytes_FromStringAndSize((const char *)r->p, (Py_ssize_t)(r->n * sizeof(int64_t)));
}

PyDoc_STRVAR(scan_doc,
"scan(offsets, data) -> (at, keys, digits)\n"
"--\n\n"
"offsets: the int32 offsets of a string array (len + 1, absolute into data); data: its bytes.\n"
"Returns the rows of each flag as native int64 bytes (sorted, distinct).");

static PyObject *
textscan_scan(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer ov, dv;
    if (!PyArg_ParseTuple(args, "y*y*:scan", &ov, &dv))
        return NULL;
    PyObject *result = NULL;
    size_t n_offsets = (size_t)ov.len / sizeof(int32_t);
    const int32_t *off = ov.buf;
    const uint8_t *d = dv.buf;
    Rows at = {0}, keys = {0}, digits = {0};
    int failed = 0;
    if (n_offsets == 0 || ov.len % sizeof(int32_t)) {
        PyErr_SetString(PyExc_ValueError, "offsets must be int32, at least one");
        goto done;
    }
    size_t rows = n_offsets - 1, end = (size_t)off[rows];
    if ((size_t)dv.len < end || off[0] < 0 || (size_t)off[0] > end) {
        PyErr_SetString(PyExc_ValueError, "offsets out of the data's range");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (size_t r = 0; r < rows && !failed; r++) {
        size_t i = (size_t)off[r], stop = (size_t)off[r + 1];
        if (stop < i || stop > end) {
            failed = 2;
            break;
        }
        int has_at = 0, has_key = 0, has_digits = 0;
        size_t run = 0, last = 0; /* digits in the current run, and where the last one was */
        for (; i < stop; i++) {
            uint8_t c = d[i];
            if (!interesting[c])
                continue;
            if (c == '@')
                has_at = 1;
            else if (c >= '0' && c <= '9') {
                run = (run && i - last <= 4) ? run + 1 : 1;
                last = i;
                if (run >= 7)
                    has_digits = 1;
            }
            else if (!has_key && key_at(d, i, end))
                has_key = 1;
        }
        if ((has_at && rows_add(&at, (int64_t)r) < 0) ||
            (has_key && rows_add(&keys, (int64_t)r) < 0) ||
            (has_digits && rows_add(&digits, (int64_t)r) < 0))
            failed = 1;
    }
    Py_END_ALLOW_THREADS
    if (failed == 1)
        PyErr_NoMemory();
    else if (failed == 2)
        PyErr_SetString(PyExc_ValueError, "offsets must not decrease");
    else {
        PyObject *a = as_bytes(&at), *k = as_bytes(&keys), *g = as_bytes(&digits);
        if (a && k && g)
            result = PyTuple_Pack(3, a, k, g);
        Py_XDECREF(a);
        Py_XDECREF(k);
        Py_XDECREF(g);
    }
done:
    free(at.p);
    free(keys.p);
    free(digits.p);
    PyBuffer_Release(&ov);
    PyBuffer_Release(&dv);
    return result;
}

static PyMethodDef textscan_methods[] = {
    {"scan", textscan_scan, METH_VARARGS, scan_doc},
    {NULL, NULL, 0, NULL},
};

static int
textscan_exec(PyObject *module)
{
    (void)module;
    memset(interesting, 0, sizeof interesting);
    interesting['@'] = 1;
    for (int c = '0'; c <= '9'; c++)
        interesting[c] = 1;
    const char *starts = "sxhgAbB";
    for (const char *s = starts; *s; s++)
        interesting[(uint8_t)*s] = 1;
    return 0;
}

static PyModuleDef_Slot textscan_slots[] = {
    {Py_mod_exec, textscan_exec},
    {0, NULL},
};

static struct PyModuleDef textscan_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "opstrata.plugins.llmops._textscan",
    .m_doc = "The masking pre-filter's byte scan of a string column (textscan.scan).",
    .m_size = 0,
    .m_methods = textscan_methods,
    .m_slots = textscan_slots,
};

PyMODINIT_FUNC
PyInit__textscan(void)
{
    return PyModuleDef_Init(&textscan_module);
}
