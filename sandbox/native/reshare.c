/*
 * Give a child's copied pages back to the zygote's snapshot (see sandbox/reshare.py).
 *
 * A page a child wrote and then put back as it was (a reference count up
 * and down again, the usual case under CPython 3.11) stays a private copy
 * for the child's life. This compares each candidate page with the sealed
 * snapshot of the zygote's memory and, where they are equal, maps the
 * snapshot's page over it: same bytes, now shared with every other child.
 *
 * Why C: the comparison and the mapping must happen with nothing running in
 * between. Any Python between them (a reference count, an allocation for a
 * call's arguments) could write to the very page being replaced, and the
 * mapping would silently undo that write. A builtin runs with the GIL held,
 * and between its arguments' parsing and its return this calls nothing that
 * runs Python. (Through ctypes, as it was first called, the call itself
 * copied ~70 pages of ctypes' objects into every child it trimmed.)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

/* runs: (start, end, offset) triples sorted by start, page aligned: the
 * snapshot holds [start, end) at offset in its file. */
static long find_run(const uint64_t *runs, long nruns, uint64_t addr)
{
    long lo = 0, hi = nruns - 1;
    while (lo <= hi) {
        long mid = lo + (hi - lo) / 2;
        if (addr < runs[3 * mid])
            hi = mid - 1;
        else if (addr >= runs[3 * mid + 1])
            lo = mid + 1;
        else
            return mid;
    }
    return -1;
}

/* Gaps (in pages) a mapping may bridge between two candidates. */
#define MAX_GAP_PAGES 16

/* Pages handled between two yields of the core (~0.15 ms of work at ~10 us
 * a page). An idle child gives its pages back while others serve: a child
 * woken on this core, runnable, waited for the whole give-back (~2.5 ms) or
 * the scheduler's slice (see supervisor/pool/idle_trim.py). */
#define PAGES_PER_YIELD 16

static int equal_span(uint64_t from, uint64_t to, const unsigned char *snapshot, long page_size)
{
    for (uint64_t at = from; at < to; at += page_size, snapshot += page_size)
        if (memcmp((const void *)(uintptr_t)at, snapshot, page_size) != 0)
            return 0;
    return 1;
}

/* pages: ascending page addresses. Returns the pages given back, or -errno. */
static long corral_reshare(const uint64_t *pages, long npages, const uint64_t *runs, long nruns,
                    int fd, const unsigned char *view, uint64_t view_size, long page_size)
{
    long shared = 0;
    long i = 0, since_yield = 0;
    while (i < npages) {
        if (++since_yield >= PAGES_PER_YIELD) {
            since_yield = 0;
            sched_yield();
        }
        long r = find_run(runs, nruns, pages[i]);
        if (r < 0) {
            i++;
            continue;
        }
        uint64_t start = pages[i], run_end = runs[3 * r + 1];
        uint64_t offset = runs[3 * r + 2] + (start - runs[3 * r]);
        if (memcmp((const void *)(uintptr_t)start, view + offset, page_size) != 0) {
            i++;
            continue;
        }
        /* Extend the mapping over the next candidates, and over short gaps of
         * pages that are not candidates (still the zygote's) but equal too:
         * one mmap and one VMA instead of one per candidate. */
        uint64_t end = start + page_size;
        long j = i + 1;
        while (j < npages && pages[j] < run_end && pages[j] - end <= MAX_GAP_PAGES * page_size
               && equal_span(end, pages[j] + page_size, view + offset + (end - start), page_size)) {
            end = pages[j] + page_size;
            j++;
            since_yield++;
        }
        if (mmap((void *)(uintptr_t)start, (size_t)(end - start), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_FIXED, fd, (off_t)offset) == MAP_FAILED)
            return -errno;
        shared += j - i;
        i = j;
    }
    /* The comparisons mapped snapshot pages into this process's view: drop
     * those page table entries again (the pages stay in the snapshot). */
    madvise((void *)view, view_size, MADV_DONTNEED);
    return shared;
}

PyDoc_STRVAR(reshare_doc,
             "reshare(pages, runs, fd, view, view_size, page_size) -> int\n\n"
             "Map the snapshot over each page of ``pages`` (ascending page addresses,\n"
             "native u64) still equal to it; ``runs`` are the snapshot's (start, end,\n"
             "offset) u64 triples, ``view`` the address of its read-only mapping.\n"
             "Returns how many pages were given back.");

static PyObject *py_reshare(PyObject *self, PyObject *args)
{
    Py_buffer pages, runs;
    int fd;
    unsigned long long view, view_size;
    long page_size;
    if (!PyArg_ParseTuple(args, "y*y*iKKl", &pages, &runs, &fd, &view, &view_size, &page_size))
        return NULL;
    long result = -EINVAL;
    if (pages.len % 8 == 0 && runs.len % 24 == 0 && page_size > 0)
        result = corral_reshare((const uint64_t *)pages.buf, (long)(pages.len / 8),
                                (const uint64_t *)runs.buf, (long)(runs.len / 24), fd,
                                (const unsigned char *)(uintptr_t)view, view_size, page_size);
    PyBuffer_Release(&pages);
    PyBuffer_Release(&runs);
    if (result < 0) {
        errno = (int)-result;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(result);
}

static PyMethodDef methods[] = {
    {"reshare", py_reshare, METH_VARARGS, reshare_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_reshare",
    "Give a child's copied pages back to the zygote's snapshot (see sandbox/native/reshare.c).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__reshare(void)
{
    return PyModule_Create(&module);
}
