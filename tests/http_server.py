"""A loopback HTTP file server for tests: byte ranges, scripted faults, a request log.

    with LoopbackServer({'/a.bin': b'...'}) as server:
        server.fault('/a.bin', Cut(100))          # next request for /a.bin stops after 100 body bytes
        download(server.url('/a.bin'), ...)
        server.requests                           # [('/a.bin', None), ('/a.bin', 'bytes=100-'), ...]

Faults are consumed one per request, in order. The server listens on 127.0.0.1 on a free port, runs in a
daemon thread and is shut down (thread joined) by ``stop()`` or on leaving the ``with`` block.
"""
import collections
import http.server
import re
import socket
import threading
import time

__all__ = ['LoopbackServer', 'Cut', 'Status', 'Corrupt', 'Stall', 'IgnoreRange', 'running_servers']

Cut = collections.namedtuple('Cut', ['after'])            # send full headers, then only `after` body bytes
Status = collections.namedtuple('Status', ['code'])       # answer with this HTTP error status
Corrupt = collections.namedtuple('Corrupt', [])           # flip every byte of the body
Stall = collections.namedtuple('Stall', ['seconds'])      # wait before sending the body
IgnoreRange = collections.namedtuple('IgnoreRange', [])   # answer 200 with the whole file to a Range request

_RANGE = re.compile(r'^bytes=(\d+)-$')


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = 'segzoo-test'

    def log_message(self, fmt, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802 (http.server naming)
        owner = self.server.owner
        path = self.path.split('?')[0]
        rng = self.headers.get('Range')
        with owner.lock:
            owner.requests.append((path, rng))
            queue = owner.faults.get(path)
            fault = queue.pop(0) if queue else None
            data = owner.files.get(path)
        if isinstance(fault, Status):
            self.send_error(fault.code)
            return
        if data is None:
            self.send_error(404)
            return
        if isinstance(fault, Corrupt):
            data = bytes(b ^ 0xFF for b in data)
        start, status = 0, 200
        match = _RANGE.match(rng or '')
        if match and not isinstance(fault, IgnoreRange):
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header('Content-Range', f'bytes */{len(data)}')
                self.send_header('Content-Length', '0')
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header('Content-Type', 'application/octet-stream')
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Accept-Ranges', 'bytes')
        if status == 206:
            self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        self.end_headers()
        if isinstance(fault, Stall):
            time.sleep(fault.seconds)
        if isinstance(fault, Cut):
            self.wfile.write(body[:fault.after])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


class LoopbackServer:
    """Serve ``files`` (URL path -> bytes) on ``http://127.0.0.1:<free port>``.

    Attributes
    ----------
    files : dict
        URL path -> content; may be changed while running.
    requests : list of (str, str or None)
        Every request: (path, Range header).
    faults : dict
        URL path -> list of pending faults (see :meth:`fault`).
    """

    def __init__(self, files=None):
        self.files = dict(files or {})
        self.requests = []
        self.faults = {}
        self.lock = threading.Lock()
        self._httpd = None
        self._thread = None

    def fault(self, path, *faults):
        """Queue faults for the next requests of ``path`` (one per request)."""
        with self.lock:
            self.faults.setdefault(path, []).extend(faults)

    def url(self, path=''):
        host, port = self._httpd.server_address[:2]
        return f'http://{host}:{port}{path}'

    def start(self):
        self._httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={'poll_interval': 0.05},
                                        name='loopback-http', daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def running_servers():
    """Names of loopback server threads still alive (a test that leaks one forgot to stop it)."""
    return [t.name for t in threading.enumerate() if t.name == 'loopback-http' and t.is_alive()]
