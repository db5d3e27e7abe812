/* The pages of CPython's empty object pools given back to the system (router.process.trim).
 *
 * CPython's allocator for small objects (pymalloc, Objects/obmalloc.c) takes 1 MiB arenas from
 * the system, cut into 16 KiB pools of blocks of one size. A pool whose blocks are all freed
 * goes back to its arena's list of empty pools, but an arena goes back to the system only when
 * every one of its 64 pools is empty, and one long-lived object in an arena keeps the whole of
 * it: a burst of connections leaves its arenas mostly empty pools, still in the RSS
 * (docs/performance.md, "Memory per idle connection").
 *
 * watch() wraps the arena allocator (PyObject_SetArenaAllocator, the documented hook) to know
 * where the arenas are; release() then walks them and, for each empty pool, tells the kernel
 * it may drop the pool's pages after its first (madvise MADV_DONTNEED: they read as zeros when
 * touched again). The first page stays: it holds the pool's header, which links the arena's
 * list of empty pools. An empty pool that held blocks of some size keeps a list of its free
 * blocks in those blocks, reused if the pool is taken again for the same size; release() marks
 * it as pymalloc marks a pool it has just carved out of an arena (its size index set to
 * DUMMY_SIZE_IDX), so that the pool is set up afresh instead, from its header page only.
 *
 * What it reads and writes of a pool header is the layout of struct pool_header of CPython
 * 3.11 to 3.13 (Objects/obmalloc.c): it does its work there only (elsewhere watch() returns
 * False and release() finds nothing). A
 * pool is taken as empty only if its header says so consistently (no block in use, a size
 * index of pymalloc's, the end offset that size gives in a 16 KiB pool), and only arenas of
 * 1 MiB are walked (16 KiB pools go with 1 MiB arenas; 4 KiB pools with 256 KiB ones). It runs
 * with the GIL held, as every use of pymalloc does. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && defined(MADV_DONTNEED)
#define POOLS_KNOWN 1
#else
#define POOLS_KNOWN 0
#endif

#define ARENA_SIZE ((size_t)1 << 20)
#define POOL_SIZE ((size_t)1 << 14)
#define ALIGNMENT 16
#define SIZE_CLASSES 32   /* 512-byte blocks at most, 16 bytes apart */
#define DUMMY_SIZE_IDX 0xffff

/* Objects/obmalloc.c's struct pool_header. */
struct pool_header {
    union { void *_padding; unsigned int count; } ref;
    void *freeblock;
    struct pool_header *nextpool;
    struct pool_header *prevpool;
    unsigned int arenaindex;
    unsigned int szidx;
    unsigned int nextoffset;
    unsigned int maxnextoffset;
};

static PyObjectArenaAllocator wrapped;  /* the allocator before watch() */
static void **arenas;                   /* the 1 MiB arenas allocated since */
static size_t n_arenas, cap_arenas;
static int watching;

static void *
arena_alloc(void *ctx, size_t size)
{
    void *p = wrapped.alloc(wrapped.ctx, size);
    if (p != NULL && size == ARENA_SIZE) {
        if (n_arenas == cap_arenas) {
            size_t cap = cap_arenas ? 2 * cap_arenas : 64;
            void **more = PyMem_RawRealloc(arenas, cap * sizeof(void *));
            if (more == NULL)
                return p;  /* not watched: never released, as without this module */
            arenas = more;
            cap_arenas = cap;
        }
        arenas[n_arenas++] = p;
    }
    return p;
}

static void
arena_free(void *ctx, void *p, size_t size)
{
    for (size_t i = 0; i < n_arenas; i++) {
        if (arenas[i] == p) {
            arenas[i] = arenas[--n_arenas];
            break;
        }
    }
    wrapped.free(wrapped.ctx, p, size);
}

static PyObject *
watch(PyObject *module, PyObject *unused)
{
    if (!POOLS_KNOWN || sysconf(_SC_PAGESIZE) >= (long)POOL_SIZE)
        Py_RETURN_FALSE;
    if (!watching) {
        PyObjectArenaAllocator mine = {NULL, arena_alloc, arena_free};
        PyObject_GetArenaAllocator(&wrapped);
        PyObject_SetArenaAllocator(&mine);
        watching = 1;
    }
    Py_RETURN_TRUE;
}

static PyObject *
release(PyObject *module, PyObject *unused)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), released = 0;
    for (size_t i = 0; POOLS_KNOWN && i < n_arenas; i++) {
        uintptr_t start = (uintptr_t)arenas[i], end = start + ARENA_SIZE;
        uintptr_t p = (start + POOL_SIZE - 1) & ~(uintptr_t)(POOL_SIZE - 1);
        for (; p + POOL_SIZE <= end; p += POOL_SIZE) {
            struct pool_header *pool = (struct pool_header *)p;
            /* Empty, and set up by pymalloc for a size (an arena's pools not yet carved out
             * are zeros: untouched, so not in the RSS; one released before is DUMMY_SIZE_IDX
             * until it is taken again). */
            if (pool->ref.count != 0 || pool->szidx >= SIZE_CLASSES
                    || pool->maxnextoffset != POOL_SIZE - (pool->szidx + 1) * ALIGNMENT)
                continue;
            if (madvise((void *)(p + page), POOL_SIZE - page, MADV_DONTNEED) != 0)
                continue;
            pool->szidx = DUMMY_SIZE_IDX;
            released += POOL_SIZE - page;
        }
    }
    return PyLong_FromSize_t(released);
}

static PyMethodDef methods[] = {
    {"watch", watch, METH_NOARGS,
     "Know CPython's object arenas from now on; False where release() cannot work."},
    {"release", release, METH_NOARGS,
     "Give back the pages of the empty pools of the arenas watched; the bytes given back."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "router.process._pools",
    "The pages of CPython's empty object pools given back to the system.", -1, methods,
};

PyMODINIT_FUNC
PyInit__pools(void)
{
    return PyModule_Create(&module);
}
