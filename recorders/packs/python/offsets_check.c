/* Prints the CPython struct offsets the python pack's tables hold, from an
 * interpreter's own (internal) headers:
 *   gcc -I $PREFIX/include/python3.X -I $PREFIX/include/python3.X/internal offsets_check.c && ./a.out
 * tests/test_gpu_packs.py compiles it for every interpreter it can find and
 * compares the output with offsets.py. Not used at recording time. */
#define Py_BUILD_CORE 1
#include "Python.h"
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"
#if PY_VERSION_HEX < 0x030B0000
#include "frameobject.h"
#endif
#if PY_VERSION_HEX >= 0x030B0000
#include "internal/pycore_frame.h"
#endif
#if PY_VERSION_HEX >= 0x030B0000
#include "internal/pycore_dict.h"
#endif
#include "internal/pycore_code.h"
#include <stddef.h>
#include <stdio.h>
#define P(name, expr) printf("    \"%s\": %ld,\n", name, (long)(expr))
int main(void) {
    printf("{\n");
    P("runtime.interpreters_head", offsetof(_PyRuntimeState, interpreters.head));
#if PY_VERSION_HEX >= 0x030B0000
    P("interp.threads_head", offsetof(PyInterpreterState, threads.head));
#else
    P("interp.threads_head", offsetof(PyInterpreterState, tstate_head));
#endif
    P("interp.next", offsetof(PyInterpreterState, next));
    P("tstate.next", offsetof(PyThreadState, next));
#if PY_VERSION_HEX >= 0x030B0000
    P("tstate.native_thread_id", offsetof(PyThreadState, native_thread_id));
#else
    P("tstate.thread_id", offsetof(PyThreadState, thread_id));
#endif
#if PY_VERSION_HEX >= 0x030D0000
    P("tstate.current_frame", offsetof(PyThreadState, current_frame));
    P("tstate.cframe", -1);
#elif PY_VERSION_HEX >= 0x030B0000
    P("tstate.cframe", offsetof(PyThreadState, cframe));
    P("cframe.current_frame", offsetof(_PyCFrame, current_frame));
#else
    P("tstate.frame", offsetof(PyThreadState, frame));
    P("frameobj.f_back", offsetof(PyFrameObject, f_back));
    P("frameobj.f_code", offsetof(PyFrameObject, f_code));
    P("frameobj.f_localsplus", offsetof(PyFrameObject, f_localsplus));
#endif
#if PY_VERSION_HEX >= 0x030B0000
    P("iframe.previous", offsetof(_PyInterpreterFrame, previous));
#if PY_VERSION_HEX >= 0x030D0000
    P("iframe.code", offsetof(_PyInterpreterFrame, f_executable));
#else
    P("iframe.code", offsetof(_PyInterpreterFrame, f_code));
#endif
    P("iframe.owner", offsetof(_PyInterpreterFrame, owner));
    P("iframe.localsplus", offsetof(_PyInterpreterFrame, localsplus));
    P("code.qualname", offsetof(PyCodeObject, co_qualname));
    P("code.localsplusnames", offsetof(PyCodeObject, co_localsplusnames));
    #if PY_VERSION_HEX >= 0x030C0000
    P("FRAME_OWNED_BY_CSTACK", FRAME_OWNED_BY_CSTACK);
#else
    P("FRAME_OWNED_BY_CSTACK", -1);
#endif
    P("keys.log2_index_bytes", offsetof(PyDictKeysObject, dk_log2_index_bytes));
    P("keys.kind", offsetof(PyDictKeysObject, dk_kind));
    P("keys.indices", offsetof(PyDictKeysObject, dk_indices));
    P("heaptype.cached_keys", offsetof(PyHeapTypeObject, ht_cached_keys));
#else
    P("code.varnames", offsetof(PyCodeObject, co_varnames));
    P("keys.size", 8);      /* Objects/dict-common.h (not installed): refcnt, size, lookup, usable, nentries */
    P("keys.indices", 40);
#endif
#if PY_VERSION_HEX >= 0x030B0000
    P("keys.nentries", offsetof(PyDictKeysObject, dk_nentries));
#else
    P("keys.nentries", 32);
#endif
    P("code.name", offsetof(PyCodeObject, co_name));
    P("code.filename", offsetof(PyCodeObject, co_filename));
    P("code.firstlineno", offsetof(PyCodeObject, co_firstlineno));
    P("code.argcount", offsetof(PyCodeObject, co_argcount));
    P("type.flags", offsetof(PyTypeObject, tp_flags));
    P("type.basicsize", offsetof(PyTypeObject, tp_basicsize));
    P("type.dictoffset", offsetof(PyTypeObject, tp_dictoffset));
    P("type.name", offsetof(PyTypeObject, tp_name));
    P("tuple.items", offsetof(PyTupleObject, ob_item));
    P("varobj.size", offsetof(PyVarObject, ob_size));
    P("list.items", offsetof(PyListObject, ob_item));
    P("dict.used", offsetof(PyDictObject, ma_used));
    P("dict.keys", offsetof(PyDictObject, ma_keys));
    P("dict.values", offsetof(PyDictObject, ma_values));
    P("unicode.length", offsetof(PyASCIIObject, length));
    P("unicode.state", offsetof(PyASCIIObject, state));
    P("unicode.ascii_data", sizeof(PyASCIIObject));
    #if PY_VERSION_HEX >= 0x030C0000
    P("long.digits", offsetof(PyLongObject, long_value.ob_digit));
#else
    P("long.digits", offsetof(PyLongObject, ob_digit));
#endif
#if PY_VERSION_HEX >= 0x030C0000
    P("long.tag", offsetof(PyLongObject, long_value.lv_tag));
#endif
    P("float.value", offsetof(PyFloatObject, ob_fval));
    P("TPFLAGS_MANAGED_DICT", 
#ifdef Py_TPFLAGS_MANAGED_DICT
      Py_TPFLAGS_MANAGED_DICT
#else
      0
#endif
    );
    P("TPFLAGS_INLINE_VALUES",
#ifdef Py_TPFLAGS_INLINE_VALUES
      Py_TPFLAGS_INLINE_VALUES
#else
      0
#endif
    );
    P("sizeof.PyObject", sizeof(PyObject));
    printf("    \"version\": \"%d.%d\"\n}\n", PY_MAJOR_VERSION, PY_MINOR_VERSION);
    return 0;
}
