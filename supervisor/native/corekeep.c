/* Keeping the supervisor's cores awake while it waits for an answer.
 *
 * See supervisor/core_keeper.py for why. This is the part no Python may run
 * in: a keeper thread spins without the GIL (a Python loop would take the
 * GIL from the supervisor's event loop every few microseconds), and the
 * event loop's poke is one clock read and an atomic store.
 *
 * Each keeper has a slot: whether it sleeps, the eventfd that wakes it, and
 * the CPU nanoseconds it spent spinning (which the supervisor counts as idle
 * time of its core, as it is: any task woken there runs at the keeper's next
 * sched_yield(), which it must call: see core_keeper.py).
 * A keeper's eventfd is closed (by its thread, after run() returns) only
 * once no poke can still be writing to it: see ``poking``.
 *
 * A keeper given a CPU latency QoS descriptor (/dev/cpu_dma_latency) does
 * not spin: for the window it holds a 0 us request there, so that the
 * kernel's own idle loop polls on every core instead of halting, and it
 * sleeps until the window ends. The request is the process's: the kernel
 * drops it when the descriptor is closed, whatever becomes of the process.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

/* Values written to /dev/cpu_dma_latency: poll, or no constraint (the
 * kernel's PM_QOS_CPU_LATENCY_DEFAULT_VALUE). */
static const int32_t QOS_POLL_US = 0;
static const int32_t QOS_ANY_US = 2000000000;

#define MAX_SLOTS 1024

static _Atomic int64_t deadline_ns;   /* CLOCK_MONOTONIC; spin until then */
static _Atomic int stopping;
static _Atomic int asleep[MAX_SLOTS];
static _Atomic int wake_fd[MAX_SLOTS];
static _Atomic int64_t spun_ns[MAX_SLOTS];
static _Atomic int slots_used;
/* Pokes and stops under way (on the event loop's thread, or a stopping one). */
static _Atomic int poking;
/* Time the latency request was held: ended stretches, and since when (0: not
 * held). The keeper alone writes them, with ``held_seq`` odd meanwhile, so a
 * reader never sees a stretch counted twice or not at all (a counter that
 * went back would read as a reset). */
static _Atomic int64_t held_total_ns;
static _Atomic int64_t held_since_ns;
static _Atomic unsigned held_seq;

