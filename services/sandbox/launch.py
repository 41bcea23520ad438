"""`python -I -S services/sandbox/launch.py CONFIG -- COMMAND...`: joins the sandbox's cgroups,
sets its rlimits, drops to its uid, then execs COMMAND (bubblewrap).

A separate, tiny program because doing this in a `preexec_fn` of the multi-threaded gRPC
server crashes the forked child now and then; this one has only the standard library and
one thread. CONFIG is JSON: {"procs": [paths], "rlimits": [[resource, value]], "uid": int|null}.
"""

import json
import os
import resource
import sys


def main() -> None:
    config = json.loads(sys.argv[1])
    command = sys.argv[sys.argv.index("--") + 1:]
    pid = str(os.getpid()).encode()
    for procs in config["procs"]:
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)
    for which, value in config["rlimits"]:
        resource.setrlimit(which, (value, value))
    uid = config["uid"]
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    os.execvpe(command[0], command, os.environ)


if __name__ == "__main__":
    main()
