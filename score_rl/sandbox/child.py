"""The in-sandbox half of ``score_rl.sandbox``: isolate, drop privileges, run the candidate's program, serve calls.

This file is executed as a script (``python -I -S -B child.py CONFIG_JSON``) by the scoring process; it
never runs inside the scoring process. It imports only the standard library. Steps:

1. Read the job file (solution, trusted setup code) and unlink it. The tests never enter this process. Join the
   execution's memory cgroup when the scoring process made one (``memcg.py``): every later process is born in it.
2. Namespaces (if enabled and permitted): ``unshare`` new mount, network, PID, IPC and UTS namespaces (plus a user
   namespace when not root). The new network namespace has no interfaces up, not even loopback.
3. Fork. The parent ("supervisor") stays outside the new PID namespace, waits for the child and reports its exit
   status to the scoring process on the status pipe. The child is PID 1 of the new PID namespace: when it exits,
   the kernel kills every process left in the namespace, including double-forked / setsid'd ones.
4. In the child, still privileged: private mount propagation, a fresh /proc (only the sandbox's own processes),
   the Python standard library re-exposed read-only under /run/score_rl_python (so that the configured hidden
   paths may include the interpreter's home), hidden paths covered by empty read-only tmpfs, the whole tree made
   read-only recursively, and fresh size-limited writable tmpfs on /tmp, /var/tmp, /dev/shm.
5. rlimits (CPU, address space, file size, open files, core; processes when a dedicated uid is used), then drop to
   the dedicated per-execution uid/gid (root) or drop all capabilities (user namespace), set no_new_privs and the
   parent-death signal, cd into the working directory.
6. Report what was achieved on the status pipe, close every inherited descriptor above stderr but the two pipes to
   the judge (``judge.py``, a separate trusted process), and run the job: the untrusted solution, the trusted setup
   code, a "ready" frame, then one call per request frame: decode the arguments, call the named function, send the
   result back encoded (``wire.py``; anything but plain data raises ForbiddenReturnValue). End of file on the
   request pipe ends the process with status 0. An exception ends it with status 1 and a traceback on stderr.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import resource
import signal
import sys
import traceback
import types

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
SYS_MOUNT_SETATTR = 442  # x86_64 and aarch64 share the number (new syscall table)
SYS_CAPSET = {"x86_64": 126, "aarch64": 91}.get(os.uname().machine)

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

SETUP_FAILED_EXIT = 121  # the job never ran: privileges could not be dropped or similar
PYTHON_MOUNT = "/run/score_rl_python"
WRITABLE_TMPFS = ("/tmp", "/var/tmp", "/dev/shm")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype, flags: int, data=None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _prctl(option: int, arg: int = 0) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl {option}")


# --- step 1 and 2: job, namespaces ----------------------------------------------------------------------------------
def _take_job(path: str) -> dict:
    with open(path, "rb") as f:
        job = json.loads(f.read())
    os.unlink(path)
    return job


def _unshare(report: dict, force_user_namespace: bool) -> None:
    root = os.geteuid() == 0 and not force_user_namespace
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if not root:
        flags |= CLONE_NEWUSER
    uid, gid = os.getuid(), os.getgid()
    try:
        _check(_libc.unshare(flags), "unshare")
        if not root:  # map our own uid/gid to themselves; no other ids exist in the namespace
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"{uid} {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"{gid} {gid} 1")
    except OSError as err:
        report["errors"].append(f"namespaces unavailable ({err})")
        return
    report.update(namespaces=True, user_namespace=not root, network_isolated=True, pid_namespace=True)


# --- step 4: mounts (child, PID 1 of the new namespace) ------------------------------------------------------------
def _tmpfs_options(size_mb: int, mode: str, owner) -> str:
    opts = f"size={size_mb}m,nr_inodes=4096,mode={mode}"
    if owner is not None:
        opts += f",uid={owner},gid={owner}"
    return opts


def _mounts(cfg: dict, report: dict) -> None:
    _mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        report["private_proc"] = True
    except OSError as err:
        report["errors"].append(str(err))

    prefix = os.path.realpath(sys.base_prefix)
    if os.path.isdir("/run"):  # the stdlib, re-exposed where every uid can reach it
        try:
            _mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, _tmpfs_options(1, "0755", None))
            os.mkdir(PYTHON_MOUNT)
            _mount(prefix, PYTHON_MOUNT, None, MS_BIND | MS_REC)
            _remap_python(prefix, PYTHON_MOUNT)
            report["python_remapped"] = True
        except OSError as err:
            report["errors"].append(str(err))
    for path in cfg["hide"]:
        if not report.get("python_remapped") and (prefix + "/").startswith(path.rstrip("/") + "/"):
            report["errors"].append(f"not hiding {path}: it holds the Python standard library")
            continue
        # a directory inside the interpreter's prefix is visible twice: where it is, and in the re-exposed copy
        copies = [path] + ([PYTHON_MOUNT + path[len(prefix):]] if report.get("python_remapped")
                           and path.startswith(prefix + "/") else [])
        errors = len(report["errors"])
        for target in (t for t in copies if os.path.exists(t)):  # (not: inside a directory hidden before it)
            try:
                _mount("tmpfs", target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0555")
            except OSError as err:
                report["errors"].append(str(err))
        if len(report["errors"]) == errors:
            report["hidden"].append(path)

    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    ret = _libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret == 0:
        report["readonly_root"] = True
    else:
        report["errors"].append(f"mount_setattr: {os.strerror(ctypes.get_errno())}")

    owner = cfg["uid"] if cfg["uid"] is not None and not report["user_namespace"] else os.getuid()
    for path in WRITABLE_TMPFS:
        if not os.path.isdir(path):
            continue
        try:
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, _tmpfs_options(cfg["tmpfs_mb"], "0700", owner))
            report["private_tmp"] = report["private_tmp"] or path == "/tmp"
        except OSError as err:
            report["errors"].append(str(err))


def _remap_python(old: str, new: str) -> None:
    """Point the interpreter's import paths at the re-exposed standard library."""
    def swap(p: str) -> str:
        real = os.path.realpath(p) if p else p
        return new + real[len(old):] if real == old or real.startswith(old + "/") else p

    sys.path[:] = [swap(p) for p in sys.path]
    for module in list(sys.modules.values()):  # packages already imported (encodings, ...) find submodules here
        path = getattr(module, "__path__", None)
        if isinstance(path, list):
            path[:] = [swap(p) for p in path]
    sys.prefix = sys.base_prefix = sys.exec_prefix = sys.base_exec_prefix = new
    sys.path_importer_cache.clear()


