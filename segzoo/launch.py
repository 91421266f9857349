"""Start a job on MXNet's parameter server (ps-lite): ``python -m segzoo.launch -n WORKERS -- python train.py ...``.

MXNet's own ``tools/launch.py`` (``dmlc_tracker``) no longer runs on Python 3.9+, so segzoo starts the processes
itself: one scheduler, ``-s`` servers and ``-n`` workers, each a plain process given the ``DMLC_*`` variables.
A process whose ``DMLC_ROLE`` is ``scheduler`` or ``server`` becomes that role inside ``import mxnet``, so those run
``python -c 'import mxnet'`` with the command's interpreter (or the whole command when it is not a Python one);
workers run the command and call ``mx.kv.create('dist_sync')``.

``--launcher local`` starts everything on this host over 127.0.0.1 (``DMLC_INTERFACE=lo``). ``--launcher ssh`` runs
the scheduler here and the servers and workers round-robin over the hosts of ``--hosts FILE`` (one ``host`` or
``host:ssh_port`` a line, ``#`` comments), in the current directory's path on each host (a shared or identical
checkout is assumed). The launcher

* prefixes every output line with the process's role and index (``[worker 1]``); on one host the index is the
  worker's ``kv.rank`` (ps-lite ranks nodes by address and port, and local nodes get ascending fixed ports);
* fails fast: when any process exits with a non-zero status the whole job is stopped, and the launcher exits with
  that status after printing the process's last lines;
* forwards Ctrl-C (SIGINT, then SIGTERM and SIGKILL to whatever is still running after ``--grace`` seconds);
* starts each server and worker behind a probe that exits with an error naming the scheduler's host and port when
  it cannot be reached within ``--timeout`` seconds (ps-lite itself would wait for ever);
* with ``--max-time S`` stops a job still running after S seconds (exit status 124), like ``timeout``.

Every process is started in its own process group and is stopped through that group's id (its pid); over ssh the
remote command is also killed when its ssh connection closes.
"""
import argparse
import collections
import fcntl
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

__all__ = ['parse_args', 'main', 'read_hosts', 'plan_nodes', 'Job']

# Runs before a server or worker: wait until the scheduler's port accepts connections, then exec the command.
PROBE = r'''
import os, socket, sys, time
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
while True:
    try:
        socket.create_connection((host, port), timeout=1).close()
        break
    except OSError as err:
        if time.monotonic() >= deadline:
            sys.exit(f'error: cannot reach the scheduler at {host}:{port} (DMLC_PS_ROOT_URI:DMLC_PS_ROOT_PORT) '
                     f'from {socket.gethostname()} within {timeout:g} s: {err.strerror or err}; check the address, '
                     f'the port, the firewall and --interface')
        time.sleep(0.2)
os.execvp(sys.argv[4], sys.argv[4:])
'''
FORWARDED_ENV_PREFIXES = ('DMLC_', 'PS_', 'MXNET_', 'OMP_', 'PYTHONPATH', 'SEGZOO_')
TAIL_LINES = 20

Node = collections.namedtuple('Node', 'role index host ssh_port port')


