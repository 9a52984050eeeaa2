/* The head scanner behind taxiway's fast path (taxiway/proxy/headscan.py holds the
 * Python twin and the contract both keep; tests/test_headscan.py holds them to it).
 *
 * Why C: with httptools reporting every header field through a Python callback, a browser's
 * 15-field request cost about 3,000 machine instructions per field before the proxy had done
 * anything with it, and every field of an nginx answer about 1,000 more. llhttp still parses and
 * validates every byte (the proxy feeds it first); this scanner runs only on heads llhttp has
 * accepted, finds the few fields the proxy must look at and names each by its code in the
 * rewriter's table (headscan.py: `name_table`), and leaves the others as raw bytes to forward
 * unchanged. Anything a plain strict head does not have (a folded line, a bare CR or LF,
 * whitespace before a colon) makes it answer None, and the proxy takes its general path for that
 * message: the scanner never has to agree with llhttp on odd input.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define SLOTS (64 * 32)          /* (name length < 64) x (first byte & 31) */
#define TABLE_MIN (SLOTS * 2)    /* the slots' 16-bit offsets, before their name lists */
#define LIST_END 0xFF

static unsigned char tchar[256];   /* RFC 9110 token characters */
static unsigned char lower[256];   /* ASCII lower case */
static unsigned char suspect[256]; /* what makes a request target need check_target: % # \ */

static void init_tables(void) {
    for (int c = 0; c < 256; c++) lower[c] = (unsigned char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    suspect['%'] = suspect['#'] = suspect['\\'] = 1;
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

/* The code of the field name [name, name + len) in the table (headscan.py, "The name table"),
 * or -1: the slot's list holds (code, lower-case name) entries, matched without regard to case. */
static int name_code(const unsigned char *name, Py_ssize_t len, const unsigned char *table,
                     Py_ssize_t table_len) {
    if (len >= 64) return -1;
    Py_ssize_t slot = len * 32 + (name[0] & 31);
    Py_ssize_t at = table[2 * slot] | (table[2 * slot + 1] << 8);
    if (at == 0) return -1;
    while (at < table_len && table[at] != LIST_END) {
        if (at + 1 + len > table_len) return -1;   /* (a table headscan.py did not build) */
        const unsigned char *entry = table + at + 1;
        Py_ssize_t i = 0;
        while (i < len && lower[name[i]] == entry[i]) i++;
        if (i == len) return table[at];
        at += 1 + len;
    }
    return -1;
}

/* (code, value, line_start, line_end) of one marked field. Built by hand: Py_BuildValue parses
 * its format string on every call, which cost as much as scanning the whole head. */
static PyObject *candidate(int code, const unsigned char *vs, const unsigned char *ve,
                           Py_ssize_t start, Py_ssize_t stop) {
    PyObject *item = PyTuple_New(4);
    if (item == NULL) return NULL;
    PyObject *parts[4] = {
        PyLong_FromLong(code),
        PyBytes_FromStringAndSize((const char *)vs, ve - vs),
        PyLong_FromSsize_t(start),
        PyLong_FromSsize_t(stop),
    };
    for (int i = 0; i < 4; i++) {
        if (parts[i] == NULL) {
            for (int k = 0; k < 4; k++) Py_XDECREF(parts[k]);
            Py_DECREF(item);   /* (its slots are still NULL) */
            return NULL;
        }
    }
    for (int i = 0; i < 4; i++) PyTuple_SET_ITEM(item, i, parts[i]);
    return item;
}

/* The field lines from `line` to the empty line that ends the head: the result tuple of
 * scan / scan_response, or None when a line is not plain and strict. */
static PyObject *scan_fields(const unsigned char *b, const unsigned char *end,
                             const unsigned char *line, const unsigned char *table,
                             Py_ssize_t table_len, int version, int target_suspect) {
    Py_ssize_t fields_start = line - b;
    PyObject *cands = PyList_New(0);
    if (cands == NULL) return NULL;
    Py_ssize_t count = 0, field_bytes = 0;
    const unsigned char *lf, *cr;
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
        int code = name_code(line, name_len, table, table_len);
        if (code >= 0) {
            PyObject *item = candidate(code, vs, ve, line - b, lf + 1 - b);
            if (item == NULL || PyList_Append(cands, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(cands);
                return NULL;
            }
            Py_DECREF(item);
        }
        line = lf + 1;
    }
    PyObject *result = PyTuple_New(7);
    if (result == NULL) {
        Py_DECREF(cands);
        return NULL;
    }
    Py_ssize_t numbers[5] = {fields_start, lf + 1 - b, count, field_bytes, version};
    for (int i = 0; i < 5; i++) {
        PyObject *o = PyLong_FromSsize_t(numbers[i]);
        if (o == NULL) {
            Py_DECREF(result);   /* (the slots set so far go with it; cands is not in it yet) */
            Py_DECREF(cands);
            return NULL;
        }
        PyTuple_SET_ITEM(result, i, o);
    }
    PyTuple_SET_ITEM(result, 5, cands);
    PyObject *flag = target_suspect ? Py_True : Py_False;
    Py_INCREF(flag);
    PyTuple_SET_ITEM(result, 6, flag);
    return result;
none:
    Py_DECREF(cands);
    Py_RETURN_NONE;
}

/* The arguments both scanners take: buf (bytes), pos, table (bytes). 0 on a bad call. */
static int scan_args(PyObject *const *args, Py_ssize_t nargs, const char *usage,
                     const unsigned char **b, const unsigned char **p, const unsigned char **end,
                     const unsigned char **table, Py_ssize_t *table_len) {
    if (nargs != 3 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, usage);
        return 0;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) return 0;
    if (pos < 0 || pos > n || PyBytes_GET_SIZE(args[2]) < TABLE_MIN) {
        PyErr_SetString(PyExc_ValueError, "scan: pos out of range or table too short");
        return 0;
    }
    *b = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    *table = (const unsigned char *)PyBytes_AS_STRING(args[2]);
    *table_len = PyBytes_GET_SIZE(args[2]);
    *end = *b + n;
    *p = *b + pos;
    while (*p < *end && (**p == '\r' || **p == '\n')) (*p)++;   /* (llhttp skips empty lines first) */
    return 1;
}

static PyObject *scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    const unsigned char *b, *p, *end, *table;
    Py_ssize_t table_len;
    if (!scan_args(args, nargs, "scan(buf: bytes, pos: int, table: bytes)", &b, &p, &end, &table,
                   &table_len))
        return NULL;
    /* The request line: ends in CRLF, no other CR, " HTTP/d.d" last. */
    const unsigned char *lf = memchr(p, '\n', (size_t)(end - p));
    if (lf == NULL || lf - p < 10 || lf[-1] != '\r') Py_RETURN_NONE;
    const unsigned char *cr = lf - 1;
    if (memchr(p, '\r', (size_t)(cr - p)) != NULL) Py_RETURN_NONE;
    const unsigned char *v = cr - 9;
    if (memcmp(v, " HTTP/", 6) != 0 || v[6] < '0' || v[6] > '9' || v[7] != '.'
            || v[8] < '0' || v[8] > '9') Py_RETURN_NONE;
    /* Whether the target may need check_target: any of its bytes in the line before " HTTP/"
     * (the method's bytes too: a `#` there only costs the check, and no space counting can
     * make the scanner and llhttp disagree on where the target starts). */
    int target_suspect = 0;
    for (const unsigned char *t = p; t < v; t++) {
        if (suspect[*t]) {
            target_suspect = 1;
            break;
        }
    }
    return scan_fields(b, end, lf + 1, table, table_len, (v[6] - '0') * 10 + (v[8] - '0'),
                       target_suspect);
}

