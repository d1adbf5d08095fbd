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

/* x: n_features values, already as LightGBM's predictor keeps them (see keep()) */
static double forest_raw(const Forest *self, const double *x) {
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
    return out;
}

/* LightGBM's predictor keeps a feature only when |v| > kZeroThreshold or NaN */
static inline double keep(double v) {
    return (fabs(v) > kZeroThreshold || isnan(v)) ? v : 0.0;
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
        x[i] = keep(v);
    }
    Py_DECREF(seq);
    return PyFloat_FromDouble(forest_raw(self, x));
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


/* ---- WorkloadModel.predict_one in one call --------------------------------------------------
 *
 * The online detector predicts every batch on the recorder's thread. In Python the features,
 * the trees' support weight and the cost base took ~20 us a batch warm and ~150 us after a
 * wakeup (code and objects evicted by the server's matrix work), most of the watcher's extra
 * CPU over prism record. RowModel does the same float operations in the same order in C
 * (prismkit/detect/forest.py builds its plan from the model; model.py checks its first
 * answers against the Python path's, bit for bit). Only the micro-batch split stays in Python,
 * behind its cache (model._ubatch_sizes_cached).
 */
enum { OP_COL, OP_PHASE, OP_PRODUCT, OP_CTX_PER_SEQ, OP_SEQ_RUNS, OP_PREV };   /* exported to forest.py */
/* model.PHASE_CODES by code (exported: forest.py builds no RowModel where they differ); the derived
 * phase below uses the codes 0, 1, 2 */
static const char *const PHASE_NAMES[] = {"decode", "prefill", "mixed"};
#define N_PHASES 3
#define MAX_COLS 64
#define N_UB_INPUTS 6

typedef struct {
    int op;
    int a, b, c;             /* column indices (-1: none) */
} FeatureOp;

typedef struct {
    PyObject_HEAD
    Forest *forest;
    PyObject *columns;       /* tuple of str: WorkloadModel.columns_ */
    int n_cols, phase_col;   /* phase_col: the column "phase" (a name, coded), or -1 */
    int pf_col, dc_col;      /* n_prefill_tokens, n_decode_tokens: the derived phase when no column */
    int n_feat;
    FeatureOp ops[256];
    PyObject *ubatch_fn, *ubatch_kw;
    int ub_cols[N_UB_INPUTS];  /* model.UBATCH_INPUTS as column indices (-1: passed as None) */
    int kv_col, nt_col;
    int support_phase;       /* the support key's phase: 0 none (0.0), 1 the batch's phase */
    PyObject *support;       /* dict shape key -> count, or None (no support weight) */
    double min_support;
    double base[6];          /* pass_fixed, pass_floor, per_token, one_token_pass, per_ctx, prefill_x_ctx */
    int log_target;
    PyObject *np_exp, *np_log;
    PyObject *prev_key;      /* "prev_n_tokens" */
} RowModel;

