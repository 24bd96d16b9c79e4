/*
 * The system calls a child makes to jail itself, as plain builtins
 * (sandbox/jailcalls.py loads this module; scripts/setup builds it).
 *
 * Why C: these calls used to go through ctypes, and a forked child's first
 * ctypes call writes to the reference counts of ctypes' own objects (the
 * library handle, function pointers, argument types and converters) spread
 * over some seventy of the zygote's pages, each then copied into the child;
 * every later call site another eight or so (measured with ru_minflt in
 * forked children). A builtin touches its own function object and nothing
 * else. Each function is one system call (or two), with no policy: which
 * rights, which rules and in what order stay in sandbox/landlock.py,
 * sandbox/seccomp_policy.py and sandbox/jail.py.
 *
 * Errors raise OSError with the errno and the call's name.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The same on x86-64 and aarch64 (the generic table, from Linux 5.13 on). */
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#endif
#ifndef SYS_landlock_add_rule
#define SYS_landlock_add_rule 445
#endif
#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif
#define LANDLOCK_CREATE_RULESET_VERSION_FLAG (1U << 0)
#define LANDLOCK_RULE_PATH_BENEATH_TYPE 1

/* Declared here rather than taken from <linux/landlock.h>: the build host's
 * kernel headers may predate the fields a newer kernel accepts. */
struct ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net; /* ABI 4 */
    uint64_t scoped;             /* ABI 6 */
};

struct path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

static PyObject *fail(const char *what)
{
    int err = errno;
    PyObject *message = PyUnicode_FromFormat("%s: %s", what, strerror(err));
    if (message == NULL)
        return NULL;
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "iN", err, message);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

PyDoc_STRVAR(fork_doc, "fork() -> pid\n\nlibc's fork(), with the GIL held and none of os.fork()'s\n"
                       "interpreter work (see sandbox/fork.py).");

static PyObject *jc_fork(PyObject *self, PyObject *unused)
{
    pid_t pid = fork();
    if (pid < 0)
        return fail("fork");
    return PyLong_FromLong((long)pid);
}

/* prctl(option, value): None, or OSError naming the option. */
static PyObject *set_prctl(int option, unsigned long value, const char *what)
{
    if (prctl(option, value, 0, 0, 0) != 0)
        return fail(what);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(no_new_privs_doc, "no_new_privs()\n\nprctl(PR_SET_NO_NEW_PRIVS, 1): required of an "
                               "unprivileged Landlock or seccomp caller.");

static PyObject *jc_no_new_privs(PyObject *self, PyObject *unused)
{
    return set_prctl(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS");
}

PyDoc_STRVAR(not_dumpable_doc, "not_dumpable()\n\nprctl(PR_SET_DUMPABLE, 0): no core dumps, no "
                               "ptrace or /proc access by same-uid processes.");

static PyObject *jc_not_dumpable(PyObject *self, PyObject *unused)
{
    return set_prctl(PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE");
}

PyDoc_STRVAR(landlock_abi_doc, "landlock_abi() -> int\n\nThe kernel's Landlock ABI version; OSError if "
                               "Landlock is unavailable.");

static PyObject *jc_landlock_abi(PyObject *self, PyObject *unused)
{
    long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION_FLAG);
    if (abi < 0)
        return fail("landlock_create_ruleset");
    return PyLong_FromLong(abi);
}

PyDoc_STRVAR(landlock_create_doc,
             "landlock_create(handled_fs, handled_net, scoped, size) -> fd\n\n"
             "A ruleset handling these rights; ``size`` is how much of the attribute\n"
             "the kernel is shown (8, 16 or 24 bytes, by ABI).");

static PyObject *jc_landlock_create(PyObject *self, PyObject *args)
{
    unsigned long long fs, net, scoped;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "KKKn", &fs, &net, &scoped, &size))
        return NULL;
    if (size != 8 && size != 16 && size != 24) {
        PyErr_SetString(PyExc_ValueError, "landlock_create: size must be 8, 16 or 24");
        return NULL;
    }
    struct ruleset_attr attr = {fs, net, scoped};
    long fd = syscall(SYS_landlock_create_ruleset, &attr, (size_t)size, 0);
    if (fd < 0)
        return fail("landlock_create_ruleset");
    return PyLong_FromLong(fd);
}