# ----------------------------------------------------------------------------------------------- planning
def parse_args(argv=None):
    """Parse the launcher's flags; the training command follows ``--``."""
    parser = argparse.ArgumentParser(
        prog='python -m segzoo.launch', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('-n', '--num-workers', type=int, required=True, help='worker processes')
    parser.add_argument('-s', '--num-servers', type=int, default=None, help='server processes (default: -n)')
    parser.add_argument('--launcher', choices=('local', 'ssh'), default='local')
    parser.add_argument('-H', '--hosts', type=str, default=None,
                        help="--launcher ssh: file with one 'host' or 'host:ssh_port' a line")
    parser.add_argument('--interface', type=str, default=None,
                        help="network interface the nodes advertise (DMLC_INTERFACE; default 'lo' for --launcher "
                             "local, ps-lite's choice of the first non-loopback interface for ssh)")
    parser.add_argument('--scheduler-host', type=str, default=None,
                        help="address of this host that the nodes reach the scheduler on (DMLC_PS_ROOT_URI; "
                             "default 127.0.0.1 locally, else the address of --interface or the one routing to "
                             "the first host)")
    parser.add_argument('--port', type=int, default=0, help='scheduler port (DMLC_PS_ROOT_PORT; 0 = a free one)')
    parser.add_argument('--timeout', type=float, default=60.0,
                        help='seconds a server or worker waits for the scheduler before failing')
    parser.add_argument('--max-time', type=float, default=0.0, help='stop the job after this many seconds (0: never)')
    parser.add_argument('--grace', type=float, default=5.0,
                        help='seconds between SIGINT, SIGTERM and SIGKILL when stopping the job')
    parser.add_argument('--env', action='append', default=[], metavar='NAME[=VALUE]',
                        help='also pass this variable to the remote processes (ssh); DMLC_*, PS_*, MXNET_*, OMP_* '
                             'and PYTHONPATH are passed anyway')
    parser.add_argument('--ssh', type=str, default='ssh -o BatchMode=yes', help='ssh command (--launcher ssh)')
    parser.add_argument('command', nargs=argparse.REMAINDER, help='-- the worker command, e.g. python train.py ...')
    args = parser.parse_args(argv)
    if args.command and args.command[0] == '--':
        args.command = args.command[1:]
    if not args.command:
        parser.error('no command: give the worker command after --, e.g. -- python train.py --kvstore dist_sync')
    if args.num_workers < 1:
        parser.error(f'-n/--num-workers must be at least 1, got {args.num_workers}')
    if args.num_servers is None:
        args.num_servers = args.num_workers
    if args.num_servers < 1:
        parser.error(f'-s/--num-servers must be at least 1, got {args.num_servers}')
    if args.launcher == 'ssh' and not args.hosts:
        parser.error('--launcher ssh needs --hosts FILE (one host a line)')
    if args.launcher == 'local' and args.hosts:
        parser.error('--hosts is for --launcher ssh')
    if args.interface is None and args.launcher == 'local':
        args.interface = 'lo'
    return args


def read_hosts(path):
    """``[(host, ssh_port or None), ...]`` from a hosts file: one ``host`` or ``host:port`` a line, ``#`` comments."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise SystemExit(f'error: --hosts {path}: {err.strerror}') from err
    hosts = []
    for number, line in enumerate(lines, 1):
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        host, _, port = line.partition(':')
        if port and not port.isdigit():
            raise SystemExit(f'error: --hosts {path} line {number}: {line!r} is not host or host:port')
        hosts.append((host, int(port) if port else None))
    if not hosts:
        raise SystemExit(f'error: --hosts {path} lists no host')
    return hosts


def _interface_ip(name):
    """IPv4 address of the network interface ``name`` on this host (Linux ``SIOCGIFADDR``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack('256s', name[:15].encode()))
        except OSError as err:
            raise SystemExit(f'error: --interface {name}: no IPv4 address ({err.strerror})') from err
    return socket.inet_ntoa(packed[20:24])


def _route_ip(host):
    """The address of this host that packets to ``host`` leave from."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, 9))
        except OSError as err:
            raise SystemExit(f'error: --hosts: cannot resolve or route to {host}: {err}') from err
        return s.getsockname()[0]


def _free_ports(host, count):
    """``count`` distinct TCP ports, ascending, that are free on ``host`` right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            sockets.append(s)
            s.bind((host, 0))
        return sorted(s.getsockname()[1] for s in sockets)
    except OSError as err:
        raise SystemExit(f'error: --scheduler-host {host} is not an address of this host, where the scheduler '
                         f'binds it ({err.strerror})') from err
    finally:
        for s in sockets:
            s.close()


def plan_nodes(num_workers, num_servers, hosts=None, ports=None):
    """The job's nodes: ``[scheduler, server 0.., worker 0..]``, servers and workers round-robin over ``hosts``.

    ``hosts`` None means all on this host; ``ports`` (local jobs) fixes each node's ps-lite port, ascending in launch
    order, so that ps-lite's ranks (ordered by address, then port) equal the launch indices.
    """
    nodes = [Node('scheduler', 0, None, None, ports[0] if ports else None)]
    roles = [('server', i) for i in range(num_servers)] + [('worker', i) for i in range(num_workers)]
    for k, (role, index) in enumerate(roles):
        host, ssh_port = hosts[k % len(hosts)] if hosts else (None, None)
        nodes.append(Node(role, index, host, ssh_port, ports[k + 1] if ports else None))
    return nodes


def _node_command(node, command, uri, root_port, timeout):
    """argv of ``node``: the scheduler runs the server command directly, the others behind :data:`PROBE`."""
    python = command[0] if os.path.basename(command[0]).startswith('python') else None
    target = command if node.role == 'worker' or python is None else [python, '-c', 'import mxnet']
    if node.role == 'scheduler':
        return target
    return [python or 'python3', '-c', PROBE, uri, str(root_port), f'{timeout:g}', *target]


def _node_env(node, base, num_workers, num_servers, uri, root_port, interface):
    env = dict(base, DMLC_ROLE=node.role, DMLC_PS_ROOT_URI=uri, DMLC_PS_ROOT_PORT=str(root_port),
               DMLC_NUM_WORKER=str(num_workers), DMLC_NUM_SERVER=str(num_servers), PYTHONUNBUFFERED='1')
    if interface:
        env['DMLC_INTERFACE'] = interface
    if node.port:
        env['PORT'] = str(node.port)
    return env


def _remote_script(argv, env, cwd):
    """Shell script run over ssh: the command in ``cwd`` with ``env``, killed when the ssh connection closes."""
    assignments = ' '.join(f'{k}={shlex.quote(v)}' for k, v in sorted(env.items()))
    return (f'cd {shlex.quote(cwd)} || exit 1\n'
            'exec 3<&0\n'        # the ssh channel: EOF on it means the launcher (or its connection) is gone
            f'env {assignments} {shlex.join(argv)} </dev/null 3<&- &\n'
            'child=$!\n'
            '{ while read -r _ <&3; do :; done; kill -TERM $child 2>/dev/null; } >/dev/null 2>&1 &\n'
            'watch=$!\n'
            'wait $child; rc=$?\n'
            'kill $watch 2>/dev/null\n'
            'exit $rc\n')


# ----------------------------------------------------------------------------------------------- running
class Job:
    """The running processes of one launch: start, stream, watch, stop (each by its own process group)."""

    def __init__(self, out=None):
        self._out = out or sys.stdout
        self._lock = threading.Lock()
        self._procs = []          # (label, Popen, tail, reader thread)

    def start(self, label, argv, env, remote=False):
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE if remote else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        tail = collections.deque(maxlen=TAIL_LINES)
        reader = threading.Thread(target=self._stream, args=(label, proc, tail), daemon=True)
        reader.start()
        self._procs.append((label, proc, tail, reader))

    def _stream(self, label, proc, tail):
        prefix = f'[{label}] '
        for raw in iter(proc.stdout.readline, b''):
            line = raw.decode(errors='replace').rstrip('\n')
            tail.append(line)
            with self._lock:
                self._out.write(prefix + line + '\n')
                self._out.flush()
        proc.stdout.close()

    def say(self, message):
        with self._lock:
            self._out.write(f'[launch] {message}\n')
            self._out.flush()

    def poll(self):
        """``(label, code, tail)`` of the first failed process; ``'done'`` when every worker exited 0; else None."""
        workers_done = True
        for label, proc, tail, reader in self._procs:
            code = proc.poll()
            if code is not None and code != 0:
                reader.join(timeout=2)
                return label, code, list(tail)
            if label.startswith('worker') and code is None:
                workers_done = False
        return 'done' if workers_done else None

    def alive(self):
        return [proc for _, proc, _, _ in self._procs if proc.poll() is None]

    def signal_all(self, sig):
        for _, proc, _, _ in self._procs:
            try:
                os.killpg(proc.pid, sig)      # the process group started with the node (its pid)
            except (ProcessLookupError, PermissionError):
                pass

    def wait_all(self, seconds):
        deadline = time.monotonic() + seconds
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.alive()

    def stop(self, grace, first=signal.SIGTERM):
        """Stop every process group: ``first``, then SIGTERM and SIGKILL, ``grace`` seconds apart. Closing the ssh
        processes' stdin first makes each remote command's watchdog kill it, whatever becomes of ssh."""
        for _, proc, _, _ in self._procs:
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        for sig in dict.fromkeys((first, signal.SIGTERM)):
            self.signal_all(sig)
            if self.wait_all(grace):
                break
        self.signal_all(signal.SIGKILL)
        for _, proc, _, reader in self._procs:
            proc.wait()
            reader.join(timeout=2)


def _exit_code(code):
    return 128 - code if code < 0 else code


def run(args, out=None):
    """Launch the job of ``args``; returns the launcher's exit status."""
    hosts = read_hosts(args.hosts) if args.launcher == 'ssh' else None
    if args.scheduler_host:
        uri = args.scheduler_host
    elif args.launcher == 'local':
        uri = '127.0.0.1'
    else:
        uri = _interface_ip(args.interface) if args.interface else _route_ip(hosts[0][0])
    count = 1 + args.num_servers + args.num_workers
    ports = _free_ports(uri, count) if args.launcher == 'local' else None
    root_port = args.port or (ports[0] if ports else _free_ports(uri, 1)[0])
    if ports:
        ports[0] = root_port
    nodes = plan_nodes(args.num_workers, args.num_servers, hosts, ports)
    base = dict(os.environ)
    extra = dict(item.split('=', 1) if '=' in item else (item, os.environ.get(item, '')) for item in args.env)
    job = Job(out)
    stop = []

    def on_signal(signum, frame):
        stop.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        job.say(f'scheduler {uri}:{root_port}, {args.num_servers} server(s), {args.num_workers} worker(s)')
        for node in nodes:
            label = node.role if node.role == 'scheduler' else f'{node.role} {node.index}'
            argv = _node_command(node, args.command, uri, root_port, args.timeout)
            env = _node_env(node, base, args.num_workers, args.num_servers, uri, root_port, args.interface)
            if node.host is None:
                job.start(label, argv, env)
                continue
            remote_env = {k: v for k, v in env.items() if k.startswith(FORWARDED_ENV_PREFIXES) or k in extra}
            remote_env.update(extra)
            ssh = shlex.split(args.ssh) + (['-p', str(node.ssh_port)] if node.ssh_port else [])
            script = _remote_script(argv, remote_env, os.getcwd())
            job.start(f'{label} {node.host}', ssh + [node.host, 'sh -c ' + shlex.quote(script)], base, remote=True)
        deadline = time.monotonic() + args.max_time if args.max_time > 0 else None
        while True:
            if stop:
                job.say(f'{signal.Signals(stop[0]).name}: stopping every process')
                job.stop(args.grace, first=signal.SIGINT)
                return 128 + stop[0]
            state = job.poll()
            if state == 'done':
                job.wait_all(args.grace)      # servers and scheduler leave after the workers' final barrier
                job.stop(args.grace)
                return 0
            if state is not None:
                label, code, tail = state
                job.stop(args.grace)
                shown = '\n'.join(f'    {line}' for line in tail) or '    (no output)'
                job.say(f'error: {label} exited with status {_exit_code(code)}; every other process was stopped. '
                        f'Its last lines:\n{shown}')
                return _exit_code(code)
            if deadline is not None and time.monotonic() > deadline:
                job.say(f'error: the job was still running after --max-time {args.max_time:g} s; stopped')
                job.stop(args.grace)
                return 124
            time.sleep(0.05)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv=None):
    return run(parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