static void rowmodel_dealloc(RowModel *self) {
    Py_XDECREF(self->forest);
    Py_XDECREF(self->columns);
    Py_XDECREF(self->ubatch_fn);
    Py_XDECREF(self->ubatch_kw);
    Py_XDECREF(self->support);
    Py_XDECREF(self->np_exp);
    Py_XDECREF(self->np_log);
    Py_XDECREF(self->prev_key);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int col_index(PyObject *v, int n_cols) {
    long i = PyLong_AsLong(v);
    if (i == -1 && PyErr_Occurred())
        return -2;
    if (i < -1 || i >= n_cols) {
        PyErr_Format(PyExc_ValueError, "column index %ld out of range", i);
        return -2;
    }
    return (int)i;
}

/* RowModel(forest, columns, phase_col, pf_col, dc_col, ops, ubatch_fn, n_ubatch, ub_cols,
 *          kv_col, nt_col, support_phase, support, min_support, base, log_target, np_exp, np_log)
 * ops: tuple of (op, a, b, c) per feature, in the model's feature order. */
static int rowmodel_init(RowModel *self, PyObject *args, PyObject *kw) {
    PyObject *forest, *columns, *ops, *ubatch_fn, *ub_cols, *support, *base, *np_exp, *np_log;
    int phase_col, pf_col, dc_col, n_ubatch, kv_col, nt_col, support_phase, log_target;
    double min_support;
    if (kw && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "RowModel takes positional arguments only");
        return -1;
    }
    if (self->forest) {   /* (its references would leak, and its plan could change under a caller) */
        PyErr_SetString(PyExc_TypeError, "RowModel is initialised once");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "O!O!iiiO!OiO!iiiOdO!pOO", &ForestType, &forest, &PyTuple_Type, &columns,
                          &phase_col, &pf_col, &dc_col, &PyTuple_Type, &ops, &ubatch_fn, &n_ubatch,
                          &PyTuple_Type, &ub_cols, &kv_col, &nt_col, &support_phase, &support, &min_support,
                          &PyTuple_Type, &base, &log_target, &np_exp, &np_log))
        return -1;
    Py_ssize_t n_cols = PyTuple_GET_SIZE(columns), n_feat = PyTuple_GET_SIZE(ops);
    if (n_cols > MAX_COLS || n_feat > 256 || n_feat != ((Forest *)forest)->n_features
            || PyTuple_GET_SIZE(ub_cols) != N_UB_INPUTS || PyTuple_GET_SIZE(base) != 6) {
        PyErr_SetString(PyExc_ValueError, "RowModel: sizes do not match");
        return -1;
    }
    if (support != Py_None && !PyDict_Check(support)) {
        PyErr_SetString(PyExc_TypeError, "RowModel: support must be a dict or None");
        return -1;
    }
    self->n_cols = (int)n_cols;
    int idx[] = {phase_col, pf_col, dc_col, kv_col, nt_col};
    for (int k = 0; k < 5; k++)
        if (idx[k] < -1 || idx[k] >= n_cols) {
            PyErr_SetString(PyExc_ValueError, "RowModel: column index out of range");
            return -1;
        }
    for (Py_ssize_t i = 0; i < n_cols; i++)
        if (!PyUnicode_Check(PyTuple_GET_ITEM(columns, i))) {
            PyErr_SetString(PyExc_TypeError, "RowModel: columns must be str");
            return -1;
        }
    self->n_feat = (int)n_feat;
    for (Py_ssize_t i = 0; i < n_feat; i++) {
        PyObject *op = PyTuple_GET_ITEM(ops, i);
        int code, a, b, c;
        if (!PyArg_ParseTuple(op, "iiii", &code, &a, &b, &c))
            return -1;
        if (code < OP_COL || code > OP_PREV || a < -1 || a >= n_cols || b < -1 || b >= n_cols
                || c < -1 || c >= n_cols) {
            PyErr_Format(PyExc_ValueError, "RowModel: bad feature %zd", i);
            return -1;
        }
        self->ops[i] = (FeatureOp){code, a, b, c};
    }
    for (int k = 0; k < N_UB_INPUTS; k++) {
        int j = col_index(PyTuple_GET_ITEM(ub_cols, k), self->n_cols);
        if (j == -2)
            return -1;
        self->ub_cols[k] = j;
    }
    for (int k = 0; k < 6; k++) {
        self->base[k] = PyFloat_AsDouble(PyTuple_GET_ITEM(base, k));
        if (self->base[k] == -1.0 && PyErr_Occurred())
            return -1;
    }
    self->ubatch_kw = Py_BuildValue("{s:i}", "n_ubatch", n_ubatch);
    self->prev_key = PyUnicode_InternFromString("prev_n_tokens");
    if (!self->ubatch_kw || !self->prev_key)
        return -1;
    self->phase_col = phase_col;
    self->pf_col = pf_col;
    self->dc_col = dc_col;
    self->kv_col = kv_col;
    self->nt_col = nt_col;
    self->support_phase = support_phase;
    self->min_support = min_support;
    self->log_target = log_target;
    Py_INCREF(forest);
    self->forest = (Forest *)forest;
    Py_INCREF(columns);
    self->columns = columns;
    Py_INCREF(ubatch_fn);
    self->ubatch_fn = ubatch_fn;
    Py_INCREF(support);
    self->support = support;
    Py_INCREF(np_exp);
    self->np_exp = np_exp;
    Py_INCREF(np_log);
    self->np_log = np_log;
    return 0;
}

/* float(v) as the Python path takes it: None -> NaN, TypeError/ValueError -> NaN */
static int as_float(PyObject *v, double *out) {
    if (v == NULL || v == Py_None) {
        *out = NAN;
        return 0;
    }
    if (PyFloat_CheckExact(v)) {
        *out = PyFloat_AS_DOUBLE(v);
        return 0;
    }
    PyObject *f = PyNumber_Float(v);
    if (!f) {
        if (PyErr_ExceptionMatches(PyExc_TypeError) || PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear();
            *out = NAN;
            return 0;
        }
        return -1;
    }
    *out = PyFloat_AS_DOUBLE(f);
    Py_DECREF(f);
    return 0;
}

