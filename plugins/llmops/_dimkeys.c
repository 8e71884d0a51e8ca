/*
 * opstrata.plugins.llmops._dimkeys: the distinct combinations of a few string columns, in one
 * pass over their buffers (dims.group_rows; dims._group_rows_arrow is the reference, and
 * tests/test_llmops_dims.py compares both).
 *
 * Encoding each column apart (Arrow's dictionary_encode, ~60 µs a column at 3,000 rows, then
 * a key per row) cost a write ~1 ms for the thirteen columns of llmops_dims. Here a row equal to
 * the one before (the usual case: a write's calls come in runs) costs a memcmp per column; any
 * other row is hashed and looked up in a small open-addressing table of the combinations met,
 * each compared in full, so the answer is exact whatever the texts hold.
 *
 * group(columns, n, group_out, first_out, values=True) -> (count, values)
 *   columns: a sequence of (validity or None, offsets (int32), data or None, offset), the
 *            buffers of an Arrow string array of n rows and its offset;
 *   group_out: n int64, each row's combination (0, 1, ... in order of first appearance);
 *   first_out: n int64, the first row of each combination (count of them written);
 *   values: each combination's texts, a tuple (None for NULL) per combination (an empty list
 *           when not asked for).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    Py_buffer valid, offsets, data;
    int has_valid, has_data;
    const uint8_t *v;
    const int32_t *o;
    const uint8_t *d;
    Py_ssize_t offset;
} Column;

static inline int
is_valid(const Column *c, Py_ssize_t i)
{
    if (!c->has_valid)
        return 1;
    Py_ssize_t j = c->offset + i;
    return (c->v[j >> 3] >> (j & 7)) & 1;
}

static int
same_rows(const Column *cols, Py_ssize_t k, Py_ssize_t a, Py_ssize_t b)
{
    for (Py_ssize_t j = 0; j < k; j++) {
        const Column *c = &cols[j];
        int va = is_valid(c, a);
        if (va != is_valid(c, b))
            return 0;
        if (!va)
            continue;
        int32_t sa = c->o[c->offset + a], la = c->o[c->offset + a + 1] - sa;
        int32_t sb = c->o[c->offset + b], lb = c->o[c->offset + b + 1] - sb;
        if (la != lb)
            return 0;
        if (la && memcmp(c->d + sa, c->d + sb, (size_t)la) != 0)
            return 0;
    }
    return 1;
}

#define FNV_PRIME 1099511628211ULL

static uint64_t
row_hash(const Column *cols, Py_ssize_t k, Py_ssize_t i)
{
    uint64_t h = 14695981039346656037ULL;
    for (Py_ssize_t j = 0; j < k; j++) {
        const Column *c = &cols[j];
        if (!is_valid(c, i)) {
            h = (h ^ 0x1ffULL) * FNV_PRIME; /* not a byte: a NULL differs from any text */
            continue;
        }
        int32_t s = c->o[c->offset + i], len = c->o[c->offset + i + 1] - s;
        h = (h ^ (uint64_t)(uint32_t)len ^ 0x100ULL) * FNV_PRIME;
        const uint8_t *p = c->d + s;
        int32_t b = 0;
        for (; b + 8 <= len; b += 8) { /* a word at a time: texts here are tens of bytes */
            uint64_t w;
            memcpy(&w, p + b, 8);
            h = (h ^ w) * FNV_PRIME;
            h ^= h >> 32;
        }
        for (; b < len; b++)
            h = (h ^ p[b]) * FNV_PRIME;
    }
    /* murmur3's finaliser: the table is indexed by the low bits, which FNV mixes poorly */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    return h ^ (h >> 33);
}

static void
release(Column *cols, Py_ssize_t k)
{
    for (Py_ssize_t j = 0; j < k; j++) {
        if (cols[j].has_valid)
            PyBuffer_Release(&cols[j].valid);
        if (cols[j].offsets.obj != NULL)
            PyBuffer_Release(&cols[j].offsets);
        if (cols[j].has_data)
            PyBuffer_Release(&cols[j].data);
    }
    PyMem_Free(cols);
}

static int
take_column(PyObject *spec, Column *c, Py_ssize_t n)
{
    PyObject *valid, *data;
    if (!PyArg_ParseTuple(spec, "Oy*On", &valid, &c->offsets, &data, &c->offset))
        return -1;
    /* Sizes compared in elements, not bytes: n and offset come from Python and a product of
     * large ones would wrap past the check. */
    if (c->offset < 0 || c->offset > PY_SSIZE_T_MAX - n - 1 ||
        c->offsets.len / (Py_ssize_t)sizeof(int32_t) < c->offset + n + 1) {
        PyErr_SetString(PyExc_ValueError, "offsets shorter than the rows");
        return -1;
    }
    c->o = (const int32_t *)c->offsets.buf;
    if (valid != Py_None) {
        if (PyObject_GetBuffer(valid, &c->valid, PyBUF_SIMPLE) < 0)
            return -1;
        c->has_valid = 1;
        if (c->valid.len < (c->offset + n) / 8 + ((c->offset + n) % 8 != 0)) {
            PyErr_SetString(PyExc_ValueError, "validity shorter than the rows");
            return -1;
        }
        c->v = (const uint8_t *)c->valid.buf;
    }
    Py_ssize_t last = n ? c->o[c->offset + n] : 0;
    if (data != Py_None) {
        if (PyObject_GetBuffer(data, &c->data, PyBUF_SIMPLE) < 0)
            return -1;
        c->has_data = 1;
        c->d = (const uint8_t *)c->data.buf;
    }
    if ((c->has_data ? c->data.len : 0) < last || (n && c->o[c->offset] < 0)) {
        PyErr_SetString(PyExc_ValueError, "data shorter than the offsets say");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (c->o[c->offset + i + 1] < c->o[c->offset + i]) {
            PyErr_SetString(PyExc_ValueError, "offsets not in order");
            return -1;
        }
    }
    return 0;
}