static inline int64_t clock_ns(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static inline int64_t now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

static int slot_arg(int slot)
{
    if (slot < 0 || slot >= MAX_SLOTS) {
        PyErr_Format(PyExc_ValueError, "keeper slot %d is out of range 0..%d", slot, MAX_SLOTS - 1);
        return -1;
    }
    return 0;
}

/* Hold (or drop) the CPU latency request, timing it; 0 or the errno of a failed write. */
static int hold_qos(int qos_fd, int32_t us)
{
    if (write(qos_fd, &us, sizeof us) != (ssize_t)sizeof us)
        return errno;
    int64_t now = now_ns();
    atomic_fetch_add(&held_seq, 1);
    int64_t since = atomic_exchange(&held_since_ns, us == QOS_POLL_US ? now : 0);
    if (us != QOS_POLL_US && since)
        atomic_fetch_add(&held_total_ns, now - since);
    atomic_fetch_add(&held_seq, 1);
    return 0;
}

/* run(slot, fd, qos_fd=-1): the keeper's life, in the calling thread, until stop(). */
static PyObject *keeper_run(PyObject *self, PyObject *args)
{
    int slot, fd, qos_fd = -1;
    if (!PyArg_ParseTuple(args, "ii|i", &slot, &fd, &qos_fd) || slot_arg(slot) < 0)
        return NULL;
    /* Its name in /proc (and top, perf) while it keeps: not one of the
     * supervisor's workers; the worker thread gets its own back after. */
    char name[17] = {0};
    prctl(PR_GET_NAME, name, 0, 0, 0);
    prctl(PR_SET_NAME, "corral-keeper", 0, 0, 0);
    atomic_store(&wake_fd[slot], fd);
    atomic_store(&asleep[slot], 0);
    int used = atomic_load(&slots_used);
    while (used <= slot && !atomic_compare_exchange_weak(&slots_used, &used, slot + 1))
        ;
    int failed = 0, held = 0;
    Py_BEGIN_ALLOW_THREADS
    while (!atomic_load(&stopping)) {
        int64_t now = now_ns();
        int64_t until = atomic_load(&deadline_ns);
        if (now < until && qos_fd >= 0) {
            /* The kernel polls for us: sleep out the window (pokes move it on). */
            if (!held && (failed = hold_qos(qos_fd, QOS_POLL_US)) != 0)
                break;
            held = 1;
            struct timespec end = {until / 1000000000LL, until % 1000000000LL};
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &end, NULL);
            continue;
        }
        if (held) {
            if ((failed = hold_qos(qos_fd, QOS_ANY_US)) != 0)
                break;
            held = 0;
        }
        if (now < until) {
            /* This thread's own CPU time: what the kernel counts as busy
             * that was idle (not the time tasks that preempted it ran). */
            int64_t counted = clock_ns(CLOCK_THREAD_CPUTIME_ID);
            for (unsigned turn = 1; now < until && !atomic_load(&stopping); turn++) {
                sched_yield();  /* anything runnable here runs first */
                now = now_ns();
                until = atomic_load(&deadline_ns);
                if (turn % 64 == 0) {  /* counted as it goes: a stretch can be long */
                    int64_t cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID);
                    atomic_fetch_add(&spun_ns[slot], cpu - counted);
                    counted = cpu;
                }
            }
            atomic_fetch_add(&spun_ns[slot], clock_ns(CLOCK_THREAD_CPUTIME_ID) - counted);
            continue;
        }
        /* Say so before the last look: a poke after it sees the flag and writes. */
        atomic_store(&asleep[slot], 1);
        if (now_ns() < atomic_load(&deadline_ns) || atomic_load(&stopping)) {
            atomic_store(&asleep[slot], 0);
            continue;
        }
        uint64_t count;
        if (read(fd, &count, sizeof count) < 0 && errno != EINTR && errno != EAGAIN) {
            failed = errno;
            break;
        }
        atomic_store(&asleep[slot], 0);
    }
    if (held)
        hold_qos(qos_fd, QOS_ANY_US);  /* closing the descriptor would drop it too */
    atomic_store(&wake_fd[slot], -1);
    /* A poke that read the descriptor before the store above may be about
     * to write to it: wait it out, so the caller can close it safely. */
    while (atomic_load(&poking))
        sched_yield();
    Py_END_ALLOW_THREADS
    prctl(PR_SET_NAME, name, 0, 0, 0);
    if (failed) {
        errno = failed;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static void wake(int slot)
{
    int fd = atomic_load(&wake_fd[slot]);
    uint64_t one = 1;
    if (fd >= 0 && write(fd, &one, sizeof one) < 0) {
        /* an eventfd at its limit is awake anyway */
    }
}

/* Wake the keepers that sleep (``asleep_only``), or every keeper, counted
 * in ``poking`` so that run() closes no descriptor still being written. */
static void wake_keepers(int asleep_only)
{
    atomic_fetch_add(&poking, 1);
    int used = atomic_load(&slots_used);
    for (int slot = 0; slot < used; slot++) {
        if (!asleep_only || atomic_exchange(&asleep[slot], 0))
            wake(slot);
    }
    atomic_fetch_sub(&poking, 1);
}

/* poke(window_ns): keep every keeper spinning until window_ns from now. */
static PyObject *keeper_poke(PyObject *self, PyObject *arg)
{
    long long window = PyLong_AsLongLong(arg);
    if (window == -1 && PyErr_Occurred())
        return NULL;
    int64_t until = now_ns() + window;
    int64_t old = atomic_load(&deadline_ns);
    while (old < until && !atomic_compare_exchange_weak(&deadline_ns, &old, until))
        ;
    wake_keepers(1);
    Py_RETURN_NONE;
}

/* stop(): every keeper returns from run(); start(): they may run again. */
static PyObject *keeper_stop(PyObject *self, PyObject *unused)
{
    atomic_store(&stopping, 1);
    wake_keepers(0);
    Py_RETURN_NONE;
}

static PyObject *keeper_start(PyObject *self, PyObject *unused)
{
    atomic_store(&stopping, 0);
    atomic_store(&deadline_ns, 0);
    Py_RETURN_NONE;
}

/* spun_ns(slot): CPU nanoseconds that keeper has spun in all. */
static PyObject *keeper_spun_ns(PyObject *self, PyObject *arg)
{
    int slot = (int)PyLong_AsLong(arg);
    if (slot == -1 && PyErr_Occurred())
        return NULL;
    if (slot_arg(slot) < 0)
        return NULL;
    return PyLong_FromLongLong(atomic_load(&spun_ns[slot]));
}

/* held_ns(): nanoseconds the latency request has been held in all, so far. */
static PyObject *keeper_held_ns(PyObject *self, PyObject *unused)
{
    int64_t since, total;
    unsigned seq;
    do {
        while ((seq = atomic_load(&held_seq)) & 1)
            sched_yield();  /* the keeper is between two stores: let it finish */
        since = atomic_load(&held_since_ns);
        total = atomic_load(&held_total_ns);
    } while (atomic_load(&held_seq) != seq);
    return PyLong_FromLongLong(total + (since ? now_ns() - since : 0));
}

static PyMethodDef methods[] = {
    {"run", keeper_run, METH_VARARGS,
     "run(slot, eventfd, qos_fd=-1): keep this thread's core (with qos_fd: every core) awake until stop()."},
    {"poke", keeper_poke, METH_O, "poke(window_ns): keepers spin until window_ns from now."},
    {"stop", keeper_stop, METH_NOARGS, "stop(): every keeper's run() returns."},
    {"start", keeper_start, METH_NOARGS, "start(): keepers may run (after a stop())."},
    {"spun_ns", keeper_spun_ns, METH_O, "spun_ns(slot): nanoseconds that keeper spun in all."},
    {"held_ns", keeper_held_ns, METH_NOARGS, "held_ns(): nanoseconds the latency request was held in all."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_corekeep",
    "Core keepers: spinning threads that keep idle cores out of their halt (supervisor/core_keeper.py).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__corekeep(void)
{
    for (int slot = 0; slot < MAX_SLOTS; slot++)
        atomic_store(&wake_fd[slot], -1);
    return PyModule_Create(&module);
}
