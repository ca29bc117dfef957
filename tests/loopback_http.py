"""A folder served over HTTP on 127.0.0.1, as huggingface.co and GitHub releases serve the
official weights (tests of downloads; nothing leaves the machine)."""
import contextlib
import http.server
import os.path as osp
import threading
from dataclasses import dataclass, field
from typing import Iterator, List

import torch


@dataclass
class Served:
    """The served folder, its base URL, and the paths requested so far."""
    root: str
    url: str
    requests: List[str] = field(default_factory=list)

    def put(self, name: str, obj) -> str:
        """Save ``obj`` with ``torch.save`` as ``name`` in the folder; its URL."""
        torch.save(obj, osp.join(self.root, name))
        return f'{self.url}/{name}'


@contextlib.contextmanager
def serve(root: str) -> Iterator[Served]:
    """Serve ``root`` until the block ends."""
    served = Served(str(root), '')

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):  # noqa: N802 - the name http.server calls
            served.requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # quiet
            pass

    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    served.url = f'http://127.0.0.1:{httpd.server_port}'
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
