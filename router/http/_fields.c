/* A client's request head read into its fields in one pass: the C version of
 * router.http.request_head.request_fields (docs/performance.md, "Made").
 *
 * fields(buf, pos, k) takes a head that llhttp has just accepted whole, from the bytes llhttp
 * was given: buf (bytes, or the bytearray a read went into) from pos, where llhttp began it
 * (the empty lines llhttp skips before a request line included). It returns
 * ([(name, value), ...], http11): the fields, what llhttp reports to a protocol with on_header
 * one callback at a time (the name up to the first colon, the value after it with its leading
 * spaces and tabs left out: llhttp keeps trailing ones, and so does this); and whether the
 * request line is HTTP/1.1 as request_head.http11_line tells it, k bytes into the line being
 * its method, its target and two spaces.
 *
 * llhttp's strict syntax is relied on, not checked again: every line ends in CRLF (a CR is
 * nowhere else), every field line has a colon, the empty line ends the head. Bytes that do not
 * hold a whole head from pos raise ValueError. tests/protocol/test_request_fields.py checks it
 * against llhttp's own reports. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *
fields(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "fields(buf, pos, k)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t k = PyLong_AsSsize_t(args[2]);
    if (k == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *s = view.buf;
    const Py_ssize_t n = view.len;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        goto fail;
    if (pos < 0)
        goto bad;
    while (pos < n && (s[pos] == '\r' || s[pos] == '\n'))
        pos++;  /* empty lines before the request line */
    const char *end = s + n;
    const char *p = pos < n ? memchr(s + pos, '\r', n - pos) : NULL;
    if (p == NULL)
        goto bad;
    /* (no CR comes before a line's end: "HTTP/1.1" CR LF at k are the line's end, if there) */
    const int http11 = k >= 0 && pos + k + 10 <= n && memcmp(s + pos + k, "HTTP/1.1\r\n", 10) == 0;
    p += 2;  /* past the request line */
    while (p < end && *p != '\r') {
        const char *eol = memchr(p, '\r', end - p);
        if (eol == NULL)
            goto bad;
        const char *colon = memchr(p, ':', eol - p);
        if (colon == NULL)
            goto bad;
        const char *v = colon + 1;
        while (v < eol && (*v == ' ' || *v == '\t'))
            v++;
        PyObject *t = PyTuple_New(2);
        if (t == NULL)
            goto fail;
        PyObject *name = PyBytes_FromStringAndSize(p, colon - p);
        PyObject *value = PyBytes_FromStringAndSize(v, eol - v);
        if (name == NULL || value == NULL) {
            Py_XDECREF(name);
            Py_XDECREF(value);
            Py_DECREF(t);
            goto fail;
        }
        PyTuple_SET_ITEM(t, 0, name);
        PyTuple_SET_ITEM(t, 1, value);
        int err = PyList_Append(out, t);
        Py_DECREF(t);
        if (err < 0)
            goto fail;
        p = eol + 2;
    }
    if (p + 1 >= end || p[1] != '\n')
        goto bad;  /* no empty line: not a whole head */
    PyBuffer_Release(&view);
    PyObject *t = PyTuple_New(2);
    if (t == NULL) {
        Py_DECREF(out);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, out);
    PyTuple_SET_ITEM(t, 1, Py_NewRef(http11 ? Py_True : Py_False));
    return t;
bad:
    PyErr_SetString(PyExc_ValueError, "not a whole request head");
fail:
    Py_XDECREF(out);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"fields", (PyCFunction)(void (*)(void))fields, METH_FASTCALL,
     "fields(buf, pos, k): ([(name, value), ...], http11) of the request head llhttp accepted "
     "at buf[pos:]."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "router.http._fields",
    "A request head's fields read in one pass (see _fields.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__fields(void)
{
    return PyModule_Create(&module);
}
