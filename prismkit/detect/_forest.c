/* A LightGBM forest in one flat array, for the online detector's one-row predictions.
 *
 * prism watch predicts each batch's latency on the recorder's thread, which wakes on a CPU
 * the server has just used: LightGBM's own trees (five arrays per tree, each node visit
 * touching all five) then come from memory, not cache: its single-row fast path took ~100 us
 * a row with a cold cache against ~6 us warm (200 trees). Here a node is one 24-byte record
 * and each tree's nodes are contiguous, so a cold row touches a few cache lines per tree:
 * ~17 us cold, ~2 us warm (benchmarks/bench_detector_predict.py, side by side).
 *
 * Same decisions as LightGBM's Tree::NumericalDecision and the same summation order as
 * GBDT::PredictRaw, so the output is bit for bit Booster.predict's for identity-output
 * objectives; prismkit/detect/forest.py builds the arrays from Booster.dump_model(),
 * checks that equality on probe rows and otherwise keeps LightGBM.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    double threshold;
    int32_t left, right;     /* >= 0: node index; < 0: ~leaf index */
    int16_t feature;
    uint8_t default_left;
    uint8_t missing_type;    /* 0 None, 1 Zero, 2 NaN (LightGBM's MissingType) */
} Node;                      /* 24 bytes: forest.py packs it as "<diihBB4x" */

static const double kZeroThreshold = 1e-35f;   /* LightGBM's, a float */

typedef struct {
    PyObject_HEAD
    Node *nodes;
    double *leaves;
    int32_t *roots;          /* per tree: node index, or ~leaf index for a one-leaf tree */
    Py_ssize_t n_nodes, n_leaves, n_trees;
    int n_features;
} Forest;

static void forest_dealloc(Forest *self) {
    PyMem_Free(self->nodes);
    PyMem_Free(self->leaves);
    PyMem_Free(self->roots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static void *copy_buffer(Py_buffer *b, size_t item, Py_ssize_t *count, const char *what) {
    if (b->len % item) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes is not a whole number of %zu-byte items", what, b->len, item);
        return NULL;
    }
    *count = b->len / (Py_ssize_t)item;
    void *p = PyMem_Malloc(b->len ? b->len : 1);
    if (!p) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(p, b->buf, b->len);
    return p;
}

static int forest_init(Forest *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"nodes", "leaves", "roots", "n_features", NULL};
    Py_buffer nodes, leaves, roots;
    int n_features;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*y*y*i", names, &nodes, &leaves, &roots, &n_features))
        return -1;
    int rc = -1;
    self->nodes = copy_buffer(&nodes, sizeof(Node), &self->n_nodes, "nodes");
    if (!self->nodes) goto done;
    self->leaves = copy_buffer(&leaves, sizeof(double), &self->n_leaves, "leaves");
    if (!self->leaves) goto done;
    self->roots = copy_buffer(&roots, sizeof(int32_t), &self->n_trees, "roots");
    if (!self->roots) goto done;
    self->n_features = n_features;
    /* every index in range: predict() then needs no checks */
    for (Py_ssize_t i = 0; i < self->n_nodes; i++) {
        Node *n = &self->nodes[i];
        int32_t kids[2] = {n->left, n->right};
        if (n->feature < 0 || n->feature >= n_features || n->missing_type > 2) {
            PyErr_Format(PyExc_ValueError, "node %zd: bad feature or missing type", i);
            goto done;
        }
        for (int k = 0; k < 2; k++) {
            int32_t c = kids[k];
            if (c >= 0 ? (c <= i || c >= self->n_nodes) : (~c >= self->n_leaves)) {
                /* (children come after their parent: no cycles) */
                PyErr_Format(PyExc_ValueError, "node %zd: child %d out of range", i, c);
                goto done;
            }
        }
    }
    for (Py_ssize_t t = 0; t < self->n_trees; t++) {
        int32_t r = self->roots[t];
        if (r >= 0 ? r >= self->n_nodes : ~r >= self->n_leaves) {
            PyErr_Format(PyExc_ValueError, "tree %zd: root %d out of range", t, r);
            goto done;
        }
    }
    rc = 0;
done:
    PyBuffer_Release(&nodes);
    PyBuffer_Release(&leaves);
    PyBuffer_Release(&roots);
    return rc;
}

static inline int32_t decide(const Node *n, double v) {
    if (isnan(v) && n->missing_type != 2)
        v = 0.0;
    if ((n->missing_type == 1 && v >= -kZeroThreshold && v <= kZeroThreshold)
            || (n->missing_type == 2 && isnan(v)))
        return n->default_left ? n->left : n->right;
    return v <= n->threshold ? n->left : n->right;
}

static PyObject *forest_predict(Forest *self, PyObject *row) {
    double x[256];
    if (self->n_features > 256) {
        PyErr_SetString(PyExc_ValueError, "more than 256 features");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(row, "row must be a sequence of numbers");
    if (!seq)
        return NULL;
    if (PySequence_Fast_GET_SIZE(seq) != self->n_features) {
        PyErr_Format(PyExc_ValueError, "row has %zd values, the forest %d features",
                     PySequence_Fast_GET_SIZE(seq), self->n_features);
        Py_DECREF(seq);
        return NULL;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (int i = 0; i < self->n_features; i++) {
        double v = PyFloat_AsDouble(items[i]);
        if (v == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
        /* LightGBM's predictor keeps a feature only when |v| > kZeroThreshold or NaN */
        x[i] = (fabs(v) > kZeroThreshold || isnan(v)) ? v : 0.0;
    }
    Py_DECREF(seq);
    const Node *nodes = self->nodes;
    double out = 0.0;
    for (Py_ssize_t t = 0; t < self->n_trees; t++) {
        int32_t i = self->roots[t];
        while (i >= 0) {
            const Node *n = &nodes[i];
            i = decide(n, x[n->feature]);
        }
        out += self->leaves[~i];
    }
    return PyFloat_FromDouble(out);
}

static PyMethodDef forest_methods[] = {
    {"predict", (PyCFunction)forest_predict, METH_O,
     "predict(row) -> float: the raw score (sum of the trees' leaves) of one row of floats"},
    {NULL, NULL, 0, NULL},
};

static PyObject *forest_n_trees(Forest *self, void *closure) {
    (void)closure;
    return PyLong_FromSsize_t(self->n_trees);
}

static PyGetSetDef forest_getset[] = {
    {"n_trees", (getter)forest_n_trees, NULL, "number of trees", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ForestType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "prismkit.detect._forest.Forest",
    .tp_basicsize = sizeof(Forest),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Forest(nodes, leaves, roots, n_features): a LightGBM forest as flat arrays (see forest.py)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)forest_init,
    .tp_dealloc = (destructor)forest_dealloc,
    .tp_methods = forest_methods,
    .tp_getset = forest_getset,
};

static struct PyModuleDef forest_module = {
    PyModuleDef_HEAD_INIT, "_forest", "A LightGBM forest as flat arrays, one row at a time.", -1, NULL,
};

PyMODINIT_FUNC PyInit__forest(void) {
    if (PyType_Ready(&ForestType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&forest_module);
    if (!m)
        return NULL;
    Py_INCREF(&ForestType);
    if (PyModule_AddObject(m, "Forest", (PyObject *)&ForestType) < 0) {
        Py_DECREF(&ForestType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "NODE_SIZE", sizeof(Node)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
