// Reading CPython objects from BPF, shared by the python pack (frame walk) and the
// pymonitor pack (exact boundaries). Both packs prepend this text; the guard keeps one
// copy when both are loaded into the same BPF program. Needs PY_MINOR and the PY_OFF_* /
// PY_TYPE_* defines of python/pack.py's interp_defines().
#ifndef PRISM_PYOBJECT_H
#define PRISM_PYOBJECT_H

#define PYOBJ_VALUE 0   // the int value (int/bool, up to 60 bits)
#define PYOBJ_LEN 1     // len() of a list, tuple, dict or str

static __always_inline u64 pyobj_u64(u64 addr) {
    u64 v = 0;
    bpf_probe_read_user(&v, sizeof(v), (void *)addr);
    return v;
}

static __always_inline int pyobj_value(u64 obj, u32 mode, s64 *out) {
    u64 type = pyobj_u64(obj + 8);
    if (mode == PYOBJ_LEN) {
        if (type == PY_TYPE_LIST || type == PY_TYPE_TUPLE || type == PY_TYPE_DICT || type == PY_TYPE_UNICODE) {
            // ob_size / ma_used / length: all at offset 16
            *out = (s64)pyobj_u64(obj + PY_OFF_VAROBJ_SIZE);
            return 1;
        }
        return 0;
    }
    if (type != PY_TYPE_LONG && type != PY_TYPE_BOOL) return 0;
    u32 d[2] = {};
    bpf_probe_read_user(d, sizeof(d), (void *)(obj + PY_OFF_LONG_DIGITS));
#if PY_MINOR >= 12
    u64 tag = pyobj_u64(obj + PY_OFF_LONG_TAG);
    u64 ndigits = tag >> 3;
    int negative = (tag & 3) == 2;
#else
    s64 size = (s64)pyobj_u64(obj + PY_OFF_VAROBJ_SIZE);
    int negative = size < 0;
    u64 ndigits = negative ? (u64)(-size) : (u64)size;
#endif
    if (ndigits > 2) return 0;
    s64 v = 0;
    if (ndigits >= 1) v = d[0] & 0x3fffffff;
    if (ndigits == 2) v |= (s64)(d[1] & 0x3fffffff) << 30;
    *out = negative ? -v : v;
    return 1;
}

#endif