static PyObject *scan_response(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    const unsigned char *b, *p, *end, *table;
    Py_ssize_t table_len;
    if (!scan_args(args, nargs, "scan_response(buf: bytes, pos: int, table: bytes)",
                   &b, &p, &end, &table, &table_len))
        return NULL;
    /* The status line: "HTTP/d.d " first, ends in CRLF, no other CR. */
    const unsigned char *lf = memchr(p, '\n', (size_t)(end - p));
    if (lf == NULL || lf - p < 13 || lf[-1] != '\r') Py_RETURN_NONE;
    if (memchr(p, '\r', (size_t)(lf - 1 - p)) != NULL) Py_RETURN_NONE;
    if (memcmp(p, "HTTP/", 5) != 0 || p[5] < '0' || p[5] > '9' || p[6] != '.'
            || p[7] < '0' || p[7] > '9' || p[8] != ' ') Py_RETURN_NONE;
    return scan_fields(b, end, lf + 1, table, table_len, (p[5] - '0') * 10 + (p[7] - '0'), 0);
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
     "scan(buf, pos, table) -> (fields_start, head_end, count, field_bytes, version, candidates, "
     "target_suspect) | None"},
    {"scan_response", (PyCFunction)(void (*)(void))scan_response, METH_FASTCALL,
     "scan_response(buf, pos, table) -> like scan, for a response head (a status line first)"},
    {"fields", (PyCFunction)(void (*)(void))fields, METH_FASTCALL,
     "fields(buf, start, end) -> [(name, value), ...] of the field lines in buf[start:end]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_headscan", "taxiway's head scanner (see headscan.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__headscan(void) {
    init_tables();
    return PyModule_Create(&module);
}