PyDoc_STRVAR(landlock_add_path_doc, "landlock_add_path(ruleset_fd, allowed, parent_fd)\n\n"
                                    "Allow ``allowed`` beneath ``parent_fd`` (an O_PATH fd).");

static PyObject *jc_landlock_add_path(PyObject *self, PyObject *args)
{
    int ruleset_fd, parent_fd;
    unsigned long long allowed;
    if (!PyArg_ParseTuple(args, "iKi", &ruleset_fd, &allowed, &parent_fd))
        return NULL;
    struct path_beneath_attr attr = {allowed, parent_fd};
    if (syscall(SYS_landlock_add_rule, ruleset_fd, LANDLOCK_RULE_PATH_BENEATH_TYPE, &attr, 0) != 0)
        return fail("landlock_add_rule");
    Py_RETURN_NONE;
}

PyDoc_STRVAR(landlock_restrict_doc, "landlock_restrict(ruleset_fd)\n\n"
                                    "Add the ruleset as a layer of this thread's domain; irreversible.");

static PyObject *jc_landlock_restrict(PyObject *self, PyObject *arg)
{
    int fd;
    if (!PyArg_Parse(arg, "i", &fd))
        return NULL;
    if (syscall(SYS_landlock_restrict_self, fd, 0) != 0)
        return fail("landlock_restrict_self");
    Py_RETURN_NONE;
}

PyDoc_STRVAR(seccomp_load_doc, "seccomp_load(program)\n\n"
                               "Install a classic BPF program (bytes, 8 per instruction) as this\n"
                               "process's seccomp filter, no_new_privs first; irreversible.");

static PyObject *jc_seccomp_load(PyObject *self, PyObject *arg)
{
    Py_buffer program;
    if (PyObject_GetBuffer(arg, &program, PyBUF_SIMPLE) != 0)
        return NULL;
    if (program.len == 0 || program.len % sizeof(struct sock_filter) != 0
        || program.len / sizeof(struct sock_filter) > BPF_MAXINSNS) {
        PyBuffer_Release(&program);
        PyErr_SetString(PyExc_ValueError,
                        "seccomp_load: the program must be 1 to 4096 instructions of 8 bytes");
        return NULL;
    }
    struct sock_fprog prog = {
        (unsigned short)(program.len / sizeof(struct sock_filter)),
        (struct sock_filter *)program.buf,
    };
    int failed = prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0;
    const char *what = "PR_SET_NO_NEW_PRIVS";
    if (!failed) {
        failed = prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0;
        what = "PR_SET_SECCOMP";
    }
    int err = errno;
    PyBuffer_Release(&program);
    if (failed) {
        errno = err;
        return fail(what);
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"fork", jc_fork, METH_NOARGS, fork_doc},
    {"no_new_privs", jc_no_new_privs, METH_NOARGS, no_new_privs_doc},
    {"not_dumpable", jc_not_dumpable, METH_NOARGS, not_dumpable_doc},
    {"landlock_abi", jc_landlock_abi, METH_NOARGS, landlock_abi_doc},
    {"landlock_create", jc_landlock_create, METH_VARARGS, landlock_create_doc},
    {"landlock_add_path", jc_landlock_add_path, METH_VARARGS, landlock_add_path_doc},
    {"landlock_restrict", jc_landlock_restrict, METH_O, landlock_restrict_doc},
    {"seccomp_load", jc_seccomp_load, METH_O, seccomp_load_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jailcalls",
    "The system calls a child makes to jail itself (see sandbox/native/jailcalls.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__jailcalls(void)
{
    return PyModule_Create(&module);
}
