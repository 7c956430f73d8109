"""gunicorn's error and access logs through Chorus's one logging setup (``config.logs``).

gunicorn gives its two loggers handlers and formats of its own; this logger class (gunicorn's
``--logger-class``) lets them propagate to the root handler ``configure`` installs instead,
and gives each access line its fields (method, path, status, duration, request id) as well
as its usual text.
"""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger  # type: ignore[import-untyped]

from config.logs import configure
from config.settings import load_settings

# gunicorn's access line, ``%(h)s "%(r)s" %(s)s %(b)s %(M)sms``, said with the atoms' names.
ACCESS_FORMAT = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'


class GunicornLogger(Logger):
    service = "web"

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        configure(load_settings(), self.service)
        # Lines gunicorn would write to its own stream handlers ("-") go through the root's.
        for log, target in ((self.error_log, cfg.errorlog), (self.access_log, cfg.accesslog)):
            if target == "-":
                for handler in list(log.handlers):
                    if getattr(handler, "_gunicorn", False):
                        log.removeHandler(handler)
                log.propagate = True

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        atoms = self.atoms_wrapper_class(self.atoms(resp, req, environ, request_time))
        fields = {
            "method": atoms["m"],
            "path": atoms["U"],
            "status": int(atoms["s"]) if str(atoms["s"]).isdigit() else atoms["s"],
            "duration_ms": atoms["M"],
            "remote_addr": atoms["h"],
        }
        request_id = atoms["{x-request-id}o"]
        if request_id != "-":
            fields["request_id"] = request_id
        self.access_log.info(ACCESS_FORMAT, atoms, extra=fields)


class SimGunicornLogger(GunicornLogger):
    service = "sim"