/* model.PHASE_CODES.get(str(v), -1), as a float; None -> -1 */
static int phase_code(PyObject *v, double *out) {
    *out = -1.0;
    if (v == NULL || v == Py_None)
        return 0;
    PyObject *s = PyObject_Str(v);
    if (!s)
        return -1;
    for (int k = 0; k < N_PHASES; k++)
        if (PyUnicode_CompareWithASCIIString(s, PHASE_NAMES[k]) == 0) {
            *out = (double)k;
            break;
        }
    Py_DECREF(s);
    return 0;
}

/* np.log / np.exp of one float (numpy's own loops: the batch path's predict uses them) */
static int np_call(PyObject *fn, double x, double *out) {
    PyObject *arg = PyFloat_FromDouble(x);
    if (!arg)
        return -1;
    PyObject *r = PyObject_CallOneArg(fn, arg);
    Py_DECREF(arg);
    if (!r)
        return -1;
    *out = PyFloat_AsDouble(r);
    Py_DECREF(r);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *rowmodel_predict(RowModel *self, PyObject *args) {
    PyObject *batch, *prev_obj = NULL;
    if (!PyArg_ParseTuple(args, "O!|O", &PyDict_Type, &batch, &prev_obj))
        return NULL;
    double col[MAX_COLS], x[256];
    for (int i = 0; i < self->n_cols; i++) {
        PyObject *v = PyDict_GetItemWithError(batch, PyTuple_GET_ITEM(self->columns, i));
        if (!v && PyErr_Occurred())
            return NULL;
        if ((i == self->phase_col ? phase_code(v, &col[i]) : as_float(v, &col[i])) < 0)
            return NULL;
    }
    double phase = NAN;
    if (self->phase_col >= 0)
        phase = col[self->phase_col];
    else if (self->pf_col >= 0 && self->dc_col >= 0) {
        int p = col[self->pf_col] > 0, q = col[self->dc_col] > 0;
        phase = p && q ? 2.0 : (p ? 1.0 : 0.0);
    }
    for (int i = 0; i < self->n_feat; i++) {
        const FeatureOp *op = &self->ops[i];
        double v;
        switch (op->op) {
        case OP_COL:
            v = col[op->a];
            break;
        case OP_PHASE:
            v = phase;
            break;
        case OP_PRODUCT:
            v = col[op->a] * col[op->b];
            if (op->c >= 0)
                v = v * col[op->c];
            break;
        case OP_CTX_PER_SEQ: {
            double ns = col[op->b];
            v = col[op->a] / (1.0 > ns ? 1.0 : ns);     /* kv_tokens / max(n_seqs, 1.0) */
            break;
        }
        case OP_SEQ_RUNS: {
            double m = col[op->a];
            if (m != m)
                m = 0.0;
            if (!(m >= 0.0 && m < 18446744073709551616.0)) {
                PyErr_SetString(PyExc_ValueError, "seq_mask out of range");
                return NULL;
            }
            uint64_t bits = (uint64_t)m;
            v = (double)__builtin_popcountll(bits & ~(bits << 1));
            break;
        }
        default: {  /* OP_PREV */
            PyObject *p = prev_obj;
            if (!p) {
                p = PyDict_GetItemWithError(batch, self->prev_key);
                if (!p && PyErr_Occurred())
                    return NULL;
            }
            if (p == NULL || p == Py_None)
                v = NAN;
            else if ((v = PyFloat_AsDouble(p)) == -1.0 && PyErr_Occurred())
                return NULL;
            break;
        }
        }
        x[i] = keep(v);
    }
    double raw = forest_raw(self->forest, x);

    if (self->support != Py_None) {    /* WorkloadModel._tree_weight for one row */
        double p = self->support_phase ? phase : 0.0, n = col[self->nt_col];
        PyObject *key;
        if (!(n == n) || n <= 0)
            key = PyUnicode_FromFormat("%d:-", p == p ? (int)p : -1);
        else if (n <= 8)
            key = PyUnicode_FromFormat("%d:%lld", p == p ? (int)p : -1, (long long)n);
        else {
            if (isinf(n)) {
                PyErr_SetString(PyExc_OverflowError, "n_tokens is infinite");
                return NULL;
            }
            key = PyUnicode_FromFormat("%d:2^%d", p == p ? (int)p : -1, (int)ceil(log2(n)));
        }
        if (!key)
            return NULL;
        PyObject *count = PyDict_GetItemWithError(self->support, key);
        Py_DECREF(key);
        double c = 0.0;
        if (count) {
            c = PyFloat_AsDouble(count);
            if (c == -1.0 && PyErr_Occurred())
                return NULL;
        } else if (PyErr_Occurred())
            return NULL;
        double w = c / self->min_support;
        raw = raw * (w < 1.0 ? w : 1.0);
    }

    PyObject *ub_args = PyTuple_New(N_UB_INPUTS);
    if (!ub_args)
        return NULL;
    for (int k = 0; k < N_UB_INPUTS; k++) {
        PyObject *a = self->ub_cols[k] >= 0 ? PyFloat_FromDouble(col[self->ub_cols[k]]) : Py_NewRef(Py_None);
        if (!a) {
            Py_DECREF(ub_args);
            return NULL;
        }
        PyTuple_SET_ITEM(ub_args, k, a);
    }
    PyObject *ub = PyObject_Call(self->ubatch_fn, ub_args, self->ubatch_kw);
    Py_DECREF(ub_args);
    if (!ub)
        return NULL;
    if (!PyTuple_Check(ub)) {
        Py_DECREF(ub);
        PyErr_SetString(PyExc_TypeError, "ubatch sizes must be a tuple");
        return NULL;
    }
    const double fixed = self->base[0], floor_ = self->base[1], per_token = self->base[2], one = self->base[3],
                 per_ctx = self->base[4], pre_ctx = self->base[5];
    double acc = 0.0;
    Py_ssize_t n_ub = PyTuple_GET_SIZE(ub);
    for (Py_ssize_t k = 0; k < (n_ub ? n_ub : 1); k++) {
        double u = 0.0;
        if (n_ub && (u = PyFloat_AsDouble(PyTuple_GET_ITEM(ub, k))) == -1.0 && PyErr_Occurred()) {
            Py_DECREF(ub);
            return NULL;
        }
        double t = per_token * u;
        acc = acc + (u == 1 ? one : (u > 0 ? fixed + (t > floor_ ? t : floor_) : 0.0));
    }
    Py_DECREF(ub);
    double kv0 = self->kv_col >= 0 ? col[self->kv_col] : 0.0;
    double pf0 = self->pf_col >= 0 ? col[self->pf_col] : 0.0;
    if (kv0 != kv0)
        kv0 = 0.0;
    if (pf0 != pf0)
        pf0 = 0.0;
    double y = acc + per_ctx * kv0 + pre_ctx * (pf0 * kv0);
    double base = 1.0 > y ? 1.0 : y;
    if (self->log_target) {
        double lb, out;
        if (np_call(self->np_log, base, &lb) < 0 || np_call(self->np_exp, raw + lb, &out) < 0)
            return NULL;
        return PyFloat_FromDouble(out);
    }
    y = raw + base;
    return PyFloat_FromDouble(1.0 > y ? 1.0 : y);
}

static PyMethodDef rowmodel_methods[] = {
    {"predict", (PyCFunction)rowmodel_predict, METH_VARARGS,
     "predict(batch: dict, prev_n_tokens=<batch's>) -> float: WorkloadModel.predict_one(batch)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RowModelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "prismkit.detect._forest.RowModel",
    .tp_basicsize = sizeof(RowModel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RowModel(...): WorkloadModel.predict_one in C (built by prismkit/detect/forest.py row_model)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)rowmodel_init,
    .tp_dealloc = (destructor)rowmodel_dealloc,
    .tp_methods = rowmodel_methods,
};

static struct PyModuleDef forest_module = {
    PyModuleDef_HEAD_INIT, "_forest", "A LightGBM forest as flat arrays, one row at a time.", -1, NULL,
};

PyMODINIT_FUNC PyInit__forest(void) {
    if (PyType_Ready(&ForestType) < 0 || PyType_Ready(&RowModelType) < 0)
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
    Py_INCREF(&RowModelType);
    if (PyModule_AddObject(m, "RowModel", (PyObject *)&RowModelType) < 0) {
        Py_DECREF(&RowModelType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "NODE_SIZE", sizeof(Node)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    const char *ops[] = {"OP_COL", "OP_PHASE", "OP_PRODUCT", "OP_CTX_PER_SEQ", "OP_SEQ_RUNS", "OP_PREV"};
    for (int k = 0; k <= OP_PREV; k++)
        if (PyModule_AddIntConstant(m, ops[k], k) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    PyObject *phases = Py_BuildValue("(sss)", PHASE_NAMES[0], PHASE_NAMES[1], PHASE_NAMES[2]);
    if (!phases || PyModule_AddObject(m, "PHASE_NAMES", phases) < 0) {
        Py_XDECREF(phases);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