# --- step 5: limits and privileges ---------------------------------------------------------------------------------
def _limits(cfg: dict, dedicated_uid: bool) -> None:
    cpu = int(cfg["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["file_bytes"], cfg["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    if dedicated_uid:  # per-real-uid count: meaningful only when the uid is ours alone (root ignores it anyway)
        resource.setrlimit(resource.RLIMIT_NPROC, (cfg["max_processes"], cfg["max_processes"]))
    resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_bytes"], cfg["memory_bytes"]))


def _drop_to_uid(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # from root to non-root: all capabilities are cleared by the kernel
    if os.getuid() != uid or os.geteuid() != uid:
        raise OSError("privilege drop did not take effect")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise OSError("privilege drop is reversible")


def _drop_capabilities() -> None:
    """User-namespace mode: we are not root, but we hold every capability inside the namespace. Drop them all."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if SYS_CAPSET is None:
        raise OSError("capset syscall number unknown on this architecture")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable x 2 words, all zero
    _check(_libc.syscall(SYS_CAPSET, ctypes.byref(header), ctypes.byref(data)), "capset")


def _setup_child(cfg: dict, report: dict) -> str:
    """Everything between fork and the untrusted code. Returns the working directory."""
    if cfg.get("cgroup_procs") and not report["memory_cgroup"]:
        raise OSError("could not join the execution's memory cgroup")
    if report["namespaces"]:
        _mounts(cfg, report)
    workdir = "/tmp" if report.get("private_tmp") else cfg["workdir"]
    dedicated = cfg["uid"] is not None and os.geteuid() == 0 and not report["user_namespace"]
    _limits(cfg, dedicated)
    if dedicated:
        _drop_to_uid(cfg["uid"])
        report["uid"] = cfg["uid"]
    elif report["user_namespace"]:
        _drop_capabilities()
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it
    if os.getppid() == 1 and not report["pid_namespace"]:  # the supervisor already died
        os._exit(SETUP_FAILED_EXIT)
    os.chdir(workdir)
    os.umask(0o077)
    os.environ["HOME"] = os.environ["TMPDIR"] = workdir
    report["workdir"] = workdir
    if report["pid_namespace"]:  # the sweep's tag; never report the host's own namespace
        try:
            report["pidns"] = os.readlink("/proc/self/ns/pid")
        except OSError:
            pass
    return workdir


# --- step 6: the job -----------------------------------------------------------------------------------------------
def _load_wire():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wire.py")
    spec = importlib.util.spec_from_file_location("score_rl_sandbox_wire", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


wire = _load_wire()  # loaded before the mounts hide the project directory


def _exit_status(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:
            pass


def _serve(scope: dict, req: int, resp: int) -> None:
    """Answer the judge's calls until it closes the request pipe: decode the arguments, call, encode the result."""
    wire.send(resp, {"ready": True})
    while True:
        message = wire.recv(req, 1 << 40)  # the judge is trusted
        if message is None:
            return
        name = message["call"]
        fn = scope.get(name)
        if not callable(fn):
            raise NameError(f"name {name!r} is not defined by the solution")
        result = fn(*wire.decode(message["args"]), **wire.decode(message["kwargs"]))
        wire.send(resp, {"value": wire.encode(result)})


def _run_job(job: dict, rpc: tuple) -> None:
    """Run the solution (then the trusted setup code) in one fresh module and serve the judge. Never returns."""
    module = types.ModuleType("solution")  # not "__main__": demo blocks under `if __name__ == ...` stay skipped
    sys.modules["__main__"] = sys.modules["solution"] = module
    scope = module.__dict__
    try:
        exec(compile(job["solution"], "<solution>", "exec"), scope)
        if job.get("setup"):
            exec(compile(job["setup"], "<setup>", "exec"), scope)
        _serve(scope, *rpc)
    except SystemExit as exc:
        status = _exit_status(exc)
        _flush()
        os._exit(status)
    except BaseException:
        traceback.print_exc()
        _flush()
        os._exit(1)
    _flush()
    os._exit(0)


# --- supervisor ----------------------------------------------------------------------------------------------------
def _supervise(pid: int, status_fd: int, rpc: tuple) -> None:
    for fd in rpc:  # the judge sees end of file as soon as the sandboxed processes are gone
        os.close(fd)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # only the sandboxed processes hold the output pipes
        os.dup2(devnull, fd)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + sig
    try:
        os.write(status_fd, (json.dumps({"exit_code": code, "signal": sig}) + "\n").encode())
    except OSError:
        pass
    os._exit(code)


def main() -> None:
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the scoring process (the candidate and its namespace follow)
    if os.getppid() == 1:  # it died before the line above
        os._exit(SETUP_FAILED_EXIT)
    cfg = json.loads(sys.argv[1])
    status_fd = cfg["status_fd"]
    rpc = (cfg["req_fd"], cfg["resp_fd"])
    job = _take_job(cfg["job"])
    report = {"namespaces": False, "user_namespace": False, "network_isolated": False, "pid_namespace": False,
              "private_proc": False, "readonly_root": False, "private_tmp": False, "python_remapped": False,
              "hidden": [], "uid": os.getuid(), "errors": [], "memory_cgroup": False}
    if cfg.get("cgroup_procs"):  # first: every process of the execution is born inside its memory bound
        try:
            with open(cfg["cgroup_procs"], "w") as f:
                f.write(str(os.getpid()))
            report["memory_cgroup"] = True
        except OSError as err:
            report["errors"].append(f"memory cgroup: {err}")
    if cfg["namespaces"]:
        _unshare(report, cfg["user_namespace"])
    pid = os.fork()
    if pid:
        _supervise(pid, status_fd, rpc)
    try:
        _setup_child(cfg, report)
        report["ready"] = True
        os.write(status_fd, (json.dumps(report) + "\n").encode())
    except BaseException as err:
        report["ready"] = False
        report["errors"].append(f"setup failed: {err!r}")
        os.write(status_fd, (json.dumps(report) + "\n").encode())
        os._exit(SETUP_FAILED_EXIT)
    low, high = sorted(rpc)  # all but the judge's pipes; the status pipe included: no forged report
    os.closerange(3, low)
    os.closerange(low + 1, high)
    os.closerange(high + 1, 1 << 16)
    _run_job(job, rpc)


if __name__ == "__main__":
    main()
