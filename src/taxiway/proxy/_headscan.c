/* The request-head scanner behind taxiway's fast path (taxiway/proxy/headscan.py holds the
 * Python twin and the contract both keep; tests/test_headscan.py holds them to it).
 *
 * Why C: with httptools reporting every header field through a Python callback, a browser's
 * 15-field request cost about 3,000 machine instructions per field before the proxy had done
 * anything with it. llhttp still parses and validates every byte (the proxy feeds it first);
 * this scanner runs only on heads llhttp has accepted, finds the few fields the proxy must look
 * at (by the same (length, first letter) table the rewriter's NameCodes keeps) and leaves the
 * others as raw bytes to forward unchanged. Anything a plain strict head does not have (a folded
 * line, a bare CR or LF, whitespace before a colon) makes it answer None, and the proxy takes its
 * general path for that request: the scanner never has to agree with llhttp on odd input.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define TABLE_SIZE (64 * 32)

static unsigned char tchar[256];   /* RFC 9110 token characters */

static void init_tchar(void) {
    const char *extra = "!#$%&'*+-.^_`|~";
    for (int c = '0'; c <= '9'; c++) tchar[c] = 1;
    for (int c = 'a'; c <= 'z'; c++) tchar[c] = 1;
    for (int c = 'A'; c <= 'Z'; c++) tchar[c] = 1;
    for (const char *e = extra; *e; e++) tchar[(unsigned char)*e] = 1;
}

/* One field line [line, cr): name end and value bounds (OWS trimmed), or 0 when it is not a
 * plain `token ":" OWS value OWS` line. */
static int split_field(const unsigned char *line, const unsigned char *cr,
                       const unsigned char **name_end, const unsigned char **vs,
                       const unsigned char **ve) {
    const unsigned char *q = line;
    while (q < cr && tchar[*q]) q++;
    if (q == line || q == cr || *q != ':') return 0;
    const unsigned char *s = q + 1, *e = cr;
    while (s < e && (*s == ' ' || *s == '\t')) s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t')) e--;
    *name_end = q; *vs = s; *ve = e;
    return 1;
}

static PyObject *scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "scan(buf: bytes, pos: int, table: bytes)");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) return NULL;
    if (pos < 0 || pos > n || PyBytes_GET_SIZE(args[2]) < TABLE_SIZE) {
        PyErr_SetString(PyExc_ValueError, "scan: pos out of range or table too short");
        return NULL;
    }
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    const unsigned char *table = (const unsigned char *)PyBytes_AS_STRING(args[2]);
    const unsigned char *end = b + n, *p = b + pos;
    while (p < end && (*p == '\r' || *p == '\n')) p++;   /* (llhttp skips empty lines first) */

    /* The request line: ends in CRLF, no other CR, " HTTP/d.d" last. */
    const unsigned char *lf = memchr(p, '\n', (size_t)(end - p));
    if (lf == NULL || lf - p < 10 || lf[-1] != '\r') Py_RETURN_NONE;
    const unsigned char *cr = lf - 1;
    if (memchr(p, '\r', (size_t)(cr - p)) != NULL) Py_RETURN_NONE;
    const unsigned char *v = cr - 9;
    if (memcmp(v, " HTTP/", 6) != 0 || v[6] < '0' || v[6] > '9' || v[7] != '.'
            || v[8] < '0' || v[8] > '9') Py_RETURN_NONE;
    int version = (v[6] - '0') * 10 + (v[8] - '0');
    Py_ssize_t fields_start = lf + 1 - b;

    PyObject *cands = PyList_New(0);
    if (cands == NULL) return NULL;
    Py_ssize_t count = 0, field_bytes = 0;
    const unsigned char *line = lf + 1;
    for (;;) {
        lf = memchr(line, '\n', (size_t)(end - line));
        if (lf == NULL || lf == line || lf[-1] != '\r') goto none;   /* unfinished, or bare LF */
        cr = lf - 1;
        if (cr == line) break;                                      /* the empty line */
        if (memchr(line, '\r', (size_t)(cr - line)) != NULL) goto none;   /* a bare CR */
        const unsigned char *name_end, *vs, *ve;
        if (!split_field(line, cr, &name_end, &vs, &ve)) goto none;   /* fold, no colon, ... */
        Py_ssize_t name_len = name_end - line;
        count++;
        field_bytes += name_len + (ve - vs) + 4;
        if (name_len < 64 && table[name_len * 32 + (line[0] & 31)]) {
            PyObject *item = Py_BuildValue("(y#y#nn)", (const char *)line, name_len,
                                           (const char *)vs, (Py_ssize_t)(ve - vs),
                                           (Py_ssize_t)(line - b), (Py_ssize_t)(lf + 1 - b));
            if (item == NULL || PyList_Append(cands, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(cands);
                return NULL;
            }
            Py_DECREF(item);
        }
        line = lf + 1;
    }
    return Py_BuildValue("(nnnniN)", fields_start, (Py_ssize_t)(lf + 1 - b), count, field_bytes,
                         version, cands);
none:
    Py_DECREF(cands);
    Py_RETURN_NONE;
}

static PyObject *fields(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "fields(buf: bytes, start: int, end: int)");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t stop = PyLong_AsSsize_t(args[2]);
    if (stop == -1 && PyErr_Occurred()) return NULL;
    if (start < 0 || stop > n || start > stop) {
        PyErr_SetString(PyExc_ValueError, "fields: range out of bounds");
        return NULL;
    }
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    const unsigned char *line = b + start, *end = b + stop;
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    while (line < end) {
        const unsigned char *lf = memchr(line, '\n', (size_t)(end - line));
        if (lf == NULL || lf == line || lf[-1] != '\r' || lf - 1 == line) break;
        const unsigned char *name_end, *vs, *ve;
        if (split_field(line, lf - 1, &name_end, &vs, &ve)) {
            PyObject *item = Py_BuildValue("(y#y#)", (const char *)line, (Py_ssize_t)(name_end - line),
                                           (const char *)vs, (Py_ssize_t)(ve - vs));
            if (item == NULL || PyList_Append(out, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(item);
        }
        line = lf + 1;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(buf, pos, table) -> (fields_start, head_end, count, field_bytes, version, candidates) | None"},
    {"fields", (PyCFunction)(void (*)(void))fields, METH_FASTCALL,
     "fields(buf, start, end) -> [(name, value), ...] of the field lines in buf[start:end]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_headscan", "taxiway's request-head scanner (see headscan.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__headscan(void) {
    init_tchar();
    return PyModule_Create(&module);
}