static PyObject *
dimkeys_group(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *specs;
    Py_ssize_t n;
    Py_buffer gout, fout;
    int want_values = 1;
    if (!PyArg_ParseTuple(args, "Onw*w*|p:group", &specs, &n, &gout, &fout, &want_values))
        return NULL;
    PyObject *result = NULL, *values = NULL;
    Column *cols = NULL;
    Py_ssize_t k = 0;
    int64_t *slots = NULL;
    uint64_t *hashes = NULL;
    PyObject *seq = PySequence_Fast(specs, "columns must be a sequence");
    if (seq == NULL)
        goto done;
    k = PySequence_Fast_GET_SIZE(seq);
    if (n < 0 || gout.len / (Py_ssize_t)sizeof(int64_t) < n
        || fout.len / (Py_ssize_t)sizeof(int64_t) < n) {
        PyErr_SetString(PyExc_ValueError, "outputs shorter than the rows");
        goto done;
    }
    cols = PyMem_Calloc(k ? (size_t)k : 1, sizeof *cols);
    if (cols == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < k; j++) {
        if (take_column(PySequence_Fast_GET_ITEM(seq, j), &cols[j], n) < 0) {
            k = j + 1;
            goto done;
        }
    }
    int64_t *group = (int64_t *)gout.buf, *first = (int64_t *)fout.buf;
    size_t cap = 64;
    while (cap < 64 || cap < (size_t)n / 8)
        cap <<= 1;
    slots = malloc(cap * sizeof *slots);
    hashes = malloc((n ? (size_t)n : 1) * sizeof *hashes);
    if (slots == NULL || hashes == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memset(slots, 0xff, cap * sizeof *slots);
    int64_t count = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i && same_rows(cols, k, i, i - 1)) {
            group[i] = group[i - 1];
            continue;
        }
        uint64_t h = row_hash(cols, k, i);
        size_t at = (size_t)h & (cap - 1);
        int64_t found = -1;
        while (slots[at] >= 0) {
            int64_t g = slots[at];
            if (hashes[g] == h && same_rows(cols, k, first[g], i)) {
                found = g;
                break;
            }
            at = (at + 1) & (cap - 1);
        }
        if (found < 0) {
            found = count++;
            first[found] = i;
            hashes[found] = h;
            slots[at] = found;
            if ((size_t)count * 2 > cap) { /* grow: reinsert every combination by its hash */
                size_t bigger = cap << 1;
                int64_t *more = malloc(bigger * sizeof *more);
                if (more == NULL) {
                    count = -1;
                    break;
                }
                memset(more, 0xff, bigger * sizeof *more);
                for (int64_t g = 0; g < count; g++) {
                    size_t to = (size_t)hashes[g] & (bigger - 1);
                    while (more[to] >= 0)
                        to = (to + 1) & (bigger - 1);
                    more[to] = g;
                }
                free(slots);
                slots = more;
                cap = bigger;
            }
        }
        group[i] = found;
    }
    Py_END_ALLOW_THREADS
    if (count < 0) {
        PyErr_NoMemory();
        goto done;
    }
    /* The texts of each combination, as Python tuples (None for NULL): only these few rows'
       values ever become Python objects. */
    values = PyList_New(want_values ? (Py_ssize_t)count : 0);
    if (values == NULL)
        goto done;
    for (int64_t g = 0; want_values && g < count; g++) {
        PyObject *row = PyTuple_New(k);
        if (row == NULL)
            goto done;
        PyList_SET_ITEM(values, (Py_ssize_t)g, row);
        for (Py_ssize_t j = 0; j < k; j++) {
            const Column *c = &cols[j];
            Py_ssize_t i = (Py_ssize_t)first[g];
            PyObject *text;
            if (!is_valid(c, i)) {
                text = Py_NewRef(Py_None);
            } else {
                int32_t at = c->o[c->offset + i], len = c->o[c->offset + i + 1] - at;
                text = PyUnicode_DecodeUTF8(len ? (const char *)c->d + at : "", len, NULL);
                if (text == NULL)
                    goto done;
            }
            PyTuple_SET_ITEM(row, j, text);
        }
    }
    result = Py_BuildValue("LO", (long long)count, values);
done:
    Py_XDECREF(values);
    free(slots);
    free(hashes);
    if (cols != NULL)
        release(cols, k);
    Py_XDECREF(seq);
    PyBuffer_Release(&gout);
    PyBuffer_Release(&fout);
    return result;
}

static PyMethodDef dimkeys_methods[] = {
    {"group", dimkeys_group, METH_VARARGS,
     "group(columns, n, group_out, first_out) -> (count, texts of each combination)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef dimkeys_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "opstrata.plugins.llmops._dimkeys",
    .m_doc = "The distinct combinations of a few Arrow string columns (dims.group_rows).",
    .m_size = 0,
    .m_methods = dimkeys_methods,
};

PyMODINIT_FUNC
PyInit__dimkeys(void)
{
    return PyModuleDef_Init(&dimkeys_module);
}
